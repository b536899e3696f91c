/*
 * engine_s4kv.c - the s4kv adapter of s4kv-bench (bench/engine.h).
 *
 * s4kv with s4kv_options_init's defaults, except sync_mode: S4KV_SYNC_NONE
 * when the harness opens with sync=0 (no fsync per write, as the peers'
 * sync=false) and S4KV_SYNC_BATCH (the default: fdatasync before ack, group
 * commit) with sync=1. A batch is one s4kv_batch committed by s4kv_write.
 */
#include "engine.h"

#include "s4kv.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct s4h {
    s4kv_db *db;
} s4h;

static void *s4_open(const char *dir, int sync, char *err, size_t errlen)
{
    s4kv_options opt;
    s4kv_options_init(&opt);
    opt.sync_mode = sync ? S4KV_SYNC_BATCH : S4KV_SYNC_NONE;
    s4h *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char msg[512] = "";
    int rc = s4kv_open(dir, &opt, &h->db, msg, sizeof msg);
    if (rc) {
        snprintf(err, errlen, "s4kv_open %s: %s: %s", dir, s4kv_strerror(rc), msg);
        free(h);
        return NULL;
    }
    return h;
}

static int s4_close(void *hv, char *err, size_t errlen)
{
    s4h *h = hv;
    int rc = s4kv_close(h->db);
    free(h);
    if (rc) {
        snprintf(err, errlen, "s4kv_close: %s", s4kv_strerror(rc));
        return -1;
    }
    return 0;
}

static int s4_put_batch(void *hv, const bench_kv *kv, size_t n, char *err, size_t errlen)
{
    s4h *h = hv;
    int rc;
    if (n == 1) { /* a one-record write is what s4kv_put is for */
        rc = s4kv_put(h->db, kv[0].key, kv[0].klen, kv[0].val, kv[0].vlen, err, errlen);
        if (rc)
            goto fail;
        return 0;
    }
    /* one batch per thread, cleared and reused (what a real writer does) */
    static _Thread_local s4kv_batch *b;
    if (!b && !(b = s4kv_batch_new())) {
        snprintf(err, errlen, "s4kv_batch_new: out of memory");
        return -1;
    }
    s4kv_batch_clear(b);
    for (size_t i = 0; i < n; i++) {
        rc = s4kv_batch_put(b, kv[i].key, kv[i].klen, kv[i].val, kv[i].vlen);
        if (rc)
            goto fail;
    }
    rc = s4kv_write(h->db, b, err, errlen);
    if (rc)
        goto fail;
    return 0;
fail:;
    char detail[256];
    snprintf(detail, sizeof detail, "%s", err ? err : "");
    snprintf(err, errlen, "s4kv write: %s: %s", s4kv_strerror(rc), detail);
    return -1;
}

static int s4_get(void *hv, const void *key, size_t klen, void *buf, size_t cap, size_t *vlen,
                  char *err, size_t errlen)
{
    s4h *h = hv;
    int rc = s4kv_get_into(h->db, key, klen, buf, cap, vlen, err, errlen);
    if (rc == 0)
        return 0;
    if (rc == S4KV_ENOTFOUND)
        return 1;
    char detail[256];
    snprintf(detail, sizeof detail, "%s", err);
    snprintf(err, errlen, "s4kv_get_into: %s: %s", s4kv_strerror(rc), detail);
    return -1;
}

static void s4_describe(int sync, char *out, size_t len)
{
    s4kv_options o;
    s4kv_options_init(&o);
    if (sync) {
        snprintf(out, len, "sync_mode S4KV_SYNC_BATCH (the default: fdatasync before ack, "
                           "group commit), one s4kv_put per write");
        return;
    }
    snprintf(out, len,
             "s4kv %s: defaults (max_segment_bytes %llu MiB, checkpoint_bytes %llu MiB, Snappy "
             "%s), sync_mode S4KV_SYNC_NONE (not the default S4KV_SYNC_BATCH: no fsync, as "
             "the peers' sync=false); batches: s4kv_batch + s4kv_write, single writes: s4kv_put; "
             "get: s4kv_get_into",
             S4KV_VERSION_STRING, (unsigned long long)(o.max_segment_bytes >> 20),
             (unsigned long long)(o.checkpoint_bytes >> 20), o.compress ? "on" : "off");
}

static uint64_t s4_disk_bytes(void *hv, const char *dir)
{
    (void)hv;
    return bench_dir_bytes(dir);
}

static int64_t s4_index_bytes(void *hv, const char **what)
{
    s4h *h = hv;
    s4kv_stats st;
    *what = "s4kv_stats index_bytes (hash table + key arena)";
    if (s4kv_stats_get(h->db, &st))
        return -1;
    return (int64_t)st.index_bytes;
}

static int s4_rebuild(void *hv, uint64_t *records, char *err, size_t errlen)
{
    s4h *h = hv;
    int rc = s4kv_rebuild_index(h->db, err, errlen);
    s4kv_stats st;
    if (rc || (rc = s4kv_stats_get(h->db, &st))) {
        char detail[256];
        snprintf(detail, sizeof detail, "%s", err);
        snprintf(err, errlen, "s4kv_rebuild_index: %s: %s", s4kv_strerror(rc), detail);
        return -1;
    }
    *records = st.next_seq;
    return 0;
}

const engine engine_s4kv = {
    .name = "s4kv",
    .open = s4_open,
    .close = s4_close,
    .put_batch = s4_put_batch,
    .get = s4_get,
    .describe = s4_describe,
    .disk_bytes = s4_disk_bytes,
    .index_bytes = s4_index_bytes,
    .rebuild = s4_rebuild,
};
