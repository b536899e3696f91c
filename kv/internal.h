/*
 * internal.h - structures shared by the files of kv/ (not installed).
 *
 * Locking (see db.c): `qmu` guards the writer queue; the writer at the head
 * of the queue owns the log (appends, rotation, checkpoint, compaction) and is
 * the only thread that mutates the keydir or the segment table, which it does
 * under `rw` held for writing. Readers hold `rw` for reading while they look
 * up the keydir and pread a local segment, so a segment's fd is never closed
 * under them.
 */
#ifndef S4KV_INTERNAL_H
#define S4KV_INTERNAL_H

#include "s4kv.h"
#include "keydir.h"
#include "vfs.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

/* ---- Format constants (kv/FORMAT.md) */
#define SEG_MAGIC "S4KVSEG1"
#define SEG_HDR 32u
#define BATCH_MAGIC 0x424b3453u /* "S4KB" little-endian */
#define BATCH_HDR 24u
#define REC_HDR 32u
#define REC_PUT 1
#define REC_DEL 2
#define REC_SNAPPY 1
#define FORMAT_VERSION 1u
#define SEG_MAX_BYTES (2ull << 30)
/* Modes of what the engine creates (before the umask): owner read-write,
 * group read, nothing for others, since the data may be private. */
/* For straight-line byte loops whose only branch is the loop's own (e.g.
 * percent-encoding): clang's fuzzer builds then do not call a coverage
 * callback on every byte, which carries no feedback; AddressSanitizer still
 * checks every access. No effect in gcc builds. */
#if defined(__clang__)
#define S4KV_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define S4KV_NO_COVERAGE
#endif

#define S4KV_FILE_MODE 0640
#define S4KV_DIR_MODE 0750
#define SEG_MIN_BYTES 4096ull

/* ---- Little-endian helpers */
static inline void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get_u64(const uint8_t *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

uint64_t s4kv_hash(const void *p, size_t n); /* xxh3-64, seed 0 */

/* ---- Records and batches (record.c) */

/* A parsed record (pointers into the buffer it was parsed from). */
typedef struct rec_view {
    uint64_t seq;
    uint8_t type, flags;
    uint32_t klen, slen, rlen;
    const uint8_t *key, *val;
    uint32_t len; /* whole record length */
} rec_view;

/* Parses and checks one record at p (avail bytes). Returns 0, or -1 with a
 * reason in *why (static string). */
int rec_parse(const uint8_t *p, size_t avail, rec_view *r, const char **why);

/* Checks a batch header at p (>= BATCH_HDR bytes). 0 and count/body, or -1. */
int batch_hdr_parse(const uint8_t *p, uint32_t *count, uint64_t *body);
void batch_hdr_write(uint8_t *p, uint32_t count, uint64_t body);
void seg_hdr_write(uint8_t *p, uint32_t segno);
/* 0 when p holds a valid header for segno, else -1 with *why. */
int seg_hdr_check(const uint8_t *p, uint32_t segno, const char **why);

struct s4kv_batch {
    uint8_t *buf;  /* BATCH_HDR reserved, then records */
    size_t len, cap;
    uint32_t count;
    uint8_t *scratch; /* compression scratch */
    size_t scap;
    int compress;
};
/* Assigns sequence numbers from *seq (advanced) and computes every record
 * checksum and the batch header. */
void batch_seal(s4kv_batch *b, uint64_t *seq);
int batch_add(s4kv_batch *b, int type, const void *key, size_t klen,
              const void *val, size_t vlen, int compress);

/* ---- Segments and the db */

typedef struct segment {
    uint32_t no;
    int fd;            /* -1 when not on local disk (read through db->remote) */
    int sealed;
    uint64_t size;     /* bytes in the file (sealed: final length) */
    uint64_t live;     /* bytes of records the keydir points at */
    const uint8_t *map; /* read-only mapping of [0, maplen), or NULL */
    uint64_t maplen;
    uint64_t kicked;   /* writeback of [0, kicked) has been started (vfs writeback) */
    uint64_t zero_end; /* active, S4KV_SYNC_BATCH: the file may hold bytes past size, up
                        * to zero_end, zeros written ahead of the appends (prealloc_tail
                        * in db.c), never log data; <= size when there are none */
} segment;

typedef struct writer writer;

struct s4kv_db {
    char *dir;
    s4kv_options opt;
    vfs *v;
    int lock_fd;
    int read_only;

    pthread_rwlock_t rw;
    keydir *kd;
    keydir_hash_fn hash;   /* NULL = xxh3 (tests force collisions) */
    segment **segs;        /* manifest order; the last one is active (read-write) */
    size_t nsegs, capsegs;
    segment **byno;        /* segment number -> segment (NULL if not live) */
    size_t nbyno;
    uint64_t next_seq;
    uint32_t next_segment;
    uint64_t generation;
    uint64_t id;           /* database id (MANIFEST "id"), fixed at creation */
    char *ckpt_name;       /* checkpoint named by the manifest, or NULL */
    uint64_t since_ckpt;   /* log bytes appended since the last checkpoint */
    uint64_t ckpt_size;    /* bytes of the last checkpoint written or loaded (0: none) */

    pthread_mutex_t qmu;
    writer *qhead, *qtail;
    int failed;            /* the log tail is uncertain: refuse writes */
    uint8_t *gbuf;         /* group commit buffer */
    size_t gcap;
    uint64_t unsynced;     /* bytes appended since the last fdatasync */
    /* Group commit gathering (db.c commit): writers queued, the size of the
     * last durable group, the last fdatasync's duration (us), and whether
     * the head is waiting for its group to gather (enqueuers then wake it). */
    size_t qlen, last_group;
    uint64_t last_sync_us;
    int gathering;
    pthread_cond_t gather_cv; /* with qmu: the gathering head waits, enqueuers signal */
    uint64_t prealloc_step;   /* zeros the next prealloc_tail writes ahead (0: the first) */

    void (*remote_free)(void *); /* frees remote_owned at close (sync/ remote opens) */
    void *remote_owned;

    pthread_t syncer;      /* S4KV_SYNC_INTERVAL thread */
    int syncer_on, stopping;
    pthread_cond_t stop_cv;

    /* Online compaction (compact.c). cmu serialises compactions. `moving`
     * (atomic; waited on under qmu with move_cv) is set while the keydir may
     * point into output segments that no manifest names yet: no checkpoint
     * and no verify may run then (db_exclusive_begin_ckpt waits it out). */
    pthread_mutex_t cmu;
    int moving;
    pthread_cond_t move_cv;
    uint64_t compactions;        /* done by this handle */
    uint64_t compact_pause_us;   /* last one: longest stall of writers or readers */
    uint64_t compact_ms;         /* last one: wall time */
};

void db_log(s4kv_db *db, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int seterr(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int errno_code(int neg_errno);
/* Printable form of a key for messages (at most 64 bytes shown, \xNN
 * escapes for bytes outside printable ASCII); returns buf. */
const char *key_str(const void *key, size_t klen, char *buf, size_t cap); /* -errno -> S4KV_EIO / S4KV_ENOSPC / S4KV_ENOENT */
void seg_path(const s4kv_db *db, uint32_t no, char *buf, size_t cap);
segment *db_seg(const s4kv_db *db, uint32_t no);
/* Maps segment s for reads (when the vfs can): len bytes, which may exceed
 * the file (the active segment is mapped to max_segment_bytes up front). */
void seg_map(s4kv_db *db, segment *s, uint64_t len);
/* Unmaps and closes s's file (the struct stays). */
void seg_close(s4kv_db *db, segment *s);
/* Reads len bytes at off of segment s (local pread or remote read_range). */
int seg_read(s4kv_db *db, const segment *s, uint64_t off, void *buf, size_t len,
             char *err, size_t errlen);

/* Become / stop being the exclusive owner of the log (head of writer queue). */
int db_exclusive_begin(s4kv_db *db);
void db_exclusive_end(s4kv_db *db);
/* db_exclusive_begin at a moment when no compaction is moving keys, so the
 * keydir matches the manifest (checkpoint, verify, rebuild, snapshot). */
int db_exclusive_begin_ckpt(s4kv_db *db);
/* Monotonic clock in microseconds. */
uint64_t db_now_us(void);

/* manifest.c: write MANIFEST (generation db->generation + 1 on success) from
 * the db's segment table. Caller is exclusive. */
int manifest_commit(s4kv_db *db, char *err, size_t errlen);
/* Writes path.tmp, fdatasync, rename over path, fsync the directory. When
 * the rename happened but the directory fsync failed, it sets db->failed:
 * callers must then not delete anything the old or new file names. */
int file_write_atomic(s4kv_db *db, const char *path, const void *buf, size_t len,
                      char *err, size_t errlen);
/* An object dropped from the remote manifest, kept for the retention window
 * (sync/replica.c); `generation` is the manifest that dropped it. */
typedef struct retired_entry {
    char *name;
    uint64_t generation;
    int64_t time;          /* Unix seconds when it was dropped */
} retired_entry;
typedef struct manifest {
    uint64_t id;           /* random database id, fixed at creation */
    uint64_t generation;
    uint32_t next_segment;
    char *checkpoint;      /* NULL for none */
    uint32_t *segno;
    uint64_t *sealed_len;  /* UINT64_MAX for the active segment (only ever the last) */
    size_t nseg;
    retired_entry *retired;
    size_t nretired;
} manifest;
/* 0, S4KV_ENOENT (no MANIFEST), S4KV_ECORRUPT, S4KV_EVERSION, S4KV_EIO. */
int manifest_load(s4kv_db *db, manifest *m, char *err, size_t errlen);
/* Parses manifest text (name is used in messages). Same errors. */
int manifest_parse(const char *text, size_t len, const char *name, manifest *m, char *err,
                   size_t errlen);
/* Serialises m (with its checksum line) into a malloc'd buffer. 0 or S4KV_ENOMEM. */
int manifest_format(const manifest *m, char **buf, size_t *len);
void manifest_free(manifest *m);

/* scan.c: walks the batches of segment s from `start` to its end, calling
 * on_rec for each record of each whole batch (offset = record offset).
 * Fills *end with the offset just past the last whole batch. A region that is
 * not a whole batch but is followed by one is corruption: it is logged, counted
 * in *bad, its checksum-valid records are still passed on, and scanning goes
 * on. Without search_past_bad (a read-only handle on the active segment, which
 * may be racing a writer) it stops at the first bad batch. With prefetch, the
 * keydir slots of each batch's keys are prefetched before fn sees them. */
typedef int (*scan_fn)(void *ctx, const segment *s, uint64_t off, const rec_view *r);
typedef struct scan_result {
    uint64_t end;       /* offset after the last whole batch */
    uint64_t batches, records, bad;
    int torn;           /* 1 when bytes after `end` are not a whole batch */
} scan_result;
int seg_scan(s4kv_db *db, const segment *s, uint64_t start, int search_past_bad,
             scan_fn fn, void *ctx, const keydir *prefetch, scan_result *res, char *err,
             size_t errlen);

/* Checks that the file at path is segment `no` holding whole, checksum-valid
 * batches from its header up to exactly byte len (bytes past len are
 * ignored). 0, or S4KV_ECORRUPT / S4KV_EIO with the reason. */
int seg_file_check(const char *path, uint32_t no, uint64_t len, uint64_t *records, char *err,
                   size_t errlen);

/* A consistent view of the log for upload (sync/replica.c): every segment
 * with its committed length (a batch boundary) and a dup'd fd that stays
 * readable even if compaction unlinks the file; the checkpoint likewise. */
typedef struct db_snap_seg {
    uint32_t no;
    uint64_t len;
    int fd;
} db_snap_seg;
typedef struct db_snap {
    uint64_t id, generation;
    uint32_t next_segment;
    char *checkpoint;     /* file name, or NULL */
    int ckpt_fd;          /* -1 when none */
    uint64_t ckpt_len;
    db_snap_seg *segs;    /* manifest order */
    size_t nsegs;
} db_snap;
/* Takes the snapshot while holding the log exclusively; first writes a
 * checkpoint when more than ckpt_after bytes of log are not covered by one
 * (or there is none). Read-write handles only. */
int db_snapshot(s4kv_db *db, uint64_t ckpt_after, db_snap *out, char *err, size_t errlen);
void db_snap_free(db_snap *s);

/* Applies one replayed record to keydir kd and the live counters. */
int replay_apply(s4kv_db *db, keydir *kd, const segment *s, uint64_t off,
                 const rec_view *r);

/* Copies remote-only segments into local temporary files (bulk reads). */
int db_localize(s4kv_db *db, char *err, size_t errlen);

/* db.c internals used by compact.c */
int db_checkpoint_locked(s4kv_db *db, char *err, size_t errlen);
int db_rotate(s4kv_db *db, char *err, size_t errlen);
int db_replay_all(s4kv_db *db, keydir **out, int truncate_tail, char *err, size_t errlen);
void db_recount_live(s4kv_db *db);
void db_progress(s4kv_db *db, const char *phase, uint64_t done, uint64_t total);

/* Test seams (tests/ only): open with a chosen vfs and keydir hash; abandon a
 * handle as a crash would (no flush, no checkpoint; fds closed, memory freed). */
int s4kv__open_vfs(const char *dir, const s4kv_options *opt, vfs *v,
                   keydir_hash_fn hash, s4kv_db **out, char *err, size_t errlen);
void s4kv__abandon(s4kv_db *db);

#endif
