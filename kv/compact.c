/*
 * compact.c - compaction (Bitcask's merge), index rebuild and verify.
 *
 * Compaction copies every live record, byte for byte (the record checksum does
 * not cover its position), into new segments, then moves the keydir to them,
 * writes a checkpoint and commits a manifest naming [outputs..., active], and
 * only then unlinks the old segments. Invariant: until the manifest rename,
 * the old MANIFEST names only old files, all untouched; after it, the new one
 * names only new files, all fdatasynced. Tombstones are dropped because every
 * segment older than the active one is rewritten.
 */
#include "internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <snappy-c.h>
#include <stdlib.h>
#include <string.h>

#define OUT_BATCH_BYTES (1u << 20)
#define READ_WIN (8u << 20)

typedef struct centry {
    const void *key;     /* into the keydir arena: stable, nothing mutates it meanwhile */
    uint32_t klen;
    uint32_t rank;       /* position of the segment in manifest order */
    keydir_loc old, neu;
} centry;

static int centry_cmp(const void *a, const void *b)
{
    const centry *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    return x->old.off < y->old.off ? -1 : x->old.off > y->old.off;
}

typedef struct outw {
    s4kv_db *db;
    segment **segs;      /* output segments, in order */
    size_t n, cap;
    uint8_t *buf;        /* pending batch: header + records */
    size_t len, bcap;
    uint32_t count;
} outw;

static segment *out_cur(outw *o) { return o->n ? o->segs[o->n - 1] : NULL; }

static int out_new_segment(outw *o, char *err, size_t errlen)
{
    s4kv_db *db = o->db;
    if (o->n == o->cap) {
        size_t nc = o->cap ? o->cap * 2 : 8;
        segment **ns = realloc(o->segs, nc * sizeof *ns);
        if (!ns)
            return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
        o->segs = ns;
        o->cap = nc;
    }
    segment *s = calloc(1, sizeof *s);
    if (!s)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    s->no = db->next_segment++;
    s->sealed = 1;
    s->size = SEG_HDR;
    char path[4096];
    seg_path(db, s->no, path, sizeof path);
    int fd = db->v->open(db->v, path, O_RDWR | O_CREAT | O_TRUNC, S4KV_FILE_MODE);
    if (fd < 0) {
        free(s);
        return seterr(err, errlen, errno_code(fd), "create %s: %s", path, strerror(-fd));
    }
    s->fd = fd;
    o->segs[o->n++] = s;
    uint8_t hdr[SEG_HDR];
    seg_hdr_write(hdr, s->no);
    ssize_t w = db->v->pwrite(db->v, fd, hdr, SEG_HDR, 0);
    if (w < 0)
        return seterr(err, errlen, errno_code((int)w), "write %s: %s", path, strerror((int)-w));
    return 0;
}

static int out_flush(outw *o, char *err, size_t errlen)
{
    if (!o->count)
        return 0;
    segment *s = out_cur(o);
    batch_hdr_write(o->buf, o->count, o->len - BATCH_HDR);
    ssize_t w = o->db->v->pwrite(o->db->v, s->fd, o->buf, o->len, s->size);
    if (w < 0)
        return seterr(err, errlen, errno_code((int)w), "write data_%06u.s4kv: %s", s->no,
                      strerror((int)-w));
    s->size += o->len;
    o->len = BATCH_HDR;
    o->count = 0;
    return 0;
}

/* Appends one record; returns its new location in *loc. */
static int out_add(outw *o, const uint8_t *rec, uint32_t len, keydir_loc *loc, char *err,
                   size_t errlen)
{
    int rc;
    if (o->count && o->len + len > OUT_BATCH_BYTES && (rc = out_flush(o, err, errlen)))
        return rc;
    segment *s = out_cur(o);
    if (!s || ((s->size > SEG_HDR || o->count) &&
               s->size + o->len + len > o->db->opt.max_segment_bytes)) {
        if ((rc = out_flush(o, err, errlen)) || (rc = out_new_segment(o, err, errlen)))
            return rc;
        s = out_cur(o);
    }
    if (o->len + len > o->bcap) {
        size_t nc = o->len + len > OUT_BATCH_BYTES ? o->len + len : OUT_BATCH_BYTES;
        uint8_t *nb = realloc(o->buf, nc);
        if (!nb)
            return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
        o->buf = nb;
        o->bcap = nc;
    }
    memcpy(o->buf + o->len, rec, len);
    *loc = (keydir_loc){s->no, (uint32_t)(s->size + o->len), len};
    o->len += len;
    o->count++;
    return 0;
}

static void out_discard(outw *o, int unlink_files)
{
    for (size_t i = 0; i < o->n; i++) {
        char path[4096];
        seg_path(o->db, o->segs[i]->no, path, sizeof path);
        seg_close(o->db, o->segs[i]);
        if (unlink_files)
            o->db->v->unlink(o->db->v, path);
        free(o->segs[i]);
    }
    free(o->segs);
    o->segs = NULL;
    o->n = 0;
}

/* Copies the live records into o, filling each entry's new location. */
static int copy_live(s4kv_db *db, centry *e, size_t n, uint64_t total, outw *o, char *err,
                     size_t errlen)
{
    uint8_t *win = malloc(READ_WIN);
    size_t wcap = READ_WIN;
    uint64_t wstart = 0, wlen = 0, done = 0;
    uint32_t wseg = 0;
    int rc = win ? 0 : seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && rc == 0; i++) {
        const segment *s = db_seg(db, e[i].old.seg);
        uint64_t off = e[i].old.off, len = e[i].old.len;
        if (wseg != s->no || off < wstart || off + len > wstart + wlen) {
            uint64_t want = s->size - off < READ_WIN ? s->size - off : READ_WIN;
            if (want < len)
                want = len;
            if (want > wcap) {
                uint8_t *nw = realloc(win, want);
                if (!nw) {
                    rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
                    break;
                }
                win = nw;
                wcap = want;
            }
            if ((rc = seg_read(db, s, off, win, want, err, errlen)))
                break;
            done += want;
            db_progress(db, "compact", done < total ? done : total, total);
            wseg = s->no;
            wstart = off;
            wlen = want;
        }
        const uint8_t *rec = win + (off - wstart);
        rec_view r;
        const char *why = NULL;
        if (rec_parse(rec, len, &r, &why) != 0 || r.len != len || r.klen != e[i].klen ||
            memcmp(r.key, e[i].key, r.klen) != 0 || r.type != REC_PUT) {
            rc = seterr(err, errlen, S4KV_ECORRUPT,
                        "compaction abandoned: live record at data_%06u.s4kv offset %" PRIu64
                        " fails its check (%s); nothing was changed; run verify",
                        s->no, off, why ? why : "key or length differs from the index");
            break;
        }
        rc = out_add(o, rec, (uint32_t)len, &e[i].neu, err, errlen);
    }
    free(win);
    if (rc == 0)
        rc = out_flush(o, err, errlen);
    for (size_t i = 0; rc == 0 && i < o->n; i++) {
        int s = db->v->fdatasync(db->v, o->segs[i]->fd);
        if (s)
            rc = seterr(err, errlen, errno_code(s), "fdatasync data_%06u.s4kv: %s",
                        o->segs[i]->no, strerror(-s));
    }
    if (rc == 0 && o->n) {
        int s = db->v->fsync_dir(db->v, db->dir); /* names durable before the manifest */
        if (s)
            rc = seterr(err, errlen, errno_code(s), "fsync %s: %s", db->dir, strerror(-s));
    }
    return rc;
}

/* Builds the list of live entries sorted by position in the log. */
static int plan(s4kv_db *db, centry **out, size_t *n, char *err, size_t errlen)
{
    size_t cnt = keydir_count(db->kd);
    centry *e = malloc((cnt ? cnt : 1) * sizeof *e);
    uint32_t *rank = calloc(db->nbyno ? db->nbyno : 1, sizeof *rank);
    if (!e || !rank) {
        free(e);
        free(rank);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory planning compaction");
    }
    for (size_t i = 0; i < db->nsegs; i++)
        rank[db->segs[i]->no] = (uint32_t)i;
    size_t pos = 0, k = 0;
    const void *key;
    size_t kl;
    keydir_loc loc;
    while (keydir_next(db->kd, &pos, &key, &kl, &loc) && k < cnt)
        e[k++] = (centry){key, (uint32_t)kl, rank[loc.seg], loc, {0, 0, 0}};
    free(rank);
    qsort(e, k, sizeof *e, centry_cmp);
    *out = e;
    *n = k;
    return 0;
}

int s4kv_compact(s4kv_db *db, char *err, size_t errlen)
{
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    if (db->read_only)
        return seterr(err, errlen, S4KV_EREADONLY, "%s is open read-only", db->dir);
    int rc = db_exclusive_begin(db);
    if (rc)
        return seterr(err, errlen, rc, "out of memory");
    if (db->failed) {
        db_exclusive_end(db);
        return seterr(err, errlen, S4KV_ECLOSED, "an earlier write failed; reopen");
    }
    segment *a = db->segs[db->nsegs - 1];
    if (a->size > SEG_HDR && (rc = db_rotate(db, err, errlen))) {
        db_exclusive_end(db);
        return rc;
    }
    a = db->segs[db->nsegs - 1];
    size_t nin = db->nsegs - 1;
    uint64_t total = 0;
    for (size_t i = 0; i < nin; i++)
        total += db->segs[i]->live;

    centry *e = NULL;
    size_t n = 0;
    outw o = {.db = db, .len = BATCH_HDR};
    uint32_t saved_next = db->next_segment;
    rc = plan(db, &e, &n, err, errlen);
    if (rc == 0)
        rc = copy_live(db, e, n, total, &o, err, errlen);
    segment **newsegs = NULL, **oldsegs = NULL;
    size_t oldn = db->nsegs;
    if (rc == 0) {
        newsegs = malloc((o.n + 1) * sizeof *newsegs);
        if (!newsegs)
            rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    if (rc) {
        out_discard(&o, 1);
        db->next_segment = saved_next;
        free(o.buf);
        free(e);
        db_exclusive_end(db);
        return rc;
    }
    for (size_t i = 0; i < o.n; i++)
        seg_map(db, o.segs[i], o.segs[i]->size);
    /* Switch the in-memory state to [outputs..., active]. */
    if (o.n)
        memcpy(newsegs, o.segs, o.n * sizeof *newsegs);
    newsegs[o.n] = a;
    pthread_rwlock_wrlock(&db->rw);
    oldsegs = db->segs;
    db->segs = newsegs;
    db->nsegs = o.n + 1;
    db->capsegs = o.n + 1;
    for (size_t i = 0; i < oldn - 1; i++)
        db->byno[oldsegs[i]->no] = NULL;
    int grown = 0;
    for (size_t i = 0; i < o.n; i++) {
        if (o.segs[i]->no >= db->nbyno) {
            size_t nn = (size_t)o.segs[i]->no * 2 + 16;
            segment **nb = realloc(db->byno, nn * sizeof *nb);
            if (!nb) {
                grown = -1;
                break;
            }
            memset(nb + db->nbyno, 0, (nn - db->nbyno) * sizeof *nb);
            db->byno = nb;
            db->nbyno = nn;
        }
        db->byno[o.segs[i]->no] = o.segs[i];
    }
    for (size_t i = 0; i < n && grown == 0; i++)
        keydir_cas(db->kd, e[i].key, e[i].klen, e[i].old, e[i].neu);
    db_recount_live(db);
    pthread_rwlock_unlock(&db->rw);

    rc = grown ? seterr(err, errlen, S4KV_ENOMEM, "out of memory") : 0;
    if (rc == 0)
        rc = db_checkpoint_locked(db, err, errlen);
    if (rc && !db->failed) {
        /* Not committed: go back to the old segments and drop the outputs. */
        pthread_rwlock_wrlock(&db->rw);
        for (size_t i = 0; i < n && grown == 0; i++)
            keydir_cas(db->kd, e[i].key, e[i].klen, e[i].neu, e[i].old);
        for (size_t i = 0; i < o.n; i++)
            if (o.segs[i]->no < db->nbyno)
                db->byno[o.segs[i]->no] = NULL;
        for (size_t i = 0; i < oldn; i++)
            db->byno[oldsegs[i]->no] = oldsegs[i];
        free(db->segs);
        db->segs = oldsegs;
        db->nsegs = db->capsegs = oldn;
        db_recount_live(db);
        pthread_rwlock_unlock(&db->rw);
        out_discard(&o, 1);
        db->next_segment = saved_next;
    } else {
        /* Committed (or uncertain: then keep every file for reopen to sort
         * out, and only drop them from memory). */
        uint64_t freed = 0;
        for (size_t i = 0; i < oldn - 1; i++) {
            segment *s = oldsegs[i];
            char path[4096];
            seg_path(db, s->no, path, sizeof path);
            seg_close(db, s);
            freed += s->size;
            if (rc == 0)
                db->v->unlink(db->v, path);
            free(s);
        }
        free(oldsegs);
        free(o.segs);
        if (rc == 0) {
            db->v->fsync_dir(db->v, db->dir);
            uint64_t kept = 0;
            for (size_t i = 0; i < db->nsegs; i++)
                kept += db->segs[i]->size;
            db_log(db, "compaction: %zu live keys, %" PRIu64 " bytes of old segments replaced by "
                       "%" PRIu64 " bytes in %zu segments", n, freed, kept, db->nsegs);
        }
    }
    free(o.buf);
    free(e);
    db_exclusive_end(db);
    return rc;
}

int s4kv_rebuild_index(s4kv_db *db, char *err, size_t errlen)
{
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    int rc = db_exclusive_begin(db);
    if (rc)
        return seterr(err, errlen, rc, "out of memory");
    keydir *kd = NULL;
    rc = db->failed ? seterr(err, errlen, S4KV_ECLOSED, "an earlier write failed; reopen")
                    : db_replay_all(db, &kd, 0, err, errlen);
    if (rc == 0) {
        pthread_rwlock_wrlock(&db->rw);
        keydir_free(db->kd);
        db->kd = kd;
        db_recount_live(db);
        pthread_rwlock_unlock(&db->rw);
        if (!db->read_only)
            rc = db_checkpoint_locked(db, err, errlen);
    }
    db_exclusive_end(db);
    return rc;
}

typedef struct vctx {
    s4kv_db *db;
    keydir *kd;
    uint64_t bad;
} vctx;

static int verify_cb(void *ctx, const segment *s, uint64_t off, const rec_view *r)
{
    vctx *c = ctx;
    if (r->type == REC_PUT && (r->flags & REC_SNAPPY)) {
        size_t ulen;
        if (snappy_uncompressed_length((const char *)r->val, r->slen, &ulen) != SNAPPY_OK ||
            ulen != r->rlen ||
            snappy_validate_compressed_buffer((const char *)r->val, r->slen) != SNAPPY_OK) {
            db_log(c->db, "verify: data_%06u.s4kv offset %" PRIu64 ": Snappy value does not "
                          "decode", s->no, off);
            c->bad++;
        }
    }
    return replay_apply(c->db, c->kd, s, off, r);
}

int s4kv_verify(s4kv_db *db, s4kv_verify_report *rep, char *err, size_t errlen)
{
    s4kv_verify_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    int rc = db_exclusive_begin(db);
    if (rc)
        return seterr(err, errlen, rc, "out of memory");
    vctx c = {db, keydir_new(keydir_count(db->kd), db->hash), 0};
    if (!c.kd)
        rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < db->nsegs; i++)
        total += db->segs[i]->size;
    uint64_t saved_seq = db->next_seq;
    for (size_t i = 0; rc == 0 && i < db->nsegs; i++) {
        segment *s = db->segs[i];
        scan_result res;
        rc = seg_scan(db, s, SEG_HDR, 1, verify_cb, &c, c.kd, &res, err, errlen);
        if (rc)
            break;
        rep->segments++;
        rep->bytes += s->size;
        rep->batches += res.batches;
        rep->records += res.records;
        rep->bad_records += res.bad;
        if (res.torn) {
            rep->bad_records++;
            db_log(db, "verify: data_%06u.s4kv: %" PRIu64 " bytes at offset %" PRIu64
                       " are not a whole batch", s->no, s->size - res.end, res.end);
        }
        done += s->size;
        db_progress(db, "verify", done, total);
    }
    db->next_seq = saved_seq;
    rep->bad_records += c.bad;
    if (rc == 0) {
        rep->keys = keydir_count(c.kd);
        size_t pos = 0;
        const void *k;
        size_t kl;
        keydir_loc a, b;
        while (keydir_next(c.kd, &pos, &k, &kl, &a)) {
            if (!keydir_get(db->kd, k, kl, &b) || a.seg != b.seg || a.off != b.off ||
                a.len != b.len) {
                char kb[300];
                rep->index_mismatches++;
                db_log(db, "verify: key '%s': the log has it at data_%06u.s4kv offset %u, the "
                           "index does not", key_str(k, kl, kb, sizeof kb), a.seg, a.off);
            }
        }
        pos = 0;
        while (keydir_next(db->kd, &pos, &k, &kl, &b)) {
            if (!keydir_get(c.kd, k, kl, &a)) {
                char kb[300];
                rep->index_mismatches++;
                db_log(db, "verify: key '%s': the index points at data_%06u.s4kv offset %u, "
                           "where the log has no whole record of it",
                       key_str(k, kl, kb, sizeof kb), b.seg, b.off);
            }
        }
        if (rep->bad_records || rep->index_mismatches)
            rc = seterr(err, errlen, S4KV_ECORRUPT,
                        "verify found %" PRIu64 " bad records or frames and %" PRIu64
                        " index mismatches", rep->bad_records, rep->index_mismatches);
    }
    keydir_free(c.kd);
    db_exclusive_end(db);
    return rc;
}
