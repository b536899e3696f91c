/*
 * engine.h - the adapter interface s4kv-bench drives every engine through.
 *
 * One adapter per engine (engine_s4kv.c, engine_rocksdb.c, engine_leveldb.c,
 * engine_lmdb.c), each a `const engine` with the functions below. The harness
 * (bench.c) generates the keys and values, times each call and checks every
 * value a get returns; an adapter only translates one call into the engine's
 * own API, with the engine's default options (the few settings it changes are
 * said by describe(), and printed with the results).
 *
 * Invariant: an adapter never caches values itself and never skips work the
 * engine would do for a real caller: a put_batch returns when the engine has
 * acknowledged the whole batch (after an fsync when opened with sync=1), a get
 * returns the engine's current value copied into the caller's buffer.
 */
#ifndef BENCH_ENGINE_H
#define BENCH_ENGINE_H

#include <stddef.h>
#include <stdint.h>

/* One key/value pair of a batch. Memory is the harness's, borrowed for the
 * duration of the call. */
typedef struct bench_kv {
    const void *key;
    size_t klen;
    const void *val;
    size_t vlen;
} bench_kv;

typedef struct engine {
    const char *name; /* "s4kv", "rocksdb", ... (the --engine name) */

    /* Opens (creating when missing) the database in directory dir. sync=1:
     * every put_batch is durable before it returns (the engine's fsync per
     * write, with group commit where the engine has it); sync=0: writes reach
     * the OS only (no fsync). Returns the handle, or NULL with a message in
     * err. */
    void *(*open)(const char *dir, int sync, char *err, size_t errlen);

    /* Closes the handle (whatever the engine does on close: flush, checkpoint).
     * Returns 0, or -1 with a message. The handle is freed either way. */
    int (*close)(void *h, char *err, size_t errlen);

    /* Writes n pairs as one atomic batch (one transaction for LMDB). Safe to
     * call from several threads at once on one handle. Returns 0 or -1. */
    int (*put_batch)(void *h, const bench_kv *kv, size_t n, char *err, size_t errlen);

    /* Looks key up and copies its value into buf (cap bytes); *vlen gets the
     * value's length. Returns 0 when found, 1 when absent, -1 on error (and
     * when the value does not fit). */
    int (*get)(void *h, const void *key, size_t klen, void *buf, size_t cap, size_t *vlen,
               char *err, size_t errlen);

    /* For the report, one line: with sync=0 the options in force for the
     * no-fsync workloads; with sync=1 only what differs for the durable
     * workload (fillsync). */
    void (*describe)(int sync, char *out, size_t len);

    /* Bytes the database occupies in dir (apparent file sizes). */
    uint64_t (*disk_bytes)(void *h, const char *dir);

    /* The engine's own figure for the memory its index takes, in bytes, or -1
     * when it has none that means that (*what then says why). *what names the
     * figure ("s4kv_stats index_bytes", ...). */
    int64_t (*index_bytes)(void *h, const char **what);

    /* Optional (NULL for engines without one): discards the in-memory index
     * and rebuilds it by replaying the log; *records gets the records read. */
    int (*rebuild)(void *h, uint64_t *records, char *err, size_t errlen);
} engine;

extern const engine engine_s4kv, engine_rocksdb, engine_leveldb, engine_lmdb;

/* Sum of st_size of the regular files under dir (recursive); bench.c. */
uint64_t bench_dir_bytes(const char *dir);

#endif /* BENCH_ENGINE_H */
