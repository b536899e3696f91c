/*
 * s3.h - a small Amazon S3 client: SigV4 (sync/sigv4.h) over libcurl, XML
 * answers parsed with expat. Source of the protocol: the Amazon S3 API
 * Reference (PutObject, GetObject with Range, HeadObject, DeleteObject,
 * DeleteObjects, ListObjectsV2, CreateMultipartUpload, UploadPart,
 * CompleteMultipartUpload, AbortMultipartUpload) and the AWS SDKs' "standard"
 * retry mode (AWS SDKs and Tools Reference Guide, "Retry behavior").
 *
 * Errors: functions return 0 or a negative S4KV_E* code (kv/s4kv.h):
 *   S4KV_ENOENT  - 404 / NoSuchKey / NoSuchBucket (message says which)
 *   S4KV_EINVAL  - bad URL or configuration, missing credentials (the message
 *                  says what to set)
 *   S4KV_EREMOTE - any other failure after retries: the message names the
 *                  operation, the object key, the HTTP status and S3's error
 *                  code, or the curl error; never a secret
 *   S4KV_ECORRUPT- a body of the wrong length (truncated ranged GET, ...)
 *   S4KV_ENOMEM, S4KV_EIO (local file errors)
 * and write a one-line message into err (may be NULL).
 *
 * Thread safety: an s3_client may be used from several threads at once; it
 * keeps a small pool of curl handles (so connections are reused) behind a
 * mutex. Retries: 500, 502, 503, 504, SlowDown, RequestTimeout, connection
 * errors and timeouts are retried with
 * capped exponential backoff (base 100 ms, cap 20 s) and full jitter, at most
 * max_attempts attempts, drawing on a retry budget (token bucket of 500; a
 * retry costs 5, a timeout 10, a success gives 1 back) so a dead endpoint
 * fails fast. Other 4xx are not retried. The backoff base and cap can be
 * changed for new clients with S4KV_S3_RETRY_BASE_MS / S4KV_S3_RETRY_CAP_MS
 * (tests shrink them); S4KV_S3_TRACE=1 prints one line per HTTP attempt on
 * stderr (method, path, status, time; never a header value).
 */
#ifndef S4KV_S3_H
#define S4KV_S3_H

#include <stddef.h>
#include <stdint.h>

typedef struct s3_config {
    char *endpoint;        /* "https://s3.us-east-1.amazonaws.com" or a custom URL */
    char *region;          /* default "us-east-1" */
    char *access_key;
    char *secret_key;
    char *session_token;   /* NULL unless temporary credentials */
    int path_style;        /* 1: https://host/bucket/key (custom endpoints); 0: virtual host */
    int tls_verify;        /* 1 unless turned off by name (S4KV_S3_INSECURE_TLS=1 / --no-verify-tls) */
    char *ca_file;         /* NULL = system CA store */
    int max_attempts;      /* default 3 (the SDKs' standard mode); >= 1 */
    long connect_timeout_ms; /* default 5000 */
    long request_timeout_ms; /* default 0 = none; low-speed limit still applies */
    uint64_t multipart_threshold; /* bytes; objects >= this use multipart; default 16 MiB */
    uint64_t part_size;    /* bytes per part (>= 5 MiB except the last); default 8 MiB */
    int max_parallel;      /* concurrent transfers in s3_run; default 8 */
} s3_config;

/* Fills c from the environment the way the AWS CLI does:
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else the
 * profile (profile_override, else AWS_PROFILE, else "default") from
 * ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE) and ~/.aws/config
 * (AWS_CONFIG_FILE; "[profile NAME]" sections; region, endpoint_url, a
 * "services" section's s3 endpoint_url, s3 addressing_style, ca_bundle,
 * max_attempts). As with the AWS CLI's --profile, a profile_override makes
 * the profile's keys win over AWS_ACCESS_KEY_ID; AWS_PROFILE does not.
 * AWS_DEFAULT_PROFILE is read after AWS_PROFILE, AWS_MAX_ATTEMPTS sets
 * max_attempts, AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true ignores all endpoints
 * but the override. Profiles that need credential_process, SSO or role
 * assumption are refused with a message saying to export keys instead;
 * AWS_REGION / AWS_DEFAULT_REGION; endpoint from endpoint_override, else
 * AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else the profile's
 * endpoint_url, else AWS for the region. A custom endpoint implies path-style
 * addressing. TLS verification stays on unless S4KV_S3_INSECURE_TLS=1;
 * AWS_CA_BUNDLE sets ca_file. Errors: S4KV_EINVAL with a one-line message
 * saying what to set ("no credentials: set AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY, or AWS_PROFILE ...", "profile 'x' not found in
 * ~/.aws/credentials or ~/.aws/config"), S4KV_ENOMEM. On error *c is freed. */
int s3_config_from_env(s3_config *c, const char *profile_override,
                       const char *endpoint_override, char *err, size_t errlen);
void s3_config_free(s3_config *c);

/* Parses "s3://bucket/prefix/" (prefix optional; a missing trailing '/' is
 * added, so "s3://bkt/db" and "s3://bkt/db/" name the same prefix "db/").
 * The bucket follows S3's naming rules (3 to 63 of a-z 0-9 . -, starting and
 * ending with a letter or digit, no "..", not an IP address).
 * *bucket and *prefix are malloc'd (prefix may be ""). Errors: S4KV_EINVAL
 * naming what is wrong (scheme, empty bucket, bad bucket characters). */
int s3_url_parse(const char *url, char **bucket, char **prefix, char *err, size_t errlen);

typedef struct s3_client s3_client;

/* New client for `bucket`. Copies c. NULL on error (message in err).
 * part_size below 5 MiB is raised to 5 MiB (S3's minimum). Virtual-host
 * addressing falls back to path style for bucket names that are not DNS
 * labels, or that contain '.' over https (the certificate would not match). */
s3_client *s3_client_new(const s3_config *c, const char *bucket, char *err, size_t errlen);
void s3_client_free(s3_client *cl);

typedef struct s3_stats {
    uint64_t requests;     /* HTTP requests sent (every attempt counts) */
    uint64_t retries;      /* attempts that were retries */
    uint64_t errors;       /* operations that failed after retries */
    uint64_t bytes_sent;   /* request body bytes */
    uint64_t bytes_received; /* response body bytes */
    uint64_t connections;  /* new TCP connections opened (CURLINFO_NUM_CONNECTS) */
} s3_stats;
void s3_client_stats(s3_client *cl, s3_stats *st);

/* Single-request operations. Keys are object keys (no leading '/'); any
 * bytes are allowed and are URI-encoded on the wire. */
/* len >= multipart_threshold goes as a multipart upload (through s3_run). */
int s3_put(s3_client *cl, const char *key, const void *buf, size_t len, char *err, size_t errlen);
/* Whole object into a malloc'd buffer (*buf, *len; free()). */
int s3_get(s3_client *cl, const char *key, uint8_t **buf, size_t *len, char *err, size_t errlen);
/* Exactly len bytes at offset off (one GET with Range: bytes=off-(off+len-1)).
 * A shorter or longer body is S4KV_ECORRUPT, and so is a range that starts
 * past the end of the object (HTTP 416): the message says the object is
 * shorter. len 0 returns 0 without a request. */
int s3_get_range(s3_client *cl, const char *key, uint64_t off, void *buf, size_t len,
                 char *err, size_t errlen);
int s3_head(s3_client *cl, const char *key, uint64_t *size, char *err, size_t errlen);
/* Deleting a missing key succeeds (S3 semantics). */
int s3_delete(s3_client *cl, const char *key, char *err, size_t errlen);
/* DeleteObjects in batches of 1000 (quiet mode, with Content-MD5); any
 * per-key error fails the call with the first key and its S3 error code.
 * Keys an XML 1.0 body cannot carry (control characters other than TAB, LF,
 * CR; invalid UTF-8) are deleted one by one with DELETE. */
int s3_delete_many(s3_client *cl, char *const *keys, size_t n, char *err, size_t errlen);

typedef struct s3_object {
    char *key;
    uint64_t size;
    int64_t mtime;   /* LastModified, Unix seconds */
    char etag[80];   /* without quotes */
} s3_object;
/* ListObjectsV2 of everything under prefix, following continuation tokens
 * (asks for encoding-type=url and decodes keys when the server honours it).
 * *objs is a malloc'd array of *n (free with s3_objects_free). */
int s3_list(s3_client *cl, const char *prefix, s3_object **objs, size_t *n, char *err,
            size_t errlen);
void s3_objects_free(s3_object *objs, size_t n);

/* ---- Many transfers at once (curl multi), each retried on its own. */
typedef enum { S3_XPUT_FILE = 1, S3_XGET_FILE = 2, S3_XPUT_BUF = 3 } s3_xop;
typedef struct s3_xfer {
    s3_xop op;
    const char *key;
    const char *path;      /* PUT_FILE: read [0, len) of path; GET_FILE: write the whole
                              object to path (created/truncated) */
    const void *buf;       /* PUT_BUF */
    uint64_t len;          /* PUT_*: bytes to send; GET_FILE: expected size or UINT64_MAX */
    /* results */
    int rc;
    char err[300];
} s3_xfer;
/* Progress callback: bytes done / total across all transfers. */
typedef void (*s3_progress_fn)(void *ctx, uint64_t done, uint64_t total);
/* Runs every transfer, up to max_parallel requests at once; PUTs of len >=
 * multipart_threshold go as multipart uploads with their parts in parallel
 * (aborted with AbortMultipartUpload when a part or the completion fails).
 * Every request body is hashed (SHA-256) before it is sent. GET_FILE writes
 * path.tmp, checks the length (len, when not UINT64_MAX), fdatasyncs it and
 * renames it to path; a failed GET_FILE leaves neither file behind (the
 * caller fsyncs the directory if it needs the rename durable). Progress is
 * reported as requests finish, from this thread.
 * Returns 0 when all succeeded, else the first failure's code (each xfer has
 * its own rc and err). */
int s3_run(s3_client *cl, s3_xfer *x, size_t n, s3_progress_fn progress, void *ctx);

#endif
