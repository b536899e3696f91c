/*
 * test_checkpoint.c - the index checkpoint codec (index/checkpoint.c):
 * round trips, the exact byte layout of kv/FORMAT.md (version 2: entries in
 * hash order; version 1 still read), and rejection of every bit flip, every
 * truncation and each kind of malformed content, from memory and streamed
 * through a reader.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "keydir.h"
#include "util.h"

/* ---- helpers */

static void le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* Recomputes both checksums after a test edits a buffer, so that the
 * decoder's structural checks, not the checksums, must catch the edit. */
static void reseal(uint8_t *buf, size_t len)
{
    le64(buf + 48, XXH3_64bits(buf, 48));
    le64(buf + len - 8, XXH3_64bits(buf + 56, len - 64));
}

static ckpt_header sample_header(void)
{
    ckpt_header h = {.generation = 0x0102030405060708ull,
                     .pos_seg = 0xa1b2c3d4u,
                     .pos_off = 0x1122334455667788ull,
                     .next_seq = 0x99aabbccddeeff00ull,
                     .count = 12345 /* must be overwritten */};
    return h;
}

/* A keydir of n random keys (1..40 bytes, binary) with random locations. */
static keydir *random_keydir(size_t n, uint64_t seed)
{
    keydir *kd = keydir_new(0, NULL);
    cr_assert_not_null(kd);
    uint8_t k[48];
    while (keydir_count(kd) < n) {
        uint64_t r = tu_rand(&seed);
        size_t klen = 1 + r % 40;
        for (size_t i = 0; i < klen; i += 8) {
            uint64_t x = tu_rand(&seed);
            memcpy(k + i, &x, 8);
        }
        keydir_loc l = {(uint32_t)tu_rand(&seed), (uint32_t)r, (uint32_t)(r >> 32)};
        cr_assert_geq(keydir_put(kd, k, klen, l, NULL), 0);
    }
    return kd;
}

/* Same keys, same locations, both ways. */
static void assert_same(const keydir *a, const keydir *b)
{
    cr_assert_eq(keydir_count(a), keydir_count(b));
    size_t pos = 0, klen;
    const void *key;
    keydir_loc la, lb;
    while (keydir_next(a, &pos, &key, &klen, &la)) {
        cr_assert_eq(keydir_get(b, key, klen, &lb), 1, "key missing after decode");
        cr_assert(la.seg == lb.seg && la.off == lb.off && la.len == lb.len,
                  "location differs after decode");
    }
}

/* A reader over a buffer for ckpt_load: reads must stay inside it. */
typedef struct memsrc {
    const uint8_t *p;
    size_t n;
    long reads, fail_at; /* fail the read numbered fail_at (0 = never) */
} memsrc;

static int memsrc_read(void *ctx, void *dst, size_t len, uint64_t off)
{
    memsrc *m = ctx;
    cr_assert(off <= m->n && len <= m->n - off, "read of %zu at %llu past %zu", len,
              (unsigned long long)off, m->n);
    if (++m->reads == m->fail_at)
        return -1;
    memcpy(dst, m->p + off, len);
    return 0;
}

/* ckpt_load streamed from buf through memsrc_read. */
static int stream_decode(const uint8_t *buf, size_t len, keydir_hash_fn hash, ckpt_header *h,
                         keydir **out, char *err, size_t errlen)
{
    memsrc m = {buf, len, 0, 0};
    ckpt_reader r = {.size = len, .read = memsrc_read, .ctx = &m, .hash = hash};
    return ckpt_load(&r, h, out, err, errlen);
}

/* Decodes a buffer that must be rejected, from memory and streamed, each on
 * one thread and on two (ckpt_par_load_min 1); checks err (want: from
 * memory), that two threads give one thread's reason word for word, and that
 * *out and *h were left alone. */
static void assert_rejected(const uint8_t *buf, size_t len, const char *want,
                            const char *what)
{
    size_t par_min = ckpt_par_load_min;
    for (int streamed = 0; streamed < 2; streamed++) {
        char one[256] = "";
        for (int par = 0; par < 2; par++) {
            keydir *sentinel = (keydir *)(uintptr_t)0x1, *out = sentinel;
            ckpt_header h, h0;
            memset(&h, 0xab, sizeof(h));
            h0 = h;
            char err[256] = "";
            ckpt_par_load_min = par ? 1 : SIZE_MAX;
            int r = streamed ? stream_decode(buf, len, NULL, &h, &out, err, sizeof(err))
                             : ckpt_decode(buf, len, NULL, &h, &out, err, sizeof(err));
            ckpt_par_load_min = par_min;
            if (r == 0 && out != sentinel)
                keydir_free(out);
            cr_assert_eq(r, -1, "%s%s%s: accepted", what, streamed ? " (streamed)" : "",
                         par ? " (two threads)" : "");
            cr_assert(out == sentinel, "%s: *out touched", what);
            cr_assert(memcmp(&h, &h0, sizeof(h)) == 0, "%s: *h touched", what);
            cr_assert_neq(err[0], 0, "%s: no reason given", what);
            cr_assert_null(strchr(err, '\n'), "%s: reason is not one line", what);
            if (want && !streamed)
                cr_assert_not_null(strstr(err, want), "%s: reason \"%s\" lacks \"%s\"", what,
                                   err, want);
            if (par)
                cr_assert_str_eq(err, one, "%s%s: two threads say \"%s\", one \"%s\"", what,
                                 streamed ? " (streamed)" : "", err, one);
            else
                memcpy(one, err, sizeof one);
        }
    }
}

/* Entries of an encoded checkpoint: calls fn(key, klen, at) for each. */
static size_t each_entry(const uint8_t *buf, size_t len,
                         void (*fn)(void *, const uint8_t *, size_t, size_t), void *ctx)
{
    size_t p = 56, n = 0;
    while (p < len - 8) {
        size_t kl = (size_t)buf[p + 12] | (size_t)buf[p + 13] << 8;
        if (fn)
            fn(ctx, buf + p + 14, kl, p);
        p += 14 + kl;
        n++;
    }
    cr_assert_eq(p, len - 8);
    return n;
}

/* ---- tests */

Test(checkpoint, round_trip)
{
    keydir *kd = random_keydir(10000, 3);
    ckpt_header h = sample_header(), h2;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    cr_assert_eq(h.count, 10000, "encode sets count");
    keydir *out = NULL;
    char err[128] = "";
    cr_assert_eq(ckpt_decode(buf, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(h2.generation, h.generation);
    cr_assert_eq(h2.pos_seg, h.pos_seg);
    cr_assert_eq(h2.pos_off, h.pos_off);
    cr_assert_eq(h2.next_seq, h.next_seq);
    cr_assert_eq(h2.count, 10000);
    assert_same(kd, out);
    assert_same(out, kd);

    /* re-encoding the decoded keydir gives the same size and header */
    uint8_t *buf2;
    size_t len2;
    cr_assert_eq(ckpt_encode(out, &h2, &buf2, &len2), 0);
    cr_assert_eq(len2, len);
    cr_assert_eq(memcmp(buf, buf2, 56), 0);
    free(buf2);
    free(buf);
    keydir_free(out);
    keydir_free(kd);
}

Test(checkpoint, empty_keydir)
{
    keydir *kd = keydir_new(0, NULL);
    ckpt_header h = sample_header(), h2;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    cr_assert_eq(len, 64);
    cr_assert_eq(h.count, 0);
    keydir *out = NULL;
    char err[128] = "";
    cr_assert_eq(ckpt_decode(buf, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(keydir_count(out), 0);
    cr_assert_eq(h2.next_seq, h.next_seq);
    free(buf);
    keydir_free(out);
    keydir_free(kd);
}

/* The byte layout of kv/FORMAT.md, checked field by field. */
Test(checkpoint, exact_layout)
{
    keydir *kd = keydir_new(0, NULL);
    keydir_loc l = {0x01020304u, 0x05060708u, 0x090a0b0cu};
    keydir_put(kd, "k\0y", 3, l, NULL);
    ckpt_header h = sample_header();
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    cr_assert_eq(len, 56 + 14 + 3 + 8);
    cr_assert_eq(memcmp(buf, "S4KVIDX1", 8), 0);
    cr_assert_eq(rd32(buf + 8), 2);
    cr_assert_eq(rd32(buf + 12), h.pos_seg);
    cr_assert_eq(rd64(buf + 16), h.pos_off);
    cr_assert_eq(rd64(buf + 24), h.next_seq);
    cr_assert_eq(rd64(buf + 32), h.generation);
    cr_assert_eq(rd64(buf + 40), 1);
    cr_assert_eq(rd64(buf + 48), XXH3_64bits(buf, 48));
    static const uint8_t ent[] = {4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 3, 0, 'k', 0, 'y'};
    cr_assert_eq(memcmp(buf + 56, ent, sizeof(ent)), 0);
    cr_assert_eq(rd64(buf + 73), XXH3_64bits(buf + 56, 17));
    free(buf);
    keydir_free(kd);
}

Test(checkpoint, max_key_length)
{
    keydir *kd = keydir_new(0, NULL);
    uint8_t *k = malloc(65535);
    cr_assert_not_null(k);
    memset(k, 'x', 65535);
    keydir_loc l = {1, 2, 3};
    keydir_put(kd, k, 65535, l, NULL);
    keydir_put(kd, k, 1, l, NULL);
    ckpt_header h = sample_header(), h2;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    keydir *out = NULL;
    char err[128] = "";
    cr_assert_eq(ckpt_decode(buf, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
    assert_same(kd, out);
    free(buf);
    free(k);
    keydir_free(out);
    keydir_free(kd);
}

Test(checkpoint, every_bit_flip_rejected, .timeout = 60)
{
    keydir *kd = random_keydir(5, 11);
    ckpt_header h = sample_header();
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    uint8_t *copy = malloc(len);
    cr_assert_not_null(copy);
    char what[64];
    for (size_t i = 0; i < len; i++) {
        for (int b = 0; b <= 8; b++) {
            memcpy(copy, buf, len);
            copy[i] ^= b < 8 ? (uint8_t)(1u << b) : 0xff;
            snprintf(what, sizeof(what), "flip byte %zu mask %d", i, b);
            assert_rejected(copy, len, NULL, what);
        }
    }
    free(copy);
    free(buf);
    keydir_free(kd);
}

Test(checkpoint, every_truncation_and_extension_rejected)
{
    keydir *kd = random_keydir(5, 12);
    ckpt_header h = sample_header();
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    char what[64];
    for (size_t n = 0; n < len; n++) {
        /* a copy of exactly n bytes, so ASan sees any read past the end */
        uint8_t *t = malloc(n ? n : 1);
        memcpy(t, buf, n);
        snprintf(what, sizeof(what), "truncated to %zu", n);
        assert_rejected(n ? t : NULL, n, n < 64 ? "truncated" : NULL, what);
        free(t);
    }
    uint8_t *ext = malloc(len + 1);
    memcpy(ext, buf, len);
    ext[len] = 0;
    assert_rejected(ext, len + 1, NULL, "one byte appended");
    free(ext);
    free(buf);
    keydir_free(kd);
}

/* Structural errors behind valid checksums. */
Test(checkpoint, malformed_content_rejected)
{
    keydir *kd = keydir_new(0, NULL);
    keydir_loc l = {1, 2, 3};
    keydir_put(kd, "aa", 2, l, NULL);
    keydir_put(kd, "bb", 2, l, NULL);
    ckpt_header h = sample_header();
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    cr_assert_eq(len, 56 + 2 * 16 + 8);
    uint8_t *b = malloc(len);

    memcpy(b, buf, len);
    memcpy(b, "S4KVSEG1", 8);
    reseal(b, len);
    assert_rejected(b, len, "magic", "bad magic");

    memcpy(b, buf, len);
    le32(b + 8, 3);
    reseal(b, len);
    assert_rejected(b, len, "version", "version 3");

    memcpy(b, buf, len);
    le32(b + 8, 0);
    reseal(b, len);
    assert_rejected(b, len, "version", "version 0");

    memcpy(b, buf, len);
    le64(b + 48, rd64(b + 48) ^ 1);
    assert_rejected(b, len, "header checksum", "header checksum");

    memcpy(b, buf, len);
    b[len - 1] ^= 0x80;
    assert_rejected(b, len, "trailer checksum", "trailer checksum");

    static const uint64_t counts[] = {0, 1, 3, 4, 1000, UINT64_MAX, (uint64_t)1 << 63};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        memcpy(b, buf, len);
        le64(b + 40, counts[i]);
        reseal(b, len);
        assert_rejected(b, len, NULL, "wrong count");
    }

    /* key length 0 */
    memcpy(b, buf, len);
    b[56 + 12] = 0;
    b[56 + 13] = 0;
    reseal(b, len);
    assert_rejected(b, len, "key length 0", "key length 0");

    /* second key length runs past the trailer */
    memcpy(b, buf, len);
    b[56 + 16 + 12] = 0xff;
    b[56 + 16 + 13] = 0xff;
    reseal(b, len);
    assert_rejected(b, len, "truncated", "key past the end");

    /* first key length 3 swallows a byte of the second entry */
    memcpy(b, buf, len);
    b[56 + 12] = 3;
    reseal(b, len);
    assert_rejected(b, len, NULL, "misframed entries");

    /* duplicate key: make the second key equal the first */
    memcpy(b, buf, len);
    memcpy(b + 56 + 16 + 14, b + 56 + 14, 2);
    reseal(b, len);
    assert_rejected(b, len, "duplicate", "duplicate key");

    /* the untouched buffer still decodes */
    keydir *out = NULL;
    ckpt_header h2;
    char err[128] = "";
    cr_assert_eq(ckpt_decode(buf, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
    keydir_free(out);
    free(b);
    free(buf);
    keydir_free(kd);
}

Test(checkpoint, random_garbage_rejected)
{
    uint64_t st = 77;
    uint8_t b[300];
    for (int i = 0; i < 2000; i++) {
        size_t n = tu_rand(&st) % sizeof(b);
        for (size_t j = 0; j < n; j++)
            b[j] = (uint8_t)tu_rand(&st);
        if (n >= 8 && (i & 1))
            memcpy(b, "S4KVIDX1", 8);
        if (n >= 64 && (i & 2)) {
            le32(b + 8, 1);
            le64(b + 40, (n - 64) / 16);
            reseal(b, n);
        }
        assert_rejected(b, n, NULL, "random bytes");
    }
}

Test(checkpoint, one_million_entries_timing, .timeout = 120)
{
    const size_t n = 1000000;
    keydir *kd = keydir_new(n, NULL);
    uint8_t k[16];
    uint64_t st = 5;
    for (size_t i = 0; i < n; i++) {
        uint64_t a = tu_rand(&st);
        memcpy(k, &a, 8);
        memcpy(k + 8, &i, 8);
        keydir_loc l = {(uint32_t)(i >> 16), (uint32_t)i, 64};
        keydir_put(kd, k, 16, l, NULL);
    }
    ckpt_header h = sample_header(), h2;
    uint8_t *buf;
    size_t len;
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    keydir *out = NULL;
    char err[128] = "";
    cr_assert_eq(ckpt_decode(buf, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    double enc = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    double dec = (t2.tv_sec - t1.tv_sec) + (t2.tv_nsec - t1.tv_nsec) / 1e9;
    cr_log_info("checkpoint: 1M 16-byte keys, %zu bytes: encode %.3f s, decode %.3f s",
                len, enc, dec);
    cr_assert_eq(len, 64 + n * 30);
    assert_same(kd, out);
    keydir_free(out);
    out = NULL;
    cr_assert_eq(stream_decode(buf, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
    assert_same(out, kd);
    free(buf);
    keydir_free(out);
    keydir_free(kd);
}

/* ---- version 2: hash order, streaming, the entry check */

typedef struct order_ctx {
    keydir_hash_fn fn;
    uint32_t last;
    size_t n;
} order_ctx;

static void check_order(void *ctx, const uint8_t *key, size_t klen, size_t at)
{
    order_ctx *o = ctx;
    uint64_t h = o->fn ? o->fn(key, klen) : XXH3_64bits(key, klen);
    uint32_t f = (uint32_t)(h ^ (h >> 32));
    cr_assert_geq(f, o->last, "entry %zu at byte %zu out of hash order", o->n, at);
    o->last = f;
    o->n++;
}

static uint64_t few_hash(const void *key, size_t klen)
{
    /* 4 values; 0xffffffff folds to the last home slot, so clusters wrap */
    static const uint64_t v[4] = {0, 0xffffffffu, 0x7fffffffu, 0x12345678u};
    return v[((const uint8_t *)key)[klen - 1] & 3];
}

static keydir *rehashed(const keydir *kd, keydir_hash_fn fn)
{
    keydir *c = keydir_new(0, fn);
    size_t pos = 0, klen;
    const void *key;
    keydir_loc l;
    while (keydir_next(kd, &pos, &key, &klen, &l))
        keydir_put(c, key, klen, l, NULL);
    return c;
}

Test(checkpoint, entries_in_hash_order)
{
    const keydir_hash_fn fns[2] = {NULL, few_hash};
    for (int f = 0; f < 2; f++) {
        keydir *src = random_keydir(3000, 21);
        keydir *kd = rehashed(src, fns[f]);
        /* deletes leave dead arena bytes and shifted clusters */
        size_t pos = 0, klen, i = 0;
        const void *key;
        keydir_loc l;
        while (keydir_next(src, &pos, &key, &klen, &l))
            if (i++ % 3 == 0)
                keydir_del(kd, key, klen, NULL);
        ckpt_header h = sample_header(), h2;
        uint8_t *buf;
        size_t len;
        cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
        order_ctx o = {fns[f], 0, 0};
        cr_assert_eq(each_entry(buf, len, check_order, &o), keydir_count(kd));
        /* decoded (arena now in hash order) and encoded again: same bytes */
        keydir *out = NULL;
        char err[128] = "";
        cr_assert_eq(ckpt_decode(buf, len, fns[f], &h2, &out, err, sizeof(err)), 0, "%s", err);
        assert_same(kd, out);
        assert_same(out, kd);
        uint8_t *buf2;
        size_t len2;
        cr_assert_eq(ckpt_encode(out, &h2, &buf2, &len2), 0);
        cr_assert_eq(len2, len);
        if (!fns[f]) /* equal hashes may come in another order */
            cr_assert_eq(memcmp(buf, buf2, len), 0);
        free(buf2);
        free(buf);
        keydir_free(out);
        keydir_free(kd);
        keydir_free(src);
    }
}

/* The order is a speed contract only: a loader hashing differently, or
 * entries out of order, still give the same keydir. */
Test(checkpoint, any_order_and_other_hash_still_load)
{
    keydir *src = random_keydir(2000, 22);
    keydir *kd = rehashed(src, few_hash);
    ckpt_header h = sample_header(), h2;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    keydir *out = NULL;
    char err[128] = "";
    cr_assert_eq(ckpt_decode(buf, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
    assert_same(kd, out);
    assert_same(out, kd);
    keydir_free(out);
    free(buf);

    /* reversed entries (version 2 header), and the same as version 1 */
    cr_assert_eq(ckpt_encode(src, &h, &buf, &len), 0);
    uint8_t *rev = malloc(len);
    size_t n = each_entry(buf, len, NULL, NULL);
    size_t *at = malloc(n * sizeof(*at)), k = 0, p = 56;
    while (k < n) {
        at[k++] = p;
        p += 14 + ((size_t)buf[p + 12] | (size_t)buf[p + 13] << 8);
    }
    memcpy(rev, buf, 56);
    size_t w = 56;
    for (size_t i = n; i-- > 0;) {
        size_t sz = (i + 1 < n ? at[i + 1] : len - 8) - at[i];
        memcpy(rev + w, buf + at[i], sz);
        w += sz;
    }
    cr_assert_eq(w, len - 8);
    for (uint32_t ver = 1; ver <= 2; ver++) {
        le32(rev + 8, ver);
        reseal(rev, len);
        out = NULL;
        cr_assert_eq(ckpt_decode(rev, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
        assert_same(src, out);
        assert_same(out, src);
        keydir_free(out);
        out = NULL;
        cr_assert_eq(stream_decode(rev, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
        assert_same(src, out);
        keydir_free(out);
    }
    free(at);
    free(rev);
    free(buf);
    keydir_free(kd);
    keydir_free(src);
}

/* Streamed through a 256 KiB window: entries, and keys of up to 64 KiB,
 * cross its edges. */
Test(checkpoint, streamed_round_trip_across_windows)
{
    keydir *kd = random_keydir(20000, 23);
    uint8_t *big = malloc(65535);
    for (uint32_t i = 0; i < 30; i++) {
        memset(big, (int)i, 65535);
        keydir_loc l = {i, i, i};
        cr_assert_eq(keydir_put(kd, big, 30000 + i * 1000 + (i == 29 ? 6535 : 0), l, NULL), 0);
    }
    ckpt_header h = sample_header(), h2;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    cr_assert_gt(len, 3 * 256 * 1024);
    keydir *out = NULL;
    char err[128] = "";
    cr_assert_eq(stream_decode(buf, len, NULL, &h2, &out, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(h2.pos_off, h.pos_off);
    assert_same(kd, out);
    assert_same(out, kd);
    keydir_free(out);

    /* a failing read rejects it, at any read */
    for (long f = 1; f <= 4; f++) {
        memsrc m = {buf, len, 0, f};
        ckpt_reader r = {.size = len, .read = memsrc_read, .ctx = &m};
        keydir *sentinel = (keydir *)(uintptr_t)0x1;
        out = sentinel;
        cr_assert_eq(ckpt_load(&r, &h2, &out, err, sizeof(err)), -1);
        cr_assert_not_null(strstr(err, "read failed"), "%s", err);
        cr_assert(out == sentinel);
    }
    free(big);
    free(buf);
    keydir_free(kd);
}

typedef struct check_ctx {
    size_t calls, reject_at;
    uint64_t sum_len;
} check_ctx;

static int count_entry(void *ctx, keydir_loc loc, char *err, size_t errlen)
{
    check_ctx *c = ctx;
    c->sum_len += loc.len;
    if (++c->calls == c->reject_at) {
        snprintf(err, errlen, "entry %zu refused", c->calls);
        return -1;
    }
    return 0;
}

Test(checkpoint, entry_check_sees_every_entry_and_can_refuse)
{
    keydir *kd = random_keydir(5000, 24);
    uint64_t want = 0;
    size_t pos = 0, klen;
    const void *key;
    keydir_loc l;
    while (keydir_next(kd, &pos, &key, &klen, &l))
        want += l.len;
    ckpt_header h = sample_header(), h2;
    uint8_t *buf;
    size_t len;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    for (int streamed = 0; streamed < 2; streamed++) {
        memsrc m = {buf, len, 0, 0};
        check_ctx c = {0, 0, 0};
        ckpt_reader r = {.size = len, .buf = streamed ? NULL : buf, .read = memsrc_read,
                         .ctx = &m, .check = count_entry, .check_ctx = &c};
        keydir *out = NULL;
        char err[128] = "";
        cr_assert_eq(ckpt_load(&r, &h2, &out, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(c.calls, 5000);
        cr_assert_eq(c.sum_len, want);
        keydir_free(out);

        c = (check_ctx){0, 4321, 0};
        m.reads = 0;
        keydir *sentinel = (keydir *)(uintptr_t)0x1;
        out = sentinel;
        cr_assert_eq(ckpt_load(&r, &h2, &out, err, sizeof(err)), -1);
        cr_assert_str_eq(err, "entry 4321 refused");
        cr_assert(out == sentinel);
    }
    free(buf);
    keydir_free(kd);
}

static int fail_second_write(void *ctx, const void *buf, size_t len)
{
    (void)buf;
    (void)len;
    return ++*(int *)ctx == 2 ? -1 : 0;
}

Test(checkpoint, write_failure_reported)
{
    keydir *kd = random_keydir(20000, 25); /* more than one 256 KiB piece */
    ckpt_header h = sample_header();
    int calls = 0;
    cr_assert_eq(ckpt_write(kd, &h, fail_second_write, &calls), 1);
    cr_assert_eq(calls, 2);
    keydir_free(kd);
}

/* The checkpoint of kd encoded here, one thread, straight from the format:
 * header, entries in keydir_walk order, trailer. */
static uint8_t *reference_encode(const keydir *kd, const ckpt_header *h, size_t *len)
{
    size_t cap = 56 + 8, n = 0;
    keydir_walk *w = keydir_walk_new(kd);
    const void *key;
    size_t klen;
    keydir_loc loc;
    while (keydir_walk_next(w, &key, &klen, &loc) == 1)
        cap += 14 + klen;
    keydir_walk_free(w);
    uint8_t *b = malloc(cap);
    memcpy(b, "S4KVIDX1", 8);
    le32(b + 8, 2);
    le32(b + 12, h->pos_seg);
    le64(b + 16, h->pos_off);
    le64(b + 24, h->next_seq);
    le64(b + 32, h->generation);
    le64(b + 40, keydir_count(kd));
    le64(b + 48, XXH3_64bits(b, 48));
    size_t at = 56;
    w = keydir_walk_new(kd);
    while (keydir_walk_next(w, &key, &klen, &loc) == 1) {
        le32(b + at, loc.seg);
        le32(b + at + 4, loc.off);
        le32(b + at + 8, loc.len);
        b[at + 12] = (uint8_t)klen;
        b[at + 13] = (uint8_t)(klen >> 8);
        memcpy(b + at + 14, key, klen);
        at += 14 + klen;
        n++;
    }
    keydir_walk_free(w);
    cr_assert_eq(n, keydir_count(kd));
    le64(b + at, XXH3_64bits(b + 56, at - 56));
    *len = at + 8;
    return b;
}

/* Past 65,536 entries two threads encode: the bytes are the one-thread
 * encoding's, with the helper's queue at its default bound and at 64 KiB
 * (the helper then waits for the writer again and again). */
Test(checkpoint, two_thread_encode_is_byte_identical, .timeout = 120)
{
    keydir *kd = random_keydir(150000, 31);
    ckpt_header h = sample_header();
    size_t rlen, len;
    uint8_t *ref = reference_encode(kd, &h, &rlen), *buf;
    size_t bounds[2] = {ckpt_par_queue_bytes, 64 * 1024};
    for (int i = 0; i < 2; i++) {
        ckpt_par_queue_bytes = bounds[i];
        cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
        cr_assert_eq(len, rlen);
        cr_assert(memcmp(buf, ref, len) == 0, "queue bound %zu: bytes differ", bounds[i]);
        keydir *out = NULL;
        ckpt_header h2;
        char err[128] = "";
        cr_assert_eq(ckpt_decode(buf, len, NULL, &h2, &out, err, sizeof err), 0, "%s", err);
        assert_same(kd, out);
        keydir_free(out);
        free(buf);
    }
    ckpt_par_queue_bytes = bounds[0];
    free(ref);
    keydir_free(kd);
}

/* A writer that counts its calls in *ctx. */
static int count_writes(void *ctx, const void *buf, size_t len)
{
    (void)buf;
    (void)len;
    ++*(int *)ctx;
    return 0;
}

/* A writer that fails at call number *ctx (counting down). */
static int fail_at_write(void *ctx, const void *buf, size_t len)
{
    (void)buf;
    (void)len;
    int *left = ctx;
    return --*left == 0 ? -1 : 0;
}

/* A write failing in the caller's half, at the switch to the helper's
 * pieces, inside them and at the trailer stops both threads and reports 1
 * (no hang; ASan sees no leak of queued pieces). */
Test(checkpoint, two_thread_encode_write_failures, .timeout = 120)
{
    keydir *kd = random_keydir(150000, 33);
    ckpt_header h = sample_header();
    int writes = 0;
    cr_assert_eq(ckpt_write(kd, &h, count_writes, &writes), 0);
    cr_assert_gt(writes, 8);
    size_t bound = ckpt_par_queue_bytes;
    for (int q = 0; q < 2; q++) {
        ckpt_par_queue_bytes = q ? 64 * 1024 : bound;
        int at[] = {1, 2, writes / 2, writes / 2 + 1, writes - 1, writes};
        for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
            int left = at[i];
            cr_assert_eq(ckpt_write(kd, &h, fail_at_write, &left), 1, "failure at write %d", at[i]);
            cr_assert_eq(left, 0);
        }
    }
    ckpt_par_queue_bytes = bound;
    keydir_free(kd);
}

/* Offsets of the entries of an encoded checkpoint (caller frees). */
static void note_offset(void *ctx, const uint8_t *key, size_t klen, size_t at)
{
    (void)key;
    (void)klen;
    size_t **o = ctx;
    *(*o)++ = at;
}

static size_t *entry_offsets(const uint8_t *buf, size_t len, size_t *n)
{
    *n = each_entry(buf, len, NULL, NULL);
    size_t *offs = malloc(*n * sizeof *offs), *o = offs;
    each_entry(buf, len, note_offset, &o);
    return offs;
}

/* Loads buf from memory or streamed (its read number fail_at failing, 0 =
 * none), on one thread or two, with check (may be NULL); returns
 * ckpt_load's result, the keydir in *out on success. */
static int load_mode(const uint8_t *buf, size_t len, int streamed, long fail_at, int par,
                     int (*check)(void *, keydir_loc, char *, size_t), void *cctx, keydir **out,
                     char *err, size_t errlen)
{
    size_t par_min = ckpt_par_load_min;
    ckpt_par_load_min = par ? 1 : SIZE_MAX;
    memsrc m = {buf, len, 0, fail_at};
    ckpt_reader r = {.size = len, .buf = streamed ? NULL : buf, .read = memsrc_read, .ctx = &m,
                     .check = check, .check_ctx = cctx};
    ckpt_header h;
    int rc = ckpt_load(&r, &h, out, err, errlen);
    ckpt_par_load_min = par_min;
    return rc;
}

/* The two-thread load builds the same keydir as one thread: a big
 * checkpoint (many hand-overs), and few entries with long keys (a batch
 * handed over for its key bytes, not its entry count). */
Test(checkpoint, two_thread_load_matches_one_thread, .timeout = 120)
{
    keydir *kds[2] = {random_keydir(150000, 41), random_keydir(2000, 42)};
    uint8_t *big = malloc(60000);
    for (uint32_t i = 0; i < 40; i++) {
        memset(big, (int)i, 60000);
        keydir_loc l = {i, i, i};
        cr_assert_eq(keydir_put(kds[1], big, 59000 + i, l, NULL), 0);
    }
    free(big);
    for (int k = 0; k < 2; k++) {
        ckpt_header h = sample_header();
        uint8_t *buf;
        size_t len;
        cr_assert_eq(ckpt_encode(kds[k], &h, &buf, &len), 0);
        for (int streamed = 0; streamed < 2; streamed++) {
            check_ctx c = {0, 0, 0};
            keydir *out = NULL;
            char err[256] = "";
            cr_assert_eq(
                load_mode(buf, len, streamed, 0, 1, count_entry, &c, &out, err, sizeof err), 0,
                "%s", err);
            cr_assert_eq(c.calls, keydir_count(kds[k]));
            assert_same(kds[k], out);
            assert_same(out, kds[k]);
            /* and it is as compact as one thread's (the sorted fill held) */
            keydir *one = NULL;
            cr_assert_eq(load_mode(buf, len, streamed, 0, 0, NULL, NULL, &one, err, sizeof err), 0);
            cr_assert_eq(keydir_mem_bytes(out), keydir_mem_bytes(one));
            keydir_free(one);
            keydir_free(out);
        }
        free(buf);
        keydir_free(kds[k]);
    }
}

/* Failures deep in a big checkpoint, alone and two at once, are reported
 * by the two-thread load word for word as by one thread: the first in file
 * order wins, whichever thread finds it. */
Test(checkpoint, two_thread_load_reports_what_one_thread_does, .timeout = 120)
{
    keydir *kd = random_keydir(150000, 43);
    ckpt_header h = sample_header();
    uint8_t *buf;
    size_t len, n;
    cr_assert_eq(ckpt_encode(kd, &h, &buf, &len), 0);
    size_t *off = entry_offsets(buf, len, &n);
    cr_assert_eq(n, 150000);
    uint8_t *b = malloc(len);
    enum { DUP = 1, KLEN0 = 2, REFUSE = 4, TRAILER = 8, READFAIL = 16 };
    static const struct {
        unsigned what;
        const char *want;
    } cases[] = {
        {DUP, "duplicate key in entry"},
        {KLEN0, "key length 0 in entry 130000"},
        {REFUSE, "entry 100000 refused"},
        {TRAILER, "trailer checksum mismatch"},
        {DUP | KLEN0, "duplicate key in entry"},
        {REFUSE | KLEN0, "entry 100000 refused"},
        {DUP | REFUSE, "duplicate key in entry"},
        {DUP | TRAILER, "duplicate key in entry"},
        {READFAIL, "read failed"},
    };
    /* a duplicate before entry 100000: an entry whose key has the length of
     * the one before it takes that key */
    size_t dup = 99000;
    while (memcmp(buf + off[dup] + 12, buf + off[dup - 1] + 12, 2) != 0)
        dup++;
    cr_assert_lt(dup, 100000);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        unsigned w = cases[ci].what;
        memcpy(b, buf, len);
        if (w & DUP)
            memcpy(b + off[dup] + 14, b + off[dup - 1] + 14, b[off[dup] + 12]);
        if (w & KLEN0) /* the bytes after it then misframe: the zero must win */
            b[off[130000] + 12] = b[off[130000] + 13] = 0;
        reseal(b, len);
        if (w & TRAILER)
            b[len - 1] ^= 1;
        for (int streamed = (w & (TRAILER | READFAIL)) ? 1 : 0; streamed < 2; streamed++) {
            char errs[2][256];
            for (int par = 0; par < 2; par++) {
                check_ctx c = {0, (w & REFUSE) ? 100000 : 0, 0};
                keydir *sentinel = (keydir *)(uintptr_t)0x1, *out = sentinel;
                errs[par][0] = '\0';
                /* READFAIL: the read half way through the file fails */
                int rc = (w & READFAIL)
                             ? load_mode(b, len, 1, (long)(len / (256 * 1024) / 2), par, NULL,
                                         NULL, &out, errs[par], sizeof errs[par])
                             : load_mode(b, len, streamed, 0, par, count_entry, &c, &out,
                                         errs[par], sizeof errs[par]);
                cr_assert_eq(rc, -1, "case %zu%s%s accepted", ci, streamed ? " streamed" : "",
                             par ? " on two threads" : "");
                cr_assert(out == sentinel);
                cr_assert_not_null(strstr(errs[par], cases[ci].want),
                                   "case %zu: \"%s\" lacks \"%s\"", ci, errs[par],
                                   cases[ci].want);
            }
            cr_assert_str_eq(errs[1], errs[0], "case %zu%s: two threads say \"%s\", one \"%s\"",
                             ci, streamed ? " streamed" : "", errs[1], errs[0]);
        }
    }
    free(b);
    free(off);
    free(buf);
    keydir_free(kd);
}
