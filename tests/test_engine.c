/*
 * test_engine.c - the storage engine through its public API (and the
 * internal seams in kv/internal.h): codecs, get/put/delete/batches,
 * iterators, checkpoints against full replay, compaction against an
 * in-memory model, locking, limits, read-only handles, the remote seam.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "util.h"

/* Collected log lines, for asserting what the engine said. */
static char logbuf[65536];
static void cap_log(void *ctx, const char *line)
{
    (void)ctx;
    size_t n = strlen(logbuf);
    snprintf(logbuf + n, sizeof logbuf - n, "%s\n", line);
}

static s4kv_options small_opts(void)
{
    s4kv_options o;
    s4kv_options_init(&o);
    o.max_segment_bytes = 8192;
    o.sync_mode = S4KV_SYNC_NONE;
    o.log = cap_log;
    logbuf[0] = 0;
    return o;
}

/* small_opts with fdatasync before every acknowledgement and segments of
 * max_segment_bytes. */
static s4kv_options durable_opts(uint64_t max_segment_bytes)
{
    s4kv_options o = small_opts();
    o.sync_mode = S4KV_SYNC_BATCH;
    o.max_segment_bytes = max_segment_bytes;
    return o;
}

static s4kv_db *open_ok(const char *dir, const s4kv_options *o)
{
    char err[512] = "";
    s4kv_db *db = NULL;
    int rc = s4kv_open(dir, o, &db, err, sizeof err);
    cr_assert_eq(rc, 0, "open %s: %s (%s)", dir, s4kv_strerror(rc), err);
    return db;
}

static void put_ok(s4kv_db *db, const char *k, const char *v)
{
    char err[512] = "";
    int rc = s4kv_put(db, k, strlen(k), v, strlen(v), err, sizeof err);
    cr_assert_eq(rc, 0, "put %s: %s", k, err);
}

static void expect_val(s4kv_db *db, const char *k, const char *v)
{
    char err[512] = "";
    void *got = NULL;
    size_t n = 0;
    int rc = s4kv_get(db, k, strlen(k), &got, &n, err, sizeof err);
    if (!v) {
        cr_assert_eq(rc, S4KV_ENOTFOUND, "get %s: expected not found, got %d (%s)", k, rc, err);
        return;
    }
    cr_assert_eq(rc, 0, "get %s: %s", k, err);
    cr_assert_eq(n, strlen(v), "get %s: length %zu, want %zu", k, n, strlen(v));
    cr_assert(memcmp(got, v, n) == 0, "get %s: wrong bytes", k);
    s4kv_free(got);
}

Test(record, batch_roundtrip_and_every_flip_detected)
{
    s4kv_batch *b = s4kv_batch_new();
    char big[3000];
    memset(big, 'x', sizeof big); /* compresses */
    cr_assert_eq(s4kv_batch_put(b, "k1", 2, "v1", 2), 0);
    cr_assert_eq(s4kv_batch_put(b, "k2", 2, big, sizeof big), 0);
    cr_assert_eq(s4kv_batch_delete(b, "k3", 2), 0);
    cr_assert_eq(s4kv_batch_put(b, "a\0b", 3, "", 0), 0);
    uint64_t seq = 100;
    batch_seal(b, &seq);
    cr_assert_eq(seq, 104);
    uint32_t count;
    uint64_t body;
    cr_assert_eq(batch_hdr_parse(b->buf, &count, &body), 0);
    cr_assert_eq(count, 4);
    cr_assert_eq(body, b->len - BATCH_HDR);
    const uint8_t *p = b->buf + BATCH_HDR;
    rec_view r[4];
    size_t left = body;
    for (int i = 0; i < 4; i++) {
        const char *why;
        cr_assert_eq(rec_parse(p, left, &r[i], &why), 0, "record %d", i);
        cr_assert_eq(r[i].seq, 100u + (unsigned)i);
        p += r[i].len;
        left -= r[i].len;
    }
    cr_assert_eq(left, 0);
    cr_assert_eq(r[1].flags & REC_SNAPPY, REC_SNAPPY, "a repetitive value is compressed");
    cr_assert_lt(r[1].slen, 300);
    cr_assert_eq(r[1].rlen, sizeof big);
    cr_assert_eq(r[2].type, REC_DEL);
    cr_assert_eq(r[3].klen, 3);
    cr_assert(memcmp(r[3].key, "a\0b", 3) == 0);
    /* Every single-bit flip of the first record is caught by its checksum. */
    uint8_t *rec0 = b->buf + BATCH_HDR;
    for (uint32_t i = 0; i < r[0].len * 8; i++) {
        rec0[i / 8] ^= (uint8_t)(1u << (i % 8));
        rec_view x;
        const char *why;
        cr_assert_neq(rec_parse(rec0, r[0].len, &x, &why), 0, "flip of bit %u not detected", i);
        rec0[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    s4kv_batch_free(b);
}

Test(record, limits)
{
    s4kv_batch *b = s4kv_batch_new();
    static char key[S4KV_MAX_KEY_BYTES + 1];
    memset(key, 'k', sizeof key);
    cr_assert_eq(s4kv_batch_put(b, key, 0, "v", 1), S4KV_EINVAL, "empty key refused");
    cr_assert_eq(s4kv_batch_put(b, key, S4KV_MAX_KEY_BYTES + 1, "v", 1), S4KV_EINVAL);
    cr_assert_eq(s4kv_batch_put(b, key, S4KV_MAX_KEY_BYTES, "v", 1), 0, "max key accepted");
    cr_assert_eq(s4kv_batch_put(b, "k", 1, NULL, 5), S4KV_EINVAL);
    cr_assert_eq(s4kv_batch_put(b, "k", 1, "v", (size_t)S4KV_MAX_VALUE_BYTES + 1), S4KV_EINVAL);
    cr_assert_eq(s4kv_batch_count(b), 1);
    s4kv_batch_free(b);
}

Test(engine, put_get_delete_reopen)
{
    char *dir = tu_tmpdir("basic");
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(dir, &o);
    put_ok(db, "alpha", "1");
    put_ok(db, "beta", "2");
    put_ok(db, "alpha", "3");
    char err[512];
    cr_assert_eq(s4kv_delete(db, "beta", 4, err, sizeof err), 0);
    cr_assert_eq(s4kv_delete(db, "never", 5, err, sizeof err), 0, "deleting an absent key is ok");
    expect_val(db, "alpha", "3");
    expect_val(db, "beta", NULL);
    /* Binary key and value with NULs; empty value. */
    cr_assert_eq(s4kv_put(db, "b\0k", 3, "v\0\xff", 3, err, sizeof err), 0);
    cr_assert_eq(s4kv_put(db, "empty", 5, "", 0, err, sizeof err), 0);
    cr_assert_eq(s4kv_close(db), 0);
    db = open_ok(dir, &o);
    expect_val(db, "alpha", "3");
    expect_val(db, "beta", NULL);
    expect_val(db, "empty", "");
    void *v;
    size_t n;
    cr_assert_eq(s4kv_get(db, "b\0k", 3, &v, &n, err, sizeof err), 0);
    cr_assert_eq(n, 3);
    cr_assert(memcmp(v, "v\0\xff", 3) == 0);
    s4kv_free(v);
    /* get_into: exact fit, too small. */
    char small[2], fit[3];
    cr_assert_eq(s4kv_get_into(db, "b\0k", 3, small, sizeof small, &n, err, sizeof err),
                 S4KV_ERANGE);
    cr_assert_eq(n, 3);
    cr_assert_eq(s4kv_get_into(db, "b\0k", 3, fit, sizeof fit, &n, err, sizeof err), 0);
    cr_assert(memcmp(fit, "v\0\xff", 3) == 0);
    /* Limits through the db. */
    cr_assert_eq(s4kv_put(db, "", 0, "v", 1, err, sizeof err), S4KV_EINVAL);
    cr_assert(strstr(err, "key of 0 bytes"), "message: %s", err);
    s4kv_stats st;
    cr_assert_eq(s4kv_stats_get(db, &st), 0);
    cr_assert_eq(st.keys, 3);
    cr_assert_gt(st.index_bytes, 0);
    cr_assert_eq(st.segment_bytes, st.live_bytes + st.garbage_bytes);
    cr_assert_eq(s4kv_close(db), 0);
    tu_rmtree_free(dir);
}

Test(engine, large_value_and_rotation)
{
    char *dir = tu_tmpdir("large");
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(dir, &o);
    size_t n = 3u << 20;
    uint8_t *big = malloc(n);
    uint64_t s = 7;
    for (size_t i = 0; i < n; i++)
        big[i] = (uint8_t)(tu_rand(&s) & 0x0f); /* compressible but not trivially */
    char err[512];
    cr_assert_eq(s4kv_put(db, "big", 3, big, n, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < 300; i++) {
        char k[32];
        snprintf(k, sizeof k, "k%d", i);
        put_ok(db, k, "some value to fill segments with bytes");
    }
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    cr_assert_gt(st.segments, 2, "small max_segment_bytes rotates segments");
    cr_assert_eq(s4kv_close(db), 0);
    db = open_ok(dir, &o);
    void *v;
    size_t vl;
    cr_assert_eq(s4kv_get(db, "big", 3, &v, &vl, err, sizeof err), 0, "%s", err);
    cr_assert_eq(vl, n);
    cr_assert(memcmp(v, big, n) == 0);
    s4kv_free(v);
    s4kv_close(db);
    free(big);
    tu_rmtree_free(dir);
}

Test(engine, batch_atomic_last_op_wins)
{
    char *dir = tu_tmpdir("batch");
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(dir, &o);
    put_ok(db, "gone", "x");
    s4kv_batch *b = s4kv_batch_new();
    s4kv_batch_put(b, "a", 1, "1", 1);
    s4kv_batch_put(b, "a", 1, "2", 1);
    s4kv_batch_delete(b, "gone", 4);
    s4kv_batch_put(b, "c", 1, "3", 1);
    s4kv_batch_delete(b, "c", 1);
    char err[512];
    cr_assert_eq(s4kv_write(db, b, err, sizeof err), 0, "%s", err);
    expect_val(db, "a", "2");
    expect_val(db, "gone", NULL);
    expect_val(db, "c", NULL);
    s4kv_batch_clear(b);
    cr_assert_eq(s4kv_batch_count(b), 0);
    cr_assert_eq(s4kv_write(db, b, err, sizeof err), 0, "empty batch is a no-op");
    s4kv_batch_free(b);
    s4kv_close(db);
    db = open_ok(dir, &o);
    expect_val(db, "a", "2");
    expect_val(db, "c", NULL);
    s4kv_close(db);
    tu_rmtree_free(dir);
}

Test(engine, iterator_sorted_prefix_and_snapshot)
{
    char *dir = tu_tmpdir("iter");
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(dir, &o);
    const char *keys[] = {"b2", "a", "b10", "b1", "c", "b"};
    for (size_t i = 0; i < 6; i++)
        put_ok(db, keys[i], keys[i]);
    char err[512];
    s4kv_iter *it;
    cr_assert_eq(s4kv_iter_new(db, "b", 1, S4KV_ITER_SORTED, &it, err, sizeof err), 0);
    const char *want[] = {"b", "b1", "b10", "b2"};
    int n = 0, rc;
    while ((rc = s4kv_iter_next(it, err, sizeof err)) == 1) {
        size_t kl, vl;
        const char *k = s4kv_iter_key(it, &kl);
        const char *v = s4kv_iter_value(it, &vl);
        cr_assert_lt(n, 4);
        cr_assert_eq(kl, strlen(want[n]));
        cr_assert(memcmp(k, want[n], kl) == 0, "position %d", n);
        cr_assert_eq(vl, kl);
        cr_assert(memcmp(v, k, kl) == 0);
        if (n == 0) {
            /* A key deleted after the snapshot is skipped. */
            cr_assert_eq(s4kv_delete(db, "b10", 3, err, sizeof err), 0);
            want[2] = "b2";
        }
        n++;
    }
    cr_assert_eq(rc, 0);
    cr_assert_eq(n, 3);
    s4kv_iter_free(it);
    cr_assert_eq(s4kv_iter_new(db, NULL, 0, S4KV_ITER_KEYS_ONLY, &it, err, sizeof err), 0);
    n = 0;
    while (s4kv_iter_next(it, err, sizeof err) == 1)
        n++;
    cr_assert_eq(n, 5);
    s4kv_iter_free(it);
    s4kv_close(db);
    tu_rmtree_free(dir);
}

Test(engine, second_writer_locked_reader_allowed)
{
    char *dir = tu_tmpdir("lock");
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(dir, &o);
    put_ok(db, "k", "v");
    s4kv_db *db2 = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_open(dir, &o, &db2, err, sizeof err), S4KV_ELOCKED);
    char want[64];
    snprintf(want, sizeof want, "locked by pid %ld", (long)getpid());
    cr_assert(strstr(err, want), "message names the pid: %s", err);
    s4kv_options ro = o;
    ro.read_only = 1;
    db2 = open_ok(dir, &ro);
    expect_val(db2, "k", "v");
    cr_assert_eq(s4kv_put(db2, "x", 1, "y", 1, err, sizeof err), S4KV_EREADONLY);
    put_ok(db, "later", "1");
    expect_val(db2, "later", NULL); /* snapshot as of open */
    s4kv_close(db2);
    s4kv_close(db);
    tu_rmtree_free(dir);
}

Test(engine, missing_dir_read_only_and_not_a_db)
{
    char *dir = tu_tmpdir("missing");
    char path[4096];
    snprintf(path, sizeof path, "%s/nope", dir);
    s4kv_options o = small_opts();
    o.read_only = 1;
    s4kv_db *db = NULL;
    char err[512] = "";
    cr_assert_eq(s4kv_open(path, &o, &db, err, sizeof err), S4KV_ENOENT);
    cr_assert(strstr(err, "no database at"), "%s", err);
    o.read_only = 0;
    o.create_if_missing = 0;
    cr_assert_eq(s4kv_open(path, &o, &db, err, sizeof err), S4KV_ENOENT);
    o.max_segment_bytes = 10;
    o.create_if_missing = 1;
    cr_assert_eq(s4kv_open(path, &o, &db, err, sizeof err), S4KV_EINVAL);
    tu_rmtree_free(dir);
}

/* ---- Checkpoint plus replay equals full rebuild */

static void dump_sorted(s4kv_db *db, char **out, size_t *len)
{
    char err[512];
    s4kv_iter *it;
    cr_assert_eq(s4kv_iter_new(db, NULL, 0, S4KV_ITER_SORTED, &it, err, sizeof err), 0);
    FILE *f = open_memstream(out, len);
    while (s4kv_iter_next(it, err, sizeof err) == 1) {
        size_t kl, vl;
        const void *k = s4kv_iter_key(it, &kl);
        const void *v = s4kv_iter_value(it, &vl);
        fprintf(f, "%zu:", kl);
        fwrite(k, 1, kl, f);
        fprintf(f, "=%zu:", vl);
        fwrite(v, 1, vl, f);
        fputc('\n', f);
    }
    fclose(f);
    s4kv_iter_free(it);
}

Test(engine, checkpoint_plus_replay_equals_rebuild)
{
    char *dir = tu_tmpdir("ckpt");
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(dir, &o);
    uint64_t s = 42;
    char err[512];
    for (int i = 0; i < 3000; i++) {
        char k[32], v[64];
        snprintf(k, sizeof k, "key%llu", (unsigned long long)(tu_rand(&s) % 700));
        snprintf(v, sizeof v, "value-%d", i);
        if (i % 7 == 3)
            s4kv_delete(db, k, strlen(k), err, sizeof err);
        else
            put_ok(db, k, v);
        if (i == 1500)
            cr_assert_eq(s4kv_checkpoint(db, err, sizeof err), 0, "%s", err);
    }
    /* Abandon (no checkpoint on close): reopen = checkpoint at 1500 + replay. */
    s4kv_stats before;
    s4kv_stats_get(db, &before);
    char *a, *b;
    size_t al, bl;
    dump_sorted(db, &a, &al);
    s4kv__abandon(db);
    db = open_ok(dir, &o);
    char *c;
    size_t cl;
    dump_sorted(db, &c, &cl);
    cr_assert_eq(cl, al);
    cr_assert(memcmp(a, c, al) == 0, "checkpoint + replay differs from the live state");
    cr_assert_eq(s4kv_rebuild_index(db, err, sizeof err), 0, "%s", err);
    dump_sorted(db, &b, &bl);
    cr_assert_eq(bl, al);
    cr_assert(memcmp(a, b, al) == 0, "full rebuild differs from checkpoint + replay");
    s4kv_stats after;
    s4kv_stats_get(db, &after);
    cr_assert_eq(after.keys, before.keys);
    cr_assert_eq(after.live_bytes, before.live_bytes);
    cr_assert_geq(after.next_seq, before.next_seq);
    s4kv_verify_report rep;
    cr_assert_eq(s4kv_verify(db, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rep.keys, before.keys);
    s4kv_close(db);
    free(a);
    free(b);
    free(c);
    tu_rmtree_free(dir);
}

/* ---- Compaction against a model, many seeds */

#define MKEYS 300

typedef struct model {
    char *val[MKEYS];
    size_t len[MKEYS];
} model;

static void model_check(s4kv_db *db, const model *m, int seed)
{
    char err[512];
    for (int i = 0; i < MKEYS; i++) {
        char k[16];
        snprintf(k, sizeof k, "m%03d", i);
        void *v = NULL;
        size_t n;
        int rc = s4kv_get(db, k, strlen(k), &v, &n, err, sizeof err);
        if (!m->val[i]) {
            cr_assert_eq(rc, S4KV_ENOTFOUND, "seed %d key %s: expected absent, rc %d", seed, k, rc);
        } else {
            cr_assert_eq(rc, 0, "seed %d key %s: %s", seed, k, err);
            cr_assert_eq(n, m->len[i], "seed %d key %s", seed, k);
            cr_assert(memcmp(v, m->val[i], n) == 0, "seed %d key %s: wrong bytes", seed, k);
            s4kv_free(v);
        }
    }
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    size_t live = 0;
    for (int i = 0; i < MKEYS; i++)
        live += m->val[i] != NULL;
    cr_assert_eq(st.keys, live, "seed %d: key count", seed);
}

/* Bytes of the checkpoint file db's manifest names (0 when none). */
static uint64_t ckpt_file_size(s4kv_db *db)
{
    if (!db->ckpt_name)
        return 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", db->dir, db->ckpt_name);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s", path);
    return (uint64_t)st.st_size;
}

/* The automatic checkpoint comes after checkpoint_bytes of log, or after
 * twice the last checkpoint's size when that is more: never earlier, and at
 * the first batch that reaches it. Each one is a new manifest generation. */
Test(engine, automatic_checkpoint_waits_for_twice_its_size)
{
    char *dir = tu_tmpdir("ckpt-amortized");
    s4kv_options o = small_opts();
    o.max_segment_bytes = 1 << 20;
    o.checkpoint_bytes = 4096;
    s4kv_db *db = open_ok(dir, &o);
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    uint64_t gen = st.generation, log_at = st.segment_bytes, last_size = 0;
    int seen = 0, small_phase = 0, large_phase = 0;
    char err[512];
    for (int i = 0; i < 6000; i++) {
        char k[48], v[32];
        snprintf(k, sizeof k, "amortized-checkpoint-key-%06d", i); /* all new: the index grows */
        snprintf(v, sizeof v, "v%d", i);
        uint64_t before = st.segment_bytes;
        put_ok(db, k, v);
        s4kv_stats_get(db, &st);
        uint64_t due = 2 * last_size > 4096 ? 2 * last_size : 4096;
        if (st.generation == gen) {
            cr_assert_lt(st.segment_bytes - log_at, due,
                         "no checkpoint after %llu log bytes; due at %llu",
                         (unsigned long long)(st.segment_bytes - log_at), (unsigned long long)due);
            continue;
        }
        cr_assert_eq(st.generation, gen + 1);
        cr_assert_geq(st.segment_bytes - log_at, due, "checkpoint after %llu log bytes, due at %llu",
                      (unsigned long long)(st.segment_bytes - log_at), (unsigned long long)due);
        cr_assert_lt(before - log_at, due, "the checkpoint was late");
        if (due == 4096)
            small_phase++;
        else
            large_phase++;
        seen++;
        gen = st.generation;
        log_at = st.segment_bytes;
        last_size = ckpt_file_size(db);
        cr_assert_gt(last_size, 0);
    }
    cr_assert_gt(small_phase, 0, "no checkpoint while the index was small");
    cr_assert_gt(large_phase, 2, "no checkpoint paced by the index size");
    cr_assert(seen < 40, "%d checkpoints: not paced", seen);
    /* the pace survives a reopen: it starts from the loaded checkpoint's size */
    cr_assert_eq(s4kv_checkpoint(db, err, sizeof err), 0, "%s", err);
    last_size = ckpt_file_size(db);
    cr_assert_eq(s4kv_close(db), 0);
    db = open_ok(dir, &o);
    cr_assert_eq(db->ckpt_size, last_size);
    cr_assert_eq(s4kv_close(db), 0);
    free(dir);
}

Test(engine, compaction_model_many_seeds)
{
    for (int seed = 1; seed <= 12; seed++) {
        char *dir = tu_tmpdir("model");
        s4kv_options o = small_opts();
        o.max_segment_bytes = 4096 + (uint64_t)seed * 512;
        s4kv_db *db = open_ok(dir, &o);
        model m = {{0}, {0}};
        uint64_t s = (uint64_t)seed;
        char err[512];
        s4kv_batch *b = s4kv_batch_new();
        for (int step = 0; step < 1500; step++) {
            uint64_t r = tu_rand(&s) % 100;
            int ki = (int)(tu_rand(&s) % MKEYS);
            char k[16];
            snprintf(k, sizeof k, "m%03d", ki);
            if (r < 55) {
                size_t n = tu_rand(&s) % 200;
                char *v = malloc(n + 1);
                for (size_t j = 0; j < n; j++)
                    v[j] = (char)(j % 3 ? 'a' + (int)(tu_rand(&s) % 4) : 0);
                cr_assert_eq(s4kv_put(db, k, strlen(k), v, n, err, sizeof err), 0, "%s", err);
                free(m.val[ki]);
                m.val[ki] = v;
                m.len[ki] = n;
            } else if (r < 75) {
                cr_assert_eq(s4kv_delete(db, k, strlen(k), err, sizeof err), 0);
                free(m.val[ki]);
                m.val[ki] = NULL;
            } else if (r < 90) {
                /* a batch of puts and deletes */
                s4kv_batch_clear(b);
                int cnt = 1 + (int)(tu_rand(&s) % 8);
                for (int j = 0; j < cnt; j++) {
                    int kj = (int)(tu_rand(&s) % MKEYS);
                    char kk[16];
                    snprintf(kk, sizeof kk, "m%03d", kj);
                    free(m.val[kj]);
                    m.val[kj] = NULL;
                    if (tu_rand(&s) % 3) {
                        char *v = malloc(16);
                        int n = snprintf(v, 16, "b%d-%d", step, j);
                        s4kv_batch_put(b, kk, strlen(kk), v, (size_t)n);
                        m.val[kj] = v;
                        m.len[kj] = (size_t)n;
                    } else {
                        s4kv_batch_delete(b, kk, strlen(kk));
                    }
                }
                cr_assert_eq(s4kv_write(db, b, err, sizeof err), 0, "%s", err);
            } else if (r < 94) {
                cr_assert_eq(s4kv_compact(db, err, sizeof err), 0, "seed %d: %s", seed, err);
                s4kv_stats st;
                s4kv_stats_get(db, &st);
                /* After compaction only segment and batch headers are garbage. */
                cr_assert_lt(st.garbage_bytes, st.segments * 32 + st.segment_bytes / 10 + 64,
                             "seed %d: garbage %llu after compaction", seed,
                             (unsigned long long)st.garbage_bytes);
                model_check(db, &m, seed);
            } else if (r < 97) {
                cr_assert_eq(s4kv_close(db), 0);
                db = open_ok(dir, &o);
            } else {
                s4kv__abandon(db); /* process crash: no checkpoint, no sync */
                db = open_ok(dir, &o);
            }
        }
        model_check(db, &m, seed);
        s4kv_verify_report rep;
        cr_assert_eq(s4kv_verify(db, &rep, err, sizeof err), 0, "seed %d: %s", seed, err);
        cr_assert_eq(s4kv_compact(db, err, sizeof err), 0, "%s", err);
        s4kv_close(db);
        db = open_ok(dir, &o);
        model_check(db, &m, seed);
        s4kv_close(db);
        s4kv_batch_free(b);
        for (int i = 0; i < MKEYS; i++)
            free(m.val[i]);
        tu_rmtree_free(dir);
    }
}

/* ---- Group commit: many threads, durable mode */

typedef struct tw {
    s4kv_db *db;
    int id, n;
} tw;

static void *writer_thread(void *arg)
{
    tw *t = arg;
    char err[512];
    for (int i = 0; i < t->n; i++) {
        char k[32], v[32];
        snprintf(k, sizeof k, "t%d-%d", t->id, i);
        snprintf(v, sizeof v, "v%d", i);
        if (s4kv_put(t->db, k, strlen(k), v, strlen(v), err, sizeof err) != 0)
            return (void *)1;
    }
    return NULL;
}

Test(engine, group_commit_threads)
{
    char *dir = tu_tmpdir("group");
    s4kv_options o = durable_opts(64 << 10);
    s4kv_db *db = open_ok(dir, &o);
    pthread_t th[8];
    tw args[8];
    for (int i = 0; i < 8; i++) {
        args[i] = (tw){db, i, 150};
        pthread_create(&th[i], NULL, writer_thread, &args[i]);
    }
    for (int i = 0; i < 8; i++) {
        void *r;
        pthread_join(th[i], &r);
        cr_assert_null(r, "writer %d failed", i);
    }
    s4kv__abandon(db);
    db = open_ok(dir, &o);
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    cr_assert_eq(st.keys, 8 * 150);
    expect_val(db, "t7-149", "v149");
    s4kv_close(db);
    tu_rmtree_free(dir);
}

Test(engine, interval_mode_syncs)
{
    char *dir = tu_tmpdir("interval");
    s4kv_options o = small_opts();
    o.sync_mode = S4KV_SYNC_INTERVAL;
    o.sync_interval_ms = 10;
    vfs_fault *f = vfs_fault_new();
    s4kv_db *db = NULL;
    char err[512];
    cr_assert_eq(s4kv__open_vfs(dir, &o, vfs_fault_vfs(f), NULL, &db, err, sizeof err), 0);
    put_ok(db, "k", "v");
    long before = vfs_fault_syncs(f);
    usleep(100 * 1000);
    cr_assert_gt(vfs_fault_syncs(f), before, "the interval thread fdatasynced");
    /* The synced write survives a power loss. */
    s4kv__abandon(db);
    vfs_fault_crash(f, 0);
    db = open_ok(dir, &o);
    expect_val(db, "k", "v");
    s4kv_close(db);
    vfs_fault_free(f);
    tu_rmtree_free(dir);
}

static uint64_t data_file_size(const char *dir, unsigned no)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/data_%06u.s4kv", dir, no);
    struct stat st;
    cr_assert_eq(stat(p, &st), 0, "stat %s", p);
    return (uint64_t)st.st_size;
}

/* Every data file in dir holds whole batches up to its last byte (no zeros
 * or other bytes past the log), checked by seg_file_check; returns how many
 * files there were. */
static int data_files_exact(const char *dir)
{
    int n = 0;
    for (unsigned no = 1; no < 1000; no++) {
        char p[4200], err[512] = "";
        snprintf(p, sizeof p, "%s/data_%06u.s4kv", dir, no);
        if (access(p, F_OK) != 0)
            continue;
        cr_assert_eq(seg_file_check(p, no, data_file_size(dir, no), NULL, err, sizeof err), 0,
                     "%s", err);
        n++;
    }
    return n;
}

/* After a close: every data file ends with its last batch, and a reopen
 * finds no tail to cut. Returns the reopened handle. */
static s4kv_db *reopen_exact(const char *dir, const s4kv_options *o)
{
    cr_assert_eq(data_files_exact(dir), 1);
    logbuf[0] = 0;
    s4kv_db *db = open_ok(dir, o);
    cr_assert_null(strstr(logbuf, "tail"), "%s", logbuf);
    return db;
}

/* Durable appends overwrite zeros written ahead of them (prealloc_tail in
 * db.c): the file runs ahead of the log while open, 16 KiB at first and
 * at most 1 MiB once the writes keep coming; a crash leaves the zeros and
 * recovery drops them, saying so; close and rotation cut the file back to
 * whole batches; bytes other than zeros there are still a torn tail; a zero
 * write that fails (a full disk) costs no write. */
Test(engine, durable_appends_overwrite_a_preallocated_tail)
{
    char *dir = tu_tmpdir("prealloc");
    s4kv_options o = durable_opts(64 << 20);
    char k[32], v[64];
    s4kv_db *db = open_ok(dir, &o);
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "k%03d", i);
        snprintf(v, sizeof v, "v%d", i);
        put_ok(db, k, v);
    }
    uint64_t sz = data_file_size(dir, 1), logical = db->segs[db->nsegs - 1]->size;
    cr_assert_gt(sz, logical, "the file runs ahead of the log: %llu bytes, log %llu",
                 (unsigned long long)sz, (unsigned long long)logical);
    cr_assert_leq(sz - logical, 20 << 10, "the first extension is small");
    cr_assert_eq(sz % 4096, 0);

    /* a crash: the zeros stay, recovery cuts them and says it was zeros */
    s4kv__abandon(db);
    logbuf[0] = 0;
    db = open_ok(dir, &o);
    cr_assert_not_null(strstr(logbuf, "recovery: cut the preallocated tail"), "%s", logbuf);
    cr_assert_null(strstr(logbuf, "torn"), "%s", logbuf);
    cr_assert_eq(data_file_size(dir, 1), logical);
    cr_assert_eq(data_files_exact(dir), 1);
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "k%03d", i);
        snprintf(v, sizeof v, "v%d", i);
        expect_val(db, k, v);
    }

    /* close cuts them */
    put_ok(db, "after", "crash");
    cr_assert_gt(data_file_size(dir, 1), db->segs[db->nsegs - 1]->size);
    s4kv_close(db);
    db = reopen_exact(dir, &o);

    /* other bytes in the zeros: a torn tail, and nothing committed lost */
    put_ok(db, "g", "1");
    uint64_t end = data_file_size(dir, 1);
    s4kv__abandon(db);
    char path[4200];
    snprintf(path, sizeof path, "%s/data_000001.s4kv", dir);
    FILE *fp = fopen(path, "r+b");
    cr_assert_not_null(fp);
    fseek(fp, (long)(end - 100), SEEK_SET);
    fwrite("junk!", 1, 5, fp);
    fclose(fp);
    logbuf[0] = 0;
    db = open_ok(dir, &o);
    cr_assert_not_null(strstr(logbuf, "recovery: cut a torn tail"), "%s", logbuf);
    cr_assert_null(strstr(logbuf, "preallocated"), "%s", logbuf);
    expect_val(db, "g", "1");
    expect_val(db, "after", "crash");
    expect_val(db, "k099", "v99");
    s4kv_close(db);

    /* a failing zero write: the put still succeeds, and close still cuts
     * what the half-done write left */
    vfs_fault *f = vfs_fault_new();
    char err[512] = "";
    cr_assert_eq(s4kv__open_vfs(dir, &o, vfs_fault_vfs(f), NULL, &db, err, sizeof err), 0, "%s",
                 err);
    vfs_fault_arm(f, VFS_OP_PWRITE, 0, ENOSPC, 0, "data_");
    put_ok(db, "full", "disk");
    cr_assert_eq(vfs_fault_hits(f), 1, "the first zero write failed");
    s4kv_close(db);
    vfs_fault_free(f);
    db = reopen_exact(dir, &o);
    expect_val(db, "full", "disk");
    s4kv_close(db);
    tu_rmtree_free(dir);

    /* the zeros ahead grow from 16 KiB by doubling to 1 MiB, never more;
     * a write of more than 16 KiB is a plain append */
    dir = tu_tmpdir("prealloc-ramp");
    db = open_ok(dir, &o);
    uint8_t big[20000];
    uint64_t seed = 5;
    for (size_t i = 0; i < sizeof big; i += 8) {
        uint64_t x = tu_rand(&seed);
        memcpy(big + i, &x, 8);
    }
    cr_assert_eq(s4kv_put(db, "big", 3, big, sizeof big, err, sizeof err), 0, "%s", err);
    cr_assert_eq(data_file_size(dir, 1), db->segs[db->nsegs - 1]->size, "no zeros after 20 KB");
    uint64_t most = 0;
    s4kv_batch *b = s4kv_batch_new();
    char val[100];
    memset(val, 'v', sizeof val - 1);
    val[sizeof val - 1] = 0;
    for (int i = 0; i < 3000; i++) {
        s4kv_batch_clear(b);
        for (int j = 0; j < 10; j++) {
            snprintf(k, sizeof k, "m%05d-%d", i, j);
            cr_assert_eq(s4kv_batch_put(b, k, strlen(k), val, sizeof val), 0);
        }
        cr_assert_eq(s4kv_write(db, b, err, sizeof err), 0, "%s", err);
        uint64_t gap = data_file_size(dir, 1) - db->segs[db->nsegs - 1]->size;
        most = gap > most ? gap : most;
    }
    s4kv_batch_free(b);
    cr_assert_gt(most, 512 << 10, "reached about 1 MiB ahead: %llu", (unsigned long long)most);
    cr_assert_leq(most, (1 << 20) + 8192, "never past 1 MiB ahead: %llu",
                  (unsigned long long)most);
    s4kv_close(db);
    cr_assert_eq(data_files_exact(dir), 1);
    tu_rmtree_free(dir);

    /* rotation: every sealed segment ends with its last batch */
    dir = tu_tmpdir("prealloc-rot");
    o.max_segment_bytes = 256 << 10;
    db = open_ok(dir, &o);
    for (int i = 0; i < 8000; i++) {
        snprintf(k, sizeof k, "r%05d", i);
        put_ok(db, k, val);
    }
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    cr_assert_geq(st.active_segment, 3, "rotated at least twice");
    for (unsigned no = 1; no < st.active_segment; no++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/data_%06u.s4kv", dir, no);
        uint64_t len = data_file_size(dir, no);
        cr_assert_leq(len, 256 << 10);
        cr_assert_eq(seg_file_check(p, no, len, NULL, err, sizeof err), 0, "%s", err);
    }
    cr_assert_gt(data_file_size(dir, st.active_segment), 0);
    s4kv_close(db);
    cr_assert_geq(data_files_exact(dir), 3);
    tu_rmtree_free(dir);
}

/* ---- Remote seam */

typedef struct rctx {
    char dir[4096];
    int calls, lie;
} rctx;

static int fake_read_range(void *ctx, uint32_t segno, uint64_t off, void *buf, size_t len,
                           char *err, size_t errlen)
{
    rctx *c = ctx;
    c->calls++;
    char path[4200];
    snprintf(path, sizeof path, "%s/data_%06u.s4kv", c->dir, segno);
    FILE *f = fopen(path, "rb");
    if (!f)
        return seterr(err, errlen, S4KV_EREMOTE, "remote: no object %s", path);
    size_t got = (fseek(f, (long)off, SEEK_SET) == 0) ? fread(buf, 1, len, f) : 0;
    fclose(f);
    if (got != len)
        return seterr(err, errlen, S4KV_EREMOTE, "remote: short read");
    if (c->lie)
        ((uint8_t *)buf)[len / 2] ^= 0x40;
    return 0;
}

Test(engine, remote_seam_one_read_per_get_and_checked)
{
    char *dir = tu_tmpdir("remote");
    char *far = tu_tmpdir("remote-far");
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(dir, &o);
    for (int i = 0; i < 400; i++) {
        char k[16];
        snprintf(k, sizeof k, "r%d", i);
        put_ok(db, k, "a value that is long enough to fill a few segments quickly");
    }
    s4kv_close(db);
    /* Move every sealed segment to the "remote" directory. */
    char src[4200], dst[4200];
    int moved = 0;
    for (int no = 1; no < 100; no++) {
        snprintf(src, sizeof src, "%s/data_%06d.s4kv", dir, no);
        snprintf(dst, sizeof dst, "%s/data_%06d.s4kv", far, no);
        if (access(src, F_OK) != 0)
            continue;
        char mpath[4200];
        snprintf(mpath, sizeof mpath, "%s/MANIFEST", dir);
        size_t ml;
        char *man = (char *)tu_read_file(mpath, &ml);
        char needle[64];
        snprintf(needle, sizeof needle, "segment %d sealed", no);
        int sealed = strstr(man, needle) != NULL;
        free(man);
        if (sealed && rename(src, dst) == 0)
            moved++;
    }
    cr_assert_gt(moved, 1);
    rctx c = {.calls = 0};
    snprintf(c.dir, sizeof c.dir, "%s", far);
    s4kv_remote rem = {.read_range = fake_read_range, .ctx = &c};
    o.remote = &rem;
    o.read_only = 1;
    db = open_ok(dir, &o);
    c.calls = 0;
    expect_val(db, "r0", "a value that is long enough to fill a few segments quickly");
    cr_assert_eq(c.calls, 1, "exactly one ranged read per get");
    c.lie = 1;
    void *v;
    size_t n;
    char err[512];
    cr_assert_eq(s4kv_get(db, "r1", 2, &v, &n, err, sizeof err), S4KV_ECORRUPT);
    cr_assert(strstr(err, "data_000001.s4kv offset"), "names segment and offset: %s", err);
    s4kv_close(db);
    /* Without the seam the missing segment is a clear error at open. */
    o.remote = NULL;
    cr_assert_neq(s4kv_open(dir, &o, &db, err, sizeof err), 0);
    cr_assert(strstr(err, "named by MANIFEST"), "%s", err);
    tu_rmtree_free(dir);
    tu_rmtree_free(far);
}

static int fake_fetch(void *ctx, const char *name, uint8_t **buf, size_t *len, char *err,
                      size_t errlen)
{
    rctx *c = ctx;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", c->dir, name);
    *buf = tu_read_file(path, len);
    if (!*buf)
        return seterr(err, errlen, S4KV_ENOENT, "remote: no object %s", name);
    return 0;
}

Test(engine, remote_only_open_through_fetch)
{
    char *far = tu_tmpdir("remote-only");
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(far, &o);
    for (int i = 0; i < 300; i++) {
        char k[16], v[64];
        snprintf(k, sizeof k, "q%03d", i);
        snprintf(v, sizeof v, "remote value %d", i);
        put_ok(db, k, v);
    }
    s4kv_close(db);
    /* A "remote" manifest has committed lengths for every segment: seal the
     * active one in the copy the reader sees. */
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/MANIFEST", far);
    manifest m;
    size_t ml;
    char *text = (char *)tu_read_file(mpath, &ml);
    char err[512];
    cr_assert_eq(manifest_parse(text, ml, "MANIFEST", &m, err, sizeof err), 0, "%s", err);
    free(text);
    char spath[4200];
    snprintf(spath, sizeof spath, "%s/data_%06u.s4kv", far, m.segno[m.nseg - 1]);
    size_t slen;
    free(tu_read_file(spath, &slen));
    m.sealed_len[m.nseg - 1] = slen;
    char *out;
    size_t outlen;
    cr_assert_eq(manifest_format(&m, &out, &outlen), 0);
    tu_write_file(mpath, out, outlen);
    free(out);
    manifest_free(&m);

    rctx c = {.calls = 0};
    snprintf(c.dir, sizeof c.dir, "%s", far);
    s4kv_remote rem = {.read_range = fake_read_range, .fetch = fake_fetch, .ctx = &c};
    s4kv_options ro = small_opts();
    ro.read_only = 1;
    ro.remote = &rem;
    char local[4200];
    snprintf(local, sizeof local, "%s/does-not-exist", far);
    db = open_ok(local, &ro);
    cr_assert_null(strstr(logbuf, "unusable"), "the remote checkpoint is used: %s", logbuf);
    c.calls = 0;
    expect_val(db, "q123", "remote value 123");
    cr_assert_eq(c.calls, 1, "one ranged read per get, got %d", c.calls);
    expect_val(db, "nope", NULL);
    cr_assert_eq(c.calls, 1, "a missing key costs no request");
    /* Iteration copies whole segments once instead of one read per key. */
    c.calls = 0;
    s4kv_iter *it;
    cr_assert_eq(s4kv_iter_new(db, NULL, 0, S4KV_ITER_SORTED, &it, err, sizeof err), 0, "%s",
                 err);
    int n = 0;
    while (s4kv_iter_next(it, err, sizeof err) == 1)
        n++;
    s4kv_iter_free(it);
    cr_assert_eq(n, 300);
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    cr_assert_leq((uint64_t)c.calls, st.segments, "at most one read per segment: %d", c.calls);
    s4kv_close(db);
    cr_assert_neq(access(local, F_OK), 0, "a remote-only open creates nothing locally");
    tu_rmtree_free(far);
}

Test(engine, seal_rotates_only_a_non_empty_active_segment)
{
    char *dir = tu_tmpdir("seal");
    s4kv_options o = small_opts();
    o.max_segment_bytes = 1 << 20;
    s4kv_db *db = open_ok(dir, &o);
    char err[512];
    int sealed = -1;
    cr_assert_eq(s4kv_seal(db, &sealed, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sealed, 0, "an empty active segment is not sealed");
    put_ok(db, "a", "1");
    s4kv_stats before, after;
    s4kv_stats_get(db, &before);
    cr_assert_eq(s4kv_seal(db, &sealed, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sealed, 1);
    s4kv_stats_get(db, &after);
    cr_assert_eq(after.segments, before.segments + 1);
    cr_assert_neq(after.active_segment, before.active_segment);
    put_ok(db, "b", "2");
    s4kv_close(db);
    db = open_ok(dir, &o);
    expect_val(db, "a", "1");
    expect_val(db, "b", "2");
    s4kv_close(db);
    tu_rmtree_free(dir);
}

Test(engine, files_are_not_readable_by_others)
{
    char *base = tu_tmpdir("modes");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/db", base);
    mode_t old = umask(022);
    s4kv_options o = small_opts();
    s4kv_db *db = open_ok(dir, &o);
    put_ok(db, "k", "secret");
    s4kv_close(db);
    umask(old);
    struct stat st;
    cr_assert_eq(stat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0750, "directory mode %o", st.st_mode & 0777);
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[4500];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        cr_assert_eq(stat(p, &st), 0);
        cr_assert_eq(st.st_mode & 0007, 0, "%s is readable by others (%o)", e->d_name,
                     st.st_mode & 0777);
        n++;
    }
    closedir(d);
    cr_assert_geq(n, 4, "LOCK, MANIFEST, a segment, a checkpoint");
    tu_rmtree_free(base);
}

/* Regression inputs found by fuzzing (fuzz/findings): each must be rejected
 * cleanly (and, under ASan, without a leak). */
Test(engine, manifest_fuzz_findings_rejected)
{
    static const char *const paths[] = {
        "fuzz/findings/fuzz_manifest-leak-duplicate-checkpoint-line",
        /* a retired time above INT64_MAX parsed, then formatted negative */
        "fuzz/findings/fuzz_manifest-retired-time-above-int64",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        const char *path = paths[i];
        size_t len;
        char *text = (char *)tu_read_file(path, &len);
        cr_assert_not_null(text, "missing %s (tests run from the repository root)", path);
        manifest m;
        char err[512] = "";
        cr_assert_eq(manifest_parse(text, len, "finding", &m, err, sizeof err), S4KV_ECORRUPT,
                     "%s", path);
        cr_assert(strstr(err, "finding:"), "%s", err);
        free(text);
    }
}
