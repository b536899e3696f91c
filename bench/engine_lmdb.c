/*
 * engine_lmdb.c - the LMDB adapter of s4kv-bench (bench/engine.h), through
 * lmdb.h (Debian's liblmdb-dev).
 *
 * Options: LMDB's defaults with a map size of 64 GiB (address space only;
 * the file grows as pages are written) and MDB_NOSYNC when the harness opens
 * with sync=0 (commits do not fsync, as the other engines' sync=false); with
 * sync=1 the default flags (each commit fsyncs the data and then the meta
 * page; LMDB serialises writers and has no group commit). One write
 * transaction per batch. Gets: one read-only transaction per get, reused
 * with mdb_txn_reset / mdb_txn_renew (LMDB's cheap path, and every get sees
 * the latest commit as the other engines' gets do), value copied out of the
 * map into the caller's buffer.
 */
#include "engine.h"

#include <lmdb.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LMDB_MAP_BYTES (64ull << 30)

typedef struct mh {
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *rtxn; /* reused read transaction (one reader thread) */
} mh;

static int fail(int rc, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s", what, mdb_strerror(rc));
    return -1;
}

static void *m_open(const char *dir, int sync, char *err, size_t errlen)
{
    if (mkdir(dir, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "mkdir %s: %s", dir, strerror(errno));
        return NULL;
    }
    mh *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = mdb_env_create(&h->env);
    if (rc) {
        fail(rc, "mdb_env_create", err, errlen);
        free(h);
        return NULL;
    }
    MDB_txn *txn = NULL;
    if ((rc = mdb_env_set_mapsize(h->env, LMDB_MAP_BYTES)) ||
        (rc = mdb_env_open(h->env, dir, sync ? 0 : MDB_NOSYNC, 0644))) {
        fail(rc, "mdb_env_open", err, errlen);
        goto bad;
    }
    if ((rc = mdb_txn_begin(h->env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, NULL, 0, &h->dbi)) ||
        (rc = mdb_txn_commit(txn))) {
        if (txn)
            mdb_txn_abort(txn);
        fail(rc, "mdb_dbi_open", err, errlen);
        goto bad;
    }
    return h;
bad:
    mdb_env_close(h->env);
    free(h);
    return NULL;
}

static int m_close(void *hv, char *err, size_t errlen)
{
    mh *h = hv;
    if (h->rtxn)
        mdb_txn_abort(h->rtxn);
    mdb_env_close(h->env); /* with MDB_NOSYNC this does not fsync either */
    free(h);
    return 0;
}

static int m_put_batch(void *hv, const bench_kv *kv, size_t n, char *err, size_t errlen)
{
    mh *h = hv;
    MDB_txn *txn;
    int rc = mdb_txn_begin(h->env, NULL, 0, &txn);
    if (rc)
        return fail(rc, "mdb_txn_begin", err, errlen);
    for (size_t i = 0; i < n; i++) {
        MDB_val k = { kv[i].klen, (void *)kv[i].key }, v = { kv[i].vlen, (void *)kv[i].val };
        if ((rc = mdb_put(txn, h->dbi, &k, &v, 0))) {
            mdb_txn_abort(txn);
            return fail(rc, "mdb_put", err, errlen);
        }
    }
    if ((rc = mdb_txn_commit(txn)))
        return fail(rc, "mdb_txn_commit", err, errlen);
    return 0;
}

static int m_get(void *hv, const void *key, size_t klen, void *buf, size_t cap, size_t *vlen,
                 char *err, size_t errlen)
{
    mh *h = hv;
    int rc = h->rtxn ? mdb_txn_renew(h->rtxn) : mdb_txn_begin(h->env, NULL, MDB_RDONLY, &h->rtxn);
    if (rc)
        return fail(rc, "read transaction", err, errlen);
    MDB_val k = { klen, (void *)key }, v;
    rc = mdb_get(h->rtxn, h->dbi, &k, &v);
    int out = 0;
    if (rc == MDB_NOTFOUND) {
        out = 1;
    } else if (rc) {
        out = fail(rc, "mdb_get", err, errlen);
    } else {
        *vlen = v.mv_size;
        if (v.mv_size > cap) {
            snprintf(err, errlen, "value of %zu bytes does not fit %zu", v.mv_size, cap);
            out = -1;
        } else {
            memcpy(buf, v.mv_data, v.mv_size);
        }
    }
    mdb_txn_reset(h->rtxn);
    return out;
}

static void m_describe(int sync, char *out, size_t len)
{
    if (sync) {
        snprintf(out, len, "default flags, no MDB_NOSYNC: each commit fsyncs (data, then the "
                           "meta page); writers are serialised, no group commit; one "
                           "transaction per write");
        return;
    }
    int a, b, c;
    mdb_version(&a, &b, &c);
    snprintf(out, len,
             "LMDB %d.%d.%d (Debian liblmdb-dev): defaults, map size %llu GiB, %s; one write "
             "transaction per batch; get: a reused read-only transaction (mdb_txn_renew/reset) "
             "+ mdb_get + copy",
             a, b, c, LMDB_MAP_BYTES >> 30, "MDB_NOSYNC (commits do not fsync)");
}

static uint64_t m_disk_bytes(void *hv, const char *dir)
{
    (void)hv;
    return bench_dir_bytes(dir);
}

static int64_t m_index_bytes(void *hv, const char **what)
{
    (void)hv;
    *what = "none: LMDB's B-tree lives in the memory-mapped file (page cache, counted in disk "
            "bytes and, for touched pages, in RSS)";
    return -1;
}

const engine engine_lmdb = {
    .name = "lmdb",
    .open = m_open,
    .close = m_close,
    .put_batch = m_put_batch,
    .get = m_get,
    .describe = m_describe,
    .disk_bytes = m_disk_bytes,
    .index_bytes = m_index_bytes,
};
