/*
 * engine_leveldb.c - the LevelDB adapter of s4kv-bench (bench/engine.h),
 * through LevelDB's C API (leveldb/c.h, Debian's libleveldb-dev).
 *
 * Options: leveldb_options_create()'s defaults (4 MiB write buffer, 4 KiB
 * blocks, 8 MiB block cache, 1000 open files, no Bloom filter) plus
 * create_if_missing and compression Snappy (LevelDB's default, set so the
 * report can say so). Writes: one leveldb_writebatch per batch, WriteOptions
 * sync=false, or sync=true for the durable workload (LevelDB group-commits
 * concurrent writers). Gets: leveldb_get (LevelDB's C API returns a malloc'd
 * copy; it has no get-into-buffer), copied into the caller's buffer.
 */
#include "engine.h"

#include <leveldb/c.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lh {
    leveldb_t *db;
    leveldb_options_t *opt;
    leveldb_writeoptions_t *wo;
    leveldb_readoptions_t *ro;
} lh;

static int take_err(char *e, const char *what, char *err, size_t errlen)
{
    if (!e)
        return 0;
    snprintf(err, errlen, "%s: %s", what, e);
    leveldb_free(e);
    return -1;
}

static void *l_open(const char *dir, int sync, char *err, size_t errlen)
{
    lh *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->opt = leveldb_options_create();
    leveldb_options_set_create_if_missing(h->opt, 1);
    leveldb_options_set_compression(h->opt, leveldb_snappy_compression);
    h->wo = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(h->wo, sync ? 1 : 0);
    h->ro = leveldb_readoptions_create();
    char *e = NULL;
    h->db = leveldb_open(h->opt, dir, &e);
    if (take_err(e, "leveldb_open", err, errlen) || !h->db) {
        leveldb_readoptions_destroy(h->ro);
        leveldb_writeoptions_destroy(h->wo);
        leveldb_options_destroy(h->opt);
        free(h);
        return NULL;
    }
    return h;
}

static int l_close(void *hv, char *err, size_t errlen)
{
    lh *h = hv;
    leveldb_close(h->db);
    leveldb_readoptions_destroy(h->ro);
    leveldb_writeoptions_destroy(h->wo);
    leveldb_options_destroy(h->opt);
    free(h);
    return 0;
}

static int l_put_batch(void *hv, const bench_kv *kv, size_t n, char *err, size_t errlen)
{
    lh *h = hv;
    static _Thread_local leveldb_writebatch_t *b;
    if (!b)
        b = leveldb_writebatch_create();
    leveldb_writebatch_clear(b);
    for (size_t i = 0; i < n; i++)
        leveldb_writebatch_put(b, kv[i].key, kv[i].klen, kv[i].val, kv[i].vlen);
    char *e = NULL;
    leveldb_write(h->db, h->wo, b, &e);
    return take_err(e, "leveldb_write", err, errlen);
}

static int l_get(void *hv, const void *key, size_t klen, void *buf, size_t cap, size_t *vlen,
                 char *err, size_t errlen)
{
    lh *h = hv;
    char *e = NULL;
    size_t n = 0;
    char *v = leveldb_get(h->db, h->ro, key, klen, &n, &e);
    if (take_err(e, "leveldb_get", err, errlen))
        return -1;
    if (!v)
        return 1;
    *vlen = n;
    int rc = 0;
    if (n > cap) {
        snprintf(err, errlen, "value of %zu bytes does not fit %zu", n, cap);
        rc = -1;
    } else {
        memcpy(buf, v, n);
    }
    leveldb_free(v);
    return rc;
}

static void l_describe(int sync, char *out, size_t len)
{
    if (sync) {
        snprintf(out, len, "WriteOptions sync=true (LevelDB group-commits concurrent writers), "
                           "one leveldb_write of a one-record batch per write");
        return;
    }
    snprintf(out, len,
             "LevelDB %d.%d (Debian libleveldb-dev), C API: leveldb_options_create() defaults "
             "(4 MiB write buffer, 8 MiB block cache, no Bloom filter) + create_if_missing, "
             "compression Snappy; WriteOptions sync=false; one leveldb_writebatch per batch; "
             "get: leveldb_get (malloc'd copy) + copy",
             leveldb_major_version(), leveldb_minor_version());
}

static uint64_t l_disk_bytes(void *hv, const char *dir)
{
    (void)hv;
    return bench_dir_bytes(dir);
}

static int64_t l_index_bytes(void *hv, const char **what)
{
    lh *h = hv;
    *what = "leveldb.approximate-memory-usage (memtables + block cache: LevelDB has no "
            "property for its table index blocks)";
    char *v = leveldb_property_value(h->db, "leveldb.approximate-memory-usage");
    if (!v)
        return -1;
    int64_t n = strtoll(v, NULL, 10);
    leveldb_free(v);
    return n;
}

const engine engine_leveldb = {
    .name = "leveldb",
    .open = l_open,
    .close = l_close,
    .put_batch = l_put_batch,
    .get = l_get,
    .describe = l_describe,
    .disk_bytes = l_disk_bytes,
    .index_bytes = l_index_bytes,
};
