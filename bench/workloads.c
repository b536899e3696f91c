/*
 * workloads.c - the db_bench workloads of s4kv-bench, on any engine through
 * the adapter interface (engine.h).
 *
 * Owns: fillrandom, readrandom, readmissing, overwrite, reopen, rebuild
 * (engines with a rebuild: s4kv), fillsync1 / fillsync8 and the --scale run.
 * One process runs them for one engine, in that order, on one database
 * (fillsync on databases of their own), as db_bench does.
 *
 * Invariants: every engine gets the same operations (keys, values and order
 * come from cfg.seed only); the key and value bytes of a batch are generated
 * before its timing starts, so only the engine's call is timed; every value a
 * get returns is checked (outside the timing) against the version the
 * harness wrote last, so a fast wrong answer fails the run. Throughput of a
 * single-threaded workload is ops / the sum of its individually timed calls;
 * of fillsync, ops / wall time from the start barrier to the last join.
 */
#include "bench.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct state {
    const engine *e;
    char dir[4200];
    void *h;
    uint64_t num;  /* keys loaded */
    uint8_t *ver;  /* current version of each key */
    double *samples;
    size_t sample_cap;
} state;

static void *open_or_die(const engine *e, const char *dir, int sync)
{
    errbuf[0] = '\0';
    void *h = e->open(dir, sync, errbuf, sizeof errbuf);
    if (!h)
        die("%s: open %s: %s", e->name, dir, errbuf);
    return h;
}

static void close_or_die(const engine *e, void *h)
{
    errbuf[0] = '\0';
    if (e->close(h, errbuf, sizeof errbuf))
        die("%s: close: %s", e->name, errbuf);
}

/* Gets key i into buf; dies on an error or an absent key; checks the value. */
static uint64_t get_checked(state *st, uint64_t i, const char *what)
{
    char key[KEY_BYTES], buf[MAX_VALUE_BYTES * 2];
    make_key(i, key);
    size_t vlen = 0;
    errbuf[0] = '\0';
    uint64_t t0 = now_ns();
    int rc = st->e->get(st->h, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
    uint64_t ns = now_ns() - t0;
    if (rc < 0)
        die("%s: %s: get %.16s: %s", st->e->name, what, key, errbuf);
    if (rc == 1)
        die("%s: %s: get %.16s: not found", st->e->name, what, key);
    check_value_len(i, st->ver[i], buf, vlen, VALUE_BYTES, what);
    return ns;
}

/* Puts `count` keys, order[k] or (order NULL) uniform random ones, in batches
 * of cfg.batch; one latency sample per batch (its time / its size). Returns
 * the sum of the timed batch calls in ns. */
static uint64_t put_batches(state *st, uint64_t count, const uint32_t *order, uint64_t *rng,
                            size_t *nsamples)
{
    char(*keys)[KEY_BYTES] = xcalloc(cfg.batch, KEY_BYTES);
    char(*vals)[VALUE_BYTES] = xcalloc(cfg.batch, VALUE_BYTES);
    bench_kv *kv = xcalloc(cfg.batch, sizeof *kv);
    uint64_t total = 0;
    *nsamples = 0;
    for (uint64_t done = 0; done < count;) {
        uint64_t n = count - done < cfg.batch ? count - done : cfg.batch;
        for (uint64_t j = 0; j < n; j++) {
            uint64_t i = order ? order[done + j] : rand_below(rng, st->num);
            unsigned v = ++st->ver[i];
            make_key(i, keys[j]);
            make_value(i, v, vals[j], VALUE_BYTES);
            kv[j] = (bench_kv){ keys[j], KEY_BYTES, vals[j], VALUE_BYTES };
        }
        errbuf[0] = '\0';
        uint64_t t0 = now_ns();
        int rc = st->e->put_batch(st->h, kv, n, errbuf, sizeof errbuf);
        uint64_t ns = now_ns() - t0;
        if (rc)
            die("%s: put_batch: %s", st->e->name, errbuf);
        total += ns;
        if (*nsamples < st->sample_cap)
            st->samples[(*nsamples)++] = (double)ns / (double)n;
        done += n;
    }
    free(keys);
    free(vals);
    free(kv);
    return total;
}

/* The fill order: a Fisher-Yates shuffle of 0..num-1 with cfg.seed. */
static uint32_t *fill_order(uint64_t num)
{
    uint32_t *order = xcalloc(num, sizeof *order);
    for (uint64_t i = 0; i < num; i++)
        order[i] = (uint32_t)i;
    uint64_t rng = cfg.seed;
    for (uint64_t i = num - 1; i > 0; i--) {
        uint64_t j = rand_below(&rng, i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    return order;
}

/* Allocates and touches the harness's arrays before the engine opens, so the
 * peak RSS baseline (emitted) is the same for every engine. */
static uint32_t *state_init(state *st, const engine *e, const char *dir, uint64_t num,
                            uint64_t max_samples)
{
    memset(st, 0, sizeof *st);
    st->e = e;
    st->num = num;
    snprintf(st->dir, sizeof st->dir, "%s", dir);
    st->ver = xcalloc(num, 1);
    memset(st->ver, 0, num);
    st->sample_cap = max_samples;
    st->samples = xcalloc(max_samples, sizeof *st->samples);
    memset(st->samples, 0, max_samples * sizeof *st->samples);
    uint32_t *order = fill_order(num);
    emit_metric("rss_baseline_kib", (double)peak_rss_kib(),
                "peak RSS before the engine opened (harness arrays: key order, versions, "
                "latency samples)");
    return order;
}

static void run_fill(state *st, uint32_t *order, const char *name)
{
    size_t ns_count;
    uint64_t ns = put_batches(st, st->num, order, NULL, &ns_count);
    emit_result(name, st->num, ns, st->samples, ns_count, 0,
                "%" PRIu64 " distinct keys in random order, batches of %" PRIu64
                ", no fsync; latency per op from per-batch samples",
                st->num, cfg.batch);
    const char *what = "";
    int64_t ib = st->e->index_bytes(st->h, &what);
    char mname[64];
    snprintf(mname, sizeof mname, "%s.index_bytes_per_key", name);
    emit_metric(mname, ib < 0 ? -1 : (double)ib / (double)st->num, "%s", what);
    snprintf(mname, sizeof mname, "%s.disk_bytes", name);
    emit_metric(mname, (double)st->e->disk_bytes(st->h, st->dir),
                "bytes in the database directory right after the fill (raw key+value: %d "
                "bytes per key)",
                KEY_BYTES + VALUE_BYTES);
    snprintf(mname, sizeof mname, "%s.peak_rss_kib", name);
    emit_metric(mname, (double)peak_rss_kib(), "peak RSS after the fill");
}

static void run_readrandom(state *st, uint64_t reads, const char *name)
{
    uint64_t rng = cfg.seed ^ 0x7265616472616e64ULL, total = 0;
    for (uint64_t n = 0; n < reads; n++) {
        uint64_t i = rand_below(&rng, st->num);
        uint64_t ns = get_checked(st, i, name);
        total += ns;
        if (n < st->sample_cap)
            st->samples[n] = (double)ns;
    }
    emit_result(name, reads, total, st->samples, reads < st->sample_cap ? reads : st->sample_cap,
                0, "uniform over %" PRIu64 " keys, warm page cache, every value checked", st->num);
}

static void run_readmissing(state *st)
{
    uint64_t rng = cfg.seed ^ 0x6d697373696e67ULL, total = 0;
    char key[KEY_BYTES], buf[MAX_VALUE_BYTES * 2];
    for (uint64_t n = 0; n < cfg.missing; n++) {
        uint64_t i = st->num + rand_below(&rng, st->num * 8 + 1000000); /* never written */
        make_key(i, key);
        size_t vlen = 0;
        errbuf[0] = '\0';
        uint64_t t0 = now_ns();
        int rc = st->e->get(st->h, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
        uint64_t ns = now_ns() - t0;
        if (rc != 1)
            die("%s: readmissing: get %.16s: %s", st->e->name, key,
                rc < 0 ? errbuf : "found a key never written");
        total += ns;
        if (n < st->sample_cap)
            st->samples[n] = (double)ns;
    }
    emit_result("readmissing", cfg.missing, total, st->samples,
                cfg.missing < st->sample_cap ? cfg.missing : st->sample_cap, 0,
                "16-byte keys never written, uniform over a range 9x the loaded one");
}

static void run_overwrite(state *st)
{
    uint64_t rng = cfg.seed ^ 0x6f76657277726974ULL;
    size_t nsamples;
    uint64_t ns = put_batches(st, cfg.overwrites, NULL, &rng, &nsamples);
    emit_result("overwrite", cfg.overwrites, ns, st->samples, nsamples, 0,
                "uniform random existing keys, batches of %" PRIu64 ", no fsync", cfg.batch);
    for (uint64_t n = 0; n < 1000; n++) /* the newest versions are the ones served */
        get_checked(st, rand_below(&rng, st->num), "after overwrite");
    emit_metric("overwrite.disk_bytes", (double)st->e->disk_bytes(st->h, st->dir),
                "bytes in the database directory right after overwrite");
}

static void run_reopen(state *st)
{
    uint64_t t0 = now_ns();
    close_or_die(st->e, st->h);
    uint64_t close_ns = now_ns() - t0;
    t0 = now_ns();
    st->h = open_or_die(st->e, st->dir, 0);
    uint64_t open_ns = now_ns() - t0;
    uint64_t rng = cfg.seed ^ 0x72656f70656eULL;
    uint64_t get_ns = get_checked(st, rand_below(&rng, st->num), "reopen");
    emit_result("reopen", 1, close_ns + open_ns + get_ns, NULL, 0, 1,
                "close %.1f ms + open %.1f ms + first get %.1f us", (double)close_ns / 1e6,
                (double)open_ns / 1e6, (double)get_ns / 1e3);
    emit_metric("reopen.close_ms", (double)close_ns / 1e6, "close (flush, checkpoint)");
    emit_metric("reopen.open_ms", (double)open_ns / 1e6, "open (checkpoint load / log replay)");
    emit_metric("reopen.first_get_us", (double)get_ns / 1e3, "the first get after open");
    emit_metric("reopen.total_ms", (double)(close_ns + open_ns + get_ns) / 1e6,
                "close + open + first get");
    /* a second, independent check after the reopen */
    for (uint64_t n = 0; n < 1000; n++)
        get_checked(st, rand_below(&rng, st->num), "after reopen");
}

/* Reads every s4kv segment file once (what `cat data_* > /dev/null` does);
 * returns bytes read and the time it took. */
static uint64_t read_segments(const char *dir, uint64_t *ns)
{
    static char buf[1 << 20];
    DIR *d = opendir(dir);
    if (!d)
        die("opendir %s: %s", dir, strerror(errno));
    uint64_t total = 0, t0 = now_ns();
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (strncmp(de->d_name, "data_", 5) || l <= 10 || strcmp(de->d_name + l - 5, ".s4kv"))
            continue;
        int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("open %s/%s: %s", dir, de->d_name, strerror(errno));
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            total += (uint64_t)n;
        close(fd);
    }
    *ns = now_ns() - t0;
    closedir(d);
    return total;
}

static void run_rebuild(state *st)
{
    uint64_t cat_ns, records = 0;
    uint64_t bytes = read_segments(st->dir, &cat_ns);
    errbuf[0] = '\0';
    uint64_t t0 = now_ns();
    if (st->e->rebuild(st->h, &records, errbuf, sizeof errbuf))
        die("%s: rebuild: %s", st->e->name, errbuf);
    uint64_t ns = now_ns() - t0;
    double mbs = (double)bytes / 1048576.0 / ((double)ns / 1e9);
    double cat_mbs = (double)bytes / 1048576.0 / ((double)(cat_ns ? cat_ns : 1) / 1e9);
    emit_result("rebuild", records, ns, NULL, 0, 0,
                "rebuild by replay (+ checkpoint) of %.1f MiB: %.0f MiB/s; reading the same "
                "segment files (cat, warm): %.0f MiB/s; ops = records in the log",
                (double)bytes / 1048576.0, mbs, cat_mbs);
    emit_metric("rebuild.mib_per_s", mbs, "replay");
    emit_metric("rebuild.cat_mib_per_s", cat_mbs, "reading the segment files");
    emit_metric("rebuild.pct_of_cat", 100.0 * mbs / cat_mbs, "replay speed / cat speed, %%");
    for (uint64_t n = 0, rng = cfg.seed ^ 0x7265627569ULL; n < 1000; n++)
        get_checked(st, rand_below(&rng, st->num), "after rebuild");
}

/* ---- fillsync: durable one-record writes from T threads */

typedef struct writer {
    const engine *e;
    void *h;
    pthread_barrier_t *start;
    uint64_t first, count;
    double *samples;
    int rc;
    char err[512];
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    char key[KEY_BYTES], val[VALUE_BYTES];
    pthread_barrier_wait(w->start);
    for (uint64_t n = 0; n < w->count; n++) {
        uint64_t i = w->first + n;
        make_key(i, key);
        make_value(i, 1, val, VALUE_BYTES);
        bench_kv kv = { key, KEY_BYTES, val, VALUE_BYTES };
        uint64_t t0 = now_ns();
        int rc = w->e->put_batch(w->h, &kv, 1, w->err, sizeof w->err);
        w->samples[n] = (double)(now_ns() - t0);
        if (rc) {
            w->rc = rc;
            break;
        }
    }
    return NULL;
}

static void run_fillsync(const engine *e, const char *parent, int threads, uint64_t per_thread)
{
    char dir[4300], name[32];
    snprintf(name, sizeof name, "fillsync%d", threads);
    snprintf(dir, sizeof dir, "%s/%s", parent, name);
    void *h = open_or_die(e, dir, 1);
    uint64_t total = per_thread * (uint64_t)threads;
    double *samples = xcalloc(total, sizeof *samples);
    writer *w = xcalloc((size_t)threads, sizeof *w);
    pthread_t *tid = xcalloc((size_t)threads, sizeof *tid);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    for (int t = 0; t < threads; t++) {
        w[t] = (writer){ .e = e, .h = h, .start = &start, .first = (uint64_t)t * per_thread,
                         .count = per_thread, .samples = samples + (uint64_t)t * per_thread };
        if (pthread_create(&tid[t], NULL, writer_main, &w[t]))
            die("pthread_create failed");
    }
    pthread_barrier_wait(&start);
    uint64_t t0 = now_ns();
    for (int t = 0; t < threads; t++)
        pthread_join(tid[t], NULL);
    uint64_t ns = now_ns() - t0;
    for (int t = 0; t < threads; t++)
        if (w[t].rc)
            die("%s: %s: %s", e->name, name, w[t].err);
    pthread_barrier_destroy(&start);
    emit_result(name, total, ns, samples, total, 0,
                "durable writes of 1 record each (sync=true / fsync before ack), %d writer "
                "thread%s x %" PRIu64 "; ops/s from wall time",
                threads, threads > 1 ? "s" : "", per_thread);

    /* every acknowledged write must be there after a reopen */
    close_or_die(e, h);
    state st = { .e = e, .num = total };
    st.h = open_or_die(e, dir, 1);
    st.ver = xcalloc(total, 1);
    memset(st.ver, 1, total);
    for (int t = 0; t < threads; t++) {
        get_checked(&st, (uint64_t)t * per_thread, name);
        get_checked(&st, (uint64_t)t * per_thread + per_thread - 1, name);
    }
    for (uint64_t n = 0, rng = cfg.seed; n < 1000; n++)
        get_checked(&st, rand_below(&rng, total), name);
    close_or_die(e, st.h);
    free(st.ver);
    free(tid);
    free(w);
    free(samples);
}

/* ---- the process's sequence */

void run_engine_main(const engine *e, const char *parent)
{
    char d[4200];
    emit_open(e->name);
    e->describe(0, d, sizeof d);
    emit_option(0, d);
    e->describe(1, d, sizeof d);
    emit_option(1, d);

    int need_main = selected("fillrandom") || selected("readrandom") || selected("readmissing") ||
                    selected("overwrite") || selected("reopen") ||
                    (selected("rebuild") && e->rebuild);
    if (need_main) {
        state st;
        snprintf(d, sizeof d, "%s/main", parent);
        uint64_t maxs = cfg.reads > cfg.missing ? cfg.reads : cfg.missing;
        if (cfg.num / cfg.batch + 1 > maxs)
            maxs = cfg.num / cfg.batch + 1;
        uint32_t *order = state_init(&st, e, d, cfg.num, maxs);
        st.h = open_or_die(e, st.dir, 0);
        run_fill(&st, order, "fillrandom"); /* also the setup of what follows */
        free(order);
        if (selected("readrandom") && cfg.reads)
            run_readrandom(&st, cfg.reads, "readrandom");
        if (selected("readmissing") && cfg.missing)
            run_readmissing(&st);
        if (selected("overwrite") && cfg.overwrites)
            run_overwrite(&st);
        if (selected("reopen"))
            run_reopen(&st);
        if (selected("rebuild") && e->rebuild)
            run_rebuild(&st);
        close_or_die(e, st.h);
        free(st.ver);
        free(st.samples);
        rm_tree(d); /* room on disk for what follows */
    }
    if (selected("fillsync1"))
        run_fillsync(e, parent, 1, cfg.sync_ops1);
    if (selected("fillsync8"))
        run_fillsync(e, parent, 8, cfg.sync_ops8);
    emit_close();
}

/* --scale: fill cfg.scale_num keys, then cfg.reads gets; memory and disk. */
void run_engine_scale(const engine *e, const char *parent)
{
    char d[4200];
    emit_open(e->name);
    e->describe(0, d, sizeof d);
    emit_option(0, d);
    e->describe(1, d, sizeof d);
    emit_option(1, d);
    state st;
    snprintf(d, sizeof d, "%s/scale", parent);
    uint64_t maxs = cfg.reads > cfg.scale_num / cfg.batch + 1 ? cfg.reads : cfg.scale_num / cfg.batch + 1;
    uint32_t *order = state_init(&st, e, d, cfg.scale_num, maxs);
    st.h = open_or_die(e, st.dir, 0);
    run_fill(&st, order, "scale-fillrandom");
    free(order);
    run_readrandom(&st, cfg.reads, "scale-readrandom");
    close_or_die(e, st.h);
    free(st.ver);
    free(st.samples);
    rm_tree(d);
    emit_close();
}
