/*
 * record.c - the record, batch and segment-header codecs (kv/FORMAT.md), and
 * write batches (s4kv_batch_*). A batch buffer always holds whole records:
 * the caller's bytes are copied (and Snappy-compressed when that makes them
 * smaller) at s4kv_batch_put time, in the caller's thread, so the commit path
 * only stamps sequence numbers and checksums.
 */
#include "internal.h"

#include <snappy-c.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t s4kv_hash(const void *p, size_t n) { return XXH3_64bits(p, n); }

const char *s4kv_strerror(int code)
{
    switch (code) {
    case S4KV_OK: return "ok";
    case S4KV_ENOTFOUND: return "not found";
    case S4KV_EINVAL: return "invalid argument";
    case S4KV_EIO: return "I/O error";
    case S4KV_ECORRUPT: return "corruption detected";
    case S4KV_ENOMEM: return "out of memory";
    case S4KV_ELOCKED: return "database locked by another writer";
    case S4KV_ENOSPC: return "no space left on device";
    case S4KV_EREADONLY: return "database opened read-only";
    case S4KV_ENOENT: return "no such database or file";
    case S4KV_ERANGE: return "buffer too small";
    case S4KV_EVERSION: return "unsupported format version";
    case S4KV_ECLOSED: return "handle closed or failed";
    case S4KV_EREMOTE: return "remote read failed";
    case S4KV_EEXIST: return "the S3 prefix holds a different database";
    default: return "unknown error";
    }
}

void s4kv_free(void *p) { free(p); }

/* ---- Segment header */

void seg_hdr_write(uint8_t *p, uint32_t segno)
{
    memcpy(p, SEG_MAGIC, 8);
    put_u32(p + 8, FORMAT_VERSION);
    put_u32(p + 12, segno);
    put_u64(p + 16, 0);
    put_u64(p + 24, XXH3_64bits(p, 24));
}

int seg_hdr_check(const uint8_t *p, uint32_t segno, const char **why)
{
    if (memcmp(p, SEG_MAGIC, 8) != 0)
        return *why = "bad segment magic", -1;
    if (XXH3_64bits(p, 24) != get_u64(p + 24))
        return *why = "segment header checksum mismatch", -1;
    if (get_u32(p + 8) != FORMAT_VERSION)
        return *why = "unsupported segment format version", -1;
    if (get_u32(p + 12) != segno)
        return *why = "segment number in header does not match file name", -1;
    return 0;
}

/* ---- Batch header */

void batch_hdr_write(uint8_t *p, uint32_t count, uint64_t body)
{
    put_u32(p, BATCH_MAGIC);
    put_u32(p + 4, count);
    put_u64(p + 8, body);
    put_u64(p + 16, XXH3_64bits(p, 16));
}

int batch_hdr_parse(const uint8_t *p, uint32_t *count, uint64_t *body)
{
    if (get_u32(p) != BATCH_MAGIC || XXH3_64bits(p, 16) != get_u64(p + 16))
        return -1;
    *count = get_u32(p + 4);
    *body = get_u64(p + 8);
    if (*count == 0 || *body < (uint64_t)*count * (REC_HDR + 1))
        return -1;
    return 0;
}

/* ---- Records */

int rec_parse(const uint8_t *p, size_t avail, rec_view *r, const char **why)
{
    if (avail < REC_HDR)
        return *why = "record truncated", -1;
    r->seq = get_u64(p + 8);
    r->type = p[16];
    r->flags = p[17];
    r->klen = get_u32(p + 20);
    r->slen = get_u32(p + 24);
    r->rlen = get_u32(p + 28);
    if (r->klen == 0 || r->klen > S4KV_MAX_KEY_BYTES)
        return *why = "bad key length", -1;
    if (r->slen > S4KV_MAX_VALUE_BYTES + 65536u || r->rlen > S4KV_MAX_VALUE_BYTES)
        return *why = "bad value length", -1;
    uint64_t len = (uint64_t)REC_HDR + r->klen + r->slen;
    if (len > avail)
        return *why = "record truncated", -1;
    if (XXH3_64bits(p + 8, (size_t)len - 8) != get_u64(p))
        return *why = "record checksum mismatch", -1;
    if (r->type != REC_PUT && r->type != REC_DEL)
        return *why = "bad record type", -1;
    if ((r->flags & ~REC_SNAPPY) || get_u16(p + 18) != 0)
        return *why = "bad record flags", -1;
    if (r->type == REC_DEL && (r->slen || r->rlen || r->flags))
        return *why = "bad tombstone", -1;
    if (!(r->flags & REC_SNAPPY) && r->slen != r->rlen)
        return *why = "bad value length", -1;
    r->key = p + REC_HDR;
    r->val = r->key + r->klen;
    r->len = (uint32_t)len;
    return 0;
}

/* ---- Batches */

s4kv_batch *s4kv_batch_new(void)
{
    s4kv_batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->cap = 4096;
    b->buf = malloc(b->cap);
    if (!b->buf) {
        free(b);
        return NULL;
    }
    b->len = BATCH_HDR;
    b->compress = 1;
    return b;
}

void s4kv_batch_free(s4kv_batch *b)
{
    if (!b)
        return;
    free(b->buf);
    free(b->scratch);
    free(b);
}

void s4kv_batch_clear(s4kv_batch *b)
{
    b->len = BATCH_HDR;
    b->count = 0;
}

size_t s4kv_batch_count(const s4kv_batch *b) { return b->count; }

static int reserve(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 4096;
    while (nc < need)
        nc *= 2;
    uint8_t *nb = realloc(*buf, nc);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

int batch_add(s4kv_batch *b, int type, const void *key, size_t klen,
              const void *val, size_t vlen, int compress)
{
    if (!key || klen == 0 || klen > S4KV_MAX_KEY_BYTES || vlen > S4KV_MAX_VALUE_BYTES ||
        (vlen && !val))
        return S4KV_EINVAL;
    if (b->count >= S4KV_MAX_BATCH_OPS)
        return S4KV_EINVAL;
    const uint8_t *stored = val;
    size_t slen = vlen;
    uint8_t flags = 0;
    if (type == REC_PUT && compress && vlen >= 32) {
        size_t max = snappy_max_compressed_length(vlen);
        if (reserve(&b->scratch, &b->scap, max) != 0)
            return S4KV_ENOMEM;
        size_t clen = max;
        if (snappy_compress(val, vlen, (char *)b->scratch, &clen) == SNAPPY_OK && clen < vlen) {
            stored = b->scratch;
            slen = clen;
            flags = REC_SNAPPY;
        }
    }
    size_t rlen = REC_HDR + klen + slen;
    if (b->len - BATCH_HDR + rlen > S4KV_MAX_BATCH_BYTES)
        return S4KV_EINVAL;
    if (reserve(&b->buf, &b->cap, b->len + rlen) != 0)
        return S4KV_ENOMEM;
    uint8_t *p = b->buf + b->len;
    put_u64(p, 0);               /* checksum: stamped by batch_seal */
    put_u64(p + 8, 0);           /* sequence: stamped by batch_seal */
    p[16] = (uint8_t)type;
    p[17] = flags;
    put_u16(p + 18, 0);
    put_u32(p + 20, (uint32_t)klen);
    put_u32(p + 24, (uint32_t)slen);
    put_u32(p + 28, (uint32_t)vlen);
    memcpy(p + REC_HDR, key, klen);
    if (slen)
        memcpy(p + REC_HDR + klen, stored, slen);
    b->len += rlen;
    b->count++;
    return 0;
}

int s4kv_batch_put(s4kv_batch *b, const void *key, size_t klen, const void *val,
                   size_t vlen)
{
    if (!b)
        return S4KV_EINVAL;
    return batch_add(b, REC_PUT, key, klen, val, vlen, b->compress);
}

int s4kv_batch_delete(s4kv_batch *b, const void *key, size_t klen)
{
    if (!b)
        return S4KV_EINVAL;
    return batch_add(b, REC_DEL, key, klen, NULL, 0, 0);
}

void batch_seal(s4kv_batch *b, uint64_t *seq)
{
    uint8_t *p = b->buf + BATCH_HDR, *end = b->buf + b->len;
    while (p < end) {
        size_t len = REC_HDR + get_u32(p + 20) + get_u32(p + 24);
        put_u64(p + 8, (*seq)++);
        put_u64(p, XXH3_64bits(p + 8, len - 8));
        p += len;
    }
    batch_hdr_write(b->buf, b->count, b->len - BATCH_HDR);
}

void s4kv_batch_set_compress(s4kv_batch *b, int on)
{
    if (b)
        b->compress = on ? 1 : 0;
}
