/*
 * test_faults.c - bad bytes and failing I/O: flipped bytes in records, torn
 * tails cut at every byte, corrupt and truncated checkpoints, injected ENOSPC
 * and EIO, and simulated power loss at every sync point of a workload.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "util.h"

static char flog[65536];
static void fcap_log(void *ctx, const char *line)
{
    (void)ctx;
    size_t n = strlen(flog);
    snprintf(flog + n, sizeof flog - n, "%s\n", line);
}

static s4kv_options fopts(void)
{
    s4kv_options o;
    s4kv_options_init(&o);
    o.max_segment_bytes = 8192;
    o.sync_mode = S4KV_SYNC_NONE;
    o.log = fcap_log;
    flog[0] = 0;
    return o;
}

static s4kv_db *fopen_db(const char *dir, const s4kv_options *o, vfs *v)
{
    char err[512] = "";
    s4kv_db *db = NULL;
    int rc = s4kv__open_vfs(dir, o, v ? v : vfs_posix(), NULL, &db, err, sizeof err);
    cr_assert_eq(rc, 0, "open: %s (%s)", s4kv_strerror(rc), err);
    return db;
}

static int getv(s4kv_db *db, const char *k, char *out, size_t cap, char *err, size_t errlen)
{
    void *v;
    size_t n;
    int rc = s4kv_get(db, k, strlen(k), &v, &n, err, errlen);
    if (rc == 0) {
        snprintf(out, cap, "%.*s", (int)n, (char *)v);
        s4kv_free(v);
    }
    return rc;
}

static void seg_file(const char *dir, uint32_t no, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/data_%06u.s4kv", dir, no);
}

Test(faults, flipped_byte_in_record_detected_by_get_and_verify)
{
    char *dir = tu_tmpdir("flip");
    s4kv_options o = fopts();
    o.max_segment_bytes = 1 << 20;
    s4kv_db *db = fopen_db(dir, &o, NULL);
    char err[512];
    for (int i = 0; i < 20; i++) {
        char k[16], v[64];
        snprintf(k, sizeof k, "k%02d", i);
        snprintf(v, sizeof v, "value number %d", i);
        cr_assert_eq(s4kv_put(db, k, strlen(k), v, strlen(v), err, sizeof err), 0);
    }
    s4kv_close(db);
    /* Locate k07's record from a fresh replay keydir, then flip each byte of
     * that record in turn (one at a time). */
    db = fopen_db(dir, &o, NULL);
    keydir_loc loc;
    cr_assert(keydir_get(db->kd, "k07", 3, &loc));
    s4kv_close(db);
    char path[4200];
    seg_file(dir, loc.seg, path, sizeof path);
    size_t flen;
    uint8_t *orig = tu_read_file(path, &flen);
    for (uint32_t i = 0; i < loc.len; i++) {
        uint8_t *mod = malloc(flen);
        memcpy(mod, orig, flen);
        mod[loc.off + i] ^= 0x5a;
        cr_assert_eq(tu_write_file(path, mod, flen), 0);
        free(mod);
        s4kv_options ro = o;
        ro.read_only = 1; /* open without replay-side repairs: uses the checkpoint */
        db = fopen_db(dir, &ro, NULL);
        char out[128];
        int rc = getv(db, "k07", out, sizeof out, err, sizeof err);
        if (rc == 0)
            cr_assert_fail("byte %u of the record flipped and get returned data '%s'", i, out);
        cr_assert_eq(rc, S4KV_ECORRUPT, "byte %u: rc %d", i, rc);
        char want[64];
        snprintf(want, sizeof want, "data_%06u.s4kv offset %u", loc.seg, loc.off);
        cr_assert(strstr(err, want), "error names segment and offset: %s", err);
        cr_assert_eq(getv(db, "k08", out, sizeof out, err, sizeof err), 0, "others readable");
        cr_assert_str_eq(out, "value number 8");
        s4kv_verify_report rep;
        cr_assert_eq(s4kv_verify(db, &rep, err, sizeof err), S4KV_ECORRUPT, "byte %u", i);
        cr_assert_gt(rep.bad_records + rep.index_mismatches, 0);
        s4kv_close(db);
    }
    cr_assert_eq(tu_write_file(path, orig, flen), 0);
    free(orig);
    tu_rmtree_free(dir);
}

Test(faults, torn_tail_at_every_byte)
{
    char *dir = tu_tmpdir("torn");
    s4kv_options o = fopts();
    o.max_segment_bytes = 1 << 20;
    s4kv_db *db = fopen_db(dir, &o, NULL);
    char err[512];
    cr_assert_eq(s4kv_put(db, "before", 6, "ok", 2, err, sizeof err), 0);
    s4kv_close(db); /* checkpoint covers "before" */
    db = fopen_db(dir, &o, NULL);
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    uint32_t seg = st.active_segment;
    s4kv_batch *b = s4kv_batch_new();
    s4kv_batch_put(b, "x1", 2, "one", 3);
    s4kv_batch_put(b, "x2", 2, "two", 3);
    s4kv_batch_delete(b, "before", 6);
    cr_assert_eq(s4kv_write(db, b, err, sizeof err), 0);
    s4kv_batch_free(b);
    s4kv__abandon(db);
    char path[4200];
    seg_file(dir, seg, path, sizeof path);
    size_t flen;
    uint8_t *full = tu_read_file(path, &flen);
    uint64_t start = st.segment_bytes; /* one segment: its size before the batch */
    cr_assert_lt(start, flen);
    for (uint64_t cut = start; cut <= flen; cut++) {
        cr_assert_eq(tu_write_file(path, full, (size_t)cut), 0);
        flog[0] = 0;
        db = fopen_db(dir, &o, NULL);
        char out[64];
        int r1 = getv(db, "x1", out, sizeof out, err, sizeof err);
        int r2 = getv(db, "x2", out, sizeof out, err, sizeof err);
        int r3 = getv(db, "before", out, sizeof out, err, sizeof err);
        if (cut == flen) {
            cr_assert(r1 == 0 && r2 == 0 && r3 == S4KV_ENOTFOUND, "whole batch applied");
        } else {
            cr_assert(r1 == S4KV_ENOTFOUND && r2 == S4KV_ENOTFOUND && r3 == 0,
                      "cut at %llu: batch must be wholly absent (%d %d %d)",
                      (unsigned long long)cut, r1, r2, r3);
            if (cut > start)
                cr_assert(strstr(flog, "torn tail of"), "cut at %llu: log says so: %s",
                          (unsigned long long)cut, flog);
        }
        s4kv__abandon(db);
        size_t nl;
        uint8_t *now = tu_read_file(path, &nl);
        cr_assert_eq(nl, cut == flen ? flen : start, "tail cut back to the last whole batch");
        free(now);
    }
    free(full);
    tu_rmtree_free(dir);
}

static void fill(s4kv_db *db, int n, const char *fmt)
{
    char err[512];
    for (int i = 0; i < n; i++) {
        char k[32], v[64];
        snprintf(k, sizeof k, "c%04d", i);
        snprintf(v, sizeof v, fmt, i);
        cr_assert_eq(s4kv_put(db, k, strlen(k), v, strlen(v), err, sizeof err), 0);
    }
}

static void check_fill(s4kv_db *db, int n, const char *fmt)
{
    char err[512], out[64], want[64];
    for (int i = 0; i < n; i++) {
        char k[32];
        snprintf(k, sizeof k, "c%04d", i);
        snprintf(want, sizeof want, fmt, i);
        cr_assert_eq(getv(db, k, out, sizeof out, err, sizeof err), 0, "%s: %s", k, err);
        cr_assert_str_eq(out, want);
    }
}

Test(faults, corrupt_or_truncated_checkpoint_falls_back_to_replay)
{
    char *dir = tu_tmpdir("badckpt");
    s4kv_options o = fopts();
    s4kv_db *db = fopen_db(dir, &o, NULL);
    fill(db, 500, "first %d");
    fill(db, 250, "second %d");
    s4kv_close(db);
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/MANIFEST", dir);
    size_t ml;
    char *man = (char *)tu_read_file(mpath, &ml);
    char *ck = strstr(man, "checkpoint index_");
    cr_assert_not_null(ck);
    char name[64];
    sscanf(ck, "checkpoint %63s", name);
    free(man);
    char cpath[4200];
    snprintf(cpath, sizeof cpath, "%s/%s", dir, name);
    size_t cl;
    uint8_t *orig = tu_read_file(cpath, &cl);
    /* Variants: truncated at several lengths, a flipped byte at several places. */
    size_t cuts[] = {0, 10, 55, cl / 2, cl - 1};
    for (int v = 0; v < 10; v++) {
        if (v < 5) {
            tu_write_file(cpath, orig, cuts[v]);
        } else {
            uint8_t *mod = malloc(cl);
            memcpy(mod, orig, cl);
            mod[(cl - 1) * (size_t)(v - 5) / 4] ^= 1;
            tu_write_file(cpath, mod, cl);
            free(mod);
        }
        s4kv_options ro = o;
        ro.read_only = 1;
        flog[0] = 0;
        db = fopen_db(dir, &ro, NULL);
        cr_assert(strstr(flog, "unusable") && strstr(flog, "replaying"),
                  "variant %d: open says it falls back: %s", v, flog);
        check_fill(db, 250, "second %d");
        s4kv_stats st;
        s4kv_stats_get(db, &st);
        cr_assert_eq(st.keys, 500);
        s4kv_close(db);
    }
    /* A read-write open rebuilds and writes a fresh, valid checkpoint. */
    db = fopen_db(dir, &o, NULL);
    s4kv_close(db);
    flog[0] = 0;
    db = fopen_db(dir, &o, NULL);
    cr_assert_null(strstr(flog, "unusable"), "fresh checkpoint is used: %s", flog);
    check_fill(db, 250, "second %d");
    s4kv_close(db);
    free(orig);
    tu_rmtree_free(dir);
}

Test(faults, enospc_on_write_fails_cleanly_and_recovers)
{
    char *dir = tu_tmpdir("enospc");
    s4kv_options o = fopts();
    o.sync_mode = S4KV_SYNC_BATCH;
    vfs_fault *f = vfs_fault_new();
    s4kv_db *db = fopen_db(dir, &o, vfs_fault_vfs(f));
    fill(db, 50, "v%d");
    char err[512] = "";
    vfs_fault_arm(f, VFS_OP_PWRITE, 0, ENOSPC, 0, "data_");
    cr_assert_eq(s4kv_put(db, "new", 3, "value", 5, err, sizeof err), S4KV_ENOSPC);
    cr_assert(strstr(err, "data_") && strstr(err, "No space"), "message: %s", err);
    cr_assert_eq(vfs_fault_hits(f), 1);
    char out[64];
    cr_assert_eq(getv(db, "new", out, sizeof out, err, sizeof err), S4KV_ENOTFOUND);
    /* The partial write was cut off: the next write works and the log is clean. */
    cr_assert_eq(s4kv_put(db, "after", 5, "ok", 2, err, sizeof err), 0, "%s", err);
    s4kv_verify_report rep;
    cr_assert_eq(s4kv_verify(db, &rep, err, sizeof err), 0, "%s", err);
    s4kv__abandon(db);
    vfs_fault_crash(f, 0);
    db = fopen_db(dir, &o, NULL);
    check_fill(db, 50, "v%d");
    cr_assert_eq(getv(db, "after", out, sizeof out, err, sizeof err), 0);
    cr_assert_eq(getv(db, "new", out, sizeof out, err, sizeof err), S4KV_ENOTFOUND);
    s4kv_close(db);
    vfs_fault_free(f);
    tu_rmtree_free(dir);
}

Test(faults, eio_on_fsync_fails_the_write_and_the_handle)
{
    char *dir = tu_tmpdir("eio");
    s4kv_options o = fopts();
    o.sync_mode = S4KV_SYNC_BATCH;
    vfs_fault *f = vfs_fault_new();
    s4kv_db *db = fopen_db(dir, &o, vfs_fault_vfs(f));
    fill(db, 50, "v%d");
    char err[512] = "";
    vfs_fault_arm(f, VFS_OP_SYNC, 0, EIO, 0, NULL);
    cr_assert_eq(s4kv_put(db, "new", 3, "value", 5, err, sizeof err), S4KV_EIO);
    cr_assert(strstr(err, "fdatasync"), "%s", err);
    cr_assert_eq(s4kv_put(db, "more", 4, "x", 1, err, sizeof err), S4KV_ECLOSED,
                 "after a failed fsync the handle refuses writes");
    s4kv__abandon(db);
    vfs_fault_crash(f, 0);
    db = fopen_db(dir, &o, NULL);
    check_fill(db, 50, "v%d");
    s4kv_verify_report rep;
    cr_assert_eq(s4kv_verify(db, &rep, err, sizeof err), 0, "%s", err);
    s4kv_close(db);
    vfs_fault_free(f);
    tu_rmtree_free(dir);
}

Test(faults, io_errors_during_compaction_and_checkpoint_lose_nothing)
{
    unsigned ops[] = {VFS_OP_PWRITE, VFS_OP_SYNC, VFS_OP_RENAME, VFS_OP_DIRSYNC, VFS_OP_OPEN};
    for (int oi = 0; oi < 5; oi++) {
        for (long skip = 0; skip < 6; skip++) {
            char *dir = tu_tmpdir("compfault");
            s4kv_options o = fopts();
            o.sync_mode = S4KV_SYNC_BATCH; /* acknowledged = durable */
            vfs_fault *f = vfs_fault_new();
            s4kv_db *db = fopen_db(dir, &o, vfs_fault_vfs(f));
            fill(db, 300, "old %d");
            fill(db, 150, "new %d");
            char err[512];
            vfs_fault_arm(f, ops[oi], skip, EIO, 0, NULL);
            int rc = s4kv_compact(db, err, sizeof err);
            if (rc == 0)
                rc = s4kv_checkpoint(db, err, sizeof err);
            vfs_fault_disarm(f);
            /* Whatever failed, the handle still reads everything... */
            check_fill(db, 150, "new %d");
            s4kv__abandon(db);
            vfs_fault_crash(f, 0);
            /* ...and so does a reopen after a power loss. */
            db = fopen_db(dir, &o, NULL);
            check_fill(db, 150, "new %d");
            s4kv_stats st;
            s4kv_stats_get(db, &st);
            cr_assert_eq(st.keys, 300, "op %d skip %ld", oi, skip);
            s4kv_verify_report rep;
            cr_assert_eq(s4kv_verify(db, &rep, err, sizeof err), 0, "op %d skip %ld: %s", oi,
                         skip, err);
            s4kv_close(db);
            vfs_fault_free(f);
            tu_rmtree_free(dir);
        }
    }
}

/* ---- Power loss at every sync point of a workload of batches, compactions
 * and checkpoints, against an oracle of acknowledged batches. */

#define CK 40

typedef struct state {
    int present[CK];
    int val[CK];
} state;

static int run_workload(s4kv_db *db, state *acked, state *pending, int steps)
{
    char err[512];
    s4kv_batch *b = s4kv_batch_new();
    uint64_t s = 99;
    int ok = 1;
    for (int step = 0; step < steps && ok; step++) {
        *pending = *acked;
        s4kv_batch_clear(b);
        int n = 1 + (int)(tu_rand(&s) % 4);
        for (int j = 0; j < n; j++) {
            int k = (int)(tu_rand(&s) % CK);
            char key[16], v[32];
            snprintf(key, sizeof key, "p%02d", k);
            if (tu_rand(&s) % 4 == 0) {
                s4kv_batch_delete(b, key, strlen(key));
                pending->present[k] = 0;
            } else {
                int val = step * 10 + j;
                snprintf(v, sizeof v, "%d", val);
                s4kv_batch_put(b, key, strlen(key), v, strlen(v));
                pending->present[k] = 1;
                pending->val[k] = val;
            }
        }
        if (s4kv_write(db, b, err, sizeof err) != 0)
            break;
        *acked = *pending;
        if (step % 17 == 16 && s4kv_compact(db, err, sizeof err) != 0)
            ok = 0;
        if (step % 11 == 10 && s4kv_checkpoint(db, err, sizeof err) != 0)
            ok = 0;
    }
    s4kv_batch_free(b);
    return ok;
}

static int matches(s4kv_db *db, const state *st)
{
    char err[512], out[32];
    for (int k = 0; k < CK; k++) {
        char key[16];
        snprintf(key, sizeof key, "p%02d", k);
        int rc = getv(db, key, out, sizeof out, err, sizeof err);
        if (st->present[k] ? (rc != 0 || atoi(out) != st->val[k]) : rc != S4KV_ENOTFOUND)
            return 0;
    }
    return 1;
}

/* One power-loss mode of the sweep. */
typedef struct crash_mode {
    const char *name;
    int garble;
    uint64_t torn;
    int ns_prefix; /* keep the oldest 1..3 unsynced namespace changes */
} crash_mode;

static const crash_mode crash_modes[] = {
    {"drop", 0, 0, 0},          /* unsynced bytes gone */
    {"torn", 0, 13, 0},         /* a 13-byte prefix of them kept */
    {"garble", 1, 0, 0},        /* all of them replaced by random bytes */
    {"torn+garble", 1, 13, 0},  /* a prefix kept, the rest random */
    {"kept", 0, UINT64_MAX, 0}, /* all of them reached the disk (names still undone) */
    {"names-prefix", 0, 0, 1}, /* a prefix of the unsynced name changes persists */
};

/* Power loss right after every sync point of the workload, in every mode of
 * crash_modes; in each, creates, renames and unlinks not followed by a
 * directory fsync are undone too (vfs_fault_crash_ex). S4KV_POWER_STEPS
 * lengthens the workload (default 60 batches). */
Test(faults, power_loss_at_every_sync_point, .timeout = 1800)
{
    s4kv_options o = fopts();
    o.sync_mode = S4KV_SYNC_BATCH;
    o.max_segment_bytes = 4096;
    const char *e = getenv("S4KV_POWER_STEPS");
    const int steps = e && atoi(e) > 0 ? atoi(e) : 60;
    /* Count the sync points of a clean run. */
    char *dir = tu_tmpdir("power");
    vfs_fault *f = vfs_fault_new();
    s4kv_db *db = fopen_db(dir, &o, vfs_fault_vfs(f));
    long base = vfs_fault_syncs(f);
    state acked = {{0}, {0}}, pending;
    cr_assert(run_workload(db, &acked, &pending, steps));
    long total = vfs_fault_syncs(f) - base;
    s4kv_close(db);
    vfs_fault_free(f);
    tu_rmtree_free(dir);
    cr_assert_gt(total, steps);
    const int nmodes = (int)(sizeof crash_modes / sizeof crash_modes[0]);
    for (int m = 0; m < nmodes; m++) {
        long explored = 0, in_flight = 0;
        vfs_crash_stats sum = {0};
        for (long k = 0; k < total; k++) {
            dir = tu_tmpdir("power");
            f = vfs_fault_new();
            db = fopen_db(dir, &o, vfs_fault_vfs(f));
            memset(&acked, 0, sizeof acked);
            /* Sync point k is the last to succeed; the power fails right after
             * (the disk is frozen from the next sync point on). */
            vfs_fault_power_cut(f, k);
            run_workload(db, &acked, &pending, steps);
            cr_assert(vfs_fault_frozen(f), "sync point %ld reached", k);
            s4kv__abandon(db);
            vfs_crash how = {crash_modes[m].garble, crash_modes[m].torn,
                             (uint64_t)k * 7919 + (uint64_t)m,
                             crash_modes[m].ns_prefix ? 1 + (size_t)(k % 3) : 0};
            vfs_crash_stats cs;
            vfs_fault_crash_ex(f, &how, &cs);
            sum.files_cut += cs.files_cut;
            sum.bytes_dropped += cs.bytes_dropped;
            sum.bytes_garbled += cs.bytes_garbled;
            sum.creates_undone += cs.creates_undone;
            sum.renames_undone += cs.renames_undone;
            sum.unlinks_undone += cs.unlinks_undone;
            flog[0] = 0;
            db = fopen_db(dir, &o, NULL);
            int a = matches(db, &acked);
            cr_assert(a || matches(db, &pending),
                      "crash after sync point %ld (mode %s): state is neither the last "
                      "acknowledged batch nor the one in flight", k, crash_modes[m].name);
            in_flight += !a;
            char err[512];
            s4kv_verify_report rep;
            cr_assert_eq(s4kv_verify(db, &rep, err, sizeof err), 0, "sync point %ld (mode %s): %s",
                         k, crash_modes[m].name, err);
            s4kv_close(db);
            vfs_fault_free(f);
            tu_rmtree_free(dir);
            explored++;
        }
        /* The mode did what it says: unsynced tails were hit, and names were undone. */
        cr_assert_gt(sum.files_cut, 0, "mode %s", crash_modes[m].name);
        if (crash_modes[m].garble)
            cr_assert_gt(sum.bytes_garbled, 0, "mode %s", crash_modes[m].name);
        else if (crash_modes[m].torn != UINT64_MAX)
            cr_assert_gt(sum.bytes_dropped, 0, "mode %s", crash_modes[m].name);
        else
            cr_assert_gt(in_flight, 0, "mode kept: some batch in flight must be found durable");
        cr_assert_gt(sum.creates_undone, 0, "mode %s", crash_modes[m].name);
        cr_assert_gt(sum.renames_undone, 0, "mode %s", crash_modes[m].name);
        cr_assert_gt(sum.unlinks_undone, 0, "mode %s", crash_modes[m].name);
        cr_log_info("power loss, mode %s: %ld crash points (%d batches), %ld with the batch in "
                    "flight durable; %ld files cut, %llu bytes dropped, %llu garbled; undone: "
                    "%ld creates, %ld renames, %ld unlinks; 0 violations",
                    crash_modes[m].name, explored, steps, in_flight, sum.files_cut,
                    (unsigned long long)sum.bytes_dropped, (unsigned long long)sum.bytes_garbled,
                    sum.creates_undone, sum.renames_undone, sum.unlinks_undone);
    }
}

/* The crash model itself, on plain files: what a power loss keeps. */
Test(faults, crash_model_undoes_unsynced_names_and_garbles_tails)
{
    char *dir = tu_tmpdir("model");
    vfs_fault *f = vfs_fault_new();
    vfs *v = vfs_fault_vfs(f);
    char a[4200], b[4200], c[4200], d[4200];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(c, sizeof c, "%s/c", dir);
    snprintf(d, sizeof d, "%s/d", dir);
    /* b and c: durable files with old content */
    cr_assert_eq(tu_write_file(b, "old-b", 5), 0);
    cr_assert_eq(tu_write_file(c, "old-c", 5), 0);
    int fd = v->open(v, a, O_RDWR | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(v->pwrite(v, fd, "new-a!", 6, 0), 6);
    cr_assert_eq(v->fdatasync(v, fd), 0);
    cr_assert_eq(v->pwrite(v, fd, "unsynced tail", 13, 6), 13);
    v->close(v, fd);
    cr_assert_eq(v->rename(v, a, b), 0); /* not dir-synced: reverts */
    cr_assert_eq(v->unlink(v, c), 0);    /* not dir-synced: c reappears */
    fd = v->open(v, d, O_RDWR | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(v->pwrite(v, fd, "0123456789", 10, 0), 10);
    cr_assert_eq(v->fdatasync(v, fd), 0);
    v->close(v, fd);
    vfs_crash how = {1, 2, 42, 0};
    vfs_crash_stats cs;
    vfs_fault_crash_ex(f, &how, &cs);
    cr_assert_eq(cs.renames_undone, 1);
    cr_assert_eq(cs.unlinks_undone, 1);
    cr_assert_eq(cs.creates_undone, 2, "a and d were created and never dir-synced");
    cr_assert_eq(cs.bytes_garbled, 11, "13 unsynced bytes, 2 kept, 11 garbled");
    size_t n;
    char *x = (char *)tu_read_file(b, &n);
    cr_assert(x && n == 5 && memcmp(x, "old-b", 5) == 0, "rename target has its old content");
    free(x);
    x = (char *)tu_read_file(c, &n);
    cr_assert(x && n == 5 && memcmp(x, "old-c", 5) == 0, "unlinked file is back");
    free(x);
    cr_assert_neq(access(a, F_OK), 0, "a was created and never dir-synced: gone");
    cr_assert_neq(access(d, F_OK), 0, "d: its data was synced but not its name: gone");
    vfs_fault_free(f);

    /* Now the same with directory fsyncs: everything sticks, the torn tail is garbled. */
    f = vfs_fault_new();
    v = vfs_fault_vfs(f);
    fd = v->open(v, a, O_RDWR | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(v->pwrite(v, fd, "new-a!", 6, 0), 6);
    cr_assert_eq(v->fdatasync(v, fd), 0);
    cr_assert_eq(v->pwrite(v, fd, "unsynced tail", 13, 6), 13);
    v->close(v, fd);
    cr_assert_eq(v->rename(v, a, b), 0);
    cr_assert_eq(v->unlink(v, c), 0);
    cr_assert_eq(v->fsync_dir(v, dir), 0);
    vfs_fault_crash_ex(f, &how, &cs);
    cr_assert_eq(cs.renames_undone + cs.unlinks_undone + cs.creates_undone, 0);
    x = (char *)tu_read_file(b, &n);
    cr_assert(x && n == 19 && memcmp(x, "new-a!un", 8) == 0, "synced part and torn prefix kept");
    cr_assert_neq(memcmp(x + 8, "synced tail", 11), 0, "the rest garbled");
    free(x);
    cr_assert_neq(access(a, F_OK), 0);
    cr_assert_neq(access(c, F_OK), 0);
    vfs_fault_free(f);

    /* ns_keep: the oldest changes persist, the newer ones are undone. */
    f = vfs_fault_new();
    v = vfs_fault_vfs(f);
    cr_assert_eq(v->unlink(v, b), 0);                         /* kept */
    fd = v->open(v, d, O_RDWR | O_CREAT | O_TRUNC, 0644); /* undone */
    cr_assert_geq(fd, 0);
    v->close(v, fd);
    vfs_crash keep1 = {0, 0, 1, 1};
    vfs_fault_crash_ex(f, &keep1, &cs);
    cr_assert_eq(cs.unlinks_undone + cs.creates_undone, 1);
    cr_assert_neq(access(b, F_OK), 0, "the older unlink persisted");
    cr_assert_neq(access(d, F_OK), 0, "the newer create was undone");
    vfs_fault_free(f);
    tu_rmtree_free(dir);
}

/* Power loss at every sync point of creating a database (s4kv_open on an
 * empty directory), in the drop and kept modes: the reopen must give an
 * empty, working database, or one with MANIFEST missing and nothing else
 * left behind. create_new (kv/db.c) makes data_000001.s4kv durable before
 * MANIFEST; a cut between the two leaves that file alone with at most its
 * header, which open now treats as an interrupted creation (it used to
 * refuse the directory: "holds segments but no MANIFEST"). */
Test(faults, power_loss_while_creating_a_database)
{
    s4kv_options o = fopts();
    o.sync_mode = S4KV_SYNC_BATCH;
    char *dir = tu_tmpdir("create");
    vfs_fault *f = vfs_fault_new();
    s4kv_db *db = fopen_db(dir, &o, vfs_fault_vfs(f));
    long total = vfs_fault_syncs(f);
    s4kv_close(db);
    vfs_fault_free(f);
    tu_rmtree_free(dir);
    cr_assert_gt(total, 1);
    for (long k = 0; k < total; k++) {
        for (int m = 0; m < 2; m++) {
            dir = tu_tmpdir("create");
            f = vfs_fault_new();
            vfs_fault_power_cut(f, k);
            char err[512] = "";
            db = NULL;
            int rc = s4kv__open_vfs(dir, &o, vfs_fault_vfs(f), NULL, &db, err, sizeof err);
            if (rc == 0)
                s4kv__abandon(db);
            cr_assert(vfs_fault_frozen(f), "sync point %ld reached", k);
            vfs_crash how = {0, m ? UINT64_MAX : 0, (uint64_t)k, 0};
            vfs_fault_crash_ex(f, &how, NULL);
            db = NULL;
            rc = s4kv__open_vfs(dir, &o, vfs_posix(), NULL, &db, err, sizeof err);
            cr_assert_eq(rc, 0, "power loss after sync point %ld of the creation: reopen: %s", k,
                         err);
            char out[16];
            cr_assert_eq(getv(db, "x", out, sizeof out, err, sizeof err), S4KV_ENOTFOUND);
            cr_assert_eq(s4kv_put(db, "x", 1, "1", 1, err, sizeof err), 0, "%s", err);
            s4kv_close(db);
            vfs_fault_free(f);
            tu_rmtree_free(dir);
        }
    }
}
