/*
 * daemon.h - internal interface between the sync loop (sync/daemon.c) and
 * its HTTP server (sync/http.c); not installed. Everything here runs on the
 * loop thread unless a comment says otherwise.
 */
#ifndef S4KV_DAEMON_H
#define S4KV_DAEMON_H

#include "s4kv.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- A growable byte buffer. On allocation failure `oom` is set and later
 * appends are ignored (the caller checks oom once at the end). */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;
void sb_add(sbuf *b, const void *data, size_t n);
void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Makes room for n more bytes; 0 or -1 (oom set). */
int sb_reserve(sbuf *b, size_t n);
void sb_free(sbuf *b);

/* ---- A latency summary: log-scale buckets (2^(i/4) microseconds), enough
 * for Prometheus quantiles within 19%. */
#define LAT_BUCKETS 160
typedef struct lat_hist {
    uint64_t count;
    double sum_s;
    uint32_t b[LAT_BUCKETS];
} lat_hist;
void lat_add(lat_hist *h, uint64_t usec);
/* Upper bound of the bucket holding quantile q, in seconds (0 when empty). */
double lat_quantile(const lat_hist *h, double q);
/* Prometheus summary lines for metric `name` with extra labels (may be ""). */
void lat_prom(sbuf *b, const char *name, const char *labels, const lat_hist *h);

/* ---- Listen addresses. */
typedef struct sync_addr {
    struct sockaddr_storage ss;
    int loopback;
} sync_addr;
/* Parses "1.2.3.4:PORT", "[::1]:PORT" or "localhost:PORT". 0 or S4KV_EINVAL. */
int sync_addr_parse(const char *s, sync_addr *a, char *err, size_t errlen);
/* "127.0.0.1:7070" / "[::1]:7070". */
void sync_addr_format(const struct sockaddr *sa, char *buf, size_t cap);

/* ---- The HTTP server (http.c). */
typedef struct http_config {
    const sync_addr *addr;
    const char *listen;    /* as given, for messages */
    const char *token;     /* NULL = none */
    uint64_t max_body;
    uint32_t max_connections;
    uint32_t idle_timeout_ms, request_timeout_ms;
    size_t list_page_bytes; /* bytes of encoded keys a GET /v1/keys page (0 = 256 KiB) */
} http_config;

typedef struct http_server http_server;

/* Binds and listens on loop (not yet running). The server keeps pointers to
 * db and owner; cfg is copied. 0, or S4KV_EIO / S4KV_ENOMEM with a message. */
int http_start(uv_loop_t *loop, s4kv_db *db, s4kv_sync_loop *owner, const http_config *cfg,
               http_server **out, char *err, size_t errlen);
/* The bound address ("127.0.0.1:41234"). Any thread once started. */
const char *http_address(const http_server *h);
/* Stops accepting, closes idle connections, lets the others finish their
 * current request (at most request_timeout_ms), then calls done(ctx) once
 * every handle of the server is closed (possibly before returning). */
void http_drain(http_server *h, void (*done)(void *ctx), void *ctx);
/* Frees the server after the drain's done callback. */
void http_free(http_server *h);
/* The server's Prometheus lines (requests, bytes, latencies, connections). */
void http_metrics_text(http_server *h, sbuf *b);

/* Test seam (fuzz/fuzz_http.c): feeds data, in pieces of at most chunk bytes
 * (0 = at once), to one connection of a server without a socket or loop
 * (loop only gives the clock; no owner: no loop metrics), as if read from
 * the socket, up to where the server would stop reading; pool jobs run
 * inline on db. Every response byte is appended to out; when heads is not
 * NULL, the offset in out of every response head (100 Continue included)
 * is appended to it as a size_t, so a checker needs no guess where a
 * response to HEAD ends. Returns the number of final (non-100) responses,
 * or -1 out of memory. */
int http_feed_for_test(uv_loop_t *loop, s4kv_db *db, const http_config *cfg, const void *data,
                       size_t len, size_t chunk, sbuf *out, sbuf *heads);

/* ---- Called by http.c into the loop (daemon.c). */
/* A write through HTTP was acknowledged; it started at loop time t_ms. */
void sync_note_write(s4kv_sync_loop *s, uint64_t t_ms);
/* The server's counters, for s4kv_sync_metrics_get. */
void sync_http_counts(s4kv_sync_loop *s, uint64_t requests, uint64_t connections);
/* The loop's Prometheus lines (uploads, lag, S3, compaction, database). */
void sync_metrics_text(s4kv_sync_loop *s, sbuf *b);
/* One log line ("info", "warn", "error"); any thread. */
void sync_log(s4kv_sync_loop *s, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- Uploads through one long-lived S3 client (replica.c). The sync loop
 * keeps a remote across uploads (its pooled connections stay open) and
 * attaches its client to the loop's s3_loop (s3_internal.h), so the upload's
 * transfers run on the loop thread while the orchestration (listing, hashing,
 * snapshot, manifest order) runs on the calling pool thread. Credentials and
 * endpoint are read once, when the remote is opened. */
typedef struct replica_remote replica_remote;
struct s3_loop;
/* o must outlive the remote. x may be NULL (transfers on private loops).
 * 0, or the error of s3_url_parse / s3_config_from_env / s3_client_new. */
int replica_remote_open(const s4kv_s3_options *o, struct s3_loop *x, replica_remote **out,
                        char *err, size_t errlen);
/* s4kv_upload on rm's client; rep counts only this upload's requests. One
 * call at a time per remote. */
int replica_upload_with(replica_remote *rm, s4kv_db *db, s4kv_s3_report *rep, char *err,
                        size_t errlen);
/* Detaches and frees (no call may be in flight). NULL is a no-op. */
void replica_remote_close(replica_remote *rm);
/* The driver counters of rm's client (s3_client_debug). */
struct s3_debug;
void replica_remote_debug(replica_remote *rm, struct s3_debug *d);

/* Test seam: the counters of the uploads' S3 client as of the end of the last
 * upload job (zeroes before one; a client reopened after a failure starts
 * again from zero) and the sync loop's thread. Any thread. */
void sync_s3_debug(s4kv_sync_loop *s, struct s3_debug *d, uv_thread_t *loop_thread);

#endif
