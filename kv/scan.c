/*
 * scan.c - reads a segment batch by batch (recovery, verify, compaction
 * planning). Invariant: the callback only ever sees records of whole batches
 * (kv/FORMAT.md "Batch"), except the checksum-valid records of a damaged batch
 * in the middle of the log, which is reported as corruption first. A torn
 * tail is never passed on, so a batch is applied whole or not at all.
 */
#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WIN_MIN (4u << 20)

typedef struct window {
    s4kv_db *db;
    const segment *s;
    uint8_t *buf;
    size_t cap;
    uint64_t start, len; /* bytes [start, start+len) of the segment are in buf */
    uint64_t size;       /* segment size */
} window;

/* Returns a pointer to bytes [off, off+n) or NULL (error in err; *rc set). */
static const uint8_t *win_get(window *w, uint64_t off, uint64_t n, int *rc, char *err,
                              size_t errlen)
{
    if (off >= w->start && off + n <= w->start + w->len)
        return w->buf + (off - w->start);
    if (n > w->cap) {
        size_t nc = w->cap;
        while (nc < n)
            nc *= 2;
        uint8_t *nb = realloc(w->buf, nc);
        if (!nb) {
            *rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory reading segment %u",
                         w->s->no);
            return NULL;
        }
        w->buf = nb;
        w->cap = nc;
    }
    uint64_t want = w->size - off < w->cap ? w->size - off : w->cap;
    if (want < n) {
        *rc = 0; /* past the end: not an error, just no bytes */
        return NULL;
    }
    int r = seg_read(w->db, w->s, off, w->buf, (size_t)want, err, errlen);
    if (r != 0) {
        *rc = r;
        w->len = 0;
        return NULL;
    }
    w->start = off;
    w->len = want;
    return w->buf;
}

/* Checks that a whole batch starts at off. Returns its total length, 0 when
 * it is not whole, or a negative error code. */
static int64_t batch_whole(window *w, uint64_t off, uint32_t *countp, char *err, size_t errlen)
{
    int rc = 0;
    const uint8_t *h = win_get(w, off, BATCH_HDR, &rc, err, errlen);
    if (!h)
        return rc;
    uint32_t count;
    uint64_t body;
    if (batch_hdr_parse(h, &count, &body) != 0)
        return 0;
    if (body > (uint64_t)S4KV_MAX_BATCH_BYTES + 65536u || off + BATCH_HDR + body > w->size)
        return 0;
    const uint8_t *p = win_get(w, off, BATCH_HDR + body, &rc, err, errlen);
    if (!p)
        return rc;
    p += BATCH_HDR;
    uint64_t left = body;
    for (uint32_t i = 0; i < count; i++) {
        rec_view r;
        const char *why;
        if (rec_parse(p, left, &r, &why) != 0)
            return 0;
        p += r.len;
        left -= r.len;
    }
    if (left != 0)
        return 0;
    *countp = count;
    return (int64_t)(BATCH_HDR + body);
}

/* Finds the next whole batch after `from`; returns its offset or 0. */
static uint64_t find_next_batch(window *w, uint64_t from, int *rc, char *err, size_t errlen)
{
    static const uint8_t magic[4] = {'S', '4', 'K', 'B'};
    uint64_t off = from + 1;
    while (off + BATCH_HDR <= w->size) {
        uint64_t n = w->size - off < WIN_MIN ? w->size - off : WIN_MIN;
        const uint8_t *p = win_get(w, off, n, rc, err, errlen);
        if (!p)
            return 0;
        const uint8_t *hit = memmem(p, (size_t)n, magic, 4);
        if (!hit) {
            off += n > 3 ? n - 3 : 1;
            continue;
        }
        uint64_t cand = off + (uint64_t)(hit - p);
        uint32_t count;
        int64_t t = batch_whole(w, cand, &count, err, errlen);
        if (t < 0) {
            *rc = (int)t;
            return 0;
        }
        if (t > 0)
            return cand;
        off = cand + 1;
    }
    return 0;
}

int seg_scan(s4kv_db *db, const segment *s, uint64_t start, int search_past_bad,
             scan_fn fn, void *ctx, const keydir *prefetch, scan_result *res, char *err,
             size_t errlen)
{
    memset(res, 0, sizeof *res);
    /* the window grows on demand (win_get): a small segment gets a small one */
    uint64_t want = s->size > start ? s->size - start : 0;
    window w = {.db = db, .s = s, .cap = want < WIN_MIN ? (size_t)want + 64 : WIN_MIN,
                .size = s->size};
    w.buf = malloc(w.cap);
    if (!w.buf)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory reading segment %u", s->no);
    int rc = 0;
    uint64_t off = start < SEG_HDR ? SEG_HDR : start;
    while (off < w.size) {
        uint32_t count = 0;
        int64_t t = batch_whole(&w, off, &count, err, errlen);
        if (t < 0) {
            rc = (int)t;
            break;
        }
        if (t > 0) {
            const uint8_t *p = win_get(&w, off, (uint64_t)t, &rc, err, errlen) + BATCH_HDR;
            uint64_t roff = off + BATCH_HDR;
            if (prefetch) {
                /* Touch the keydir slots of the whole batch first, so the
                 * inserts below do not wait for each cache miss in turn. */
                const uint8_t *q = p;
                for (uint32_t i = 0; i < count; i++) {
                    keydir_prefetch(prefetch, q + REC_HDR, get_u32(q + 20));
                    q += REC_HDR + get_u32(q + 20) + get_u32(q + 24);
                }
            }
            for (uint32_t i = 0; i < count && rc == 0; i++) {
                rec_view r;
                const char *why;
                rec_parse(p, (size_t)(off + (uint64_t)t - roff), &r, &why);
                rc = fn ? fn(ctx, s, roff, &r) : 0;
                p += r.len;
                roff += r.len;
            }
            if (rc)
                break;
            res->batches++;
            res->records += count;
            off += (uint64_t)t;
            continue;
        }
        /* Not a whole batch at off: a torn tail, or damage mid-log. */
        uint64_t next = search_past_bad ? find_next_batch(&w, off, &rc, err, errlen) : 0;
        if (rc)
            break;
        if (!next) {
            res->torn = 1;
            break;
        }
        res->bad++;
        db_log(db, "corruption: segment %u (data_%06u.s4kv) bytes %llu..%llu are not a whole "
                   "batch; skipped (checksum-valid records in it kept)",
               s->no, s->no, (unsigned long long)off, (unsigned long long)next);
        /* Salvage the checksum-valid records of a batch whose header is intact. */
        const uint8_t *h = win_get(&w, off, next - off, &rc, err, errlen);
        uint32_t cnt;
        uint64_t body;
        if (h && batch_hdr_parse(h, &cnt, &body) == 0) {
            uint64_t roff = off + BATCH_HDR;
            for (uint32_t i = 0; i < cnt && roff < next && rc == 0; i++) {
                rec_view r;
                const char *why;
                if (rec_parse(h + (roff - off), (size_t)(next - roff), &r, &why) != 0)
                    break;
                rc = fn ? fn(ctx, s, roff, &r) : 0;
                res->records++;
                roff += r.len;
            }
        }
        if (rc)
            break;
        off = next;
    }
    res->end = off;
    free(w.buf);
    return rc;
}

static void quiet_log(void *ctx, const char *line)
{
    char *first = ctx;
    if (!first[0])
        snprintf(first, 256, "%s", line);
}

int seg_file_check(const char *path, uint32_t no, uint64_t len, uint64_t *records, char *err,
                   size_t errlen)
{
    s4kv_db db;
    memset(&db, 0, sizeof db);
    char first[256] = "";
    db.v = vfs_posix();
    db.opt.log = quiet_log;
    db.opt.log_ctx = first;
    segment s = {.no = no, .fd = -1, .sealed = 1, .size = len};
    int fd = db.v->open(db.v, path, O_RDONLY, 0);
    if (fd < 0)
        return seterr(err, errlen, errno_code(fd), "open %s: %s", path, strerror(-fd));
    s.fd = fd;
    uint64_t size = 0;
    uint8_t hdr[SEG_HDR];
    const char *why = NULL;
    int rc = db.v->fsize(db.v, fd, &size);
    if (rc == 0 && size < len)
        rc = seterr(err, errlen, S4KV_ECORRUPT, "%s: %llu bytes, expected at least %llu", path,
                    (unsigned long long)size, (unsigned long long)len);
    else if (rc == 0 && (len < SEG_HDR || db.v->pread(db.v, fd, hdr, SEG_HDR, 0) != SEG_HDR ||
                         seg_hdr_check(hdr, no, &why) != 0))
        rc = seterr(err, errlen, S4KV_ECORRUPT, "%s: %s", path, why ? why : "short header");
    scan_result res;
    if (rc == 0 && (rc = seg_scan(&db, &s, SEG_HDR, 1, NULL, NULL, NULL, &res, err, errlen)) == 0) {
        if (res.bad || res.torn || res.end != len)
            rc = seterr(err, errlen, S4KV_ECORRUPT, "%s: not whole batches up to byte %llu (%s)",
                        path, (unsigned long long)len,
                        first[0] ? first : "bad bytes at the end");
        else if (records)
            *records = res.records;
    }
    db.v->close(db.v, fd);
    return rc;
}
