/*
 * test_s3uv.c - the S3 client's transfer driver (sync/s3.c; suite "s3uv"):
 * curl_multi_socket_action on a libuv loop, private per call or attached to
 * a caller's loop (s3_loop, s3_client_attach_loop), against s3rver
 * (tests/s3util.c) and the fault proxy: many transfers at once stay byte
 * identical, an attached loop runs the transfers of a worker thread on its
 * own thread while it keeps serving its timers, a call made on the loop
 * thread itself does not deadlock, retries converge through 30% faults,
 * 100 calls leak no file descriptor or multi handle, and the sync loop's
 * uploads run their transfers on the sync loop's own thread.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "daemon.h"
#include "s3.h"
#include "s3_internal.h"
#include "s3util.h"
#include "s4kv.h"
#include "util.h"

TestSuite(s3uv, .timeout = 180);

static void fill(uint8_t *buf, size_t n, uint64_t seed)
{
    uint64_t st = seed;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = tu_rand(&st);
        memcpy(buf + i, &v, n - i < 8 ? n - i : 8);
    }
}

static s3_client *client_at(s3_config *c, const char *endpoint, int max_parallel)
{
    char err[512] = "";
    cr_assert_eq(s3_config_from_env(c, NULL, endpoint, err, sizeof err), 0, "%s", err);
    c->max_parallel = max_parallel;
    s3_client *cl = s3_client_new(c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    return cl;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the DIR's own */
}

/* ---- a loop on its own thread: a 2 ms timer counts ticks; an async stops it */

typedef struct lthread {
    uv_loop_t loop;
    uv_timer_t tick;
    uv_async_t stop, call;
    s3_loop *x;
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready;
    volatile uint64_t ticks;
    uint64_t max_gap_ms, last_ms;
    /* a call on the loop thread itself (call async) */
    s3_client *cl;
    int call_rc, call_done;
    char call_err[512];
} lthread;

static void on_tick(uv_timer_t *t)
{
    lthread *L = t->data;
    uint64_t now = uv_hrtime() / 1000000u;
    if (L->last_ms && now - L->last_ms > L->max_gap_ms)
        L->max_gap_ms = now - L->last_ms;
    L->last_ms = now;
    L->ticks++;
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_stop(uv_async_t *a)
{
    lthread *L = a->data;
    s3_loop_close(L->x);
    uv_close((uv_handle_t *)&L->tick, on_closed);
    uv_close((uv_handle_t *)&L->stop, on_closed);
    uv_close((uv_handle_t *)&L->call, on_closed);
}

static void on_call(uv_async_t *a)
{
    lthread *L = a->data;
    uint64_t size = 0;
    int rc = s3_head(L->cl, "par/0", &size, L->call_err, sizeof L->call_err);
    pthread_mutex_lock(&L->mu);
    L->call_rc = rc;
    L->call_done = 1;
    pthread_cond_signal(&L->cv);
    pthread_mutex_unlock(&L->mu);
}

static void *loop_main(void *arg)
{
    lthread *L = arg;
    char err[256];
    uv_loop_init(&L->loop);
    int rc = s3_loop_new(&L->loop, &L->x, err, sizeof err);
    uv_timer_init(&L->loop, &L->tick);
    L->tick.data = L;
    uv_timer_start(&L->tick, on_tick, 2, 2);
    uv_async_init(&L->loop, &L->stop, on_stop);
    L->stop.data = L;
    uv_async_init(&L->loop, &L->call, on_call);
    L->call.data = L;
    pthread_mutex_lock(&L->mu);
    L->ready = rc == 0 ? 1 : -1;
    pthread_cond_signal(&L->cv);
    pthread_mutex_unlock(&L->mu);
    uv_run(&L->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void loop_start(lthread *L)
{
    memset(L, 0, sizeof *L);
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    cr_assert_eq(pthread_create(&L->tid, NULL, loop_main, L), 0);
    pthread_mutex_lock(&L->mu);
    while (!L->ready)
        pthread_cond_wait(&L->cv, &L->mu);
    pthread_mutex_unlock(&L->mu);
    cr_assert_eq(L->ready, 1, "s3_loop_new failed");
}

/* Stops the loop and checks it closed every handle (uv_loop_close == 0). */
static void loop_stop(lthread *L)
{
    uv_async_send(&L->stop);
    pthread_join(L->tid, NULL);
    cr_expect_eq(uv_loop_close(&L->loop), 0, "a handle was left open on the loop");
    pthread_cond_destroy(&L->cv);
    pthread_mutex_destroy(&L->mu);
}

/* ---- tests */

typedef struct prog {
    pthread_t want;
    uint64_t calls, wrong_thread, done, total;
} prog;

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    prog *p = ctx;
    p->calls++;
    p->wrong_thread += !pthread_equal(pthread_self(), p->want);
    p->done = done;
    p->total = total;
}

enum { NPAR = 64 };

/* s3rver answers a PUT before its file is completely written (its
 * putObject resolves when the body has been read, not when the write stream
 * finished), so a GET right after may see a short object. Waits, through a
 * client of its own (cl's counters stay exact), until HEAD reports each
 * object's full size. */
static void settle(const s3_config *c, char key[][32], const size_t *len, int n)
{
    char err[512];
    s3_client *h = s3_client_new(c, "bucket", err, sizeof err);
    cr_assert_not_null(h, "%s", err);
    s3_client_set_backoff(h, 5, 50);
    for (int i = 0; i < n; i++) {
        uint64_t size = 0;
        for (int t = 0; t < 250; t++) {
            if (s3_head(h, key[i], &size, err, sizeof err) == 0 && size == len[i])
                break;
            tu_sleep_ms(20);
        }
        cr_assert_eq(size, len[i], "%s: HEAD says %llu bytes, PUT sent %zu", key[i],
                     (unsigned long long)size, len[i]);
    }
    s3_client_free(h);
}

/* 64 PUTs (one of them multipart) then 64 GET_FILEs with max_parallel 16. */
static void put_get_64(s3_client *cl, const s3_config *c, const char *dir, uint8_t *v[NPAR],
                       size_t len[NPAR], uint64_t seed)
{
    s3_xfer x[NPAR];
    char key[NPAR][32], path[NPAR][256];
    uint64_t st = seed;
    for (int i = 0; i < NPAR; i++) {
        len[i] = i == 7 ? (12u << 20) + 12345 : 1 + tu_rand(&st) % 300000;
        v[i] = malloc(len[i]);
        fill(v[i], len[i], seed * 1000 + (uint64_t)i);
        snprintf(key[i], sizeof key[i], "par/%d", i);
        snprintf(path[i], sizeof path[i], "%s/get_%d", dir, i);
        x[i] = (s3_xfer){.op = S3_XPUT_BUF, .key = key[i], .buf = v[i], .len = len[i]};
    }
    cr_assert_eq(s3_run(cl, x, NPAR, NULL, NULL), 0, "%s", x[0].err);
    for (int i = 0; i < NPAR; i++) {
        cr_assert_eq(x[i].rc, 0, "%s", x[i].err);
        x[i] = (s3_xfer){.op = S3_XGET_FILE, .key = key[i], .path = path[i], .len = len[i]};
    }
    settle(c, key, len, NPAR);
    cr_assert_eq(s3_run(cl, x, NPAR, NULL, NULL), 0, "%s", x[0].err);
    for (int i = 0; i < NPAR; i++) {
        size_t n = 0;
        uint8_t *back = tu_read_file(path[i], &n);
        cr_assert_not_null(back, "%s", path[i]);
        cr_assert(n == len[i] && memcmp(back, v[i], n) == 0, "%s differs (%zu of %zu bytes)",
                  key[i], n, len[i]);
        free(back);
    }
}

Test(s3uv, sixty_four_parallel_transfers_are_byte_identical)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    s3_client *cl = client_at(&c, NULL, 16);
    c.multipart_threshold = 5u << 20;
    c.part_size = 5u << 20;
    s3_client_free(cl);
    char err[512];
    cl = s3_client_new(&c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    char *dir = tu_tmpdir("s3uv");
    uint8_t *v[NPAR];
    size_t len[NPAR];
    long long t0 = tu_now_ms();
    put_get_64(cl, &c, dir, v, len, 3);
    long long t1 = tu_now_ms();
    s3_stats st;
    s3_client_stats(cl, &st);
    s3_debug d;
    s3_client_debug(cl, &d);
    /* 63 PUTs + create, 3 parts, complete; 64 GETs */
    cr_expect_eq(st.requests, 63 + 5 + 64, "%llu requests", (unsigned long long)st.requests);
    cr_expect_leq(st.connections, 16, "at most max_parallel connections, got %llu",
                  (unsigned long long)st.connections);
    cr_expect_eq(d.private_batches, 2);
    cr_expect_eq(d.multis_dropped, 0, "curl still watched a socket after a batch");
    cr_expect(d.have_thread && pthread_equal(d.last_thread, pthread_self()));
    cr_log_info("64 PUTs + 64 GETs (%llu connections): %lld ms",
                (unsigned long long)st.connections, t1 - t0);
    for (int i = 0; i < NPAR; i++)
        free(v[i]);
    tu_rmtree_free(dir);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

Test(s3uv, attached_loop_runs_a_worker_threads_transfers_on_its_thread)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    s3_client *cl = client_at(&c, NULL, 16);
    lthread L;
    loop_start(&L);
    s3_client_attach_loop(cl, L.x);
    char *dir = tu_tmpdir("s3uv");
    uint8_t *v[NPAR];
    size_t len[NPAR];
    uint64_t ticks0 = L.ticks;
    put_get_64(cl, &c, dir, v, len, 5);
    /* single requests go the same way */
    char err[512];
    uint8_t *back = NULL;
    size_t blen = 0;
    cr_assert_eq(s3_get(cl, "par/3", &back, &blen, err, sizeof err), 0, "%s", err);
    cr_expect(blen == len[3] && memcmp(back, v[3], blen) == 0);
    free(back);
    uint8_t part[100];
    size_t pl = len[3] < sizeof part ? len[3] : sizeof part;
    cr_assert_eq(s3_get_range(cl, "par/3", 0, part, pl, err, sizeof err), 0, "%s", err);
    cr_expect(memcmp(part, v[3], pl) == 0);
    s3_object *objs;
    size_t n;
    cr_assert_eq(s3_list(cl, "par/", &objs, &n, err, sizeof err), 0, "%s", err);
    cr_expect_eq(n, NPAR);
    s3_objects_free(objs, n);
    cr_expect_eq(s3_head(cl, "par/none", NULL, err, sizeof err), S4KV_ENOENT);
    cr_expect(strstr(err, "HEAD s3://bucket/par/none: HTTP 404"), "%s", err);
    /* progress comes on the caller's thread (s3.h), the last report whole */
    prog pg = {.want = pthread_self()};
    s3_xfer px[8];
    char pkey[8][32];
    uint64_t sum = 0;
    for (int i = 0; i < 8; i++) {
        snprintf(pkey[i], sizeof pkey[i], "prog/%d", i);
        px[i] = (s3_xfer){.op = S3_XPUT_BUF, .key = pkey[i], .buf = v[i], .len = len[i]};
        sum += len[i];
    }
    cr_assert_eq(s3_run(cl, px, 8, on_progress, &pg), 0, "%s", px[0].err);
    cr_expect_gt(pg.calls, 1);
    cr_expect_eq(pg.wrong_thread, 0, "%llu progress calls on another thread",
                 (unsigned long long)pg.wrong_thread);
    cr_expect(pg.done == sum && pg.total == sum, "last progress %llu of %llu, want %llu",
              (unsigned long long)pg.done, (unsigned long long)pg.total,
              (unsigned long long)sum);
    uint64_t ticks1 = L.ticks;

    s3_debug d;
    s3_client_debug(cl, &d);
    cr_expect_eq(d.loop_batches, 2 + 4 + 1, "%llu batches on the loop",
                  (unsigned long long)d.loop_batches);
    cr_expect_eq(d.private_batches, 0);
    cr_expect_eq(d.multis_dropped, 0);
    cr_assert(d.have_thread);
    cr_expect(pthread_equal(d.last_thread, L.tid), "curl was driven by another thread");
    cr_expect(!pthread_equal(d.last_thread, pthread_self()));
    cr_expect_gt(ticks1, ticks0, "the loop's own timer did not run during the transfers");
    cr_log_info("attached loop: %llu batches, %llu timer ticks meanwhile, longest tick gap "
                "%llu ms", (unsigned long long)d.loop_batches,
                (unsigned long long)(ticks1 - ticks0), (unsigned long long)L.max_gap_ms);

    /* a call on the loop thread itself runs on a private loop (no deadlock) */
    L.cl = cl;
    uv_async_send(&L.call);
    pthread_mutex_lock(&L.mu);
    while (!L.call_done)
        pthread_cond_wait(&L.cv, &L.mu);
    pthread_mutex_unlock(&L.mu);
    cr_expect_eq(L.call_rc, 0, "%s", L.call_err);
    s3_client_debug(cl, &d);
    cr_expect_eq(d.private_batches, 1);
    cr_expect(pthread_equal(d.last_thread, L.tid));

    s3_client_attach_loop(cl, NULL);
    loop_stop(&L);
    /* detached: private loops again */
    cr_assert_eq(s3_head(cl, "par/1", NULL, err, sizeof err), 0, "%s", err);
    s3_client_debug(cl, &d);
    cr_expect_eq(d.private_batches, 2);
    cr_expect(pthread_equal(d.last_thread, pthread_self()));
    for (int i = 0; i < NPAR; i++)
        free(v[i]);
    tu_rmtree_free(dir);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

Test(s3uv, retries_through_thirty_percent_faults_converge_on_both_loops)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    tu_proxy px;
    tu_proxy_start(&px, s.port, "rate=0.3,kinds=500+503+reset+truncate,seed=23");
    setenv("S4KV_S3_RETRY_BASE_MS", "5", 1);
    s3_config c;
    s3_client *cl = client_at(&c, px.endpoint, 16);
    s3_client_free(cl);
    c.max_attempts = 12;
    char err[512];
    cl = s3_client_new(&c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    char *dir = tu_tmpdir("s3uv");
    uint8_t *v[NPAR];
    size_t len[NPAR];
    put_get_64(cl, &c, dir, v, len, 7); /* private loop */
    for (int i = 0; i < NPAR; i++)
        free(v[i]);
    lthread L;
    loop_start(&L);
    s3_client_attach_loop(cl, L.x);
    put_get_64(cl, &c, dir, v, len, 8); /* attached loop */
    for (int i = 0; i < NPAR; i++)
        free(v[i]);
    s3_client_attach_loop(cl, NULL);
    loop_stop(&L);
    s3_stats st;
    s3_client_stats(cl, &st);
    s3_debug d;
    s3_client_debug(cl, &d);
    cr_expect_gt(st.retries, 20, "faults were met (%llu retries)", (unsigned long long)st.retries);
    cr_expect_eq(st.errors, 0);
    cr_expect_eq(d.loop_batches, 2);
    cr_log_info("30%% faults: %llu requests, %llu retries, %llu connections, %llu multis "
                "dropped", (unsigned long long)st.requests, (unsigned long long)st.retries,
                (unsigned long long)st.connections, (unsigned long long)d.multis_dropped);
    tu_rmtree_free(dir);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_proxy_stop(&px);
    tu_s3_stop(&s);
}

Test(s3uv, a_hundred_calls_leak_no_fd_or_handle)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    s3_client *cl = client_at(&c, NULL, 4);
    char err[512];
    uint8_t buf[4096];
    fill(buf, sizeof buf, 1);
    /* ranged GETs read ro/ keys written once; the PUT batches overwrite rw/
     * keys: s3rver answers a PUT before its file is completely written, so
     * a read right after an overwrite may see it short */
    s3_xfer ro[4], rw[4];
    char rokey[4][32], rwkey[4][32];
    for (int i = 0; i < 4; i++) {
        snprintf(rokey[i], sizeof rokey[i], "leak/ro/%d", i);
        snprintf(rwkey[i], sizeof rwkey[i], "leak/rw/%d", i);
        ro[i] = (s3_xfer){.op = S3_XPUT_BUF, .key = rokey[i], .buf = buf, .len = sizeof buf};
        rw[i] = (s3_xfer){.op = S3_XPUT_BUF, .key = rwkey[i], .buf = buf, .len = sizeof buf};
    }
    cr_assert_eq(s3_run(cl, ro, 4, NULL, NULL), 0, "%s", ro[0].err); /* connections open */
    for (int i = 0; i < 4; i++) { /* s3rver has finished writing them */
        uint8_t got[512];
        int rc = -1;
        for (int t = 0; t < 100 && rc; t++, tu_sleep_ms(rc ? 20 : 0))
            rc = s3_get_range(cl, rokey[i], 100, got, sizeof got, err, sizeof err);
        cr_assert_eq(rc, 0, "%s", err);
    }
    s3_debug d0, d;
    s3_client_debug(cl, &d0);
    int before = count_fds();
    for (int i = 0; i < 100; i++) {
        if (i % 2) {
            cr_assert_eq(s3_run(cl, rw, 4, NULL, NULL), 0, "%d: %s", i, rw[0].err);
        } else {
            uint8_t got[512];
            cr_assert_eq(s3_get_range(cl, rokey[i % 4], 100, got, sizeof got, err, sizeof err),
                         0, "%d: %s", i, err);
            cr_assert(memcmp(got, buf + 100, sizeof got) == 0);
        }
    }
    /* failures clean up too: a missing key, a missing file */
    cr_expect_eq(s3_head(cl, "leak/none", NULL, err, sizeof err), S4KV_ENOENT);
    s3_xfer bad = {.op = S3_XPUT_FILE, .key = "leak/bad", .path = "/nonexistent/f", .len = 1};
    cr_expect_eq(s3_run(cl, &bad, 1, NULL, NULL), S4KV_EIO);
    int after = count_fds();
    s3_client_debug(cl, &d);
    s3_stats st;
    s3_client_stats(cl, &st);
    cr_expect_leq(after, before + 2, "file descriptors: %d before, %d after 100 calls", before,
                  after);
    cr_expect_eq(d.multis_dropped, 0);
    cr_expect_eq(d.private_batches - d0.private_batches, 100 + 2);
    cr_log_info("fds %d -> %d over 100 calls; %llu connections for %llu requests", before, after,
                (unsigned long long)st.connections, (unsigned long long)st.requests);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

static void quiet_log(void *ctx, const char *line)
{
    (void)ctx;
    (void)line;
}

Test(s3uv, sync_loop_uploads_run_their_transfers_on_the_loop_thread)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("s3uv-sync");
    s4kv_options oo;
    s4kv_options_init(&oo);
    oo.sync_mode = S4KV_SYNC_NONE;
    oo.log = quiet_log;
    s4kv_db *db = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_open(dir, &oo, &db, err, sizeof err), 0, "%s", err);
    s4kv_sync_options o;
    s4kv_sync_options_init(&o);
    o.s3.url = "s3://bkt/uv/";
    o.interval_ms = 100;
    o.log = quiet_log;
    s4kv_sync_loop *sl = NULL;
    cr_assert_eq(s4kv_sync_start(db, &o, &sl, err, sizeof err), 0, "%s", err);
    char val[20000];
    memset(val, 'v', sizeof val);
    long long t0 = tu_now_ms();
    for (int round = 0;; round++) {
        if (round < 30) { /* 30 writes over about 600 ms, then wait */
            char key[32];
            snprintf(key, sizeof key, "k%d", round);
            cr_assert_eq(s4kv_put(db, key, strlen(key), val, sizeof val, err, sizeof err), 0,
                         "%s", err);
        }
        tu_sleep_ms(20);
        s4kv_stats st;
        s4kv_sync_metrics m;
        s4kv_stats_get(db, &st);
        s4kv_sync_metrics_get(sl, &m);
        if (round >= 30 && m.uploads >= 3 && m.uploaded_seq == st.next_seq)
            break;
        cr_assert_lt(tu_now_ms() - t0, 20000, "no upload caught up: %s", m.last_error);
    }
    s3_debug d;
    uv_thread_t lt;
    sync_s3_debug(sl, &d, &lt);
    cr_expect_gt(d.loop_batches, 3, "%llu batches on the sync loop",
                 (unsigned long long)d.loop_batches);
    cr_expect_eq(d.private_batches, 0, "%llu batches off the loop",
                 (unsigned long long)d.private_batches);
    cr_expect_eq(d.multis_dropped, 0);
    cr_assert(d.have_thread);
    cr_expect(pthread_equal(d.last_thread, lt), "curl was not driven by the sync loop's thread");
    cr_log_info("sync loop: %llu S3 batches on its thread", (unsigned long long)d.loop_batches);
    cr_assert_eq(s4kv_sync_stop(sl, err, sizeof err), 0, "%s", err);
    s4kv_close(db);
    tu_rmtree_free(dir);
    tu_s3_stop(&s);
}
