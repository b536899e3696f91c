/*
 * db.c - the database handle: open and recovery, the write path with group
 * commit, get, iterators, rotation, checkpoints, stats, close.
 *
 * Invariants:
 *  - Only the writer at the head of the queue (qmu) appends to the log,
 *    rotates, checkpoints or compacts; it mutates the keydir and segment
 *    table only while holding rw for writing, after its bytes are written
 *    (and fdatasynced in S4KV_SYNC_BATCH mode). So a reader never sees a
 *    value that is not in the log, and an acknowledged write is in the log.
 *  - A segment is named by the manifest before any batch is appended to it.
 *  - The keydir maps every live key to a whole, checksummed put record.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <snappy-c.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GROUP_MAX_BYTES (4u << 20)
#define REMOTE_READS 3 /* reads of a remote record before it is corrupt */

/* A queued writer, on its thread's stack (or calloc'd for an exclusive
 * entry). Its state is set by the head that leads its group, under the
 * writer's own mu: the waiter must take mu to return, so it cannot free the
 * struct while the waker still uses it, and the queue mutex is not held while
 * a group's writers are woken (RocksDB's WriteThread does the same with its
 * per-writer StateMutex). */
enum { W_QUEUED, W_HEAD, W_DONE };
struct writer {
    s4kv_batch *b;     /* NULL for an exclusive (maintenance) entry */
    int state, rc;     /* W_*; rc and msg are set with W_DONE */
    char msg[512];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    writer *next;
};

/* ---- Small helpers */

int seterr(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

int errno_code(int neg)
{
    switch (-neg) {
    case ENOSPC:
    case EDQUOT: return S4KV_ENOSPC;
    case ENOENT: return S4KV_ENOENT;
    case ENOMEM: return S4KV_ENOMEM;
    default: return S4KV_EIO;
    }
}

void db_log(s4kv_db *db, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (db->opt.log)
        db->opt.log(db->opt.log_ctx, line);
    else
        fprintf(stderr, "s4kv: %s\n", line);
}

void db_progress(s4kv_db *db, const char *phase, uint64_t done, uint64_t total)
{
    if (db->opt.progress)
        db->opt.progress(db->opt.progress_ctx, phase, done, total);
}

void seg_path(const s4kv_db *db, uint32_t no, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/data_%06" PRIu32 ".s4kv", db->dir, no);
}

segment *db_seg(const s4kv_db *db, uint32_t no)
{
    return no < db->nbyno ? db->byno[no] : NULL;
}

void seg_map(s4kv_db *db, segment *s, uint64_t len)
{
    if (!db->v->map || s->fd < 0 || s->map)
        return;
    s->map = db->v->map(db->v, s->fd, len);
    s->maplen = s->map ? len : 0;
}

void seg_close(s4kv_db *db, segment *s)
{
    if (s->map)
        db->v->unmap(db->v, s->map, s->maplen);
    s->map = NULL;
    s->maplen = 0;
    if (s->fd >= 0)
        db->v->close(db->v, s->fd);
    s->fd = -1;
}

/* How much of a segment to map: sealed ones exactly, the active one up to
 * where it will be sealed (reads past maplen fall back to pread). */
static uint64_t map_len(const s4kv_db *db, const segment *s)
{
    return s->sealed || s->size > db->opt.max_segment_bytes ? s->size : db->opt.max_segment_bytes;
}

const char *key_str(const void *key, size_t klen, char *buf, size_t cap)
{
    const uint8_t *k = key;
    size_t o = 0;
    for (size_t i = 0; i < klen && o + 8 < cap; i++) {
        if (i == 64) {
            o += (size_t)snprintf(buf + o, cap - o, "...");
            break;
        }
        if (k[i] >= 0x20 && k[i] < 0x7f && k[i] != '\'' && k[i] != '\\')
            buf[o++] = (char)k[i];
        else
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", k[i]);
    }
    buf[o] = 0;
    return buf;
}

int seg_read(s4kv_db *db, const segment *s, uint64_t off, void *buf, size_t len, char *err,
             size_t errlen)
{
    if (s->fd >= 0) {
        ssize_t r = db->v->pread(db->v, s->fd, buf, len, off);
        if (r < 0)
            return seterr(err, errlen, errno_code((int)r), "read data_%06u.s4kv at offset %" PRIu64
                          ": %s", s->no, off, strerror((int)-r));
        if ((size_t)r != len)
            return seterr(err, errlen, S4KV_ECORRUPT,
                          "data_%06u.s4kv: %zu bytes at offset %" PRIu64 " past end of file",
                          s->no, len, off);
        return 0;
    }
    if (!db->opt.remote || !db->opt.remote->read_range)
        return seterr(err, errlen, S4KV_ENOENT, "data_%06u.s4kv is not on local disk", s->no);
    int rc = db->opt.remote->read_range(db->opt.remote->ctx, s->no, off, buf, len, err, errlen);
    return rc == 0 ? 0 : (rc < 0 ? rc : S4KV_EREMOTE);
}

void s4kv_options_init(s4kv_options *o)
{
    memset(o, 0, sizeof *o);
    o->create_if_missing = 1;
    o->sync_mode = S4KV_SYNC_BATCH;
    o->sync_interval_ms = 1000;
    o->max_segment_bytes = 64ull << 20;
    o->checkpoint_bytes = 256ull << 20;
    o->compress = 1;
}

/* ---- Segment table */

static segment *seg_new(uint32_t no)
{
    segment *s = calloc(1, sizeof *s);
    if (s) {
        s->no = no;
        s->fd = -1;
    }
    return s;
}

/* Appends s to the table (manifest order) and indexes it by number. */
static int table_add(s4kv_db *db, segment *s)
{
    if (db->nsegs == db->capsegs) {
        size_t nc = db->capsegs ? db->capsegs * 2 : 16;
        segment **ns = realloc(db->segs, nc * sizeof *ns);
        if (!ns)
            return -1;
        db->segs = ns;
        db->capsegs = nc;
    }
    if (s->no >= db->nbyno) {
        size_t nn = (size_t)s->no * 2 + 16;
        segment **nb = realloc(db->byno, nn * sizeof *nb);
        if (!nb)
            return -1;
        memset(nb + db->nbyno, 0, (nn - db->nbyno) * sizeof *nb);
        db->byno = nb;
        db->nbyno = nn;
    }
    db->segs[db->nsegs++] = s;
    db->byno[s->no] = s;
    return 0;
}

static segment *active_seg(const s4kv_db *db) { return db->segs[db->nsegs - 1]; }

void db_recount_live(s4kv_db *db)
{
    /* load_checkpoint counted while loading and marked the keydir; any
     * change since (replay, writes, compaction) cleared the mark */
    if (keydir_marked(db->kd))
        return;
    for (size_t i = 0; i < db->nsegs; i++)
        db->segs[i]->live = 0;
    size_t pos = 0;
    const void *k;
    size_t kl;
    keydir_loc loc;
    while (keydir_next(db->kd, &pos, &k, &kl, &loc)) {
        segment *s = db_seg(db, loc.seg);
        if (s)
            s->live += loc.len;
    }
}

/* ---- Writer queue */

static void q_wait_head(s4kv_db *db, writer *w)
{
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->next = NULL;
    w->state = W_QUEUED;
    pthread_mutex_lock(&db->qmu);
    if (db->qtail)
        db->qtail->next = w;
    else
        db->qhead = w;
    db->qtail = w;
    db->qlen++;
    int head = db->qhead == w;
    if (db->gathering && !head)
        pthread_cond_signal(&db->gather_cv);
    pthread_mutex_unlock(&db->qmu);
    if (head) {
        w->state = W_HEAD;
        return;
    }
    pthread_mutex_lock(&w->mu);
    while (w->state == W_QUEUED)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

static void q_writer_destroy(writer *w)
{
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

/* Sets a waiting writer's state and wakes it. After the unlock the writer
 * may return and its struct be gone: nothing here touches it after. */
static void q_wake(writer *w, int state, int rc, const char *msg)
{
    pthread_mutex_lock(&w->mu);
    w->rc = rc;
    if (rc && msg)
        snprintf(w->msg, sizeof w->msg, "%s", msg);
    w->state = state;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Takes the writers from the head (self) through `last` off the queue, then,
 * outside the queue mutex, wakes each with its rc and the new head to lead
 * the next group. */
static void q_pop(s4kv_db *db, writer *self, writer *last, int rc, const char *msg)
{
    pthread_mutex_lock(&db->qmu);
    size_t n = 1;
    for (writer *w = self; w != last; w = w->next)
        n++;
    db->qhead = last->next;
    if (!db->qhead)
        db->qtail = NULL;
    db->qlen -= n;
    writer *next_head = db->qhead;
    pthread_mutex_unlock(&db->qmu);
    /* The group's writers wait until woken, so their structs (and next
     * pointers, read before each wake) stay valid up to then; the new head
     * waits likewise, and only this thread wakes it. */
    for (writer *w = self;;) {
        writer *next = w->next;
        int end = w == last;
        if (w != self)
            q_wake(w, W_DONE, rc, msg);
        if (end)
            break;
        w = next;
    }
    if (next_head)
        q_wake(next_head, W_HEAD, 0, NULL);
}

static __thread writer *excl_self;

int db_exclusive_begin(s4kv_db *db)
{
    writer *w = calloc(1, sizeof *w);
    if (!w)
        return S4KV_ENOMEM;
    q_wait_head(db, w);
    excl_self = w;
    return 0;
}

void db_exclusive_end(s4kv_db *db)
{
    writer *w = excl_self;
    excl_self = NULL;
    q_pop(db, w, w, 0, NULL);
    q_writer_destroy(w);
    free(w);
}

int db_exclusive_begin_ckpt(s4kv_db *db)
{
    for (;;) {
        int rc = db_exclusive_begin(db);
        if (rc || !__atomic_load_n(&db->moving, __ATOMIC_ACQUIRE))
            return rc;
        /* A compaction is moving keys and needs the log to finish: let it. */
        db_exclusive_end(db);
        pthread_mutex_lock(&db->qmu);
        while (__atomic_load_n(&db->moving, __ATOMIC_ACQUIRE))
            pthread_cond_wait(&db->move_cv, &db->qmu);
        pthread_mutex_unlock(&db->qmu);
    }
}

uint64_t db_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- Rotation and checkpoints (caller is the exclusive head) */

static int sync_active(s4kv_db *db, char *err, size_t errlen)
{
    segment *a = active_seg(db);
    int rc = db->v->fdatasync(db->v, a->fd);
    if (rc != 0) {
        db->failed = 1;
        return seterr(err, errlen, errno_code(rc), "fdatasync data_%06u.s4kv: %s", a->no,
                      strerror(-rc));
    }
    db->unsynced = 0;
    return 0;
}

/* Creates segment `no` with its header, fdatasynced. Returns fd or error. */
static int seg_create(s4kv_db *db, uint32_t no, char *err, size_t errlen)
{
    char path[4096];
    seg_path(db, no, path, sizeof path);
    int fd = db->v->open(db->v, path, O_RDWR | O_CREAT | O_TRUNC, S4KV_FILE_MODE);
    if (fd < 0)
        return seterr(err, errlen, errno_code(fd), "create %s: %s", path, strerror(-fd));
    uint8_t hdr[SEG_HDR];
    seg_hdr_write(hdr, no);
    ssize_t w = db->v->pwrite(db->v, fd, hdr, SEG_HDR, 0);
    int rc = w < 0 ? (int)w : db->v->fdatasync(db->v, fd);
    /* The file's name must be durable before a manifest names it. */
    if (rc == 0)
        rc = db->v->fsync_dir(db->v, db->dir);
    if (rc != 0) {
        db->v->close(db->v, fd);
        db->v->unlink(db->v, path);
        return seterr(err, errlen, errno_code(rc), "write header of %s: %s", path, strerror(-rc));
    }
    return fd;
}

/*
 * Preallocated tail (S4KV_SYNC_BATCH). A durable append that grows the file
 * makes its fdatasync commit the new size to the filesystem journal as well
 * as write the data: 90-110 us a sync on this development machine's ext4,
 * against 60-69 us for rewriting bytes the file already has. So before a
 * small durable append would pass the end of the file, the writer extends
 * the file with PREALLOC_BYTES of zeros (ordinary writes, made durable by
 * that append's own fdatasync), and the appends after it overwrite zeros
 * until they reach the end again: one size change a MiB (after a ramp from
 * 16 KiB) instead of one a write. Measured in alternating runs of bench
 * fillsync1 (one writer, 128-byte records): 5-13 k -> 9.5-19 k writes/s.
 * Appends of more than PREALLOC_MAX_APPEND skip it: every byte of zeros is
 * written again as data, which costs more than the journal commit saved
 * once an append is longer than about that commit's time at the disk's
 * write rate (30-40 us at 588-827 MB/s here: 18-33 KB).
 *
 * The zeros are never part of the log: size stays the end of the last
 * batch, readers and uploads use size, rotation and close cut the file back
 * to size (trim_tail), and recovery after a crash drops a tail of zeros
 * like a torn tail (it is not a whole batch), saying which it was. A zero
 * write that fails (ENOSPC) only ends the preallocation: the append itself
 * goes on as a plain append, and the trim still cuts what was written.
 */
#define PREALLOC_BYTES ((uint64_t)1 << 20)
#define PREALLOC_FIRST ((uint64_t)16 << 10)
#define PREALLOC_MAX_APPEND ((uint64_t)16 << 10)

static void prealloc_tail(s4kv_db *db, segment *a, uint64_t need)
{
    static const uint8_t zeros[64 * 1024];
    /* The first extension of a handle is small and each one doubles, up to
     * PREALLOC_BYTES: a handle that writes once (the CLI's put) writes 16
     * KiB of zeros, not 1 MiB (2-4 ms more per `s4kv put` when it did). */
    uint64_t step = db->prealloc_step ? db->prealloc_step : PREALLOC_FIRST;
    db->prealloc_step = step < PREALLOC_BYTES ? 2 * step : PREALLOC_BYTES;
    uint64_t from = a->zero_end > a->size ? a->zero_end : a->size;
    uint64_t to = (need + step + 4095) & ~(uint64_t)4095;
    if (to > db->opt.max_segment_bytes)
        to = db->opt.max_segment_bytes;
    if (to <= from)
        return;
    /* Set first: a write that fails part way may still leave bytes past
     * size, and trim_tail cuts up to here. Appends up to `to` then do not
     * retry (the disk is likely full). */
    a->zero_end = to;
    while (from < to) {
        size_t n = to - from < sizeof zeros ? (size_t)(to - from) : sizeof zeros;
        ssize_t w = db->v->pwrite(db->v, a->fd, zeros, n, from);
        if (w <= 0)
            return;
        from += (uint64_t)w;
    }
}

/* Cuts the active segment's file back to its size when zeros were written
 * past it (prealloc_tail): before it is sealed, and at close. */
static int trim_tail(s4kv_db *db, segment *a, char *err, size_t errlen)
{
    if (a->zero_end <= a->size)
        return 0;
    int rc = db->v->ftruncate(db->v, a->fd, a->size);
    if (rc != 0)
        return seterr(err, errlen, errno_code(rc), "truncate data_%06u.s4kv to %" PRIu64
                      " bytes: %s", a->no, a->size, strerror(-rc));
    a->zero_end = 0;
    return 0;
}

int db_rotate(s4kv_db *db, char *err, size_t errlen)
{
    segment *old = active_seg(db);
    int rc = trim_tail(db, old, err, errlen);
    if (rc == 0)
        rc = sync_active(db, err, errlen);
    if (rc)
        return rc;
    uint32_t no = db->next_segment;
    segment *s = seg_new(no);
    if (!s)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    int fd = seg_create(db, no, err, errlen);
    if (fd < 0) {
        free(s);
        return fd;
    }
    s->fd = fd;
    s->size = SEG_HDR;
    seg_map(db, s, map_len(db, s));
    pthread_rwlock_wrlock(&db->rw);
    rc = table_add(db, s);
    if (rc == 0) {
        old->sealed = 1;
        db->next_segment++;
    }
    pthread_rwlock_unlock(&db->rw);
    if (rc == 0)
        rc = manifest_commit(db, err, errlen);
    else
        rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    if (rc != 0) {
        char path[4096];
        seg_path(db, no, path, sizeof path);
        pthread_rwlock_wrlock(&db->rw);
        if (db->nsegs && db->segs[db->nsegs - 1] == s) {
            db->nsegs--;
            db->byno[no] = NULL;
            old->sealed = 0;
            db->next_segment = no;
        }
        pthread_rwlock_unlock(&db->rw);
        seg_close(db, s);
        if (!db->failed)
            db->v->unlink(db->v, path);
        free(s);
    }
    return rc;
}

/* Starts the writeback of fd's bytes [*kicked, upto) once they reach step
 * bytes, and advances *kicked (RocksDB's bytes_per_sync): the device works
 * meanwhile, and the fdatasync that follows waits for the last stretch only.
 * A hint through the vfs, not a sync point. */
static void writeback_kick(s4kv_db *db, int fd, uint64_t *kicked, uint64_t upto, uint64_t step)
{
    if (db->v->writeback && upto > *kicked && upto - *kicked >= step) {
        db->v->writeback(db->v, fd, *kicked, upto - *kicked);
        *kicked = upto;
    }
}

/* ckpt_write's sink for db_checkpoint_locked: the temporary file, its
 * writeback started every CKPT_KICK bytes. */
#define CKPT_KICK ((uint64_t)4 << 20)

typedef struct ckpt_sink {
    s4kv_db *db;
    int fd;
    uint64_t off;
    uint64_t kicked; /* bytes before this offset have had their writeback started */
    int rc;          /* the failing pwrite's -errno */
} ckpt_sink;

static int ckpt_sink_write(void *ctx, const void *buf, size_t len)
{
    ckpt_sink *k = ctx;
    ssize_t w = k->db->v->pwrite(k->db->v, k->fd, buf, len, k->off);
    if (w < 0) {
        k->rc = (int)w;
        return -1;
    }
    k->off += len;
    writeback_kick(k->db, k->fd, &k->kicked, k->off, CKPT_KICK);
    return 0;
}

/* Writes a checkpoint of the keydir at the end of the log and commits a
 * manifest naming it. Order: (1) start the writeback of the active segment,
 * (2) stream the checkpoint to a temporary file, (3) fdatasync the segment
 * (by now mostly written, in parallel with (2)), (4) fdatasync, rename and
 * fsync the directory for the checkpoint, (5) commit the manifest. The
 * checkpoint is named by a manifest only after both the log it covers and
 * its own bytes are durable. */
int db_checkpoint_locked(s4kv_db *db, char *err, size_t errlen)
{
    int rc;
    segment *a = active_seg(db);
    writeback_kick(db, a->fd, &a->kicked, a->size, 0); /* what the appends did not start */
    ckpt_header h = {.generation = db->generation + 1, .pos_seg = a->no, .pos_off = a->size,
                     .next_seq = db->next_seq};
    char name[64], path[4096], tmp[4200];
    snprintf(name, sizeof name, "index_%06" PRIu64 ".s4ki", h.generation);
    snprintf(path, sizeof path, "%s/%s", db->dir, name);
    /* file_write_atomic's steps, with the checkpoint streamed to the file in
     * 256 KiB pieces instead of encoded whole in memory first */
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = db->v->open(db->v, tmp, O_WRONLY | O_CREAT | O_TRUNC, S4KV_FILE_MODE);
    if (fd < 0)
        return seterr(err, errlen, errno_code(fd), "open %s: %s", tmp, strerror(-fd));
    ckpt_sink k = {db, fd, 0, 0, 0};
    int w = ckpt_write(db->kd, &h, ckpt_sink_write, &k);
    const char *what = "write";
    rc = w > 0 ? k.rc : 0;
    if (rc == 0 && w == 0) {
        int src = sync_active(db, err, errlen);
        if (src != 0) {
            db->v->close(db->v, fd);
            db->v->unlink(db->v, tmp);
            return src;
        }
        rc = db->v->fdatasync(db->v, fd);
        what = "fdatasync";
    }
    db->v->close(db->v, fd);
    if (w < 0) {
        db->v->unlink(db->v, tmp);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory encoding the checkpoint");
    }
    int renamed = 0;
    if (rc == 0) {
        rc = db->v->rename(db->v, tmp, path);
        what = "rename";
    }
    if (rc == 0) {
        renamed = 1;
        rc = db->v->fsync_dir(db->v, db->dir);
        what = "fsync directory of";
    }
    if (rc != 0 && renamed) {
        /* The new file replaced any old one of that name but may not survive
         * a crash: stop taking writes; reopen resolves it. */
        db->failed = 1;
    } else if (rc != 0) {
        db->v->unlink(db->v, tmp);
        return seterr(err, errlen, errno_code(rc), "%s %s: %s", what, path, strerror(-rc));
    }
    char *old = db->ckpt_name;
    db->ckpt_name = strdup(name);
    if (!db->ckpt_name) {
        db->ckpt_name = old;
        db->v->unlink(db->v, path);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    rc = manifest_commit(db, err, errlen);
    if (rc) {
        free(db->ckpt_name);
        db->ckpt_name = old;
        if (!db->failed)
            db->v->unlink(db->v, path);
        return rc;
    }
    if (old && strcmp(old, name) != 0) {
        snprintf(path, sizeof path, "%s/%s", db->dir, old);
        db->v->unlink(db->v, path);
    }
    free(old);
    db->since_ckpt = 0;
    db->ckpt_size = k.off;
    return 0;
}

/* ---- Write path */

#define PREFETCH_AHEAD 8 /* records: enough to overlap the keydir's cache misses */
#define WB_KICK ((uint64_t)8 << 20) /* bytes of unsynced appends per writeback hint */

static void apply_batch(s4kv_db *db, const s4kv_batch *b, segment *a, uint64_t base, int *oom)
{
    /* Two prefetch streams: slots PREFETCH_AHEAD records ahead, and the
     * arena entries those slots name half as far ahead (a replace compares
     * the key there), so neither miss stalls the record being applied. Each
     * key is hashed once, by the first stream; the hashes wait in a ring. */
    uint32_t hs[2 * PREFETCH_AHEAD];
    const uint8_t *p = b->buf + BATCH_HDR, *end = b->buf + b->len, *ahead = p, *mid = p;
    size_t ip = 0, ia = 0, im = 0; /* record numbers of p, ahead, mid */
    uint64_t off = base + BATCH_HDR;
    keydir *kd = db->kd;
    for (int i = 0; i < PREFETCH_AHEAD && ahead < end; i++) {
        uint32_t h = hs[ia++ % (2 * PREFETCH_AHEAD)] = keydir_hash(kd, ahead + REC_HDR, get_u32(ahead + 20));
        keydir_prefetch_h(kd, h);
        ahead += REC_HDR + get_u32(ahead + 20) + get_u32(ahead + 24);
        if (i >= PREFETCH_AHEAD / 2) {
            keydir_prefetch_entry_h(kd, hs[im++ % (2 * PREFETCH_AHEAD)]);
            mid += REC_HDR + get_u32(mid + 20) + get_u32(mid + 24);
        }
    }
    while (p < end) {
        if (ahead < end) {
            uint32_t h = hs[ia++ % (2 * PREFETCH_AHEAD)] = keydir_hash(kd, ahead + REC_HDR, get_u32(ahead + 20));
            keydir_prefetch_h(kd, h);
            ahead += REC_HDR + get_u32(ahead + 20) + get_u32(ahead + 24);
        }
        if (mid < end) {
            keydir_prefetch_entry_h(kd, hs[im++ % (2 * PREFETCH_AHEAD)]);
            mid += REC_HDR + get_u32(mid + 20) + get_u32(mid + 24);
        }
        uint32_t h = hs[ip++ % (2 * PREFETCH_AHEAD)];
        uint32_t klen = get_u32(p + 20);
        uint32_t len = REC_HDR + klen + get_u32(p + 24);
        keydir_loc loc = {a->no, (uint32_t)off, len}, old;
        int r;
        if (p[16] == REC_PUT) {
            r = keydir_put_h(kd, p + REC_HDR, klen, h, loc, &old);
            if (r < 0)
                *oom = 1;
            else
                a->live += len;
        } else {
            r = keydir_del_h(kd, p + REC_HDR, klen, h, &old);
        }
        if (r == 1) {
            segment *os = db_seg(db, old.seg);
            if (os)
                os->live -= old.len;
        }
        p += len;
        off += len;
    }
}

/* Appends the batches of writers head..last as one write. Caller is head. */
static int append_group(s4kv_db *db, writer *head, writer *last, char *err, size_t errlen)
{
    if (db->failed)
        return seterr(err, errlen, S4KV_ECLOSED,
                      "an earlier write or sync failed; reopen the database");
    uint64_t seq = db->next_seq, total = 0;
    int n = 0;
    for (writer *w = head;; w = w->next) {
        batch_seal(w->b, &seq);
        total += w->b->len;
        n++;
        if (w == last)
            break;
    }
    segment *a = active_seg(db);
    if (a->size + total > db->opt.max_segment_bytes && a->size > SEG_HDR) {
        int rc = db_rotate(db, err, errlen);
        if (rc)
            return rc;
        a = active_seg(db);
    }
    if (a->size + total > UINT32_MAX)
        return seterr(err, errlen, S4KV_EINVAL, "batch of %" PRIu64 " bytes does not fit a segment",
                      total);
    const uint8_t *buf = head->b->buf;
    if (n > 1) {
        if (db->gcap < total) {
            uint8_t *nb = realloc(db->gbuf, total);
            if (!nb)
                return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
            db->gbuf = nb;
            db->gcap = total;
        }
        size_t o = 0;
        for (writer *w = head;; w = w->next) {
            memcpy(db->gbuf + o, w->b->buf, w->b->len);
            o += w->b->len;
            if (w == last)
                break;
        }
        buf = db->gbuf;
    }
    uint64_t off = a->size;
    if (db->opt.sync_mode == S4KV_SYNC_BATCH && off + total > a->zero_end &&
        total <= PREALLOC_MAX_APPEND)
        prealloc_tail(db, a, off + total);
    ssize_t wr = db->v->pwrite(db->v, a->fd, buf, total, off);
    if (wr < 0) {
        /* Cut off whatever part reached the file; if even that fails the
         * tail is uncertain and the handle stops taking writes. */
        a->zero_end = 0;
        if (db->v->ftruncate(db->v, a->fd, off) != 0)
            db->failed = 1;
        return seterr(err, errlen, errno_code((int)wr), "write data_%06u.s4kv at offset %" PRIu64
                      ": %s", a->no, off, strerror((int)-wr));
    }
    if (db->opt.sync_mode == S4KV_SYNC_BATCH) {
        uint64_t t0 = db_now_us();
        int rc = db->v->fdatasync(db->v, a->fd);
        db->last_sync_us = db_now_us() - t0;
        if (rc != 0) {
            /* After a failed fsync the page cache cannot be trusted
             * (Linux may have dropped the dirty pages): refuse writes
             * until reopen, which replays what really is on disk. */
            db->failed = 1;
            a->zero_end = 0;
            db->v->ftruncate(db->v, a->fd, off);
            return seterr(err, errlen, errno_code(rc), "fdatasync data_%06u.s4kv: %s", a->no,
                          strerror(-rc));
        }
    } else {
        db->unsynced += total;
        /* Whole pages of unsynced appends, every WB_KICK: the fdatasync
         * that seals the segment, a checkpoint or close then waits for the
         * last stretch only, not for 64 MiB at once (60 ms here, a stall of
         * every writer). */
        writeback_kick(db, a->fd, &a->kicked, (off + total) & ~(uint64_t)4095, WB_KICK);
    }
    int oom = 0;
    pthread_rwlock_wrlock(&db->rw);
    uint64_t base = off;
    for (writer *w = head;; w = w->next) {
        apply_batch(db, w->b, a, base, &oom);
        base += w->b->len;
        if (w == last)
            break;
    }
    a->size += total;
    db->next_seq = seq;
    db->since_ckpt += total;
    pthread_rwlock_unlock(&db->rw);
    if (oom) {
        db->failed = 1;
        return seterr(err, errlen, S4KV_ENOMEM,
                      "out of memory updating the index (the write is in the log; reopen)");
    }
    /* A checkpoint rewrites the whole index: wait for at least twice its
     * last size of new log, so its cost stays a bounded share of the writes
     * however large the index grows (and replay after a crash stays bounded
     * by the same amount). */
    uint64_t due = db->opt.checkpoint_bytes;
    if (due && due < 2 * db->ckpt_size)
        due = 2 * db->ckpt_size;
    if (due && db->since_ckpt >= due && !__atomic_load_n(&db->moving, __ATOMIC_ACQUIRE)) {
        char e2[512];
        if (db_checkpoint_locked(db, e2, sizeof e2) != 0)
            db_log(db, "checkpoint failed (will retry): %s", e2);
    }
    return 0;
}

/*
 * Gathering. Durable writers released together by one fdatasync come back
 * one by one; the first to return would lead a group of one and the rest a
 * group behind it, halving the batching. So when the last durable group had
 * several writers and fewer are queued now, the leader waits for them, at
 * most GATHER_MAX_US and never longer than the last fdatasync took (the
 * wait must cost less than the fsync it saves). Caller holds qmu and is the
 * head. The idea is RocksDB's adaptive write-thread wait (WriteThread's
 * AwaitState), bounded here by the measured fsync time.
 */
#define GATHER_MAX_US 200

static void gather(s4kv_db *db)
{
    if (db->opt.sync_mode != S4KV_SYNC_BATCH || db->last_group < 2 || db->qlen >= db->last_group)
        return;
    uint64_t wait_us = db->last_sync_us < GATHER_MAX_US ? db->last_sync_us : GATHER_MAX_US;
    if (wait_us == 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + wait_us * 1000u;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    db->gathering = 1;
    while (db->qlen < db->last_group)
        if (pthread_cond_timedwait(&db->gather_cv, &db->qmu, &ts) != 0)
            break;
    db->gathering = 0;
}

static int commit(s4kv_db *db, s4kv_batch *b, char *err, size_t errlen)
{
    if (db->read_only)
        return seterr(err, errlen, S4KV_EREADONLY, "%s is open read-only", db->dir);
    writer w = {.b = b};
    q_wait_head(db, &w);
    if (w.state == W_DONE) {
        q_writer_destroy(&w);
        if (w.rc)
            seterr(err, errlen, w.rc, "%s", w.msg);
        return w.rc;
    }
    /* Leader: take the queued batches behind us, up to a size bound. */
    pthread_mutex_lock(&db->qmu);
    gather(db);
    writer *last = &w;
    uint64_t total = b->len;
    size_t n = 1;
    while (last->next && last->next->b && total + last->next->b->len <= GROUP_MAX_BYTES) {
        last = last->next;
        total += last->b->len;
        n++;
    }
    if (db->opt.sync_mode == S4KV_SYNC_BATCH)
        db->last_group = n;
    pthread_mutex_unlock(&db->qmu);
    char msg[512] = "";
    int rc = append_group(db, &w, last, msg, sizeof msg);
    q_pop(db, &w, last, rc, msg);
    q_writer_destroy(&w);
    if (rc)
        seterr(err, errlen, rc, "%s", msg);
    return rc;
}

int s4kv_write(s4kv_db *db, s4kv_batch *b, char *err, size_t errlen)
{
    if (!db || !b)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle or batch");
    if (b->count == 0)
        return 0;
    return commit(db, b, err, errlen);
}

static int one(s4kv_db *db, int type, const void *key, size_t klen, const void *val,
               size_t vlen, char *err, size_t errlen)
{
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    /* Small writes encode on the stack; larger ones let batch_add allocate. */
    uint8_t stackbuf[4096];
    s4kv_batch b = {.len = BATCH_HDR};
    if (klen <= 1024 && vlen <= 2048) {
        b.buf = stackbuf;
        b.cap = sizeof stackbuf;
    }
    int rc = batch_add(&b, type, key, klen, val, vlen, db->opt.compress);
    if (rc == 0)
        rc = commit(db, &b, err, errlen);
    else if (rc == S4KV_EINVAL)
        seterr(err, errlen, rc, "key of %zu bytes (allowed 1..%u) or value of %zu bytes "
               "(allowed 0..%u)", klen, S4KV_MAX_KEY_BYTES, vlen, S4KV_MAX_VALUE_BYTES);
    else
        seterr(err, errlen, rc, "out of memory");
    if (b.buf != stackbuf)
        free(b.buf);
    free(b.scratch);
    return rc;
}

int s4kv_put(s4kv_db *db, const void *key, size_t klen, const void *val, size_t vlen,
             char *err, size_t errlen)
{
    return one(db, REC_PUT, key, klen, val, vlen, err, errlen);
}

int s4kv_delete(s4kv_db *db, const void *key, size_t klen, char *err, size_t errlen)
{
    if (db && key && klen && klen <= S4KV_MAX_KEY_BYTES) {
        keydir_loc loc;
        pthread_rwlock_rdlock(&db->rw);
        int present = keydir_get(db->kd, key, klen, &loc);
        pthread_rwlock_unlock(&db->rw);
        if (!present)
            return 0;
    }
    return one(db, REC_DEL, key, klen, NULL, 0, err, errlen);
}

/* ---- Reads */

/* Checks that rec (len bytes, read from the location the index gave for
 * key) is a whole put record of key. */
static int check_record(const uint8_t *rec, keydir_loc loc, const void *key, size_t klen,
                        rec_view *r, char *err, size_t errlen)
{
    const char *why = NULL;
    if (rec_parse(rec, loc.len, r, &why) != 0)
        ;
    else if (r->len != loc.len)
        why = "record length differs from the index";
    else if (r->klen != klen || memcmp(r->key, key, klen) != 0)
        why = "record holds a different key";
    else if (r->type != REC_PUT)
        why = "index points at a tombstone";
    if (!why)
        return 0;
    char kb[300];
    return seterr(err, errlen, S4KV_ECORRUPT, "key '%s': data_%06u.s4kv offset %u (%u bytes): %s",
                  key_str(key, klen, kb, sizeof kb), loc.seg, loc.off, loc.len, why);
}

/* Decodes r's value into dst (cap >= r->rlen). */
static int decode_value(const rec_view *r, uint8_t *dst, const void *key, size_t klen,
                        char *err, size_t errlen)
{
    if (!(r->flags & REC_SNAPPY)) {
        memmove(dst, r->val, r->rlen);
        return 0;
    }
    size_t ulen = 0;
    if (snappy_uncompressed_length((const char *)r->val, r->slen, &ulen) != SNAPPY_OK ||
        ulen != r->rlen ||
        snappy_uncompress((const char *)r->val, r->slen, (char *)dst, &ulen) != SNAPPY_OK ||
        ulen != r->rlen) {
        char kb[300];
        return seterr(err, errlen, S4KV_ECORRUPT, "key '%s': Snappy data does not decode",
                      key_str(key, klen, kb, sizeof kb));
    }
    return 0;
}

/* Hands r's value to the caller: a new allocation in *out (rlen + 1 bytes,
 * NUL-terminated) when out is non-NULL, else into buf (cap bytes). */
static int emit_value(const rec_view *r, void *buf, size_t cap, void **out, size_t *vlen,
                      const void *key, size_t klen, char *err, size_t errlen)
{
    *vlen = r->rlen;
    if (!out) {
        if (cap < r->rlen)
            return seterr(err, errlen, S4KV_ERANGE, "value of %u bytes does not fit %zu",
                          r->rlen, cap);
        return decode_value(r, buf, key, klen, err, errlen);
    }
    uint8_t *v = malloc((size_t)r->rlen + 1);
    if (!v)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    int rc = decode_value(r, v, key, klen, err, errlen);
    if (rc) {
        free(v);
        return rc;
    }
    v[r->rlen] = 0;
    *out = v;
    return 0;
}

/* The read path of s4kv_get and s4kv_get_into. A record in a mapped segment
 * is checked and decoded in place under the read lock (no system call, no
 * copy but the value's); otherwise it is read with one pread, or one
 * ranged read of a remote segment (outside the lock), then checked. */
static int get_value(s4kv_db *db, const void *key, size_t klen, void *buf, size_t cap,
                     void **out, size_t *vlen, char *err, size_t errlen)
{
    char kb[300];
    if (!db || !key || klen == 0 || klen > S4KV_MAX_KEY_BYTES)
        return seterr(err, errlen, S4KV_EINVAL, "key of %zu bytes (allowed 1..%u)", klen,
                      S4KV_MAX_KEY_BYTES);
    keydir_loc loc;
    rec_view r;
    pthread_rwlock_rdlock(&db->rw);
    if (!keydir_get(db->kd, key, klen, &loc)) {
        pthread_rwlock_unlock(&db->rw);
        /* the caller has the key: keep the miss path free of formatting */
        if (err && errlen) {
            static const char msg[] = "key not found";
            size_t n = errlen - 1 < sizeof msg - 1 ? errlen - 1 : sizeof msg - 1;
            memcpy(err, msg, n);
            err[n] = 0;
        }
        return S4KV_ENOTFOUND;
    }
    segment *s = db_seg(db, loc.seg);
    if (s && s->map && (uint64_t)loc.off + loc.len <= s->maplen) {
        int rc = check_record(s->map + loc.off, loc, key, klen, &r, err, errlen);
        if (rc == 0)
            rc = emit_value(&r, buf, cap, out, vlen, key, klen, err, errlen);
        pthread_rwlock_unlock(&db->rw);
        return rc;
    }
    uint8_t *rec = malloc((size_t)loc.len + 1);
    if (!rec) {
        pthread_rwlock_unlock(&db->rw);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    int rc;
    if (s && s->fd >= 0) {
        rc = seg_read(db, s, loc.off, rec, loc.len, err, errlen);
        pthread_rwlock_unlock(&db->rw);
        if (rc == 0 && (rc = check_record(rec, loc, key, klen, &r, err, errlen)) != 0) {
            free(rec);
            return rc; /* check_record's message names key, segment and offset */
        }
    } else {
        /* A remote record that fails its check may have been damaged in
         * transit (S3 checks nothing on a ranged GET): read it again, up to
         * REMOTE_READS times in all, before calling it corrupt. */
        segment copy = s ? *s : (segment){.no = loc.seg, .fd = -1};
        pthread_rwlock_unlock(&db->rw);
        for (int attempt = 1;; attempt++) {
            rc = seg_read(db, &copy, loc.off, rec, loc.len, err, errlen);
            if (rc == 0)
                rc = check_record(rec, loc, key, klen, &r, err, errlen);
            if (rc != S4KV_ECORRUPT || attempt == REMOTE_READS)
                break;
            db_log(db, "%s (read %d of %d); reading it again", err, attempt, REMOTE_READS);
        }
        if (rc == S4KV_ECORRUPT) {
            free(rec);
            return rc; /* check_record's message names key, segment and offset */
        }
    }
    if (rc) {
        char detail[512];
        snprintf(detail, sizeof detail, "%s", err ? err : "");
        free(rec);
        return seterr(err, errlen, rc, "key '%s': %s", key_str(key, klen, kb, sizeof kb), detail);
    }
    rc = emit_value(&r, buf, cap, out, vlen, key, klen, err, errlen);
    free(rec);
    return rc;
}

int s4kv_get(s4kv_db *db, const void *key, size_t klen, void **val, size_t *vlen, char *err,
             size_t errlen)
{
    if (!val || !vlen)
        return seterr(err, errlen, S4KV_EINVAL, "NULL output pointer");
    return get_value(db, key, klen, NULL, 0, val, vlen, err, errlen);
}

int s4kv_get_into(s4kv_db *db, const void *key, size_t klen, void *buf, size_t cap,
                  size_t *vlen, char *err, size_t errlen)
{
    if (!vlen || (cap && !buf))
        return seterr(err, errlen, S4KV_EINVAL, "NULL output pointer");
    return get_value(db, key, klen, buf, cap, NULL, vlen, err, errlen);
}

/* ---- Iterators */

typedef struct ikey {
    uint64_t off;
    uint32_t len;
} ikey;

struct s4kv_iter {
    s4kv_db *db;
    uint8_t *arena;
    ikey *keys;
    size_t n, i;
    unsigned flags;
    void *val;
    size_t vlen;
};

static int ikey_cmp(const void *a, const void *b, void *arena)
{
    const ikey *x = a, *y = b;
    const uint8_t *base = arena;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(base + x->off, base + y->off, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

int s4kv_iter_new(s4kv_db *db, const void *prefix, size_t plen, unsigned flags,
                  s4kv_iter **out, char *err, size_t errlen)
{
    if (!db || !out || (plen && !prefix))
        return seterr(err, errlen, S4KV_EINVAL, "NULL argument");
    if (!(flags & S4KV_ITER_KEYS_ONLY)) {
        int lrc = db_localize(db, err, errlen);
        if (lrc)
            return lrc;
    }
    s4kv_iter *it = calloc(1, sizeof *it);
    if (!it)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    it->db = db;
    it->flags = flags;
    it->i = (size_t)-1;
    pthread_rwlock_rdlock(&db->rw);
    size_t n = keydir_count(db->kd), used = 0, cap = n * 16 + 64;
    it->keys = malloc((n ? n : 1) * sizeof *it->keys);
    it->arena = malloc(cap);
    int rc = (it->keys && it->arena) ? 0 : S4KV_ENOMEM;
    size_t pos = 0;
    const void *k;
    size_t kl;
    keydir_loc loc;
    while (rc == 0 && keydir_next(db->kd, &pos, &k, &kl, &loc)) {
        if (kl < plen || (plen && memcmp(k, prefix, plen) != 0))
            continue;
        if (used + kl > cap) {
            while (used + kl > cap)
                cap *= 2;
            uint8_t *na = realloc(it->arena, cap);
            if (!na) {
                rc = S4KV_ENOMEM;
                break;
            }
            it->arena = na;
        }
        memcpy(it->arena + used, k, kl);
        it->keys[it->n++] = (ikey){used, (uint32_t)kl};
        used += kl;
    }
    pthread_rwlock_unlock(&db->rw);
    if (rc) {
        s4kv_iter_free(it);
        return seterr(err, errlen, rc, "out of memory creating an iterator");
    }
    if (flags & S4KV_ITER_SORTED)
        qsort_r(it->keys, it->n, sizeof *it->keys, ikey_cmp, it->arena);
    *out = it;
    return 0;
}

int s4kv_iter_next(s4kv_iter *it, char *err, size_t errlen)
{
    for (;;) {
        free(it->val);
        it->val = NULL;
        it->vlen = 0;
        if (it->i != (size_t)-1 && it->i >= it->n)
            return 0;
        it->i++;
        if (it->i >= it->n)
            return 0;
        if (it->flags & S4KV_ITER_KEYS_ONLY)
            return 1;
        const ikey *k = &it->keys[it->i];
        int rc = s4kv_get(it->db, it->arena + k->off, k->len, &it->val, &it->vlen, err, errlen);
        if (rc == S4KV_ENOTFOUND)
            continue; /* deleted since the snapshot */
        return rc == 0 ? 1 : rc;
    }
}

const void *s4kv_iter_key(const s4kv_iter *it, size_t *klen)
{
    if (it->i >= it->n) {
        *klen = 0;
        return NULL;
    }
    *klen = it->keys[it->i].len;
    return it->arena + it->keys[it->i].off;
}

const void *s4kv_iter_value(const s4kv_iter *it, size_t *vlen)
{
    *vlen = it->vlen;
    return it->val ? it->val : "";
}

void s4kv_iter_free(s4kv_iter *it)
{
    if (!it)
        return;
    free(it->keys);
    free(it->arena);
    free(it->val);
    free(it);
}

/* ---- Stats, sync, checkpoint */

int s4kv_stats_get(s4kv_db *db, s4kv_stats *st)
{
    if (!db || !st)
        return S4KV_EINVAL;
    memset(st, 0, sizeof *st);
    pthread_rwlock_rdlock(&db->rw);
    st->keys = keydir_count(db->kd);
    for (size_t i = 0; i < db->nsegs; i++) {
        st->live_bytes += db->segs[i]->live;
        st->segment_bytes += db->segs[i]->size;
    }
    st->garbage_bytes = st->segment_bytes - st->live_bytes;
    st->segments = db->nsegs;
    st->index_bytes = keydir_mem_bytes(db->kd);
    st->next_seq = db->next_seq;
    st->generation = db->generation;
    st->active_segment = db->nsegs ? active_seg(db)->no : 0;
    pthread_rwlock_unlock(&db->rw);
    return 0;
}

int s4kv_sync(s4kv_db *db, char *err, size_t errlen)
{
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    if (db->read_only)
        return 0;
    int rc = db_exclusive_begin(db);
    if (rc)
        return seterr(err, errlen, rc, "out of memory");
    rc = db->failed ? seterr(err, errlen, S4KV_ECLOSED, "an earlier write failed; reopen")
                    : sync_active(db, err, errlen);
    db_exclusive_end(db);
    return rc;
}

int s4kv_checkpoint(s4kv_db *db, char *err, size_t errlen)
{
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    if (db->read_only)
        return seterr(err, errlen, S4KV_EREADONLY, "%s is open read-only", db->dir);
    int rc = db_exclusive_begin_ckpt(db);
    if (rc)
        return seterr(err, errlen, rc, "out of memory");
    rc = db->failed ? seterr(err, errlen, S4KV_ECLOSED, "an earlier write failed; reopen")
                    : db_checkpoint_locked(db, err, errlen);
    db_exclusive_end(db);
    return rc;
}

int s4kv_seal(s4kv_db *db, int *sealed, char *err, size_t errlen)
{
    if (sealed)
        *sealed = 0;
    if (!db)
        return seterr(err, errlen, S4KV_EINVAL, "NULL handle");
    if (db->read_only)
        return seterr(err, errlen, S4KV_EREADONLY, "%s is open read-only", db->dir);
    int rc = db_exclusive_begin(db);
    if (rc)
        return seterr(err, errlen, rc, "out of memory");
    if (db->failed)
        rc = seterr(err, errlen, S4KV_ECLOSED, "an earlier write failed; reopen");
    else if (active_seg(db)->size > SEG_HDR) {
        rc = db_rotate(db, err, errlen);
        if (rc == 0 && sealed)
            *sealed = 1;
    }
    db_exclusive_end(db);
    return rc;
}

/* ---- Interval sync thread */

static void *syncer_main(void *arg)
{
    s4kv_db *db = arg;
    pthread_mutex_lock(&db->qmu);
    while (!db->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)db->opt.sync_interval_ms * 1000000ull;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        pthread_cond_timedwait(&db->stop_cv, &db->qmu, &ts);
        if (db->stopping)
            break;
        pthread_mutex_unlock(&db->qmu);
        if (db_exclusive_begin(db) == 0) {
            char e[512];
            if (db->unsynced && !db->failed && sync_active(db, e, sizeof e) != 0)
                db_log(db, "interval sync failed: %s", e);
            db_exclusive_end(db);
        }
        pthread_mutex_lock(&db->qmu);
    }
    pthread_mutex_unlock(&db->qmu);
    return NULL;
}

/* ---- Open, recovery, close */

static void db_free(s4kv_db *db)
{
    if (db->syncer_on) {
        pthread_mutex_lock(&db->qmu);
        db->stopping = 1;
        pthread_cond_broadcast(&db->stop_cv);
        pthread_mutex_unlock(&db->qmu);
        pthread_join(db->syncer, NULL);
    }
    for (size_t i = 0; i < db->nsegs; i++) {
        seg_close(db, db->segs[i]);
        free(db->segs[i]);
    }
    free(db->segs);
    free(db->byno);
    keydir_free(db->kd);
    if (db->lock_fd >= 0)
        close(db->lock_fd); /* releases the flock */
    free(db->gbuf);
    free(db->ckpt_name);
    if (db->remote_free)
        db->remote_free(db->remote_owned);
    free(db->dir);
    pthread_rwlock_destroy(&db->rw);
    pthread_mutex_destroy(&db->qmu);
    pthread_cond_destroy(&db->stop_cv);
    pthread_cond_destroy(&db->gather_cv);
    pthread_mutex_destroy(&db->cmu);
    pthread_cond_destroy(&db->move_cv);
    free(db);
}

static int take_lock(s4kv_db *db, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/LOCK", db->dir);
    db->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, S4KV_FILE_MODE);
    if (db->lock_fd < 0)
        return seterr(err, errlen, errno_code(-errno), "open %s: %s", path, strerror(errno));
    if (flock(db->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(db->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        if (e == EWOULDBLOCK)
            return seterr(err, errlen, S4KV_ELOCKED, "%s is locked by pid %s (another writer)",
                          db->dir, *pid ? pid : "?");
        return seterr(err, errlen, S4KV_EIO, "flock %s: %s", path, strerror(e));
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(db->lock_fd, 0) != 0 || pwrite(db->lock_fd, pid, (size_t)n, 0) != n)
        return seterr(err, errlen, S4KV_EIO, "write %s: %s", path, strerror(errno));
    return 0;
}

/* Opens the segments the manifest names. */
static int open_segments(s4kv_db *db, const manifest *m, char *err, size_t errlen)
{
    for (size_t i = 0; i < m->nseg; i++) {
        segment *s = seg_new(m->segno[i]);
        if (!s || table_add(db, s) != 0) {
            free(s);
            return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
        }
        int active = m->sealed_len[i] == UINT64_MAX;
        s->sealed = !active;
        char path[4096];
        seg_path(db, s->no, path, sizeof path);
        int fd = db->v->open(db->v, path, (active && !db->read_only) ? O_RDWR : O_RDONLY, 0);
        if (fd == -ENOENT && db->opt.remote && !active) {
            s->size = m->sealed_len[i]; /* not on local disk: read through the seam */
            continue;
        }
        if (fd < 0)
            return seterr(err, errlen, fd == -ENOENT ? S4KV_ECORRUPT : errno_code(fd),
                          "open %s (named by MANIFEST): %s", path, strerror(-fd));
        s->fd = fd;
        uint64_t size = 0;
        int rc = db->v->fsize(db->v, fd, &size);
        if (rc)
            return seterr(err, errlen, S4KV_EIO, "stat %s: %s", path, strerror(-rc));
        uint8_t hdr[SEG_HDR];
        const char *why = "file shorter than its header";
        if (size < SEG_HDR || seg_read(db, s, 0, hdr, SEG_HDR, err, errlen) != 0 ||
            seg_hdr_check(hdr, s->no, &why) != 0)
            return seterr(err, errlen, S4KV_ECORRUPT, "%s: %s", path, why);
        if (!active && size < m->sealed_len[i])
            return seterr(err, errlen, S4KV_ECORRUPT,
                          "%s is %" PRIu64 " bytes but MANIFEST says it was sealed at %" PRIu64,
                          path, size, m->sealed_len[i]);
        s->size = active ? size : m->sealed_len[i];
        seg_map(db, s, map_len(db, s));
    }
    return 0;
}

/* ckpt_load's reader and entry check for load_checkpoint. */
typedef struct ckpt_src {
    s4kv_db *db;
    int fd;
} ckpt_src;

static int ckpt_src_read(void *ctx, void *dst, size_t len, uint64_t off)
{
    ckpt_src *c = ctx;
    return c->db->v->pread(c->db->v, c->fd, dst, len, off) == (ssize_t)len ? 0 : -1;
}

/* Every entry must point inside the log; counts live bytes on the way. */
static int ckpt_check_entry(void *ctx, keydir_loc loc, char *err, size_t errlen)
{
    s4kv_db *db = ctx;
    segment *s = db_seg(db, loc.seg);
    if (!s || loc.off < SEG_HDR || (uint64_t)loc.off + loc.len > s->size) {
        snprintf(err, errlen, "an entry points outside the log (segment %u offset %u)",
                 loc.seg, loc.off);
        return -1;
    }
    s->live += loc.len;
    return 0;
}

/* Loads the checkpoint the manifest names into db->kd. Returns 0 and the
 * position, or -1 (logged) when it is missing or unusable. A local file is
 * read in pieces straight into the keydir being built; segments' live bytes
 * are counted on the way and the keydir marked, so db_recount_live has
 * nothing to do unless replay changes it. */
static int load_checkpoint(s4kv_db *db, size_t *seg_idx, uint64_t *off)
{
    if (!db->ckpt_name)
        return -1;
    char path[4096], why[256] = "";
    snprintf(path, sizeof path, "%s/%s", db->dir, db->ckpt_name);
    int fd = db->v->open(db->v, path, O_RDONLY, 0);
    uint8_t *buf = NULL;
    ckpt_src src = {db, fd};
    ckpt_reader rd = {.hash = db->hash, .check = ckpt_check_entry, .check_ctx = db};
    if (fd == -ENOENT && db->opt.remote && db->opt.remote->fetch) {
        size_t n = 0;
        char e2[200] = "";
        if (db->opt.remote->fetch(db->opt.remote->ctx, db->ckpt_name, &buf, &n, e2,
                                  sizeof e2) != 0)
            snprintf(why, sizeof why, "remote: %s", e2);
        rd.size = n;
        rd.buf = buf;
    } else if (fd < 0) {
        snprintf(why, sizeof why, "open: %s", strerror(-fd));
    } else {
        if (db->v->fsize(db->v, fd, &rd.size) != 0)
            snprintf(why, sizeof why, "read failed");
        rd.read = ckpt_src_read;
        rd.ctx = &src;
    }
    for (size_t i = 0; i < db->nsegs; i++)
        db->segs[i]->live = 0;
    ckpt_header h;
    keydir *kd = NULL;
    if (!*why && ckpt_load(&rd, &h, &kd, why, sizeof why) == 0) {
        segment *ps = db_seg(db, h.pos_seg);
        if (!ps || h.pos_off < SEG_HDR || h.pos_off > ps->size)
            snprintf(why, sizeof why, "its log position (segment %u, offset %" PRIu64
                     ") is outside the log", h.pos_seg, h.pos_off);
        for (size_t i = 0; !*why && i < db->nsegs; i++)
            if (db->segs[i] == ps)
                *seg_idx = i;
        *off = h.pos_off;
    }
    if (fd >= 0)
        db->v->close(db->v, fd);
    free(buf);
    if (*why) {
        keydir_free(kd);
        db_log(db, "checkpoint %s is unusable (%s); rebuilding the index by replaying every "
                   "segment", db->ckpt_name, why);
        return -1;
    }
    keydir_mark(kd);
    keydir_free(db->kd);
    db->kd = kd;
    db->ckpt_size = rd.size;
    if (h.next_seq > db->next_seq)
        db->next_seq = h.next_seq;
    return 0;
}

int replay_apply(s4kv_db *db, keydir *kd, const segment *s, uint64_t off, const rec_view *r)
{
    keydir_loc loc = {s->no, (uint32_t)off, r->len};
    if (r->type == REC_PUT) {
        if (keydir_put(kd, r->key, r->klen, loc, NULL) < 0)
            return S4KV_ENOMEM;
    } else {
        keydir_del(kd, r->key, r->klen, NULL);
    }
    if (r->seq >= db->next_seq)
        db->next_seq = r->seq + 1;
    return 0;
}

typedef struct replay_ctx {
    s4kv_db *db;
    keydir *kd;
} replay_ctx;

static int replay_cb(void *ctx, const segment *s, uint64_t off, const rec_view *r)
{
    replay_ctx *c = ctx;
    return replay_apply(c->db, c->kd, s, off, r);
}

/* 1 when the bytes [from, to) of s are all zeros (a preallocated tail, see
 * prealloc_tail) and at most 2 * PREALLOC_BYTES long; 0 otherwise. */
static int zero_tail(s4kv_db *db, const segment *s, uint64_t from, uint64_t to)
{
    if (to - from > 2 * PREALLOC_BYTES)
        return 0;
    uint8_t buf[16384];
    char e[128];
    while (from < to) {
        size_t n = to - from < sizeof buf ? (size_t)(to - from) : sizeof buf;
        if (seg_read(db, s, from, buf, n, e, sizeof e) != 0)
            return 0;
        for (size_t i = 0; i < n; i++)
            if (buf[i])
                return 0;
        from += n;
    }
    return 1;
}

/* Replays segments [from, nsegs) into kd, the first from offset `start`.
 * With truncate_tail, a torn tail of the active segment is cut off. */
static int replay_from(s4kv_db *db, keydir *kd, size_t from, uint64_t start, int truncate_tail,
                       char *err, size_t errlen)
{
    replay_ctx c = {db, kd};
    uint64_t total = 0, done = 0;
    for (size_t i = from; i < db->nsegs; i++)
        total += db->segs[i]->size;
    for (size_t i = from; i < db->nsegs; i++) {
        segment *s = db->segs[i];
        int active = i + 1 == db->nsegs && !s->sealed;
        scan_result res;
        int rc = seg_scan(db, s, i == from ? start : SEG_HDR, !db->read_only || !active,
                          replay_cb, &c, kd, &res, err, errlen);
        if (rc)
            return rc;
        done += s->size;
        db_progress(db, "replay", done, total);
        if (!res.torn)
            continue;
        uint64_t cut = s->size - res.end;
        if (!active) {
            db_log(db, "corruption: sealed segment data_%06u.s4kv has %" PRIu64 " bad bytes at "
                       "its end (offset %" PRIu64 ")", s->no, cut, res.end);
        } else if (truncate_tail && !db->read_only) {
            int zeros = zero_tail(db, s, res.end, s->size);
            int t = db->v->ftruncate(db->v, s->fd, res.end);
            if (t == 0)
                t = db->v->fdatasync(db->v, s->fd);
            if (t)
                return seterr(err, errlen, errno_code(t), "truncate data_%06u.s4kv: %s", s->no,
                              strerror(-t));
            if (zeros)
                db_log(db, "recovery: cut the preallocated tail (%" PRIu64 " zero bytes) from "
                           "data_%06u.s4kv at offset %" PRIu64, cut, s->no, res.end);
            else
                db_log(db, "recovery: cut a torn tail of %" PRIu64 " bytes from data_%06u.s4kv "
                           "at offset %" PRIu64, cut, s->no, res.end);
            s->size = res.end;
        } else if (truncate_tail) {
            s->size = res.end; /* read-only: ignore the tail, leave the file alone */
        }
    }
    return 0;
}

int db_replay_all(s4kv_db *db, keydir **out, int truncate_tail, char *err, size_t errlen)
{
    keydir *kd = keydir_new(keydir_count(db->kd), db->hash);
    if (!kd)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    int rc = replay_from(db, kd, 0, SEG_HDR, truncate_tail, err, errlen);
    if (rc) {
        keydir_free(kd);
        return rc;
    }
    *out = kd;
    return 0;
}

/* Removes temp files and files the manifest does not name (read-write). */
static void remove_orphans(s4kv_db *db)
{
    DIR *d = opendir(db->dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        unsigned no;
        char tail[16];
        int orphan = 0;
        if (len > 4 && strcmp(n + len - 4, ".tmp") == 0)
            orphan = 1;
        else if (sscanf(n, "data_%u.s4k%15s", &no, tail) == 2 && strcmp(tail, "v") == 0)
            orphan = !db_seg(db, no);
        else if (strncmp(n, "index_", 6) == 0 && len > 5 && strcmp(n + len - 5, ".s4ki") == 0)
            orphan = !db->ckpt_name || strcmp(db->ckpt_name, n) != 0;
        if (!orphan)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", db->dir, n);
        if (db->v->unlink(db->v, path) == 0)
            db_log(db, "recovery: removed %s (not named by MANIFEST: left by an interrupted "
                       "rotation, checkpoint or compaction)", n);
    }
    closedir(d);
}

/* Whether dir holds segments a missing MANIFEST would leave unordered.
 * create_new makes data_000001.s4kv durable before the first MANIFEST, so a
 * crash between the two leaves that one file with at most its header and
 * nothing acknowledged: an interrupted creation, which this removes (and
 * logs) so the creation starts again, instead of refusing the directory. */
static int has_segments(s4kv_db *db, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    int n = 0, first = 0;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "data_", 5) != 0)
            continue;
        n++;
        first |= strcmp(e->d_name, "data_000001.s4kv") == 0;
    }
    closedir(d);
    if (n != 1 || !first)
        return n > 0;
    char path[4096];
    seg_path(db, 1, path, sizeof path);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > SEG_HDR)
        return 1;
    db_log(db, "%s: %lld bytes and no MANIFEST: a creation cut short; starting it again", path,
           (long long)st.st_size);
    return db->v->unlink(db->v, path) != 0;
}

static int create_new(s4kv_db *db, char *err, size_t errlen)
{
    segment *s = seg_new(1);
    if (!s || table_add(db, s) != 0) {
        free(s);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    int fd = seg_create(db, 1, err, errlen);
    if (fd < 0)
        return fd;
    s->fd = fd;
    s->size = SEG_HDR;
    seg_map(db, s, map_len(db, s));
    db->next_segment = 2;
    db->next_seq = 1;
    if (getrandom(&db->id, sizeof db->id, 0) != (ssize_t)sizeof db->id)
        db->id = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return manifest_commit(db, err, errlen);
}

/* Reads MANIFEST through the remote seam (remote-only open). */
static int fetch_manifest(s4kv_db *db, manifest *m, char *err, size_t errlen)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char e2[512] = "";
    int rc = db->opt.remote->fetch(db->opt.remote->ctx, "MANIFEST", &buf, &len, e2, sizeof e2);
    if (rc == S4KV_ENOENT)
        return seterr(err, errlen, S4KV_ENOENT, "%s", e2);
    if (rc)
        return seterr(err, errlen, rc, "%s", e2);
    rc = manifest_parse((const char *)buf, len, "remote MANIFEST", m, err, errlen);
    free(buf);
    for (size_t i = 0; rc == 0 && i < m->nseg; i++)
        if (m->sealed_len[i] == UINT64_MAX)
            rc = seterr(err, errlen, S4KV_ECORRUPT,
                        "remote MANIFEST: segment %u has no committed length", m->segno[i]);
    return rc;
}

/* Copies remote segment s into the temporary file fd and checks the copy:
 * its header, and whole checksum-valid batches up to exactly s->size. 0,
 * S4KV_ECORRUPT (the copy is damaged), or the read or write error. */
static int localize_one(s4kv_db *db, const segment *s, int fd, char *err, size_t errlen)
{
    uint64_t chunk = 16u << 20;
    uint8_t *buf = malloc(chunk);
    int rc = buf ? 0 : seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    for (uint64_t off = 0; rc == 0 && off < s->size; off += chunk) {
        size_t n = (size_t)(s->size - off < chunk ? s->size - off : chunk);
        rc = seg_read(db, s, off, buf, n, err, errlen);
        if (rc == 0 && off == 0) {
            const char *why = NULL;
            if (n < SEG_HDR || seg_hdr_check(buf, s->no, &why) != 0)
                rc = seterr(err, errlen, S4KV_ECORRUPT, "copy of remote data_%06u.s4kv: header: %s",
                            s->no, why ? why : "short");
        }
        if (rc == 0) {
            ssize_t w = db->v->pwrite(db->v, fd, buf, n, off);
            if (w < 0)
                rc = seterr(err, errlen, errno_code((int)w), "write temporary copy: %s",
                            strerror((int)-w));
        }
    }
    free(buf);
    if (rc)
        return rc;
    segment copy = *s;
    copy.fd = fd;
    copy.map = NULL;
    copy.maplen = 0;
    scan_result res;
    rc = seg_scan(db, &copy, SEG_HDR, 1, NULL, NULL, NULL, &res, err, errlen);
    if (rc == 0 && (res.bad || res.torn || res.end != s->size))
        rc = seterr(err, errlen, S4KV_ECORRUPT,
                    "copy of remote data_%06u.s4kv: not whole checksum-valid batches up to "
                    "its committed length %" PRIu64 " (damaged from offset %" PRIu64 ")",
                    s->no, s->size, res.end);
    return rc;
}

/* Copies every segment that is only remote into an unlinked local temporary
 * file (whole-segment ranged reads), so bulk reads do not cost one request
 * per record. Each copy is checked (header and every batch checksum) and
 * fetched again, up to REMOTE_READS times in all, when damaged in transit.
 * Readers switch to the local copy under the write lock. */
int db_localize(s4kv_db *db, char *err, size_t errlen)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    for (size_t i = 0; i < db->nsegs; i++) {
        segment *s = db->segs[i];
        if (s->fd >= 0)
            continue;
        int fd = db->v->open(db->v, tmp, O_TMPFILE | O_RDWR, 0600);
        if (fd < 0)
            return seterr(err, errlen, errno_code(fd), "create a temporary file in %s: %s", tmp,
                          strerror(-fd));
        int rc;
        for (int attempt = 1;; attempt++) {
            rc = localize_one(db, s, fd, err, errlen);
            if (rc != S4KV_ECORRUPT || attempt == REMOTE_READS)
                break;
            db_log(db, "%s (copy %d of %d); fetching it again", err, attempt, REMOTE_READS);
        }
        if (rc) {
            db->v->close(db->v, fd);
            return rc;
        }
        pthread_rwlock_wrlock(&db->rw);
        int raced = s->fd >= 0; /* another iterator copied it meanwhile */
        if (!raced) {
            s->fd = fd;
            seg_map(db, s, s->size);
        }
        pthread_rwlock_unlock(&db->rw);
        if (raced)
            db->v->close(db->v, fd);
    }
    return 0;
}

int s4kv__open_vfs(const char *dir, const s4kv_options *opt, vfs *v, keydir_hash_fn hash,
                   s4kv_db **out, char *err, size_t errlen)
{
    s4kv_options defaults;
    if (!opt) {
        s4kv_options_init(&defaults);
        opt = &defaults;
    }
    if (!dir || !*dir || !out)
        return seterr(err, errlen, S4KV_EINVAL, "no directory given");
    if (opt->max_segment_bytes < SEG_MIN_BYTES || opt->max_segment_bytes > SEG_MAX_BYTES)
        return seterr(err, errlen, S4KV_EINVAL, "max_segment_bytes %" PRIu64
                      " outside 4096 .. 2 GiB", opt->max_segment_bytes);
    if (opt->sync_mode > S4KV_SYNC_INTERVAL ||
        (opt->sync_mode == S4KV_SYNC_INTERVAL && opt->sync_interval_ms == 0))
        return seterr(err, errlen, S4KV_EINVAL, "bad sync_mode or sync_interval_ms");
    s4kv_db *db = calloc(1, sizeof *db);
    if (!db || !(db->dir = strdup(dir))) {
        free(db);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    db->opt = *opt;
    db->v = v;
    db->hash = hash;
    db->lock_fd = -1;
    db->read_only = opt->read_only;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&db->rw, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&db->qmu, NULL);
    pthread_cond_init(&db->stop_cv, NULL);
    pthread_cond_init(&db->gather_cv, NULL);
    pthread_mutex_init(&db->cmu, NULL);
    pthread_cond_init(&db->move_cv, NULL);
    db->next_seq = 1;

    int rc = 0;
    struct stat st;
    int remote_ok = db->read_only && opt->remote && opt->remote->fetch;
    if (stat(dir, &st) != 0 && errno == ENOENT && remote_ok) {
        /* remote-only open: nothing local at all */
    } else if (stat(dir, &st) != 0) {
        if (errno != ENOENT)
            rc = seterr(err, errlen, S4KV_EIO, "stat %s: %s", dir, strerror(errno));
        else if (db->read_only || !opt->create_if_missing)
            rc = seterr(err, errlen, S4KV_ENOENT, "no database at %s (directory missing)", dir);
        else if (mkdir(dir, S4KV_DIR_MODE) != 0 && errno != EEXIST)
            rc = seterr(err, errlen, errno_code(-errno), "mkdir %s: %s", dir, strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        rc = seterr(err, errlen, S4KV_EINVAL, "%s is not a directory", dir);
    }
    if (rc == 0 && !db->read_only)
        rc = take_lock(db, err, errlen);
    if (rc == 0 && !(db->kd = keydir_new(0, hash)))
        rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    manifest m = {0};
    int fresh = 0;
    if (rc == 0) {
        rc = manifest_load(db, &m, err, errlen);
        if (rc == S4KV_ENOENT && remote_ok)
            rc = fetch_manifest(db, &m, err, errlen);
        if (rc == S4KV_ENOENT) {
            if (remote_ok)
                ; /* fetch_manifest's message names the remote location */
            else if (db->read_only || !opt->create_if_missing)
                rc = seterr(err, errlen, S4KV_ENOENT, "no database at %s (no MANIFEST)", dir);
            else if (has_segments(db, dir))
                rc = seterr(err, errlen, S4KV_ECORRUPT,
                            "%s holds segments but no MANIFEST; refusing to guess their replay "
                            "order (restore MANIFEST, or move the data_* files away)", dir);
            else
                rc = create_new(db, err, errlen);
            if (rc == 0)
                remove_orphans(db);
            fresh = 1;
        } else if (rc == 0) {
            db->generation = m.generation;
            db->id = m.id;
            db->next_segment = m.next_segment;
            db->ckpt_name = m.checkpoint;
            m.checkpoint = NULL;
            rc = open_segments(db, &m, err, errlen);
        }
    }
    manifest_free(&m);
    if (rc == 0 && !fresh) {
        size_t from = 0;
        uint64_t start = SEG_HDR;
        int have_ckpt = load_checkpoint(db, &from, &start) == 0;
        rc = replay_from(db, db->kd, from, start, 1, err, errlen);
        if (rc == 0) {
            db_recount_live(db);
            if (!db->read_only && active_seg(db)->sealed)
                rc = db_rotate(db, err, errlen); /* e.g. a downloaded database */
            if (rc == 0 && !db->read_only) {
                remove_orphans(db);
                if (!have_ckpt && keydir_count(db->kd) > 0) {
                    char e2[512];
                    if (db_checkpoint_locked(db, e2, sizeof e2) != 0)
                        db_log(db, "could not write a fresh checkpoint: %s", e2);
                }
            }
        }
    }
    if (rc == 0 && !db->read_only && opt->sync_mode == S4KV_SYNC_INTERVAL) {
        if (pthread_create(&db->syncer, NULL, syncer_main, db) == 0)
            db->syncer_on = 1;
        else
            rc = seterr(err, errlen, S4KV_ENOMEM, "cannot start the sync thread");
    }
    if (rc) {
        db_free(db);
        return rc;
    }
    *out = db;
    return 0;
}

int s4kv_open(const char *dir, const s4kv_options *opt, s4kv_db **out, char *err, size_t errlen)
{
    return s4kv__open_vfs(dir, opt, vfs_posix(), NULL, out, err, errlen);
}

int s4kv_close(s4kv_db *db)
{
    if (!db)
        return 0;
    int rc = 0;
    if (!db->read_only && !db->failed) {
        char e[512];
        db_exclusive_begin_ckpt(db);
        if (trim_tail(db, active_seg(db), e, sizeof e) != 0) /* the next open drops it */
            db_log(db, "close: %s", e);
        if (db->since_ckpt > 0 || !db->ckpt_name)
            rc = db_checkpoint_locked(db, e, sizeof e);
        else
            rc = sync_active(db, e, sizeof e);
        if (rc)
            db_log(db, "close: %s", e);
        db_exclusive_end(db);
    }
    db_free(db);
    return rc;
}

void s4kv__abandon(s4kv_db *db)
{
    if (db)
        db_free(db);
}

/* ---- Snapshot for upload */

void db_snap_free(db_snap *s)
{
    for (size_t i = 0; i < s->nsegs; i++)
        if (s->segs[i].fd >= 0)
            close(s->segs[i].fd);
    if (s->ckpt_fd >= 0)
        close(s->ckpt_fd);
    free(s->segs);
    free(s->checkpoint);
    memset(s, 0, sizeof *s);
    s->ckpt_fd = -1;
}

int db_snapshot(s4kv_db *db, uint64_t ckpt_after, db_snap *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->ckpt_fd = -1;
    if (db->read_only)
        return seterr(err, errlen, S4KV_EREADONLY, "%s is open read-only", db->dir);
    int rc = db_exclusive_begin_ckpt(db);
    if (rc)
        return seterr(err, errlen, rc, "out of memory");
    if (db->failed)
        rc = seterr(err, errlen, S4KV_ECLOSED, "an earlier write failed; reopen");
    else if (!db->ckpt_name || db->since_ckpt > ckpt_after)
        rc = db_checkpoint_locked(db, err, errlen);
    else
        rc = sync_active(db, err, errlen);
    if (rc == 0) {
        out->id = db->id;
        out->generation = db->generation;
        out->next_segment = db->next_segment;
        out->segs = calloc(db->nsegs, sizeof *out->segs);
        out->checkpoint = db->ckpt_name ? strdup(db->ckpt_name) : NULL;
        if (!out->segs || (db->ckpt_name && !out->checkpoint))
            rc = seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < db->nsegs; i++) {
        segment *s = db->segs[i];
        int fd = s->fd >= 0 ? dup(s->fd) : -1;
        if (fd < 0)
            rc = seterr(err, errlen, S4KV_EIO, "data_%06u.s4kv is not on local disk", s->no);
        out->segs[out->nsegs++] = (db_snap_seg){s->no, s->size, fd};
    }
    if (rc == 0 && out->checkpoint) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", db->dir, out->checkpoint);
        out->ckpt_fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (out->ckpt_fd < 0 || fstat(out->ckpt_fd, &st) != 0)
            rc = seterr(err, errlen, S4KV_EIO, "open %s: %s", path, strerror(errno));
        else
            out->ckpt_len = (uint64_t)st.st_size;
    }
    db_exclusive_end(db);
    if (rc)
        db_snap_free(out);
    return rc;
}
