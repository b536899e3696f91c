/*
 * test_soak.c - the kill loop (RocksDB's blackbox crash test, issue 6): a
 * child process writes a deterministic stream of batches (puts and deletes,
 * with compactions and checkpoints among them) in durability mode batch and
 * reports each acknowledged batch number through a pipe; the parent SIGKILLs
 * it at a random moment, reopens the database, and checks it against an
 * oracle: the state after the last acknowledged batch, or after the one in
 * flight (which may have reached the log before the kill), nothing else.
 * Then `verify` must be clean, and the next child continues the stream.
 *
 * S4KV_KILLS sets the number of kills (default 40 in `make test`; `make
 * soak` runs 1,000).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "s4kv.h"
#include "util.h"

#define SK 200 /* key space */

/* Batch b of the stream, applied to a model (val[k] = -1: absent). */
static void model_apply(int *val, int b)
{
    uint64_t s = (uint64_t)b * 0x9e3779b97f4a7c15ull + 1;
    int n = 1 + (int)(tu_rand(&s) % 6);
    for (int j = 0; j < n; j++) {
        int k = (int)(tu_rand(&s) % SK);
        val[k] = tu_rand(&s) % 5 == 0 ? -1 : b * 10 + j;
    }
}

/* The same batch as model_apply draws, as a write batch. */
static void batch_build(s4kv_batch *bt, int b)
{
    uint64_t s = (uint64_t)b * 0x9e3779b97f4a7c15ull + 1;
    int n = 1 + (int)(tu_rand(&s) % 6);
    s4kv_batch_clear(bt);
    for (int j = 0; j < n; j++) {
        int k = (int)(tu_rand(&s) % SK);
        int del = tu_rand(&s) % 5 == 0;
        char key[16], v[64];
        snprintf(key, sizeof key, "s%03d", k);
        if (del) {
            s4kv_batch_delete(bt, key, strlen(key));
        } else {
            /* a value long enough to fill small segments, and compressible */
            int len = snprintf(v, sizeof v, "%d.................................", b * 10 + j);
            s4kv_batch_put(bt, key, strlen(key), v, (size_t)len);
        }
    }
}

static void quiet(void *ctx, const char *line)
{
    (void)ctx;
    (void)line;
}

static s4kv_options soak_opts(void)
{
    s4kv_options o;
    s4kv_options_init(&o);
    o.sync_mode = S4KV_SYNC_BATCH;
    o.max_segment_bytes = 8192;
    o.log = quiet;
    return o;
}

/* The child: continues the stream at batch `from`, forever. */
static void writer(const char *dir, int from, int fd)
{
    s4kv_options o = soak_opts();
    s4kv_db *db;
    char err[512];
    if (s4kv_open(dir, &o, &db, err, sizeof err) != 0)
        _exit(2);
    s4kv_batch *bt = s4kv_batch_new();
    for (int b = from;; b++) {
        batch_build(bt, b);
        if (s4kv_write(db, bt, err, sizeof err) != 0)
            _exit(3);
        if (write(fd, &b, sizeof b) != sizeof b)
            _exit(4);
        if (b % 97 == 96 && s4kv_compact(db, err, sizeof err) != 0)
            _exit(5);
        if (b % 41 == 40 && s4kv_checkpoint(db, err, sizeof err) != 0)
            _exit(6);
    }
}

/* 1 when the database holds exactly state val. */
static int matches(s4kv_db *db, const int *val)
{
    char err[512];
    for (int k = 0; k < SK; k++) {
        char key[16];
        snprintf(key, sizeof key, "s%03d", k);
        void *v;
        size_t vl;
        int rc = s4kv_get(db, key, strlen(key), &v, &vl, err, sizeof err);
        if (val[k] < 0) {
            if (rc != S4KV_ENOTFOUND)
                return 0;
            continue;
        }
        if (rc != 0)
            return 0;
        int ok = atoi(v) == val[k];
        s4kv_free(v);
        if (!ok)
            return 0;
    }
    return 1;
}

Test(soak, sigkill_loop_against_an_oracle, .timeout = 3600)
{
    const char *e = getenv("S4KV_KILLS");
    int kills = e && atoi(e) > 0 ? atoi(e) : 40;
    char *dir = tu_tmpdir("soak");
    int acked_state[SK], next_state[SK];
    for (int k = 0; k < SK; k++)
        acked_state[k] = -1;
    int acked = -1; /* last batch known acknowledged */
    uint64_t seed = 20261122;
    long in_flight_applied = 0;
    for (int t = 0; t < kills; t++) {
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            writer(dir, acked + 1, p[1]);
        }
        close(p[1]);
        tu_sleep_ms(5 + (int)(tu_rand(&seed) % 60));
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        cr_assert(WIFSIGNALED(st), "kill %d: the writer exited on its own (status %d)", t,
                  WEXITSTATUS(st));
        int b;
        while (read(p[0], &b, sizeof b) == sizeof b) {
            cr_assert_eq(b, acked + 1, "acknowledgements out of order");
            model_apply(acked_state, b);
            acked = b;
        }
        close(p[0]);
        /* The oracle: the acknowledged state, or the next batch applied too. */
        memcpy(next_state, acked_state, sizeof next_state);
        model_apply(next_state, acked + 1);
        s4kv_options o = soak_opts();
        s4kv_db *db;
        char err[512] = "";
        cr_assert_eq(s4kv_open(dir, &o, &db, err, sizeof err), 0, "kill %d: reopen: %s", t, err);
        int a = matches(db, acked_state), n = matches(db, next_state);
        cr_assert(a || n, "kill %d after batch %d: the database is neither the acknowledged "
                          "state nor that plus the batch in flight", t, acked);
        s4kv_verify_report vr;
        cr_assert_eq(s4kv_verify(db, &vr, err, sizeof err), 0, "kill %d: verify: %s", t, err);
        s4kv_close(db);
        if (!a) {
            /* the in-flight batch is durable: it is now part of the stream */
            memcpy(acked_state, next_state, sizeof acked_state);
            acked++;
            in_flight_applied++;
        }
    }
    cr_log_info("kill loop: %d SIGKILLs, %d batches acknowledged, %ld in-flight batches found "
                "durable, 0 violations", kills, acked + 1, in_flight_applied);
    tu_rmtree_free(dir);
}
