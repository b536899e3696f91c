/*
 * replica.c - a database in s3://bucket/prefix/: upload, download and
 * remote-only opens, on top of the S3 client (sync/s3.h) and the engine's
 * internals (kv/internal.h).
 *
 * Invariant (the commit order of DESIGN.md): MANIFEST under the prefix only
 * ever names objects that are already completely uploaded, because upload
 * sends segments and the checkpoint first and MANIFEST last; and no object a
 * MANIFEST named is deleted until a newer MANIFEST dropped it, one more
 * manifest was published after that (so the previous generation stays
 * readable), and the retention window passed. A crash anywhere leaves S3 with
 * a readable, complete database; a rerun converges.
 */
#include "daemon.h"
#include "internal.h"
#include "s3_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* How much log an upload leaves to remote readers to replay after the
 * checkpoint, instead of writing and sending a fresh checkpoint (O(keys)).
 * A small index (under 1 MiB) is always checkpointed: cheap, and a close
 * right after the upload then has nothing to checkpoint. A larger one is
 * checkpointed once the log since the last checkpoint reaches a quarter of
 * the index's size (so checkpoint traffic stays a fraction of log traffic,
 * which matters to the sync loop uploading every second), at most 64 MiB. */
static uint64_t upload_ckpt_after(s4kv_db *db)
{
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    if (st.index_bytes < (1u << 20))
        return 0;
    uint64_t t = st.index_bytes / 4;
    return t < (64u << 20) ? t : (64u << 20);
}

void s4kv_s3_options_init(s4kv_s3_options *o)
{
    memset(o, 0, sizeof *o);
    o->retention_s = -1;
    o->max_parallel = 8;
}

/* ---- Shared plumbing */

#define DOWNLOAD_TRIES 3 /* downloads of an object that fails its checks */

typedef struct remote {
    s3_config cfg;
    s3_client *cl;
    char *bucket, *prefix;
    const s4kv_s3_options *o;
    s3_stats base; /* the client's counts when the current operation began */
} remote;

static void rlog(const s4kv_s3_options *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void rlog(const s4kv_s3_options *o, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (o && o->log)
        o->log(o->log_ctx, line);
    else
        fprintf(stderr, "s4kv: %s\n", line);
}

static void remote_close(remote *r)
{
    s3_client_free(r->cl);
    s3_config_free(&r->cfg);
    free(r->bucket);
    free(r->prefix);
    memset(r, 0, sizeof *r);
}

static int remote_init(remote *r, const s4kv_s3_options *o, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->o = o;
    if (!o || !o->url)
        return seterr(err, errlen, S4KV_EINVAL, "no S3 URL given (s3://bucket/prefix/)");
    int rc = s3_url_parse(o->url, &r->bucket, &r->prefix, err, errlen);
    if (rc)
        return rc;
    rc = s3_config_from_env(&r->cfg, o->profile, o->endpoint, err, errlen);
    if (rc) {
        free(r->bucket);
        free(r->prefix);
        return rc;
    }
    if (o->insecure_tls)
        r->cfg.tls_verify = 0;
    if (o->max_parallel > 0)
        r->cfg.max_parallel = o->max_parallel;
    r->cl = s3_client_new(&r->cfg, r->bucket, err, errlen);
    if (!r->cl) {
        s3_config_free(&r->cfg);
        free(r->bucket);
        free(r->prefix);
        return S4KV_EINVAL;
    }
    return 0;
}

static char *objkey(const remote *r, const char *name)
{
    size_t n = strlen(r->prefix) + strlen(name) + 1;
    char *k = malloc(n);
    if (k)
        snprintf(k, n, "%s%s", r->prefix, name);
    return k;
}

static void seg_name(uint32_t no, char *buf, size_t cap)
{
    snprintf(buf, cap, "data_%06" PRIu32 ".s4kv", no);
}

static void fill_counts(remote *r, s4kv_s3_report *rep)
{
    s3_stats st;
    s3_client_stats(r->cl, &st);
    rep->requests = st.requests - r->base.requests;
    rep->retries = st.retries - r->base.retries;
    rep->connections = st.connections - r->base.connections;
}

/* Reads the remote MANIFEST. S4KV_ENOENT when there is none. */
static int remote_manifest(remote *r, manifest *m, char *err, size_t errlen)
{
    char *k = objkey(r, "MANIFEST");
    if (!k)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = s3_get(r->cl, k, &buf, &len, err, errlen);
    if (rc == 0) {
        char name[600];
        snprintf(name, sizeof name, "s3://%s/%s", r->bucket, k);
        rc = manifest_parse((const char *)buf, len, name, m, err, errlen);
        for (size_t i = 0; rc == 0 && i < m->nseg; i++)
            if (m->sealed_len[i] == UINT64_MAX)
                rc = seterr(err, errlen, S4KV_ECORRUPT,
                            "%s: segment %u has no committed length", name, m->segno[i]);
        if (rc)
            manifest_free(m);
    }
    free(buf);
    free(k);
    return rc;
}

/* Names (segments and checkpoint) a manifest refers to. */
static int names_contains(const manifest *m, const char *name)
{
    char sn[64];
    for (size_t i = 0; i < m->nseg; i++) {
        seg_name(m->segno[i], sn, sizeof sn);
        if (strcmp(sn, name) == 0)
            return 1;
    }
    return m->checkpoint && strcmp(m->checkpoint, name) == 0;
}

static const s3_object *find_obj(const s3_object *objs, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(objs[i].key, key) == 0)
            return &objs[i];
    return NULL;
}

static int is_db_object(const char *name)
{
    unsigned no;
    char tail[8];
    return (sscanf(name, "data_%u.s4k%7s", &no, tail) == 2 && strcmp(tail, "v") == 0) ||
           (strncmp(name, "index_", 6) == 0 && strlen(name) > 11 &&
            strcmp(name + strlen(name) - 5, ".s4ki") == 0);
}

typedef struct xprog {
    const s4kv_s3_options *o;
    const char *phase;
} xprog;

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    xprog *p = ctx;
    if (p->o && p->o->progress)
        p->o->progress(p->o->progress_ctx, p->phase, done, total);
}

/* Runs transfers; on failure copies the first error into err. */
static int run_xfers(remote *r, s3_xfer *x, size_t n, const char *phase, char *err, size_t errlen)
{
    if (n == 0)
        return 0;
    xprog p = {r->o, phase};
    int rc = s3_run(r->cl, x, n, on_progress, &p);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            if (x[i].rc)
                return seterr(err, errlen, x[i].rc, "%s", x[i].err);
        return seterr(err, errlen, rc, "%s failed", phase);
    }
    return 0;
}

/* ---- Upload */

static int add_retired(manifest *nm, const char *name, uint64_t gen, int64_t t)
{
    for (size_t i = 0; i < nm->nretired; i++)
        if (strcmp(nm->retired[i].name, name) == 0)
            return 0;
    retired_entry *nr = realloc(nm->retired, (nm->nretired + 1) * sizeof *nr);
    if (!nr)
        return -1;
    nm->retired = nr;
    char *dup = strdup(name);
    if (!dup)
        return -1;
    nm->retired[nm->nretired++] = (retired_entry){dup, gen, t};
    return 0;
}

static int same_content(const manifest *a, const manifest *b)
{
    if (a->nseg != b->nseg || a->next_segment != b->next_segment ||
        (!a->checkpoint) != (!b->checkpoint) ||
        (a->checkpoint && strcmp(a->checkpoint, b->checkpoint) != 0))
        return 0;
    for (size_t i = 0; i < a->nseg; i++)
        if (a->segno[i] != b->segno[i] || a->sealed_len[i] != b->sealed_len[i])
            return 0;
    return 1;
}

/* One writer per prefix: an older copy of this database must not overwrite a
 * newer remote generation written from another copy. The remote is ahead when
 * it names a segment number this copy never allocated, or a segment longer
 * than this copy's. */
static int remote_not_ahead(const manifest *rm, const db_snap *snap, const remote *r, char *err,
                            size_t errlen)
{
    for (size_t i = 0; i < rm->nseg; i++) {
        uint64_t local = 0;
        int known = rm->segno[i] < snap->next_segment;
        for (size_t j = 0; j < snap->nsegs; j++)
            if (snap->segs[j].no == rm->segno[i])
                local = snap->segs[j].len;
        if (!known || (local && rm->sealed_len[i] > local))
            return seterr(err, errlen, S4KV_EEXIST,
                          "s3://%s/%s is ahead of this copy (data_%06u.s4kv: %" PRIu64
                          " bytes there, %" PRIu64 " here): another copy wrote to it; download "
                          "it, or upload to another prefix", r->bucket, r->prefix, rm->segno[i],
                          rm->sealed_len[i], local);
    }
    return 0;
}

/* The upload itself, on r's client (its request counts go to rep). */
static int upload_on(remote *r, s4kv_db *db, s4kv_s3_report *rep, char *err, size_t errlen)
{
    const s4kv_s3_options *o = r->o;
    int rc = 0;
    s3_client_stats(r->cl, &r->base);
    manifest old = {0}, nm = {0};
    db_snap snap = {.ckpt_fd = -1};
    s3_object *objs = NULL;
    size_t nobjs = 0;
    s3_xfer *x = NULL;
    char **paths = NULL, **keys = NULL, **dels = NULL;
    size_t nx = 0, ndel = 0;
    int have_old = 0;

    rc = remote_manifest(r, &old, err, errlen);
    if (rc == 0) {
        have_old = 1;
    } else if (rc == S4KV_ENOENT) {
        rc = 0; /* a first upload: not an error, and no message left behind */
        if (err && errlen)
            err[0] = 0;
    }
    if (rc == 0)
        rc = db_snapshot(db, upload_ckpt_after(db), &snap, err, errlen);
    if (rc == 0 && have_old && old.id != snap.id)
        rc = seterr(err, errlen, S4KV_EEXIST,
                    "s3://%s/%s holds a different database (id %016" PRIx64 ", this one is %016"
                    PRIx64 "); refusing to overwrite it: use another prefix, or download it",
                    r->bucket, r->prefix, old.id, snap.id);
    if (rc == 0 && have_old)
        rc = remote_not_ahead(&old, &snap, r, err, errlen);
    if (rc == 0)
        rc = s3_list(r->cl, r->prefix, &objs, &nobjs, err, errlen);

    /* What S3 lacks: segments shorter than their committed length, the checkpoint. */
    size_t cap = snap.nsegs + 1;
    if (rc == 0) {
        x = calloc(cap, sizeof *x);
        paths = calloc(cap, sizeof *paths);
        keys = calloc(cap, sizeof *keys);
        if (!x || !paths || !keys)
            rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i <= snap.nsegs; i++) {
        char name[64];
        uint64_t len;
        int fd;
        if (i < snap.nsegs) {
            seg_name(snap.segs[i].no, name, sizeof name);
            len = snap.segs[i].len;
            fd = snap.segs[i].fd;
        } else if (snap.checkpoint) {
            snprintf(name, sizeof name, "%s", snap.checkpoint);
            len = snap.ckpt_len;
            fd = snap.ckpt_fd;
        } else {
            break;
        }
        char *k = objkey(r, name);
        if (!k) {
            rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
            break;
        }
        const s3_object *ob = find_obj(objs, nobjs, k);
        /* A segment object at least as long as the committed length already
         * holds it: bytes once written never change. */
        if (ob && (i < snap.nsegs ? ob->size >= len : ob->size == len)) {
            rep->objects_skipped++;
            free(k);
            continue;
        }
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        paths[nx] = strdup(p);
        keys[nx] = k;
        x[nx] = (s3_xfer){.op = S3_XPUT_FILE, .key = k, .path = paths[nx], .len = len};
        rep->bytes_uploaded += len;
        nx++;
    }
    if (rc == 0)
        rc = run_xfers(r, x, nx, "upload", err, errlen);
    if (rc == 0)
        rep->objects_uploaded = nx;

    /* The new manifest: every segment with its committed length. */
    if (rc == 0) {
        nm.id = snap.id;
        nm.generation = (have_old ? old.generation : 0) + 1;
        nm.next_segment = snap.next_segment;
        nm.checkpoint = snap.checkpoint ? strdup(snap.checkpoint) : NULL;
        nm.nseg = snap.nsegs;
        nm.segno = calloc(snap.nsegs + 1, sizeof *nm.segno);
        nm.sealed_len = calloc(snap.nsegs + 1, sizeof *nm.sealed_len);
        if (!nm.segno || !nm.sealed_len || (snap.checkpoint && !nm.checkpoint))
            rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
        for (size_t i = 0; rc == 0 && i < snap.nsegs; i++) {
            nm.segno[i] = snap.segs[i].no;
            nm.sealed_len[i] = snap.segs[i].len;
        }
    }
    int publish = rc == 0 && (!have_old || nx > 0 || !same_content(&old, &nm));
    int64_t now = (int64_t)time(NULL);
    if (rc == 0 && publish) {
        /* Retention: carry the old retired list; objects the old manifest
         * named and the new one does not are retired by this generation. */
        dels = calloc(nobjs + (have_old ? old.nretired : 0) + 1, sizeof *dels);
        if (!dels)
            rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
        /* Default retention: what an earlier generation dropped stays until
         * the next compaction (this manifest drops segments), so readers of
         * the previous manifest keep working meanwhile. */
        int compaction = 0;
        for (size_t i = 0; have_old && i < old.nseg; i++) {
            char sn[64];
            seg_name(old.segno[i], sn, sizeof sn);
            compaction |= !names_contains(&nm, sn);
        }
        for (size_t i = 0; rc == 0 && have_old && i < old.nretired; i++) {
            retired_entry *e = &old.retired[i];
            int due = e->generation < nm.generation &&
                      (o->retention_s < 0 ? compaction : now - e->time >= o->retention_s);
            if (names_contains(&nm, e->name))
                continue; /* named again (e.g. re-uploaded): not retired any more */
            if (due)
                dels[ndel++] = objkey(r, e->name);
            else if (add_retired(&nm, e->name, e->generation, e->time) != 0)
                rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
        }
        if (rc == 0 && have_old) {
            char sn[64];
            for (size_t i = 0; rc == 0 && i <= old.nseg; i++) {
                const char *name = NULL;
                if (i < old.nseg) {
                    seg_name(old.segno[i], sn, sizeof sn);
                    name = sn;
                } else {
                    name = old.checkpoint;
                }
                if (name && !names_contains(&nm, name) &&
                    add_retired(&nm, name, nm.generation, now) != 0)
                    rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
            }
        }
        /* Leftovers of interrupted uploads: named by no manifest, not retired. */
        for (size_t i = 0; rc == 0 && i < nobjs; i++) {
            const char *name = objs[i].key + strlen(r->prefix);
            if (strchr(name, '/') || !is_db_object(name) || names_contains(&nm, name) ||
                (have_old && names_contains(&old, name)))
                continue;
            int retired = 0;
            for (size_t j = 0; j < nm.nretired; j++)
                retired |= strcmp(nm.retired[j].name, name) == 0;
            for (size_t j = 0; have_old && j < old.nretired; j++)
                retired |= strcmp(old.retired[j].name, name) == 0;
            if (!retired && (o->retention_s < 0 ? compaction : now - objs[i].mtime >= o->retention_s))
                dels[ndel++] = strdup(objs[i].key);
        }
    }
    if (rc == 0 && publish) {
        char *text = NULL, *k = objkey(r, "MANIFEST");
        size_t tlen = 0;
        rc = k ? manifest_format(&nm, &text, &tlen) : S4KV_ENOMEM;
        if (rc)
            seterr(err, errlen, rc, "out of memory");
        else
            rc = s3_put(r->cl, k, text, tlen, err, errlen); /* the commit point */
        free(text);
        free(k);
        if (rc == 0) {
            rep->published = 1;
            rep->bytes_uploaded += tlen;
            rep->objects_uploaded++;
        }
    }
    rep->generation = publish ? nm.generation : (have_old ? old.generation : 0);
    if (rc == 0 && ndel) {
        char e2[512];
        int drc = s3_delete_many(r->cl, dels, ndel, e2, sizeof e2);
        if (drc)
            rlog(o, "upload: deleting %zu obsolete objects failed (they stay until the next "
                    "upload): %s", ndel, e2);
        else
            rep->objects_deleted = ndel;
    }
    fill_counts(r, rep);
    for (size_t i = 0; i < nx; i++) {
        free(paths[i]);
        free(keys[i]);
    }
    for (size_t i = 0; i < ndel; i++)
        free(dels[i]);
    free(dels);
    free(paths);
    free(keys);
    free(x);
    s3_objects_free(objs, nobjs);
    db_snap_free(&snap);
    manifest_free(&nm);
    if (have_old)
        manifest_free(&old);
    return rc;
}

int s4kv_upload(s4kv_db *db, const s4kv_s3_options *o, s4kv_s3_report *rep, char *err,
                size_t errlen)
{
    s4kv_s3_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    remote r;
    int rc = remote_init(&r, o, err, errlen);
    if (rc)
        return rc;
    rc = upload_on(&r, db, rep, err, errlen);
    remote_close(&r);
    return rc;
}

/* ---- A long-lived remote for the sync loop (daemon.h) */

struct replica_remote {
    remote r;
};

int replica_remote_open(const s4kv_s3_options *o, struct s3_loop *x, replica_remote **out,
                        char *err, size_t errlen)
{
    *out = NULL;
    replica_remote *rm = malloc(sizeof *rm);
    if (!rm)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    int rc = remote_init(&rm->r, o, err, errlen);
    if (rc) {
        free(rm);
        return rc;
    }
    if (x)
        s3_client_attach_loop(rm->r.cl, x);
    *out = rm;
    return 0;
}

int replica_upload_with(replica_remote *rm, s4kv_db *db, s4kv_s3_report *rep, char *err,
                        size_t errlen)
{
    s4kv_s3_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!db || !rm)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    return upload_on(&rm->r, db, rep, err, errlen);
}

void replica_remote_debug(replica_remote *rm, s3_debug *d)
{
    s3_client_debug(rm->r.cl, d);
}

void replica_remote_close(replica_remote *rm)
{
    if (!rm)
        return;
    s3_client_attach_loop(rm->r.cl, NULL);
    remote_close(&rm->r);
    free(rm);
}

/* ---- Download */

static int file_size(const char *path, uint64_t *size)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    *size = (uint64_t)st.st_size;
    return 0;
}

/* 0 when path holds a valid copy of the named object (length len). */
static int local_ok(const char *path, const char *name, uint32_t segno, uint64_t len)
{
    uint64_t size;
    if (file_size(path, &size) != 0 || size < len)
        return -1;
    if (segno)
        return seg_file_check(path, segno, len, NULL, NULL, 0) == 0 ? 0 : -1;
    size_t n = 0;
    uint8_t *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    buf = malloc(size ? size : 1);
    if (buf)
        n = fread(buf, 1, size, f);
    fclose(f);
    ckpt_header h;
    keydir *kd = NULL;
    int ok = buf && n == size && ckpt_decode(buf, n, NULL, &h, &kd, NULL, 0) == 0;
    keydir_free(kd);
    free(buf);
    (void)name;
    return ok && size == len ? 0 : -1;
}

/* Download replaces what dir holds: refuse when that is another database,
 * or this one with log bytes the remote manifest does not name (writes that
 * were never uploaded). */
static int local_not_ahead(const char *dir, const manifest *rm, const remote *r, char *err,
                           size_t errlen)
{
    s4kv_db tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.v = vfs_posix();
    tmp.dir = (char *)dir;
    manifest lm;
    char e2[512];
    int rc = manifest_load(&tmp, &lm, e2, sizeof e2);
    if (rc == S4KV_ENOENT)
        return 0; /* nothing local */
    if (rc)
        return seterr(err, errlen, rc, "%s holds an unreadable database (%s); download into "
                      "another directory", dir, e2);
    if (lm.id != rm->id)
        rc = seterr(err, errlen, S4KV_EEXIST, "%s holds a different database (id %016" PRIx64
                    ") than s3://%s/%s (id %016" PRIx64 "); download into another directory",
                    dir, lm.id, r->bucket, r->prefix, rm->id);
    for (size_t i = 0; rc == 0 && i < lm.nseg; i++) {
        char name[64], path[4200];
        seg_name(lm.segno[i], name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        uint64_t size = 0, remote_len = 0;
        struct stat st;
        if (stat(path, &st) == 0)
            size = (uint64_t)st.st_size;
        for (size_t j = 0; j < rm->nseg; j++)
            if (rm->segno[j] == lm.segno[i])
                remote_len = rm->sealed_len[j];
        if (size > SEG_HDR && size > remote_len)
            rc = seterr(err, errlen, S4KV_EEXIST,
                        "%s has writes that s3://%s/%s lacks (%s: %" PRIu64 " bytes, the remote "
                        "manifest names %" PRIu64 "); upload them first, or download into "
                        "another directory", dir, r->bucket, r->prefix, name, size, remote_len);
    }
    manifest_free(&lm);
    return rc;
}

int s4kv_download(const char *dir, const s4kv_s3_options *o, s4kv_s3_report *rep, char *err,
                  size_t errlen)
{
    s4kv_s3_report localrep;
    if (!rep)
        rep = &localrep;
    memset(rep, 0, sizeof *rep);
    if (!dir || !*dir)
        return seterr(err, errlen, S4KV_EINVAL, "no directory given");
    remote r;
    int rc = remote_init(&r, o, err, errlen);
    if (rc)
        return rc;
    manifest m = {0};
    int have = 0, lockfd = -1;
    s3_xfer *x = NULL;
    char **paths = NULL, **keys = NULL;
    uint64_t *want = NULL;
    uint32_t *segnos = NULL;
    size_t nx = 0;

    rc = remote_manifest(&r, &m, err, errlen);
    if (rc == S4KV_ENOENT && !(err && strstr(err, "NoSuchBucket")))
        seterr(err, errlen, S4KV_ENOENT, "no database at s3://%s/%s (no MANIFEST)", r.bucket,
               r.prefix);
    have = rc == 0;
    if (rc == 0)
        rc = local_not_ahead(dir, &m, &r, err, errlen);
    if (rc == 0 && mkdir(dir, S4KV_DIR_MODE) != 0 && errno != EEXIST)
        rc = seterr(err, errlen, S4KV_EIO, "mkdir %s: %s", dir, strerror(errno));
    if (rc == 0) {
        char lp[4096];
        snprintf(lp, sizeof lp, "%s/LOCK", dir);
        lockfd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, S4KV_FILE_MODE);
        if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB) != 0)
            rc = seterr(err, errlen, lockfd < 0 ? S4KV_EIO : S4KV_ELOCKED,
                        "%s is locked by another process (close the writer first)", dir);
    }
    size_t cap = m.nseg + 1;
    if (rc == 0) {
        x = calloc(cap, sizeof *x);
        paths = calloc(cap, sizeof *paths);
        keys = calloc(cap, sizeof *keys);
        want = calloc(cap, sizeof *want);
        segnos = calloc(cap, sizeof *segnos);
        if (!x || !paths || !keys || !want || !segnos)
            rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    /* Everything the manifest names that is not already here and valid. */
    for (size_t i = 0; rc == 0 && i <= m.nseg; i++) {
        char name[300];
        uint64_t len = UINT64_MAX;
        uint32_t no = 0;
        if (i < m.nseg) {
            no = m.segno[i];
            seg_name(no, name, sizeof name);
            len = m.sealed_len[i];
        } else if (m.checkpoint) {
            snprintf(name, sizeof name, "%s", m.checkpoint);
        } else {
            break;
        }
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (len != UINT64_MAX && local_ok(path, name, no, len) == 0) {
            rep->objects_skipped++;
            continue;
        }
        if (len == UINT64_MAX && file_size(path, &len) == 0 && local_ok(path, name, 0, len) == 0) {
            rep->objects_skipped++;
            continue;
        }
        paths[nx] = strdup(path);
        keys[nx] = objkey(&r, name);
        want[nx] = i < m.nseg ? m.sealed_len[i] : UINT64_MAX;
        segnos[nx] = no;
        x[nx] = (s3_xfer){.op = S3_XGET_FILE, .key = keys[nx], .path = paths[nx],
                          .len = UINT64_MAX};
        nx++;
    }
    if (rc == 0)
        rc = run_xfers(&r, x, nx, "download", err, errlen);
    /* Check what arrived; cut segments to their committed length. */
    for (size_t i = 0; rc == 0 && i < nx; i++) {
        uint64_t size = 0;
        file_size(paths[i], &size);
        rep->bytes_downloaded += size;
        rep->objects_downloaded++;
        /* An object damaged in transit (S3 checks nothing on the way) is
         * fetched again, DOWNLOAD_TRIES times in all, before it is corrupt. */
        for (int attempt = 1; rc == 0; attempt++) {
            if (segnos[i] && size > want[i] && truncate(paths[i], (off_t)want[i]) != 0) {
                rc = seterr(err, errlen, S4KV_EIO, "truncate %s: %s", paths[i], strerror(errno));
                break;
            }
            if (local_ok(paths[i], keys[i], segnos[i], segnos[i] ? want[i] : size) == 0)
                break;
            if (attempt == DOWNLOAD_TRIES) {
                rc = seterr(err, errlen, S4KV_ECORRUPT,
                            "s3://%s/%s: the downloaded object fails its checksums or is "
                            "shorter than the %" PRIu64 " bytes the manifest names (%d "
                            "downloads)", r.bucket, keys[i], want[i], attempt);
                break;
            }
            rlog(r.o, "download: s3://%s/%s fails its checksums; fetching it again (%d of %d)",
                 r.bucket, keys[i], attempt + 1, DOWNLOAD_TRIES);
            s3_xfer again = x[i];
            again.rc = 0;
            again.err[0] = 0;
            rc = run_xfers(&r, &again, 1, "download", err, errlen);
            size = 0;
            file_size(paths[i], &size);
            rep->bytes_downloaded += size;
        }
    }
    /* The local MANIFEST last (commit point), then drop files it does not name. */
    if (rc == 0) {
        manifest lm = m;
        lm.retired = NULL;
        lm.nretired = 0;
        char *text = NULL;
        size_t tlen = 0;
        rc = manifest_format(&lm, &text, &tlen);
        if (rc == 0) {
            s4kv_db tmp;
            memset(&tmp, 0, sizeof tmp);
            tmp.v = vfs_posix();
            tmp.dir = (char *)dir;
            char path[4096];
            snprintf(path, sizeof path, "%s/MANIFEST", dir);
            rc = file_write_atomic(&tmp, path, text, tlen, err, errlen);
        } else {
            seterr(err, errlen, rc, "out of memory");
        }
        free(text);
        rep->generation = m.generation;
    }
    fill_counts(&r, rep);
    for (size_t i = 0; i < nx; i++) {
        free(paths[i]);
        free(keys[i]);
    }
    free(paths);
    free(keys);
    free(want);
    free(segnos);
    free(x);
    if (have)
        manifest_free(&m);
    if (lockfd >= 0)
        close(lockfd);
    remote_close(&r);
    return rc;
}

/* ---- Remote-only open */

typedef struct ropen {
    remote r;
    s4kv_s3_options o; /* copy: the caller's options need not outlive the handle */
    s4kv_remote seam;
} ropen;

static int ro_read_range(void *ctx, uint32_t segno, uint64_t off, void *buf, size_t len,
                         char *err, size_t errlen)
{
    ropen *ro = ctx;
    char name[64], key[1200];
    seg_name(segno, name, sizeof name);
    snprintf(key, sizeof key, "%s%s", ro->r.prefix, name);
    return s3_get_range(ro->r.cl, key, off, buf, len, err, errlen);
}

static int ro_fetch(void *ctx, const char *name, uint8_t **buf, size_t *len, char *err,
                    size_t errlen)
{
    ropen *ro = ctx;
    char key[1200];
    snprintf(key, sizeof key, "%s%s", ro->r.prefix, name);
    int rc = s3_get(ro->r.cl, key, buf, len, err, errlen);
    if (rc == S4KV_ENOENT && strcmp(name, "MANIFEST") == 0 && !(err && strstr(err, "NoSuchBucket")))
        seterr(err, errlen, S4KV_ENOENT, "no database at s3://%s/%s (no MANIFEST)",
               ro->r.bucket, ro->r.prefix);
    return rc;
}

static void ro_free(void *p)
{
    ropen *ro = p;
    remote_close(&ro->r);
    free(ro);
}

int s4kv_open_s3(const char *dir, const s4kv_options *opt, const s4kv_s3_options *o,
                 s4kv_db **out, char *err, size_t errlen)
{
    ropen *ro = calloc(1, sizeof *ro);
    if (!ro)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    if (o)
        ro->o = *o;
    int rc = remote_init(&ro->r, o ? &ro->o : NULL, err, errlen);
    if (rc) {
        free(ro);
        return rc;
    }
    ro->seam = (s4kv_remote){.read_range = ro_read_range, .fetch = ro_fetch, .ctx = ro};
    s4kv_options oo;
    if (opt)
        oo = *opt;
    else
        s4kv_options_init(&oo);
    oo.read_only = 1;
    oo.create_if_missing = 0;
    oo.remote = &ro->seam;
    char tmpdir[64] = "";
    if (!dir) {
        /* No local directory at all: a path that does not exist. */
        snprintf(tmpdir, sizeof tmpdir, "/nonexistent/s4kv-remote-%ld", (long)getpid());
        dir = tmpdir;
    }
    rc = s4kv_open(dir, &oo, out, err, errlen);
    if (rc) {
        ro_free(ro);
        return rc;
    }
    (*out)->remote_free = ro_free;
    (*out)->remote_owned = ro;
    return 0;
}

int s4kv_s3_stats(s4kv_db *db, s4kv_s3_report *rep)
{
    if (!db || !rep)
        return S4KV_EINVAL;
    memset(rep, 0, sizeof *rep);
    if (db->remote_free == ro_free)
        fill_counts(&((ropen *)db->remote_owned)->r, rep);
    return 0;
}
