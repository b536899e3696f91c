/*
 * s3_internal.h - what sync/s3.c, sync/s3conf.c and sync/s3xml.c share, and
 * the few knobs the tests reach for. Not part of the public interface.
 */
#ifndef S4KV_S3_INTERNAL_H
#define S4KV_S3_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "s3.h"

/* ---- Endpoint URLs (s3conf.c) */

/* Splits "http(s)://host[:port][/]" into its parts. host is returned without
 * brackets for IPv6 literals; authority is exactly "host[:port]" as written
 * (brackets kept) and is what goes into the Host header. A path other than
 * "/", a query, a fragment or userinfo is rejected. All strings malloc'd.
 * Returns 0 or S4KV_EINVAL / S4KV_ENOMEM with a message naming `what`
 * (e.g. "AWS_ENDPOINT_URL_S3"). */
typedef struct s3_endpoint {
    char *scheme;    /* "http" or "https" (lower case) */
    char *host;      /* "127.0.0.1", "::1", "s3.us-east-1.amazonaws.com" */
    char *authority; /* "127.0.0.1:4568", "[::1]:4568", "s3.amazonaws.com" */
    int port;        /* explicit port, or 0 */
} s3_endpoint;
int s3_endpoint_parse(const char *url, const char *what, s3_endpoint *ep, char *err,
                      size_t errlen);
void s3_endpoint_free(s3_endpoint *ep);

/* 1 if name is a valid S3 bucket name (3..63 of a-z 0-9 . -, starting and
 * ending with a letter or digit, no "..", not an IPv4 address). */
int s3_bucket_name_ok(const char *name);

/* ---- XML (s3xml.c). Every parser takes the body bytes as received. */

/* S3's <Error><Code>..</Code><Message>..</Message></Error>. Returns 1 if the
 * body is an Error document (code/msg filled, truncated to their sizes), else
 * 0 (code and msg set to ""). */
int s3xml_parse_error(const void *body, size_t len, char *code, size_t codelen, char *msg,
                      size_t msglen);

/* One ListObjectsV2 page appended to *objs (*n used, *cap allocated; grow with
 * realloc). *truncated and *next_token (malloc'd or NULL) describe the next
 * page. Keys are URL-decoded when the answer says <EncodingType>url. Returns
 * 0, S4KV_ECORRUPT (not a ListBucketResult, bad number) or S4KV_ENOMEM, with a
 * message. */
int s3xml_parse_list(const void *body, size_t len, s3_object **objs, size_t *n, size_t *cap,
                     int *truncated, char **next_token, char *err, size_t errlen);

/* InitiateMultipartUploadResult: *upload_id malloc'd. Returns 0,
 * S4KV_ECORRUPT or S4KV_ENOMEM. */
int s3xml_parse_upload_id(const void *body, size_t len, char **upload_id, char *err,
                          size_t errlen);

/* DeleteResult: counts <Error> entries into *nerrors and copies the first
 * one's key, code and message (truncated). Returns 0, S4KV_ECORRUPT (not a
 * DeleteResult) or S4KV_ENOMEM. */
int s3xml_parse_delete_result(const void *body, size_t len, size_t *nerrors, char *key,
                              size_t keylen, char *code, size_t codelen, char *msg,
                              size_t msglen, char *err, size_t errlen);

/* 1 if key can travel in an XML 1.0 body: valid UTF-8 with no control
 * characters other than TAB, LF and CR (those go as character references).
 * Keys that fail must be deleted one by one with DeleteObject. */
int s3xml_key_ok(const char *key);

/* <Delete> body for DeleteObjects (Quiet mode) of keys[0..n). malloc'd,
 * NUL-terminated, length in *len; NULL on ENOMEM. Keys must pass
 * s3xml_key_ok. */
char *s3xml_delete_body(char *const *keys, size_t n, size_t *len);

/* <CompleteMultipartUpload> body; etags[i] is part i+1's ETag as S3 returned
 * it (quotes included). NULL on ENOMEM. */
char *s3xml_complete_body(char *const *etags, size_t nparts, size_t *len);

/* Appends s to a growing buffer with XML escaping (& < > " ' and TAB, LF, CR
 * as character references). Exposed for the tests. Returns 0 or -1 (ENOMEM). */
int s3xml_escape_append(char **buf, size_t *len, size_t *cap, const char *s);

/* ---- The transfer driver and the attached loop (s3.c)
 *
 * Every request - a batch of s3_run and each single-request call (s3_put,
 * s3_get, s3_get_range, s3_head, s3_delete, s3_delete_many, s3_list) as a
 * batch of one - runs on a curl multi handle driven by a libuv loop through
 * curl_multi_socket_action: a uv_poll_t per socket curl names
 * (CURLMOPT_SOCKETFUNCTION), one uv_timer_t for curl's timeout
 * (CURLMOPT_TIMERFUNCTION) and one uv_timer_t for retry backoff. Multi handles
 * are pooled in the client (each keeps its connection cache), so sequential
 * calls reuse connections.
 *
 * Which loop: when the client is attached to an s3_loop and the caller is
 * not that loop's thread, the batch is posted to the loop (uv_async_send) and
 * the caller blocks until the loop has finished it (all its handles closed);
 * otherwise it runs on a private uv_loop_t created, run and closed inside the
 * call on the caller's thread. A call made on the loop thread itself (also
 * from within a batch, e.g. the HEAD that checks a lost
 * CompleteMultipartUpload) therefore runs on a private loop and blocks the
 * attached loop for its duration. Hashing of upload bodies happens on the
 * caller's thread before a batch is posted, and GET_FILE targets are
 * fdatasync'd and renamed there after it; the loop thread only moves bytes
 * (reading the upload's files, writing GET_FILE temporaries). An s3_run
 * progress callback is still called on the caller's thread (s3.h): the loop
 * hands the numbers over, coalescing reports the caller has not yet taken. */

/* A libuv loop that runs S3 batches for other threads. Opaque. */
typedef struct s3_loop s3_loop;

/* Creates the executor on loop. Call it on the thread that runs loop (before
 * uv_run or from one of its callbacks): that thread is recorded as the loop's
 * thread. Holds one uv_async_t on loop (keeping it alive) until
 * s3_loop_close. Returns 0, or S4KV_ENOMEM / S4KV_EIO with a message. */
int s3_loop_new(uv_loop_t *loop, s3_loop **out, char *err, size_t errlen);

/* On the loop's thread: takes no more batches (later calls from clients
 * still attached run on private loops), starts every batch already posted
 * (they run to their end on the loop, which keeps running while they do, so
 * none is stranded) and closes the async handle; x is freed by its close
 * callback. Detach (or free) the clients attached to x before: they must not
 * be in a call at that moment. NULL is a no-op. */
void s3_loop_close(s3_loop *x);

/* Routes cl's batches through x (NULL: back to private loops). Any thread,
 * but not while a call on cl is in flight. x must outlive the attachment. */
void s3_client_attach_loop(s3_client *cl, s3_loop *x);

/* What the driver did, for tests. */
typedef struct s3_debug {
    uint64_t loop_batches;    /* batches run on an attached loop */
    uint64_t private_batches; /* batches run on a private loop */
    uint64_t multis_dropped;  /* multi handles destroyed instead of pooled */
    pthread_t last_thread;    /* the thread that last called curl_multi_socket_action */
    int have_thread;          /* last_thread is set */
} s3_debug;
void s3_client_debug(s3_client *cl, s3_debug *d);

/* ---- Test knobs (s3.c) */

/* max-keys for each ListObjectsV2 page (0 = the server's default, 1000). */
void s3_client_set_list_page_size(s3_client *cl, int n);

/* Retry backoff: base and cap in milliseconds (defaults 100 and 20000; the
 * environment variables S4KV_S3_RETRY_BASE_MS and S4KV_S3_RETRY_CAP_MS set
 * them for new clients). */
void s3_client_set_backoff(s3_client *cl, long base_ms, long cap_ms);

#endif
