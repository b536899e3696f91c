/*
 * bench.c - `s4kv-bench`, the db_bench-style benchmark of the s4kv engine.
 *
 * Owns: the workloads (fillrandom, readrandom, readmissing, overwrite,
 * fillsync with 1 and 8 writers, reopen, rebuild; with --s3-url also
 * remoteget, curlget, upload and download against S3, next to raw libcurl
 * requests for the same bytes), the deterministic key and value generator,
 * latency sampling and the Markdown / JSON report.
 *
 * Invariants: every run with the same flags issues the same operations (one
 * fixed seed); every value a read returns is checked against the value the
 * generator says was written last, so a fast wrong answer fails the run
 * (exit 1) instead of producing a number. Latencies come from individually
 * timed samples (CLOCK_MONOTONIC around each get or put; around each batch for
 * batched fills, divided by the batch size).
 *
 * Keys are 16 decimal digits of the key number; values are 100 bytes, the
 * first half pseudo-random, the second half one repeated byte, so Snappy
 * halves them (as db_bench's --compression_ratio=0.5).
 */
#include "s4kv.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define KEY_BYTES 16
#define VALUE_BYTES 100
#define RANDOM_HALF (VALUE_BYTES / 2)

/* ---- configuration */

typedef struct config {
    uint64_t num;        /* keys loaded by fillrandom */
    uint64_t reads;      /* readrandom gets */
    uint64_t missing;    /* readmissing gets */
    uint64_t overwrites; /* overwrite puts */
    uint64_t sync_ops;   /* fillsync puts per writer thread */
    uint64_t batch;      /* records per batch for fills and overwrite */
    uint64_t seed;
    const char *dir, *json, *only;
    const char *s3_url;    /* --s3-url: run the S3 workloads under this prefix */
    uint64_t remote_num;   /* keys uploaded for remoteget/curlget */
    uint64_t remote_reads; /* remoteget gets (and curlget ranged GETs) */
    uint64_t xfer_mib;     /* database size for upload/download, MiB */
} config;

static config cfg = {
    .num = 1000000, .reads = 1000000, .missing = 200000, .overwrites = 500000,
    .sync_ops = 2000, .batch = 1000, .seed = 0x5eed5eed5eedULL,
    .remote_num = 20000, .remote_reads = 2000, .xfer_mib = 64,
};

/* ---- helpers */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("s4kv-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) (Lemire's multiply-shift; the tiny bias is irrelevant). */
static uint64_t rand_below(uint64_t *s, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)splitmix64(s) * n) >> 64);
}

static long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* ---- keys and values */

static void make_key(uint64_t i, char out[KEY_BYTES])
{
    for (int p = KEY_BYTES - 1; p >= 0; p--) {
        out[p] = (char)('0' + i % 10);
        i /= 10;
    }
}

/* The value of key i at version ver: RANDOM_HALF random bytes, then one byte
 * repeated. */
static void make_value(uint64_t i, unsigned ver, char out[VALUE_BYTES])
{
    uint64_t s = cfg.seed ^ (i * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)ver << 56);
    for (int p = 0; p < RANDOM_HALF; p += 8) {
        uint64_t r = splitmix64(&s);
        int n = RANDOM_HALF - p < 8 ? RANDOM_HALF - p : 8;
        memcpy(out + p, &r, (size_t)n);
    }
    memset(out + RANDOM_HALF, 'a' + (int)(i % 26), VALUE_BYTES - RANDOM_HALF);
}

/* ---- results */

typedef struct result {
    char name[32];
    uint64_t ops;
    double secs;
    double p50, p99, p999; /* microseconds; < 0 when not sampled */
    long rss_kib;          /* peak RSS of the process so far */
    int no_rate;           /* a one-off timing (reopen): no ops/s */
    char notes[400];
} result;

static result results[32];
static size_t nresults;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples. */
static double pct(const double *s, size_t n, double p)
{
    if (!n)
        return -1;
    size_t r = (size_t)ceil(p * (double)n);
    return s[r ? r - 1 : 0];
}

/* Records a workload: samples are per-op latencies in ns (sorted here). */
static result *add_result(const char *name, uint64_t ops, uint64_t ns,
                          double *samples, size_t nsamples)
{
    result *r = &results[nresults++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->ops = ops;
    r->secs = (double)ns / 1e9;
    r->p50 = r->p99 = r->p999 = -1;
    if (nsamples) {
        qsort(samples, nsamples, sizeof *samples, cmp_double);
        r->p50 = pct(samples, nsamples, 0.50) / 1e3;
        r->p99 = pct(samples, nsamples, 0.99) / 1e3;
        r->p999 = pct(samples, nsamples, 0.999) / 1e3;
    }
    r->rss_kib = peak_rss_kib();
    fprintf(stderr, "  %-12s %10" PRIu64 " ops %9.3f s %12.0f ops/s\n", r->name, ops,
            r->secs, r->secs > 0 ? (double)ops / r->secs : 0.0);
    return r;
}

/* Extra figures for the second table. */
typedef struct metric {
    char name[48];
    char value[64];
    char notes[160];
} metric;

static metric metrics[32];
static size_t nmetrics;

static void add_metric(const char *name, const char *notes, const char *fmt, ...)
{
    metric *m = &metrics[nmetrics++];
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->notes, sizeof m->notes, "%s", notes ? notes : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->value, sizeof m->value, fmt, ap);
    va_end(ap);
}

/* ---- workload selection */

static int selected(const char *name)
{
    if (!cfg.only)
        return 1;
    size_t n = strlen(name);
    for (const char *p = cfg.only; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && strncmp(p, name, n) == 0)
            return 1;
        /* "fillsync" selects fillsync1 and fillsync8 */
        if (l == 8 && strncmp(p, "fillsync", 8) == 0 && strncmp(name, "fillsync", 8) == 0)
            return 1;
        p = e ? e + 1 : p + l;
    }
    return 0;
}

static const char *const known[] = { "fillrandom", "readrandom", "readmissing", "overwrite",
                                     "reopen", "rebuild", "fillsync", "fillsync1",
                                     "fillsync8", "remoteget", "curlget", "upload",
                                     "download", NULL };

static void check_only(void)
{
    if (!cfg.only)
        return;
    for (const char *p = cfg.only; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        int ok = 0;
        for (int i = 0; known[i]; i++)
            ok |= strlen(known[i]) == l && strncmp(known[i], p, l) == 0;
        if (!ok)
            die("--only: unknown workload '%.*s'", (int)l, p);
        p = e ? e + 1 : p + l;
    }
}

/* ---- database helpers */

static char errbuf[1024];

static s4kv_db *db_open(const char *dir, s4kv_sync_mode mode)
{
    s4kv_options opt;
    s4kv_options_init(&opt);
    opt.sync_mode = mode;
    s4kv_db *db = NULL;
    errbuf[0] = '\0';
    int rc = s4kv_open(dir, &opt, &db, errbuf, sizeof errbuf);
    if (rc)
        die("open %s: %s: %s", dir, s4kv_strerror(rc), errbuf);
    return db;
}

static void db_close(s4kv_db *db)
{
    int rc = s4kv_close(db);
    if (rc)
        die("close: %s", s4kv_strerror(rc));
}

static void dir_sizes(const char *dir, uint64_t *segs, uint64_t *all)
{
    DIR *d = opendir(dir);
    if (!d)
        die("opendir %s: %s", dir, strerror(errno));
    *segs = *all = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        struct stat sb;
        if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) || !S_ISREG(sb.st_mode))
            continue;
        *all += (uint64_t)sb.st_size;
        size_t l = strlen(de->d_name);
        if (strncmp(de->d_name, "data_", 5) == 0 && l > 10 && strcmp(de->d_name + l - 5, ".s4kv") == 0)
            *segs += (uint64_t)sb.st_size;
    }
    closedir(d);
}

/* Reads every segment file once (what `cat data_* > /dev/null` does);
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

/* Checks one get answer against the generator; exits naming the key. */
static void check_value(int rc, uint64_t i, unsigned ver, const char *buf, size_t vlen,
                        const char *what)
{
    char want[VALUE_BYTES], key[KEY_BYTES];
    make_key(i, key);
    if (rc)
        die("%s: get %.16s: %s: %s", what, key, s4kv_strerror(rc), errbuf);
    make_value(i, ver, want);
    if (vlen != VALUE_BYTES || memcmp(buf, want, VALUE_BYTES) != 0)
        die("%s: get %.16s returned a wrong value (%zu bytes)", what, key, vlen);
}

/* ---- workloads on the main database (S4KV_SYNC_NONE) */

typedef struct state {
    char dir[4096];
    s4kv_db *db;
    uint8_t *ver;  /* current version of each key */
    int filled;
} state;

/* Puts `count` keys chosen by next(), in batches of cfg.batch; samples are
 * per-batch times divided by the batch size. Bumps ver[] for each key. */
static uint64_t put_batches(state *st, uint64_t count, const uint32_t *order, uint64_t *rng,
                            double *samples, size_t *nsamples)
{
    s4kv_batch *b = s4kv_batch_new();
    if (!b)
        die("out of memory");
    char key[KEY_BYTES], val[VALUE_BYTES];
    uint64_t t_start = now_ns();
    for (uint64_t done = 0; done < count;) {
        uint64_t n = count - done < cfg.batch ? count - done : cfg.batch;
        uint64_t t0 = now_ns();
        for (uint64_t j = 0; j < n; j++) {
            uint64_t i = order ? order[done + j] : rand_below(rng, cfg.num);
            unsigned v = ++st->ver[i];
            make_key(i, key);
            make_value(i, v, val);
            int rc = s4kv_batch_put(b, key, KEY_BYTES, val, VALUE_BYTES);
            if (rc)
                die("s4kv_batch_put: %s", s4kv_strerror(rc));
        }
        errbuf[0] = '\0';
        int rc = s4kv_write(st->db, b, errbuf, sizeof errbuf);
        if (rc)
            die("s4kv_write: %s: %s", s4kv_strerror(rc), errbuf);
        s4kv_batch_clear(b);
        samples[(*nsamples)++] = (double)(now_ns() - t0) / (double)n;
        done += n;
    }
    uint64_t ns = now_ns() - t_start;
    s4kv_batch_free(b);
    return ns;
}

static void run_fill(state *st, int report)
{
    uint32_t *order = xcalloc(cfg.num, sizeof *order);
    for (uint64_t i = 0; i < cfg.num; i++)
        order[i] = (uint32_t)i;
    uint64_t rng = cfg.seed;
    for (uint64_t i = cfg.num - 1; i > 0; i--) { /* Fisher-Yates */
        uint64_t j = rand_below(&rng, i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    double *samples = xcalloc(cfg.num / cfg.batch + 1, sizeof *samples);
    size_t ns_count = 0;
    uint64_t ns = put_batches(st, cfg.num, order, NULL, samples, &ns_count);
    st->filled = 1;
    free(order);
    if (report) {
        result *r = add_result("fillrandom", cfg.num, ns, samples, ns_count);
        snprintf(r->notes, sizeof r->notes,
                 "%" PRIu64 " distinct keys in random order, batches of %" PRIu64
                 ", S4KV_SYNC_NONE; latency per op from per-batch samples",
                 cfg.num, cfg.batch);
    }
    free(samples);

    s4kv_stats sst;
    if (s4kv_stats_get(st->db, &sst))
        die("s4kv_stats_get failed");
    if (sst.keys != cfg.num)
        die("after fillrandom the database has %" PRIu64 " keys, expected %" PRIu64, sst.keys, cfg.num);
    double per_key = (double)sst.index_bytes / (double)sst.keys;
    add_metric("index bytes per key", "s4kv_stats index_bytes / keys after fillrandom (16-byte keys)",
               "%.1f (%.1f + key)", per_key, per_key - KEY_BYTES);
    uint64_t segs, all;
    dir_sizes(st->dir, &segs, &all);
    add_metric("bytes on disk after fill", "segments (whole directory)",
               "%.1f MiB (%.1f MiB)", (double)segs / 1048576.0, (double)all / 1048576.0);
    add_metric("disk bytes per key after fill", "raw key+value = 116 bytes",
               "%.1f", (double)segs / (double)cfg.num);
}

static void run_readrandom(state *st)
{
    double *samples = xcalloc(cfg.reads, sizeof *samples);
    uint64_t rng = cfg.seed ^ 0x7265616472616e64ULL;
    char key[KEY_BYTES], buf[VALUE_BYTES * 2];
    uint64_t t_start = now_ns();
    for (uint64_t n = 0; n < cfg.reads; n++) {
        uint64_t i = rand_below(&rng, cfg.num);
        make_key(i, key);
        size_t vlen = 0;
        uint64_t t0 = now_ns();
        int rc = s4kv_get_into(st->db, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
        samples[n] = (double)(now_ns() - t0);
        check_value(rc, i, st->ver[i], buf, vlen, "readrandom");
    }
    uint64_t ns = now_ns() - t_start;
    result *r = add_result("readrandom", cfg.reads, ns, samples, cfg.reads);
    snprintf(r->notes, sizeof r->notes,
             "uniform over %" PRIu64 " keys, warm page cache, s4kv_get_into, every value checked",
             cfg.num);
    free(samples);
}

static void run_readmissing(state *st)
{
    double *samples = xcalloc(cfg.missing, sizeof *samples);
    uint64_t rng = cfg.seed ^ 0x6d697373696e67ULL;
    char key[KEY_BYTES], buf[VALUE_BYTES * 2];
    uint64_t t_start = now_ns();
    for (uint64_t n = 0; n < cfg.missing; n++) {
        uint64_t i = cfg.num + rand_below(&rng, cfg.num * 8 + 1000000); /* never written */
        make_key(i, key);
        size_t vlen = 0;
        uint64_t t0 = now_ns();
        int rc = s4kv_get_into(st->db, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
        samples[n] = (double)(now_ns() - t0);
        if (rc != S4KV_ENOTFOUND)
            die("readmissing: get %.16s returned %s, expected not found", key, s4kv_strerror(rc));
    }
    uint64_t ns = now_ns() - t_start;
    result *r = add_result("readmissing", cfg.missing, ns, samples, cfg.missing);
    snprintf(r->notes, sizeof r->notes, "16-byte keys never written");
    free(samples);
}

static void run_overwrite(state *st)
{
    double *samples = xcalloc(cfg.overwrites / cfg.batch + 1, sizeof *samples);
    size_t nsamples = 0;
    uint64_t rng = cfg.seed ^ 0x6f76657277726974ULL;
    uint64_t ns = put_batches(st, cfg.overwrites, NULL, &rng, samples, &nsamples);
    result *r = add_result("overwrite", cfg.overwrites, ns, samples, nsamples);
    snprintf(r->notes, sizeof r->notes,
             "random existing keys, batches of %" PRIu64 ", S4KV_SYNC_NONE", cfg.batch);
    free(samples);

    /* spot-check that the newest versions are the ones served */
    char key[KEY_BYTES], buf[VALUE_BYTES * 2];
    for (uint64_t n = 0; n < 1000; n++) {
        uint64_t i = rand_below(&rng, cfg.num);
        make_key(i, key);
        size_t vlen = 0;
        int rc = s4kv_get_into(st->db, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
        check_value(rc, i, st->ver[i], buf, vlen, "after overwrite");
    }
    s4kv_stats sst;
    if (s4kv_stats_get(st->db, &sst))
        die("s4kv_stats_get failed");
    uint64_t segs, all;
    dir_sizes(st->dir, &segs, &all);
    add_metric("bytes on disk after overwrite", "segments; garbage per s4kv_stats",
               "%.1f MiB (%.1f MiB garbage)", (double)segs / 1048576.0,
               (double)sst.garbage_bytes / 1048576.0);
}

static void run_reopen(state *st)
{
    uint64_t t0 = now_ns();
    db_close(st->db);
    uint64_t close_ns = now_ns() - t0;
    t0 = now_ns();
    st->db = db_open(st->dir, S4KV_SYNC_NONE);
    uint64_t open_ns = now_ns() - t0;
    uint64_t rng = cfg.seed ^ 0x72656f70656eULL, i = rand_below(&rng, cfg.num);
    char key[KEY_BYTES], buf[VALUE_BYTES * 2];
    make_key(i, key);
    size_t vlen = 0;
    uint64_t t1 = now_ns();
    int rc = s4kv_get_into(st->db, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
    uint64_t get_ns = now_ns() - t1;
    check_value(rc, i, st->ver[i], buf, vlen, "reopen");
    result *r = add_result("reopen", 1, open_ns + get_ns, NULL, 0);
    r->no_rate = 1;
    snprintf(r->notes, sizeof r->notes,
             "open %.1f ms (from the checkpoint written by close) + first get %.1f us; close took %.1f ms",
             (double)open_ns / 1e6, (double)get_ns / 1e3, (double)close_ns / 1e6);
    add_metric("reopen (open + first get)", "after close wrote a checkpoint", "%.1f ms",
               (double)(open_ns + get_ns) / 1e6);
    s4kv_stats sst;
    if (s4kv_stats_get(st->db, &sst))
        die("s4kv_stats_get failed");
    if (sst.keys != cfg.num)
        die("after reopen the database has %" PRIu64 " keys, expected %" PRIu64, sst.keys, cfg.num);
}

static void run_rebuild(state *st)
{
    uint64_t cat_ns;
    uint64_t bytes = read_segments(st->dir, &cat_ns);
    uint64_t t0 = now_ns();
    errbuf[0] = '\0';
    int rc = s4kv_rebuild_index(st->db, errbuf, sizeof errbuf);
    if (rc)
        die("s4kv_rebuild_index: %s: %s", s4kv_strerror(rc), errbuf);
    uint64_t ns = now_ns() - t0;
    s4kv_stats sst;
    if (s4kv_stats_get(st->db, &sst))
        die("s4kv_stats_get failed");
    if (sst.keys != cfg.num)
        die("after rebuild the database has %" PRIu64 " keys, expected %" PRIu64, sst.keys, cfg.num);
    double mbs = (double)bytes / 1048576.0 / ((double)ns / 1e9);
    double cat_mbs = (double)bytes / 1048576.0 / ((double)(cat_ns ? cat_ns : 1) / 1e9);
    result *r = add_result("rebuild", sst.next_seq, ns, NULL, 0);
    snprintf(r->notes, sizeof r->notes,
             "s4kv_rebuild_index (replay + checkpoint) of %.1f MiB: %.0f MiB/s; reading the segments (cat): %.0f MiB/s (%.0f%%); ops = records in the log",
             (double)bytes / 1048576.0, mbs, cat_mbs, 100.0 * mbs / cat_mbs);
}

/* ---- S3 workloads (--s3-url): remote gets next to raw ranged GETs with
 * libcurl, upload and download next to raw PUT and GET of the same files.
 * Every workload writes under its own fresh prefix below --s3-url
 * ("<name>-<unix time>-<pid>/"), so reruns never meet an older database. */

typedef struct s3loc {
    char url[1100];    /* s3://bucket/prefix/ of this run's database */
    char bucket[256];
    char prefix[768];  /* ends with '/' (or is empty) */
} s3loc;

/* The endpoint raw curl requests go to: the one the library uses when a
 * custom endpoint is configured; NULL for AWS itself (raw requests would
 * need signing there, so the curl workloads are skipped). */
static const char *s3_endpoint(void)
{
    const char *e = getenv("AWS_ENDPOINT_URL_S3");
    if (!e || !*e)
        e = getenv("AWS_ENDPOINT_URL");
    return e && *e ? e : NULL;
}

/* Fresh location name-<time>-<pid>/ under cfg.s3_url. */
static s3loc s3_location(const char *name)
{
    s3loc l;
    memset(&l, 0, sizeof l);
    const char *u = cfg.s3_url;
    if (strncmp(u, "s3://", 5) != 0)
        die("--s3-url: expected s3://BUCKET/PREFIX/, got '%s'", u);
    const char *b = u + 5, *slash = strchr(b, '/');
    size_t blen = slash ? (size_t)(slash - b) : strlen(b);
    if (blen == 0 || blen >= sizeof l.bucket)
        die("--s3-url: no bucket in '%s'", u);
    memcpy(l.bucket, b, blen);
    const char *p = slash ? slash + 1 : "";
    size_t plen = strlen(p);
    snprintf(l.prefix, sizeof l.prefix, "%s%s%s-%ld-%ld/", p, plen && p[plen - 1] != '/' ? "/" : "",
             name, (long)time(NULL), (long)getpid());
    snprintf(l.url, sizeof l.url, "s3://%s/%s", l.bucket, l.prefix);
    return l;
}

/* endpoint/bucket/prefix+name, path-style, every byte outside
 * [A-Za-z0-9-._~/] percent-encoded. */
static void object_url(char *out, size_t cap, const char *endpoint, const s3loc *l, const char *name)
{
    size_t elen = strlen(endpoint);
    while (elen && endpoint[elen - 1] == '/')
        elen--;
    int n = snprintf(out, cap, "%.*s/", (int)elen, endpoint);
    size_t o = n > 0 ? (size_t)n : 0;
    char key[2048];
    snprintf(key, sizeof key, "%s/%s%s", l->bucket, l->prefix, name);
    for (const unsigned char *s = (const unsigned char *)key; *s && o + 4 < cap; s++) {
        if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
            strchr("-._~/", *s))
            out[o++] = (char)*s;
        else
            o += (size_t)snprintf(out + o, cap - o, "%%%02X", *s);
    }
    out[o] = '\0';
}

typedef struct membuf {
    char *p;
    size_t n, cap;
} membuf;

static size_t membuf_write(char *data, size_t size, size_t nmemb, void *ctx)
{
    membuf *m = ctx;
    size_t n = size * nmemb;
    if (m->n + n > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->n + n)
            cap *= 2;
        char *q = realloc(m->p, cap);
        if (!q)
            return 0;
        m->p = q;
        m->cap = cap;
    }
    memcpy(m->p + m->n, data, n);
    m->n += n;
    return n;
}

/* How the raw curl requests authenticate, for the notes: not at all (the
 * physical reference: HTTP alone; s3rver accepts unsigned requests). */
static const char *signing_note(void)
{
    return "UNSIGNED (s3rver accepts any signature)";
}

/* New connections the raw requests opened (CURLINFO_NUM_CONNECTS is per
 * transfer, so curl_perform sums it); reset by curl_handle. */
static long curl_conns;

static CURL *curl_handle(void)
{
    CURL *h = curl_easy_init();
    if (!h)
        die("curl_easy_init failed");
    curl_conns = 0;
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    return h;
}

/* One raw request on h; dies unless the status is `want`. */
static void curl_perform(CURL *h, const char *what, const char *url, long want)
{
    CURLcode cc = curl_easy_perform(h);
    long c = 0;
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &c);
    curl_conns += c;
    if (cc != CURLE_OK)
        die("%s %s: %s", what, url, curl_easy_strerror(cc));
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status != want)
        die("%s %s: HTTP %ld, expected %ld", what, url, status, want);
}

static long curl_connects(CURL *h)
{
    (void)h;
    return curl_conns;
}

/* Loads keys 0..count-1 (version 1) into a new database at dir, batches of
 * cfg.batch, S4KV_SYNC_NONE; count 0 = until the segments hold min_bytes.
 * Returns the open handle; *loaded gets the key count. */
static s4kv_db *load_db(const char *dir, uint64_t count, uint64_t min_bytes, uint64_t *loaded)
{
    DIR *probe = opendir(dir);
    if (probe) {
        closedir(probe);
        die("%s already exists; give --dir an empty directory", dir);
    }
    s4kv_db *db = db_open(dir, S4KV_SYNC_NONE);
    s4kv_batch *b = s4kv_batch_new();
    if (!b)
        die("out of memory");
    char key[KEY_BYTES], val[VALUE_BYTES];
    uint64_t i = 0;
    for (;;) {
        if (count && i >= count)
            break;
        if (!count && i % (cfg.batch * 16) == 0) {
            s4kv_stats sst;
            if (s4kv_stats_get(db, &sst))
                die("s4kv_stats_get failed");
            if (sst.segment_bytes >= min_bytes)
                break;
        }
        make_key(i, key);
        make_value(i, 1, val);
        if (s4kv_batch_put(b, key, KEY_BYTES, val, VALUE_BYTES))
            die("s4kv_batch_put failed");
        i++;
        if (s4kv_batch_count(b) == cfg.batch) {
            errbuf[0] = '\0';
            int rc = s4kv_write(db, b, errbuf, sizeof errbuf);
            if (rc)
                die("s4kv_write: %s: %s", s4kv_strerror(rc), errbuf);
            s4kv_batch_clear(b);
        }
    }
    if (s4kv_batch_count(b)) {
        errbuf[0] = '\0';
        int rc = s4kv_write(db, b, errbuf, sizeof errbuf);
        if (rc)
            die("s4kv_write: %s: %s", s4kv_strerror(rc), errbuf);
    }
    s4kv_batch_free(b);
    *loaded = i;
    return db;
}

static s4kv_s3_report s3_upload(s4kv_db *db, const char *url, uint64_t *ns)
{
    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = url;
    s4kv_s3_report rep;
    uint64_t t0 = now_ns();
    errbuf[0] = '\0';
    int rc = s4kv_upload(db, &o, &rep, errbuf, sizeof errbuf);
    *ns = now_ns() - t0;
    if (rc)
        die("s4kv_upload to %s: %s: %s", url, s4kv_strerror(rc), errbuf);
    return rep;
}

/* A read seam that serves segments from a local directory and records every
 * (segment, offset, length) the engine asks for: the byte ranges a remote
 * get fetches, for curlget to fetch the same way. */
typedef struct range {
    uint32_t segno;
    uint64_t off;
    size_t len;
} range;

typedef struct recorder {
    const char *dir;
    range *v;
    size_t n, cap;
} recorder;

static int rec_read_range(void *ctx, uint32_t segno, uint64_t off, void *buf, size_t len,
                          char *err, size_t errlen)
{
    recorder *r = ctx;
    char path[4200];
    snprintf(path, sizeof path, "%s/data_%06u.s4kv", r->dir, segno);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t got = fd < 0 ? -1 : pread(fd, buf, len, (off_t)off);
    if (fd >= 0)
        close(fd);
    if (got != (ssize_t)len) {
        snprintf(err, errlen, "pread %s at %" PRIu64 ": %s", path, off,
                 got < 0 ? strerror(errno) : "short read");
        return S4KV_EIO;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 1024;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        if (!r->v)
            die("out of memory");
    }
    r->v[r->n++] = (range){ segno, off, len };
    return 0;
}

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b)
        die("copy %s to %s: %s", from, to, strerror(errno));
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
        if (fwrite(buf, 1, n, b) != n)
            die("writing %s: %s", to, strerror(errno));
    if (ferror(a) || fclose(b))
        die("copy %s to %s: %s", from, to, strerror(errno));
    fclose(a);
}

/* remoteget and curlget: cfg.remote_num keys uploaded; cfg.remote_reads
 * random gets through s4kv_open_s3 (no local directory), then the same byte
 * ranges as raw ranged GETs with libcurl on one reused easy handle. Each
 * starts with WARMUP_GETS untimed requests. */
#define WARMUP_GETS 200
static void run_remote(const char *parent)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/remote", parent);
    uint64_t loaded;
    s4kv_db *db = load_db(dir, cfg.remote_num, 0, &loaded);
    s3loc loc = s3_location("remoteget");
    uint64_t up_ns;
    s4kv_s3_report up = s3_upload(db, loc.url, &up_ns);
    db_close(db);
    fprintf(stderr, "  (setup: %" PRIu64 " keys uploaded to %s: %.1f MiB, %" PRIu64 " requests)\n",
            loaded, loc.url, (double)up.bytes_uploaded / 1048576.0, up.requests);

    uint64_t *keys = xcalloc(cfg.remote_reads, sizeof *keys);
    uint64_t rng = cfg.seed ^ 0x72656d6f7465ULL;
    for (uint64_t n = 0; n < cfg.remote_reads; n++)
        keys[n] = rand_below(&rng, cfg.remote_num);
    double *samples = xcalloc(cfg.remote_reads, sizeof *samples);
    char key[KEY_BYTES], buf[VALUE_BYTES * 2];

    if (selected("remoteget")) {
        s4kv_s3_options o;
        s4kv_s3_options_init(&o);
        o.url = loc.url;
        s4kv_db *rdb = NULL;
        uint64_t t0 = now_ns();
        errbuf[0] = '\0';
        int rc = s4kv_open_s3(NULL, NULL, &o, &rdb, errbuf, sizeof errbuf);
        if (rc)
            die("s4kv_open_s3 %s: %s: %s", loc.url, s4kv_strerror(rc), errbuf);
        uint64_t open_ns = now_ns() - t0;
        s4kv_s3_report ro;
        s4kv_s3_stats(rdb, &ro);
        /* Warm-up (not timed, not counted): the emulator's JIT and caches,
         * the same for curlget below. */
        for (uint64_t n = 0; n < WARMUP_GETS; n++) {
            uint64_t i = n % cfg.remote_num;
            make_key(i, key);
            size_t vlen = 0;
            rc = s4kv_get_into(rdb, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
            check_value(rc, i, 1, buf, vlen, "remoteget warm-up");
        }
        s4kv_s3_report r0, r1;
        s4kv_s3_stats(rdb, &r0);
        uint64_t t_start = now_ns();
        for (uint64_t n = 0; n < cfg.remote_reads; n++) {
            make_key(keys[n], key);
            size_t vlen = 0;
            uint64_t g0 = now_ns();
            rc = s4kv_get_into(rdb, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
            samples[n] = (double)(now_ns() - g0);
            check_value(rc, keys[n], 1, buf, vlen, "remoteget");
        }
        uint64_t ns = now_ns() - t_start;
        s4kv_s3_stats(rdb, &r1);
        db_close(rdb);
        double per_get = (double)(r1.requests - r0.requests) / (double)cfg.remote_reads;
        result *r = add_result("remoteget", cfg.remote_reads, ns, samples, cfg.remote_reads);
        snprintf(r->notes, sizeof r->notes,
                 "s4kv_open_s3(NULL) of %" PRIu64 " keys (open %.1f ms, %" PRIu64
                 " requests), uniform gets, every value checked; %.2f requests per get, %" PRIu64
                 " retries, %" PRIu64 " new connections",
                 cfg.remote_num, (double)open_ns / 1e6, ro.requests, per_get,
                 r1.retries - r0.retries, r1.connections - r0.connections);
        add_metric("requests per remote get", "s4kv_s3_stats delta over the remoteget gets",
                   "%.2f", per_get);
    }

    if (selected("curlget")) {
        const char *ep = s3_endpoint();
        if (!ep) {
            fprintf(stderr, "  curlget skipped: no custom endpoint (raw GETs are unsigned; they "
                            "need s3rver or another endpoint that accepts them)\n");
        } else {
            /* The ranges: the same gets on a local read-only copy of the
             * uploaded MANIFEST (s4kv_download writes it with every segment's
             * committed length; only sealed segments may be read through the
             * seam) and checkpoint, segments served by the recording seam. */
            char rdir[4200], ddir[4200];
            snprintf(rdir, sizeof rdir, "%s/ranges", parent);
            snprintf(ddir, sizeof ddir, "%s/remote-download", parent);
            s4kv_s3_options o;
            s4kv_s3_options_init(&o);
            o.url = loc.url;
            errbuf[0] = '\0';
            int rc = s4kv_download(ddir, &o, NULL, errbuf, sizeof errbuf);
            if (rc)
                die("s4kv_download %s: %s: %s", loc.url, s4kv_strerror(rc), errbuf);
            if (mkdir(rdir, 0755))
                die("mkdir %s: %s", rdir, strerror(errno));
            DIR *d = opendir(ddir);
            if (!d)
                die("opendir %s: %s", dir, strerror(errno));
            struct dirent *de;
            while ((de = readdir(d))) {
                size_t l = strlen(de->d_name);
                if (strcmp(de->d_name, "MANIFEST") == 0 ||
                    (strncmp(de->d_name, "index_", 6) == 0 && l > 5 &&
                     strcmp(de->d_name + l - 5, ".s4ki") == 0)) {
                    char a[8400], b[8400];
                    snprintf(a, sizeof a, "%s/%s", ddir, de->d_name);
                    snprintf(b, sizeof b, "%s/%s", rdir, de->d_name);
                    copy_file(a, b);
                }
            }
            closedir(d);
            recorder rec = { .dir = ddir };
            s4kv_remote seam = { .read_range = rec_read_range, .ctx = &rec };
            s4kv_options opt;
            s4kv_options_init(&opt);
            opt.read_only = 1;
            opt.create_if_missing = 0;
            opt.remote = &seam;
            s4kv_db *ldb = NULL;
            errbuf[0] = '\0';
            rc = s4kv_open(rdir, &opt, &ldb, errbuf, sizeof errbuf);
            if (rc)
                die("open %s with the recording seam: %s: %s", rdir, s4kv_strerror(rc), errbuf);
            for (uint64_t n = 0; n < cfg.remote_reads; n++) {
                make_key(keys[n], key);
                size_t vlen = 0;
                size_t before = rec.n;
                rc = s4kv_get_into(ldb, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
                check_value(rc, keys[n], 1, buf, vlen, "curlget (ranges)");
                if (rec.n != before + 1)
                    die("curlget: get %.16s read %zu ranges, expected 1", key, rec.n - before);
            }
            db_close(ldb);

            CURL *h = curl_handle();
            membuf mb = { 0 };
            curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, membuf_write);
            curl_easy_setopt(h, CURLOPT_WRITEDATA, &mb);
            char url[4096], rg[64], name[64];
            char *want = NULL;
            size_t want_cap = 0;
            for (size_t n = 0; n < WARMUP_GETS; n++) {
                const range *g = &rec.v[n % rec.n];
                snprintf(name, sizeof name, "data_%06u.s4kv", g->segno);
                object_url(url, sizeof url, ep, &loc, name);
                snprintf(rg, sizeof rg, "%" PRIu64 "-%" PRIu64, g->off, g->off + g->len - 1);
                curl_easy_setopt(h, CURLOPT_URL, url);
                curl_easy_setopt(h, CURLOPT_RANGE, rg);
                mb.n = 0;
                curl_perform(h, "ranged GET", url, 206);
            }
            uint64_t t_start = now_ns();
            for (size_t n = 0; n < rec.n; n++) {
                const range *g = &rec.v[n];
                snprintf(name, sizeof name, "data_%06u.s4kv", g->segno);
                object_url(url, sizeof url, ep, &loc, name);
                snprintf(rg, sizeof rg, "%" PRIu64 "-%" PRIu64, g->off, g->off + g->len - 1);
                curl_easy_setopt(h, CURLOPT_URL, url);
                curl_easy_setopt(h, CURLOPT_RANGE, rg);
                mb.n = 0;
                uint64_t g0 = now_ns();
                curl_perform(h, "ranged GET", url, 206);
                samples[n] = (double)(now_ns() - g0);
                /* the bytes must be the segment's (checked outside the timing) */
                if (g->len > want_cap) {
                    want_cap = g->len;
                    want = realloc(want, want_cap);
                    if (!want)
                        die("out of memory");
                }
                char path[4300];
                snprintf(path, sizeof path, "%s/%s", dir, name);
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0 || pread(fd, want, g->len, (off_t)g->off) != (ssize_t)g->len)
                    die("pread %s: %s", path, strerror(errno));
                close(fd);
                if (mb.n != g->len || memcmp(mb.p, want, g->len) != 0)
                    die("curlget: %s bytes %s: %zu bytes differ from the segment's %zu", url, rg,
                        mb.n, g->len);
            }
            uint64_t ns = now_ns() - t_start;
            long conns = curl_connects(h);
            curl_easy_cleanup(h);
            free(mb.p);
            free(want);
            uint64_t total = 0;
            for (size_t n = 0; n < rec.n; n++)
                total += rec.v[n].len;
            result *r = add_result("curlget", rec.n, ns, samples, rec.n);
            snprintf(r->notes, sizeof r->notes,
                     "the remoteget byte ranges (%.0f bytes average) as raw ranged GETs, libcurl, one "
                     "reused easy handle (%ld connection%s), %s, bytes checked",
                     (double)total / (double)(rec.n ? rec.n : 1), conns, conns == 1 ? "" : "s",
                     signing_note());
            free(rec.v);
        }
    }
    free(samples);
    free(keys);
}

/* Names of the files a database directory holds that upload sends:
 * segments, checkpoints and MANIFEST; sizes in *sizes. */
static size_t xfer_files(const char *dir, char names[][64], uint64_t *sizes, size_t cap)
{
    DIR *d = opendir(dir);
    if (!d)
        die("opendir %s: %s", dir, strerror(errno));
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < cap) {
        size_t l = strlen(de->d_name);
        int seg = strncmp(de->d_name, "data_", 5) == 0 && l > 10 && strcmp(de->d_name + l - 5, ".s4kv") == 0;
        int ckpt = strncmp(de->d_name, "index_", 6) == 0 && l > 11 && strcmp(de->d_name + l - 5, ".s4ki") == 0;
        if (!seg && !ckpt && strcmp(de->d_name, "MANIFEST") != 0)
            continue;
        struct stat sb;
        if (fstatat(dirfd(d), de->d_name, &sb, 0) || l >= 64)
            continue;
        memcpy(names[n], de->d_name, l + 1);
        sizes[n++] = (uint64_t)sb.st_size;
    }
    closedir(d);
    return n;
}

static double mibps(uint64_t bytes, uint64_t ns)
{
    return (double)bytes / 1048576.0 / ((double)(ns ? ns : 1) / 1e9);
}

/* upload and download: a database of about cfg.xfer_mib MiB; s4kv_upload
 * and s4kv_download next to raw PUTs and GETs of the same files with libcurl
 * (one after another on one reused easy handle, single PUTs, unsigned). The
 * files are the ones the download produced: exactly the uploaded objects
 * (segments, the checkpoint MANIFEST names, MANIFEST). */
static void run_xfer(const char *parent)
{
    char dir[4200], ddir[4200];
    snprintf(dir, sizeof dir, "%s/xfer", parent);
    snprintf(ddir, sizeof ddir, "%s/xfer-download", parent);
    uint64_t loaded;
    s4kv_db *db = load_db(dir, 0, cfg.xfer_mib << 20, &loaded);
    s4kv_stats sst;
    if (s4kv_stats_get(db, &sst))
        die("s4kv_stats_get failed");
    uint64_t seg_bytes = sst.segment_bytes;
    s3loc loc = s3_location("upload");
    uint64_t up_ns;
    s4kv_s3_report up = s3_upload(db, loc.url, &up_ns);
    db_close(db);

    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = loc.url;
    s4kv_s3_report dr;
    uint64_t t0 = now_ns();
    errbuf[0] = '\0';
    int rc = s4kv_download(ddir, &o, &dr, errbuf, sizeof errbuf);
    uint64_t dl_ns = now_ns() - t0;
    if (rc)
        die("s4kv_download %s: %s: %s", loc.url, s4kv_strerror(rc), errbuf);

    char names[64][64];
    uint64_t sizes[64], total = 0;
    size_t nf = xfer_files(ddir, names, sizes, 64);
    for (size_t i = 0; i < nf; i++)
        total += sizes[i];
    const char *ep = s3_endpoint();
    char url[4096], path[4400];

    if (selected("upload")) {
        result *r = add_result("upload", up.objects_uploaded, up_ns, NULL, 0);
        r->no_rate = 1;
        snprintf(r->notes, sizeof r->notes,
                 "s4kv_upload of %" PRIu64 " keys: %.1f MiB (%.1f MiB of segments) in %" PRIu64
                 " objects, %.1f MiB/s; %" PRIu64 " requests, %" PRIu64
                 " connections (multipart >= 16 MiB, 8 MiB parts, 8 parallel); ops = objects",
                 loaded, (double)up.bytes_uploaded / 1048576.0, (double)seg_bytes / 1048576.0,
                 up.objects_uploaded,
                 mibps(up.bytes_uploaded, up_ns), up.requests, up.connections);
        add_metric("upload MiB/s (s4kv_upload)", "segments + checkpoint + MANIFEST", "%.1f",
                   mibps(up.bytes_uploaded, up_ns));
    }
    if (selected("upload") && ep) {
        s3loc cl = s3_location("curlput");
        CURL *h = curl_handle();
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        membuf sink = { 0 };
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, membuf_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
        t0 = now_ns();
        for (size_t i = 0; i < nf; i++) {
            snprintf(path, sizeof path, "%s/%s", ddir, names[i]);
            FILE *f = fopen(path, "rb");
            if (!f)
                die("open %s: %s", path, strerror(errno));
            object_url(url, sizeof url, ep, &cl, names[i]);
            curl_easy_setopt(h, CURLOPT_URL, url);
            curl_easy_setopt(h, CURLOPT_READDATA, f);
            curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)sizes[i]);
            curl_perform(h, "PUT", url, 200);
            fclose(f);
        }
        uint64_t ns = now_ns() - t0;
        long conns = curl_connects(h);
        curl_easy_cleanup(h);
        free(sink.p);
        result *r = add_result("curlput", nf, ns, NULL, 0);
        r->no_rate = 1;
        snprintf(r->notes, sizeof r->notes,
                 "raw PUT of the same %zu files (%.1f MiB), one at a time, single PUTs, libcurl, "
                 "%s: %.1f MiB/s, %ld connection%s; ops = objects",
                 nf, (double)total / 1048576.0, signing_note(), mibps(total, ns), conns,
                 conns == 1 ? "" : "s");
        add_metric("raw PUT MiB/s (libcurl)", "the same files, one at a time", "%.1f",
                   mibps(total, ns));
    }

    if (selected("download")) {
        result *r = add_result("download", dr.objects_downloaded, dl_ns, NULL, 0);
        r->no_rate = 1;
        snprintf(r->notes, sizeof r->notes,
                 "s4kv_download into an empty directory: %.1f MiB in %" PRIu64
                 " objects, %.1f MiB/s, every batch checked; %" PRIu64 " requests, %" PRIu64
                 " connections; ops = objects",
                 (double)dr.bytes_downloaded / 1048576.0, dr.objects_downloaded,
                 mibps(dr.bytes_downloaded, dl_ns), dr.requests, dr.connections);
        add_metric("download MiB/s (s4kv_download)", "segments + checkpoint, checked", "%.1f",
                   mibps(dr.bytes_downloaded, dl_ns));
    }
    if (selected("download") && ep) {
        char cdir[4200];
        snprintf(cdir, sizeof cdir, "%s/xfer-curl", parent);
        if (mkdir(cdir, 0755))
            die("mkdir %s: %s", cdir, strerror(errno));
        CURL *h = curl_handle();
        uint64_t got = 0;
        t0 = now_ns();
        for (size_t i = 0; i < nf; i++) {
            snprintf(path, sizeof path, "%s/%s", cdir, names[i]);
            FILE *f = fopen(path, "wb");
            if (!f)
                die("create %s: %s", path, strerror(errno));
            object_url(url, sizeof url, ep, &loc, names[i]);
            curl_easy_setopt(h, CURLOPT_URL, url);
            curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, NULL);
            curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
            curl_perform(h, "GET", url, 200);
            if (fclose(f))
                die("writing %s: %s", path, strerror(errno));
            struct stat sb;
            if (stat(path, &sb))
                die("stat %s: %s", path, strerror(errno));
            got += (uint64_t)sb.st_size;
        }
        uint64_t ns = now_ns() - t0;
        long conns = curl_connects(h);
        curl_easy_cleanup(h);
        result *r = add_result("curlgetfile", nf, ns, NULL, 0);
        r->no_rate = 1;
        snprintf(r->notes, sizeof r->notes,
                 "raw GET of the same %zu objects to files (%.1f MiB), one at a time, libcurl, "
                 "%s, unchecked: %.1f MiB/s, %ld connection%s; ops = objects",
                 nf, (double)got / 1048576.0, signing_note(), mibps(got, ns), conns,
                 conns == 1 ? "" : "s");
        add_metric("raw GET MiB/s (libcurl)", "the same objects, one at a time", "%.1f",
                   mibps(got, ns));
    }
    if (!ep && (selected("upload") || selected("download")))
        fprintf(stderr, "  raw curl PUT/GET skipped: no custom endpoint (they are unsigned)\n");
}

/* ---- fillsync: S4KV_SYNC_BATCH, one record per write, T writer threads */

typedef struct writer {
    s4kv_db *db;
    pthread_barrier_t *start;
    uint64_t first, count;
    double *samples;
    int rc;
    char err[256];
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    char key[KEY_BYTES], val[VALUE_BYTES];
    pthread_barrier_wait(w->start);
    for (uint64_t n = 0; n < w->count; n++) {
        uint64_t i = w->first + n;
        make_key(i, key);
        make_value(i, 1, val);
        uint64_t t0 = now_ns();
        int rc = s4kv_put(w->db, key, KEY_BYTES, val, VALUE_BYTES, w->err, sizeof w->err);
        w->samples[n] = (double)(now_ns() - t0);
        if (rc) {
            w->rc = rc;
            break;
        }
    }
    return NULL;
}

static void run_fillsync(const char *parent, int threads)
{
    char dir[4200], name[32];
    snprintf(name, sizeof name, "fillsync%d", threads);
    snprintf(dir, sizeof dir, "%s/%s", parent, name);
    DIR *probe = opendir(dir);
    if (probe) {
        closedir(probe);
        die("%s already exists; give --dir an empty directory", dir);
    }
    s4kv_db *db = db_open(dir, S4KV_SYNC_BATCH);
    uint64_t total = cfg.sync_ops * (uint64_t)threads;
    double *samples = xcalloc(total, sizeof *samples);
    writer *w = xcalloc((size_t)threads, sizeof *w);
    pthread_t *tid = xcalloc((size_t)threads, sizeof *tid);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    for (int t = 0; t < threads; t++) {
        w[t] = (writer){ .db = db, .start = &start, .first = (uint64_t)t * cfg.sync_ops,
                         .count = cfg.sync_ops, .samples = samples + (uint64_t)t * cfg.sync_ops };
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
            die("%s: s4kv_put: %s: %s", name, s4kv_strerror(w[t].rc), w[t].err);
    pthread_barrier_destroy(&start);

    result *r = add_result(name, total, ns, samples, total);
    snprintf(r->notes, sizeof r->notes,
             "S4KV_SYNC_BATCH (fdatasync before ack), s4kv_put of 1 record, %d writer thread%s x %" PRIu64,
             threads, threads > 1 ? "s" : "", cfg.sync_ops);

    /* every acknowledged write must be there after a reopen */
    db_close(db);
    db = db_open(dir, S4KV_SYNC_BATCH);
    s4kv_stats sst;
    if (s4kv_stats_get(db, &sst))
        die("s4kv_stats_get failed");
    if (sst.keys != total)
        die("%s: %" PRIu64 " keys after reopen, expected %" PRIu64, name, sst.keys, total);
    char key[KEY_BYTES], buf[VALUE_BYTES * 2];
    uint64_t i = total - 1;
    make_key(i, key);
    size_t vlen = 0;
    int rc = s4kv_get_into(db, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
    check_value(rc, i, 1, buf, vlen, name);
    db_close(db);
    free(tid);
    free(w);
    free(samples);
}

/* ---- report */

static void machine_info(char *cpu, size_t cpulen, char *fs, size_t fslen, const char *dir)
{
    snprintf(cpu, cpulen, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *c = strchr(line, ':');
                if (c) {
                    c++;
                    while (*c == ' ' || *c == '\t')
                        c++;
                    c[strcspn(c, "\n")] = '\0';
                    snprintf(cpu, cpulen, "%s", c);
                }
                break;
            }
        }
        fclose(f);
    }
    struct statfs sfs;
    const char *t = "unknown";
    if (statfs(dir, &sfs) == 0) {
        switch ((unsigned long)sfs.f_type) {
        case 0xEF53: t = "ext4"; break;
        case 0x58465342: t = "xfs"; break;
        case 0x9123683E: t = "btrfs"; break;
        case 0x01021994: t = "tmpfs (fdatasync is a no-op!)"; break;
        case 0x794c7630: t = "overlayfs"; break;
        case 0x2fc12fc1: t = "zfs"; break;
        default: break;
        }
        snprintf(fs, fslen, "%s (0x%lx)", t, (unsigned long)sfs.f_type);
    } else {
        snprintf(fs, fslen, "%s", t);
    }
}

static void fmt_us(char *out, size_t len, double us)
{
    if (us < 0)
        snprintf(out, len, "-");
    else if (us < 10)
        snprintf(out, len, "%.2f", us);
    else if (us < 1000)
        snprintf(out, len, "%.1f", us);
    else
        snprintf(out, len, "%.0f", us);
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v)
{
    if (v < 0 || !isfinite(v))
        fputs("null", f);
    else
        fprintf(f, "%.6g", v);
}

static void write_json(const char *path, const char *cpu, long ncpu, const char *kernel,
                       const char *fs)
{
    FILE *f = fopen(path, "w");
    if (!f)
        die("cannot write %s: %s", path, strerror(errno));
    fprintf(f, "{\n  \"engine\": \"s4kv\", \"version\": ");
    json_str(f, S4KV_VERSION_STRING);
    fprintf(f, ",\n  \"machine\": {\"nproc\": %ld, \"cpu\": ", ncpu);
    json_str(f, cpu);
    fprintf(f, ", \"kernel\": ");
    json_str(f, kernel);
    fprintf(f, ", \"filesystem\": ");
    json_str(f, fs);
    fprintf(f, "},\n  \"config\": {\"num\": %" PRIu64 ", \"reads\": %" PRIu64
               ", \"missing\": %" PRIu64 ", \"overwrites\": %" PRIu64
               ", \"sync_ops_per_thread\": %" PRIu64 ", \"batch\": %" PRIu64
               ", \"key_bytes\": %d, \"value_bytes\": %d, \"seed\": %" PRIu64 "},\n",
            cfg.num, cfg.reads, cfg.missing, cfg.overwrites, cfg.sync_ops, cfg.batch,
            KEY_BYTES, VALUE_BYTES, cfg.seed);
    fprintf(f, "  \"results\": [\n");
    for (size_t i = 0; i < nresults; i++) {
        const result *r = &results[i];
        fprintf(f, "    {\"workload\": ");
        json_str(f, r->name);
        fprintf(f, ", \"ops\": %" PRIu64 ", \"seconds\": ", r->ops);
        json_num(f, r->secs);
        fprintf(f, ", \"ops_per_sec\": ");
        json_num(f, r->secs > 0 && !r->no_rate ? (double)r->ops / r->secs : -1);
        fprintf(f, ", \"p50_us\": ");
        json_num(f, r->p50);
        fprintf(f, ", \"p99_us\": ");
        json_num(f, r->p99);
        fprintf(f, ", \"p999_us\": ");
        json_num(f, r->p999);
        fprintf(f, ", \"peak_rss_kib\": %ld, \"notes\": ", r->rss_kib);
        json_str(f, r->notes);
        fprintf(f, "}%s\n", i + 1 < nresults ? "," : "");
    }
    fprintf(f, "  ],\n  \"metrics\": [\n");
    for (size_t i = 0; i < nmetrics; i++) {
        fprintf(f, "    {\"name\": ");
        json_str(f, metrics[i].name);
        fprintf(f, ", \"value\": ");
        json_str(f, metrics[i].value);
        fprintf(f, ", \"notes\": ");
        json_str(f, metrics[i].notes);
        fprintf(f, "}%s\n", i + 1 < nmetrics ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (fclose(f))
        die("writing %s: %s", path, strerror(errno));
}

static void print_report(const char *cpu, long ncpu, const char *kernel, const char *fs)
{
    printf("## s4kv %s benchmark\n\n", S4KV_VERSION_STRING);
    printf("Machine: %ld CPU%s, %s; Linux %s; database on %s.\n", ncpu, ncpu == 1 ? "" : "s",
           cpu, kernel, fs);
    printf("Keys %d bytes, values %d bytes (half random, half repeated: Snappy ~2x), seed 0x%" PRIx64
           ", %" PRIu64 " keys.\n",
           KEY_BYTES, VALUE_BYTES, cfg.seed, cfg.num);
    if (cfg.s3_url)
        printf("S3: %s on %s; remoteget/curlget: %" PRIu64 " keys, %" PRIu64
               " gets; upload/download: a database of about %" PRIu64 " MiB.\n",
               cfg.s3_url, s3_endpoint() ? s3_endpoint() : "AWS S3", cfg.remote_num,
               cfg.remote_reads, cfg.xfer_mib);
    printf("\n");
    printf("| workload | ops | ops/s | p50 us | p99 us | p99.9 us | peak RSS MiB | notes |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (size_t i = 0; i < nresults; i++) {
        const result *r = &results[i];
        char a[32], b[32], c[32], ops[32];
        fmt_us(a, sizeof a, r->p50);
        fmt_us(b, sizeof b, r->p99);
        fmt_us(c, sizeof c, r->p999);
        if (r->secs > 0 && !r->no_rate)
            snprintf(ops, sizeof ops, "%.0f", (double)r->ops / r->secs);
        else
            snprintf(ops, sizeof ops, "-");
        printf("| %s | %" PRIu64 " | %s | %s | %s | %s | %.1f | %s |\n", r->name, r->ops, ops, a,
               b, c, (double)r->rss_kib / 1024.0, r->notes);
    }
    if (nmetrics) {
        printf("\n| metric | value | notes |\n|---|---:|---|\n");
        for (size_t i = 0; i < nmetrics; i++)
            printf("| %s | %s | %s |\n", metrics[i].name, metrics[i].value, metrics[i].notes);
    }
    printf("\nPeak RSS is the whole process (getrusage ru_maxrss), including the harness's own\n"
           "arrays (about %.0f MiB: key order, versions, latency samples).\n",
           (double)(cfg.num * 5 + (cfg.reads > cfg.missing ? cfg.reads : cfg.missing) * 8) /
               1048576.0);
}

/* ---- main */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "s4kv-bench: remove %s: %s\n", path, strerror(errno));
    return 0;
}

/* The temporary parent directory: removed after a successful run, kept (and
 * named) after a failure so the databases can be inspected. */
static char tmp_parent[3840];
static int run_ok;

static void at_exit_cleanup(void)
{
    if (!tmp_parent[0])
        return;
    if (run_ok)
        nftw(tmp_parent, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        fprintf(stderr, "s4kv-bench: databases kept in %s\n", tmp_parent);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: s4kv-bench [options]\n"
            "\n"
            "db_bench-style workloads on s4kv with a fixed seed; prints a Markdown table.\n"
            "Workloads: fillrandom readrandom readmissing overwrite reopen rebuild\n"
            "           fillsync1 fillsync8 (\"fillsync\" = both)\n"
            "           with --s3-url: remoteget curlget upload download\n"
            "\n"
            "  --num N        keys loaded by fillrandom (default %" PRIu64 ")\n"
            "  --reads N      readrandom gets (default %" PRIu64 ")\n"
            "  --missing N    readmissing gets (default %" PRIu64 ")\n"
            "  --overwrites N overwrite puts (default %" PRIu64 ")\n"
            "  --sync-ops N   fillsync puts per writer thread (default %" PRIu64 ")\n"
            "  --batch N      records per batch for fills (default %" PRIu64 ")\n"
            "  --seed N       (default %" PRIu64 ")\n"
            "  --only LIST    comma-separated workloads to report (the fill still runs\n"
            "                 as setup when a later workload needs data)\n"
            "  --dir DIR      put the databases under DIR (kept); default: a fresh\n"
            "                 temporary directory, removed at the end\n"
            "  --json FILE    also write the results as JSON\n"
            "  --s3-url URL   also run the S3 workloads under s3://BUCKET/PREFIX/ (each in a\n"
            "                 fresh sub-prefix, left there), configured like the AWS CLI\n"
            "                 (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...). curlget and the\n"
            "                 raw PUT/GET send UNSIGNED requests (s3rver accepts them) to\n"
            "                 the custom endpoint, path-style; skipped without one\n"
            "                 bench/with-s3rver.sh runs a command with s3rver started\n"
            "  --remote-num N keys uploaded for remoteget/curlget (default %" PRIu64 ")\n"
            "  --remote-reads N  remoteget gets = curlget GETs (default %" PRIu64 ")\n"
            "  --s3-mib N     database size for upload/download, MiB (default %" PRIu64 ")\n"
            "  --help\n",
            cfg.num, cfg.reads, cfg.missing, cfg.overwrites, cfg.sync_ops, cfg.batch, cfg.seed,
            cfg.remote_num, cfg.remote_reads, cfg.xfer_mib);
}

static uint64_t parse_count(const char *opt, const char *s, uint64_t min)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-' || v < min)
        die("%s: expected a number >= %" PRIu64 ", got '%s'", opt, min, s);
    return (uint64_t)v;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        { "num", required_argument, NULL, 'n' },      { "reads", required_argument, NULL, 'r' },
        { "missing", required_argument, NULL, 'm' },  { "overwrites", required_argument, NULL, 'o' },
        { "sync-ops", required_argument, NULL, 's' }, { "batch", required_argument, NULL, 'b' },
        { "seed", required_argument, NULL, 'S' },     { "only", required_argument, NULL, 'O' },
        { "dir", required_argument, NULL, 'd' },      { "json", required_argument, NULL, 'j' },
        { "s3-url", required_argument, NULL, 'U' },   { "remote-num", required_argument, NULL, 'N' },
        { "remote-reads", required_argument, NULL, 'R' }, { "s3-mib", required_argument, NULL, 'M' },
        { "help", no_argument, NULL, 'h' },           { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        switch (c) {
        case 'n': cfg.num = parse_count("--num", optarg, 1); break;
        case 'r': cfg.reads = parse_count("--reads", optarg, 0); break;
        case 'm': cfg.missing = parse_count("--missing", optarg, 0); break;
        case 'o': cfg.overwrites = parse_count("--overwrites", optarg, 0); break;
        case 's': cfg.sync_ops = parse_count("--sync-ops", optarg, 1); break;
        case 'b': cfg.batch = parse_count("--batch", optarg, 1); break;
        case 'S': cfg.seed = parse_count("--seed", optarg, 0); break;
        case 'O': cfg.only = optarg; break;
        case 'd': cfg.dir = optarg; break;
        case 'j': cfg.json = optarg; break;
        case 'U': cfg.s3_url = optarg; break;
        case 'N': cfg.remote_num = parse_count("--remote-num", optarg, 1); break;
        case 'R': cfg.remote_reads = parse_count("--remote-reads", optarg, 1); break;
        case 'M': cfg.xfer_mib = parse_count("--s3-mib", optarg, 1); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "s4kv-bench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (cfg.num > UINT32_MAX)
        die("--num: at most %u", UINT32_MAX);
    if (cfg.batch > S4KV_MAX_BATCH_OPS)
        die("--batch: at most %u", S4KV_MAX_BATCH_OPS);
    check_only();
    if (!cfg.s3_url && cfg.only)
        for (const char *const *w = (const char *const[]){ "remoteget", "curlget", "upload",
                                                            "download", NULL }; *w; w++)
            if (selected(*w))
                die("--only %s: the S3 workloads need --s3-url s3://BUCKET/PREFIX/", *w);
    if (cfg.remote_num > UINT32_MAX || cfg.xfer_mib > 65536)
        die("--remote-num at most %u, --s3-mib at most 65536", UINT32_MAX);

    char parent[3840];
    if (cfg.dir) {
        snprintf(parent, sizeof parent, "%s", cfg.dir);
        if (mkdir(parent, 0755) && errno != EEXIST)
            die("mkdir %s: %s", parent, strerror(errno));
    } else {
        const char *t = getenv("TMPDIR");
        snprintf(parent, sizeof parent, "%s/s4kv-bench.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(parent))
            die("mkdtemp %s: %s", parent, strerror(errno));
        memcpy(tmp_parent, parent, sizeof parent);
        atexit(at_exit_cleanup);
    }
    char cpu[256], fs[64], kernel[128];
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct utsname un;
    snprintf(kernel, sizeof kernel, "%s", uname(&un) == 0 ? un.release : "?");
    machine_info(cpu, sizeof cpu, fs, sizeof fs, parent);
    fprintf(stderr, "s4kv-bench: %ld CPUs, %s, databases under %s\n", ncpu, cpu, parent);

    state st;
    memset(&st, 0, sizeof st);
    snprintf(st.dir, sizeof st.dir, "%s/main", parent);
    DIR *probe = opendir(st.dir);
    if (probe) {
        closedir(probe);
        die("%s already exists; give --dir an empty directory", st.dir);
    }
    int need_main = selected("fillrandom") || selected("readrandom") || selected("readmissing") ||
                    selected("overwrite") || selected("reopen") || selected("rebuild");
    if (need_main) {
        st.ver = xcalloc(cfg.num, 1);
        st.db = db_open(st.dir, S4KV_SYNC_NONE);
        int fill_only_as_setup = !selected("fillrandom");
        if (fill_only_as_setup)
            fprintf(stderr, "  (fillrandom runs as setup, not reported)\n");
        run_fill(&st, !fill_only_as_setup);
        if (selected("readrandom") && cfg.reads)
            run_readrandom(&st);
        if (selected("readmissing") && cfg.missing)
            run_readmissing(&st);
        if (selected("overwrite") && cfg.overwrites)
            run_overwrite(&st);
        if (selected("reopen"))
            run_reopen(&st);
        if (selected("rebuild"))
            run_rebuild(&st);
        db_close(st.db);
        free(st.ver);
    }
    if (selected("fillsync1"))
        run_fillsync(parent, 1);
    if (selected("fillsync8"))
        run_fillsync(parent, 8);
    if (cfg.s3_url) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        fprintf(stderr, "s4kv-bench: S3 workloads under %s on %s\n", cfg.s3_url,
                s3_endpoint() ? s3_endpoint() : "AWS S3");
        if (selected("remoteget") || selected("curlget"))
            run_remote(parent);
        if (selected("upload") || selected("download"))
            run_xfer(parent);
    }

    print_report(cpu, ncpu, kernel, fs);
    if (cfg.json)
        write_json(cfg.json, cpu, ncpu, kernel, fs);
    run_ok = 1;
    return 0;
}
