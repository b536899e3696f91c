/*
 * checkpoint.c - the index checkpoint codec (declared in keydir.h, format in
 * kv/FORMAT.md, "Index checkpoint"): a keydir plus the log position it
 * covers, streamed to a writer and from a reader or a memory buffer. File
 * I/O is the caller's.
 *
 * Layout: a 56-byte header (magic, version, position, next sequence,
 * generation, count, xxh3 of the 48 bytes before), N entries of
 * {u32 seg, u32 off, u32 len, u16 klen, key}, and an 8-byte trailer, the xxh3
 * of all entry bytes. Little-endian throughout.
 *
 * Version 2 (written) has the layout of version 1 (still read) and adds an
 * order: entries ascend by the keydir's folded hash (keydir_walk). Loading
 * then fills the hash table front to back (keydir_put_sorted) instead of
 * missing the cache once a key, so decode is one sequential pass over the
 * file, the table and the arena. Why not a memory image of the table and
 * arena: it would be larger (empty slots, stored hashes, padding: about 44
 * bytes a key against 30 for 16-byte keys), and a checkpoint is written with
 * fdatasync, whose cost on this class of machine is about 1 ms per MB; the
 * sorted stream costs one xxh3 of each key at load and keeps the loader free
 * to size the table for the count, and nothing in it must be trusted: the
 * table is built by the loader, never read from the file.
 *
 * Invariant: decoding trusts nothing in the input. It reads only inside the
 * given size, checks the header checksum before it believes a field, and
 * accepts the input only when exactly `count` well-formed entries with
 * distinct keys fill the space between header and trailer and the trailer
 * checksum matches (a memory buffer is checked before parsing; a stream, as
 * it is read, so the keydir built meanwhile is discarded on a mismatch).
 * Entries in the wrong order still load (keydir_put_sorted falls back to
 * ordinary inserts): the order is a speed contract, not a validity one.
 */
#include "keydir.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#define CKPT_MAGIC "S4KVIDX1"
#define CKPT_VERSION 2 /* written; 1 (no order) is still read */
#define HDR_LEN 56
#define HDR_SUMMED 48 /* bytes covered by the header checksum */
#define TRAILER_LEN 8
#define ENT_FIXED 14  /* seg, off, len, klen */
#define CHUNK (256 * 1024) /* write and read buffer; > the largest entry */

_Static_assert(CHUNK >= ENT_FIXED + 65535 + TRAILER_LEN, "an entry fits a chunk");

/* ---- little-endian helpers */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- encode
 *
 * A checkpoint of PAR_MIN entries or more is encoded by two threads: the
 * caller walks the hashes below 2^31 and streams them to the writer, a
 * helper walks the upper half into a queue of pieces at the same time, and
 * the caller writes the queue after its own half. The file is the same as
 * a one-thread encode (the halves are consecutive in hash order). The queue
 * holds at most PAR_QUEUE bytes: past that the helper waits for the writer,
 * so memory stays bounded for any index size. */
#define PAR_MIN 65536
#define PAR_SPLIT 0x80000000u

size_t ckpt_par_queue_bytes = (size_t)64 << 20;

/* Where encoded bytes go: returns 0, or non-zero to stop. */
typedef int (*sink_fn)(void *ctx, const uint8_t *buf, size_t len);

/* Encodes the walk's entries into out (CHUNK bytes, *used of them taken),
 * handing the buffer to sink whenever the next entry does not fit. Counts
 * entries in *n. Returns 0, -1 when out of memory, or 1 when sink failed. */
static int walk_encode(keydir_walk *w, uint8_t *out, size_t *used, sink_fn sink, void *sctx,
                       uint64_t *n)
{
    const void *key;
    size_t klen;
    keydir_loc loc;
    int r;
    while ((r = keydir_walk_next(w, &key, &klen, &loc)) == 1) {
        if (CHUNK - *used < ENT_FIXED + klen) {
            if (sink(sctx, out, *used) != 0)
                return 1;
            *used = 0;
        }
        uint8_t *p = out + *used;
        put32(p, loc.seg);
        put32(p + 4, loc.off);
        put32(p + 8, loc.len);
        put16(p + 12, (uint16_t)klen);
        memcpy(p + ENT_FIXED, key, klen);
        *used += ENT_FIXED + klen;
        (*n)++;
    }
    return r < 0 ? -1 : 0;
}

/* The caller's sink: checksums entry bytes (the header, the first `skip`
 * bytes of the first piece, is not summed) and writes. */
typedef struct wsink {
    XXH3_state_t *st;
    ckpt_write_fn wr;
    void *ctx;
    size_t skip;
} wsink;

static int write_sink(void *ctx, const uint8_t *buf, size_t len)
{
    wsink *k = ctx;
    XXH3_64bits_update(k->st, buf + k->skip, len - k->skip);
    k->skip = 0;
    return k->wr(k->ctx, buf, len) != 0;
}

typedef struct piece {
    struct piece *next;
    size_t len;
    uint8_t data[];
} piece;

/* The helper's half and the queue between it and the caller. */
typedef struct part {
    const keydir *kd;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    piece *head, *tail;
    size_t queued; /* bytes in the queue */
    int done;      /* the helper has finished (rc says how) */
    int stop;      /* the caller gave up: the helper stops at its next piece */
    int rc;        /* 0, or -1 (out of memory) */
    uint64_t n;    /* entries the helper encoded */
} part;

static int queue_sink(void *ctx, const uint8_t *buf, size_t len)
{
    part *P = ctx;
    piece *pc = malloc(sizeof *pc + len);
    if (!pc)
        return 1;
    pc->next = NULL;
    pc->len = len;
    memcpy(pc->data, buf, len);
    pthread_mutex_lock(&P->mu);
    while (P->queued >= ckpt_par_queue_bytes && !P->stop)
        pthread_cond_wait(&P->cv, &P->mu);
    if (P->stop) {
        pthread_mutex_unlock(&P->mu);
        free(pc);
        return 1;
    }
    if (P->tail)
        P->tail->next = pc;
    else
        P->head = pc;
    P->tail = pc;
    P->queued += len;
    pthread_cond_broadcast(&P->cv);
    pthread_mutex_unlock(&P->mu);
    return 0;
}

static void *part_main(void *arg)
{
    part *P = arg;
    keydir_walk *w = keydir_walk_new_range(P->kd, PAR_SPLIT, UINT32_MAX);
    uint8_t *out = malloc(CHUNK);
    size_t used = 0;
    int rc = (!w || !out) ? -1 : walk_encode(w, out, &used, queue_sink, P, &P->n);
    if (rc == 0 && used > 0 && queue_sink(P, out, used) != 0)
        rc = 1;
    free(out);
    keydir_walk_free(w);
    pthread_mutex_lock(&P->mu);
    P->rc = rc == 0 ? 0 : -1; /* a failed queue_sink: out of memory, or stopped */
    P->done = 1;
    pthread_cond_broadcast(&P->cv);
    pthread_mutex_unlock(&P->mu);
    return NULL;
}

/* Streams the checkpoint to wr in pieces of up to CHUNK bytes (the queued
 * half in the pieces its helper made): the keydir in hash order
 * (keydir_walk), checksummed on the way. */
int ckpt_write(const keydir *kd, ckpt_header *h, ckpt_write_fn wr, void *ctx)
{
    int rc = 0, par = 0;
    uint8_t *out = malloc(CHUNK);
    XXH3_state_t st;
    part P;
    memset(&P, 0, sizeof P);
    P.kd = kd;
    pthread_t th;
    h->count = keydir_count(kd);
    if (h->count >= PAR_MIN && out) {
        pthread_mutex_init(&P.mu, NULL);
        pthread_cond_init(&P.cv, NULL);
        par = pthread_create(&th, NULL, part_main, &P) == 0;
        if (!par) {
            pthread_cond_destroy(&P.cv);
            pthread_mutex_destroy(&P.mu);
        }
    }
    keydir_walk *w = keydir_walk_new_range(kd, 0, par ? PAR_SPLIT - 1 : UINT32_MAX);
    if (!w || !out) {
        rc = -1;
        goto done;
    }
    XXH3_64bits_reset(&st);

    memcpy(out, CKPT_MAGIC, 8);
    put32(out + 8, CKPT_VERSION);
    put32(out + 12, h->pos_seg);
    put64(out + 16, h->pos_off);
    put64(out + 24, h->next_seq);
    put64(out + 32, h->generation);
    put64(out + 40, h->count);
    put64(out + 48, XXH3_64bits(out, HDR_SUMMED));

    size_t used = HDR_LEN;
    uint64_t n = 0;
    wsink ws = {&st, wr, ctx, HDR_LEN};
    rc = walk_encode(w, out, &used, write_sink, &ws, &n);
    if (rc == 0 && par) {
        /* the helper's half follows ours: write ours, then its pieces */
        if (write_sink(&ws, out, used) != 0)
            rc = 1;
        used = 0;
        for (;;) {
            pthread_mutex_lock(&P.mu);
            while (!P.head && !P.done)
                pthread_cond_wait(&P.cv, &P.mu);
            piece *pc = P.head;
            if (pc) {
                P.head = pc->next;
                if (!P.head)
                    P.tail = NULL;
                P.queued -= pc->len;
                pthread_cond_broadcast(&P.cv);
            }
            pthread_mutex_unlock(&P.mu);
            if (!pc)
                break;
            if (rc == 0 && write_sink(&ws, pc->data, pc->len) != 0)
                rc = 1;
            free(pc);
            if (rc != 0)
                break;
        }
    }
    if (rc == 0 && par && P.rc != 0)
        rc = -1;
    if (rc == 0 && n + P.n != h->count)
        rc = -1;
    if (rc != 0)
        goto done;
    XXH3_64bits_update(&st, out + ws.skip, used - ws.skip);
    if (CHUNK - used < TRAILER_LEN) {
        if (wr(ctx, out, used) != 0) {
            rc = 1;
            goto done;
        }
        used = 0;
    }
    put64(out + used, XXH3_64bits_digest(&st));
    used += TRAILER_LEN;
    if (wr(ctx, out, used) != 0)
        rc = 1;
done:
    if (par) {
        pthread_mutex_lock(&P.mu);
        P.stop = 1;
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
        pthread_join(th, NULL);
        for (piece *pc = P.head, *nx; pc; pc = nx) {
            nx = pc->next;
            free(pc);
        }
        pthread_cond_destroy(&P.cv);
        pthread_mutex_destroy(&P.mu);
    }
    free(out);
    keydir_walk_free(w);
    return rc;
}

typedef struct membuf {
    uint8_t *p;
    size_t len, cap;
} membuf;

static int mem_write(void *ctx, const void *buf, size_t len)
{
    membuf *m = ctx;
    if (m->cap - m->len < len) {
        size_t ncap = m->cap + m->cap / 2;
        if (ncap - m->len < len)
            ncap = m->len + len;
        uint8_t *n = realloc(m->p, ncap);
        if (!n)
            return -1;
        m->p = n;
        m->cap = ncap;
    }
    memcpy(m->p + m->len, buf, len);
    m->len += len;
    return 0;
}

int ckpt_encode(const keydir *kd, ckpt_header *h, uint8_t **buf, size_t *len)
{
    /* a guess of 16-byte keys; grows by 1.5x */
    membuf m = {NULL, 0, HDR_LEN + TRAILER_LEN + keydir_count(kd) * (ENT_FIXED + 16)};
    if (!(m.p = malloc(m.cap)))
        return -1;
    if (ckpt_write(kd, h, mem_write, &m) != 0) {
        free(m.p);
        return -1;
    }
    if (m.cap > m.len) { /* give back the slack of the guess */
        uint8_t *shrunk = realloc(m.p, m.len);
        if (shrunk)
            m.p = shrunk;
    }
    *buf = m.p;
    *len = m.len;
    return 0;
}

/* ---- decode */

/* The input: a memory buffer, or a reader filling a CHUNK-byte window. */
typedef struct src {
    const ckpt_reader *r;
    const uint8_t *mem; /* whole input, or NULL */
    uint8_t *win;       /* window: bytes [woff, woff + wlen) of the input */
    uint64_t woff;
    size_t wlen;
    uint64_t pos;       /* offset of the next byte to take */
    uint64_t body_end;  /* where the trailer starts */
    XXH3_state_t st;    /* over body bytes as the window reads them */
    int ioerr;
} src;

/* Refills the window so that it holds the next n bytes (the slow path of
 * take). Returns 0, or -1 when a read fails (s->ioerr). */
static __attribute__((noinline)) int refill(src *s, size_t n)
{
    size_t in = (size_t)(s->woff + s->wlen - s->pos); /* bytes left in the window */
    (void)n;
    memmove(s->win, s->win + (s->pos - s->woff), in);
    s->woff = s->pos;
    uint64_t from = s->woff + in, left = s->r->size - from;
    size_t want = CHUNK - in;
    if (want > left)
        want = (size_t)left;
    if (s->r->read(s->r->ctx, s->win + in, want, from) != 0) {
        s->ioerr = 1;
        return -1;
    }
    s->wlen = in + want;
    /* checksum the body bytes just read */
    uint64_t a = from < HDR_LEN ? HDR_LEN : from, b = from + want;
    if (b > s->body_end)
        b = s->body_end;
    if (a < b)
        XXH3_64bits_update(&s->st, s->win + (a - s->woff), (size_t)(b - a));
    return 0;
}

/* Returns the next n (<= CHUNK) bytes, or NULL when the input ends first
 * (or a read fails: s->ioerr). Valid until the next call. The common case,
 * bytes already in the window, is a bounds check and a pointer bump. */
static inline const uint8_t *take(src *s, size_t n)
{
    if (s->r->size - s->pos < n)
        return NULL;
    if (s->mem) {
        const uint8_t *p = s->mem + s->pos;
        s->pos += n;
        return p;
    }
    if ((size_t)(s->woff + s->wlen - s->pos) < n && refill(s, n) != 0)
        return NULL;
    const uint8_t *p = s->win + (s->pos - s->woff);
    s->pos += n;
    return p;
}

/* Where parse_body hands each well-formed entry (its key valid until the
 * next take): entry i, which starts at byte `at`, with h = keydir_hash of
 * its key. Returns 0, or -1 with the reason in err. */
typedef int (*emit_fn)(void *ctx, const uint8_t *key, size_t klen, uint32_t h, keydir_loc loc,
                       uint64_t i, uint64_t at, char *err, size_t errlen);

/* emit for one thread, and the consumer's step of two: the sorted insert. */
static int insert_entry(void *ctx, const uint8_t *key, size_t klen, uint32_t h, keydir_loc loc,
                        uint64_t i, uint64_t at, char *err, size_t errlen)
{
    int pr = keydir_put_sorted_h(ctx, key, klen, h, loc);
    if (pr > 0)
        return fail(err, errlen, "duplicate key in entry %llu at byte %llu",
                    (unsigned long long)i, (unsigned long long)at);
    if (pr < 0)
        return fail(err, errlen, "out of memory at entry %llu", (unsigned long long)i);
    return 0;
}

/* Parses `count` entries and the trailer from s (positioned after the
 * header), checking each entry (and r->check) before it goes to emit, then
 * that the entries end where the trailer starts and, for a stream, the
 * trailer checksum (a memory buffer's was checked before). Keys are hashed
 * with r->hash, never through the keydir, so a helper running this does not
 * share a cache line with the inserts. Returns 0, or -1 with the first
 * failure in err. */
static int parse_body(src *s, const ckpt_reader *r, uint64_t count, emit_fn emit, void *ectx,
                      char *err, size_t errlen)
{
    const uint8_t *p;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t at = s->pos;
        if (!(p = take(s, ENT_FIXED))) {
            if (s->ioerr)
                return fail(err, errlen, "read failed at byte %llu", (unsigned long long)at);
            return fail(err, errlen, "truncated entry %llu at byte %llu", (unsigned long long)i,
                        (unsigned long long)at);
        }
        keydir_loc loc = {get32(p), get32(p + 4), get32(p + 8)};
        size_t klen = get16(p + 12);
        if (klen == 0)
            return fail(err, errlen, "key length 0 in entry %llu at byte %llu",
                        (unsigned long long)i, (unsigned long long)at);
        if (s->body_end - s->pos < klen || !(p = take(s, klen))) {
            if (s->ioerr)
                return fail(err, errlen, "read failed at byte %llu", (unsigned long long)at);
            return fail(err, errlen, "truncated key in entry %llu at byte %llu",
                        (unsigned long long)i, (unsigned long long)at);
        }
        if (r->check && r->check(r->check_ctx, loc, err, errlen) != 0)
            return -1;
        if (emit(ectx, p, klen, keydir_hash_fn_fold(r->hash, p, klen), loc, i, at, err,
                 errlen) != 0)
            return -1;
    }
    if (s->pos != s->body_end)
        return fail(err, errlen, "size mismatch: %llu entries end at byte %llu, trailer at %llu",
                    (unsigned long long)count, (unsigned long long)s->pos,
                    (unsigned long long)s->body_end);
    if (!(p = take(s, TRAILER_LEN)))
        return fail(err, errlen, "read failed at byte %llu", (unsigned long long)s->body_end);
    if (!s->mem && get64(p) != XXH3_64bits_digest(&s->st))
        return fail(err, errlen, "trailer checksum mismatch at byte %llu",
                    (unsigned long long)s->body_end);
    return 0;
}

/* ---- decode on two threads
 *
 * A checkpoint of ckpt_par_load_min entries or more is loaded by two
 * threads in a pipeline: a helper runs parse_body (reading, the trailer
 * checksum, the entry checks and r->check, hashing each key) and hands the
 * entries over in batches; the caller inserts them in file order
 * (keydir_put_sorted_h), so the keydir is only ever touched by the caller
 * and is built exactly as by one thread. The halves are about equal on 1M
 * 16-byte keys (reading, checking and hashing against the table and arena
 * writes and their page faults); measured open of such a database, in
 * alternating runs: median about 60 -> 47 ms. Not 2x: every entry crosses
 * between the cores' caches (written by the helper, read by the caller).
 *
 * Errors come out as from one thread: the caller inserts every entry before
 * the helper's first failure, so an insert failure (a duplicate key) that
 * precedes it in the file wins, and the helper's own failure is reported
 * only after all the entries before it went in. */
size_t ckpt_par_load_min = 65536;

#define LB_ENTRIES 4096
#define LB_KEYS ((size_t)1 << 20) /* key bytes a batch holds before it is handed over */
#define LB_RING 4

typedef struct lent {
    uint64_t at;
    keydir_loc loc;
    uint32_t h;
    uint32_t koff; /* into the batch's keys */
    uint16_t klen;
} lent;

typedef struct lbatch {
    size_t n, kused;
    uint64_t first; /* entry number of e[0] */
    lent e[LB_ENTRIES];
    uint8_t keys[LB_KEYS + 65535];
} lbatch;

/* Heap-allocated and cache-line aligned, with the helper's per-entry state
 * (its copy of the source, the ring, filled) away from what the caller
 * writes: sharing a line with the caller's stack or the keydir cost more
 * than the second thread saved. */
typedef struct lpipe {
    src s;           /* the helper's copy of the caller's source */
    const ckpt_reader *r;
    uint64_t count;
    lbatch *ring;    /* LB_RING batches */
    uint64_t filled; /* batches handed over so far */
    int rc;
    char err[256];
    _Alignas(64) pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t taken;  /* batches the caller has finished with */
    int done;  /* the helper has finished: rc, err */
    int stop;  /* the caller failed: the helper stops at its next hand-over */
} lpipe;

/* Hands the batch being filled (ring[filled % LB_RING]) to the caller and
 * waits for a free one. Returns 0, or -1 when the caller stopped. */
static int lp_publish(lpipe *L)
{
    pthread_mutex_lock(&L->mu);
    L->filled++;
    pthread_cond_broadcast(&L->cv);
    while (L->filled - L->taken >= LB_RING && !L->stop)
        pthread_cond_wait(&L->cv, &L->mu);
    int rc = L->stop ? -1 : 0;
    pthread_mutex_unlock(&L->mu);
    if (rc == 0) {
        lbatch *b = &L->ring[L->filled % LB_RING];
        b->n = b->kused = 0;
    }
    return rc;
}

/* The helper's emit: appends to the current batch, handing it over when full. */
static int lp_emit(void *ctx, const uint8_t *key, size_t klen, uint32_t h, keydir_loc loc,
                   uint64_t i, uint64_t at, char *err, size_t errlen)
{
    lpipe *L = ctx;
    lbatch *b = &L->ring[L->filled % LB_RING];
    if (b->n == LB_ENTRIES || b->kused > LB_KEYS) {
        if (lp_publish(L) != 0)
            return fail(err, errlen, "stopped");
        b = &L->ring[L->filled % LB_RING];
    }
    if (b->n == 0)
        b->first = i;
    memcpy(b->keys + b->kused, key, klen);
    b->e[b->n++] = (lent){at, loc, h, (uint32_t)b->kused, (uint16_t)klen};
    b->kused += klen;
    return 0;
}

static void *lp_main(void *arg)
{
    lpipe *L = arg;
    L->ring[0].n = L->ring[0].kused = 0;
    int rc = parse_body(&L->s, L->r, L->count, lp_emit, L, L->err, sizeof L->err);
    pthread_mutex_lock(&L->mu);
    if (L->ring[L->filled % LB_RING].n > 0)
        L->filled++; /* the last, partial batch */
    L->rc = rc;
    L->done = 1;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

/* parse_body + insert_entry on two threads (see above); one thread when the
 * helper cannot be started. */
static int load_par(src *s, const ckpt_reader *r, keydir *kd, uint64_t count, char *err,
                    size_t errlen)
{
    lpipe *L = aligned_alloc(64, (sizeof *L + 63) & ~(size_t)63);
    if (!L)
        return parse_body(s, r, count, insert_entry, kd, err, errlen);
    memset(L, 0, sizeof *L);
    L->s = *s;
    L->r = r;
    L->count = count;
    pthread_t th;
    if (!(L->ring = malloc(LB_RING * sizeof *L->ring))) {
        free(L);
        return parse_body(s, r, count, insert_entry, kd, err, errlen);
    }
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    int rc = 0;
    if (pthread_create(&th, NULL, lp_main, L) != 0) {
        rc = parse_body(s, r, count, insert_entry, kd, err, errlen);
        goto out;
    }
    for (;;) {
        pthread_mutex_lock(&L->mu);
        while (L->taken == L->filled && !L->done)
            pthread_cond_wait(&L->cv, &L->mu);
        int more = L->taken < L->filled;
        pthread_mutex_unlock(&L->mu);
        if (!more)
            break;
        const lbatch *b = &L->ring[L->taken % LB_RING];
        for (size_t j = 0; j < b->n && rc == 0; j++) {
            const lent *e = &b->e[j];
            rc = insert_entry(kd, b->keys + e->koff, e->klen, e->h, e->loc, b->first + j, e->at,
                              err, errlen);
        }
        pthread_mutex_lock(&L->mu);
        L->taken++;
        if (rc != 0)
            L->stop = 1;
        pthread_cond_broadcast(&L->cv);
        pthread_mutex_unlock(&L->mu);
        if (rc != 0)
            break;
    }
    pthread_join(th, NULL);
    if (rc == 0 && L->rc != 0)
        rc = fail(err, errlen, "%s", L->err);
    *s = L->s;
out:
    pthread_cond_destroy(&L->cv);
    pthread_mutex_destroy(&L->mu);
    free(L->ring);
    free(L);
    return rc;
}

int ckpt_load(const ckpt_reader *r, ckpt_header *h, keydir **out, char *err, size_t errlen)
{
    const uint64_t len = r->size;
    if (len < HDR_LEN + TRAILER_LEN)
        return fail(err, errlen, "truncated: %llu bytes, need at least %d",
                    (unsigned long long)len, HDR_LEN + TRAILER_LEN);
    src sv, *s = &sv; /* on the stack: XXH3_state_t wants 64-byte alignment */
    memset(s, 0, sizeof(*s));
    s->r = r;
    s->mem = r->buf;
    s->body_end = len - TRAILER_LEN;
    XXH3_64bits_reset(&s->st);
    keydir *kd = NULL;
    int rc = -1;
    if (!s->mem && !(s->win = malloc(CHUNK))) {
        fail(err, errlen, "out of memory");
        goto done;
    }

    const uint8_t *p = take(s, HDR_LEN);
    if (!p) {
        fail(err, errlen, "read failed at byte 0");
        goto done;
    }
    if (memcmp(p, CKPT_MAGIC, 8) != 0) {
        fail(err, errlen, "bad magic");
        goto done;
    }
    uint32_t version = get32(p + 8);
    if (version != 1 && version != CKPT_VERSION) {
        fail(err, errlen, "unknown version %u", version);
        goto done;
    }
    if (get64(p + 48) != XXH3_64bits(p, HDR_SUMMED)) {
        fail(err, errlen, "header checksum mismatch at byte 48");
        goto done;
    }
    ckpt_header hd;
    hd.pos_seg = get32(p + 12);
    hd.pos_off = get64(p + 16);
    hd.next_seq = get64(p + 24);
    hd.generation = get64(p + 32);
    hd.count = get64(p + 40);

    const uint64_t body = len - HDR_LEN - TRAILER_LEN;
    if (hd.count > body / (ENT_FIXED + 1)) {
        fail(err, errlen, "count %llu inconsistent with size: %llu entry bytes hold at most %llu",
             (unsigned long long)hd.count, (unsigned long long)body,
             (unsigned long long)(body / (ENT_FIXED + 1)));
        goto done;
    }
    if (hd.count == 0 && body != 0) {
        fail(err, errlen, "count 0 but %llu entry bytes", (unsigned long long)body);
        goto done;
    }
    if (s->mem && get64(s->mem + s->body_end) != XXH3_64bits(s->mem + HDR_LEN, (size_t)body)) {
        fail(err, errlen, "trailer checksum mismatch at byte %llu",
             (unsigned long long)s->body_end);
        goto done;
    }

    /* entries bytes = 14 * count + key bytes, exactly when they are well formed */
    kd = keydir_new((size_t)hd.count, r->hash);
    if (!kd || keydir_reserve(kd, (size_t)hd.count, (size_t)(body - ENT_FIXED * hd.count)) < 0) {
        fail(err, errlen, "out of memory for %llu entries", (unsigned long long)hd.count);
        goto done;
    }
    if (hd.count >= ckpt_par_load_min ? load_par(s, r, kd, hd.count, err, errlen)
                                      : parse_body(s, r, hd.count, insert_entry, kd, err, errlen))
        goto done;
    *h = hd;
    *out = kd;
    kd = NULL;
    rc = 0;
done:
    keydir_free(kd);
    free(s->win);
    return rc;
}

int ckpt_decode(const uint8_t *buf, size_t len, keydir_hash_fn hash,
                ckpt_header *h, keydir **out, char *err, size_t errlen)
{
    ckpt_reader r = {.size = len, .buf = buf, .hash = hash};
    if (!buf && len > 0)
        return fail(err, errlen, "no buffer");
    return ckpt_load(&r, h, out, err, errlen);
}
