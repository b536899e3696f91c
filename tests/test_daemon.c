/*
 * test_daemon.c - the sync loop against a real s3rver on loopback: embedded
 * (s4kv_sync_start) with writes through the library, and the `s4kv sync`
 * daemon serving HTTP. Acknowledged writes reach S3 within the bound and a
 * fresh remote reader sees them; an idle database sends no S3 request; an
 * S3 outage leaves local writes working and is caught up afterwards with
 * the lag in the metrics; garbage written beside a compaction is compacted
 * with no further write; HTTP answers bad input with clear statuses; SIGTERM
 * with a request in flight finishes it, uploads and exits 0.
 */
#include <ctype.h>
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "s4kv.h"
#include "s3util.h"
#include "util.h"



/* The loop's log: kept (the tail is quoted by failing assertions), echoed
 * with S4KV_TEST_VERBOSE. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char logbuf[1 << 16];
static void dlog(void *ctx, const char *line)
{
    (void)ctx;
    pthread_mutex_lock(&log_mu);
    size_t n = strlen(logbuf);
    if (n > sizeof logbuf - 2048) {
        memmove(logbuf, logbuf + n / 2, n - n / 2 + 1);
        n = strlen(logbuf);
    }
    snprintf(logbuf + n, sizeof logbuf - n, "%s\n", line);
    pthread_mutex_unlock(&log_mu);
    if (getenv("S4KV_TEST_VERBOSE"))
        fprintf(stderr, "sync: %s\n", line);
}

static const char *log_tail(void)
{
    size_t n = strlen(logbuf);
    return n > 1500 ? logbuf + n - 1500 : logbuf;
}

static s4kv_db *open_db(const char *dir)
{
    s4kv_options o;
    s4kv_options_init(&o);
    o.sync_mode = S4KV_SYNC_NONE;
    o.log = dlog;
    s4kv_db *db = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_open(dir, &o, &db, err, sizeof err), 0, "open %s: %s", dir, err);
    return db;
}

static s4kv_sync_options sync_opts(const char *url, const char *endpoint, uint32_t interval_ms)
{
    s4kv_sync_options o;
    s4kv_sync_options_init(&o);
    o.s3.url = url;
    o.s3.endpoint = endpoint;
    o.interval_ms = interval_ms;
    o.log = dlog;
    return o;
}

static void put_kv(s4kv_db *db, const char *k, const char *v)
{
    char err[512] = "";
    cr_assert_eq(s4kv_put(db, k, strlen(k), v, strlen(v), err, sizeof err), 0, "put %s: %s", k,
                 err);
}

/* Waits until S3 holds every write of db (uploaded_seq reached next_seq). */
static void wait_caught_up(s4kv_sync_loop *sl, s4kv_db *db, int timeout_ms)
{
    long long t0 = tu_now_ms();
    for (;;) {
        s4kv_stats st;
        s4kv_sync_metrics m;
        s4kv_stats_get(db, &st);
        s4kv_sync_metrics_get(sl, &m);
        if (m.uploads && m.uploaded_seq == st.next_seq)
            return;
        if (tu_now_ms() - t0 > timeout_ms)
            cr_assert_fail("S3 did not catch up within %d ms (uploaded_seq %llu, next_seq %llu, "
                           "last error: %s); log:\n%s", timeout_ms,
                           (unsigned long long)m.uploaded_seq, (unsigned long long)st.next_seq,
                           m.last_error, log_tail());
        tu_sleep_ms(10);
    }
}

/* A fresh remote-only reader of url (through endpoint) finds key = want. */
static void remote_check(const char *url, const char *endpoint, const char *const *keys,
                         const char *const *vals, size_t n)
{
    s4kv_db *db = tu_remote_reader(url, endpoint, dlog);
    char err[512] = "";
    for (size_t i = 0; i < n; i++) {
        void *v = NULL;
        size_t vl = 0;
        int rc = s4kv_get(db, keys[i], strlen(keys[i]), &v, &vl, err, sizeof err);
        cr_assert_eq(rc, 0, "remote get %s: %s (%s)", keys[i], s4kv_strerror(rc), err);
        cr_assert(vl == strlen(vals[i]) && memcmp(v, vals[i], vl) == 0, "remote %s: wrong value",
                  keys[i]);
        s4kv_free(v);
    }
    s4kv_close(db);
}

/* ---- embedded */

Test(daemon, embedded_writes_reach_s3_within_the_bound, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    tu_proxy p;
    tu_proxy_start(&p, s.port, "rate=0");
    char *dir = tu_tmpdir("daemon-emb");
    s4kv_db *db = open_db(dir);
    const uint32_t interval = 200;
    s4kv_sync_options o = sync_opts("s3://bkt/emb/", p.endpoint, interval);
    s4kv_sync_loop *sl = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_sync_start(db, &o, &sl, err, sizeof err), 0, "%s", err);
    char addr[64];
    cr_assert_eq(s4kv_sync_address(sl, addr, sizeof addr), S4KV_ENOENT, "no HTTP by default");

    /* A steady load: one write every 10 ms for 3 s. */
    enum { N = 300 };
    static char keys[N][32], vals[N][64];
    const char *kp[N], *vp[N];
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "key%04d", i);
        snprintf(vals[i], sizeof vals[i], "value %d written while the loop runs", i);
        kp[i] = keys[i];
        vp[i] = vals[i];
        put_kv(db, keys[i], vals[i]);
        tu_sleep_ms(10);
    }
    wait_caught_up(sl, db, 10000);
    s4kv_sync_metrics m;
    s4kv_sync_metrics_get(sl, &m);
    /* The bound: a write waits for at most an interval (or the upload
     * running when it came), then its own upload; sampling adds interval/20. */
    uint64_t bound = interval + 2 * m.max_upload_ms + interval / 20 + 50;
    cr_assert(m.lag_max_ms > 0 && m.lag_max_ms <= bound,
              "lag max %llu ms, bound %llu ms (interval %u, max upload %llu ms); log:\n%s",
              (unsigned long long)m.lag_max_ms, (unsigned long long)bound, interval,
              (unsigned long long)m.max_upload_ms, log_tail());
    cr_assert(m.uploads >= 5, "only %llu uploads in 3 s at 200 ms", (unsigned long long)m.uploads);
    cr_assert(m.seals >= 1, "the active segment was never sealed by age");
    cr_assert_eq(m.upload_failures, 0, "%s", m.last_error);
    cr_assert(m.lag_p50_ms <= m.lag_p99_ms && m.lag_p99_ms <= m.lag_max_ms);
    if (getenv("S4KV_TEST_VERBOSE"))
        fprintf(stderr, "lag p50 %llu p99 %llu max %llu ms, uploads %llu, max upload %llu ms\n",
                (unsigned long long)m.lag_p50_ms, (unsigned long long)m.lag_p99_ms,
                (unsigned long long)m.lag_max_ms, (unsigned long long)m.uploads,
                (unsigned long long)m.max_upload_ms);
    /* A fresh reader sees every acknowledged write, while the loop runs. */
    remote_check("s3://bkt/emb/", p.endpoint, kp, vp, N);

    /* One more write, then stop: the final upload carries it. */
    put_kv(db, "last", "written just before stop");
    cr_assert_eq(s4kv_sync_stop(sl, err, sizeof err), 0, "%s", err);
    const char *lk[] = {"last", "key0000"}, *lv[] = {"written just before stop", vals[0]};
    remote_check("s3://bkt/emb/", p.endpoint, lk, lv, 2);
    cr_assert_eq(s4kv_close(db), 0);
    tu_proxy_stop(&p);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
}

Test(daemon, idle_database_sends_no_s3_requests, .timeout = 60)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    tu_proxy p;
    tu_proxy_start(&p, s.port, "rate=0");
    char *dir = tu_tmpdir("daemon-idle");
    s4kv_db *db = open_db(dir);
    s4kv_sync_options o = sync_opts("s3://bkt/idle/", p.endpoint, 100);
    s4kv_sync_loop *sl = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_sync_start(db, &o, &sl, err, sizeof err), 0, "%s", err);
    put_kv(db, "a", "1");
    wait_caught_up(sl, db, 10000);
    tu_sleep_ms(150); /* let an upload started by a late tick finish */
    s4kv_sync_metrics m0, m1;
    s4kv_sync_metrics_get(sl, &m0);
    long r0 = tu_proxy_stat(&p, "requests");
    tu_sleep_ms(2000); /* 20 intervals */
    long r1 = tu_proxy_stat(&p, "requests");
    s4kv_sync_metrics_get(sl, &m1);
    cr_assert_eq(r1, r0, "an idle database sent %ld S3 requests in 20 intervals; log:\n%s",
                 r1 - r0, log_tail());
    cr_assert_eq(m1.uploads, m0.uploads);
    cr_assert_eq(m1.s3_requests, m0.s3_requests);
    /* A write wakes it up, then it is quiet again. */
    put_kv(db, "b", "2");
    wait_caught_up(sl, db, 10000);
    cr_assert_gt(tu_proxy_stat(&p, "requests"), r1);
    tu_sleep_ms(150);
    long r2 = tu_proxy_stat(&p, "requests");
    tu_sleep_ms(1000);
    cr_assert_eq(tu_proxy_stat(&p, "requests"), r2, "requests after the write settled");
    /* Nothing changed since the last upload: stopping sends nothing either. */
    cr_assert_eq(s4kv_sync_stop(sl, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tu_proxy_stat(&p, "requests"), r2, "stop of an idle loop sent requests");
    s4kv_close(db);
    tu_proxy_stop(&p);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
}

Test(daemon, compaction_when_garbage_passes_the_ratio, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("daemon-compact");
    s4kv_options dopt;
    s4kv_options_init(&dopt);
    dopt.sync_mode = S4KV_SYNC_NONE;
    dopt.max_segment_bytes = 65536;
    dopt.log = dlog;
    s4kv_db *db = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_open(dir, &dopt, &db, err, sizeof err), 0, "%s", err);
    s4kv_sync_options o = sync_opts("s3://bkt/cmp/", s.endpoint, 100);
    /* Below the garbage the 2,000 puts leave (~140 KiB of compressed records)
     * even when a compaction ran in the middle of them: the compaction runs
     * beside the writers, so the later rounds' garbage must be able to
     * trigger the next one. */
    o.compact_min_garbage = 16 * 1024;
    s4kv_sync_loop *sl = NULL;
    cr_assert_eq(s4kv_sync_start(db, &o, &sl, err, sizeof err), 0, "%s", err);
    /* 50 keys overwritten 40 times: ~97% of the log is stale. */
    enum { K = 50 };
    static char keys[K][16], vals[K][256];
    const char *kp[K], *vp[K];
    for (int round = 0; round < 40; round++)
        for (int i = 0; i < K; i++) {
            snprintf(keys[i], sizeof keys[i], "k%02d", i);
            snprintf(vals[i], sizeof vals[i], "round %d of key %d, %0200d", round, i, round);
            kp[i] = keys[i];
            vp[i] = vals[i];
            put_kv(db, keys[i], vals[i]);
        }
    /* A compaction may start while the puts above still run (the loop ticks
     * every 100 ms) and leave the later rounds' garbage behind; the loop
     * compacts again once that garbage passes the ratio. So wait for the
     * state the writes lead to: compacted, with less than half garbage. */
    long long t0 = tu_now_ms();
    s4kv_sync_metrics m;
    s4kv_stats st;
    for (;;) {
        s4kv_sync_metrics_get(sl, &m);
        s4kv_stats_get(db, &st);
        if (m.compactions >= 1 && st.garbage_bytes * 2 < st.segment_bytes)
            break;
        cr_assert(tu_now_ms() - t0 < 10000,
                  "no compaction to under half garbage in 10 s (%llu compactions, %llu of %llu "
                  "bytes garbage, failures %llu: %s); log:\n%s",
                  (unsigned long long)m.compactions, (unsigned long long)st.garbage_bytes,
                  (unsigned long long)st.segment_bytes,
                  (unsigned long long)m.compaction_failures, m.last_error, log_tail());
        tu_sleep_ms(20);
    }
    wait_caught_up(sl, db, 10000);
    s4kv_sync_metrics_get(sl, &m);
    s4kv_stats_get(db, &st);
    cr_assert(st.garbage_bytes * 2 < st.segment_bytes, "still %llu of %llu bytes garbage",
              (unsigned long long)st.garbage_bytes, (unsigned long long)st.segment_bytes);
    cr_assert_eq(m.compaction_failures, 0, "%s", m.last_error);
    cr_assert(m.compact_pause_max_ms >= m.compact_pause_last_ms);
    /* Idle after it: no second compaction, the reader sees the last round. */
    tu_sleep_ms(800);
    s4kv_sync_metrics m2;
    s4kv_sync_metrics_get(sl, &m2);
    cr_assert_eq(m2.compactions, m.compactions, "compacted again without new garbage");
    remote_check("s3://bkt/cmp/", s.endpoint, kp, vp, K);
    cr_assert_eq(s4kv_sync_stop(sl, err, sizeof err), 0, "%s", err);
    s4kv_close(db);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
}

/* ---- A compaction with writes beside it (deterministic: the writes run in
 * the progress callback, on the compacting pool thread, while the copy runs
 * and no lock is held). They leave garbage the compaction did not reclaim:
 * stale copies in its outputs and overwritten records in the segments
 * written since its seal. No write follows, so only the loop can reclaim it. */

typedef struct beside {
    s4kv_db *db;
    int armed, fired, rc;
    char err[512];
} beside;

enum { BK = 50, BROUNDS_BEFORE = 10, BROUNDS_BESIDE = 20 };

/* Round r's value of key i: 200 pseudo-random hex digits (Snappy leaves them
 * as they are, so each record is ~230 bytes). */
static void beside_val(int r, int i, char *v, size_t cap)
{
    uint32_t x = 2654435761u * (uint32_t)(r * BK + i + 1);
    int n = snprintf(v, cap, "r%d-", r);
    for (; n < 200 && (size_t)n + 1 < cap; n++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v[n] = "0123456789abcdef"[x & 15];
    }
    v[n] = 0;
}

static int beside_put_rounds(s4kv_db *db, int from, int to, char *err, size_t errlen)
{
    for (int r = from; r < to; r++)
        for (int i = 0; i < BK; i++) {
            char k[16], v[256];
            snprintf(k, sizeof k, "b%02d", i);
            beside_val(r, i, v, sizeof v);
            int rc = s4kv_put(db, k, strlen(k), v, strlen(v), err, errlen);
            if (rc)
                return rc;
        }
    return 0;
}

static void beside_progress(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
    beside *b = ctx;
    if (strcmp(phase, "compact") != 0 || !b->armed || b->fired)
        return;
    b->fired = 1;
    b->rc = beside_put_rounds(b->db, BROUNDS_BEFORE, BROUNDS_BEFORE + BROUNDS_BESIDE, b->err,
                              sizeof b->err);
}

Test(daemon, garbage_written_beside_a_compaction_is_compacted_when_idle, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("daemon-beside");
    beside b = {0};
    s4kv_options dopt;
    s4kv_options_init(&dopt);
    dopt.sync_mode = S4KV_SYNC_NONE;
    dopt.max_segment_bytes = 65536;
    dopt.log = dlog;
    dopt.progress = beside_progress;
    dopt.progress_ctx = &b;
    s4kv_db *db = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_open(dir, &dopt, &db, err, sizeof err), 0, "%s", err);
    b.db = db;
    /* ~115 KB of log, 90% garbage: the loop's first tick compacts. */
    cr_assert_eq(beside_put_rounds(db, 0, BROUNDS_BEFORE, err, sizeof err), 0, "%s", err);
    b.armed = 1;
    pthread_mutex_lock(&log_mu);
    logbuf[0] = 0;
    pthread_mutex_unlock(&log_mu);
    const uint64_t min_garbage = 16 * 1024;
    s4kv_sync_options o = sync_opts("s3://bkt/beside/", s.endpoint, 100);
    o.compact_min_garbage = min_garbage;
    s4kv_sync_loop *sl = NULL;
    cr_assert_eq(s4kv_sync_start(db, &o, &sl, err, sizeof err), 0, "%s", err);

    /* The first compaction, with 1,000 overwrites (~230 KB) beside it. */
    long long t0 = tu_now_ms();
    s4kv_sync_metrics m;
    for (;;) {
        s4kv_sync_metrics_get(sl, &m);
        if (m.compactions + m.compaction_failures >= 1)
            break;
        cr_assert(tu_now_ms() - t0 < 10000, "no compaction in 10 s; log:\n%s", log_tail());
        tu_sleep_ms(10);
    }
    cr_assert_eq(m.compaction_failures, 0, "%s", m.last_error);
    cr_assert_eq(b.fired, 1, "the writes did not run beside the first compaction");
    cr_assert_eq(b.rc, 0, "put beside the compaction: %s", b.err);
    /* The scenario: what the first compaction left passes the thresholds. */
    unsigned long long after = 0;
    pthread_mutex_lock(&log_mu);
    const char *l = strstr(logbuf, "compaction done:");
    const char *g = l ? strstr(l, "garbage_after=") : NULL;
    if (g)
        sscanf(g, "garbage_after=%llu", &after);
    pthread_mutex_unlock(&log_mu);
    cr_assert(after >= 2 * min_garbage, "the first compaction left %llu bytes of garbage, "
              "expected the writes beside it to leave more; log:\n%s", after, log_tail());

    /* No write from here on: the loop alone must get under the threshold. */
    s4kv_stats st;
    t0 = tu_now_ms();
    for (;;) {
        s4kv_sync_metrics_get(sl, &m);
        s4kv_stats_get(db, &st);
        if (m.compactions >= 2 && st.garbage_bytes < min_garbage)
            break;
        cr_assert(tu_now_ms() - t0 < 5000,
                  "idle for 5 s (50 intervals) with %llu of %llu bytes garbage left beside the "
                  "first compaction (%llu compactions, failures %llu: %s); log:\n%s",
                  (unsigned long long)st.garbage_bytes, (unsigned long long)st.segment_bytes,
                  (unsigned long long)m.compactions, (unsigned long long)m.compaction_failures,
                  m.last_error, log_tail());
        tu_sleep_ms(20);
    }
    cr_assert_eq(m.compaction_failures, 0, "%s", m.last_error);
    /* ... and then stay quiet: no compaction of what cannot be reclaimed. */
    wait_caught_up(sl, db, 10000);
    tu_sleep_ms(150); /* let an upload started by a late tick finish */
    s4kv_sync_metrics_get(sl, &m);
    tu_sleep_ms(1000);
    s4kv_sync_metrics m2;
    s4kv_sync_metrics_get(sl, &m2);
    cr_assert_eq(m2.compactions, m.compactions, "compacted again without new garbage; log:\n%s",
                 log_tail());
    cr_assert_eq(m2.uploads, m.uploads, "uploaded again while idle");
    /* Every key holds its last value, locally and in S3. */
    static char keys[BK][16], vals[BK][256];
    const char *kp[BK], *vp[BK];
    for (int i = 0; i < BK; i++) {
        snprintf(keys[i], sizeof keys[i], "b%02d", i);
        beside_val(BROUNDS_BEFORE + BROUNDS_BESIDE - 1, i, vals[i], sizeof vals[i]);
        kp[i] = keys[i];
        vp[i] = vals[i];
        void *v = NULL;
        size_t vl = 0;
        cr_assert_eq(s4kv_get(db, keys[i], strlen(keys[i]), &v, &vl, err, sizeof err), 0, "%s",
                     err);
        cr_assert(vl == strlen(vals[i]) && memcmp(v, vals[i], vl) == 0, "%s: wrong value",
                  keys[i]);
        s4kv_free(v);
    }
    remote_check("s3://bkt/beside/", s.endpoint, kp, vp, BK);
    cr_assert_eq(s4kv_sync_stop(sl, err, sizeof err), 0, "%s", err);
    s4kv_close(db);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
}

/* faultproxy on a chosen port (tu_proxy_start picks a new one; an outage
 * needs the same endpoint to come back). */
static pid_t proxy_on_port(int port, int upstream)
{
    char bin[PATH_MAX];
    const char *e = getenv("S4KV_FAULTPROXY"), *b = getenv("S4KV_BIN");
    if (e && *e) {
        snprintf(bin, sizeof bin, "%s", e);
    } else if (b && *b) {
        char *copy = strdup(b);
        snprintf(bin, sizeof bin, "%s/faultproxy", dirname(copy));
        free(copy);
    } else {
        snprintf(bin, sizeof bin, "build/faultproxy");
    }
    char lis[64], up[64];
    snprintf(lis, sizeof lis, "127.0.0.1:%d", port);
    snprintf(up, sizeof up, "127.0.0.1:%d", upstream);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(bin, bin, "--listen", lis, "--upstream", up, "--faults", "rate=0", (char *)NULL);
        _exit(127);
    }
    long long t0 = tu_now_ms();
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return pid;
        int st;
        cr_assert(waitpid(pid, &st, WNOHANG) == 0, "faultproxy %s on port %d exited", bin, port);
        cr_assert(tu_now_ms() - t0 < 10000, "faultproxy on port %d did not start", port);
        tu_sleep_ms(20);
    }
}

Test(daemon, s3_outage_writes_go_on_and_the_loop_catches_up, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    tu_proxy p;
    tu_proxy_start(&p, s.port, "rate=0");
    int port = p.port;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "%s", p.endpoint);
    /* Fail fast while S3 is away: short client backoff, 2 attempts. */
    setenv("S4KV_S3_RETRY_BASE_MS", "5", 1);
    setenv("S4KV_S3_RETRY_CAP_MS", "20", 1);
    setenv("AWS_MAX_ATTEMPTS", "2", 1);
    char *dir = tu_tmpdir("daemon-outage");
    s4kv_db *db = open_db(dir);
    s4kv_sync_options o = sync_opts("s3://bkt/out/", endpoint, 100);
    o.retry_max_ms = 400;
    s4kv_sync_loop *sl = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_sync_start(db, &o, &sl, err, sizeof err), 0, "%s", err);
    put_kv(db, "before", "the outage");
    wait_caught_up(sl, db, 10000);

    tu_proxy_stop(&p); /* S3 is gone */
    long long t_down = tu_now_ms();
    enum { N = 40 };
    static char keys[N][32], vals[N][32];
    const char *kp[N + 1], *vp[N + 1];
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "during%02d", i);
        snprintf(vals[i], sizeof vals[i], "written in outage %d", i);
        kp[i] = keys[i];
        vp[i] = vals[i];
        put_kv(db, keys[i], vals[i]); /* local writes keep succeeding */
        tu_sleep_ms(40);
    }
    /* Local reads too. */
    void *v;
    size_t vl;
    cr_assert_eq(s4kv_get(db, "during00", 8, &v, &vl, err, sizeof err), 0, "%s", err);
    s4kv_free(v);
    s4kv_sync_metrics m;
    s4kv_sync_metrics_get(sl, &m);
    cr_assert(m.upload_failures >= 2, "failures %llu during a 1.6 s outage; log:\n%s",
              (unsigned long long)m.upload_failures, log_tail());
    cr_assert(m.consecutive_failures >= 1);
    cr_assert(m.last_error[0], "no last error");
    cr_assert(m.lag_pending_ms >= 1000, "pending lag %llu ms after 1.6 s of outage",
              (unsigned long long)m.lag_pending_ms);
    cr_assert(m.s3_errors >= 2);

    pid_t pp = proxy_on_port(port, s.port); /* S3 is back, same endpoint */
    long long t_up = tu_now_ms();
    wait_caught_up(sl, db, 10000);
    long long t_caught = tu_now_ms();
    s4kv_sync_metrics_get(sl, &m);
    cr_assert_eq(m.consecutive_failures, 0);
    /* The upload that caught up carried the first write of the outage. */
    cr_assert(m.lag_last_ms >= (uint64_t)(t_up - t_down - 200) &&
              m.lag_max_ms >= m.lag_last_ms,
              "lag after the outage %llu ms, outage %lld ms", (unsigned long long)m.lag_last_ms,
              t_up - t_down);
    /* Backoff capped at 400 ms: caught up soon after S3 came back. */
    cr_assert(t_caught - t_up < 400 + 100 + 2000, "caught up %lld ms after S3 came back",
              t_caught - t_up);
    kp[N] = "before";
    vp[N] = "the outage";
    remote_check("s3://bkt/out/", endpoint, kp, vp, N + 1);
    cr_assert_eq(s4kv_sync_stop(sl, err, sizeof err), 0, "%s", err);
    s4kv_close(db);
    kill(-pp, SIGTERM);
    waitpid(pp, NULL, 0);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
}

Test(daemon, options_check_and_non_loopback_listen)
{
    s4kv_sync_options o;
    s4kv_sync_options_init(&o);
    char err[512] = "";
    cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), S4KV_EINVAL, "no URL");
    o.s3.url = "s3://bkt/x/";
    cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), 0, "%s", err);
    o.listen = "0.0.0.0:0";
    cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), S4KV_EINVAL);
    cr_assert(strstr(err, "token") && strstr(err, "insecure"), "%s", err);
    o.token = "secret";
    cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), 0, "%s", err);
    o.token = NULL;
    o.insecure = 1;
    cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), 0, "%s", err);
    o.insecure = 0;
    const char *ok[] = {"127.0.0.1:0", "localhost:7070", "[::1]:0", "127.1.2.3:80"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        o.listen = ok[i];
        cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), 0, "%s: %s", ok[i], err);
    }
    const char *bad[] = {"7070", "127.0.0.1", "127.0.0.1:99999", "host.example:80", "[::1:0",
                         "[::]:0", "10.0.0.1:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.listen = bad[i];
        cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), S4KV_EINVAL, "%s", bad[i]);
    }
    o.listen = NULL;
    o.interval_ms = 5;
    cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), S4KV_EINVAL);
    o.interval_ms = 1000;
    o.compact_ratio = 1.5;
    cr_assert_eq(s4kv_sync_options_check(&o, err, sizeof err), S4KV_EINVAL);

    /* The CLI refuses it before touching DIR, exit 2, one clear line. */
    char *tmp = tu_tmpdir("daemon-cli");
    char db[PATH_MAX];
    snprintf(db, sizeof db, "%s/db", tmp);
    char *argv[] = {(char *)tu_s4kv_bin(), "-d", db, "--s3", "s3://bkt/x/", "sync", "--listen",
                    "0.0.0.0:0", NULL};
    char *out = NULL, *er = NULL;
    size_t ol;
    int rc = tu_run(argv, NULL, 0, &out, &ol, &er);
    cr_assert_eq(rc, 2, "exit %d: %s", rc, er);
    cr_assert(strncmp(er, "s4kv: ", 6) == 0 && strstr(er, "--token") && strstr(er, "--insecure") &&
              strchr(er, '\n') == er + strlen(er) - 1, "%s", er);
    struct stat st;
    cr_assert(stat(db, &st) != 0, "the refused daemon created %s", db);
    free(out);
    free(er);
    char *argv2[] = {(char *)tu_s4kv_bin(), "sync", "--help", NULL};
    rc = tu_run(argv2, NULL, 0, &out, &ol, &er);
    cr_assert_eq(rc, 0);
    cr_assert(strstr(out, "usage: s4kv") && strstr(out, "--listen") && strstr(out, "Exit status"),
              "%s", out);
    free(out);
    free(er);
    tu_rmtree_free(tmp);
}






static pid_t start_daemon(const char *dir, const char *url, const char *logfile, int *port)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 2);
        dup2(fd, 1);
        execl(tu_s4kv_bin(), tu_s4kv_bin(), "-d", dir, "--s3", url, "sync", "--listen",
              "127.0.0.1:0", "--interval", "200ms", (char *)NULL);
        _exit(127);
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/SYNC_ADDR", dir);
    long long t0 = tu_now_ms();
    for (;;) {
        size_t n;
        uint8_t *a = tu_read_file(path, &n);
        if (a) {
            const char *colon = strrchr((char *)a, ':');
            cr_assert(colon && strncmp((char *)a, "127.0.0.1:", 10) == 0, "SYNC_ADDR: %s", a);
            *port = atoi(colon + 1);
            free(a);
            return pid;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            uint8_t *l = tu_read_file(logfile, &n);
            cr_assert_fail("s4kv sync exited at start (status %d): %s", st, l ? (char *)l : "");
        }
        cr_assert(tu_now_ms() - t0 < 15000, "s4kv sync wrote no SYNC_ADDR in 15 s");
        tu_sleep_ms(20);
    }
}

Test(daemon, http_api_and_sigterm_with_a_request_in_flight, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt"); /* exports AWS_ENDPOINT_URL_S3 for the daemon */
    char *dir = tu_tmpdir("daemon-http");
    char *logdir = tu_tmpdir("daemon-http-log");
    char logfile[PATH_MAX];
    snprintf(logfile, sizeof logfile, "%s/sync.log", logdir);
    int port = 0;
    pid_t pid = start_daemon(dir, "s3://bkt/http/", logfile, &port);

    /* A binary value under a key with NUL, '/', 0xff, space: PUT, GET on one
     * keep-alive connection, DELETE, GET 404. */
    uint8_t val[1000];
    for (size_t i = 0; i < sizeof val; i++)
        val[i] = (uint8_t)(i * 7);
    val[3] = 0;
    const char *path = "/v1/kv/bin%00key%2Fx%FF%20y";
    tu_resp r = tu_http(port, "PUT", path, val, sizeof val, NULL);
    cr_assert_eq(r.status, 204, "%s%s", r.head, r.body);
    free(r.body);
    int fd = tu_tcp_connect(port);
    char head[512];
    int hl = snprintf(head, sizeof head, "GET %s HTTP/1.1\r\nHost: t\r\n\r\nGET %s HTTP/1.1\r\n"
                      "Host: t\r\n\r\n", path, path);
    tu_send_all(fd, head, (size_t)hl); /* two pipelined requests */
    for (int k = 0; k < 2; k++) {
        tu_read_resp(fd, &r);
        cr_assert_eq(r.status, 200, "%s%s", r.head, r.body);
        cr_assert(r.blen == sizeof val && memcmp(r.body, val, sizeof val) == 0,
                  "GET returned other bytes");
        free(r.body);
    }
    close(fd);
    r = tu_http(port, "DELETE", path, NULL, 0, NULL);
    cr_assert_eq(r.status, 204);
    free(r.body);
    r = tu_http(port, "GET", path, NULL, 0, NULL);
    cr_assert_eq(r.status, 404);
    free(r.body);
    r = tu_http(port, "GET", "/v1/kv/never-written", NULL, 0, NULL);
    cr_assert_eq(r.status, 404);
    free(r.body);

    /* Bad input. */
    const char *badpct[] = {"/v1/kv/a%zz", "/v1/kv/a%4", "/v1/kv/%", "/v1/keys?prefix=%g0"};
    for (size_t i = 0; i < sizeof badpct / sizeof badpct[0]; i++) {
        r = tu_http(port, "GET", badpct[i], NULL, 0, NULL);
        cr_assert_eq(r.status, 400, "%s: %s", badpct[i], r.head);
        free(r.body);
    }
    r = tu_http(port, "PUT", "/v1/kv/x%zz", "v", 1, NULL);
    cr_assert_eq(r.status, 400);
    free(r.body);
    /* Oversized: refused from the head, before any body byte. */
    fd = tu_tcp_connect(port);
    const char big[] = "PUT /v1/kv/big HTTP/1.1\r\nHost: t\r\nContent-Length: 67108865\r\n\r\n";
    tu_send_all(fd, big, sizeof big - 1);
    tu_read_resp(fd, &r);
    cr_assert_eq(r.status, 413, "%s", r.head);
    cr_assert(strcasestr(r.head, "Connection: close"));
    free(r.body);
    close(fd);
    r = tu_http(port, "GET", "/nope", NULL, 0, NULL);
    cr_assert_eq(r.status, 404);
    free(r.body);
    r = tu_http(port, "POST", "/v1/kv/x", NULL, 0, NULL);
    cr_assert_eq(r.status, 405);
    cr_assert(strcasestr(r.head, "Allow: GET, HEAD, PUT, DELETE"), "%s", r.head);
    free(r.body);
    fd = tu_tcp_connect(port);
    tu_send_all(fd, "GARBAGE\r\n\r\n", 11);
    tu_read_resp(fd, &r);
    cr_assert_eq(r.status, 400);
    free(r.body);
    close(fd);

    /* Keys, health, metrics. */
    r = tu_http(port, "PUT", "/v1/kv/k%202", "two", 3, NULL);
    cr_assert_eq(r.status, 204);
    free(r.body);
    r = tu_http(port, "PUT", "/v1/kv/k/1", "one", 3, NULL);
    cr_assert_eq(r.status, 204);
    free(r.body);
    r = tu_http(port, "PUT", "/v1/kv/other", "", 0, NULL);
    cr_assert_eq(r.status, 204);
    free(r.body);
    r = tu_http(port, "GET", "/v1/keys?prefix=k", NULL, 0, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "k%202\nk/1\n");
    free(r.body);
    r = tu_http(port, "GET", "/v1/keys", NULL, 0, "Accept: application/json\r\n");
    cr_assert_str_eq(r.body, "[\"k%202\",\"k/1\",\"other\"]\n");
    free(r.body);
    r = tu_http(port, "GET", "/v1/kv/other", NULL, 0, NULL);
    cr_assert(r.status == 200 && r.blen == 0, "empty value: %s", r.head);
    free(r.body);
    /* A key holding every byte value lists as its exact encoding: the 66
     * unreserved characters and '/' raw, everything else %XX. */
    {
        char allpath[16 + 3 * 256], want[3 * 256 + 2], *pp = allpath, *w = want;
        pp += sprintf(pp, "/v1/kv/~all");
        w += sprintf(w, "~all");
        for (int ch = 0; ch < 256; ch++) {
            pp += sprintf(pp, "%%%02X", ch);
            int raw = isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~' || ch == '/';
            w += raw ? sprintf(w, "%c", ch) : sprintf(w, "%%%02X", ch);
        }
        sprintf(w, "\n");
        r = tu_http(port, "PUT", allpath, "x", 1, NULL);
        cr_assert_eq(r.status, 204);
        free(r.body);
        r = tu_http(port, "GET", "/v1/keys?prefix=~", NULL, 0, NULL);
        cr_assert_eq(r.status, 200);
        cr_assert_str_eq(r.body, want);
        free(r.body);
        r = tu_http(port, "DELETE", allpath, NULL, 0, NULL);
        cr_assert_eq(r.status, 204);
        free(r.body);
    }
    r = tu_http(port, "GET", "/healthz", NULL, 0, NULL);
    cr_assert(r.status == 200 && strcmp(r.body, "ok\n") == 0);
    free(r.body);
    tu_sleep_ms(600); /* an upload or two */
    r = tu_http(port, "GET", "/metrics", NULL, 0, NULL);
    cr_assert_eq(r.status, 200);
    const char *want[] = {"s4kv_upload_lag_seconds ", "s4kv_uploads_total ",
                          "s4kv_s3_requests_total ", "s4kv_garbage_ratio ",
                          "s4kv_http_requests_total{op=\"put\"} 7", /* 5 + 400 + 413 */
                          "s4kv_http_request_duration_seconds{op=\"get\",quantile=\"0.99\"}",
                          "s4kv_compaction_pause_seconds ", "s4kv_http_responses_total{code=\"413\"} 1"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(r.body, want[i]), "/metrics lacks %s:\n%s", want[i], r.body);
    free(r.body);

    /* SIGTERM while a PUT is half sent: the daemon stops accepting, waits
     * for the rest, answers, uploads, exits 0. */
    fd = tu_tcp_connect(port);
    const char part1[] = "PUT /v1/kv/last HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234";
    tu_send_all(fd, part1, sizeof part1 - 1);
    tu_sleep_ms(100);
    cr_assert_eq(kill(pid, SIGTERM), 0);
    tu_sleep_ms(300);
    int fd2 = tu_tcp_connect(port);
    cr_assert(fd2 < 0, "the stopping daemon still accepts connections");
    tu_send_all(fd, "56789", 5);
    tu_read_resp(fd, &r);
    cr_assert_eq(r.status, 204, "%s", r.head);
    cr_assert(strcasestr(r.head, "Connection: close"), "%s", r.head);
    free(r.body);
    close(fd);
    int st = 0;
    long long t0 = tu_now_ms();
    while (waitpid(pid, &st, WNOHANG) == 0) {
        cr_assert(tu_now_ms() - t0 < 30000, "s4kv sync did not exit within 30 s of SIGTERM");
        tu_sleep_ms(20);
    }
    size_t ln;
    uint8_t *lg = tu_read_file(logfile, &ln);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d; log:\n%s", st,
              lg ? (char *)lg : "");
    cr_assert(lg && strstr((char *)lg, "upload done") && strstr((char *)lg, "SIGTERM"),
              "log:\n%s", lg ? (char *)lg : "");
    free(lg);
    char ap[PATH_MAX];
    snprintf(ap, sizeof ap, "%s/SYNC_ADDR", dir);
    struct stat sst;
    cr_assert(stat(ap, &sst) != 0, "SYNC_ADDR left behind");
    /* A fresh remote reader sees the write that was in flight. */
    const char *k[] = {"last", "k/1", "k 2"}, *v[] = {"0123456789", "one", "two"};
    remote_check("s3://bkt/http/", NULL, k, v, 3);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
    tu_rmtree_free(logdir);
}

/* SIGTERM with many clients mid-request: 48 PUTs half sent and 16 idle
 * connections. The idle ones are closed without a response, new
 * connections are refused, every PUT finishes (204, Connection: close), the
 * final upload carries them and the daemon exits 0. */
Test(daemon, sigterm_with_many_requests_in_flight, .timeout = 120)
{
    enum { NPUT = 48, NIDLE = 16, VLEN = 1000 };
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("daemon-drain");
    char *logdir = tu_tmpdir("daemon-drain-log");
    char logfile[PATH_MAX];
    snprintf(logfile, sizeof logfile, "%s/sync.log", logdir);
    int port = 0;
    pid_t pid = start_daemon(dir, "s3://bkt/drain/", logfile, &port);
    static char vals[NPUT][VLEN + 1], keys[NPUT][32];
    int put_fd[NPUT], idle_fd[NIDLE];
    for (int i = 0; i < NPUT; i++) {
        for (int j = 0; j < VLEN; j++)
            vals[i][j] = (char)('a' + (i + j) % 26);
        snprintf(keys[i], sizeof keys[i], "drain%02d", i);
        put_fd[i] = tu_tcp_connect(port);
        cr_assert(put_fd[i] >= 0);
        char head[128];
        int hl = snprintf(head, sizeof head, "PUT /v1/kv/%s HTTP/1.1\r\nHost: t\r\n"
                          "Content-Length: %d\r\n\r\n", keys[i], VLEN);
        tu_send_all(put_fd[i], head, (size_t)hl);
        tu_send_all(put_fd[i], vals[i], VLEN / 2);
    }
    for (int i = 0; i < NIDLE; i++) {
        idle_fd[i] = tu_tcp_connect(port);
        cr_assert(idle_fd[i] >= 0);
    }
    tu_sleep_ms(200);
    cr_assert_eq(kill(pid, SIGTERM), 0);
    tu_sleep_ms(300);
    int fd2 = tu_tcp_connect(port);
    cr_assert(fd2 < 0, "the stopping daemon still accepts connections");
    for (int i = 0; i < NIDLE; i++) {
        char c;
        cr_assert_eq(recv(idle_fd[i], &c, 1, 0), 0, "idle connection %d not closed at stop", i);
        close(idle_fd[i]);
    }
    for (int i = 0; i < NPUT; i++)
        tu_send_all(put_fd[i], vals[i] + VLEN / 2, VLEN - VLEN / 2);
    for (int i = 0; i < NPUT; i++) {
        tu_resp r;
        tu_read_resp(put_fd[i], &r);
        cr_assert_eq(r.status, 204, "PUT %d: %s", i, r.head);
        cr_assert(strcasestr(r.head, "Connection: close"), "%s", r.head);
        free(r.body);
        close(put_fd[i]);
    }
    int st = 0;
    long long t0 = tu_now_ms();
    while (waitpid(pid, &st, WNOHANG) == 0) {
        cr_assert(tu_now_ms() - t0 < 30000, "s4kv sync did not exit within 30 s of SIGTERM");
        tu_sleep_ms(20);
    }
    size_t ln;
    uint8_t *lg = tu_read_file(logfile, &ln);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d; log:\n%s", st,
              lg ? (char *)lg : "");
    free(lg);
    const char *k[NPUT], *v[NPUT];
    for (int i = 0; i < NPUT; i++) {
        k[i] = keys[i];
        v[i] = vals[i];
    }
    remote_check("s3://bkt/drain/", NULL, k, v, NPUT);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
    tu_rmtree_free(logdir);
}
