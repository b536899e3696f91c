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

/* ---- The same calls with the key's hash computed once by the caller (a
 * batch touches each key three times: two prefetches and the put).
 * h must be keydir_hash(kd, key, klen) of this keydir; any other value
 * corrupts the index. */
uint32_t keydir_hash(const keydir *kd, const void *key, size_t klen);
/* keydir_hash of a keydir made with keydir_new(., hash), computed without
 * reading the keydir (another thread may be changing it: the checkpoint
 * loader hashes on a helper while the caller inserts). */
uint32_t keydir_hash_fn_fold(keydir_hash_fn hash, const void *key, size_t klen);
void keydir_prefetch_h(const keydir *kd, uint32_t h);
/* The second step for a key whose slot keydir_prefetch_h brought in a
 * little earlier: prefetches the arena entry of the first slot from its home
 * whose hash tag matches (the entry a replace or a get reads next). */
void keydir_prefetch_entry_h(const keydir *kd, uint32_t h);
int keydir_put_h(keydir *kd, const void *key, size_t klen, uint32_t h, keydir_loc loc,
                 keydir_loc *old);
int keydir_del_h(keydir *kd, const void *key, size_t klen, uint32_t h, keydir_loc *old);

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

/* Makes room for `keys` more keys of `key_bytes` bytes in all, so that
 * inserting them allocates nothing more (a keydir about to be loaded).
 * Returns 0, or -1 when out of memory (entries unchanged). */
int keydir_reserve(keydir *kd, size_t keys, size_t key_bytes);

/* One flag for the owner: keydir_mark sets it, and every change to the
 * entries (put, delete, a cas that moves one) clears it. kv/ marks a keydir
 * whose per-segment live byte counts it has just computed, so it can skip
 * recounting one that has not changed since. */
void keydir_mark(keydir *kd);
int keydir_marked(const keydir *kd);

/* ---- Hash order: how a checkpoint stores the keydir, so that loading it
 * writes the table front to back instead of missing the cache once a key.
 *
 * The order is ascending folded hash (the 32-bit value the table keeps:
 * hi ^ lo of the 64-bit hash); keys with equal folded hashes come in any
 * order. Since the home slot grows with the hash, this order suits a table
 * of any capacity. */

typedef struct keydir_walk keydir_walk;

/* A cursor over all entries in hash order; NULL when out of memory. Costs a
 * sequential pass over the table, the entries read with prefetching; the
 * keydir must not change until keydir_walk_free. */
keydir_walk *keydir_walk_new(const keydir *kd);
/* The same over the entries whose folded hash h has lo <= h <= hi only (a
 * part of the checkpoint that another thread encodes): it still scans every
 * slot, but reads and sorts only those entries. */
keydir_walk *keydir_walk_new_range(const keydir *kd, uint32_t lo, uint32_t hi);
/* 1 with the next entry (key points into the arena), 0 at the end, -1 when
 * out of memory. */
int keydir_walk_next(keydir_walk *w, const void **key, size_t *klen, keydir_loc *loc);
void keydir_walk_free(keydir_walk *w);

/* Inserts like keydir_put (same returns: 1 = the key was present and its
 * location is replaced, 0 = new, -1 = bad length or out of memory), fast
 * when keys arrive in hash order into a keydir that started empty and has
 * room for them (keydir_new(n) or keydir_reserve): no probing, the table is
 * filled front to back. Keys out of order are still inserted correctly, the
 * ordinary way, as is every later one. */
int keydir_put_sorted(keydir *kd, const void *key, size_t klen, keydir_loc loc);
/* keydir_put_sorted with h = keydir_hash(kd, key, klen) computed by the
 * caller (the checkpoint loader hashes on another thread). */
int keydir_put_sorted_h(keydir *kd, const void *key, size_t klen, uint32_t h, keydir_loc loc);

/* ---- Checkpoint codec. Format: kv/FORMAT.md, "Index checkpoint". */

typedef struct ckpt_header {
    uint64_t generation; /* manifest generation the checkpoint was written for */
    uint32_t pos_seg;    /* the checkpoint covers the log up to (pos_seg, pos_off) */
    uint64_t pos_off;    /* byte offset in pos_seg */
    uint64_t next_seq;   /* next sequence number at that position */
    uint64_t count;      /* number of entries */
} ckpt_header;

/* Streams kd with header h (h->count is set from kd) to wr, in pieces of up
 * to 256 KiB in file order; wr returns 0, or non-zero to stop. Entries go in
 * hash order (keydir_walk). Returns 0, -1 when out of memory, or 1 when wr
 * failed (wr's ctx says why). */
typedef int (*ckpt_write_fn)(void *ctx, const void *buf, size_t len);
int ckpt_write(const keydir *kd, ckpt_header *h, ckpt_write_fn wr, void *ctx);

/* ckpt_write of 65,536 entries or more runs on two threads: the caller
 * encodes and writes the hashes below 2^31 while a helper encodes the rest
 * into a queue that the caller writes next (same bytes as one thread). The
 * queue holds at most this many bytes (default 64 MiB; the helper waits past
 * it). A variable so tests can make it small; set it before any checkpoint
 * is written, not while one is. */
extern size_t ckpt_par_queue_bytes;

/* ckpt_write into a malloc'd buffer (*buf, *len; the caller frees it with
 * free()). Returns 0 or -1 (ENOMEM). */
int ckpt_encode(const keydir *kd, ckpt_header *h, uint8_t **buf, size_t *len);

/* Where ckpt_load reads from, and what it checks besides the format. */
typedef struct ckpt_reader {
    uint64_t size;      /* bytes in the checkpoint */
    const uint8_t *buf; /* all of them in memory; or NULL, and then: */
    /* reads exactly len bytes at offset off into dst (a 256 KiB window, so
     * the file is never held whole); returns 0 or -1 */
    int (*read)(void *ctx, void *dst, size_t len, uint64_t off);
    void *ctx;
    keydir_hash_fn hash; /* as keydir_new */
    /* Optional: called with every entry's location, in file order, before
     * the entry is inserted; returns 0, or -1 with a one-line reason in err,
     * which rejects the checkpoint. Its effects are the caller's to undo when
     * the load then fails (a stream's trailer checksum is checked last). */
    int (*check)(void *ctx, keydir_loc loc, char *err, size_t errlen);
    void *check_ctx;
} ckpt_reader;

/* Parses the checkpoint into *h and a new keydir (*out, caller frees with
 * keydir_free). Every field and the checksums are checked; returns 0, or -1
 * with a one-line reason in err ("bad magic", "checksum mismatch at byte N",
 * "truncated: N bytes, need M", ...) and *out untouched. Reads versions 1
 * and 2. One sequential pass: the cost is reading the bytes, one hash per
 * key, and writing the table and arena front to back. */
int ckpt_load(const ckpt_reader *r, ckpt_header *h, keydir **out, char *err, size_t errlen);

/* ckpt_load of this many entries or more runs on two threads: a helper
 * reads, checks and hashes the entries while the caller inserts them (the
 * same keydir and the same errors as one thread). Default 65,536; a
 * variable so tests can take the two-thread path with small checkpoints; set
 * it before loading, not while a load runs. */
extern size_t ckpt_par_load_min;

/* ckpt_load of buf (len bytes) in memory. hash as keydir_new. */
int ckpt_decode(const uint8_t *buf, size_t len, keydir_hash_fn hash,
                ckpt_header *h, keydir **out, char *err, size_t errlen);

#endif
