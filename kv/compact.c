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
    /* Segment numbers are the log owner's to hand out (rotations take them
     * too, and the manifest records the next one). */
    if (db_exclusive_begin(db)) {
        free(s);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    s->no = db->next_segment++;
    db_exclusive_end(db);
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

/*
 * Online compaction. Writers and readers go on while it runs; they wait only
 * for the short steps marked [stall] (measured: s4kv_compact_stats).
 *
 *  1. [stall] Seal the active segment; the inputs are every segment before
 *     the new active one (a prefix of manifest order, so dropping their
 *     tombstones is safe: every record they could shadow is an input too).
 *  2. Scan the inputs in manifest order. A put record is live when the keydir
 *     points at exactly it (checked under the read lock); live records are
 *     copied byte for byte into output segments (numbers taken from the log
 *     owner), which are fdatasynced and whose names are made durable.
 *  3. Publish the outputs for reads (segment table by number), set `moving`
 *     (no checkpoint or verify from here on), then move the keydir in chunks
 *     of CAS_CHUNK entries, each [stall] under the write lock: an entry moves
 *     only if it still points at the input record (keydir_cas), so a key
 *     written or deleted meanwhile keeps its newer location.
 *  4. [stall] As the log owner: manifest order becomes [outputs..., the
 *     segments written since step 1], the old checkpoint (it points into the
 *     inputs) is dropped from the manifest, and the manifest is committed.
 *     Then the inputs are unlinked. A later checkpoint (close, upload,
 *     checkpoint_bytes) records the new layout; until then reopen replays.
 *
 * Crash safety is the offline design's: before the manifest rename the old
 * MANIFEST names only untouched old files (outputs are orphans, removed at
 * open); after it, the new one names only fdatasynced files. If the commit
 * fails, the keydir is moved back and the outputs are removed.
 */
#define CAS_CHUNK 1024

typedef struct moved {
    uint64_t koff;       /* into cctx.keys */
    uint32_t klen;
    keydir_loc old, neu;
} moved;

typedef struct cctx {
    s4kv_db *db;
    outw *o;
    moved *mv;
    size_t n, cap;
    uint8_t *keys;
    size_t klen, kcap;
    uint64_t done, total;
    int rc;
    char *err;
    size_t errlen;
} cctx;

static int copy_cb(void *ctx, const segment *s, uint64_t off, const rec_view *r)
{
    cctx *c = ctx;
    s4kv_db *db = c->db;
    if (r->type != REC_PUT)
        return 0;
    keydir_loc cur;
    pthread_rwlock_rdlock(&db->rw);
    int live = keydir_get(db->kd, r->key, r->klen, &cur) && cur.seg == s->no && cur.off == off;
    pthread_rwlock_unlock(&db->rw);
    if (!live)
        return 0;
    if (cur.len != r->len) {
        c->rc = seterr(c->err, c->errlen, S4KV_ECORRUPT,
                       "compaction abandoned: data_%06u.s4kv offset %" PRIu64 ": record of %u "
                       "bytes, the index says %u; nothing was changed; run verify",
                       s->no, off, r->len, cur.len);
        return -1;
    }
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 4096;
        moved *nm = realloc(c->mv, nc * sizeof *nm);
        if (!nm)
            goto oom;
        c->mv = nm;
        c->cap = nc;
    }
    if (c->klen + r->klen > c->kcap) {
        size_t nc = c->kcap ? c->kcap * 2 : 1u << 16;
        while (nc < c->klen + r->klen)
            nc *= 2;
        uint8_t *nk = realloc(c->keys, nc);
        if (!nk)
            goto oom;
        c->keys = nk;
        c->kcap = nc;
    }
    moved *m = &c->mv[c->n];
    m->koff = c->klen;
    m->klen = r->klen;
    m->old = cur;
    memcpy(c->keys + c->klen, r->key, r->klen);
    /* the record's bytes start REC_HDR before its key (kv/FORMAT.md) */
    int rc = out_add(c->o, r->key - REC_HDR, r->len, &m->neu, c->err, c->errlen);
    if (rc) {
        c->rc = rc;
        return -1;
    }
    c->klen += r->klen;
    c->n++;
    return 0;
oom:
    c->rc = seterr(c->err, c->errlen, S4KV_ENOMEM, "out of memory during compaction");
    return -1;
}

/* Step 2: copies the live records of in[0..nin) into c->o. */
static int copy_live(cctx *c, segment **in, size_t nin)
{
    s4kv_db *db = c->db;
    int rc = 0;
    for (size_t i = 0; i < nin && rc == 0; i++) {
        scan_result res;
        rc = seg_scan(db, in[i], SEG_HDR, 1, copy_cb, c, NULL, &res, c->err, c->errlen);
        if (rc && c->rc)
            rc = c->rc;
        else if (rc == 0 && (res.bad || res.torn))
            rc = seterr(c->err, c->errlen, S4KV_ECORRUPT,
                        "compaction abandoned: data_%06u.s4kv has %" PRIu64 " damaged "
                        "region(s); nothing was changed; run verify", in[i]->no,
                        res.bad + (uint64_t)res.torn);
        c->done += in[i]->size;
        db_progress(db, "compact", c->done, c->total);
    }
    outw *o = c->o;
    if (rc == 0)
        rc = out_flush(o, c->err, c->errlen);
    for (size_t i = 0; rc == 0 && i < o->n; i++) {
        int s = db->v->fdatasync(db->v, o->segs[i]->fd);
        if (s)
            rc = seterr(c->err, c->errlen, errno_code(s), "fdatasync data_%06u.s4kv: %s",
                        o->segs[i]->no, strerror(-s));
    }
    if (rc == 0 && o->n) {
        int s = db->v->fsync_dir(db->v, db->dir); /* names durable before the manifest */
        if (s)
            rc = seterr(c->err, c->errlen, errno_code(s), "fsync %s: %s", db->dir,
                        strerror(-s));
    }
    return rc;
}

/* Grows db->byno to hold segment number no. Caller holds rw for writing. */
static int byno_fit(s4kv_db *db, uint32_t no)
{
    if (no < db->nbyno)
        return 0;
    size_t nn = (size_t)no * 2 + 16;
    segment **nb = realloc(db->byno, nn * sizeof *nb);
    if (!nb)
        return -1;
    memset(nb + db->nbyno, 0, (nn - db->nbyno) * sizeof *nb);
    db->byno = nb;
    db->nbyno = nn;
    return 0;
}

static void set_moving(s4kv_db *db, int v)
{
    pthread_mutex_lock(&db->qmu);
    __atomic_store_n(&db->moving, v, __ATOMIC_RELEASE);
    if (!v)
        pthread_cond_broadcast(&db->move_cv);
    pthread_mutex_unlock(&db->qmu);
}

/* Moves entries [from, to) of c->mv (neu <- old when back is 0, else the
 * reverse), CAS_CHUNK per write-lock hold; returns the longest hold (us). */
static uint64_t move_keys(cctx *c, int back, uint64_t *moved_n)
{
    s4kv_db *db = c->db;
    uint64_t longest = 0;
    for (size_t i = 0; i < c->n;) {
        size_t end = c->n - i > CAS_CHUNK ? i + CAS_CHUNK : c->n;
        pthread_rwlock_wrlock(&db->rw);
        uint64_t t0 = db_now_us(); /* the stall others see: the hold, not our wait */
        for (; i < end; i++) {
            moved *m = &c->mv[i];
            keydir_loc from = back ? m->neu : m->old, to = back ? m->old : m->neu;
            if (keydir_cas(db->kd, c->keys + m->koff, m->klen, from, to)) {
                segment *ns = db_seg(db, to.seg), *os = db_seg(db, from.seg);
                if (ns)
                    ns->live += to.len;
                if (os)
                    os->live -= from.len;
                if (moved_n)
                    (*moved_n)++;
            }
        }
        pthread_rwlock_unlock(&db->rw);
        uint64_t d = db_now_us() - t0;
        if (d > longest)
            longest = d;
    }
    return longest;
}

static int compact_online(s4kv_db *db, char *err, size_t errlen)
{
    uint64_t t_start = db_now_us(), pause = 0;
    /* 1. seal; the inputs are everything before the new active segment.
     * Flush the active segment first, outside the lock, so the seal's own
     * fdatasync finds little left to write. */
    pthread_rwlock_rdlock(&db->rw);
    segment *act = db->segs[db->nsegs - 1];
    int afd = act->fd; /* the active segment's fd is closed only by close */
    uint32_t ano = act->no;
    pthread_rwlock_unlock(&db->rw);
    if (afd >= 0) {
        int s = db->v->fdatasync(db->v, afd);
        if (s) {
            /* fsyncgate: the error may not be reported again; stop writes */
            if (db_exclusive_begin(db) == 0) {
                db->failed = 1;
                db_exclusive_end(db);
            }
            return seterr(err, errlen, errno_code(s), "fdatasync data_%06u.s4kv: %s", ano,
                          strerror(-s));
        }
    }
    int rc = db_exclusive_begin(db);
    if (rc)
        return seterr(err, errlen, rc, "out of memory");
    uint64_t t0 = db_now_us();
    if (db->failed) {
        db_exclusive_end(db);
        return seterr(err, errlen, S4KV_ECLOSED, "an earlier write failed; reopen");
    }
    segment *a = db->segs[db->nsegs - 1];
    if (a->size > SEG_HDR && (rc = db_rotate(db, err, errlen))) {
        db_exclusive_end(db);
        return rc;
    }
    size_t nin = db->nsegs - 1;
    if (nin == 0) { /* nothing sealed: nothing to do */
        db_exclusive_end(db);
        return 0;
    }
    segment **in = malloc((nin ? nin : 1) * sizeof *in);
    if (!in) {
        db_exclusive_end(db);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    memcpy(in, db->segs, nin * sizeof *in);
    uint64_t total = 0, in_bytes = 0;
    for (size_t i = 0; i < nin; i++)
        total += in[i]->size;
    in_bytes = total;
    db_exclusive_end(db);
    pause = db_now_us() - t0;

    /* 2. copy the live records */
    outw o = {.db = db, .len = BATCH_HDR};
    cctx c = {.db = db, .o = &o, .total = total, .err = err, .errlen = errlen};
    rc = copy_live(&c, in, nin);

    /* 3. publish the outputs for reads, then move the keydir to them */
    int published = 0;
    if (rc == 0) {
        for (size_t i = 0; i < o.n; i++)
            seg_map(db, o.segs[i], o.segs[i]->size);
        pthread_rwlock_wrlock(&db->rw);
        t0 = db_now_us();
        for (size_t i = 0; i < o.n && rc == 0; i++) {
            if (byno_fit(db, o.segs[i]->no))
                rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
            else
                db->byno[o.segs[i]->no] = o.segs[i];
        }
        pthread_rwlock_unlock(&db->rw);
        uint64_t d = db_now_us() - t0;
        published = 1;
        set_moving(db, 1);
        if (d > pause)
            pause = d;
    }
    uint64_t nmoved = 0;
    if (rc == 0) {
        uint64_t d = move_keys(&c, 0, &nmoved);
        if (d > pause)
            pause = d;
    }

    /* 4. commit the new layout as the log owner */
    segment **oldsegs = NULL;
    size_t oldn = 0;
    char *old_ckpt = NULL;
    int committed = 0, uncertain = 0;
    if (rc == 0) {
        rc = db_exclusive_begin(db);
        t0 = db_now_us();
        if (rc) {
            rc = seterr(err, errlen, rc, "out of memory");
        } else {
            segment **newsegs = NULL;
            if (db->failed)
                rc = seterr(err, errlen, S4KV_ECLOSED, "an earlier write failed; reopen");
            else if (!(newsegs = malloc((o.n + db->nsegs - nin) * sizeof *newsegs)))
                rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
            if (rc == 0) {
                if (o.n)
                    memcpy(newsegs, o.segs, o.n * sizeof *newsegs);
                memcpy(newsegs + o.n, db->segs + nin, (db->nsegs - nin) * sizeof *newsegs);
                pthread_rwlock_wrlock(&db->rw);
                oldsegs = db->segs;
                oldn = db->nsegs;
                db->segs = newsegs;
                db->nsegs = db->capsegs = o.n + oldn - nin;
                pthread_rwlock_unlock(&db->rw);
                old_ckpt = db->ckpt_name;
                db->ckpt_name = NULL;
                rc = manifest_commit(db, err, errlen);
                committed = rc == 0;
                /* renamed but not durable: keep the new table, every file
                 * stays for reopen to sort out */
                uncertain = rc != 0 && db->failed;
                if (committed || uncertain) {
                    pthread_rwlock_wrlock(&db->rw);
                    for (size_t i = 0; i < nin; i++)
                        db->byno[in[i]->no] = NULL;
                    pthread_rwlock_unlock(&db->rw);
                } else {
                    /* not committed: the old table and checkpoint stand */
                    pthread_rwlock_wrlock(&db->rw);
                    free(db->segs);
                    db->segs = oldsegs;
                    db->nsegs = db->capsegs = oldn;
                    pthread_rwlock_unlock(&db->rw);
                    oldsegs = NULL;
                    db->ckpt_name = old_ckpt;
                    old_ckpt = NULL;
                }
            }
            db_exclusive_end(db);
        }
        uint64_t d = db_now_us() - t0;
        if (d > pause)
            pause = d;
    }

    if (!committed && !uncertain && published) {
        /* move every entry back, then withdraw the outputs */
        move_keys(&c, 1, NULL);
        pthread_rwlock_wrlock(&db->rw);
        for (size_t i = 0; i < o.n; i++)
            if (o.segs[i]->no < db->nbyno && db->byno[o.segs[i]->no] == o.segs[i])
                db->byno[o.segs[i]->no] = NULL;
        pthread_rwlock_unlock(&db->rw);
    }
    if (published)
        set_moving(db, 0);
    if (!committed && !uncertain) {
        out_discard(&o, 1); /* no manifest names them */
    } else if (uncertain) {
        for (size_t i = 0; i < nin; i++) {
            seg_close(db, in[i]);
            free(in[i]);
        }
        free(o.segs); /* the table owns the outputs now */
    } else {
        /* committed: the inputs and the old checkpoint are garbage */
        uint64_t kept = 0;
        for (size_t i = 0; i < nin; i++) {
            char path[4096];
            seg_path(db, in[i]->no, path, sizeof path);
            seg_close(db, in[i]);
            db->v->unlink(db->v, path);
            free(in[i]);
        }
        if (old_ckpt) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", db->dir, old_ckpt);
            db->v->unlink(db->v, path);
        }
        db->v->fsync_dir(db->v, db->dir);
        for (size_t i = 0; i < o.n; i++)
            kept += o.segs[i]->size;
        free(o.segs);
        db->compactions++;
        db->compact_pause_us = pause;
        db->compact_ms = (db_now_us() - t_start) / 1000;
        db_log(db, "compaction: %" PRIu64 " of %zu live records moved, %" PRIu64 " bytes of "
                   "%zu old segments replaced by %" PRIu64 " bytes in %zu; longest stall %"
                   PRIu64 " us, %" PRIu64 " ms in all", nmoved, c.n, in_bytes, nin, kept,
               o.n, pause, db->compact_ms);
    }
    free(old_ckpt);
    free(oldsegs);
    free(in);
    free(o.buf);
    free(c.mv);
    free(c.keys);
    return rc;
}

int s4kv_compact(s4kv_db *db, char *err, size_t errlen)
{
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    if (db->read_only)
        return seterr(err, errlen, S4KV_EREADONLY, "%s is open read-only", db->dir);
    pthread_mutex_lock(&db->cmu);
    int rc = compact_online(db, err, errlen);
    pthread_mutex_unlock(&db->cmu);
    return rc;
}

int s4kv_compact_stats(s4kv_db *db, uint64_t *count, uint64_t *pause_us, uint64_t *total_ms)
{
    if (!db)
        return S4KV_EINVAL;
    pthread_mutex_lock(&db->cmu);
    if (count)
        *count = db->compactions;
    if (pause_us)
        *pause_us = db->compact_pause_us;
    if (total_ms)
        *total_ms = db->compact_ms;
    pthread_mutex_unlock(&db->cmu);
    return 0;
}
int s4kv_rebuild_index(s4kv_db *db, char *err, size_t errlen)
{
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    int rc = db_exclusive_begin_ckpt(db);
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
    int rc = db_exclusive_begin_ckpt(db);
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
