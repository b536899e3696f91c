/*
 * test_keydir.c - the in-memory hash index (index/keydir.c): round trips,
 * growth and randomised model checks against a trivial reference, forced
 * collisions, backward-shift deletion, cas, the cursor, binary and maximal
 * keys, arena compaction, and the memory-per-key figure.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "keydir.h"
#include "util.h"

/* ---- helpers */

static keydir_loc L(uint32_t seg, uint32_t off, uint32_t len)
{
    keydir_loc l = {seg, off, len};
    return l;
}

static int loc_eq(keydir_loc a, keydir_loc b)
{
    return a.seg == b.seg && a.off == b.off && a.len == b.len;
}

/* Key for id: 4 bytes of id (little-endian, so NULs are common), then
 * id % 29 filler bytes derived from id. Distinct ids give distinct keys, and
 * the id can be read back from the first 4 bytes. */
static size_t make_key(uint32_t id, uint8_t *k)
{
    size_t n = 4 + id % 29;
    k[0] = (uint8_t)id;
    k[1] = (uint8_t)(id >> 8);
    k[2] = (uint8_t)(id >> 16);
    k[3] = (uint8_t)(id >> 24);
    for (size_t i = 4; i < n; i++)
        k[i] = (uint8_t)(id * 31 + i);
    return n;
}

static uint32_t key_id(const void *key)
{
    const uint8_t *k = key;
    return (uint32_t)k[0] | (uint32_t)k[1] << 8 | (uint32_t)k[2] << 16 |
           (uint32_t)k[3] << 24;
}

static uint64_t const_hash(const void *key, size_t klen)
{
    (void)key; (void)klen;
    return 42;
}

static uint64_t few_hash(const void *key, size_t klen)
{
    /* 4 values; 0xffffffff folds to the last home slot, so clusters wrap */
    static const uint64_t v[4] = {0, 0xffffffffu, 0x7fffffffu, 0x12345678u};
    return v[((const uint8_t *)key)[klen - 1] & 3];
}

/* Reference model: present flag and location per key id. */
typedef struct model {
    uint32_t n;
    uint8_t *present;
    keydir_loc *loc;
    size_t count;
} model;

static void model_init(model *m, uint32_t n)
{
    m->n = n;
    m->present = calloc(n, 1);
    m->loc = calloc(n, sizeof(keydir_loc));
    m->count = 0;
    cr_assert(m->present && m->loc);
}

static void model_free(model *m)
{
    free(m->present);
    free(m->loc);
}

/* Full comparison: every id's get agrees with the model, and the cursor
 * visits exactly the present keys, each once, with the model's location. */
static void check_all(const keydir *kd, const model *m)
{
    uint8_t k[64];
    cr_assert_eq(keydir_count(kd), m->count);
    for (uint32_t id = 0; id < m->n; id++) {
        keydir_loc l;
        size_t n = make_key(id, k);
        int r = keydir_get(kd, k, n, &l);
        cr_assert_eq(r, m->present[id], "id %u: get %d, model %d", id, r, m->present[id]);
        if (r)
            cr_assert(loc_eq(l, m->loc[id]), "id %u: wrong location", id);
    }
    uint8_t *seen = calloc(m->n, 1);
    cr_assert(seen);
    size_t pos = 0, visits = 0, klen;
    const void *key;
    keydir_loc l;
    while (keydir_next(kd, &pos, &key, &klen, &l)) {
        uint32_t id = key_id(key);
        cr_assert_lt(id, m->n);
        cr_assert(m->present[id], "cursor returned absent id %u", id);
        cr_assert(!seen[id], "cursor returned id %u twice", id);
        cr_assert_eq(klen, make_key(id, k));
        cr_assert_eq(memcmp(key, k, klen), 0);
        cr_assert(loc_eq(l, m->loc[id]));
        seen[id] = 1;
        visits++;
    }
    cr_assert_eq(visits, m->count);
    cr_assert_eq(keydir_next(kd, &pos, &key, &klen, &l), 0, "cursor restarts");
    free(seen);
}

/* Random puts, deletes, gets and cas against the model. */
static void random_ops(keydir *kd, model *m, uint64_t seed, size_t ops,
                       unsigned put_pct, unsigned del_pct, size_t check_every)
{
    uint8_t k[64];
    for (size_t i = 0; i < ops; i++) {
        uint64_t r = tu_rand(&seed);
        uint32_t id = (uint32_t)(r % m->n);
        unsigned op = (unsigned)((r >> 32) % 100);
        size_t n = make_key(id, k);
        keydir_loc l = L((uint32_t)(r >> 40), (uint32_t)i, (uint32_t)(r >> 8)), old;
        if (op < put_pct) {
            int ret = keydir_put(kd, k, n, l, &old);
            cr_assert_eq(ret, m->present[id], "put id %u returned %d", id, ret);
            if (ret)
                cr_assert(loc_eq(old, m->loc[id]));
            else
                m->count++;
            m->present[id] = 1;
            m->loc[id] = l;
        } else if (op < put_pct + del_pct) {
            int ret = keydir_del(kd, k, n, &old);
            cr_assert_eq(ret, m->present[id], "del id %u returned %d", id, ret);
            if (ret) {
                cr_assert(loc_eq(old, m->loc[id]));
                m->count--;
            }
            m->present[id] = 0;
        } else if (op < put_pct + del_pct + 5) {
            /* cas: half the time with the right expectation */
            keydir_loc expect = m->loc[id];
            if (r & 1)
                expect.off ^= 1;
            int ret = keydir_cas(kd, k, n, expect, l);
            int want = m->present[id] && !(r & 1);
            cr_assert_eq(ret, want, "cas id %u returned %d", id, ret);
            if (want)
                m->loc[id] = l;
        } else {
            int ret = keydir_get(kd, k, n, &old);
            cr_assert_eq(ret, m->present[id], "get id %u returned %d", id, ret);
            if (ret)
                cr_assert(loc_eq(old, m->loc[id]));
        }
        if (check_every && (i + 1) % check_every == 0)
            check_all(kd, m);
    }
    check_all(kd, m);
}

/* ---- tests */

Test(keydir, put_get_replace_del)
{
    keydir *kd = keydir_new(0, NULL);
    cr_assert_not_null(kd);
    keydir_loc l, old;
    cr_assert_eq(keydir_count(kd), 0);
    cr_assert_eq(keydir_get(kd, "a", 1, &l), 0);
    cr_assert_eq(keydir_put(kd, "a", 1, L(1, 2, 3), &old), 0);
    cr_assert_eq(keydir_put(kd, "bb", 2, L(4, 5, 6), NULL), 0);
    cr_assert_eq(keydir_count(kd), 2);
    cr_assert_eq(keydir_get(kd, "a", 1, &l), 1);
    cr_assert(loc_eq(l, L(1, 2, 3)));
    cr_assert_eq(keydir_get(kd, "bb", 2, NULL), 1);
    cr_assert_eq(keydir_get(kd, "b", 1, &l), 0, "prefix is another key");
    cr_assert_eq(keydir_get(kd, "bbb", 3, &l), 0);

    cr_assert_eq(keydir_put(kd, "a", 1, L(7, 8, 9), &old), 1);
    cr_assert(loc_eq(old, L(1, 2, 3)));
    cr_assert_eq(keydir_get(kd, "a", 1, &l), 1);
    cr_assert(loc_eq(l, L(7, 8, 9)));
    cr_assert_eq(keydir_count(kd), 2);

    cr_assert_eq(keydir_del(kd, "a", 1, &old), 1);
    cr_assert(loc_eq(old, L(7, 8, 9)));
    cr_assert_eq(keydir_del(kd, "a", 1, &old), 0);
    cr_assert_eq(keydir_get(kd, "a", 1, &l), 0);
    cr_assert_eq(keydir_count(kd), 1);
    cr_assert_eq(keydir_put(kd, "a", 1, L(10, 11, 12), NULL), 0, "re-put after delete is new");
    cr_assert_eq(keydir_get(kd, "a", 1, &l), 1);
    cr_assert(loc_eq(l, L(10, 11, 12)));
    cr_assert_eq(keydir_del(kd, "zz", 2, NULL), 0);
    cr_assert_eq(keydir_count(kd), 2);
    keydir_free(kd);
    keydir_free(NULL);
}

Test(keydir, extreme_locations)
{
    keydir *kd = keydir_new(0, NULL);
    keydir_loc l, big = L(UINT32_MAX, UINT32_MAX, UINT32_MAX), zero = L(0, 0, 0);
    cr_assert_eq(keydir_put(kd, "x", 1, big, NULL), 0);
    cr_assert_eq(keydir_put(kd, "y", 1, zero, NULL), 0);
    cr_assert_eq(keydir_get(kd, "x", 1, &l), 1);
    cr_assert(loc_eq(l, big));
    cr_assert_eq(keydir_get(kd, "y", 1, &l), 1);
    cr_assert(loc_eq(l, zero));
    keydir_free(kd);
}

Test(keydir, growth_model_200k, .timeout = 120)
{
    keydir *kd = keydir_new(0, NULL);
    model m;
    model_init(&m, 200000);
    uint8_t k[64];
    /* grow from the smallest table to 200k keys, checking along the way */
    for (uint32_t id = 0; id < m.n; id++) {
        size_t n = make_key(id, k);
        keydir_loc l = L(id, id * 3u, id ^ 0x5555u);
        cr_assert_eq(keydir_put(kd, k, n, l, NULL), 0, "id %u", id);
        m.present[id] = 1;
        m.loc[id] = l;
        m.count++;
        if (id == 10 || id == 1000 || id == 50000)
            cr_assert_eq(keydir_count(kd), m.count);
    }
    check_all(kd, &m);
    random_ops(kd, &m, 1, 600000, 45, 40, 200000);
    keydir_free(kd);
    model_free(&m);
}

Test(keydir, random_model_small_tables)
{
    /* many seeds over small key spaces: lots of growth, empty-and-refill */
    for (uint64_t seed = 1; seed <= 40; seed++) {
        keydir *kd = keydir_new(seed % 3 ? 0 : 100, NULL);
        model m;
        model_init(&m, (uint32_t)(8 + seed * 7));
        random_ops(kd, &m, seed, 4000, 50, 45, 97);
        keydir_free(kd);
        model_free(&m);
    }
}

Test(keydir, all_keys_collide)
{
    keydir *kd = keydir_new(0, const_hash);
    model m;
    model_init(&m, 1500);
    random_ops(kd, &m, 7, 30000, 55, 40, 1000);
    keydir_free(kd);
    model_free(&m);
}

Test(keydir, few_hash_values_wrapping_clusters)
{
    for (uint64_t seed = 1; seed <= 5; seed++) {
        keydir *kd = keydir_new(0, few_hash);
        model m;
        model_init(&m, 800);
        random_ops(kd, &m, seed, 20000, 50, 45, 500);
        keydir_free(kd);
        model_free(&m);
    }
}

/* Deletes from every position of a collision cluster (deterministic), with
 * the cluster straddling the end of the table. */
Test(keydir, backward_shift_every_position)
{
    const keydir_hash_fn fns[2] = {const_hash, few_hash};
    for (int f = 0; f < 2; f++) {
        for (uint32_t victim = 0; victim < 40; victim++) {
            keydir *kd = keydir_new(0, fns[f]);
            model m;
            model_init(&m, 40);
            uint8_t k[64];
            for (uint32_t id = 0; id < 40; id++) {
                size_t n = make_key(id, k);
                cr_assert_eq(keydir_put(kd, k, n, L(id, id, id), NULL), 0);
                m.present[id] = 1;
                m.loc[id] = L(id, id, id);
                m.count++;
            }
            size_t n = make_key(victim, k);
            keydir_loc old;
            cr_assert_eq(keydir_del(kd, k, n, &old), 1);
            cr_assert(loc_eq(old, L(victim, victim, victim)));
            m.present[victim] = 0;
            m.count--;
            check_all(kd, &m);
            /* then delete the rest one by one in a scrambled order */
            for (uint32_t s = 0; s < 40; s++) {
                uint32_t id = (s * 17 + victim) % 40;
                n = make_key(id, k);
                cr_assert_eq(keydir_del(kd, k, n, NULL), m.present[id]);
                if (m.present[id])
                    m.count--;
                m.present[id] = 0;
                check_all(kd, &m);
            }
            cr_assert_eq(keydir_count(kd), 0);
            keydir_free(kd);
            model_free(&m);
        }
    }
}

Test(keydir, cas_semantics)
{
    keydir *kd = keydir_new(0, NULL);
    keydir_loc l;
    cr_assert_eq(keydir_cas(kd, "k", 1, L(1, 2, 3), L(4, 5, 6)), 0, "absent key");
    cr_assert_eq(keydir_get(kd, "k", 1, &l), 0, "cas does not insert");
    cr_assert_eq(keydir_count(kd), 0);

    keydir_put(kd, "k", 1, L(1, 2, 3), NULL);
    cr_assert_eq(keydir_cas(kd, "k", 1, L(9, 2, 3), L(4, 5, 6)), 0, "seg differs");
    cr_assert_eq(keydir_cas(kd, "k", 1, L(1, 9, 3), L(4, 5, 6)), 0, "off differs");
    cr_assert_eq(keydir_cas(kd, "k", 1, L(1, 2, 9), L(4, 5, 6)), 0, "len differs");
    cr_assert_eq(keydir_get(kd, "k", 1, &l), 1);
    cr_assert(loc_eq(l, L(1, 2, 3)), "failed cas leaves location");

    cr_assert_eq(keydir_cas(kd, "k", 1, L(1, 2, 3), L(4, 5, 6)), 1);
    cr_assert_eq(keydir_get(kd, "k", 1, &l), 1);
    cr_assert(loc_eq(l, L(4, 5, 6)));
    cr_assert_eq(keydir_cas(kd, "k", 1, L(1, 2, 3), L(7, 7, 7)), 0, "stale expectation");
    cr_assert_eq(keydir_count(kd), 1);

    keydir_del(kd, "k", 1, NULL);
    cr_assert_eq(keydir_cas(kd, "k", 1, L(4, 5, 6), L(7, 7, 7)), 0, "deleted key");
    cr_assert_eq(keydir_get(kd, "k", 1, &l), 0);
    keydir_free(kd);
}

Test(keydir, cursor_empty_and_once_each)
{
    keydir *kd = keydir_new(0, NULL);
    size_t pos = 0, klen;
    const void *key;
    keydir_loc l;
    cr_assert_eq(keydir_next(kd, &pos, &key, &klen, &l), 0);
    model m;
    model_init(&m, 5000);
    uint8_t k[64];
    for (uint32_t id = 0; id < m.n; id += 2) {
        size_t n = make_key(id, k);
        keydir_put(kd, k, n, L(id, 1, 2), NULL);
        m.present[id] = 1;
        m.loc[id] = L(id, 1, 2);
        m.count++;
    }
    check_all(kd, &m); /* includes the exactly-once cursor walk */
    keydir_free(kd);
    model_free(&m);
}

Test(keydir, binary_keys_with_nul)
{
    static const struct { const char *k; size_t n; } keys[] = {
        {"\0", 1}, {"\0\0", 2}, {"\0\0\0", 3}, {"a\0b", 3}, {"a\0c", 3},
        {"a", 1}, {"a\0", 2}, {"\xff\0\xff", 3}, {"\0a", 2},
    };
    const size_t nk = sizeof(keys) / sizeof(keys[0]);
    keydir *kd = keydir_new(0, NULL);
    for (size_t i = 0; i < nk; i++)
        cr_assert_eq(keydir_put(kd, keys[i].k, keys[i].n, L((uint32_t)i, 0, 0), NULL), 0,
                     "key %zu collides with another", i);
    cr_assert_eq(keydir_count(kd), nk);
    for (size_t i = 0; i < nk; i++) {
        keydir_loc l;
        cr_assert_eq(keydir_get(kd, keys[i].k, keys[i].n, &l), 1);
        cr_assert_eq(l.seg, i);
    }
    size_t pos = 0, klen, seen = 0;
    const void *key;
    keydir_loc l;
    while (keydir_next(kd, &pos, &key, &klen, &l)) {
        cr_assert_eq(klen, keys[l.seg].n);
        cr_assert_eq(memcmp(key, keys[l.seg].k, klen), 0);
        seen++;
    }
    cr_assert_eq(seen, nk);
    keydir_free(kd);
}

Test(keydir, key_length_limits)
{
    keydir *kd = keydir_new(0, NULL);
    uint8_t *big = malloc(65536);
    cr_assert_not_null(big);
    for (size_t i = 0; i < 65536; i++)
        big[i] = (uint8_t)(i * 7);
    keydir_loc l;
    cr_assert_eq(keydir_put(kd, big, 65535, L(1, 1, 1), NULL), 0);
    cr_assert_eq(keydir_put(kd, big, 65534, L(2, 2, 2), NULL), 0);
    cr_assert_eq(keydir_get(kd, big, 65535, &l), 1);
    cr_assert(loc_eq(l, L(1, 1, 1)));
    cr_assert_eq(keydir_get(kd, big, 65534, &l), 1);
    cr_assert(loc_eq(l, L(2, 2, 2)));
    size_t pos = 0, klen;
    const void *key;
    int saw_max = 0;
    while (keydir_next(kd, &pos, &key, &klen, &l))
        if (klen == 65535) {
            cr_assert_eq(memcmp(key, big, 65535), 0);
            saw_max = 1;
        }
    cr_assert(saw_max);
    /* out of range lengths are refused and change nothing */
    cr_assert_eq(keydir_put(kd, big, 65536, L(3, 3, 3), NULL), -1);
    cr_assert_eq(keydir_put(kd, big, 0, L(3, 3, 3), NULL), -1);
    cr_assert_eq(keydir_get(kd, big, 65536, &l), 0);
    cr_assert_eq(keydir_count(kd), 2);
    cr_assert_eq(keydir_del(kd, big, 65535, &l), 1);
    cr_assert(loc_eq(l, L(1, 1, 1)));
    cr_assert_eq(keydir_get(kd, big, 65534, &l), 1);
    free(big);
    keydir_free(kd);
}

Test(keydir, arena_compaction_keeps_live_keys, .timeout = 60)
{
    keydir *kd = keydir_new(0, NULL);
    model m;
    model_init(&m, 100000);
    uint8_t k[64];
    for (uint32_t id = 0; id < m.n; id++) {
        size_t n = make_key(id, k);
        keydir_put(kd, k, n, L(id, id, 1), NULL);
        m.present[id] = 1;
        m.loc[id] = L(id, id, 1);
        m.count++;
    }
    size_t full = keydir_mem_bytes(kd);
    for (uint32_t id = 0; id < m.n; id++) {
        if (id % 10 == 3)
            continue;
        size_t n = make_key(id, k);
        cr_assert_eq(keydir_del(kd, k, n, NULL), 1);
        m.present[id] = 0;
        m.count--;
    }
    size_t after = keydir_mem_bytes(kd);
    cr_log_info("keydir: 100k keys %zu bytes, after deleting 90%%: %zu bytes", full, after);
    cr_assert_lt(after, full / 2, "arena was not compacted (%zu -> %zu)", full, after);
    check_all(kd, &m);
    /* the keydir keeps working after compaction: refill and churn */
    random_ops(kd, &m, 99, 200000, 50, 45, 0);
    keydir_free(kd);
    model_free(&m);
}

Test(keydir, memory_per_key_1m, .timeout = 120)
{
    const size_t n = 1000000;
    keydir *grown = keydir_new(0, NULL);
    keydir *sized = keydir_new(n, NULL);
    uint8_t k[16];
    uint64_t st = 12345;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < n; i++) {
        uint64_t a = tu_rand(&st);
        memcpy(k, &a, 8);
        memcpy(k + 8, &i, 8);
        cr_assert_eq(keydir_put(grown, k, 16, L(1, (uint32_t)i, 100), NULL), 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double put_ns = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n;
    st = 12345;
    for (size_t i = 0; i < n; i++) {
        uint64_t a = tu_rand(&st);
        memcpy(k, &a, 8);
        memcpy(k + 8, &i, 8);
        cr_assert_eq(keydir_put(sized, k, 16, L(1, (uint32_t)i, 100), NULL), 0);
    }
    cr_assert_eq(keydir_count(grown), n);
    double g = (double)keydir_mem_bytes(grown) / n;
    double s = (double)keydir_mem_bytes(sized) / n;
    cr_log_info("keydir: 1M 16-byte keys: %.1f bytes/key grown from empty, "
                "%.1f presized (key bytes included); put %.0f ns/op",
                g, s, put_ns);
    cr_assert_lt(g, 64 + 16, "memory per key regressed: %.1f", g);
    cr_assert_lt(s, 64 + 16, "memory per key regressed: %.1f", s);
    keydir_free(grown);
    keydir_free(sized);
}

/* Out of memory: cap the address space (each Criterion test is its own
 * process), fill until put fails, and check that the failed put changed
 * nothing. Several caps, so that both the table and the arena run out. */
#if defined(__SANITIZE_ADDRESS__)
Test(keydir, put_enomem_leaves_keydir_unchanged, .disabled = true) {}
#else
static size_t vm_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f) {
        if (fscanf(f, "%lu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

Test(keydir, put_enomem_leaves_keydir_unchanged, .timeout = 120)
{
    struct rlimit saved;
    cr_assert_eq(getrlimit(RLIMIT_AS, &saved), 0);
    for (size_t extra_mb = 20; extra_mb <= 60; extra_mb += 10) {
        keydir *kd = keydir_new(0, NULL);
        cr_assert_not_null(kd);
        struct rlimit lim = saved;
        lim.rlim_cur = vm_bytes() + extra_mb * 1024 * 1024;
        if (saved.rlim_cur != RLIM_INFINITY && saved.rlim_cur < lim.rlim_cur)
            lim.rlim_cur = saved.rlim_cur;
        cr_assert_eq(setrlimit(RLIMIT_AS, &lim), 0);
        uint8_t k[16] = {0};
        uint32_t n = 0;
        int r = 0;
        for (; n < 5000000; n++) {
            memcpy(k, &n, 4);
            r = keydir_put(kd, k, 16, L(n, n, n), NULL);
            if (r != 0)
                break;
        }
        size_t mem = keydir_mem_bytes(kd);
        cr_assert_eq(setrlimit(RLIMIT_AS, &saved), 0);
        if (r != -1) { /* e.g. under valgrind, which keeps its own limits */
            keydir_free(kd);
            cr_skip_test("no allocation failure under a +%zu MiB address space cap",
                         extra_mb);
        }
        cr_log_info("keydir: out of memory at key %u (%zu bytes held, cap +%zu MiB)",
                    n, mem, extra_mb);
        cr_assert_eq(keydir_count(kd), n);
        keydir_loc l;
        cr_assert_eq(keydir_get(kd, k, 16, &l), 0, "failed put left its key");
        for (uint32_t i = 0; i < n; i++) {
            memcpy(k, &i, 4);
            cr_assert_eq(keydir_get(kd, k, 16, &l), 1, "key %u lost", i);
            cr_assert(loc_eq(l, L(i, i, i)));
        }
        /* with memory back, the same put succeeds */
        memcpy(k, &n, 4);
        cr_assert_eq(keydir_put(kd, k, 16, L(1, 2, 3), NULL), 0);
        keydir_free(kd);
    }
}
#endif

/* Walks are in arena order and step over deleted entries, including after
 * the arena has been compacted. */
Test(keydir, walk_skips_deleted_entries_in_arena_order)
{
    keydir *kd = keydir_new(0, NULL);
    char k[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof k, "walk-%d", i);
        keydir_loc l = {(uint32_t)i, (uint32_t)i, 0};
        cr_assert_eq(keydir_put(kd, k, strlen(k), l, NULL), 0);
    }
    for (int i = 0; i < 5000; i += 3) {
        snprintf(k, sizeof k, "walk-%d", i);
        cr_assert_eq(keydir_del(kd, k, strlen(k), NULL), 1);
    }
    size_t pos = 0, n = 0, kl;
    const void *key;
    keydir_loc l;
    int last = -1;
    while (keydir_next(kd, &pos, &key, &kl, &l)) {
        cr_assert_neq(l.seg % 3, 0, "deleted entry %u walked", l.seg);
        cr_assert_gt((int)l.seg, last, "insertion order while nothing was compacted");
        last = (int)l.seg;
        n++;
    }
    cr_assert_eq(n, keydir_count(kd));
    keydir_free(kd);
}

/* ---- hash order: keydir_walk and keydir_put_sorted */

static uint64_t xxh_default(const void *key, size_t klen);

/* The folded hash the table keeps, for a hash function (NULL = xxh3). */
static uint32_t folded(keydir_hash_fn fn, const void *key, size_t klen)
{
    uint64_t h = fn ? fn(key, klen) : xxh_default(key, klen);
    return (uint32_t)(h ^ (h >> 32));
}

#include <xxhash.h>
static uint64_t xxh_default(const void *key, size_t klen)
{
    return XXH3_64bits(key, klen);
}

/* Walks kd in hash order: every entry once, hashes ascending; returns the
 * number walked. */
static size_t check_walk(const keydir *kd, keydir_hash_fn fn)
{
    keydir_walk *w = keydir_walk_new(kd);
    cr_assert_not_null(w);
    const void *key;
    size_t klen, n = 0;
    keydir_loc loc, l2;
    uint32_t last = 0;
    int r;
    while ((r = keydir_walk_next(w, &key, &klen, &loc)) == 1) {
        uint32_t h = folded(fn, key, klen);
        cr_assert_geq(h, last, "entry %zu: hash %08x after %08x", n, h, last);
        last = h;
        cr_assert_eq(keydir_get(kd, key, klen, &l2), 1);
        cr_assert(loc_eq(loc, l2));
        n++;
    }
    cr_assert_eq(r, 0);
    keydir_walk_free(w);
    cr_assert_eq(n, keydir_count(kd));
    return n;
}

/* A copy of kd built by keydir_put_sorted in kd's hash order. */
static keydir *sorted_copy(const keydir *kd, keydir_hash_fn fn, size_t expect)
{
    keydir *c = keydir_new(expect, fn);
    cr_assert_not_null(c);
    keydir_walk *w = keydir_walk_new(kd);
    const void *key;
    size_t klen;
    keydir_loc loc;
    while (keydir_walk_next(w, &key, &klen, &loc) == 1)
        cr_assert_eq(keydir_put_sorted(c, key, klen, loc), 0);
    keydir_walk_free(w);
    return c;
}

static void assert_same_kd(const keydir *a, const keydir *b)
{
    cr_assert_eq(keydir_count(a), keydir_count(b));
    size_t pos = 0, klen;
    const void *key;
    keydir_loc la, lb;
    while (keydir_next(a, &pos, &key, &klen, &la)) {
        cr_assert_eq(keydir_get(b, key, klen, &lb), 1);
        cr_assert(loc_eq(la, lb));
    }
}

Test(keydir, walk_in_hash_order_any_shape, .timeout = 60)
{
    const keydir_hash_fn fns[3] = {NULL, few_hash, const_hash};
    uint8_t k[40];
    for (int f = 0; f < 3; f++) {
        for (uint64_t seed = 1; seed <= 30; seed++) {
            uint64_t st = seed;
            keydir *kd = keydir_new(seed % 2 ? 0 : 50, fns[f]);
            uint32_t n = (uint32_t)(f == 2 ? seed * 7 : seed * seed * 20);
            for (uint32_t i = 0; i < n; i++) {
                uint32_t id = (uint32_t)(tu_rand(&st) % (n + 1));
                size_t kl = make_key(id, k);
                if (tu_rand(&st) % 4 == 0)
                    keydir_del(kd, k, kl, NULL);
                else
                    keydir_put(kd, k, kl, L(id, i, 1), NULL);
            }
            check_walk(kd, fns[f]);
            /* sorted inserts rebuild it; the copy walks in order again */
            keydir *c = sorted_copy(kd, fns[f], keydir_count(kd));
            assert_same_kd(kd, c);
            assert_same_kd(c, kd);
            check_walk(c, fns[f]);
            keydir_free(c);
            keydir_free(kd);
        }
    }
}

/* Sorted inserts into a table whose last slots take the biggest hashes:
 * the fill runs off the end and wraps. */
Test(keydir, put_sorted_wraps_at_table_end)
{
    keydir *src = keydir_new(0, few_hash);
    uint8_t k[40];
    for (uint32_t id = 0; id < 300; id++)
        keydir_put(src, k, make_key(id, k), L(id, 0, 0), NULL);
    keydir *c = sorted_copy(src, few_hash, 300);
    assert_same_kd(src, c);
    check_walk(c, few_hash);
    /* deletes in the copy keep working (backward shift over a wrapped table) */
    for (uint32_t id = 0; id < 300; id += 2)
        cr_assert_eq(keydir_del(c, k, make_key(id, k), NULL), 1);
    for (uint32_t id = 0; id < 300; id++)
        cr_assert_eq(keydir_get(c, k, make_key(id, k), NULL), id % 2);
    keydir_free(c);
    keydir_free(src);
}

Test(keydir, put_sorted_out_of_order_and_duplicates)
{
    uint8_t k[40];
    /* reverse hash order: every key after the first is out of order, all
     * still land; a repeated key replaces and returns 1 */
    keydir *src = keydir_new(0, NULL);
    for (uint32_t id = 0; id < 2000; id++)
        keydir_put(src, k, make_key(id, k), L(id, 1, 2), NULL);
    keydir_walk *w = keydir_walk_new(src);
    const void **keys = calloc(2000, sizeof(*keys));
    size_t *lens = calloc(2000, sizeof(*lens));
    keydir_loc *locs = calloc(2000, sizeof(*locs));
    size_t n = 0;
    while (keydir_walk_next(w, &keys[n], &lens[n], &locs[n]) == 1)
        n++;
    keydir_walk_free(w);
    cr_assert_eq(n, 2000);
    keydir *c = keydir_new(10, NULL); /* too small: the sorted fill must give way to growth */
    for (size_t i = n; i-- > 1000;)
        cr_assert_eq(keydir_put_sorted(c, keys[i], lens[i], locs[i]), 0);
    for (size_t i = 0; i < 1000; i++)
        cr_assert_eq(keydir_put_sorted(c, keys[i], lens[i], locs[i]), 0);
    cr_assert_eq(keydir_put_sorted(c, keys[7], lens[7], L(9, 9, 9)), 1);
    cr_assert_eq(keydir_put_sorted(c, keys[1999], lens[1999], L(8, 8, 8)), 1);
    keydir_loc l;
    cr_assert(keydir_get(c, keys[7], lens[7], &l) && loc_eq(l, L(9, 9, 9)));
    keydir_put(src, keys[7], lens[7], L(9, 9, 9), NULL);
    keydir_put(src, keys[1999], lens[1999], L(8, 8, 8), NULL);
    locs[7] = L(9, 9, 9);
    locs[1999] = L(8, 8, 8);
    assert_same_kd(src, c);
    assert_same_kd(c, src);
    keydir_free(c);

    /* in order, a repeat of the previous key (equal hash) is found too */
    c = keydir_new(2000, NULL);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(keydir_put_sorted(c, keys[i], lens[i], locs[i]), 0);
        cr_assert_eq(keydir_put_sorted(c, keys[i], lens[i], locs[i]), 1);
    }
    cr_assert_eq(keydir_count(c), 2000);
    assert_same_kd(src, c);
    keydir_free(c);
    free(keys);
    free(lens);
    free(locs);
    keydir_free(src);
}

Test(keydir, reserve_then_sorted_fill_allocates_nothing_more)
{
    keydir *src = keydir_new(0, NULL);
    uint8_t k[40];
    size_t key_bytes = 0;
    for (uint32_t id = 0; id < 50000; id++) {
        size_t kl = make_key(id, k);
        key_bytes += kl;
        keydir_put(src, k, kl, L(id, id, id), NULL);
    }
    keydir *c = keydir_new(0, NULL);
    cr_assert_eq(keydir_reserve(c, 50000, key_bytes), 0);
    size_t mem = keydir_mem_bytes(c);
    keydir_walk *w = keydir_walk_new(src);
    const void *key;
    size_t klen;
    keydir_loc loc;
    while (keydir_walk_next(w, &key, &klen, &loc) == 1)
        cr_assert_eq(keydir_put_sorted(c, key, klen, loc), 0);
    keydir_walk_free(w);
    cr_assert_eq(keydir_mem_bytes(c), mem, "grew during the reserved fill");
    assert_same_kd(src, c);
    cr_assert_eq(keydir_reserve(c, (size_t)1 << 40, 0), -1);
    cr_assert_eq(keydir_count(c), 50000);
    keydir_free(c);
    keydir_free(src);
}

Test(keydir, mark_cleared_by_every_change)
{
    keydir *kd = keydir_new(0, NULL);
    cr_assert_eq(keydir_marked(kd), 0);
    keydir_mark(kd);
    cr_assert_eq(keydir_marked(kd), 1);
    keydir_get(kd, "a", 1, NULL);
    keydir_del(kd, "a", 1, NULL); /* absent: no change */
    cr_assert_eq(keydir_cas(kd, "a", 1, L(1, 1, 1), L(2, 2, 2)), 0);
    cr_assert_eq(keydir_marked(kd), 1);
    keydir_put(kd, "a", 1, L(1, 1, 1), NULL);
    cr_assert_eq(keydir_marked(kd), 0);
    keydir_mark(kd);
    keydir_put(kd, "a", 1, L(1, 1, 2), NULL); /* replace */
    cr_assert_eq(keydir_marked(kd), 0);
    keydir_mark(kd);
    cr_assert_eq(keydir_cas(kd, "a", 1, L(1, 1, 2), L(2, 2, 2)), 1);
    cr_assert_eq(keydir_marked(kd), 0);
    keydir_mark(kd);
    keydir_put_sorted(kd, "b", 1, L(1, 1, 1));
    cr_assert_eq(keydir_marked(kd), 0);
    keydir_mark(kd);
    cr_assert_eq(keydir_del(kd, "a", 1, NULL), 1);
    cr_assert_eq(keydir_marked(kd), 0);
    keydir_free(kd);
}
