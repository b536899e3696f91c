/*
 * test_compact.c - online compaction (kv/compact.c): writes made while the
 * records are being copied keep their newer state, writers and readers run
 * through repeated compactions without an error or a wrong value, and the
 * result survives a reopen and passes verify.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "util.h"

static void quiet(void *ctx, const char *line)
{
    (void)ctx;
    (void)line;
}

static s4kv_db *open_db(const char *dir, s4kv_options *o)
{
    s4kv_db *db = NULL;
    char err[512];
    int rc = s4kv_open(dir, o, &db, err, sizeof err);
    cr_assert_eq(rc, 0, "open: %s", err);
    return db;
}

static void put(s4kv_db *db, const char *k, const char *v)
{
    char err[512];
    cr_assert_eq(s4kv_put(db, k, strlen(k), v, strlen(v), err, sizeof err), 0, "put %s: %s", k,
                 err);
}

/* 0 and the value (malloc'd) in *v, or S4KV_ENOTFOUND. */
static int get(s4kv_db *db, const char *k, char **v)
{
    void *p = NULL;
    size_t n = 0;
    char err[512];
    int rc = s4kv_get(db, k, strlen(k), &p, &n, err, sizeof err);
    cr_assert(rc == 0 || rc == S4KV_ENOTFOUND, "get %s: %d %s", k, rc, err);
    *v = p;
    return rc;
}

/* ---- Writes during the copy phase, through the progress callback (it runs
 * on the compacting thread while no lock is held). */

typedef struct during {
    s4kv_db *db;
    int fired;
} during;

static void on_progress(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
    during *d = ctx;
    if (strcmp(phase, "compact") != 0 || d->fired || !d->db)
        return;
    d->fired = 1;
    char err[512];
    /* overwrite a key being moved, delete another, add a new one */
    cr_assert_eq(s4kv_put(d->db, "k0001", 5, "new", 3, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s4kv_delete(d->db, "k0002", 5, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s4kv_put(d->db, "fresh", 5, "yes", 3, err, sizeof err), 0, "%s", err);
}

Test(compact, writes_during_the_copy_keep_their_newer_state)
{
    char *dir = tu_tmpdir("compact-during");
    during d = {0};
    s4kv_options o;
    s4kv_options_init(&o);
    o.max_segment_bytes = 8192;
    o.log = quiet;
    o.progress = on_progress;
    o.progress_ctx = &d;
    s4kv_db *db = open_db(dir, &o);
    char k[16], v[64];
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 300; i++) {
            snprintf(k, sizeof k, "k%04d", i);
            snprintf(v, sizeof v, "value-%d-%d", i, round);
            put(db, k, v);
        }
    s4kv_stats before;
    s4kv_stats_get(db, &before);
    cr_assert_gt(before.garbage_bytes, before.live_bytes, "two thirds are stale");
    d.db = db;
    char err[512];
    cr_assert_eq(s4kv_compact(db, err, sizeof err), 0, "compact: %s", err);
    d.db = NULL;
    cr_assert_eq(d.fired, 1, "the progress callback ran during the copy");

    for (int pass = 0; pass < 2; pass++) {
        char *got = NULL;
        cr_assert_eq(get(db, "k0001", &got), 0);
        cr_assert_str_eq(got, "new", "the write made during the copy wins");
        free(got);
        cr_assert_eq(get(db, "k0002", &got), S4KV_ENOTFOUND, "the delete made during the copy holds");
        cr_assert_eq(get(db, "fresh", &got), 0);
        cr_assert_str_eq(got, "yes");
        free(got);
        for (int i = 3; i < 300; i++) {
            snprintf(k, sizeof k, "k%04d", i);
            snprintf(v, sizeof v, "value-%d-2", i);
            cr_assert_eq(get(db, k, &got), 0);
            cr_assert_str_eq(got, v);
            free(got);
        }
        s4kv_stats st;
        s4kv_stats_get(db, &st);
        cr_assert_eq(st.keys, 300, "299 moved or rewritten + fresh: %llu",
                     (unsigned long long)st.keys);
        s4kv_verify_report rep;
        cr_assert_eq(s4kv_verify(db, &rep, err, sizeof err), 0, "verify (pass %d): %s", pass, err);
        if (pass == 0) {
            cr_assert_lt(st.segment_bytes, before.segment_bytes / 2, "compaction freed space");
            uint64_t n = 0, pause = 0, total = 0;
            cr_assert_eq(s4kv_compact_stats(db, &n, &pause, &total), 0);
            cr_assert_eq(n, 1);
            cr_assert_gt(pause, 0);
            cr_assert_leq(pause / 1000, total + 1, "a stall is part of the whole");
            cr_assert_eq(s4kv_close(db), 0);
            o.progress = NULL;
            db = open_db(dir, &o); /* no checkpoint yet: replay */
        }
    }
    cr_assert_eq(s4kv_close(db), 0);
    tu_rmtree_free(dir);
}

/* ---- Writers, readers and a compactor at once */

#define NW 2      /* writer threads, each owning its own keys */
#define KPW 400   /* keys per writer */

typedef struct shared {
    s4kv_db *db;
    volatile int stop;
    int version[NW][KPW]; /* last acknowledged version, -1 deleted (writer-owned) */
    long writes, reads, bad;
    pthread_mutex_t mu;
} shared;

typedef struct warg {
    shared *sh;
    int w;
} warg;

static void *writer_main(void *p)
{
    warg *a = p;
    shared *sh = a->sh;
    uint64_t rs = 0x1234 + (uint64_t)a->w;
    char k[32], v[200], err[512];
    long n = 0;
    for (int ver = 1; !sh->stop; ver++) {
        int i = (int)(tu_rand(&rs) % KPW);
        snprintf(k, sizeof k, "w%d-%04d", a->w, i);
        int rc;
        if (tu_rand(&rs) % 8 == 0) {
            rc = s4kv_delete(sh->db, k, strlen(k), err, sizeof err);
            if (rc == 0)
                sh->version[a->w][i] = -1;
        } else {
            int len = snprintf(v, sizeof v, "%s=%d;padding-padding-padding-padding-padding", k, ver);
            rc = s4kv_put(sh->db, k, strlen(k), v, (size_t)len, err, sizeof err);
            if (rc == 0)
                sh->version[a->w][i] = ver;
        }
        if (rc) {
            pthread_mutex_lock(&sh->mu);
            sh->bad++;
            fprintf(stderr, "writer %d: %s\n", a->w, err);
            pthread_mutex_unlock(&sh->mu);
        }
        n++;
    }
    pthread_mutex_lock(&sh->mu);
    sh->writes += n;
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}

static void *reader_main(void *p)
{
    shared *sh = p;
    uint64_t rs = 0x9876;
    char k[32], err[512];
    long n = 0, bad = 0;
    while (!sh->stop) {
        int w = (int)(tu_rand(&rs) % NW), i = (int)(tu_rand(&rs) % KPW);
        snprintf(k, sizeof k, "w%d-%04d", w, i);
        void *v = NULL;
        size_t vl = 0;
        int rc = s4kv_get(sh->db, k, strlen(k), &v, &vl, err, sizeof err);
        if (rc == 0) {
            /* never another key's value, never garbage */
            size_t kl = strlen(k);
            if (vl <= kl || memcmp(v, k, kl) != 0 || ((char *)v)[kl] != '=') {
                bad++;
                fprintf(stderr, "reader: %s has a foreign value\n", k);
            }
            free(v);
        } else if (rc != S4KV_ENOTFOUND) {
            bad++;
            fprintf(stderr, "reader: %s: %s\n", k, err);
        }
        n++;
    }
    pthread_mutex_lock(&sh->mu);
    sh->reads += n;
    sh->bad += bad;
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}

static void check_state(s4kv_db *db, shared *sh)
{
    char k[32];
    for (int w = 0; w < NW; w++)
        for (int i = 0; i < KPW; i++) {
            snprintf(k, sizeof k, "w%d-%04d", w, i);
            char *got = NULL;
            int rc = get(db, k, &got);
            int ver = sh->version[w][i];
            if (ver <= 0) {
                cr_assert_eq(rc, S4KV_ENOTFOUND, "%s should be absent", k);
            } else {
                cr_assert_eq(rc, 0, "%s should hold version %d", k, ver);
                char want[64];
                snprintf(want, sizeof want, "%s=%d;", k, ver);
                cr_assert(strncmp(got, want, strlen(want)) == 0, "%s: got %.40s want %s", k, got,
                          want);
                free(got);
            }
        }
}

Test(compact, concurrent_writers_readers_and_compactions, .timeout = 300)
{
    char *dir = tu_tmpdir("compact-concurrent");
    s4kv_options o;
    s4kv_options_init(&o);
    o.max_segment_bytes = 64 * 1024;
    o.sync_mode = S4KV_SYNC_NONE;
    o.checkpoint_bytes = 256 * 1024; /* checkpoints are wanted between compactions too */
    o.log = quiet;
    shared sh = {0};
    pthread_mutex_init(&sh.mu, NULL);
    sh.db = open_db(dir, &o);
    pthread_t wt[NW], rt[2];
    warg wa[NW];
    for (int w = 0; w < NW; w++) {
        wa[w] = (warg){&sh, w};
        pthread_create(&wt[w], NULL, writer_main, &wa[w]);
    }
    for (int r = 0; r < 2; r++)
        pthread_create(&rt[r], NULL, reader_main, &sh);
    char err[512];
    int compactions = 0, checkpoints = 0;
    long long t_end = tu_now_ms() + 4000;
    while (tu_now_ms() < t_end || compactions < 8) {
        tu_sleep_ms(50);
        cr_assert_eq(s4kv_compact(sh.db, err, sizeof err), 0, "compact: %s", err);
        compactions++;
        if (compactions % 3 == 0) {
            cr_assert_eq(s4kv_checkpoint(sh.db, err, sizeof err), 0, "checkpoint: %s", err);
            checkpoints++;
        }
    }
    sh.stop = 1;
    for (int w = 0; w < NW; w++)
        pthread_join(wt[w], NULL);
    for (int r = 0; r < 2; r++)
        pthread_join(rt[r], NULL);
    cr_assert_eq(sh.bad, 0, "%ld errors or wrong values", sh.bad);
    cr_assert_gt(sh.writes, 1000, "writers made progress during compactions: %ld", sh.writes);
    cr_assert_gt(sh.reads, 1000, "readers made progress: %ld", sh.reads);
    uint64_t n = 0, pause = 0, total = 0;
    s4kv_compact_stats(sh.db, &n, &pause, &total);
    cr_assert_eq(n, (uint64_t)compactions);
    fprintf(stderr, "compact: %d compactions, %d checkpoints, %ld writes, %ld reads; last: "
                    "longest stall %llu us of %llu ms\n", compactions, checkpoints, sh.writes,
            sh.reads, (unsigned long long)pause, (unsigned long long)total);
    check_state(sh.db, &sh);
    s4kv_verify_report rep;
    cr_assert_eq(s4kv_verify(sh.db, &rep, err, sizeof err), 0, "verify: %s", err);
    /* crash-like reopen (no close: no checkpoint written), then a clean one */
    s4kv__abandon(sh.db);
    sh.db = open_db(dir, &o);
    check_state(sh.db, &sh);
    cr_assert_eq(s4kv_verify(sh.db, &rep, err, sizeof err), 0, "verify after reopen: %s", err);
    cr_assert_eq(s4kv_close(sh.db), 0);
    sh.db = open_db(dir, &o);
    check_state(sh.db, &sh);
    cr_assert_eq(s4kv_close(sh.db), 0);
    pthread_mutex_destroy(&sh.mu);
    tu_rmtree_free(dir);
}
