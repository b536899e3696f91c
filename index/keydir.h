/*
 * keydir.h - the in-memory hash index of s4kv (Bitcask's "keydir").
 *
 * Maps a key (byte string, 1..65535 bytes) to the location of the record that
 * holds its newest value: segment number, byte offset of the record in that
 * segment, and the record's length in bytes. Open addressing (linear probing)
 * keyed by xxh3-64 of the key; keys live in one append-only arena, not one
 * malloc each. Not thread safe: the db serialises access.
 *
 * This header also declares the checkpoint codec (index/checkpoint.c): a
 * checkpoint is the keydir serialised with the log position it covers. The
 * codec works on memory buffers; kv/ does the file I/O (dependencies flow
 * kv -> index, never back).
 */
#ifndef S4KV_KEYDIR_H
#define S4KV_KEYDIR_H

#include <stddef.h>
#include <stdint.h>

typedef struct keydir_loc {
    uint32_t seg; /* segment number */
    uint32_t off; /* byte offset of the record in the segment */
    uint32_t len; /* record length in bytes (header + key + stored value) */
} keydir_loc;

typedef uint64_t (*keydir_hash_fn)(const void *key, size_t klen);

typedef struct keydir keydir;

/* New empty keydir sized for about `expect` keys (0 = small default).
 * hash NULL = xxh3-64 (tests pass a weak hash to force collisions).
 * Returns NULL when out of memory. */
keydir *keydir_new(size_t expect, keydir_hash_fn hash);
void keydir_free(keydir *kd);

/* 1 and *loc filled when key is present, 0 when absent. */
int keydir_get(const keydir *kd, const void *key, size_t klen, keydir_loc *loc);

/* Hints that key is about to be looked up or inserted: prefetches its home
 * slot, so a caller with many keys in hand (a batch) overlaps the cache
 * misses. No effect on contents. */
void keydir_prefetch(const keydir *kd, const void *key, size_t klen);

/* Inserts or replaces. Returns 1 when it replaced an entry (*old, if non-NULL,
 * gets the previous location), 0 when the key is new, -1 when out of memory
 * (the keydir is unchanged). */
int keydir_put(keydir *kd, const void *key, size_t klen, keydir_loc loc,
               keydir_loc *old);

/* Removes key. Returns 1 when it was present (*old gets its location), 0 when
 * absent. */
int keydir_del(keydir *kd, const void *key, size_t klen, keydir_loc *old);

/* Compare-and-swap used by compaction: if key is present at exactly `expect`
 * (seg, off and len equal), move it to `repl` and return 1; else return 0. */
int keydir_cas(keydir *kd, const void *key, size_t klen, keydir_loc expect,
               keydir_loc repl);

size_t keydir_count(const keydir *kd);
/* Bytes of memory held: table + arena (+ anything else allocated). */
size_t keydir_mem_bytes(const keydir *kd);

/* Cursor over all entries in arena order (insertion order, until deletes
 * compact the arena; a sequential walk of memory). Start with *pos = 0; each call
 * returns 1 with the key (pointer into the arena, valid until the next
 * mutation) and its location, or 0 at the end. Mutating the keydir during a
 * walk invalidates the cursor. */
int keydir_next(const keydir *kd, size_t *pos, const void **key, size_t *klen,
                keydir_loc *loc);

/* ---- Checkpoint codec. Format: kv/FORMAT.md, "Index checkpoint". */

typedef struct ckpt_header {
    uint64_t generation; /* manifest generation the checkpoint was written for */
    uint32_t pos_seg;    /* the checkpoint covers the log up to (pos_seg, pos_off) */
    uint64_t pos_off;    /* byte offset in pos_seg */
    uint64_t next_seq;   /* next sequence number at that position */
    uint64_t count;      /* number of entries */
} ckpt_header;

/* Serialises kd with header h (h->count is set from kd) into a malloc'd buffer
 * (*buf, *len; the caller frees it with free()). Returns 0 or -1 (ENOMEM). */
int ckpt_encode(const keydir *kd, ckpt_header *h, uint8_t **buf, size_t *len);

/* Parses buf (len bytes) into *h and a new keydir (*out, caller frees with
 * keydir_free). Every field and the checksums are checked; returns 0, or -1
 * with a one-line reason in err ("bad magic", "checksum mismatch at byte N",
 * "truncated: N bytes, need M", ...) and *out untouched. hash as keydir_new. */
int ckpt_decode(const uint8_t *buf, size_t len, keydir_hash_fn hash,
                ckpt_header *h, keydir **out, char *err, size_t errlen);

#endif
