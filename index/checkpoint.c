/*
 * checkpoint.c - the index checkpoint codec (declared in keydir.h, format in
 * kv/FORMAT.md, "Index checkpoint"): a keydir plus the log position it
 * covers, to and from a memory buffer. File I/O is the caller's.
 *
 * Layout: a 56-byte header (magic, version, position, next sequence,
 * generation, count, xxh3 of the 48 bytes before), N entries of
 * {u32 seg, u32 off, u32 len, u16 klen, key}, and an 8-byte trailer, the xxh3
 * of all entry bytes. Little-endian throughout.
 *
 * Invariant: ckpt_decode trusts nothing in the buffer. It reads only inside
 * [buf, buf + len), checks both checksums before it believes any field, and
 * accepts a buffer only when exactly `count` well-formed entries with
 * distinct keys fill the space between header and trailer.
 */
#include "keydir.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define CKPT_MAGIC "S4KVIDX1"
#define CKPT_VERSION 1
#define HDR_LEN 56
#define HDR_SUMMED 48 /* bytes covered by the header checksum */
#define TRAILER_LEN 8
#define ENT_FIXED 14  /* seg, off, len, klen */

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

/* ---- encode */

/* Grows *out so that `need` more bytes fit after *used. 0 or -1. */
static int reserve(uint8_t **out, size_t *cap, size_t used, size_t need)
{
    if (*cap - used >= need)
        return 0;
    size_t ncap = *cap + *cap / 2;
    if (ncap - used < need)
        ncap = used + need;
    uint8_t *n = realloc(*out, ncap);
    if (!n)
        return -1;
    *out = n;
    *cap = ncap;
    return 0;
}

/* One pass over the keydir (each entry's key is touched once); the buffer
 * starts at a guess of 16-byte keys and grows by 1.5x. */
int ckpt_encode(const keydir *kd, ckpt_header *h, uint8_t **buf, size_t *len)
{
    size_t count = keydir_count(kd);
    size_t cap = HDR_LEN + TRAILER_LEN + count * (ENT_FIXED + 16);
    size_t used = HDR_LEN;
    uint8_t *out = malloc(cap);
    if (!out)
        return -1;

    size_t pos = 0, klen;
    const void *key;
    keydir_loc loc;
    while (keydir_next(kd, &pos, &key, &klen, &loc)) {
        if (reserve(&out, &cap, used, ENT_FIXED + klen + TRAILER_LEN) < 0) {
            free(out);
            return -1;
        }
        uint8_t *p = out + used;
        put32(p, loc.seg);
        put32(p + 4, loc.off);
        put32(p + 8, loc.len);
        put16(p + 12, (uint16_t)klen);
        memcpy(p + ENT_FIXED, key, klen);
        used += ENT_FIXED + klen;
    }
    put64(out + used, XXH3_64bits(out + HDR_LEN, used - HDR_LEN));
    used += TRAILER_LEN;

    h->count = count;
    memcpy(out, CKPT_MAGIC, 8);
    put32(out + 8, CKPT_VERSION);
    put32(out + 12, h->pos_seg);
    put64(out + 16, h->pos_off);
    put64(out + 24, h->next_seq);
    put64(out + 32, h->generation);
    put64(out + 40, h->count);
    put64(out + 48, XXH3_64bits(out, HDR_SUMMED));

    if (cap > used) { /* give back the slack of the guess */
        uint8_t *shrunk = realloc(out, used);
        if (shrunk)
            out = shrunk;
    }
    *buf = out;
    *len = used;
    return 0;
}

/* ---- decode */

/* Checks everything but the entries. Returns 0 and fills *h, or -1. */
static int check_frame(const uint8_t *buf, size_t len, ckpt_header *h,
                       char *err, size_t errlen)
{
    if (len < HDR_LEN + TRAILER_LEN)
        return fail(err, errlen, "truncated: %zu bytes, need at least %d", len,
                    HDR_LEN + TRAILER_LEN);
    if (memcmp(buf, CKPT_MAGIC, 8) != 0)
        return fail(err, errlen, "bad magic");
    uint32_t version = get32(buf + 8);
    if (version != CKPT_VERSION)
        return fail(err, errlen, "unknown version %u", version);
    if (get64(buf + 48) != XXH3_64bits(buf, HDR_SUMMED))
        return fail(err, errlen, "header checksum mismatch at byte 48");

    h->pos_seg = get32(buf + 12);
    h->pos_off = get64(buf + 16);
    h->next_seq = get64(buf + 24);
    h->generation = get64(buf + 32);
    h->count = get64(buf + 40);

    size_t body = len - HDR_LEN - TRAILER_LEN;
    if (h->count > body / (ENT_FIXED + 1))
        return fail(err, errlen,
                    "count %llu inconsistent with size: %zu entry bytes hold at most %zu",
                    (unsigned long long)h->count, body, body / (ENT_FIXED + 1));
    if (h->count == 0 && body != 0)
        return fail(err, errlen, "count 0 but %zu entry bytes", body);

    size_t tpos = len - TRAILER_LEN;
    if (get64(buf + tpos) != XXH3_64bits(buf + HDR_LEN, body))
        return fail(err, errlen, "trailer checksum mismatch at byte %zu", tpos);
    return 0;
}

int ckpt_decode(const uint8_t *buf, size_t len, keydir_hash_fn hash,
                ckpt_header *h, keydir **out, char *err, size_t errlen)
{
    ckpt_header hd;
    if (check_frame(buf, len, &hd, err, errlen) < 0)
        return -1;

    keydir *kd = keydir_new((size_t)hd.count, hash);
    if (!kd)
        return fail(err, errlen, "out of memory for %llu entries",
                    (unsigned long long)hd.count);

    const size_t end = len - TRAILER_LEN;
    size_t p = HDR_LEN, ahead = HDR_LEN;
    uint64_t nahead = 0;
    for (uint64_t i = 0; i < hd.count; i++) {
        /* Prefetch the slots of entries a few ahead: the inserts are
         * cache-miss bound, and this overlaps the misses. */
        while (nahead < hd.count && nahead < i + 8 && end - ahead >= ENT_FIXED &&
               end - ahead - ENT_FIXED >= get16(buf + ahead + 12)) {
            size_t kl = get16(buf + ahead + 12);
            if (kl)
                keydir_prefetch(kd, buf + ahead + ENT_FIXED, kl);
            ahead += ENT_FIXED + kl;
            nahead++;
        }
        if (end - p < ENT_FIXED) {
            keydir_free(kd);
            return fail(err, errlen, "truncated entry %llu at byte %zu",
                        (unsigned long long)i, p);
        }
        keydir_loc loc = {get32(buf + p), get32(buf + p + 4), get32(buf + p + 8)};
        size_t klen = get16(buf + p + 12);
        if (klen == 0) {
            keydir_free(kd);
            return fail(err, errlen, "key length 0 in entry %llu at byte %zu",
                        (unsigned long long)i, p);
        }
        if (end - p - ENT_FIXED < klen) {
            keydir_free(kd);
            return fail(err, errlen, "truncated key in entry %llu at byte %zu",
                        (unsigned long long)i, p);
        }
        int r = keydir_put(kd, buf + p + ENT_FIXED, klen, loc, NULL);
        if (r != 0) {
            keydir_free(kd);
            if (r > 0)
                return fail(err, errlen, "duplicate key in entry %llu at byte %zu",
                            (unsigned long long)i, p);
            return fail(err, errlen, "out of memory at entry %llu",
                        (unsigned long long)i);
        }
        p += ENT_FIXED + klen;
    }
    if (p != end) {
        keydir_free(kd);
        return fail(err, errlen, "size mismatch: %llu entries end at byte %zu, trailer at %zu",
                    (unsigned long long)hd.count, p, end);
    }
    *h = hd;
    *out = kd;
    return 0;
}
