/*
 * engine_rocksdb.c - the RocksDB adapter of s4kv-bench (bench/engine.h),
 * through RocksDB's C API (rocksdb/c.h, Debian's librocksdb-dev).
 *
 * Options: rocksdb_options_create()'s defaults (RocksDB's Options(): 64 MiB
 * write buffer, level compaction, 2 background jobs, block-based tables with
 * 4 KiB blocks and an 8 MiB block cache, no Bloom filter), plus
 * create_if_missing and compression set to Snappy (the default already when
 * RocksDB is built with it; set so the report can say so). Writes: one
 * rocksdb_writebatch per batch, WriteOptions sync=false, or sync=true for the
 * durable workload (RocksDB group-commits concurrent writers). Gets:
 * rocksdb_get_pinned with default ReadOptions, copied into the caller's buffer.
 */
#include "engine.h"

#include <rocksdb/c.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct rh {
    rocksdb_t *db;
    rocksdb_options_t *opt;
    rocksdb_writeoptions_t *wo;
    rocksdb_readoptions_t *ro;
} rh;

static int take_err(char *e, const char *what, char *err, size_t errlen)
{
    if (!e)
        return 0;
    snprintf(err, errlen, "%s: %s", what, e);
    rocksdb_free(e);
    return -1;
}

static void *r_open(const char *dir, int sync, char *err, size_t errlen)
{
    rh *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->opt = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(h->opt, 1);
    rocksdb_options_set_compression(h->opt, rocksdb_snappy_compression);
    h->wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(h->wo, sync ? 1 : 0);
    h->ro = rocksdb_readoptions_create();
    char *e = NULL;
    h->db = rocksdb_open(h->opt, dir, &e);
    if (take_err(e, "rocksdb_open", err, errlen) || !h->db) {
        rocksdb_readoptions_destroy(h->ro);
        rocksdb_writeoptions_destroy(h->wo);
        rocksdb_options_destroy(h->opt);
        free(h);
        return NULL;
    }
    return h;
}

static int r_close(void *hv, char *err, size_t errlen)
{
    rh *h = hv;
    rocksdb_close(h->db);
    rocksdb_readoptions_destroy(h->ro);
    rocksdb_writeoptions_destroy(h->wo);
    rocksdb_options_destroy(h->opt);
    free(h);
    return 0;
}

static int r_put_batch(void *hv, const bench_kv *kv, size_t n, char *err, size_t errlen)
{
    rh *h = hv;
    static _Thread_local rocksdb_writebatch_t *b;
    if (!b)
        b = rocksdb_writebatch_create();
    rocksdb_writebatch_clear(b);
    for (size_t i = 0; i < n; i++)
        rocksdb_writebatch_put(b, kv[i].key, kv[i].klen, kv[i].val, kv[i].vlen);
    char *e = NULL;
    rocksdb_write(h->db, h->wo, b, &e);
    return take_err(e, "rocksdb_write", err, errlen);
}

static int r_get(void *hv, const void *key, size_t klen, void *buf, size_t cap, size_t *vlen,
                 char *err, size_t errlen)
{
    rh *h = hv;
    char *e = NULL;
    rocksdb_pinnableslice_t *p = rocksdb_get_pinned(h->db, h->ro, key, klen, &e);
    if (take_err(e, "rocksdb_get_pinned", err, errlen))
        return -1;
    if (!p)
        return 1;
    size_t n = 0;
    const char *v = rocksdb_pinnableslice_value(p, &n);
    *vlen = n;
    int rc = 0;
    if (!v) {
        rc = 1;
    } else if (n > cap) {
        snprintf(err, errlen, "value of %zu bytes does not fit %zu", n, cap);
        rc = -1;
    } else {
        memcpy(buf, v, n);
    }
    rocksdb_pinnableslice_destroy(p);
    return rc;
}

static void r_describe(int sync, char *out, size_t len)
{
    if (sync) {
        snprintf(out, len, "WriteOptions sync=true (RocksDB group-commits concurrent writers), "
                           "one rocksdb_write of a one-record batch per write");
        return;
    }
    char ver[64] = "7.x";
    FILE *f = popen("dpkg-query -W -f '${Version}' librocksdb-dev 2>/dev/null", "r");
    if (f) {
        if (!fgets(ver, sizeof ver, f))
            snprintf(ver, sizeof ver, "?");
        pclose(f);
    }
    snprintf(out, len,
             "RocksDB %s (Debian librocksdb-dev), C API: rocksdb_options_create() defaults "
             "(64 MiB write buffer, level compaction, 2 background jobs, 8 MiB block cache, "
             "no Bloom filter) + create_if_missing, compression Snappy; WriteOptions sync=false; "
             "one rocksdb_writebatch per batch; get: rocksdb_get_pinned + copy",
             ver);
}

static uint64_t r_disk_bytes(void *hv, const char *dir)
{
    (void)hv;
    return bench_dir_bytes(dir);
}

static int64_t r_index_bytes(void *hv, const char **what)
{
    rh *h = hv;
    *what = "rocksdb.estimate-table-readers-mem (SST index and filter blocks in memory; "
            "memtables not counted)";
    char *v = rocksdb_property_value(h->db, "rocksdb.estimate-table-readers-mem");
    if (!v)
        return -1;
    int64_t n = strtoll(v, NULL, 10);
    rocksdb_free(v);
    return n;
}

const engine engine_rocksdb = {
    .name = "rocksdb",
    .open = r_open,
    .close = r_close,
    .put_batch = r_put_batch,
    .get = r_get,
    .describe = r_describe,
    .disk_bytes = r_disk_bytes,
    .index_bytes = r_index_bytes,
};
