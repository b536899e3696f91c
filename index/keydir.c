/*
 * keydir.c - the in-memory hash index (declared in keydir.h).
 *
 * Owns one slot table and one key arena.
 *
 * Layout
 *   table  `cap` slots of 8 bytes: {u32 hash, u32 ref}. `hash` is the key's
 *          64-bit hash folded to 32 bits (hi ^ lo). It picks the home slot by
 *          "fastrange" (home = hash * cap >> 32, so cap need not be a power
 *          of two and the table can grow by 1.5x) and doubles as a tag that
 *          skips nearly every key compare that would fail. `ref` is the
 *          entry's arena offset in 4-byte units; ref 0 marks an empty slot
 *          (the arena's first 4 bytes are never an entry).
 *   arena  entries back to back, each 4-byte aligned:
 *            u32 seg, u32 off, u32 len, u16 klen, klen key bytes, 0..3 pad
 *          The location lives beside the key rather than in the slot: a
 *          lookup has to read the arena to compare the key anyway, so it
 *          costs no extra cache miss, the slot stays at 8 bytes, and a
 *          replace (the common put) rewrites 12 bytes in place and leaves no
 *          garbage. Only deletes leave dead bytes.
 *
 * Bytes per key: 8 / load for the table (load 0.57..0.85 while growing by
 *   1.5x, i.e. 9.4..14 bytes) + 14 + 0..3 pad + the key, times the arena's
 *   growth slack (realloc by 1.5x). Measured with 16-byte keys (the keydir
 *   test logs it): 1M keys grown from empty 45.3 bytes a key in all (29.3 +
 *   key), 41.4 (25.4 + key) when sized up front; 42.4 after a checkpoint
 *   load (table sized for the count, arena reserved for the exact key bytes
 *   plus up to 3 pad bytes a key); 10M keys grown from empty 51.5. Bitcask's
 *   keydir: 44.5 + key.
 *
 * Invariants
 *   - Linear probing without tombstones: each entry sits at its home slot or
 *     after it (cyclically) with no empty slot in between. Deletion keeps
 *     this by shifting the rest of the cluster back ("backward shift").
 *   - count <= max_count < cap, so every probe ends at an empty slot.
 *   - adead counts arena bytes no slot references. When they outweigh the
 *     live bytes (and the table walk that compaction costs), the arena is
 *     rebuilt from the table in table order; so dead bytes stay below
 *     max(live bytes, table bytes) and compaction is amortised O(1) per
 *     delete.
 *   - Every failing allocation happens before the first change, so a put
 *     that returns -1 leaves the entries as they were (capacity may differ).
 *   - Hash order (checkpoints): the slot order is the order of the folded
 *     hash up to reordering inside a cluster and the wrap at the table's
 *     end, so keydir_walk sorts only clusters, and keydir_put_sorted fills
 *     an empty table front to back: each key goes to max(home, sfill), the
 *     slot after the previous one or its home, exactly where a probe looks
 *     first. Keys out of order, growth, deletes and ordinary puts end the
 *     sorted fill (sfill = NO_FILL) and later keys probe as usual.
 *
 *   filter a blocked Bloom filter over the live keys' folded hashes: one
 *          64-bit word per 8 slots (8 bits a slot, 9.4..14 a key), 3 bits
 *          per key in one word (Putze, Sanders, Singler, "Cache-, Hash- and
 *          Space-Efficient Bloom Filters", 2007: blocked, one word a key).
 *          1..2 % false positives; a get of an absent key reads one word
 *          (the filter, 1/8 of the table, stays in cache) instead of probing
 *          a cluster of the table (22 slots on average at load 0.85). Set on
 *          insert; deletes leave their bits until the table grows or the
 *          arena is rebuilt, when it is rebuilt from the table.
 *
 * Limits: table <= 2^32 slots, arena < 16 GiB (about 500M keys of 16 bytes);
 * past them put returns -1 as if out of memory. The table never shrinks.
 */
#include "keydir.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#define ENT_HDR 14                        /* seg, off, len, klen */
#define UNIT 4                            /* arena alignment and ref unit */
#define KEY_MAX 65535
#define MIN_CAP 8
#define MAX_CAP ((size_t)1 << 32)
#define ARENA_MAX (((size_t)1 << 32) * UNIT)
#define LOAD_PCT 85                       /* max load factor, percent */


_Static_assert(sizeof(size_t) >= 8, "keydir assumes a 64-bit size_t");

typedef struct slot {
    uint32_t h;   /* folded hash */
    uint32_t ref; /* arena offset / UNIT; 0 = empty */
} slot;

struct keydir {
    slot *tab;
    size_t cap, count, max_count;
    uint64_t *filt;           /* fwords words; see "filter" above */
    size_t fwords;
    uint8_t *arena;
    size_t alen, acap, adead; /* bytes used, allocated, unreferenced */
    keydir_hash_fn hash;
    /* Bulk load in hash order (keydir_put_sorted): while sfill != NO_FILL,
     * every slot at or after sfill is empty and the keys came in ascending
     * order of their hash, the last one being slast. */
    size_t sfill;
    uint32_t slast;
    int marked; /* keydir_mark; cleared by every change */
};

#define NO_FILL SIZE_MAX

/* ---- small helpers */

static uint64_t xxh3_hash(const void *key, size_t klen)
{
    return XXH3_64bits(key, klen);
}

/* The key's 64-bit hash folded to the 32 bits the table keeps; hash NULL or
 * xxh3_hash = xxh3-64, inlined (xxh3 of a short key is a few instructions;
 * the call through the pointer cost more than the hash). The one definition
 * of a key's hash: key_hash and keydir_hash_fn_fold both use it. */
static inline uint32_t fold_hash(keydir_hash_fn hash, const void *key, size_t klen)
{
    uint64_t h = !hash || hash == xxh3_hash ? XXH3_64bits(key, klen) : hash(key, klen);
    return (uint32_t)(h ^ (h >> 32));
}

static uint32_t key_hash(const keydir *kd, const void *key, size_t klen)
{
    return fold_hash(kd->hash, key, klen);
}

static size_t home_of(uint32_t h, size_t cap)
{
    return (size_t)(((uint64_t)h * cap) >> 32);
}

static size_t ent_size(size_t klen)
{
    return (ENT_HDR + klen + (UNIT - 1)) & ~(size_t)(UNIT - 1);
}

static uint8_t *ent_at(const keydir *kd, uint32_t ref)
{
    return kd->arena + (size_t)ref * UNIT;
}

static size_t ent_klen(const uint8_t *e)
{
    uint16_t k;
    memcpy(&k, e + 12, 2);
    return k;
}

static void ent_get_loc(const uint8_t *e, keydir_loc *loc)
{
    memcpy(&loc->seg, e, 4);
    memcpy(&loc->off, e + 4, 4);
    memcpy(&loc->len, e + 8, 4);
}

static void ent_set_loc(uint8_t *e, keydir_loc loc)
{
    memcpy(e, &loc.seg, 4);
    memcpy(e + 4, &loc.off, 4);
    memcpy(e + 8, &loc.len, 4);
}

/* Writes a new entry (sz = ent_size(klen) bytes, reserved) at the arena's
 * end; returns its ref. */
static uint32_t append_entry(keydir *kd, const void *key, size_t klen, keydir_loc loc,
                             size_t sz)
{
    uint8_t *e = kd->arena + kd->alen;
    uint16_t k16 = (uint16_t)klen;
    ent_set_loc(e, loc);
    memcpy(e + 12, &k16, 2);
    memcpy(e + ENT_HDR, key, klen);
    memset(e + ENT_HDR + klen, 0, sz - ENT_HDR - klen);
    uint32_t ref = (uint32_t)(kd->alen / UNIT);
    kd->alen += sz;
    return ref;
}

static size_t max_count_for(size_t cap)
{
    return cap / 100 * LOAD_PCT + cap % 100 * LOAD_PCT / 100;
}

/* Smallest capacity whose load limit admits n keys. */
static size_t cap_for(size_t n)
{
    if (n >= MAX_CAP / 100 * LOAD_PCT)
        return MAX_CAP;
    size_t cap = n / LOAD_PCT * 100 + n % LOAD_PCT * 100 / LOAD_PCT;
    if (cap < MIN_CAP)
        cap = MIN_CAP;
    while (max_count_for(cap) < n)
        cap++;
    return cap;
}

/* ---- memory: the table, the filter and the arena
 *
 * Blocks of 2 MiB and more are mapped by hand, aligned to 2 MiB, and
 * advised MADV_HUGEPAGE (transparent huge pages; Debian's default is
 * "madvise", so nothing happens without it). A get touches a random slot,
 * filter word and arena entry: with 4 KiB pages each of them is also a TLB
 * miss once the index outgrows the TLB's reach (about 6 MiB), and loading a
 * checkpoint faults in every 4 KiB page of 30 MB one at a time. Where huge
 * pages are off or unavailable the advice is ignored and the block is
 * ordinary memory. The tail past the last 2 MiB boundary stays in small
 * pages, so no memory is spent on rounding. Smaller blocks use malloc.
 * All blocks come zeroed. */
#define HUGE_PAGE ((size_t)2 << 20)

static size_t page_round(size_t n)
{
    return (n + 4095) & ~(size_t)4095;
}

static void *mem_alloc(size_t n)
{
    if (n < HUGE_PAGE)
        return calloc(1, n ? n : 1);
    size_t len = page_round(n);
    uint8_t *p = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    size_t head = (HUGE_PAGE - ((uintptr_t)p & (HUGE_PAGE - 1))) & (HUGE_PAGE - 1);
    if (head)
        munmap(p, head);
    munmap(p + head + len, HUGE_PAGE - head);
    p += head;
    (void)madvise(p, len, MADV_HUGEPAGE); /* advice: EINVAL without THP is fine */
    return p;
}

/* Frees a block of n bytes from mem_alloc or mem_realloc (n as allocated). */
static void mem_free(void *p, size_t n)
{
    if (!p)
        return;
    if (n < HUGE_PAGE)
        free(p);
    else
        munmap(p, page_round(n));
}

/* Resizes a block from old to n bytes, keeping min(old, n) bytes; bytes past
 * old are zero only for mapped blocks. NULL when out of memory (p stays
 * valid). Mapped to mapped moves pages, not bytes (mremap keeps the advice). */
static void *mem_realloc(void *p, size_t old, size_t n)
{
    if (old < HUGE_PAGE && n < HUGE_PAGE)
        return realloc(p, n ? n : 1);
    if (old >= HUGE_PAGE && n >= HUGE_PAGE) {
        void *q = mremap(p, page_round(old), page_round(n), MREMAP_MAYMOVE);
        return q == MAP_FAILED ? NULL : q;
    }
    void *q = mem_alloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, old < n ? old : n);
    mem_free(p, old);
    return q;
}

/* ---- the filter */

static uint64_t filt_bits(uint32_t h, size_t fwords, size_t *word)
{
    /* The word is picked like the home slot (fastrange of the folded hash),
     * so a fill in hash order (checkpoint load) writes the filter front to
     * back; the bit positions come from the low bits of a multiplicative
     * mix, which the word's high bits do not determine. */
    uint64_t m = (uint64_t)h * 0x9E3779B97F4A7C15ull;
    *word = (size_t)(((uint64_t)h * fwords) >> 32);
    return (1ull << (m & 63)) | (1ull << ((m >> 6) & 63)) | (1ull << ((m >> 12) & 63));
}

static int filt_maybe(const keydir *kd, uint32_t h)
{
    size_t w;
    uint64_t b = filt_bits(h, kd->fwords, &w);
    return (kd->filt[w] & b) == b;
}

static void filt_add(uint64_t *filt, size_t fwords, uint32_t h)
{
    size_t w;
    uint64_t b = filt_bits(h, fwords, &w);
    filt[w] |= b;
}

static size_t filt_words_for(size_t cap)
{
    return cap / 8 + 1;
}

/* Rebuilds the filter for the table (the size may change). 0 or -1
 * (nothing changed). */
static int filt_rebuild(keydir *kd)
{
    size_t n = filt_words_for(kd->cap);
    uint64_t *f = n == kd->fwords ? kd->filt : mem_alloc(n * sizeof *f);
    if (!f)
        return -1;
    if (f == kd->filt)
        memset(f, 0, n * sizeof *f);
    for (size_t i = 0; i < kd->cap; i++)
        if (kd->tab[i].ref != 0)
            filt_add(f, n, kd->tab[i].h);
    if (f != kd->filt)
        mem_free(kd->filt, kd->fwords * sizeof *kd->filt);
    kd->filt = f;
    kd->fwords = n;
    return 0;
}

/* Probes for key. Returns the index of its slot (*found = 1), or of the
 * empty slot that ends its probe sequence (*found = 0). */
static size_t probe(const keydir *kd, const void *key, size_t klen, uint32_t h,
                    int *found)
{
    size_t i = home_of(h, kd->cap);
    for (;;) {
        slot s = kd->tab[i];
        if (s.ref == 0) {
            *found = 0;
            return i;
        }
        if (s.h == h) {
            const uint8_t *e = ent_at(kd, s.ref);
            if (ent_klen(e) == klen && memcmp(e + ENT_HDR, key, klen) == 0) {
                *found = 1;
                return i;
            }
        }
        if (++i == kd->cap)
            i = 0;
    }
}

/* First empty slot at or after h's home in tab (cap slots). */
static size_t free_slot(const slot *tab, size_t cap, uint32_t h)
{
    size_t i = home_of(h, cap);
    while (tab[i].ref != 0)
        if (++i == cap)
            i = 0;
    return i;
}

/* Grows the table by 1.5x, rehashing from the stored hashes (the arena is
 * not touched). Returns 0, or -1 with the table unchanged. */
static int grow_table(keydir *kd)
{
    if (kd->cap >= MAX_CAP)
        return -1;
    size_t ncap = kd->cap + kd->cap / 2;
    if (ncap > MAX_CAP)
        ncap = MAX_CAP;
    slot *ntab = mem_alloc(ncap * sizeof(slot));
    size_t nf = filt_words_for(ncap);
    uint64_t *nfilt = mem_alloc(nf * sizeof *nfilt);
    if (!ntab || !nfilt) {
        mem_free(ntab, ncap * sizeof(slot));
        mem_free(nfilt, nf * sizeof *nfilt);
        return -1;
    }
    for (size_t i = 0; i < kd->cap; i++) {
        slot s = kd->tab[i];
        if (s.ref != 0) {
            ntab[free_slot(ntab, ncap, s.h)] = s;
            filt_add(nfilt, nf, s.h);
        }
    }
    mem_free(kd->tab, kd->cap * sizeof(slot));
    mem_free(kd->filt, kd->fwords * sizeof *kd->filt);
    kd->tab = ntab;
    kd->cap = ncap;
    kd->filt = nfilt;
    kd->fwords = nf;
    kd->max_count = max_count_for(ncap);
    kd->sfill = NO_FILL;
    return 0;
}

/* Makes room for `need` more arena bytes. Returns 0 or -1 (unchanged). */
static int arena_reserve(keydir *kd, size_t need)
{
    if (kd->alen + need <= kd->acap)
        return 0;
    if (kd->alen + need > ARENA_MAX)
        return -1;
    size_t ncap = kd->acap + kd->acap / 2;
    if (ncap < kd->alen + need)
        ncap = kd->alen + need;
    if (ncap > ARENA_MAX)
        ncap = ARENA_MAX;
    uint8_t *na = mem_realloc(kd->arena, kd->acap, ncap);
    if (!na)
        return -1;
    kd->arena = na;
    kd->acap = ncap;
    return 0;
}

/* Rebuilds the arena from the table, in table order, when dead bytes
 * outweigh both the live bytes and the table walk (so a keydir emptied down
 * to a few keys does not walk its whole table on every delete). Best effort:
 * without memory the garbage just stays. */
static void maybe_compact(keydir *kd)
{
    size_t used = kd->alen - UNIT;
    size_t live = used - kd->adead;
    if (kd->adead <= live || kd->adead < kd->cap * sizeof(slot))
        return;
    size_t ncap = UNIT + live + live / 8 + 64;
    uint8_t *na = mem_alloc(ncap);
    if (!na)
        return;
    size_t pos = UNIT;
    for (size_t i = 0; i < kd->cap; i++) {
        slot *s = &kd->tab[i];
        if (s->ref == 0)
            continue;
        const uint8_t *e = ent_at(kd, s->ref);
        size_t sz = ent_size(ent_klen(e));
        memcpy(na + pos, e, sz);
        s->ref = (uint32_t)(pos / UNIT);
        pos += sz;
    }
    mem_free(kd->arena, kd->acap);
    kd->arena = na;
    kd->alen = pos;
    kd->acap = ncap;
    kd->adead = 0;
    filt_rebuild(kd); /* drop the deleted keys' bits (same size: cannot fail) */
}

/* Empties slot i and shifts the rest of its cluster back so that no entry
 * is separated from its home by an empty slot. */
static void remove_slot(keydir *kd, size_t i)
{
    size_t cap = kd->cap, j = i;
    for (;;) {
        if (++j == cap)
            j = 0;
        slot s = kd->tab[j];
        if (s.ref == 0)
            break;
        size_t home = home_of(s.h, cap);
        /* s may fill the hole iff the hole lies cyclically in [home, j) */
        size_t from_home = (j + cap - home) % cap;
        size_t from_hole = (j + cap - i) % cap;
        if (from_hole <= from_home) {
            kd->tab[i] = s;
            i = j;
        }
    }
    kd->tab[i].h = 0;
    kd->tab[i].ref = 0;
}

/* ---- public API */

keydir *keydir_new(size_t expect, keydir_hash_fn hash)
{
    keydir *kd = calloc(1, sizeof(*kd));
    if (!kd)
        return NULL;
    kd->hash = hash ? hash : xxh3_hash;
    kd->cap = cap_for(expect);
    kd->max_count = max_count_for(kd->cap);
    /* a guess of 32 arena bytes a key (16-byte keys); realloc corrects it */
    size_t acap = UNIT + (expect ? expect : 8) * 32;
    if (acap > ARENA_MAX || expect > ARENA_MAX / 32)
        acap = ARENA_MAX;
    kd->tab = mem_alloc(kd->cap * sizeof(slot));
    kd->fwords = filt_words_for(kd->cap);
    kd->filt = mem_alloc(kd->fwords * sizeof *kd->filt);
    kd->arena = mem_alloc(acap);
    kd->acap = acap;
    if (!kd->tab || !kd->filt || !kd->arena) {
        keydir_free(kd);
        return NULL;
    }
    kd->alen = UNIT;
    return kd;
}

void keydir_free(keydir *kd)
{
    if (!kd)
        return;
    mem_free(kd->tab, kd->cap * sizeof(slot));
    mem_free(kd->filt, kd->fwords * sizeof *kd->filt);
    mem_free(kd->arena, kd->acap);
    free(kd);
}

uint32_t keydir_hash(const keydir *kd, const void *key, size_t klen)
{
    return key_hash(kd, key, klen);
}

uint32_t keydir_hash_fn_fold(keydir_hash_fn hash, const void *key, size_t klen)
{
    return fold_hash(hash, key, klen);
}

void keydir_prefetch(const keydir *kd, const void *key, size_t klen)
{
    if (klen == 0 || klen > KEY_MAX)
        return;
    keydir_prefetch_h(kd, key_hash(kd, key, klen));
}

void keydir_prefetch_h(const keydir *kd, uint32_t h)
{
    if (kd->cap == 0)
        return;
    size_t w;
    filt_bits(h, kd->fwords, &w);
    __builtin_prefetch(&kd->tab[home_of(h, kd->cap)]);
    __builtin_prefetch(&kd->filt[w]);
}

void keydir_prefetch_entry_h(const keydir *kd, uint32_t h)
{
    /* a key the filter rules out has no entry (a new key: the common case
     * of a fill); its filter word came in with keydir_prefetch_h */
    if (kd->cap == 0 || !filt_maybe(kd, h))
        return;
    size_t i = home_of(h, kd->cap);
    /* look at the home slot's cache line only: past it, leave it to probe */
    for (size_t n = 0; n < 4 && kd->tab[i].ref != 0; n++) {
        if (kd->tab[i].h == h) {
            __builtin_prefetch(ent_at(kd, kd->tab[i].ref));
            return;
        }
        if (++i == kd->cap)
            i = 0;
    }
}

int keydir_get(const keydir *kd, const void *key, size_t klen, keydir_loc *loc)
{
    if (klen == 0 || klen > KEY_MAX)
        return 0;
    uint32_t h = key_hash(kd, key, klen);
    if (!filt_maybe(kd, h))
        return 0;
    int found;
    size_t i = probe(kd, key, klen, h, &found);
    if (found && loc)
        ent_get_loc(ent_at(kd, kd->tab[i].ref), loc);
    return found;
}

int keydir_put(keydir *kd, const void *key, size_t klen, keydir_loc loc,
               keydir_loc *old)
{
    if (klen == 0 || klen > KEY_MAX)
        return -1;
    return keydir_put_h(kd, key, klen, key_hash(kd, key, klen), loc, old);
}

int keydir_put_h(keydir *kd, const void *key, size_t klen, uint32_t h, keydir_loc loc,
                 keydir_loc *old)
{
    if (klen == 0 || klen > KEY_MAX)
        return -1;
    int found = 0;
    /* a key the filter rules out is new: find the end of its cluster
     * without comparing tags or keys on the way */
    size_t i = filt_maybe(kd, h) ? probe(kd, key, klen, h, &found) : free_slot(kd->tab, kd->cap, h);
    kd->marked = 0;
    if (found) {
        uint8_t *e = ent_at(kd, kd->tab[i].ref);
        if (old)
            ent_get_loc(e, old);
        ent_set_loc(e, loc);
        return 1;
    }
    size_t sz = ent_size(klen);
    if (arena_reserve(kd, sz) < 0)
        return -1;
    if (kd->count + 1 > kd->max_count) {
        if (grow_table(kd) < 0)
            return -1;
        i = free_slot(kd->tab, kd->cap, h);
    }
    kd->sfill = NO_FILL;
    kd->tab[i].h = h;
    kd->tab[i].ref = append_entry(kd, key, klen, loc, sz);
    filt_add(kd->filt, kd->fwords, h);
    kd->count++;
    return 0;
}

int keydir_put_sorted(keydir *kd, const void *key, size_t klen, keydir_loc loc)
{
    if (klen == 0 || klen > KEY_MAX)
        return -1;
    return keydir_put_sorted_h(kd, key, klen, key_hash(kd, key, klen), loc);
}

int keydir_put_sorted_h(keydir *kd, const void *key, size_t klen, uint32_t h, keydir_loc loc)
{
    if (klen == 0 || klen > KEY_MAX)
        return -1;
    if (kd->sfill == NO_FILL || h < kd->slast || kd->count + 1 > kd->max_count)
        return keydir_put_h(kd, key, klen, h, loc, NULL);
    kd->marked = 0;
    if (h == kd->slast && kd->count > 0) {
        /* keys with equal hashes sit side by side: this may repeat one */
        int found;
        size_t i = probe(kd, key, klen, h, &found);
        if (found) {
            ent_set_loc(ent_at(kd, kd->tab[i].ref), loc);
            return 1;
        }
    }
    size_t sz = ent_size(klen);
    if (arena_reserve(kd, sz) < 0)
        return -1;
    /* Every key so far hashed no higher, so its home is at or before this
     * one's and the slots from the cluster's start up to sfill are taken:
     * the first free slot from home is max(home, sfill), unless that runs
     * off the end, where the probe wraps to the start of the table like
     * any other. */
    size_t i = home_of(h, kd->cap);
    if (i < kd->sfill)
        i = kd->sfill;
    if (i >= kd->cap) {
        i = free_slot(kd->tab, kd->cap, h);
        kd->sfill = kd->cap;
    } else {
        kd->sfill = i + 1;
    }
    kd->tab[i].h = h;
    kd->tab[i].ref = append_entry(kd, key, klen, loc, sz);
    filt_add(kd->filt, kd->fwords, h);
    kd->count++;
    kd->slast = h;
    return 0;
}

int keydir_del(keydir *kd, const void *key, size_t klen, keydir_loc *old)
{
    if (klen == 0 || klen > KEY_MAX)
        return 0;
    return keydir_del_h(kd, key, klen, key_hash(kd, key, klen), old);
}

int keydir_del_h(keydir *kd, const void *key, size_t klen, uint32_t h, keydir_loc *old)
{
    if (klen == 0 || klen > KEY_MAX || !filt_maybe(kd, h))
        return 0;
    int found;
    size_t i = probe(kd, key, klen, h, &found);
    if (!found)
        return 0;
    uint8_t *e = ent_at(kd, kd->tab[i].ref);
    if (old)
        ent_get_loc(e, old);
    kd->marked = 0;
    kd->sfill = NO_FILL;
    kd->adead += ent_size(klen);
    /* Mark the arena entry dead for walks in arena order: key length 0 (a
     * live entry never has one), its real length kept in the seg field so the
     * walk can step over it. */
    uint32_t k32 = (uint32_t)klen;
    uint16_t zero = 0;
    memcpy(e, &k32, 4);
    memcpy(e + 12, &zero, 2);
    remove_slot(kd, i);
    kd->count--;
    maybe_compact(kd);
    return 1;
}

int keydir_cas(keydir *kd, const void *key, size_t klen, keydir_loc expect,
               keydir_loc repl)
{
    if (klen == 0 || klen > KEY_MAX)
        return 0;
    int found;
    size_t i = probe(kd, key, klen, key_hash(kd, key, klen), &found);
    if (!found)
        return 0;
    uint8_t *e = ent_at(kd, kd->tab[i].ref);
    keydir_loc cur;
    ent_get_loc(e, &cur);
    if (cur.seg != expect.seg || cur.off != expect.off || cur.len != expect.len)
        return 0;
    ent_set_loc(e, repl);
    kd->marked = 0;
    return 1;
}

size_t keydir_count(const keydir *kd)
{
    return kd->count;
}

size_t keydir_mem_bytes(const keydir *kd)
{
    return sizeof(*kd) + kd->cap * sizeof(slot) + kd->fwords * sizeof(uint64_t) + kd->acap;
}

int keydir_next(const keydir *kd, size_t *pos, const void **key, size_t *klen,
                keydir_loc *loc)
{
    /* Arena order: sequential reads, so a walk of every entry (checkpoint,
     * compaction planning, iterators) streams memory instead of missing the
     * cache once per entry. Dead entries (deleted keys) are stepped over. */
    size_t p = *pos < UNIT ? UNIT : *pos;
    while (p + ENT_HDR <= kd->alen) {
        const uint8_t *e = kd->arena + p;
        size_t k = ent_klen(e);
        if (k == 0) {
            uint32_t dead;
            memcpy(&dead, e, 4);
            p += ent_size(dead);
            continue;
        }
        *key = e + ENT_HDR;
        *klen = k;
        if (loc)
            ent_get_loc(e, loc);
        *pos = p + ent_size(k);
        return 1;
    }
    *pos = kd->alen;
    return 0;
}

int keydir_reserve(keydir *kd, size_t keys, size_t key_bytes)
{
    if (keys >= MAX_CAP || key_bytes >= ARENA_MAX)
        return -1;
    size_t want = kd->count + keys;
    if (want > kd->max_count) {
        if (kd->count == 0) { /* nothing to rehash: a table of the final size */
            size_t ncap = cap_for(want);
            size_t nf = filt_words_for(ncap);
            slot *ntab = mem_alloc(ncap * sizeof(slot));
            uint64_t *nfilt = mem_alloc(nf * sizeof *nfilt);
            if (!ntab || !nfilt) {
                mem_free(ntab, ncap * sizeof(slot));
                mem_free(nfilt, nf * sizeof *nfilt);
                return -1;
            }
            mem_free(kd->tab, kd->cap * sizeof(slot));
            mem_free(kd->filt, kd->fwords * sizeof *kd->filt);
            kd->tab = ntab;
            kd->filt = nfilt;
            kd->fwords = filt_words_for(ncap);
            kd->cap = ncap;
            kd->max_count = max_count_for(ncap);
            kd->sfill = kd->sfill == NO_FILL ? NO_FILL : 0;
        }
        while (want > kd->max_count)
            if (grow_table(kd) < 0)
                return -1;
    }
    size_t need = keys * (ENT_HDR + UNIT - 1) + key_bytes; /* ent_size bound */
    if (kd->alen + need <= kd->acap)
        return 0;
    if (kd->alen + need > ARENA_MAX)
        return -1;
    uint8_t *na;
    if (kd->alen == UNIT) { /* empty: no copy (realloc would copy acap bytes) */
        na = mem_alloc(UNIT + need);
        if (!na)
            return -1;
        mem_free(kd->arena, kd->acap);
    } else {
        na = mem_realloc(kd->arena, kd->acap, kd->alen + need);
        if (!na)
            return -1;
    }
    kd->arena = na;
    kd->acap = kd->alen + need;
    return 0;
}

void keydir_mark(keydir *kd)
{
    kd->marked = 1;
}

int keydir_marked(const keydir *kd)
{
    return kd->marked;
}

/* ---- Walk in hash order
 *
 * The table in slot order is nearly in hash order already: home = h * cap
 * >> 32 grows with h, and entries of different clusters (runs of taken
 * slots between empty ones) keep their homes' order. Only inside a cluster
 * can insertion order put a higher hash first, and a cluster that runs off
 * the table's end continues at slot 0. So the walk starts at the first empty
 * slot: the taken slots before it hold the lowest hashes (homes there) and
 * the wrapped tail of the last cluster (set aside and merged into that
 * cluster); then it goes cluster by cluster, sorting each. Arena entries are
 * prefetched WALK_AHEAD entries before they are read. */

#define WALK_AHEAD 32

struct keydir_walk {
    const keydir *kd;
    slot *q;            /* queued entries, in output order: [qhead, qtail) */
    size_t qhead, qtail, qcap;
    slot *wrap;         /* the last cluster's tail, found at the table's start */
    size_t nwrap;
    size_t next;        /* next slot to scan; cap when all are queued */
    uint32_t lo, hi;    /* only entries with lo <= hash <= hi */
};

static int in_range(const keydir_walk *w, slot s)
{
    return s.h >= w->lo && s.h <= w->hi;
}

static int slot_cmp(const void *a, const void *b)
{
    uint32_t x = ((const slot *)a)->h, y = ((const slot *)b)->h;
    return x < y ? -1 : x > y;
}

/* Sorts a cluster by hash. Linear probing leaves a cluster nearly sorted
 * (an entry sits a few slots past its home: 3.8 on average at load 0.85,
 * while clusters there average dozens of slots), so insertion sort costs
 * about n + those displacements; a cluster that needs more than 8 moves an
 * entry (a weak hash, heavy collisions) is handed to qsort instead. */
static void sort_run(slot *r, size_t n)
{
    size_t moves = 0, budget = 8 * n + 64;
    for (size_t i = 1; i < n; i++) {
        slot s = r[i];
        size_t j = i;
        for (; j > 0 && r[j - 1].h > s.h; j--)
            r[j] = r[j - 1];
        r[j] = s;
        moves += i - j;
        if (moves > budget) {
            qsort(r, n, sizeof(slot), slot_cmp);
            return;
        }
    }
}

static int q_push(keydir_walk *w, slot s)
{
    if (w->qtail == w->qcap) {
        size_t ncap = w->qcap * 2;
        slot *nq = realloc(w->q, ncap * sizeof(slot));
        if (!nq)
            return -1;
        w->q = nq;
        w->qcap = ncap;
    }
    const uint8_t *e = ent_at(w->kd, s.ref);
    __builtin_prefetch(e);
    __builtin_prefetch(e + ENT_HDR + 15);
    w->q[w->qtail++] = s;
    return 0;
}

/* Queues clusters until 2 * WALK_AHEAD entries wait or the table ends. */
static int walk_fill(keydir_walk *w)
{
    const keydir *kd = w->kd;
    if (w->qhead > 0) { /* a few entries: move them to the front */
        memmove(w->q, w->q + w->qhead, (w->qtail - w->qhead) * sizeof(slot));
        w->qtail -= w->qhead;
        w->qhead = 0;
    }
    while (w->qtail - w->qhead < 2 * WALK_AHEAD && w->next < kd->cap) {
        size_t i = w->next;
        while (i < kd->cap && kd->tab[i].ref == 0)
            i++;
        size_t start = w->qtail;
        for (; i < kd->cap && kd->tab[i].ref != 0; i++)
            if (in_range(w, kd->tab[i]) && q_push(w, kd->tab[i]) < 0)
                return -1;
        if (i == kd->cap)
            for (size_t k = 0; k < w->nwrap; k++)
                if (in_range(w, w->wrap[k]) && q_push(w, w->wrap[k]) < 0)
                    return -1;
        w->next = i;
        sort_run(w->q + start, w->qtail - start);
    }
    return 0;
}

keydir_walk *keydir_walk_new(const keydir *kd)
{
    return keydir_walk_new_range(kd, 0, UINT32_MAX);
}

keydir_walk *keydir_walk_new_range(const keydir *kd, uint32_t lo, uint32_t hi)
{
    keydir_walk *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->kd = kd;
    w->lo = lo;
    w->hi = hi;
    w->qcap = 4 * WALK_AHEAD;
    w->q = malloc(w->qcap * sizeof(slot));
    if (!w->q)
        goto oom;
    /* count < cap, so there is an empty slot */
    size_t e0 = 0;
    while (kd->tab[e0].ref != 0)
        e0++;
    if (e0 > 0 && !(w->wrap = malloc(e0 * sizeof(slot))))
        goto oom;
    for (size_t i = 0; i < e0; i++) {
        slot s = kd->tab[i];
        if (!in_range(w, s))
            continue;
        if (home_of(s.h, kd->cap) <= i) {
            if (q_push(w, s) < 0)
                goto oom;
        } else {
            w->wrap[w->nwrap++] = s;
        }
    }
    sort_run(w->q, w->qtail);
    w->next = e0;
    if (walk_fill(w) < 0)
        goto oom;
    return w;
oom:
    keydir_walk_free(w);
    return NULL;
}

int keydir_walk_next(keydir_walk *w, const void **key, size_t *klen, keydir_loc *loc)
{
    if (w->qtail - w->qhead < WALK_AHEAD && w->next < w->kd->cap && walk_fill(w) < 0)
        return -1;
    if (w->qhead == w->qtail)
        return 0;
    const uint8_t *e = ent_at(w->kd, w->q[w->qhead++].ref);
    *key = e + ENT_HDR;
    *klen = ent_klen(e);
    if (loc)
        ent_get_loc(e, loc);
    return 1;
}

void keydir_walk_free(keydir_walk *w)
{
    if (!w)
        return;
    free(w->q);
    free(w->wrap);
    free(w);
}
