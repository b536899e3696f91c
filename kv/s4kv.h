/*
 * s4kv.h - the public API of s4kv, a log-structured key-value store.
 *
 * Model: Bitcask (Sheehy and Smith, "Bitcask: A Log-Structured Hash Table for
 * Fast Key/Value Data", Basho 2010). Writes append checksummed records to
 * segment files; an in-memory hash index (the keydir) maps each live key to
 * the record that holds its value, so a get is one read. The on-disk format is
 * specified in kv/FORMAT.md.
 *
 * Conventions (as libuv and LevelDB's c.h):
 *  - Every function that can fail returns 0 on success or a negative S4KV_E*
 *    code; s4kv_strerror() names the code.
 *  - Functions that take `char *err, size_t errlen` write a one-line,
 *    NUL-terminated detail there on failure (which file, offset, key, errno).
 *    err may be NULL (errlen is then ignored). On success err is untouched.
 *  - Keys and values are byte strings: binary safe, NUL allowed. Lengths are
 *    in bytes. Memory passed in is only borrowed for the duration of the call.
 *  - Memory returned to the caller says in its comment who frees it.
 *  - A handle (s4kv_db) is thread safe: any number of threads may call
 *    get/put/delete/write concurrently. Batches and iterators are not shared
 *    between threads.
 */
#ifndef S4KV_H
#define S4KV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define S4KV_VERSION_MAJOR 0
#define S4KV_VERSION_MINOR 1
#define S4KV_VERSION_PATCH 0
#define S4KV_VERSION_STRING "0.1.0"

/* ---- Limits (bytes). Larger input gets S4KV_EINVAL, never a truncated write. */
#define S4KV_MAX_KEY_BYTES   65535u               /* 64 KiB - 1; keys must be >= 1 byte */
#define S4KV_MAX_VALUE_BYTES (256u * 1024 * 1024) /* 256 MiB; empty values are allowed */
#define S4KV_MAX_BATCH_BYTES (1024u * 1024 * 1024) /* 1 GiB of encoded records per batch */
#define S4KV_MAX_BATCH_OPS   (16u * 1024 * 1024)  /* operations in one batch */

/* ---- Error codes (all negative). */
enum {
    S4KV_OK = 0,
    S4KV_ENOTFOUND = -1,  /* key absent (or deleted) */
    S4KV_EINVAL = -2,     /* bad argument: empty/oversized key or value, bad option */
    S4KV_EIO = -3,        /* an I/O call failed (the message names the call, file, errno) */
    S4KV_ECORRUPT = -4,   /* a checksum or structure check failed (message names file, offset) */
    S4KV_ENOMEM = -5,     /* allocation failed */
    S4KV_ELOCKED = -6,    /* another process holds the writer lock (message names its pid) */
    S4KV_ENOSPC = -7,     /* device full (ENOSPC or EDQUOT) */
    S4KV_EREADONLY = -8,  /* write on a handle opened read-only */
    S4KV_ENOENT = -9,     /* database directory or file missing (read-only open, remote object) */
    S4KV_ERANGE = -10,    /* caller's buffer too small (see s4kv_get_into) */
    S4KV_EVERSION = -11,  /* a file has a format version this build does not read */
    S4KV_ECLOSED = -12,   /* the handle is closed or in a failed state after an I/O error */
    S4KV_EREMOTE = -13,   /* the remote read seam (read_range) or an S3 request failed */
    S4KV_EEXIST = -14,    /* the S3 prefix holds a different database */
};

/* Returns a static, human-readable name for an error code ("not found", ...).
 * Never NULL; unknown codes give "unknown error". */
const char *s4kv_strerror(int code);

/* ---- Durability modes (see README "Durability"). */
typedef enum {
    S4KV_SYNC_NONE = 0,     /* write(2) only; the OS decides when data reaches disk.
                               A process crash loses nothing, a power loss may. */
    S4KV_SYNC_BATCH = 1,    /* fdatasync before a write is acknowledged. Concurrent
                               writers are group-committed: one fdatasync covers all
                               batches queued while the previous one ran. The open
                               segment file runs up to 1 MiB of zeros ahead of writes
                               of up to 16 KiB (so a sync needs no file-size change; see
                               kv/FORMAT.md); close cuts them off. Default. */
    S4KV_SYNC_INTERVAL = 2, /* a background thread fdatasyncs at most every
                               sync_interval_ms; a power loss loses at most that
                               window of acknowledged writes. */
} s4kv_sync_mode;

/* ---- Remote read seam.
 * When a sealed segment named by the manifest is not present in the local
 * directory (the active segment of a local database always is), the engine
 * reads its bytes through this interface (sync/ implements it with
 * one ranged S3 GET per call). read_range must fill exactly `len` bytes of
 * segment `segno` starting at byte `offset`, or fail. Returns 0, or a negative
 * S4KV_E* code with a message in err. The engine checks every byte it gets by
 * the record checksum, so a wrong answer is reported as S4KV_ECORRUPT, never
 * returned as data. Called from any thread that calls s4kv_get. */
typedef struct s4kv_remote {
    int (*read_range)(void *ctx, uint32_t segno, uint64_t offset, void *buf,
                      size_t len, char *err, size_t errlen);
    /* Optional (may be NULL): fetches a whole small object of the database by
     * file name ("MANIFEST", "index_000007.s4ki") into a malloc'd buffer the
     * engine frees; S4KV_ENOENT when it does not exist. A read-only open that
     * finds no local MANIFEST uses it to open the database remotely. */
    int (*fetch)(void *ctx, const char *name, uint8_t **buf, size_t *len, char *err,
                 size_t errlen);
    void *ctx;
} s4kv_remote;

/* ---- Progress reporting for long operations (compact, rebuild, verify,
 * import). done/total are in bytes of segment data processed; total may be 0
 * when unknown. Called from the calling thread; keep it cheap. */
typedef void (*s4kv_progress_fn)(void *ctx, const char *phase, uint64_t done,
                                 uint64_t total);

/* ---- Options. Always initialise with s4kv_options_init, then change fields. */
typedef struct s4kv_options {
    int create_if_missing;        /* default 1: mkdir the directory and start an empty db */
    int read_only;                /* default 0: 1 opens without the writer lock; the handle
                                     sees a snapshot of the log as of open */
    s4kv_sync_mode sync_mode;     /* default S4KV_SYNC_BATCH */
    uint32_t sync_interval_ms;    /* for S4KV_SYNC_INTERVAL; default 1000 ms */
    uint64_t max_segment_bytes;   /* seal a segment when it would grow past this;
                                     default 64 MiB, allowed 4 KiB .. 2 GiB */
    uint64_t checkpoint_bytes;    /* write an index checkpoint after this many bytes of
                                     log were appended since the last one, or twice the
                                     last checkpoint's size if that is more (so rewriting
                                     the index never costs more than half the log bytes
                                     written: a 10M-key index is ~300 MB), and always on
                                     close; default 256 MiB; 0 = only on close */
    int compress;                 /* default 1: Snappy-compress values when that makes
                                     them smaller; 0 stores raw */
    const s4kv_remote *remote;    /* default NULL: remote read seam for segments that are
                                     not on local disk (borrowed; must outlive the db) */
    void (*log)(void *ctx, const char *line); /* default NULL = log to stderr with a
                                     "s4kv: " prefix; receives one line, no newline */
    void *log_ctx;
    s4kv_progress_fn progress;    /* default NULL */
    void *progress_ctx;
} s4kv_options;

/* Fills *opt with the defaults listed above. */
void s4kv_options_init(s4kv_options *opt);

typedef struct s4kv_db s4kv_db;

/* Opens (or creates, with create_if_missing) the database in directory `dir`.
 * Read-write opens take an exclusive flock on DIR/LOCK; a second writer gets
 * S4KV_ELOCKED with "locked by pid N". Opening loads the index checkpoint named
 * by the manifest and replays the log after its position; with no valid
 * checkpoint it rebuilds the index by replaying every segment (and logs why).
 * A torn tail of the newest segment (a batch cut short by a crash) is cut back
 * to the last whole batch, with a log line giving the bytes removed (read-only
 * opens ignore it instead). On success *out owns the handle; free it with
 * s4kv_close. Errors: S4KV_EINVAL (bad options), S4KV_ENOENT (missing dir and
 * !create_if_missing or read_only), S4KV_ELOCKED, S4KV_EIO, S4KV_ECORRUPT (the
 * manifest is unreadable), S4KV_EVERSION, S4KV_ENOMEM. */
int s4kv_open(const char *dir, const s4kv_options *opt, s4kv_db **out,
              char *err, size_t errlen);

/* Flushes (fdatasync in every mode), writes an index checkpoint (read-write
 * handles), releases the lock and frees the handle. Returns 0 or the first
 * error met while flushing (S4KV_EIO, S4KV_ENOSPC, S4KV_ENOMEM), whose detail
 * goes to options.log; the handle is freed either way. NULL is a no-op. A
 * handle in the failed state (see s4kv_put) closes without a checkpoint. */
int s4kv_close(s4kv_db *db);

/* Stores value under key (one atomic, one-record batch). Errors: S4KV_EINVAL
 * (klen 0 or > S4KV_MAX_KEY_BYTES, vlen > S4KV_MAX_VALUE_BYTES, NULL pointer
 * with non-zero length), S4KV_EREADONLY, S4KV_EIO, S4KV_ENOSPC, S4KV_ECLOSED,
 * S4KV_ENOMEM. When a write fails, nothing acknowledged before is lost, and
 * the handle refuses further writes (S4KV_ECLOSED) until reopened if the
 * failure left the log tail uncertain. */
int s4kv_put(s4kv_db *db, const void *key, size_t klen, const void *val,
             size_t vlen, char *err, size_t errlen);

/* Writes a tombstone for key. Deleting an absent key succeeds and writes
 * nothing. Errors as s4kv_put. */
int s4kv_delete(s4kv_db *db, const void *key, size_t klen, char *err,
                size_t errlen);

/* Looks key up. On success *val is a malloc'd buffer of *vlen bytes (plus one
 * NUL byte past the end, not counted, for convenience) that the caller frees
 * with s4kv_free. Errors: S4KV_ENOTFOUND, S4KV_EINVAL, S4KV_ECORRUPT (record
 * checksum, key mismatch or decompression failure; the message names the
 * segment and offset), S4KV_EIO, S4KV_EREMOTE, S4KV_ENOMEM. */
int s4kv_get(s4kv_db *db, const void *key, size_t klen, void **val,
             size_t *vlen, char *err, size_t errlen);

/* Like s4kv_get, into a caller-owned buffer of cap bytes. *vlen always gets the
 * value's length when the key exists; if cap < *vlen it returns S4KV_ERANGE
 * and buf is unspecified. */
int s4kv_get_into(s4kv_db *db, const void *key, size_t klen, void *buf,
                  size_t cap, size_t *vlen, char *err, size_t errlen);

/* Frees a value returned by s4kv_get. NULL is a no-op. */
void s4kv_free(void *p);

/* ---- Write batches: many puts and deletes committed atomically (recovery
 * applies a batch whole or not at all). Later operations on the same key in
 * one batch win. A batch copies the bytes given to it. */
typedef struct s4kv_batch s4kv_batch;

/* Returns a new empty batch, or NULL when out of memory. Free with
 * s4kv_batch_free. */
s4kv_batch *s4kv_batch_new(void);
/* Adds a put / a delete. Errors: S4KV_EINVAL (limits as s4kv_put, or the batch
 * would exceed S4KV_MAX_BATCH_BYTES / S4KV_MAX_BATCH_OPS), S4KV_ENOMEM. */
int s4kv_batch_put(s4kv_batch *b, const void *key, size_t klen, const void *val,
                   size_t vlen);
int s4kv_batch_delete(s4kv_batch *b, const void *key, size_t klen);
/* Number of operations added since creation or the last clear. */
size_t s4kv_batch_count(const s4kv_batch *b);
/* Whether s4kv_batch_put Snappy-compresses values (when that makes them
 * smaller). Default 1; options.compress plays this role for s4kv_put. */
void s4kv_batch_set_compress(s4kv_batch *b, int on);
/* Empties the batch for reuse (keeps its memory). */
void s4kv_batch_clear(s4kv_batch *b);
void s4kv_batch_free(s4kv_batch *b);
/* Commits the batch atomically. An empty batch is a no-op. A delete of an
 * absent key is written as a tombstone (harmless; compaction drops it).
 * Errors as s4kv_put. The batch is left unchanged (clear it to reuse). */
int s4kv_write(s4kv_db *db, s4kv_batch *b, char *err, size_t errlen);

/* ---- Iteration over live keys.
 * An iterator sees a snapshot of the key set taken when it is created; values
 * are read as the iterator advances (a value overwritten after creation may
 * show its newer bytes; a key deleted after creation is skipped). Order is by
 * key bytes (memcmp, shorter first on a tie) when S4KV_ITER_SORTED is given,
 * otherwise unspecified. */
#define S4KV_ITER_SORTED 1u
#define S4KV_ITER_KEYS_ONLY 2u /* do not read values: s4kv_iter_value is empty */

typedef struct s4kv_iter s4kv_iter;

/* Creates an iterator over live keys starting with prefix (plen 0 = all).
 * Errors: S4KV_ENOMEM, S4KV_ECLOSED. Free with s4kv_iter_free. */
int s4kv_iter_new(s4kv_db *db, const void *prefix, size_t plen, unsigned flags,
                  s4kv_iter **out, char *err, size_t errlen);
/* Advances to the next key. Returns 1 when positioned on a key, 0 at the end,
 * or a negative error (S4KV_ECORRUPT, S4KV_EIO, ...) reading its value; the
 * message names the key, s4kv_iter_key still returns it (the value is empty),
 * and the iterator may be advanced again to skip it. */
int s4kv_iter_next(s4kv_iter *it, char *err, size_t errlen);
/* The current key / value. Pointers stay valid until the next call to
 * s4kv_iter_next or s4kv_iter_free; the iterator owns them. */
const void *s4kv_iter_key(const s4kv_iter *it, size_t *klen);
const void *s4kv_iter_value(const s4kv_iter *it, size_t *vlen);
void s4kv_iter_free(s4kv_iter *it);

/* ---- Maintenance. */

/* Online compaction (Bitcask's merge, done beside the writers): seals the
 * active segment, copies every live record of the sealed segments byte for
 * byte into new segments (stale values and tombstones are dropped), moves the
 * index to them, commits a new manifest, and only then unlinks the old
 * segments. Reads and writes go on meanwhile; they wait only for short steps
 * (the seal, each move of up to 1024 index entries under the write lock, and
 * the manifest commit), the longest of which s4kv_compact_stats reports. A key
 * written or deleted during the compaction keeps its newer state. The manifest
 * it commits names no checkpoint (the old one points into the old segments);
 * the next checkpoint (close, upload, checkpoint_bytes, s4kv_checkpoint)
 * records the new layout, and a reopen before that replays the log. A crash at
 * any point leaves either the old or the new database, complete. Compactions
 * of one handle run one at a time. Reports progress through options.progress.
 * Errors: S4KV_EREADONLY, S4KV_EIO, S4KV_ENOSPC, S4KV_ECORRUPT (a sealed
 * segment holds a damaged region or a live record fails its check: the
 * compaction is abandoned and nothing is changed; run verify), S4KV_ECLOSED
 * (a write failed meanwhile), S4KV_ENOMEM. */
int s4kv_compact(s4kv_db *db, char *err, size_t errlen);

/* Figures of this handle's compactions: how many completed (*count), and for
 * the last one the longest time any reader or writer had to wait for it
 * (*pause_us, microseconds) and its whole duration (*total_ms, milliseconds).
 * Any output pointer may be NULL. Errors: S4KV_EINVAL (NULL handle). */
int s4kv_compact_stats(s4kv_db *db, uint64_t *count, uint64_t *pause_us, uint64_t *total_ms);

/* Discards the in-memory index and rebuilds it by replaying every segment in
 * manifest order, then writes a fresh checkpoint. Errors: S4KV_EREADONLY
 * (for the checkpoint; a read-only handle rebuilds in memory and returns 0),
 * S4KV_EIO, S4KV_ENOMEM. */
int s4kv_rebuild_index(s4kv_db *db, char *err, size_t errlen);

/* Result of s4kv_verify. */
typedef struct s4kv_verify_report {
    uint64_t segments;         /* segment files read */
    uint64_t bytes;            /* segment bytes read */
    uint64_t batches;          /* whole batches found */
    uint64_t records;          /* records whose checksum matched */
    uint64_t bad_records;      /* records or batch frames that failed a check */
    uint64_t index_mismatches; /* keys where the index and a replay of the log disagree */
    uint64_t keys;             /* live keys according to the replay */
} s4kv_verify_report;

/* Reads every segment, checks every batch frame and record checksum, replays
 * the log into a fresh index and compares it with the live index key by key.
 * Each problem is logged (one line naming the segment and offset, or the key).
 * Returns 0 when everything agrees, S4KV_ECORRUPT when anything failed (the
 * report says what), or S4KV_EIO / S4KV_ENOMEM. report may be NULL. */
int s4kv_verify(s4kv_db *db, s4kv_verify_report *report, char *err,
                size_t errlen);

/* Counters. Sizes in bytes. */
typedef struct s4kv_stats {
    uint64_t keys;            /* live keys */
    uint64_t live_bytes;      /* bytes of records the index points at */
    uint64_t garbage_bytes;   /* segment data bytes that are not live (stale records,
                                 tombstones, headers) */
    uint64_t segment_bytes;   /* total size of all segments */
    uint64_t segments;        /* number of segments */
    uint64_t index_bytes;     /* memory held by the index (table + key arena) */
    uint64_t next_seq;        /* sequence number the next record will get */
    uint64_t generation;      /* manifest generation */
    uint32_t active_segment;  /* number of the segment being appended to */
} s4kv_stats;

/* Fills *st. Never fails on an open handle (returns S4KV_ECLOSED otherwise). */
int s4kv_stats_get(s4kv_db *db, s4kv_stats *st);

/* Forces an fdatasync of the active segment (any durability mode).
 * Errors: S4KV_EIO, S4KV_ECLOSED. */
int s4kv_sync(s4kv_db *db, char *err, size_t errlen);

/* Seals the active segment if it holds any batch (it becomes immutable and
 * a new, empty active segment takes the writes), so an upload sends it once
 * and never again. The sync loop calls it by age. *sealed (may be NULL) gets
 * 1 when a segment was sealed, 0 when the active one was empty. Errors:
 * S4KV_EREADONLY, S4KV_EIO, S4KV_ENOSPC, S4KV_ECLOSED. */
int s4kv_seal(s4kv_db *db, int *sealed, char *err, size_t errlen);

/* Writes an index checkpoint now and commits it in a new manifest.
 * Errors: S4KV_EREADONLY, S4KV_EIO, S4KV_ENOSPC, S4KV_ENOMEM. */
int s4kv_checkpoint(s4kv_db *db, char *err, size_t errlen);

/* ---- Object storage (implemented in sync/; S3 over libcurl, SigV4).
 *
 * s3://bucket/prefix/ holds the same files as a local directory: segments
 * data_NNNNNN.s4kv, checkpoints index_NNNNNN.s4ki, and MANIFEST, the remote
 * commit point (kv/FORMAT.md, "Object storage"). Upload order is the
 * crash-safety rule: segments, then the checkpoint, then MANIFEST; objects a
 * published manifest names are deleted only after a newer manifest dropped
 * them and the retention window passed. One writer per prefix: upload refuses
 * a prefix that holds a different database (the manifests' ids differ).
 * S3 is configured the way the AWS CLI is (AWS_ACCESS_KEY_ID, ...,
 * AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL_S3; see README "S3"). */
typedef struct s4kv_s3_options {
    const char *url;         /* "s3://bucket/prefix/" (required) */
    const char *profile;     /* NULL = $AWS_PROFILE, else "default" */
    const char *endpoint;    /* NULL = $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL / AWS */
    int insecure_tls;        /* 1 turns TLS certificate verification off (by name only) */
    int64_t retention_s;     /* objects dropped by a manifest stay until the next manifest
                                is published (-1, the default), and at least this many
                                seconds when >= 0 */
    int max_parallel;        /* concurrent transfers; default 8 */
    s4kv_progress_fn progress; /* bytes transferred / total; NULL = none */
    void *progress_ctx;
    void (*log)(void *ctx, const char *line); /* NULL = stderr, "s4kv: " prefix */
    void *log_ctx;
} s4kv_s3_options;

/* Fills *o with the defaults above (url NULL). */
void s4kv_s3_options_init(s4kv_s3_options *o);

typedef struct s4kv_s3_report {
    uint64_t objects_uploaded, bytes_uploaded;
    uint64_t objects_downloaded, bytes_downloaded;
    uint64_t objects_skipped;   /* already present and correct */
    uint64_t objects_deleted;   /* obsolete objects removed after their retention */
    uint64_t requests, retries; /* HTTP requests sent (every attempt), retries among them */
    uint64_t connections;       /* TCP connections opened */
    uint64_t generation;        /* remote manifest generation published (upload) or read */
    int published;              /* upload: 1 when a new manifest was published */
} s4kv_s3_report;

/* Sends what S3 lacks: new segments and grown prefixes of the active one
 * (whole objects; multipart above 16 MiB, parts in parallel), then the index
 * checkpoint, then a MANIFEST of a new generation; then deletes objects whose
 * retention passed. Nothing to send = no new generation. rep may be NULL.
 * Errors: S4KV_EINVAL (URL, configuration, credentials), S4KV_EREADONLY,
 * S4KV_EREMOTE (names the operation, object and HTTP status), S4KV_EEXIST
 * (the prefix holds another database), S4KV_EIO, S4KV_ENOMEM. */
int s4kv_upload(s4kv_db *db, const s4kv_s3_options *o, s4kv_s3_report *rep, char *err,
                size_t errlen);

/* Fetches everything the newest remote MANIFEST names into directory dir
 * (created if missing; the writer lock is held meanwhile), in parallel, checks
 * every segment batch by batch and the checkpoint by its checksums, and writes
 * the local MANIFEST last. Resumable: files already present with the right
 * length and valid checksums are not fetched again. Errors: as s4kv_upload,
 * plus S4KV_ENOENT (no MANIFEST under the prefix), S4KV_ECORRUPT (an object
 * failed its checks twice), S4KV_ELOCKED. */
int s4kv_download(const char *dir, const s4kv_s3_options *o, s4kv_s3_report *rep, char *err,
                  size_t errlen);

/* Opens the database at o->url read-only. Sealed segments present in dir
 * (which may be NULL or missing) are read locally; the rest
 * with one ranged GET per get, on a reused connection, checked by the record
 * checksum. MANIFEST and the checkpoint come from dir when it holds a
 * database, else from S3. Iterators copy whole remote segments to temporary
 * files first (one request per segment, not per key). opt may be NULL; its
 * read_only and remote fields are overridden. Errors: as s4kv_open and
 * s4kv_download. */
int s4kv_open_s3(const char *dir, const s4kv_options *opt, const s4kv_s3_options *o,
                 s4kv_db **out, char *err, size_t errlen);

/* Request counters of a handle from s4kv_open_s3 since it was opened (the
 * open's own MANIFEST and checkpoint fetches included: take differences to
 * count per get); zeros for other handles. Errors: S4KV_EINVAL. */
int s4kv_s3_stats(s4kv_db *db, s4kv_s3_report *rep);

/* ---- The sync loop (implemented in sync/daemon.c, libuv; the HTTP server in
 * sync/http.c). One libuv loop on a background thread keeps s3://bucket/prefix/
 * current while the program keeps using the handle:
 *  - every interval_ms it looks at s4kv_stats_get; when writes arrived since
 *    the last successful upload it seals the active segment if its first
 *    write is at least seal_age_ms old (s4kv_seal), then runs s4kv_upload on
 *    the libuv thread pool (never two at once). An idle database makes no S3
 *    requests at all (the one exception: one upload when the loop starts, so
 *    writes of an earlier run reach S3). A write acknowledged at time t is in
 *    S3 by about t + interval_ms + the upload's duration; the loop measures
 *    that lag (s4kv_sync_metrics_get).
 *  - a failed upload is retried at later ticks with capped exponential
 *    backoff (interval_ms, 2x, 4x, ... up to retry_max_ms); the database
 *    keeps serving reads and writes meanwhile.
 *  - when garbage_bytes / segment_bytes reaches compact_ratio (and garbage is
 *    at least compact_min_garbage bytes) it runs s4kv_compact on the pool,
 *    then uploads. The compaction is online: reads and writes go on, and the
 *    loop reports its longest stall (s4kv_compact_stats). Garbage left by
 *    writes made during a compaction counts for the next one, so it is
 *    reclaimed even when no write follows.
 *  - with a listen address it also serves HTTP/1.1 on the same loop (the
 *    routes and limits are at the top of sync/http.c).
 * The loop logs one line per event through `log` ("info upload done: ...",
 * "warn upload failed ...", "error ..."), called from the loop thread and the
 * thread pool but never concurrently (lines are serialised). */
typedef struct s4kv_sync_options {
    s4kv_s3_options s3;         /* where and how to upload (s3.url required; see
                                   s4kv_s3_options, including retention_s). The
                                   strings are copied by s4kv_sync_start. s3.log
                                   NULL = the S3 client's lines go to `log` below */
    uint32_t interval_ms;       /* default 1000: how often the loop looks for new
                                   writes; 10 .. 86400000 */
    uint32_t seal_age_ms;       /* 0 (default) = interval_ms: seal the active segment
                                   before an upload once its first write is this old,
                                   so each segment is uploaded whole at most twice */
    double compact_ratio;       /* default 0.5: compact when garbage_bytes /
                                   segment_bytes (s4kv_stats) reaches this; 0 = never;
                                   otherwise in (0, 1] */
    uint64_t compact_min_garbage; /* default 1 MiB: and only when garbage_bytes is at
                                   least this, and this more than the last
                                   compaction with no write beside it left (what
                                   no compaction reclaims: headers) */
    uint32_t retry_max_ms;      /* default 30000: cap of the delay between failed
                                   uploads; >= interval_ms is not required */
    const char *listen;         /* NULL (default) = no HTTP server. "HOST:PORT" with an
                                   IPv4 address, "[IPv6]:PORT" or "localhost:PORT";
                                   port 0 picks a free port (s4kv_sync_address) */
    const char *token;          /* NULL (default) = no authentication; else every
                                   request but GET /healthz needs "Authorization:
                                   Bearer TOKEN" (401 otherwise) */
    int insecure;               /* 1 allows a non-loopback listen address without a
                                   token; without either, s4kv_sync_start refuses it */
    uint64_t http_max_body;     /* default 64 MiB: larger request bodies get 413 */
    uint32_t http_max_connections; /* default 1024: further connections get 503 */
    uint32_t http_idle_timeout_ms; /* default 30000: a connection silent this long is
                                   closed (408 when a request was half received) */
    uint32_t http_request_timeout_ms; /* default 60000: a request must arrive whole
                                   within this (408); also the drain limit at stop */
    void (*log)(void *ctx, const char *line); /* NULL = stderr, "s4kv sync: " prefix;
                                   one line without newline, starting with its level
                                   ("info ", "warn ", "error ") */
    void *log_ctx;
} s4kv_sync_options;

/* Fills *o with the defaults above (s3 from s4kv_s3_options_init; url NULL). */
void s4kv_sync_options_init(s4kv_sync_options *o);

/* The type is s4kv_sync_loop because s4kv_sync() is the fdatasync call. */
typedef struct s4kv_sync_loop s4kv_sync_loop;

/* Checks options without starting anything (what s4kv_sync_start checks
 * first): an S3 URL is given, interval and ratio are in range, the listen
 * address parses, and a non-loopback one has a token or insecure. 0 or
 * S4KV_EINVAL with the reason. */
int s4kv_sync_options_check(const s4kv_sync_options *o, char *err, size_t errlen);

/* Starts the sync loop for db (a read-write handle the caller keeps open and
 * closes only after s4kv_sync_stop; it stays fully usable meanwhile). With
 * o->listen it binds the HTTP server before returning (so an address in use
 * fails here) and writes the bound address ("127.0.0.1:7070\n") to
 * DIR/SYNC_ADDR (removed by s4kv_sync_stop); and, if SIGPIPE has its default
 * disposition, sets it to SIG_IGN (a client that leaves must not kill the
 * process). The loop runs on a new thread;
 * uploads and compactions run on libuv's thread pool (UV_THREADPOOL_SIZE,
 * default 4, shared by the process). On success *out owns the loop: end it
 * with s4kv_sync_stop. Errors: S4KV_EINVAL (no S3 URL, a bad option or listen
 * address, a non-loopback listen address without token or insecure),
 * S4KV_EREADONLY (a read-only handle), S4KV_EIO (bind or listen failed: the
 * message names the address and errno; SYNC_ADDR not writable; the thread
 * could not start), S4KV_ENOMEM. S3 configuration errors (credentials) show
 * up at the first upload, as log lines and in the metrics, not here. */
int s4kv_sync_start(s4kv_db *db, const s4kv_sync_options *o, s4kv_sync_loop **out,
                    char *err, size_t errlen);

/* Stops the loop: stops accepting connections, lets requests already being
 * received finish (up to http_request_timeout_ms) and closes idle ones, waits
 * for a running upload or compaction, then seals the active segment and
 * uploads once more if anything changed since the last successful upload;
 * joins the thread and frees s (always, whatever it returns). Returns 0 when
 * S3 holds every write acknowledged before the call, else the error of the
 * final upload (S4KV_EREMOTE, S4KV_EINVAL, S4KV_EEXIST, ... as s4kv_upload;
 * the writes stay committed locally). NULL is a no-op. Call it once, not from
 * the log callback. */
int s4kv_sync_stop(s4kv_sync_loop *s, char *err, size_t errlen);

/* Counters of a running loop. Times in milliseconds, sizes in bytes. */
typedef struct s4kv_sync_metrics {
    uint64_t uploads;           /* successful uploads (each an s4kv_upload call) */
    uint64_t upload_failures;   /* failed upload attempts */
    uint64_t consecutive_failures; /* since the last success (0 = healthy) */
    uint64_t upload_objects, upload_bytes; /* sent by successful uploads, in all */
    uint64_t generation;        /* remote manifest generation after the last success */
    uint64_t uploaded_seq;      /* every write with a sequence number below this is in S3 */
    uint64_t last_upload_ms, max_upload_ms; /* duration of uploads (seal included) */
    uint64_t seals;             /* active segments sealed by age */
    uint64_t lag_last_ms, lag_max_ms; /* upload lag: from the first write not yet in S3
                                   to the end of the upload that carried it (an
                                   upper bound: write times are sampled every
                                   interval/20, at least 5 ms) */
    uint64_t lag_p50_ms, lag_p99_ms; /* over the last 4096 uploads that carried writes */
    uint64_t lag_pending_ms;    /* age of the oldest write not yet in S3; 0 = caught up */
    uint64_t s3_requests, s3_retries; /* HTTP requests sent by uploads (every attempt) */
    uint64_t s3_errors;         /* operations that failed after their retries (= failed
                                   uploads) */
    uint64_t compactions, compaction_failures;
    uint64_t compact_pause_last_ms, compact_pause_max_ms; /* longest stall of a reader or
                                   writer in the last / any compaction (rounded up) */
    uint64_t compact_duration_last_ms; /* the last compaction's whole duration (it runs
                                   beside reads and writes) */
    uint64_t garbage_bytes, segment_bytes; /* as of the last tick */
    uint64_t http_requests;     /* requests answered */
    uint64_t http_connections;  /* open now */
    char last_error[256];       /* the last failure's message, "" if none */
} s4kv_sync_metrics;

/* Fills *m (a consistent copy; callable from any thread). Errors: S4KV_EINVAL
 * (NULL argument). */
int s4kv_sync_metrics_get(s4kv_sync_loop *s, s4kv_sync_metrics *m);

/* Writes the HTTP server's bound address ("127.0.0.1:7070", "[::1]:7070")
 * into buf (NUL-terminated, truncated to cap). Errors: S4KV_ENOENT (no HTTP
 * server), S4KV_EINVAL. */
int s4kv_sync_address(s4kv_sync_loop *s, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif /* S4KV_H */
