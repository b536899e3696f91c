/*
 * fixup.h - checksum repair for the fuzz targets. Every s4kv structure is
 * guarded by an xxh3-64, so random mutations almost never get past the
 * first checksum. Each target runs the decoder twice: on the input as
 * given, and on a copy whose checksums were recomputed here from the
 * layout in kv/FORMAT.md, so the fuzzer reaches the field checks behind
 * them. Only for fuzzing; nothing here is part of the library.
 */
#ifndef S4KV_FUZZ_FIXUP_H
#define S4KV_FUZZ_FIXUP_H

#include "internal.h"

#include <string.h>

/* Recomputes the checksum of the record at p if its lengths fit in avail;
 * returns its length, or 0 when it does not fit. */
static inline size_t fix_record(uint8_t *p, size_t avail)
{
    if (avail < REC_HDR)
        return 0;
    uint64_t len = (uint64_t)REC_HDR + get_u32(p + 20) + get_u32(p + 24);
    if (len > avail)
        return 0;
    put_u64(p, s4kv_hash(p + 8, (size_t)len - 8));
    return (size_t)len;
}

/* Batch at p: header checksum, then the records of its body. Returns the
 * batch length, or 0 when the header's body length does not fit. */
static inline size_t fix_batch(uint8_t *p, size_t avail)
{
    if (avail < BATCH_HDR)
        return 0;
    put_u64(p + 16, s4kv_hash(p, 16));
    uint64_t body = get_u64(p + 8);
    if (body > avail - BATCH_HDR)
        return 0;
    size_t off = BATCH_HDR, end = BATCH_HDR + (size_t)body;
    while (off < end) {
        size_t n = fix_record(p + off, end - off);
        if (!n)
            break;
        off += n;
    }
    return end;
}

/* Segment: header checksum, then batches back to back. */
static inline void fix_segment(uint8_t *p, size_t n)
{
    if (n < SEG_HDR)
        return;
    put_u64(p + 24, s4kv_hash(p, 24));
    size_t off = SEG_HDR;
    while (off < n) {
        size_t b = fix_batch(p + off, n - off);
        if (!b)
            break;
        off += b;
    }
}

/* Checkpoint: header checksum (bytes 0..47 at 48) and the trailer (xxh3 of
 * the entry bytes, in the last 8 bytes). */
static inline void fix_checkpoint(uint8_t *p, size_t n)
{
    if (n < 56)
        return;
    put_u64(p + 48, s4kv_hash(p, 48));
    if (n >= 64)
        put_u64(p + n - 8, s4kv_hash(p + 56, n - 64));
}

/* Manifest: rewrites the 16 hex digits of the first "checksum " line (not
 * the first line), from the bytes before that line. */
static inline void fix_manifest(uint8_t *p, size_t n)
{
    size_t at = (size_t)-1;
    for (size_t i = 0; i + 9 + 16 <= n; i++)
        if (i > 0 && p[i - 1] == '\n' && memcmp(p + i, "checksum ", 9) == 0) {
            at = i; /* the first one, as manifest_parse finds it */
            break;
        }
    if (at == (size_t)-1)
        return;
    uint64_t h = s4kv_hash(p, at);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++)
        p[at + 9 + i] = (uint8_t)hex[(h >> (60 - 4 * i)) & 15];
}

#endif
