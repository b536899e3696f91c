/*
 * report.c - the parent's side of s4kv-bench: reads the result lines every
 * child wrote (bench.h, emit_*), takes medians with min and max over the
 * runs, and writes the report: a Markdown table (stdout and OUT.md), JSON
 * (OUT.json), a chart of ops/s per engine and workload (OUT.png, gnuplot),
 * the ratio of s4kv to each peer, and the targets of issue 5 (met / missed).
 *
 * Invariant: every figure printed comes from the children's lines; nothing
 * is estimated here. A figure absent from the runs is printed as "-" and a
 * target that needs it as "not measured".
 */
#include "bench.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

typedef struct rrow {
    char engine[16], name[40], kind[8];
    int run, no_rate;
    uint64_t ops;
    double secs, p50, p99, p999;
    long rss_kib;
    char notes[1024];
} rrow;

typedef struct mrow {
    char engine[16], name[64], kind[8];
    int run;
    double value;
    char notes[512];
} mrow;

static rrow *rrows;
static size_t nr, rcap;
static mrow *mrows;
static size_t nm, mcap;
static char eng_names[8][16];
static char eng_opts[8][2][1024];
static size_t neng;

static int eng_index(const char *e)
{
    for (size_t i = 0; i < neng; i++)
        if (strcmp(eng_names[i], e) == 0)
            return (int)i;
    if (neng == 8)
        die("too many engines");
    snprintf(eng_names[neng], sizeof eng_names[neng], "%s", e);
    return (int)neng++;
}

static char *field(char **p)
{
    char *s = *p, *t = s ? strchr(s, '\t') : NULL;
    if (t) {
        *t = '\0';
        *p = t + 1;
    } else {
        *p = NULL;
    }
    return s ? s : (char *)"";
}

void report_add_file(const char *path, const char *eng, int run, const char *kind)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot read %s: %s", path, strerror(errno));
    int ei = eng_index(eng), ended = 0;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *p = line, *tag = field(&p);
        if (strcmp(tag, "END") == 0) {
            ended = 1;
        } else if (strcmp(tag, "O") == 0) {
            int sync = atoi(field(&p)) ? 1 : 0;
            snprintf(eng_opts[ei][sync], sizeof eng_opts[ei][sync], "%s", field(&p));
        } else if (strcmp(tag, "R") == 0) {
            if (nr == rcap) {
                rcap = rcap ? rcap * 2 : 64;
                rrows = realloc(rrows, rcap * sizeof *rrows);
                if (!rrows)
                    die("out of memory");
            }
            rrow *r = &rrows[nr++];
            memset(r, 0, sizeof *r);
            snprintf(r->engine, sizeof r->engine, "%s", eng);
            snprintf(r->kind, sizeof r->kind, "%s", kind);
            r->run = run;
            snprintf(r->name, sizeof r->name, "%s", field(&p));
            r->ops = strtoull(field(&p), NULL, 10);
            r->secs = strtod(field(&p), NULL);
            r->p50 = strtod(field(&p), NULL);
            r->p99 = strtod(field(&p), NULL);
            r->p999 = strtod(field(&p), NULL);
            r->rss_kib = strtol(field(&p), NULL, 10);
            r->no_rate = atoi(field(&p));
            snprintf(r->notes, sizeof r->notes, "%s", field(&p));
        } else if (strcmp(tag, "M") == 0) {
            if (nm == mcap) {
                mcap = mcap ? mcap * 2 : 64;
                mrows = realloc(mrows, mcap * sizeof *mrows);
                if (!mrows)
                    die("out of memory");
            }
            mrow *m = &mrows[nm++];
            memset(m, 0, sizeof *m);
            snprintf(m->engine, sizeof m->engine, "%s", eng);
            snprintf(m->kind, sizeof m->kind, "%s", kind);
            m->run = run;
            snprintf(m->name, sizeof m->name, "%s", field(&p));
            m->value = strtod(field(&p), NULL);
            snprintf(m->notes, sizeof m->notes, "%s", field(&p));
        }
    }
    fclose(f);
    if (!ended)
        die("%s: the %s process's results end early", path, eng);
}

/* ---- statistics */

typedef struct stat3 {
    int n;
    double med, min, max;
} stat3;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static stat3 stat_of(double *v, int n)
{
    stat3 s = { 0, -1, -1, -1 };
    int k = 0;
    for (int i = 0; i < n; i++)
        if (v[i] >= 0 && isfinite(v[i]))
            v[k++] = v[i];
    if (!k)
        return s;
    qsort(v, (size_t)k, sizeof *v, cmp_d);
    s.n = k;
    s.min = v[0];
    s.max = v[k - 1];
    s.med = k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
    return s;
}

enum { F_RATE, F_P50, F_P99, F_P999, F_RSS, F_SECS };

static double rfield(const rrow *r, int f)
{
    switch (f) {
    case F_RATE: return r->no_rate || r->secs <= 0 ? -1 : (double)r->ops / r->secs;
    case F_P50: return r->p50;
    case F_P99: return r->p99;
    case F_P999: return r->p999;
    case F_RSS: return (double)r->rss_kib / 1024.0;
    default: return r->secs;
    }
}

static stat3 rstat(const char *eng, const char *name, int f)
{
    double v[128];
    int n = 0;
    for (size_t i = 0; i < nr && n < 128; i++)
        if (strcmp(rrows[i].engine, eng) == 0 && strcmp(rrows[i].name, name) == 0)
            v[n++] = rfield(&rrows[i], f);
    return stat_of(v, n);
}

static const rrow *rfirst(const char *eng, const char *name)
{
    for (size_t i = 0; i < nr; i++)
        if (strcmp(rrows[i].engine, eng) == 0 && strcmp(rrows[i].name, name) == 0)
            return &rrows[i];
    return NULL;
}

static stat3 mstat(const char *eng, const char *name)
{
    double v[128];
    int n = 0;
    for (size_t i = 0; i < nm && n < 128; i++)
        if (strcmp(mrows[i].engine, eng) == 0 && strcmp(mrows[i].name, name) == 0)
            v[n++] = mrows[i].value;
    return stat_of(v, n);
}

static const char *mnotes(const char *eng, const char *name)
{
    for (size_t i = 0; i < nm; i++)
        if (strcmp(mrows[i].engine, eng) == 0 && strcmp(mrows[i].name, name) == 0)
            return mrows[i].notes;
    return "";
}

static double rate(const char *eng, const char *name)
{
    return rstat(eng, name, F_RATE).med;
}

/* Workload names in report order: the local ones first, then as met. */
static const char *const order[] = { "fillrandom",       "readrandom",      "readmissing",
                                      "overwrite",        "reopen",          "rebuild",
                                      "fillsync1",        "fillsync8",       "scale-fillrandom",
                                      "scale-readrandom", NULL };
static const char *wnames[64];
static size_t nw;

static void collect_workloads(void)
{
    nw = 0;
    for (int i = 0; order[i]; i++)
        for (size_t k = 0; k < nr; k++)
            if (strcmp(rrows[k].name, order[i]) == 0) {
                wnames[nw++] = order[i];
                break;
            }
    for (size_t k = 0; k < nr && nw < 64; k++) {
        int seen = 0;
        for (size_t j = 0; j < nw; j++)
            seen |= strcmp(wnames[j], rrows[k].name) == 0;
        if (!seen)
            wnames[nw++] = rrows[k].name;
    }
}

/* ---- machine */

static void machine_info(const char *dir, char *cpu, size_t cpulen, long *ncpu, char *kernel,
                         size_t klen, char *fs, size_t fslen)
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
    *ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct utsname un;
    snprintf(kernel, klen, "%s", uname(&un) == 0 ? un.release : "?");
    struct statfs sfs;
    const char *t = "unknown";
    if (statfs(dir, &sfs) == 0) {
        switch ((unsigned long)sfs.f_type) {
        case 0xEF53: t = "ext4"; break;
        case 0x58465342: t = "xfs"; break;
        case 0x9123683E: t = "btrfs"; break;
        case 0x01021994: t = "tmpfs (fsync is a no-op!)"; break;
        case 0x794c7630: t = "overlayfs"; break;
        case 0x2fc12fc1: t = "zfs"; break;
        default: break;
        }
        snprintf(fs, fslen, "%s (0x%lx)", t, (unsigned long)sfs.f_type);
    } else {
        snprintf(fs, fslen, "%s", t);
    }
}

/* ---- formatting */

static void fmt_rate(char *o, size_t n, double v)
{
    if (v < 0)
        snprintf(o, n, "-");
    else if (v >= 100)
        snprintf(o, n, "%.0f", v);
    else
        snprintf(o, n, "%.1f", v);
    /* thousands separators */
    char *dot = strchr(o, '.');
    size_t ilen = dot ? (size_t)(dot - o) : strlen(o);
    if (v >= 10000 && ilen > 3) {
        char t[64];
        size_t k = 0;
        for (size_t i = 0; i < ilen; i++) {
            if (i && (ilen - i) % 3 == 0)
                t[k++] = ',';
            t[k++] = o[i];
        }
        snprintf(t + k, sizeof t - k, "%s", dot ? dot : "");
        snprintf(o, n, "%s", t);
    }
}

static void fmt_us(char *o, size_t n, double us)
{
    if (us < 0)
        snprintf(o, n, "-");
    else if (us < 10)
        snprintf(o, n, "%.2f", us);
    else if (us < 1000)
        snprintf(o, n, "%.1f", us);
    else
        snprintf(o, n, "%.0f", us);
}

static void fmt_ratio(char *o, size_t n, double a, double b)
{
    if (a <= 0 || b <= 0)
        snprintf(o, n, "-");
    else if (a / b >= 10)
        snprintf(o, n, "%.1fx", a / b);
    else
        snprintf(o, n, "%.2fx", a / b);
}

static const char *pretty(const char *e)
{
    if (strcmp(e, "rocksdb") == 0)
        return "RocksDB";
    if (strcmp(e, "leveldb") == 0)
        return "LevelDB";
    if (strcmp(e, "lmdb") == 0)
        return "LMDB";
    return e;
}

static int have_engine(const char *e)
{
    for (size_t i = 0; i < neng; i++)
        if (strcmp(eng_names[i], e) == 0)
            return 1;
    return 0;
}

/* ---- targets */

typedef struct target {
    char what[128], measured[256];
    int state; /* 1 met, 0 missed, -1 not measured */
} target;

static target targets[32];
static size_t ntargets;

static void add_target(const char *what, int state, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_target(const char *what, int state, const char *fmt, ...)
{
    target *t = &targets[ntargets++];
    snprintf(t->what, sizeof t->what, "%s", what);
    t->state = state;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->measured, sizeof t->measured, fmt, ap);
    va_end(ap);
}

/* s4kv rate / peer rate >= want; -1 when either is missing. */
static int ratio_ok(const char *w, const char *peer, double want, double *ratio)
{
    double a = rate("s4kv", w), b = rate(peer, w);
    *ratio = a > 0 && b > 0 ? a / b : -1;
    return *ratio < 0 ? -1 : *ratio >= want;
}

static void compute_targets(void)
{
    ntargets = 0;
    double r1, r2;
    int a = ratio_ok("fillrandom", "leveldb", 5, &r1), b = ratio_ok("fillrandom", "rocksdb", 10, &r2);
    add_target("fillrandom >= 5x LevelDB, >= 10x RocksDB", a < 0 || b < 0 ? -1 : a && b,
               "%.2fx LevelDB, %.2fx RocksDB", r1, r2);
    a = ratio_ok("readrandom", "lmdb", 1.2, &r1);
    add_target("readrandom >= 1.2x LMDB", a, "%.2fx LMDB", r1);
    {
        double s = rstat("s4kv", "readrandom", F_P99).med, l = rstat("lmdb", "readrandom", F_P99).med;
        add_target("readrandom p99 <= LMDB's p99", s < 0 || l < 0 ? -1 : s <= l,
                   "s4kv %.2f us, LMDB %.2f us", s, l);
    }
    a = ratio_ok("readmissing", "lmdb", 5, &r1);
    add_target("readmissing >= 5x LMDB", a, "%.2fx LMDB", r1);
    a = ratio_ok("overwrite", "leveldb", 3, &r1);
    add_target("overwrite >= 3x LevelDB", a, "%.2fx LevelDB", r1);
    a = ratio_ok("fillsync8", "rocksdb", 3, &r1);
    add_target("fillsync, 8 threads >= 3x RocksDB sync=true", a, "%.2fx RocksDB", r1);
    {
        double ib = mstat("s4kv", "fillrandom.index_bytes_per_key").med;
        add_target("index memory <= 32 bytes per key + key bytes (<= 48 with 16-byte keys)",
                   ib < 0 ? -1 : ib <= 32 + KEY_BYTES, "%.1f bytes per key (%.1f + key)", ib,
                   ib - KEY_BYTES);
    }
    {
        double s = mstat("s4kv", "reopen.total_ms").med, l = mstat("leveldb", "reopen.total_ms").med;
        add_target("reopen, 1M keys <= LevelDB's (close + open + first get)",
                   s < 0 || l < 0 ? -1 : s <= l, "s4kv %.1f ms (open %.1f ms), LevelDB %.1f ms (open %.1f ms)",
                   s, mstat("s4kv", "reopen.open_ms").med, l, mstat("leveldb", "reopen.open_ms").med);
    }
    {
        double p = mstat("s4kv", "rebuild.pct_of_cat").med;
        add_target("rebuild by replay >= 70% of reading the segments with cat", p < 0 ? -1 : p >= 70,
                   "%.0f%% (%.0f MiB/s vs %.0f MiB/s)", p, mstat("s4kv", "rebuild.mib_per_s").med,
                   mstat("s4kv", "rebuild.cat_mib_per_s").med);
    }
    {
        double f1 = rate("s4kv", "fillrandom"), f10 = rate("s4kv", "scale-fillrandom");
        double g1 = rate("s4kv", "readrandom"), g10 = rate("s4kv", "scale-readrandom");
        double m1 = mstat("s4kv", "fillrandom.index_bytes_per_key").med;
        double m10 = mstat("s4kv", "scale-fillrandom.index_bytes_per_key").med;
        int ok = f1 > 0 && f10 > 0 && g1 > 0 && g10 > 0 && m1 > 0 && m10 > 0;
        add_target("10M keys: fill and get within 25% of the 1M run; memory linear (bytes per key within 25%)",
                   !ok ? -1 : f10 >= 0.75 * f1 && g10 >= 0.75 * g1 && m10 <= 1.25 * m1,
                   "fill %.0f%%, get %.0f%% of the 1M rates; index %.1f vs %.1f bytes per key",
                   ok ? 100 * f10 / f1 : -1, ok ? 100 * g10 / g1 : -1, m10, m1);
    }
    {
        /* like for like: s4db never fsyncs, so the no-fsync row is compared;
         * the durable row (one fdatasync per batch) is shown beside it */
        double p = rate("s4kv", "s4db-put1000-nosync"), d = rate("s4kv", "s4db-put1000");
        add_target("s4db shapes, put phase >= 50x s4db (s4db: ~20,000 keys/s, batches of 1000)",
                   p < 0 ? -1 : p >= 50 * 20000.0,
                   "%.0f keys/s = %.0fx s4db without fsync, as s4db (batches of 100: %.0f); "
                   "durable, fdatasync per batch: %.0f keys/s = %.0fx",
                   p, p / 20000.0, rate("s4kv", "s4db-put100-nosync"), d, d / 20000.0);
    }
    {
        double s = rstat("s4kv", "remoteget", F_P50).med, c = rstat("s4kv", "curlget", F_P50).med;
        double s2 = rstat("s4kv", "s4db-remoteget", F_P50).med, c2 = rstat("s4kv", "s4db-curlget", F_P50).med;
        int st = s < 0 || c < 0 ? -1 : s <= 1.1 * c;
        if (s2 >= 0 && c2 >= 0)
            st = st < 0 ? s2 <= 1.1 * c2 : st && s2 <= 1.1 * c2;
        add_target("remote get p50 <= 1.1x raw curl ranged GET", st,
                   "remoteget %.0f us vs curl %.0f us; s4db shape %.0f us vs curl %.0f us", s, c, s2, c2);
    }
}

/* ---- output */

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

static void json_stat(FILE *f, const char *key, stat3 s)
{
    fprintf(f, "\"%s\": {\"median\": ", key);
    json_num(f, s.med);
    fprintf(f, ", \"min\": ");
    json_num(f, s.min);
    fprintf(f, ", \"max\": ");
    json_num(f, s.max);
    fprintf(f, ", \"n\": %d}", s.n);
}

static void write_json(const char *path, const char *cpu, long ncpu, const char *kernel,
                       const char *fs, const char *date)
{
    FILE *f = fopen(path, "w");
    if (!f)
        die("cannot write %s: %s", path, strerror(errno));
    fprintf(f, "{\n  \"benchmark\": \"s4kv-bench\", \"date\": ");
    json_str(f, date);
    fprintf(f, ",\n  \"machine\": {\"nproc\": %ld, \"cpu\": ", ncpu);
    json_str(f, cpu);
    fprintf(f, ", \"kernel\": ");
    json_str(f, kernel);
    fprintf(f, ", \"filesystem\": ");
    json_str(f, fs);
    fprintf(f, "},\n  \"config\": {\"num\": %" PRIu64 ", \"reads\": %" PRIu64
               ", \"missing\": %" PRIu64 ", \"overwrites\": %" PRIu64
               ", \"fillsync1_ops\": %" PRIu64 ", \"fillsync8_ops_per_thread\": %" PRIu64
               ", \"batch\": %" PRIu64 ", \"key_bytes\": %d, \"value_bytes\": %d, \"seed\": %" PRIu64
               ", \"runs\": %d, \"scale_num\": %" PRIu64 ", \"scale\": %s},\n",
            cfg.num, cfg.reads, cfg.missing, cfg.overwrites, cfg.sync_ops1, cfg.sync_ops8, cfg.batch,
            KEY_BYTES, VALUE_BYTES, cfg.seed, cfg.runs, cfg.scale_num, cfg.scale ? "true" : "false");
    fprintf(f, "  \"engines\": {\n");
    for (size_t i = 0; i < neng; i++) {
        fprintf(f, "    ");
        json_str(f, eng_names[i]);
        fprintf(f, ": {\"options\": ");
        json_str(f, eng_opts[i][0]);
        fprintf(f, ", \"options_sync\": ");
        json_str(f, eng_opts[i][1]);
        fprintf(f, "}%s\n", i + 1 < neng ? "," : "");
    }
    fprintf(f, "  },\n  \"results\": [\n");
    int first = 1;
    for (size_t w = 0; w < nw; w++) {
        for (size_t i = 0; i < neng; i++) {
            const rrow *r0 = rfirst(eng_names[i], wnames[w]);
            if (!r0)
                continue;
            fprintf(f, "%s    {\"workload\": ", first ? "" : ",\n");
            first = 0;
            json_str(f, wnames[w]);
            fprintf(f, ", \"engine\": ");
            json_str(f, eng_names[i]);
            fprintf(f, ", \"ops\": %" PRIu64 ", ", r0->ops);
            json_stat(f, "ops_per_sec", rstat(eng_names[i], wnames[w], F_RATE));
            fprintf(f, ", ");
            json_stat(f, "seconds", rstat(eng_names[i], wnames[w], F_SECS));
            fprintf(f, ", ");
            json_stat(f, "p50_us", rstat(eng_names[i], wnames[w], F_P50));
            fprintf(f, ", ");
            json_stat(f, "p99_us", rstat(eng_names[i], wnames[w], F_P99));
            fprintf(f, ", ");
            json_stat(f, "p999_us", rstat(eng_names[i], wnames[w], F_P999));
            fprintf(f, ", ");
            json_stat(f, "peak_rss_mib", rstat(eng_names[i], wnames[w], F_RSS));
            fprintf(f, ", \"notes\": ");
            json_str(f, r0->notes);
            fprintf(f, ", \"runs\": [");
            int fr = 1;
            for (size_t k = 0; k < nr; k++) {
                const rrow *r = &rrows[k];
                if (strcmp(r->engine, eng_names[i]) || strcmp(r->name, wnames[w]))
                    continue;
                fprintf(f, "%s{\"run\": %d, \"ops_per_sec\": ", fr ? "" : ", ", r->run);
                fr = 0;
                json_num(f, rfield(r, F_RATE));
                fprintf(f, ", \"seconds\": ");
                json_num(f, r->secs);
                fprintf(f, ", \"p50_us\": ");
                json_num(f, r->p50);
                fprintf(f, ", \"p99_us\": ");
                json_num(f, r->p99);
                fprintf(f, ", \"p999_us\": ");
                json_num(f, r->p999);
                fprintf(f, ", \"peak_rss_kib\": %ld, \"notes\": ", r->rss_kib);
                json_str(f, r->notes);
                fprintf(f, "}");
            }
            fprintf(f, "]}");
        }
    }
    fprintf(f, "\n  ],\n  \"metrics\": [\n");
    first = 1;
    for (size_t k = 0; k < nm; k++) {
        /* one entry per (engine, name): the first occurrence */
        int dup = 0;
        for (size_t j = 0; j < k; j++)
            dup |= strcmp(mrows[j].engine, mrows[k].engine) == 0 &&
                   strcmp(mrows[j].name, mrows[k].name) == 0;
        if (dup)
            continue;
        fprintf(f, "%s    {\"engine\": ", first ? "" : ",\n");
        first = 0;
        json_str(f, mrows[k].engine);
        fprintf(f, ", \"name\": ");
        json_str(f, mrows[k].name);
        fprintf(f, ", ");
        json_stat(f, "value", mstat(mrows[k].engine, mrows[k].name));
        fprintf(f, ", \"notes\": ");
        json_str(f, mrows[k].notes);
        fprintf(f, "}");
    }
    fprintf(f, "\n  ],\n  \"ratios_s4kv_over_peer\": [\n");
    first = 1;
    for (size_t w = 0; w < nw; w++) {
        for (size_t i = 0; i < neng; i++) {
            if (strcmp(eng_names[i], "s4kv") == 0)
                continue;
            double a, b;
            if (strcmp(wnames[w], "reopen") == 0) { /* time: peer / s4kv */
                a = mstat(eng_names[i], "reopen.total_ms").med;
                b = mstat("s4kv", "reopen.total_ms").med;
            } else {
                a = rate("s4kv", wnames[w]);
                b = rate(eng_names[i], wnames[w]);
            }
            if (a <= 0 || b <= 0)
                continue;
            fprintf(f, "%s    {\"workload\": ", first ? "" : ",\n");
            first = 0;
            json_str(f, wnames[w]);
            fprintf(f, ", \"peer\": ");
            json_str(f, eng_names[i]);
            fprintf(f, ", \"ratio\": ");
            json_num(f, a / b);
            fprintf(f, "}");
        }
    }
    fprintf(f, "\n  ],\n  \"targets\": [\n");
    for (size_t t = 0; t < ntargets; t++) {
        fprintf(f, "    {\"target\": ");
        json_str(f, targets[t].what);
        fprintf(f, ", \"measured\": ");
        json_str(f, targets[t].measured);
        fprintf(f, ", \"result\": \"%s\"}%s\n",
                targets[t].state < 0 ? "not measured" : targets[t].state ? "met" : "missed",
                t + 1 < ntargets ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (fclose(f))
        die("writing %s: %s", path, strerror(errno));
}

/* What timing one call costs by itself: the mean of an empty interval
 * (now_ns(); now_ns()) in ns, the least of 5 rounds of 200,000. Every
 * individually timed sample (gets, single puts) includes about this much;
 * on a VM whose clock_gettime is slow it is a large part of a sub-us get. */
static double timer_floor_ns(void)
{
    double best = 0;
    for (int r = 0; r < 5; r++) {
        uint64_t sum = 0;
        for (int i = 0; i < 200000; i++) {
            uint64_t t0 = now_ns();
            sum += now_ns() - t0;
        }
        double m = (double)sum / 200000.0;
        if (r == 0 || m < best)
            best = m;
    }
    return best;
}

static void write_md(FILE *f, const char *cpu, long ncpu, const char *kernel, const char *fs,
                     const char *date)
{
    fprintf(f, "## s4kv-bench: s4kv next to RocksDB, LevelDB and LMDB\n\n");
    fprintf(f, "Machine: %s, %ld core%s; Linux %s; databases on %s. %s. Timing floor: an "
               "empty timed interval measures %.0f ns, and every individually timed sample "
               "(each get, each single write) includes it.\n\n", cpu, ncpu,
            ncpu == 1 ? "" : "s", kernel, fs, date, timer_floor_ns());
    int local = rfirst("s4kv", "fillrandom") || (neng > 1 && rfirst(eng_names[1], "fillrandom"));
    if (local)
    fprintf(f,
            "%" PRIu64 " keys of %d bytes, values of %d bytes (half random, half repeated: Snappy "
            "~2x), batches of %" PRIu64 ", seed 0x%" PRIx64 "; readrandom %" PRIu64
            " gets, readmissing %" PRIu64 ", overwrite %" PRIu64 " puts; fillsync1 %" PRIu64
            " durable writes, fillsync8 8 x %" PRIu64 ". Every engine in its own process, "
            "%d interleaved run%s (%s, then again); figures are medians with min-max over the runs "
            "(scale and S3 rows: one run). Every value read is checked.\n\n",
            cfg.num, KEY_BYTES, VALUE_BYTES, cfg.batch, cfg.seed, cfg.reads, cfg.missing,
            cfg.overwrites, cfg.sync_ops1, cfg.sync_ops8, cfg.runs, cfg.runs == 1 ? "" : "s",
            cfg.engines);
    if (cfg.s3_url)
        fprintf(f, "S3 rows (s4kv only, one run): %s on %s, every value and every raw byte "
                   "checked.\n\n", cfg.s3_url, bench_s3_endpoint() ? bench_s3_endpoint() : "AWS S3");

    fprintf(f, "| workload | engine | ops/s | min - max | p50 us | p99 us | p99.9 us | peak RSS MiB |\n");
    fprintf(f, "|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (size_t w = 0; w < nw; w++) {
        for (size_t i = 0; i < neng; i++) {
            const char *e = eng_names[i];
            const rrow *r0 = rfirst(e, wnames[w]);
            if (!r0)
                continue;
            char a[64], lo[64], hi[64], p50[32], p99[32], p999[32], mm[160];
            stat3 rs = rstat(e, wnames[w], F_RATE);
            if (r0->no_rate) { /* a one-off time (reopen, S3 transfers): seconds -> ms */
                stat3 ss = rstat(e, wnames[w], F_SECS);
                snprintf(a, sizeof a, "%.1f ms", ss.med * 1e3);
                if (ss.n > 1)
                    snprintf(mm, sizeof mm, "%.1f - %.1f ms", ss.min * 1e3, ss.max * 1e3);
                else
                    snprintf(mm, sizeof mm, "n=1");
            } else {
                fmt_rate(a, sizeof a, rs.med);
                fmt_rate(lo, sizeof lo, rs.min);
                fmt_rate(hi, sizeof hi, rs.max);
                if (rs.n > 1)
                    snprintf(mm, sizeof mm, "%s - %s", lo, hi);
                else
                    snprintf(mm, sizeof mm, "n=1");
            }
            fmt_us(p50, sizeof p50, rstat(e, wnames[w], F_P50).med);
            fmt_us(p99, sizeof p99, rstat(e, wnames[w], F_P99).med);
            fmt_us(p999, sizeof p999, rstat(e, wnames[w], F_P999).med);
            fprintf(f, "| %s | %s | %s | %s | %s | %s | %s | %.0f |\n", wnames[w], pretty(e), a, mm,
                    p50, p99, p999, rstat(e, wnames[w], F_RSS).med);
        }
    }
    int s3notes = 0;
    for (size_t k = 0; k < nr; k++) {
        if (strcmp(rrows[k].kind, "s3"))
            continue;
        if (!s3notes++)
            fprintf(f, "\n| S3 row | notes |\n|---|---|\n");
        fprintf(f, "| %s | %s |\n", rrows[k].name, rrows[k].notes);
    }
    if (!local)
        goto targets;
    fprintf(f, "\nreopen: close + open + first get (time, not ops/s); s4kv's close is durable "
               "(it fdatasyncs the segments and writes and fdatasyncs an index checkpoint, as "
               "s4kv_close documents), LevelDB's with sync=false syncs nothing (its open syncs "
               "the level-0 table it recovers). rebuild (s4kv only): "
               "ops = records replayed. Fills and overwrite: latency per op = batch time / "
               "batch size. Peak RSS is the whole process (getrusage), harness arrays included "
               "(see the baseline below); LMDB's counts the pages of its map it touched.\n\n");

    fprintf(f, "| engine | index bytes per key | disk after fill MiB (bytes/key) | disk after overwrite MiB | peak RSS after fill MiB | harness baseline MiB | reopen ms: close / open / first get us |\n");
    fprintf(f, "|---|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < neng; i++) {
        const char *e = eng_names[i];
        stat3 ib = mstat(e, "fillrandom.index_bytes_per_key");
        stat3 d1 = mstat(e, "fillrandom.disk_bytes"), d2 = mstat(e, "overwrite.disk_bytes");
        stat3 rs = mstat(e, "fillrandom.peak_rss_kib"), bl = mstat(e, "rss_baseline_kib");
        char ibs[64];
        if (ib.med >= 0)
            snprintf(ibs, sizeof ibs, "%.1f%s", ib.med,
                     strcmp(e, "leveldb") == 0 ? " (memtables + cache)" : "");
        else
            snprintf(ibs, sizeof ibs, "-");
        if (d1.n == 0 && rs.n == 0)
            continue;
        fprintf(f, "| %s | %s | %.1f (%.0f) | %.1f | %.0f | %.0f | %.1f / %.1f / %.0f |\n", pretty(e), ibs,
                d1.med / 1048576.0, d1.med / (double)cfg.num, d2.med / 1048576.0, rs.med / 1024.0,
                bl.med / 1024.0, mstat(e, "reopen.close_ms").med, mstat(e, "reopen.open_ms").med,
                mstat(e, "reopen.first_get_us").med);
    }
    fprintf(f, "\nIndex bytes per key: ");
    for (size_t i = 0; i < neng; i++)
        fprintf(f, "%s%s: %s", i ? "; " : "", pretty(eng_names[i]),
                mnotes(eng_names[i], "fillrandom.index_bytes_per_key"));
    fprintf(f, ".\n");
    if (rfirst("s4kv", "scale-fillrandom")) {
        fprintf(f, "\nScale run (%" PRIu64 " keys, one run):\n\n", cfg.scale_num);
        fprintf(f, "| engine | fill ops/s (%% of the main run) | get ops/s (%% of the main run) | index bytes per key | peak RSS MiB (bytes per key) | disk MiB |\n");
        fprintf(f, "|---|---:|---:|---:|---:|---:|\n");
        for (size_t i = 0; i < neng; i++) {
            const char *e = eng_names[i];
            if (!rfirst(e, "scale-fillrandom"))
                continue;
            double f10 = rate(e, "scale-fillrandom"), f1 = rate(e, "fillrandom");
            double g10 = rate(e, "scale-readrandom"), g1 = rate(e, "readrandom");
            double ib = mstat(e, "scale-fillrandom.index_bytes_per_key").med;
            double rss = rstat(e, "scale-readrandom", F_RSS).med;
            char a[48], b[48], ibs[32];
            fmt_rate(a, sizeof a, f10);
            fmt_rate(b, sizeof b, g10);
            if (ib >= 0)
                snprintf(ibs, sizeof ibs, "%.1f", ib);
            else
                snprintf(ibs, sizeof ibs, "-");
            fprintf(f, "| %s | %s (%.0f%%) | %s (%.0f%%) | %s | %.0f (%.0f) | %.0f |\n", pretty(e), a,
                    f1 > 0 ? 100 * f10 / f1 : -1, b, g1 > 0 ? 100 * g10 / g1 : -1, ibs, rss,
                    rss * 1048576.0 / (double)cfg.scale_num,
                    mstat(e, "scale-fillrandom.disk_bytes").med / 1048576.0);
        }
    }

    int peers = 0;
    for (size_t i = 0; i < neng; i++)
        peers += strcmp(eng_names[i], "s4kv") != 0;
    if (peers && have_engine("s4kv")) {
        fprintf(f, "\ns4kv / peer (ops/s medians; > 1 means s4kv is faster; reopen: the peer's time / s4kv's):\n\n| workload |");
        for (size_t i = 0; i < neng; i++)
            if (strcmp(eng_names[i], "s4kv"))
                fprintf(f, " s4kv / %s |", pretty(eng_names[i]));
        fprintf(f, "\n|---|");
        for (int i = 0; i < peers; i++)
            fprintf(f, "---:|");
        fprintf(f, "\n");
        for (size_t w = 0; w < nw; w++) {
            int any = 0;
            for (size_t i = 0; i < neng; i++)
                any |= strcmp(eng_names[i], "s4kv") && rfirst(eng_names[i], wnames[w]);
            if (!any || !rfirst("s4kv", wnames[w]))
                continue;
            fprintf(f, "| %s |", wnames[w]);
            for (size_t i = 0; i < neng; i++) {
                if (!strcmp(eng_names[i], "s4kv"))
                    continue;
                char rs[32];
                if (strcmp(wnames[w], "reopen") == 0)
                    fmt_ratio(rs, sizeof rs, mstat(eng_names[i], "reopen.total_ms").med,
                              mstat("s4kv", "reopen.total_ms").med);
                else
                    fmt_ratio(rs, sizeof rs, rate("s4kv", wnames[w]), rate(eng_names[i], wnames[w]));
                fprintf(f, " %s |", rs);
            }
            fprintf(f, "\n");
        }
    }

targets:
    fprintf(f, "\nTargets of issue 5 (same run, this machine):\n\n| target | measured | result |\n|---|---|---|\n");
    for (size_t t = 0; t < ntargets; t++)
        fprintf(f, "| %s | %s | %s |\n", targets[t].what,
                targets[t].state < 0 ? "-" : targets[t].measured,
                targets[t].state < 0 ? "not measured" : targets[t].state ? "**met**" : "missed");

    fprintf(f, "\nOptions (each engine's defaults, and only what is said here changed):\n\n");
    for (size_t i = 0; i < neng; i++) {
        fprintf(f, "- %s: %s", pretty(eng_names[i]), eng_opts[i][0]);
        if (eng_opts[i][1][0])
            fprintf(f, ". fillsync: %s", eng_opts[i][1]);
        fprintf(f, ".\n");
    }
}

/* The chart: ops/s medians per workload (x) and engine (bars), log scale. */
static void write_png(const char *path, const char *cpu, long ncpu)
{
    static const char *const chart[] = { "fillrandom", "readrandom", "readmissing", "overwrite",
                                         "fillsync1", "fillsync8", "scale-fillrandom",
                                         "scale-readrandom", NULL };
    int rows = 0;
    for (int w = 0; chart[w]; w++)
        for (size_t i = 0; i < neng; i++)
            rows += rate(eng_names[i], chart[w]) > 0;
    if (!rows)
        return; /* nothing to draw (an S3-only run) */
    FILE *g = popen("gnuplot 2>&1", "w");
    if (!g) {
        fprintf(stderr, "s4kv-bench: gnuplot: %s; no chart\n", strerror(errno));
        return;
    }
    fprintf(g, "set terminal pngcairo size 1200,640 font ',10'\nset output '%s'\n", path);
    fprintf(g, "set title 'ops/s per engine and workload (median of %d run%s, log scale; %s, %ld cores)'\n",
            cfg.runs, cfg.runs == 1 ? "" : "s", cpu, ncpu);
    fprintf(g, "set style data histogram\nset style histogram cluster gap 1\n"
               "set style fill solid 0.85 border -1\nset boxwidth 0.9\nset logscale y\n"
               "set ylabel 'ops/s'\nset grid ytics\nset key top right\nset xtics nomirror\n"
               "set datafile missing '-'\nset yrange [100:*]\nset format y '%%.0s%%c'\n");
    fprintf(g, "$d << EOD\nworkload");
    for (size_t i = 0; i < neng; i++)
        fprintf(g, " %s", pretty(eng_names[i]));
    fprintf(g, "\n");
    for (int w = 0; chart[w]; w++) {
        int any = 0;
        for (size_t i = 0; i < neng; i++)
            any |= rate(eng_names[i], chart[w]) > 0;
        if (!any)
            continue;
        fprintf(g, "%s", chart[w]);
        for (size_t i = 0; i < neng; i++) {
            double v = rate(eng_names[i], chart[w]);
            if (v > 0)
                fprintf(g, " %.0f", v);
            else
                fprintf(g, " -");
        }
        fprintf(g, "\n");
    }
    fprintf(g, "EOD\nplot");
    for (size_t i = 0; i < neng; i++)
        fprintf(g, "%s $d using %zu%s title columnheader", i ? "," : "", i + 2,
                i ? "" : ":xtic(1)");
    fprintf(g, "\n");
    int rc = pclose(g);
    if (rc != 0)
        fprintf(stderr, "s4kv-bench: gnuplot failed (status %d); no chart (is gnuplot-nox installed? "
                        "`make bench-deps`)\n", rc);
}

void report_write(const char *out_prefix, const char *machine_dir)
{
    char cpu[256], kernel[128], fs[64], date[64];
    long ncpu;
    machine_info(machine_dir, cpu, sizeof cpu, &ncpu, kernel, sizeof kernel, fs, sizeof fs);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    collect_workloads();
    compute_targets();

    write_md(stdout, cpu, ncpu, kernel, fs, date);
    fflush(stdout);

    char path[4200];
    const char *slash = strrchr(out_prefix, '/');
    if (slash) {
        char d[4096];
        snprintf(d, sizeof d, "%.*s", (int)(slash - out_prefix), out_prefix);
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", d);
        if (system(cmd) != 0)
            die("cannot create %s", d);
    }
    snprintf(path, sizeof path, "%s.md", out_prefix);
    FILE *f = fopen(path, "w");
    if (!f)
        die("cannot write %s: %s", path, strerror(errno));
    write_md(f, cpu, ncpu, kernel, fs, date);
    if (fclose(f))
        die("writing %s: %s", path, strerror(errno));
    snprintf(path, sizeof path, "%s.json", out_prefix);
    write_json(path, cpu, ncpu, kernel, fs, date);
    snprintf(path, sizeof path, "%s.png", out_prefix);
    write_png(path, cpu, ncpu);
    fprintf(stderr, "s4kv-bench: wrote %s.md, %s.json, %s.png\n", out_prefix, out_prefix,
            out_prefix);
}
