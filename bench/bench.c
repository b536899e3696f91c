/*
 * bench.c - `s4kv-bench`: s4kv side by side with RocksDB, LevelDB and LMDB,
 * db_bench style (issue 5).
 *
 * Owns: the options, the shared helpers of bench.h (generator, timing,
 * result lines) and the parent process. The parent runs every engine in a
 * process of its own (fork/exec of this binary with --engine NAME
 * --workload main|scale|s3), interleaved: run 1 of s4kv, rocksdb, leveldb,
 * lmdb, then run 2 of each, ...; each child writes its results as lines to a
 * file, and report.c turns them into medians with min and max, a Markdown
 * table (stdout and OUT.md), JSON (OUT.json) and a chart (OUT.png, gnuplot).
 *
 * Invariants: every run with the same flags issues the same operations (one
 * fixed seed) on every engine; every value a read returns is checked, so a
 * fast wrong answer fails the run (exit 1) instead of giving a number; a
 * child that fails fails the whole benchmark, its databases kept and named.
 */
#include "bench.h"

#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

config cfg = {
    .num = 1000000, .reads = 1000000, .missing = 200000, .overwrites = 500000,
    .sync_ops1 = 2000, .sync_ops8 = 1000, .batch = 1000, .seed = 0x5eed5eed5eedULL,
    .scale_num = 10000000, .runs = 3, .engines = "s4kv,rocksdb,leveldb,lmdb",
    .out = "bench/results/latest", .workload = "main",
    .remote_num = 20000, .remote_reads = 2000, .xfer_mib = 64,
};

char errbuf[1024];

/* ---- helpers */

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "s4kv-bench%s%s: ", cfg.engine ? " " : "", cfg.engine ? cfg.engine : "");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) (Lemire's multiply-shift; the tiny bias is irrelevant). */
uint64_t rand_below(uint64_t *s, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)splitmix64(s) * n) >> 64);
}

long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

void make_key(uint64_t i, char out[KEY_BYTES])
{
    for (int p = KEY_BYTES - 1; p >= 0; p--) {
        out[p] = (char)('0' + i % 10);
        i /= 10;
    }
}

void make_value(uint64_t i, unsigned ver, char *out, size_t len)
{
    uint64_t s = cfg.seed ^ (i * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)ver << 56);
    size_t half = len / 2;
    for (size_t p = 0; p < half; p += 8) {
        uint64_t r = splitmix64(&s);
        size_t n = half - p < 8 ? half - p : 8;
        memcpy(out + p, &r, n);
    }
    memset(out + half, 'a' + (int)(i % 26), len - half);
}

void check_value_len(uint64_t i, unsigned ver, const char *buf, size_t vlen, size_t len,
                     const char *what)
{
    char want[MAX_VALUE_BYTES], key[KEY_BYTES];
    make_value(i, ver, want, len);
    if (vlen != len || memcmp(buf, want, len) != 0) {
        make_key(i, key);
        die("%s: get %.16s returned a wrong value (%zu bytes, expected %zu)", what, key, vlen,
            len);
    }
}

const engine *engine_by_name(const char *name)
{
    static const engine *const all[] = { &engine_s4kv, &engine_rocksdb, &engine_leveldb,
                                         &engine_lmdb };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(all[i]->name, name) == 0)
            return all[i];
    return NULL;
}

uint64_t bench_dir_bytes(const char *dir);

static uint64_t dir_total;
static int dir_add(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)path, (void)ftw;
    if (flag == FTW_F && S_ISREG(sb->st_mode))
        dir_total += (uint64_t)sb->st_size;
    return 0;
}

uint64_t bench_dir_bytes(const char *dir)
{
    dir_total = 0;
    if (nftw(dir, dir_add, 16, FTW_PHYS))
        die("walking %s: %s", dir, strerror(errno));
    return dir_total;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "s4kv-bench: remove %s: %s\n", path, strerror(errno));
    return 0;
}

void rm_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) == 0)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- workload selection */

static const char *const known[] = {
    "fillrandom", "readrandom", "readmissing", "overwrite", "reopen", "rebuild", "fillsync1",
    "fillsync8", "remoteget", "curlget", "upload", "download", "s4db-put1000", "s4db-put100",
    "s4db-localget", "s4db-remoteget", "s4db-curlget", NULL
};
/* groups: "fillsync" = fillsync1,fillsync8; "s4db" = every s4db-* row */
static const char *const groups[] = { "fillsync", "s4db", NULL };

static int is_s3_workload(const char *name)
{
    return strcmp(name, "remoteget") == 0 || strcmp(name, "curlget") == 0 ||
           strcmp(name, "upload") == 0 || strcmp(name, "download") == 0 ||
           strncmp(name, "s4db", 4) == 0;
}

int selected(const char *name)
{
    if (!cfg.only)
        return !is_s3_workload(name) || cfg.s3_url != NULL;
    size_t n = strlen(name);
    for (const char *p = cfg.only; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && strncmp(p, name, n) == 0)
            return 1;
        for (int g = 0; groups[g]; g++)
            if (l == strlen(groups[g]) && strncmp(p, groups[g], l) == 0 &&
                strncmp(name, groups[g], l) == 0)
                return 1;
        p = e ? e + 1 : p + l;
    }
    return 0;
}

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
        for (int i = 0; groups[i]; i++)
            ok |= strlen(groups[i]) == l && strncmp(groups[i], p, l) == 0;
        if (!ok)
            die("--only: unknown workload '%.*s'", (int)l, p);
        p = e ? e + 1 : p + l;
    }
}

static int any_selected(int s3)
{
    for (int i = 0; known[i]; i++)
        if (is_s3_workload(known[i]) == s3 && selected(known[i]))
            return 1;
    return 0;
}

/* ---- result lines (child side) */

static FILE *emit_f;
static const char *emit_engine = "";

static void put_clean(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc(*s == '\t' || *s == '\n' || *s == '\r' ? ' ' : *s, f);
}

void emit_open(const char *engine_name)
{
    emit_engine = engine_name;
    if (!emit_f) {
        emit_f = cfg.child_out ? fopen(cfg.child_out, "w") : stdout;
        if (!emit_f)
            die("cannot write %s: %s", cfg.child_out, strerror(errno));
    }
    fprintf(emit_f, "E\t%s\n", engine_name);
}

void emit_close(void)
{
    fprintf(emit_f, "END\n");
    if (fflush(emit_f) || (emit_f != stdout && fclose(emit_f)))
        die("writing %s: %s", cfg.child_out ? cfg.child_out : "stdout", strerror(errno));
    emit_f = NULL;
}

void emit_option(int sync, const char *text)
{
    fprintf(emit_f, "O\t%d\t", sync);
    put_clean(emit_f, text);
    fputc('\n', emit_f);
}

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

void emit_result(const char *name, uint64_t ops, uint64_t ns, double *samples, size_t n,
                 int no_rate, const char *notes_fmt, ...)
{
    double p50 = -1, p99 = -1, p999 = -1;
    if (n) {
        qsort(samples, n, sizeof *samples, cmp_double);
        p50 = pct(samples, n, 0.50) / 1e3;
        p99 = pct(samples, n, 0.99) / 1e3;
        p999 = pct(samples, n, 0.999) / 1e3;
    }
    char notes[1024];
    va_list ap;
    va_start(ap, notes_fmt);
    vsnprintf(notes, sizeof notes, notes_fmt, ap);
    va_end(ap);
    double secs = (double)ns / 1e9;
    fprintf(emit_f, "R\t%s\t%" PRIu64 "\t%.9f\t%.4f\t%.4f\t%.4f\t%ld\t%d\t", name, ops, secs, p50,
            p99, p999, peak_rss_kib(), no_rate);
    put_clean(emit_f, notes);
    fputc('\n', emit_f);
    fflush(emit_f);
    if (no_rate || p50 < 0)
        fprintf(stderr, "  %-8s %-18s %10" PRIu64 " ops %9.3f s\n", emit_engine, name, ops, secs);
    else
        fprintf(stderr, "  %-8s %-18s %10" PRIu64 " ops %9.3f s %12.0f ops/s  p50 %.2f us\n",
                emit_engine, name, ops, secs, secs > 0 ? (double)ops / secs : 0.0, p50);
}

void emit_metric(const char *name, double value, const char *notes_fmt, ...)
{
    char notes[512];
    va_list ap;
    va_start(ap, notes_fmt);
    vsnprintf(notes, sizeof notes, notes_fmt, ap);
    va_end(ap);
    fprintf(emit_f, "M\t%s\t%.6f\t", name, value);
    put_clean(emit_f, notes);
    fputc('\n', emit_f);
}

/* ---- the parent: one child per engine and run */

static char self_exe[4096];

/* Runs this binary as a child for engine e (workload w) with databases under
 * dir and result lines to out; returns its wall time in seconds. Dies when
 * the child fails (its directory is kept and named). */
static double run_child(const char *e, const char *w, const char *dir, const char *out)
{
    char num[32], reads[32], missing[32], ow[32], s1[32], s8[32], batch[32], seed[32], scale[32],
        rn[32], rr[32], xm[32];
    snprintf(num, sizeof num, "%" PRIu64, cfg.num);
    snprintf(reads, sizeof reads, "%" PRIu64, cfg.reads);
    snprintf(missing, sizeof missing, "%" PRIu64, cfg.missing);
    snprintf(ow, sizeof ow, "%" PRIu64, cfg.overwrites);
    snprintf(s1, sizeof s1, "%" PRIu64, cfg.sync_ops1);
    snprintf(s8, sizeof s8, "%" PRIu64, cfg.sync_ops8);
    snprintf(batch, sizeof batch, "%" PRIu64, cfg.batch);
    snprintf(seed, sizeof seed, "%" PRIu64, cfg.seed);
    snprintf(scale, sizeof scale, "%" PRIu64, cfg.scale_num);
    snprintf(rn, sizeof rn, "%" PRIu64, cfg.remote_num);
    snprintf(rr, sizeof rr, "%" PRIu64, cfg.remote_reads);
    snprintf(xm, sizeof xm, "%" PRIu64, cfg.xfer_mib);
    const char *argv[64];
    int a = 0;
    argv[a++] = self_exe;
    argv[a++] = "--engine", argv[a++] = e;
    argv[a++] = "--workload", argv[a++] = w;
    argv[a++] = "--child-out", argv[a++] = out;
    argv[a++] = "--dir", argv[a++] = dir;
    argv[a++] = "--num", argv[a++] = num;
    argv[a++] = "--reads", argv[a++] = reads;
    argv[a++] = "--missing", argv[a++] = missing;
    argv[a++] = "--overwrites", argv[a++] = ow;
    argv[a++] = "--sync-ops1", argv[a++] = s1;
    argv[a++] = "--sync-ops8", argv[a++] = s8;
    argv[a++] = "--batch", argv[a++] = batch;
    argv[a++] = "--seed", argv[a++] = seed;
    argv[a++] = "--scale-num", argv[a++] = scale;
    if (cfg.only)
        argv[a++] = "--only", argv[a++] = cfg.only;
    if (cfg.s3_url) {
        argv[a++] = "--s3-url", argv[a++] = cfg.s3_url;
        argv[a++] = "--remote-num", argv[a++] = rn;
        argv[a++] = "--remote-reads", argv[a++] = rr;
        argv[a++] = "--s3-mib", argv[a++] = xm;
    }
    argv[a] = NULL;
    fflush(stdout);
    fflush(stderr);
    uint64_t t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        execv(self_exe, (char *const *)argv);
        fprintf(stderr, "s4kv-bench: exec %s: %s\n", self_exe, strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid: %s", strerror(errno));
    double secs = (double)(now_ns() - t0) / 1e9;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (WIFSIGNALED(st))
            die("the %s process (%s) died of signal %d; databases kept in %s", e, w,
                WTERMSIG(st), dir);
        die("the %s process (%s) failed (exit %d); databases kept in %s", e, w, WEXITSTATUS(st),
            dir);
    }
    return secs;
}

static char tmp_parent[3840];
static int run_ok;

static void at_exit_cleanup(void)
{
    if (!tmp_parent[0] || cfg.engine)
        return;
    if (run_ok)
        rm_tree(tmp_parent);
    else
        fprintf(stderr, "s4kv-bench: databases and result lines kept in %s\n", tmp_parent);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: s4kv-bench [options]\n"
            "\n"
            "s4kv next to RocksDB, LevelDB and LMDB, db_bench style, with a fixed seed: every\n"
            "engine in its own process, interleaved, --runs times; medians with min and max as a\n"
            "Markdown table (stdout and OUT.md), JSON (OUT.json) and a gnuplot chart (OUT.png).\n"
            "Workloads: fillrandom readrandom readmissing overwrite reopen rebuild (s4kv only)\n"
            "           fillsync1 fillsync8 (\"fillsync\" = both)\n"
            "           with --s3-url (s4kv only): remoteget curlget upload download\n"
            "           s4db-put1000 s4db-put100 s4db-localget s4db-remoteget s4db-curlget\n"
            "           (\"s4db\" = all five)\n"
            "\n"
            "  --engines LIST  engines to compare, in this order (default %s)\n"
            "  --runs N        interleaved runs of every engine (default %d)\n"
            "  --scale         also the scale run: --scale-num keys, fill + gets, once per engine\n"
            "  --scale-num N   keys of the scale run (default %" PRIu64 ")\n"
            "  --num N         keys loaded by fillrandom (default %" PRIu64 ")\n"
            "  --reads N       readrandom gets (default %" PRIu64 ")\n"
            "  --missing N     readmissing gets (default %" PRIu64 ")\n"
            "  --overwrites N  overwrite puts (default %" PRIu64 ")\n"
            "  --sync-ops1 N   fillsync1 durable writes, one writer (default %" PRIu64 ")\n"
            "  --sync-ops8 N   fillsync8 durable writes per writer, 8 writers (default %" PRIu64 ")\n"
            "  --batch N       records per batch for fills and overwrite (default %" PRIu64 ")\n"
            "  --seed N        (default %" PRIu64 ")\n"
            "  --only LIST     comma-separated workloads to report (fillrandom always runs as\n"
            "                  the setup of the ones after it)\n"
            "  --dir DIR       put the databases under DIR (kept); default: a fresh\n"
            "                  temporary directory under $TMPDIR or /tmp, removed at the end\n"
            "  --out PREFIX    write PREFIX.md, PREFIX.json, PREFIX.png (default %s)\n"
            "  --s3-url URL    also run the S3 workloads under s3://BUCKET/PREFIX/ (each in a\n"
            "                  fresh sub-prefix, left there), configured like the AWS CLI\n"
            "                  (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...). curlget and the\n"
            "                  raw PUT/GET send UNSIGNED requests (s3rver accepts them) to\n"
            "                  the custom endpoint, path-style; skipped without one.\n"
            "                  bench/with-s3rver.sh runs a command with s3rver started\n"
            "  --remote-num N  keys uploaded for remoteget/curlget (default %" PRIu64 ")\n"
            "  --remote-reads N  remoteget gets = curlget GETs (default %" PRIu64 ")\n"
            "  --s3-mib N      database size for upload/download, MiB (default %" PRIu64 ")\n"
            "  --engine NAME --workload main|scale|s3 --child-out FILE\n"
            "                  (internal) run one engine in this process, result lines to FILE\n"
            "  --help\n",
            cfg.engines, cfg.runs, cfg.scale_num, cfg.num, cfg.reads, cfg.missing,
            cfg.overwrites, cfg.sync_ops1, cfg.sync_ops8, cfg.batch, cfg.seed, cfg.out,
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

/* Splits cfg.engines; dies on an unknown name. */
static size_t engine_list(const char *names[8])
{
    size_t n = 0;
    static char buf[256];
    snprintf(buf, sizeof buf, "%s", cfg.engines);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!engine_by_name(t))
            die("--engines: unknown engine '%s' (s4kv, rocksdb, leveldb, lmdb)", t);
        if (n == 8)
            die("--engines: at most 8");
        names[n++] = t;
    }
    if (!n)
        die("--engines: empty");
    return n;
}

static int child_main(const char *parent)
{
    const engine *e = engine_by_name(cfg.engine);
    if (!e)
        die("--engine: unknown engine '%s'", cfg.engine);
    if (mkdir(parent, 0755) && errno != EEXIST)
        die("mkdir %s: %s", parent, strerror(errno));
    if (strcmp(cfg.workload, "main") == 0)
        run_engine_main(e, parent);
    else if (strcmp(cfg.workload, "scale") == 0)
        run_engine_scale(e, parent);
    else if (strcmp(cfg.workload, "s3") == 0) {
        if (!cfg.s3_url || e != &engine_s4kv)
            die("--workload s3 needs --engine s4kv and --s3-url");
        run_s3(parent);
    } else
        die("--workload: main, scale or s3, not '%s'", cfg.workload);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        { "num", required_argument, NULL, 'n' },        { "reads", required_argument, NULL, 'r' },
        { "missing", required_argument, NULL, 'm' },    { "overwrites", required_argument, NULL, 'o' },
        { "sync-ops1", required_argument, NULL, '1' },  { "sync-ops8", required_argument, NULL, '8' },
        { "batch", required_argument, NULL, 'b' },      { "seed", required_argument, NULL, 'S' },
        { "only", required_argument, NULL, 'O' },       { "dir", required_argument, NULL, 'd' },
        { "out", required_argument, NULL, 'j' },        { "engines", required_argument, NULL, 'E' },
        { "runs", required_argument, NULL, 'x' },       { "scale", no_argument, NULL, 'L' },
        { "scale-num", required_argument, NULL, 'l' },  { "engine", required_argument, NULL, 'e' },
        { "workload", required_argument, NULL, 'w' },   { "child-out", required_argument, NULL, 'c' },
        { "s3-url", required_argument, NULL, 'U' },     { "remote-num", required_argument, NULL, 'N' },
        { "remote-reads", required_argument, NULL, 'R' }, { "s3-mib", required_argument, NULL, 'M' },
        { "help", no_argument, NULL, 'h' },             { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        switch (c) {
        case 'n': cfg.num = parse_count("--num", optarg, 1); break;
        case 'r': cfg.reads = parse_count("--reads", optarg, 0); break;
        case 'm': cfg.missing = parse_count("--missing", optarg, 0); break;
        case 'o': cfg.overwrites = parse_count("--overwrites", optarg, 0); break;
        case '1': cfg.sync_ops1 = parse_count("--sync-ops1", optarg, 1); break;
        case '8': cfg.sync_ops8 = parse_count("--sync-ops8", optarg, 1); break;
        case 'b': cfg.batch = parse_count("--batch", optarg, 1); break;
        case 'S': cfg.seed = parse_count("--seed", optarg, 0); break;
        case 'O': cfg.only = optarg; break;
        case 'd': cfg.dir = optarg; break;
        case 'j': cfg.out = optarg; break;
        case 'E': cfg.engines = optarg; break;
        case 'x': cfg.runs = (int)parse_count("--runs", optarg, 1); break;
        case 'L': cfg.scale = 1; break;
        case 'l': cfg.scale_num = parse_count("--scale-num", optarg, 1); break;
        case 'e': cfg.engine = optarg; break;
        case 'w': cfg.workload = optarg; break;
        case 'c': cfg.child_out = optarg; break;
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
    if (cfg.num > UINT32_MAX || cfg.scale_num > UINT32_MAX)
        die("--num, --scale-num: at most %u", UINT32_MAX);
    if (cfg.batch > 16u * 1024 * 1024)
        die("--batch: at most %u", 16u * 1024 * 1024);
    if (cfg.runs > 99)
        die("--runs: at most 99");
    check_only();
    if (!cfg.s3_url && cfg.only && any_selected(1))
        die("--only: the S3 workloads (remoteget curlget upload download s4db*) need --s3-url "
            "s3://BUCKET/PREFIX/");
    if (cfg.remote_num > UINT32_MAX || cfg.xfer_mib > 65536)
        die("--remote-num at most %u, --s3-mib at most 65536", UINT32_MAX);

    if (cfg.engine) { /* a child: one engine in this process */
        if (!cfg.dir)
            die("--engine needs --dir");
        return child_main(cfg.dir);
    }

    const char *engines[8];
    size_t nengines = engine_list(engines);
    ssize_t sl = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (sl <= 0)
        die("readlink /proc/self/exe: %s", strerror(errno));
    self_exe[sl] = '\0';

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
    fprintf(stderr, "s4kv-bench: engines %s, %d interleaved run%s, databases under %s\n",
            cfg.engines, cfg.runs, cfg.runs == 1 ? "" : "s", parent);

    char dir[4000], out[4100];
    uint64_t t_all = now_ns();
    if (any_selected(0)) {
        for (int r = 1; r <= cfg.runs; r++) {
            for (size_t k = 0; k < nengines; k++) {
                snprintf(dir, sizeof dir, "%s/run%d-%s", parent, r, engines[k]);
                snprintf(out, sizeof out, "%s.tsv", dir);
                fprintf(stderr, "s4kv-bench: run %d/%d: %s\n", r, cfg.runs, engines[k]);
                double s = run_child(engines[k], "main", dir, out);
                fprintf(stderr, "s4kv-bench: run %d/%d: %s took %.1f s\n", r, cfg.runs,
                        engines[k], s);
                report_add_file(out, engines[k], r, "main");
                rm_tree(dir);
            }
        }
    }
    if (cfg.scale) {
        for (size_t k = 0; k < nengines; k++) {
            snprintf(dir, sizeof dir, "%s/scale-%s", parent, engines[k]);
            snprintf(out, sizeof out, "%s.tsv", dir);
            fprintf(stderr, "s4kv-bench: scale run (%" PRIu64 " keys): %s\n", cfg.scale_num,
                    engines[k]);
            double s = run_child(engines[k], "scale", dir, out);
            fprintf(stderr, "s4kv-bench: scale run: %s took %.1f s\n", engines[k], s);
            report_add_file(out, engines[k], 1, "scale");
            rm_tree(dir);
        }
    }
    if (cfg.s3_url && any_selected(1)) {
        snprintf(dir, sizeof dir, "%s/s3", parent);
        snprintf(out, sizeof out, "%s.tsv", dir);
        fprintf(stderr, "s4kv-bench: S3 workloads (s4kv)\n");
        run_child("s4kv", "s3", dir, out);
        report_add_file(out, "s4kv", 1, "s3");
        rm_tree(dir);
    }
    fprintf(stderr, "s4kv-bench: all runs took %.1f s\n", (double)(now_ns() - t_all) / 1e9);
    report_write(cfg.out, parent);
    run_ok = 1;
    return 0;
}
