/*
 * s3.c - the S3 client: requests signed with SigV4 (sync/sigv4.h) and sent
 * with libcurl's multi interface driven by a libuv loop; a batch of
 * transfers (s3_run) and each single request alike.
 *
 * Owns: the client (addressing, the pools of curl easy and multi handles,
 * statistics, the retry budget), every single-request operation of s3.h,
 * multipart upload, the s3_run scheduler and its event-loop driver.
 *
 * The driver (the end of this file; see also s3_internal.h) follows
 * libcurl's docs/examples/multi-uv.c and curl_multi_socket_action(3),
 * CURLMOPT_SOCKETFUNCTION(3), CURLMOPT_TIMERFUNCTION(3): each batch takes a
 * multi handle from the client's pool and a loop - the loop of an attached
 * s3_loop when called from another thread (the batch is posted with
 * uv_async_send and the caller waits on a condition variable), else a
 * private uv_loop_t made for the call. curl names the sockets to watch
 * (a uv_poll_t each, kept with curl_multi_assign, uv_close'd on
 * CURL_POLL_REMOVE and freed in the close callback, so a reused fd number
 * gets a fresh poll) and one timeout (one uv_timer_t: -1 stops it, 0 fires
 * on the loop's next timer pass); poll events and the timer call
 * curl_multi_socket_action, then finished transfers are collected with
 * curl_multi_info_read and retried or completed by the same scheduler as
 * before. curl's callbacks only arm uv handles and never call back into
 * curl. A second uv_timer_t wakes retries when their backoff is over. When a
 * batch ends its handles are closed; the multi goes back to the pool with
 * its idle connections (or is dropped if curl still watched a socket).
 * Upload bodies are hashed on the caller's thread before a batch starts, and
 * GET_FILE targets are fdatasync'd and renamed after it, so an attached loop
 * only moves bytes.
 *
 * Sources: Amazon S3 API Reference
 * (PutObject, GetObject and its Range header, HeadObject, DeleteObject,
 * DeleteObjects and its Content-MD5 requirement, ListObjectsV2,
 * CreateMultipartUpload, UploadPart, CompleteMultipartUpload - including its
 * "200 OK with an <Error> body" case - AbortMultipartUpload, "Error
 * responses"), "Authenticating Requests (AWS Signature Version 4)" with
 * x-amz-content-sha256, "Virtual hosting of buckets", and the AWS SDKs and
 * Tools Reference Guide, "Retry behavior" (standard mode).
 *
 * Invariants:
 * - Every request is signed with the real SHA-256 of its body (files are
 *   hashed before they are streamed), so S3 rejects a body altered in transit.
 * - Keys go on the wire URI-encoded exactly once with '/' kept, and the path is
 *   sent as-is (CURLOPT_PATH_AS_IS): S3 does not normalise "a/../b".
 * - A request is retried only on 500/502/503/504, throttling and timeout
 *   error codes, and connection-level curl errors, at most max_attempts times,
 *   with full-jitter capped exponential backoff, while the client's retry
 *   budget lasts (token bucket 500; a retry costs 5, a timeout 10; a success
 *   refunds what its retries took, or 1).
 * - Messages name the operation, s3://bucket/key, the HTTP status and S3's
 *   error code (or the curl error); the Authorization header and the secret
 *   never reach a message or the trace (S4KV_S3_TRACE=1 prints one line per
 *   attempt on stderr: method, path, status, milliseconds).
 *
 * Knobs from the environment (read by s3_client_new): S4KV_S3_RETRY_BASE_MS
 * and S4KV_S3_RETRY_CAP_MS (backoff base and cap, defaults 100 and 20000;
 * tests shrink them), S4KV_S3_TRACE.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "s3_internal.h"
#include "s4kv.h"
#include "sigv4.h"

#define S3_USER_AGENT "s4kv/0.1.0"
#define POOL_MAX 64
#define MPOOL_MAX 16
#define ERRBODY_MAX (64 * 1024)
#define BUDGET_MAX 500
#define RETRY_COST 5
#define TIMEOUT_COST 10
#define MIN_PART (5ull * 1024 * 1024)
#define MAX_PARTS 10000
#define DELETE_BATCH 1000

struct s3_client {
    s3_config cfg;
    char *bucket;
    char *base_url;    /* scheme://authority (virtual host: bucket.authority) */
    char *host;        /* the Host header value */
    char *path_prefix; /* "/bucket" (path style, encoded) or "" */
    pthread_mutex_t mu; /* pools, stats, budget, rng, the attached loop */
    CURL *pool[POOL_MAX];
    size_t npool;
    CURLM *mpool[MPOOL_MAX]; /* idle multi handles, each with its connection cache */
    size_t nmpool;
    s3_loop *xloop;           /* s3_client_attach_loop, or NULL */
    s3_debug dbg;
    CURLSH *share;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];
    s3_stats st;
    long tokens;
    long backoff_base_ms, backoff_cap_ms;
    uint64_t rng;
    int list_page;
    int trace;
};

/* ---- small helpers */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A key made printable for a message: control bytes as \xNN, cut at 200. */
static void printable(char *out, size_t outlen, const char *s)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 5 < outlen; p++) {
        if (o >= 200) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (*p < 0x20 || *p == 0x7f)
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", *p);
        else
            out[o++] = (char)*p;
    }
    out[o] = 0;
}

static int hex_sha256_fd(int fd, uint64_t off, uint64_t len, char out[65], int *err_no)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t bufsz = 1 << 20;
    unsigned char *buf = malloc(bufsz);
    int rc = 0;
    if (!ctx || !buf || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        rc = S4KV_ENOMEM;
        goto out;
    }
    while (len > 0) {
        size_t want = len < bufsz ? (size_t)len : bufsz;
        ssize_t got = pread(fd, buf, want, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            *err_no = got < 0 ? errno : 0;
            rc = S4KV_EIO;
            goto out;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)got);
        off += (uint64_t)got;
        len -= (uint64_t)got;
    }
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
out:
    free(buf);
    EVP_MD_CTX_free(ctx);
    return rc;
}

static int base64_md5(const void *buf, size_t len, char out[32])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(buf, len, md, &mdlen, EVP_md5(), NULL) || mdlen != 16)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, md, 16);
    return 0;
}

/* ---- curl global state and the share handle */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_init_rc;
static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static void share_lock(CURL *h, curl_lock_data d, curl_lock_access a, void *u)
{
    (void)h;
    (void)a;
    s3_client *cl = u;
    pthread_mutex_lock(&cl->share_mu[d]);
}

static void share_unlock(CURL *h, curl_lock_data d, void *u)
{
    (void)h;
    s3_client *cl = u;
    pthread_mutex_unlock(&cl->share_mu[d]);
}

static CURL *pool_get(s3_client *cl)
{
    CURL *h = NULL;
    pthread_mutex_lock(&cl->mu);
    if (cl->npool)
        h = cl->pool[--cl->npool];
    pthread_mutex_unlock(&cl->mu);
    return h ? h : curl_easy_init();
}

static void pool_put(s3_client *cl, CURL *h)
{
    pthread_mutex_lock(&cl->mu);
    if (cl->npool < POOL_MAX) {
        cl->pool[cl->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&cl->mu);
    if (h)
        curl_easy_cleanup(h);
}

/* ---- requests */

enum { SINK_NONE, SINK_MEM, SINK_FIXED, SINK_FD };

typedef struct s3_req s3_req;
struct s3_req {
    s3_client *cl;
    const char *op;     /* for messages: "GET", "UploadPart", ... */
    const char *method; /* "GET", "PUT", "HEAD", "DELETE", "POST" */
    char *path;         /* encoded path (malloc'd) */
    char *query;        /* encoded query or NULL (malloc'd) */
    char desc[300];     /* "s3://bucket/key" (printable) */
    char detail[120];   /* appended to desc in messages, e.g. " (bytes 0-99)" */
    /* request body: memory or [body_off, body_off + body_len) of body_fd */
    const uint8_t *body;
    int body_fd;
    uint64_t body_off, body_len, body_pos;
    char body_sha[65];  /* "" = SHA-256 of the empty body */
    char content_md5[32];
    const char *content_type;
    char range[64];
    /* response */
    int sink;
    uint8_t *mem;
    size_t mem_len, mem_cap;
    uint8_t *fixed;
    size_t fixed_cap;
    int out_fd;
    const char *out_path; /* for messages */
    uint64_t got;
    int overflow, oom, local_errno, short_file;
    uint8_t *ebody;
    size_t ebody_len;
    long status;
    char etag[128];
    char content_range[96];
    char bucket_region[64];
    char last_modified[64];
    int64_t content_length;
    /* post-check of a 2xx answer: 0, or an S4KV_E* code after req_fail;
     * may set chk_retry */
    int (*check)(s3_req *r);
    int chk_retry;
    void *chk_ctx;
    /* attempt state */
    CURL *h;
    struct curl_slist *hdrs;
    char curl_err[CURL_ERROR_SIZE];
    int attempt;
    long acquired; /* retry tokens held by this request's last retry */
    double t0;
    /* result */
    int rc;
    char err[400];
    /* s3_run bookkeeping */
    uint64_t not_before;
    void *job;
    uint32_t part; /* 1-based part number, 0 = not a part */
    int kind;
    s3_req *anext, *aprev; /* the runner's list of requests on its multi handle */
};

static void req_fail(s3_req *r, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void req_fail(s3_req *r, int rc, const char *fmt, ...)
{
    int n = snprintf(r->err, sizeof r->err, "%s %s%s: ", r->op, r->desc, r->detail);
    if (n < 0 || (size_t)n >= sizeof r->err)
        n = (int)sizeof r->err - 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err + n, sizeof r->err - (size_t)n, fmt, ap);
    va_end(ap);
    r->rc = rc;
}

/* Initialises r for key (NULL: the bucket itself; desc_key then names what
 * the request is about in messages). */
static int req_init(s3_req *r, s3_client *cl, const char *op, const char *method,
                    const char *key, const char *desc_key)
{
    memset(r, 0, sizeof *r);
    r->cl = cl;
    r->op = op;
    r->method = method;
    r->body_fd = -1;
    r->out_fd = -1;
    r->content_length = -1;
    r->attempt = 1;
    char pk[260];
    printable(pk, sizeof pk, key ? key : desc_key ? desc_key : "");
    snprintf(r->desc, sizeof r->desc, "s3://%s/%s", cl->bucket, pk);
    char *enc = NULL;
    if (key) {
        enc = sigv4_uri_encode(key, strlen(key), 1);
        if (!enc)
            return S4KV_ENOMEM;
    }
    size_t n = strlen(cl->path_prefix) + (enc ? strlen(enc) : 0) + 3;
    r->path = malloc(n);
    if (!r->path) {
        free(enc);
        return S4KV_ENOMEM;
    }
    if (enc)
        snprintf(r->path, n, "%s/%s", cl->path_prefix, enc);
    else
        snprintf(r->path, n, "%s", *cl->path_prefix ? cl->path_prefix : "/");
    free(enc);
    return 0;
}

static void req_clear(s3_req *r)
{
    free(r->path);
    free(r->query);
    free(r->mem);
    free(r->ebody);
    curl_slist_free_all(r->hdrs);
    r->path = r->query = NULL;
    r->mem = r->ebody = NULL;
    r->hdrs = NULL;
}

static size_t rd_cb(char *dst, size_t size, size_t nmemb, void *ud)
{
    s3_req *r = ud;
    size_t want = size * nmemb;
    uint64_t left = r->body_len - r->body_pos;
    if (want > left)
        want = (size_t)left;
    if (!want)
        return 0;
    if (r->body_fd >= 0) {
        ssize_t got;
        do
            got = pread(r->body_fd, dst, want, (off_t)(r->body_off + r->body_pos));
        while (got < 0 && errno == EINTR);
        if (got < 0) {
            r->local_errno = errno;
            return CURL_READFUNC_ABORT;
        }
        if (got == 0) {
            r->short_file = 1;
            return CURL_READFUNC_ABORT;
        }
        want = (size_t)got;
    } else {
        memcpy(dst, r->body + r->body_off + r->body_pos, want);
    }
    r->body_pos += want;
    return want;
}

static int seek_cb(void *ud, curl_off_t off, int origin)
{
    s3_req *r = ud;
    if (origin != SEEK_SET || off < 0 || (uint64_t)off > r->body_len)
        return CURL_SEEKFUNC_CANTSEEK;
    r->body_pos = (uint64_t)off;
    return CURL_SEEKFUNC_OK;
}

static int grow_append(uint8_t **buf, size_t *len, size_t *cap, const char *src, size_t n)
{
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 4096;
        while (nc < *len + n)
            nc *= 2;
        uint8_t *b = realloc(*buf, nc);
        if (!b)
            return -1;
        *buf = b;
        *cap = nc;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    return 0;
}

static size_t wr_cb(char *src, size_t size, size_t nmemb, void *ud)
{
    s3_req *r = ud;
    size_t n = size * nmemb;
    long status = 0;
    curl_easy_getinfo(r->h, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status >= 300) {
        if (!r->ebody)
            r->ebody = malloc(ERRBODY_MAX);
        if (r->ebody) {
            size_t keep = n < ERRBODY_MAX - r->ebody_len ? n : ERRBODY_MAX - r->ebody_len;
            memcpy(r->ebody + r->ebody_len, src, keep);
            r->ebody_len += keep;
        }
        return n;
    }
    switch (r->sink) {
    case SINK_MEM:
        if (r->mem_cap == 0 && r->content_length > 0 && (uint64_t)r->content_length < SIZE_MAX) {
            r->mem = malloc((size_t)r->content_length);
            if (r->mem)
                r->mem_cap = (size_t)r->content_length;
        }
        if (grow_append(&r->mem, &r->mem_len, &r->mem_cap, src, n)) {
            r->oom = 1;
            return 0;
        }
        break;
    case SINK_FIXED:
        if (r->got + n > r->fixed_cap) {
            r->overflow = 1;
            return 0;
        }
        memcpy(r->fixed + r->got, src, n);
        break;
    case SINK_FD: {
        size_t done = 0;
        while (done < n) {
            ssize_t w = pwrite(r->out_fd, src + done, n - done, (off_t)(r->got + done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                r->local_errno = w < 0 ? errno : EIO;
                return 0;
            }
            done += (size_t)w;
        }
        break;
    }
    default:
        break;
    }
    r->got += n;
    return n;
}

static void hdr_value(const char *line, size_t n, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    if (n <= nl + 1 || strncasecmp(line, name, nl) || line[nl] != ':')
        return;
    const char *v = line + nl + 1;
    const char *e = line + n;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' '))
        e--;
    size_t l = (size_t)(e - v);
    if (l >= outlen)
        l = outlen - 1;
    memcpy(out, v, l);
    out[l] = 0;
}

static size_t hdr_cb(char *line, size_t size, size_t nmemb, void *ud)
{
    s3_req *r = ud;
    size_t n = size * nmemb;
    if (n >= 5 && !strncmp(line, "HTTP/", 5)) { /* a new response (after 100 Continue) */
        r->etag[0] = r->content_range[0] = r->bucket_region[0] = r->last_modified[0] = 0;
        r->content_length = -1;
        return n;
    }
    hdr_value(line, n, "ETag", r->etag, sizeof r->etag);
    hdr_value(line, n, "Content-Range", r->content_range, sizeof r->content_range);
    hdr_value(line, n, "x-amz-bucket-region", r->bucket_region, sizeof r->bucket_region);
    hdr_value(line, n, "Last-Modified", r->last_modified, sizeof r->last_modified);
    char cl[32] = "";
    hdr_value(line, n, "Content-Length", cl, sizeof cl);
    if (cl[0])
        r->content_length = strtoll(cl, NULL, 10);
    return n;
}

/* Resets the attempt's response state and sets h up for r, signed now. */
static int req_setup(s3_req *r, CURL *h)
{
    s3_client *cl = r->cl;
    const s3_config *c = &cl->cfg;
    r->h = h;
    r->status = 0;
    r->got = 0;
    r->mem_len = 0;
    r->ebody_len = 0;
    r->overflow = r->oom = r->local_errno = r->short_file = r->chk_retry = 0;
    r->etag[0] = r->content_range[0] = r->bucket_region[0] = r->curl_err[0] = 0;
    r->last_modified[0] = 0;
    r->content_length = -1;
    r->body_pos = 0;
    r->rc = 0;
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    if (r->sink == SINK_FD && (ftruncate(r->out_fd, 0) || lseek(r->out_fd, 0, SEEK_SET) < 0)) {
        req_fail(r, S4KV_EIO, "truncating %s: %s", r->out_path, strerror(errno));
        return r->rc;
    }

    char date[17];
    sigv4_amz_date((int64_t)time(NULL), date);
    sigv4_header sh[1] = {{"Host", cl->host}};
    sigv4_request sr = {
        .method = r->method,
        .path = r->path,
        .encoded_path = 1,
        .query = r->query,
        .headers = sh,
        .nheaders = 1,
        .payload_sha256 = r->body_sha[0] ? r->body_sha : NULL,
    };
    sigv4_credentials cred = {c->access_key, c->secret_key, c->session_token};
    sigv4_params sp = {.region = c->region, .service = "s3", .amz_date = date,
                       .normalize_path = 0, .sign_body = 1};
    sigv4_result res;
    char serr[200] = "";
    if (sigv4_sign_header(&sr, &cred, &sp, &res, serr, sizeof serr)) {
        req_fail(r, S4KV_EINVAL, "signing failed: %s", serr);
        return r->rc;
    }
    char line[1200];
    struct curl_slist *hl = NULL, *t;
    int bad = 0, have_sha = 0;
#define ADDH(...)                                                                            \
    do {                                                                                     \
        snprintf(line, sizeof line, __VA_ARGS__);                                            \
        if (!bad && (t = curl_slist_append(hl, line)))                                       \
            hl = t;                                                                          \
        else                                                                                 \
            bad = 1;                                                                         \
    } while (0)
    ADDH("Host: %s", cl->host);
    for (size_t i = 0; i < res.nextra; i++) {
        if (!strncasecmp(res.extra[i], "x-amz-content-sha256:", 21))
            have_sha = 1;
        ADDH("%s", res.extra[i]);
    }
    if (!have_sha) {
        char empty[65];
        if (!r->body_sha[0])
            sigv4_sha256_hex("", 0, empty);
        ADDH("x-amz-content-sha256: %s", r->body_sha[0] ? r->body_sha : empty);
    }
    if (!bad) {
        size_t al = strlen(res.authorization) + 32;
        char *a = malloc(al);
        if (a) {
            snprintf(a, al, "Authorization: %s", res.authorization);
            if ((t = curl_slist_append(hl, a)))
                hl = t;
            else
                bad = 1;
            explicit_bzero(a, al);
            free(a);
        } else {
            bad = 1;
        }
    }
    sigv4_result_free(&res);
    if (r->content_md5[0])
        ADDH("Content-MD5: %s", r->content_md5);
    if (r->range[0])
        ADDH("Range: %s", r->range);
    if (r->content_type)
        ADDH("Content-Type: %s", r->content_type);
    ADDH("Expect:");
#undef ADDH
    r->hdrs = hl;
    if (bad) {
        req_fail(r, S4KV_ENOMEM, "out of memory building the request");
        return r->rc;
    }

    size_t ul = strlen(cl->base_url) + strlen(r->path) + (r->query ? strlen(r->query) : 0) + 2;
    char *url = malloc(ul);
    if (!url) {
        req_fail(r, S4KV_ENOMEM, "out of memory building the request");
        return r->rc;
    }
    snprintf(url, ul, "%s%s%s%s", cl->base_url, r->path, r->query ? "?" : "",
             r->query ? r->query : "");

    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url); /* libcurl copies it */
    free(url);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, S3_USER_AGENT);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_SHARE, cl->share);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms > 0 ? c->connect_timeout_ms : 5000L);
    if (c->request_timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->request_timeout_ms);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 30L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, c->tls_verify ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, c->tls_verify ? 2L : 0L);
    if (c->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->curl_err);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, wr_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, hdr_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_PRIVATE, r);
    if (!strcmp(r->method, "HEAD")) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (!strcmp(r->method, "PUT")) {
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, rd_cb);
        curl_easy_setopt(h, CURLOPT_READDATA, r);
        curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, seek_cb);
        curl_easy_setopt(h, CURLOPT_SEEKDATA, r);
    } else if (!strcmp(r->method, "POST")) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, rd_cb);
        curl_easy_setopt(h, CURLOPT_READDATA, r);
        curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, seek_cb);
        curl_easy_setopt(h, CURLOPT_SEEKDATA, r);
    } else if (strcmp(r->method, "GET")) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, r->method);
    }
    r->t0 = now_sec();
    return 0;
}

static const char *status_code_name(long st)
{
    switch (st) {
    case 301: return "PermanentRedirect";
    case 304: return "NotModified";
    case 307: return "TemporaryRedirect";
    case 400: return "BadRequest";
    case 403: return "Forbidden";
    case 404: return "NotFound";
    case 405: return "MethodNotAllowed";
    case 409: return "Conflict";
    case 411: return "MissingContentLength";
    case 412: return "PreconditionFailed";
    case 416: return "InvalidRange";
    case 429: return "TooManyRequests";
    case 500: return "InternalError";
    case 501: return "NotImplemented";
    case 502: return "BadGateway";
    case 503: return "ServiceUnavailable";
    case 504: return "GatewayTimeout";
    default: return "";
    }
}

/* Error codes the SDKs' standard mode retries (transient and throttling). */
static const char *RETRY_CODES[] = {
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "InternalError",
    "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "RequestThrottled", "EC2ThrottledException", NULL};

static int curl_retryable(CURLcode cc, int *timeout)
{
    *timeout = cc == CURLE_OPERATION_TIMEDOUT;
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_BAD_CONTENT_ENCODING:
        return 1;
    default:
        return 0;
    }
}

static long backoff_ms(s3_client *cl, int attempt)
{
    long cap = cl->backoff_cap_ms, d = cl->backoff_base_ms;
    for (int i = 1; i < attempt && d < cap; i++)
        d *= 2;
    if (d > cap)
        d = cap;
    pthread_mutex_lock(&cl->mu);
    cl->rng ^= cl->rng << 13;
    cl->rng ^= cl->rng >> 7;
    cl->rng ^= cl->rng << 17;
    uint64_t x = cl->rng;
    pthread_mutex_unlock(&cl->mu);
    return d > 0 ? (long)(x % (uint64_t)(d + 1)) : 0;
}

enum { V_DONE, V_RETRY };

/* Classifies the finished attempt: V_DONE (r->rc, r->err final) or V_RETRY
 * after *delay_ms. */
static int req_finish(s3_req *r, CURLcode cc, long *delay_ms)
{
    s3_client *cl = r->cl;
    CURL *h = r->h;
    long status = 0, nconn = 0;
    curl_off_t up = 0, down = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &nconn);
    curl_easy_getinfo(h, CURLINFO_SIZE_UPLOAD_T, &up);
    curl_easy_getinfo(h, CURLINFO_SIZE_DOWNLOAD_T, &down);
    r->status = status;
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    pthread_mutex_lock(&cl->mu);
    cl->st.requests++;
    cl->st.connections += (uint64_t)(nconn > 0 ? nconn : 0);
    cl->st.bytes_sent += (uint64_t)(up > 0 ? up : 0);
    cl->st.bytes_received += (uint64_t)(down > 0 ? down : 0);
    pthread_mutex_unlock(&cl->mu);
    if (cl->trace)
        fprintf(stderr, "s3: %s %s%s%s -> %ld%s%s (%.1f ms, attempt %d)\n", r->method, r->path,
                r->query ? "?" : "", r->query ? r->query : "", status,
                cc ? " curl: " : "", cc ? curl_easy_strerror(cc) : "",
                (now_sec() - r->t0) * 1e3, r->attempt);

    int retryable = 0, timeout = 0;
    r->rc = 0;
    if (cc != CURLE_OK) {
        if (r->local_errno) {
            req_fail(r, S4KV_EIO, "%s %s: %s", r->sink == SINK_FD ? "writing" : "reading",
                     r->sink == SINK_FD ? (r->out_path ? r->out_path : "file") : "the upload source",
                     strerror(r->local_errno));
        } else if (r->short_file) {
            req_fail(r, S4KV_EIO, "the file to upload ended before %" PRIu64 " bytes",
                     r->body_len);
        } else if (r->oom) {
            req_fail(r, S4KV_ENOMEM, "out of memory receiving %" PRIu64 " bytes", r->got);
        } else if (r->overflow) {
            /* not transient: the server sent more than the range (s3rver
             * 3.7.1 does so for "bytes=0-0") */
            req_fail(r, S4KV_ECORRUPT, "HTTP %ld%s%s: body longer than the %zu bytes asked for",
                     status, r->content_range[0] ? ", Content-Range " : "", r->content_range,
                     r->fixed_cap);
        } else {
            retryable = curl_retryable(cc, &timeout);
            if (status)
                req_fail(r, S4KV_EREMOTE, "HTTP %ld, then curl error %d: %s (%s)", status, (int)cc,
                         curl_easy_strerror(cc), r->curl_err[0] ? r->curl_err : "no detail");
            else
                req_fail(r, S4KV_EREMOTE, "curl error %d: %s (%s)", (int)cc,
                         curl_easy_strerror(cc), r->curl_err[0] ? r->curl_err : "no detail");
        }
    } else if (status >= 200 && status < 300) {
        if (r->check && r->check(r)) {
            retryable = r->chk_retry;
        }
    } else {
        char code[64], msg[256];
        if (!s3xml_parse_error(r->ebody, r->ebody_len, code, sizeof code, msg, sizeof msg))
            snprintf(code, sizeof code, "%s", status_code_name(status));
        retryable = status == 500 || status == 502 || status == 503 || status == 504;
        for (int i = 0; RETRY_CODES[i] && !retryable; i++)
            retryable = !strcmp(code, RETRY_CODES[i]);
        timeout = !strcmp(code, "RequestTimeout");
        char hint[128] = "";
        if (r->bucket_region[0] && strcmp(r->bucket_region, cl->cfg.region))
            snprintf(hint, sizeof hint, "; the bucket is in region %.40s (set AWS_REGION)",
                     r->bucket_region);
        req_fail(r, status == 404 ? S4KV_ENOENT : S4KV_EREMOTE, "HTTP %ld%s%s%s%s%s%s", status,
                 code[0] ? " " : "", code, msg[0] ? " (" : "", msg, msg[0] ? ")" : "", hint);
    }

    if (r->rc == 0) {
        pthread_mutex_lock(&cl->mu);
        cl->tokens += r->acquired ? r->acquired : 1;
        if (cl->tokens > BUDGET_MAX)
            cl->tokens = BUDGET_MAX;
        pthread_mutex_unlock(&cl->mu);
        r->acquired = 0;
        return V_DONE;
    }
    if (retryable && r->attempt < cl->cfg.max_attempts) {
        long cost = timeout ? TIMEOUT_COST : RETRY_COST;
        int ok = 0;
        pthread_mutex_lock(&cl->mu);
        if (cl->tokens >= cost) {
            cl->tokens -= cost;
            cl->st.retries++;
            ok = 1;
        }
        pthread_mutex_unlock(&cl->mu);
        if (ok) {
            r->acquired = cost;
            *delay_ms = backoff_ms(cl, r->attempt);
            r->attempt++;
            return V_RETRY;
        }
        size_t l = strlen(r->err);
        snprintf(r->err + l, sizeof r->err - l, " (after %d attempt%s; retry budget exhausted)",
                 r->attempt, r->attempt == 1 ? "" : "s");
    } else if (retryable) {
        size_t l = strlen(r->err);
        snprintf(r->err + l, sizeof r->err - l, " (after %d attempt%s)", r->attempt,
                 r->attempt == 1 ? "" : "s");
    }
    pthread_mutex_lock(&cl->mu);
    cl->st.errors++;
    pthread_mutex_unlock(&cl->mu);
    return V_DONE;
}

/* Runs r to completion as a batch of one on the event-loop driver (below),
 * retrying as req_finish says. Returns r->rc. */
static int req_run(s3_req *r);

static int req_result(s3_req *r, char *err, size_t errlen)
{
    int rc = r->rc;
    if (rc)
        seterr(err, errlen, "%s", r->err);
    req_clear(r);
    return rc;
}

/* ---- client */

static int bucket_dns_ok(const char *b, int https)
{
    if (!s3_bucket_name_ok(b))
        return 0;
    return !(https && strchr(b, '.')); /* a wildcard certificate covers one label */
}

s3_client *s3_client_new(const s3_config *c, const char *bucket, char *err, size_t errlen)
{
    if (!c || !bucket || !*bucket) {
        seterr(err, errlen, "S3 client: no bucket");
        return NULL;
    }
    if (!c->access_key || !c->secret_key || !*c->access_key) {
        seterr(err, errlen, "no S3 credentials: set AWS_ACCESS_KEY_ID and "
               "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE");
        return NULL;
    }
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc) {
        seterr(err, errlen, "curl_global_init failed");
        return NULL;
    }
    s3_endpoint ep;
    if (s3_endpoint_parse(c->endpoint ? c->endpoint : "https://s3.us-east-1.amazonaws.com",
                          "S3 endpoint", &ep, err, errlen))
        return NULL;
    s3_client *cl = calloc(1, sizeof *cl);
    if (!cl) {
        s3_endpoint_free(&ep);
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&cl->mu, NULL);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&cl->share_mu[i], NULL);
    cl->cfg = *c;
    cl->cfg.endpoint = c->endpoint ? strdup(c->endpoint) : NULL;
    cl->cfg.region = strdup(c->region && *c->region ? c->region : "us-east-1");
    cl->cfg.access_key = strdup(c->access_key);
    cl->cfg.secret_key = strdup(c->secret_key);
    cl->cfg.session_token = c->session_token && *c->session_token ? strdup(c->session_token) : NULL;
    cl->cfg.ca_file = c->ca_file ? strdup(c->ca_file) : NULL;
    cl->bucket = strdup(bucket);
    int https = !strcmp(ep.scheme, "https");
    int path_style = c->path_style || !bucket_dns_ok(bucket, https);
    char *encb = sigv4_uri_encode(bucket, strlen(bucket), 0);
    size_t n = strlen(ep.authority) + strlen(bucket) + 16;
    cl->base_url = malloc(n);
    cl->host = malloc(n);
    if (encb && cl->base_url && cl->host) {
        if (path_style) {
            snprintf(cl->host, n, "%s", ep.authority);
            cl->path_prefix = malloc(strlen(encb) + 2);
            if (cl->path_prefix)
                snprintf(cl->path_prefix, strlen(encb) + 2, "/%s", encb);
        } else {
            snprintf(cl->host, n, "%s.%s", bucket, ep.authority);
            cl->path_prefix = strdup("");
        }
        snprintf(cl->base_url, n, "%s://%s", ep.scheme, cl->host);
    }
    free(encb);
    s3_endpoint_free(&ep);
    cl->share = curl_share_init();
    if (!cl->cfg.region || !cl->cfg.access_key || !cl->cfg.secret_key || !cl->bucket ||
        !cl->base_url || !cl->host || !cl->path_prefix || !cl->share ||
        (c->endpoint && !cl->cfg.endpoint) || (c->ca_file && !cl->cfg.ca_file)) {
        s3_client_free(cl);
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    curl_share_setopt(cl->share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(cl->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(cl->share, CURLSHOPT_USERDATA, cl);
    curl_share_setopt(cl->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(cl->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    if (cl->cfg.max_attempts < 1)
        cl->cfg.max_attempts = 3;
    if (cl->cfg.max_parallel < 1)
        cl->cfg.max_parallel = 8;
    if (cl->cfg.part_size < MIN_PART)
        cl->cfg.part_size = cl->cfg.part_size ? MIN_PART : 8 * 1024 * 1024;
    if (cl->cfg.multipart_threshold == 0)
        cl->cfg.multipart_threshold = 16 * 1024 * 1024;
    cl->tokens = BUDGET_MAX;
    cl->backoff_base_ms = 100;
    cl->backoff_cap_ms = 20000;
    const char *e;
    if ((e = getenv("S4KV_S3_RETRY_BASE_MS")) && *e)
        cl->backoff_base_ms = atol(e) >= 0 ? atol(e) : 100;
    if ((e = getenv("S4KV_S3_RETRY_CAP_MS")) && *e)
        cl->backoff_cap_ms = atol(e) >= 0 ? atol(e) : 20000;
    cl->trace = (e = getenv("S4KV_S3_TRACE")) && *e && strcmp(e, "0");
    cl->rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)cl;
    if (!cl->rng)
        cl->rng = 0x9e3779b97f4a7c15ull;
    return cl;
}

void s3_client_free(s3_client *cl)
{
    if (!cl)
        return;
    for (size_t i = 0; i < cl->nmpool; i++)
        curl_multi_cleanup(cl->mpool[i]); /* closes the cached connections */
    for (size_t i = 0; i < cl->npool; i++)
        curl_easy_cleanup(cl->pool[i]);
    if (cl->share)
        curl_share_cleanup(cl->share);
    s3_config_free(&cl->cfg);
    free(cl->bucket);
    free(cl->base_url);
    free(cl->host);
    free(cl->path_prefix);
    pthread_mutex_destroy(&cl->mu);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&cl->share_mu[i]);
    free(cl);
}

void s3_client_stats(s3_client *cl, s3_stats *st)
{
    pthread_mutex_lock(&cl->mu);
    *st = cl->st;
    pthread_mutex_unlock(&cl->mu);
}

void s3_client_set_list_page_size(s3_client *cl, int n)
{
    cl->list_page = n > 0 ? n : 0;
}

void s3_client_set_backoff(s3_client *cl, long base_ms, long cap_ms)
{
    cl->backoff_base_ms = base_ms >= 0 ? base_ms : 0;
    cl->backoff_cap_ms = cap_ms >= 0 ? cap_ms : 0;
}

/* ---- single-request operations */

int s3_put(s3_client *cl, const char *key, const void *buf, size_t len, char *err, size_t errlen)
{
    if (len >= cl->cfg.multipart_threshold && len > 0) {
        s3_xfer x = {.op = S3_XPUT_BUF, .key = key, .buf = buf, .len = len};
        int rc = s3_run(cl, &x, 1, NULL, NULL);
        if (rc)
            seterr(err, errlen, "%s", x.err);
        return rc;
    }
    s3_req r;
    if (req_init(&r, cl, "PUT", "PUT", key, NULL)) {
        seterr(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    r.body = buf;
    r.body_len = len;
    sigv4_sha256_hex(buf ? buf : "", len, r.body_sha);
    r.content_type = "application/octet-stream";
    req_run(&r);
    return req_result(&r, err, errlen);
}

int s3_get(s3_client *cl, const char *key, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
    *buf = NULL;
    *len = 0;
    s3_req r;
    if (req_init(&r, cl, "GET", "GET", key, NULL)) {
        seterr(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    r.sink = SINK_MEM;
    if (req_run(&r) == 0) {
        if (!r.mem)
            r.mem = malloc(1);
        if (!r.mem) {
            req_fail(&r, S4KV_ENOMEM, "out of memory");
        } else {
            *buf = r.mem;
            *len = r.mem_len;
            r.mem = NULL;
        }
    }
    return req_result(&r, err, errlen);
}

static int range_check(s3_req *r)
{
    uint64_t want_end = 0, off = 0;
    sscanf(r->range, "bytes=%" SCNu64 "-%" SCNu64, &off, &want_end);
    if (r->status == 200 && !(off == 0 && r->got == r->fixed_cap)) {
        req_fail(r, S4KV_ECORRUPT, "HTTP 200 instead of 206: the server ignored the Range");
        return r->rc;
    }
    if (r->status == 206 && r->content_range[0]) {
        uint64_t s = 0, e = 0;
        if (sscanf(r->content_range, "bytes %" SCNu64 "-%" SCNu64, &s, &e) != 2 || s != off) {
            req_fail(r, S4KV_ECORRUPT, "Content-Range '%.60s' does not match the Range asked for",
                     r->content_range);
            return r->rc;
        }
        if (e < want_end) {
            req_fail(r, S4KV_ECORRUPT, "the object ends before the range does (Content-Range "
                     "'%.60s'): got %" PRIu64 " of %zu bytes", r->content_range, r->got,
                     r->fixed_cap);
            return r->rc;
        }
    }
    if (r->got != r->fixed_cap) {
        req_fail(r, S4KV_ECORRUPT, "short body: got %" PRIu64 " of %zu bytes", r->got,
                 r->fixed_cap);
        r->chk_retry = 1;
        return r->rc;
    }
    return 0;
}

int s3_get_range(s3_client *cl, const char *key, uint64_t off, void *buf, size_t len,
                 char *err, size_t errlen)
{
    if (len == 0)
        return 0;
    if (off > UINT64_MAX - len) {
        seterr(err, errlen, "GET s3://%s/%s: range overflows", cl->bucket, key);
        return S4KV_EINVAL;
    }
    s3_req r;
    if (req_init(&r, cl, "GET", "GET", key, NULL)) {
        seterr(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    snprintf(r.range, sizeof r.range, "bytes=%" PRIu64 "-%" PRIu64, off, off + len - 1);
    snprintf(r.detail, sizeof r.detail, " (bytes %" PRIu64 "-%" PRIu64 ")", off, off + len - 1);
    r.sink = SINK_FIXED;
    r.fixed = buf;
    r.fixed_cap = len;
    r.check = range_check;
    req_run(&r);
    if (r.rc && r.status == 416) {
        r.rc = S4KV_ECORRUPT;
        size_t l = strlen(r.err);
        snprintf(r.err + l, sizeof r.err - l, ": the object is shorter than offset %" PRIu64, off);
    }
    return req_result(&r, err, errlen);
}

/* HEAD with the ETag (quotes kept) and Last-Modified (Unix seconds, or -1). */
static int head_info(s3_client *cl, const char *key, uint64_t *size, char *etag, size_t etaglen,
                     int64_t *mtime, char *err, size_t errlen)
{
    s3_req r;
    if (req_init(&r, cl, "HEAD", "HEAD", key, NULL)) {
        seterr(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    if (req_run(&r) == 0) {
        if (r.content_length < 0)
            req_fail(&r, S4KV_EREMOTE, "HTTP %ld without Content-Length", r.status);
        else if (size)
            *size = (uint64_t)r.content_length;
        if (etag && etaglen)
            snprintf(etag, etaglen, "%s", r.etag);
        if (mtime) {
            struct tm tm;
            memset(&tm, 0, sizeof tm);
            const char *e = strptime(r.last_modified, "%a, %d %b %Y %H:%M:%S GMT", &tm);
            *mtime = e ? (int64_t)timegm(&tm) : -1;
        }
    }
    return req_result(&r, err, errlen);
}

int s3_head(s3_client *cl, const char *key, uint64_t *size, char *err, size_t errlen)
{
    return head_info(cl, key, size, NULL, 0, NULL, err, errlen);
}

int s3_delete(s3_client *cl, const char *key, char *err, size_t errlen)
{
    s3_req r;
    if (req_init(&r, cl, "DELETE", "DELETE", key, NULL)) {
        seterr(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    if (req_run(&r) == S4KV_ENOENT && strstr(r.err, "NoSuchKey"))
        r.rc = 0; /* already gone */
    return req_result(&r, err, errlen);
}

static int delete_check(s3_req *r)
{
    size_t nerr = 0;
    char key[256], code[64], msg[200], perr[200];
    int rc = s3xml_parse_delete_result(r->mem, r->mem_len, &nerr, key, sizeof key, code,
                                       sizeof code, msg, sizeof msg, perr, sizeof perr);
    if (rc) {
        req_fail(r, rc, "HTTP %ld: %s", r->status, perr);
        r->chk_retry = rc == S4KV_ECORRUPT; /* a garbled answer may be transient */
        return r->rc;
    }
    if (nerr) {
        char pk[260];
        printable(pk, sizeof pk, key);
        req_fail(r, S4KV_EREMOTE, "%zu key%s not deleted; first s3://%s/%s: %s (%s)", nerr,
                 nerr == 1 ? "" : "s", r->cl->bucket, pk, code, msg);
        for (int i = 0; RETRY_CODES[i]; i++)
            if (!strcmp(code, RETRY_CODES[i]))
                r->chk_retry = 1;
        return r->rc;
    }
    return 0;
}

int s3_delete_many(s3_client *cl, char *const *keys, size_t n, char *err, size_t errlen)
{
    char **batch = malloc((n < DELETE_BATCH ? n : DELETE_BATCH) * sizeof *batch + 1);
    if (!batch) {
        seterr(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    size_t i = 0;
    int rc = 0;
    while (i < n && !rc) {
        size_t nb = 0;
        for (; i < n && nb < DELETE_BATCH; i++) {
            if (s3xml_key_ok(keys[i])) {
                batch[nb++] = keys[i];
            } else if ((rc = s3_delete(cl, keys[i], err, errlen))) {
                i++; /* keys XML 1.0 cannot carry go one by one */
                break;
            }
        }
        if (rc || nb == 0)
            continue;
        s3_req r;
        if (req_init(&r, cl, "DeleteObjects", "POST", NULL, NULL) ||
            !(r.query = strdup("delete"))) {
            req_clear(&r);
            rc = S4KV_ENOMEM;
            seterr(err, errlen, "out of memory");
            break;
        }
        char pk[200];
        printable(pk, sizeof pk, batch[0]);
        snprintf(r.detail, sizeof r.detail, " (%zu keys from '%.80s')", nb, pk);
        size_t blen = 0;
        char *body = s3xml_delete_body(batch, nb, &blen);
        if (!body || base64_md5(body, blen, r.content_md5)) {
            free(body);
            req_clear(&r);
            rc = S4KV_ENOMEM;
            seterr(err, errlen, "out of memory");
            break;
        }
        r.body = (const uint8_t *)body;
        r.body_len = blen;
        sigv4_sha256_hex(body, blen, r.body_sha);
        r.content_type = "application/xml";
        r.sink = SINK_MEM;
        r.check = delete_check;
        req_run(&r);
        rc = req_result(&r, err, errlen);
        free(body);
    }
    free(batch);
    return rc;
}

/* Appends "&name=value" (value URI-encoded) to a query being built. */
static int q_add(char *q, size_t qlen, const char *name, const char *value)
{
    char *ev = sigv4_uri_encode(value, strlen(value), 0);
    if (!ev)
        return -1;
    size_t l = strlen(q);
    int n = snprintf(q + l, qlen - l, "%s%s=%s", l ? "&" : "", name, ev);
    free(ev);
    return n < 0 || (size_t)n >= qlen - l ? -1 : 0;
}

typedef struct list_page {
    s3_object **objs;
    size_t *n, *cap;
    int truncated;
    char *next;
} list_page;

/* Parses the page as part of the attempt, so a garbled 2xx answer is
 * retried like a transport error. */
static int list_check(s3_req *r)
{
    list_page *pg = r->chk_ctx;
    char perr[200];
    free(pg->next);
    pg->next = NULL;
    int rc = s3xml_parse_list(r->mem, r->mem_len, pg->objs, pg->n, pg->cap, &pg->truncated,
                              &pg->next, perr, sizeof perr);
    if (rc) {
        req_fail(r, rc, "%s", perr);
        r->chk_retry = rc == S4KV_ECORRUPT;
        return r->rc;
    }
    if (pg->truncated && (!pg->next || !*pg->next)) {
        req_fail(r, S4KV_ECORRUPT, "IsTruncated without NextContinuationToken");
        return r->rc;
    }
    return 0;
}

int s3_list(s3_client *cl, const char *prefix, s3_object **objs, size_t *n, char *err,
            size_t errlen)
{
    *objs = NULL;
    *n = 0;
    size_t cap = 0;
    char *token = NULL;
    int rc = 0;
    if (!prefix)
        prefix = "";
    for (;;) {
        s3_req r;
        size_t qlen = strlen(prefix) * 3 + (token ? strlen(token) * 3 : 0) + 128;
        if (req_init(&r, cl, "ListObjectsV2", "GET", NULL, prefix) ||
            !(r.query = calloc(1, qlen))) {
            req_clear(&r);
            rc = S4KV_ENOMEM;
            seterr(err, errlen, "out of memory");
            break;
        }
        char mk[16];
        snprintf(mk, sizeof mk, "%d", cl->list_page);
        /* sorted, as the canonical request will be anyway */
        if ((token && q_add(r.query, qlen, "continuation-token", token)) ||
            q_add(r.query, qlen, "encoding-type", "url") ||
            q_add(r.query, qlen, "list-type", "2") ||
            (cl->list_page && q_add(r.query, qlen, "max-keys", mk)) ||
            q_add(r.query, qlen, "prefix", prefix)) {
            req_clear(&r);
            rc = S4KV_ENOMEM;
            seterr(err, errlen, "out of memory");
            break;
        }
        list_page pg = {objs, n, &cap, 0, NULL};
        r.sink = SINK_MEM;
        r.check = list_check;
        r.chk_ctx = &pg;
        rc = req_run(&r);
        req_result(&r, err, errlen);
        free(token);
        token = pg.next;
        if (rc || !pg.truncated)
            break;
    }
    free(token);
    if (rc) {
        s3_objects_free(*objs, *n);
        *objs = NULL;
        *n = 0;
    }
    return rc;
}

void s3_objects_free(s3_object *objs, size_t n)
{
    if (!objs)
        return;
    for (size_t i = 0; i < n; i++)
        free(objs[i].key);
    free(objs);
}

/* ---- s3_run: many transfers on one curl multi handle */

enum { K_PUT = 1, K_GET, K_CREATE, K_PART, K_COMPLETE, K_ABORT };

typedef struct xjob {
    s3_xfer *x;
    int open, done, failed;
    int fd;
    char *tmp;
    char (*sha)[65]; /* SHA-256 of the body, or of each part (job_prepare) */
    /* multipart */
    int mpu;
    char *upload_id;
    uint64_t part_size;
    uint32_t nparts, next_part, parts_ok, inflight;
    char **etags;
    char *complete_body;
    int64_t created; /* wall clock (Unix seconds) before CreateMultipartUpload */
} xjob;

typedef struct sockctx sockctx;
typedef struct runner runner;

/* One socket curl asked us to watch: its uv_poll_t (curl_multi_assign'd). */
struct sockctx {
    uv_poll_t poll;
    runner *R;
    curl_socket_t fd;
    sockctx *prev, *next;
};

/* One batch: the jobs of an s3_run, or one request (req_run), on one curl
 * multi handle driven by one uv loop. */
struct runner {
    s3_client *cl;
    CURLM *m;
    xjob *jobs;
    size_t n, next_job, ndone;
    s3_req *single;   /* req_run's request (the caller owns it), or NULL */
    int single_started;
    s3_req **wait;    /* ready or waiting for their retry time */
    size_t nwait, capwait;
    s3_req *act;      /* requests on the multi handle (list through anext) */
    int active, maxp;
    uint64_t done_bytes, total_bytes;
    s3_progress_fn progress;
    void *ctx;
    /* the driver */
    uv_loop_t *loop;
    uv_timer_t ctimer; /* curl's one timer (CURLMOPT_TIMERFUNCTION) */
    uv_timer_t rtimer; /* retries due and queued follow-ups */
    sockctx *socks;    /* live uv_poll_t's */
    int started, closing, nclosing, multi_bad, on_loop;
    char broken[200];  /* the driver itself failed: every transfer fails with it */
    pthread_t thread;  /* the thread that last called curl_multi_socket_action */
    int thread_set;
    /* posted to an attached loop (s3_loop) */
    runner *next;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int posted, finished;
    int pdirty; /* progress to report on the caller's thread */
    uint64_t pdone, ptotal;
};

static void job_fail(xjob *j, int rc, const char *msg)
{
    if (!j->failed) {
        j->failed = 1;
        j->x->rc = rc;
        size_t l = strlen(msg);
        if (l >= sizeof j->x->err)
            l = sizeof j->x->err - 1;
        memcpy(j->x->err, msg, l);
        j->x->err[l] = 0;
    }
}

static void job_finish(runner *R, xjob *j)
{
    if (j->done)
        return;
    j->done = 1;
    R->ndone++;
    if (j->fd >= 0) {
        close(j->fd);
        j->fd = -1;
    }
    /* a GET_FILE target is made durable and renamed by job_settle, after the
     * batch and on the caller's thread, not on the loop's */
    if (j->tmp && j->failed) {
        unlink(j->tmp);
        free(j->tmp);
        j->tmp = NULL;
    }
    if (!j->failed) {
        j->x->rc = 0;
        j->x->err[0] = 0;
    }
    if (j->etags)
        for (uint32_t i = 0; i < j->nparts; i++)
            free(j->etags[i]);
    free(j->etags);
    j->etags = NULL;
    free(j->upload_id);
    j->upload_id = NULL;
    free(j->complete_body);
    j->complete_body = NULL;
    free(j->sha);
    j->sha = NULL;
}

/* After the batch: fdatasync and rename of a finished GET_FILE. */
static void job_settle(xjob *j)
{
    if (!j->tmp)
        return;
    if (!j->failed) {
        int fd = open(j->tmp, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (fdatasync(fd) && errno != EINVAL)) {
            char m[300];
            snprintf(m, sizeof m, "GET_FILE %s: fdatasync: %s", j->tmp, strerror(errno));
            job_fail(j, S4KV_EIO, m);
        }
        if (fd >= 0)
            close(fd);
    }
    if (!j->failed && rename(j->tmp, j->x->path)) {
        char m[300];
        snprintf(m, sizeof m, "GET_FILE: rename %s to %s: %s", j->tmp, j->x->path,
                 strerror(errno));
        job_fail(j, S4KV_EIO, m);
    }
    if (j->failed)
        unlink(j->tmp);
    free(j->tmp);
    j->tmp = NULL;
}

static int push_wait(runner *R, s3_req *r)
{
    if (R->nwait == R->capwait) {
        size_t nc = R->capwait ? R->capwait * 2 : 64;
        s3_req **w = realloc(R->wait, nc * sizeof *w);
        if (!w)
            return -1;
        R->wait = w;
        R->capwait = nc;
    }
    R->wait[R->nwait++] = r;
    return 0;
}

static void req_free(s3_req *r)
{
    if (r) {
        req_clear(r);
        free(r);
    }
}

static s3_req *new_req(runner *R, xjob *j, int kind, const char *op, const char *method)
{
    s3_req *r = malloc(sizeof *r);
    if (!r || req_init(r, R->cl, op, method, j->x->key, NULL)) {
        if (r)
            req_clear(r);
        free(r);
        job_fail(j, S4KV_ENOMEM, "out of memory");
        return NULL;
    }
    r->job = j;
    r->kind = kind;
    return r;
}

static int upload_query(s3_req *r, const char *upload_id, uint32_t part)
{
    size_t ql = strlen(upload_id) * 3 + 64;
    r->query = calloc(1, ql);
    if (!r->query)
        return -1;
    if (part) {
        char pn[16];
        snprintf(pn, sizeof pn, "%u", part);
        if (q_add(r->query, ql, "partNumber", pn))
            return -1;
    }
    return q_add(r->query, ql, "uploadId", upload_id);
}

static void start_req(runner *R, s3_req *r);
static void req_done(runner *R, s3_req *r);

static int etag_check(s3_req *r)
{
    if (!r->etag[0]) {
        req_fail(r, S4KV_EREMOTE, "HTTP %ld without an ETag header", r->status);
        return r->rc;
    }
    return 0;
}

static int complete_check(s3_req *r)
{
    char code[64], msg[200];
    if (s3xml_parse_error(r->mem, r->mem_len, code, sizeof code, msg, sizeof msg)) {
        req_fail(r, S4KV_EREMOTE, "HTTP %ld with an error body: %s (%s)", r->status, code, msg);
        for (int i = 0; RETRY_CODES[i]; i++)
            if (!strcmp(code, RETRY_CODES[i]))
                r->chk_retry = 1;
        return r->rc;
    }
    return 0;
}

static int get_file_check(s3_req *r)
{
    xjob *j = r->job;
    if (j->x->len != UINT64_MAX && r->got != j->x->len) {
        req_fail(r, S4KV_ECORRUPT, "got %" PRIu64 " bytes, expected %" PRIu64, r->got, j->x->len);
        return r->rc;
    }
    return 0;
}

/* S3's ETag of a completed multipart upload: MD5 of the parts' binary MD5s,
 * "-", the part count. 0, or -1 when a part ETag is not a plain MD5. */
static int multipart_etag(char *const *etags, uint32_t n, char *out, size_t outlen)
{
    unsigned char *bin = malloc((size_t)n * 16 + 1);
    if (!bin)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        const char *e = etags[i];
        if (*e == '"')
            e++;
        for (int k = 0; k < 16; k++) {
            unsigned v;
            if (sscanf(e + 2 * k, "%2x", &v) != 1) {
                free(bin);
                return -1;
            }
            bin[i * 16 + (uint32_t)k] = (unsigned char)v;
        }
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = EVP_Digest(bin, (size_t)n * 16, md, &mdlen, EVP_md5(), NULL) && mdlen == 16;
    free(bin);
    if (!ok)
        return -1;
    size_t o = (size_t)snprintf(out, outlen, "\"");
    for (int i = 0; i < 16 && o < outlen; i++)
        o += (size_t)snprintf(out + o, outlen - o, "%02x", md[i]);
    if (o < outlen)
        snprintf(out + o, outlen - o, "-%u\"", n);
    return 0;
}

/* A CompleteMultipartUpload that was retried and failed may have succeeded
 * on an earlier attempt whose answer was lost (real S3 then says
 * NoSuchUpload; s3rver says InternalError). The object counts as ours when
 * it has our size and either the multipart ETag of our parts or a
 * Last-Modified no older than our CreateMultipartUpload (less 15 minutes of
 * clock skew). Segment keys never get different bytes of the same length,
 * so this cannot mistake an old object for the new one in s4kv. */
static int completed_anyway(runner *R, xjob *j)
{
    uint64_t sz = 0;
    int64_t mt = -1;
    char etag[128] = "", want[128] = "", herr[300];
    if (head_info(R->cl, j->x->key, &sz, etag, sizeof etag, &mt, herr, sizeof herr) ||
        sz != j->x->len)
        return 0;
    if (!multipart_etag(j->etags, j->nparts, want, sizeof want) && !strcmp(etag, want))
        return 1;
    return mt >= 0 && mt >= j->created - 900;
}

static int create_check(s3_req *r)
{
    xjob *j = r->job;
    char perr[200];
    free(j->upload_id);
    j->upload_id = NULL;
    int rc = s3xml_parse_upload_id(r->mem, r->mem_len, &j->upload_id, perr, sizeof perr);
    if (rc) {
        req_fail(r, rc, "HTTP %ld: %s", r->status, perr);
        r->chk_retry = rc == S4KV_ECORRUPT;
        return r->rc;
    }
    return 0;
}

static s3_req *part_req(runner *R, xjob *j)
{
    uint32_t pn = ++j->next_part;
    uint64_t off = (uint64_t)(pn - 1) * j->part_size;
    uint64_t plen = j->x->len - off < j->part_size ? j->x->len - off : j->part_size;
    s3_req *r = new_req(R, j, K_PART, "UploadPart", "PUT");
    if (!r)
        return NULL;
    r->part = pn;
    snprintf(r->detail, sizeof r->detail, " (part %u of %u)", pn, j->nparts);
    if (upload_query(r, j->upload_id, pn)) {
        req_free(r);
        job_fail(j, S4KV_ENOMEM, "out of memory");
        return NULL;
    }
    r->body_len = plen;
    r->body_off = off;
    if (j->x->op == S3_XPUT_BUF)
        r->body = j->x->buf;
    else
        r->body_fd = j->fd;
    memcpy(r->body_sha, j->sha[pn - 1], sizeof r->body_sha); /* job_prepare */
    r->check = etag_check;
    j->inflight++;
    return r;
}

/* Multipart layout of a PUT job: j->mpu, part_size, nparts. */
static void job_layout(runner *R, xjob *j)
{
    uint64_t len = j->x->len;
    j->mpu = len >= R->cl->cfg.multipart_threshold && len > 0;
    if (!j->mpu) {
        j->nparts = 1;
        return;
    }
    uint64_t ps = R->cl->cfg.part_size;
    while ((len + ps - 1) / ps > MAX_PARTS)
        ps *= 2;
    j->part_size = ps;
    j->nparts = (uint32_t)((len + ps - 1) / ps);
}

/* On the caller's thread, before the batch goes to a loop: hashes the body
 * of a PUT job (or each of its parts) into j->sha, so the loop thread only
 * moves bytes. A read error fails the job (its message names the request the
 * hash was for); a job that cannot even be opened is left to job_open, which
 * reports it. */
static void job_prepare(runner *R, xjob *j)
{
    s3_xfer *x = j->x;
    if ((x->op != S3_XPUT_FILE && x->op != S3_XPUT_BUF) || !x->key || !*x->key ||
        (x->op == S3_XPUT_BUF && !x->buf && x->len))
        return;
    int fd = -1;
    if (x->op == S3_XPUT_FILE) {
        struct stat st;
        fd = x->path ? open(x->path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd < 0 || fstat(fd, &st) || (uint64_t)st.st_size < x->len) {
            if (fd >= 0)
                close(fd);
            return;
        }
    }
    job_layout(R, j);
    j->sha = calloc(j->nparts, sizeof *j->sha);
    if (!j->sha) {
        job_fail(j, S4KV_ENOMEM, "out of memory");
    } else {
        for (uint32_t i = 0; i < j->nparts && !j->failed; i++) {
            uint64_t off = (uint64_t)i * j->part_size;
            uint64_t plen = !j->mpu ? x->len : x->len - off < j->part_size ? x->len - off
                                                                          : j->part_size;
            if (x->op == S3_XPUT_BUF) {
                sigv4_sha256_hex(x->buf ? (const uint8_t *)x->buf + off : (const uint8_t *)"",
                                 (size_t)plen, j->sha[i]);
                continue;
            }
            int en = 0;
            if (!hex_sha256_fd(fd, off, plen, j->sha[i], &en))
                continue;
            s3_req *r = j->mpu ? new_req(R, j, K_PART, "UploadPart", "PUT")
                               : new_req(R, j, K_PUT, "PUT", "PUT");
            if (r) {
                if (j->mpu)
                    snprintf(r->detail, sizeof r->detail, " (part %u of %u)", i + 1, j->nparts);
                req_fail(r, S4KV_EIO, "reading %s: %s", x->path,
                         en ? strerror(en) : "file shorter than the length to upload");
                job_fail(j, r->rc, r->err);
                req_free(r);
            }
        }
    }
    if (fd >= 0)
        close(fd);
}

/* Opens job j and starts (or queues) its first request; failures finish it. */
static void job_open(runner *R, xjob *j)
{
    s3_xfer *x = j->x;
    j->open = 1;
    char m[300];
    if (j->failed) { /* in job_prepare */
        job_finish(R, j);
        return;
    }
    if (!x->key || !*x->key) {
        job_fail(j, S4KV_EINVAL, "transfer without a key");
        job_finish(R, j);
        return;
    }
    s3_req *r = NULL;
    if (x->op == S3_XPUT_FILE || x->op == S3_XPUT_BUF) {
        if (x->op == S3_XPUT_FILE) {
            j->fd = x->path ? open(x->path, O_RDONLY | O_CLOEXEC) : -1;
            struct stat st;
            if (j->fd < 0 || fstat(j->fd, &st)) {
                snprintf(m, sizeof m, "PUT s3://%s/%s: open %s: %s", R->cl->bucket, x->key,
                         x->path ? x->path : "(no path)", strerror(errno));
                job_fail(j, S4KV_EIO, m);
                job_finish(R, j);
                return;
            }
            if ((uint64_t)st.st_size < x->len) {
                snprintf(m, sizeof m, "PUT s3://%s/%s: %s has %jd bytes, fewer than the %" PRIu64
                         " to upload", R->cl->bucket, x->key, x->path, (intmax_t)st.st_size, x->len);
                job_fail(j, S4KV_EIO, m);
                job_finish(R, j);
                return;
            }
        } else if (!x->buf && x->len) {
            job_fail(j, S4KV_EINVAL, "PUT_BUF without a buffer");
            job_finish(R, j);
            return;
        }
        if (!j->sha) { /* the file appeared or grew after job_prepare looked */
            snprintf(m, sizeof m, "PUT s3://%s/%s: %s changed while it was being hashed",
                     R->cl->bucket, x->key, x->path ? x->path : "(no path)");
            job_fail(j, S4KV_EIO, m);
            job_finish(R, j);
            return;
        }
        if (j->mpu) {
            j->etags = calloc(j->nparts, sizeof *j->etags);
            if (!j->etags || !(r = new_req(R, j, K_CREATE, "CreateMultipartUpload", "POST")) ||
                !(r->query = strdup("uploads"))) {
                req_free(r);
                job_fail(j, S4KV_ENOMEM, "out of memory");
                job_finish(R, j);
                return;
            }
            j->created = (int64_t)time(NULL);
            r->sink = SINK_MEM;
            r->check = create_check;
            r->content_type = "application/octet-stream";
        } else {
            if (!(r = new_req(R, j, K_PUT, "PUT", "PUT"))) {
                job_finish(R, j);
                return;
            }
            r->body_len = x->len;
            r->content_type = "application/octet-stream";
            if (x->op == S3_XPUT_BUF)
                r->body = x->buf;
            else
                r->body_fd = j->fd;
            memcpy(r->body_sha, j->sha[0], sizeof r->body_sha);
        }
    } else if (x->op == S3_XGET_FILE) {
        size_t pl = x->path ? strlen(x->path) + 5 : 0;
        j->tmp = pl ? malloc(pl) : NULL;
        if (!j->tmp) {
            job_fail(j, x->path ? S4KV_ENOMEM : S4KV_EINVAL, x->path ? "out of memory" : "GET_FILE without a path");
            job_finish(R, j);
            return;
        }
        snprintf(j->tmp, pl, "%s.tmp", x->path);
        j->fd = open(j->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (j->fd < 0) {
            snprintf(m, sizeof m, "GET s3://%s/%s: create %s: %s", R->cl->bucket, x->key, j->tmp,
                     strerror(errno));
            free(j->tmp);
            j->tmp = NULL; /* nothing to unlink */
            job_fail(j, S4KV_EIO, m);
            job_finish(R, j);
            return;
        }
        if (!(r = new_req(R, j, K_GET, "GET", "GET"))) {
            job_finish(R, j);
            return;
        }
        r->sink = SINK_FD;
        r->out_fd = j->fd;
        r->out_path = j->tmp;
        r->check = get_file_check;
    } else {
        job_fail(j, S4KV_EINVAL, "unknown transfer op");
        job_finish(R, j);
        return;
    }
    start_req(R, r);
}

static void act_unlink(runner *R, s3_req *r)
{
    if (r->aprev)
        r->aprev->anext = r->anext;
    else
        R->act = r->anext;
    if (r->anext)
        r->anext->aprev = r->aprev;
    r->anext = r->aprev = NULL;
    R->active--;
}

static void start_req(runner *R, s3_req *r)
{
    CURL *h = pool_get(R->cl);
    if (!h) {
        req_fail(r, S4KV_ENOMEM, "cannot create a curl handle");
        req_done(R, r);
        return;
    }
    if (req_setup(r, h)) {
        pool_put(R->cl, h);
        r->h = NULL;
        req_done(R, r);
        return;
    }
    /* adding only arms curl's timer (timer_cb); the transfer starts from
     * on_ctimer, never from inside this call */
    if (curl_multi_add_handle(R->m, h) != CURLM_OK) {
        pool_put(R->cl, h);
        r->h = NULL;
        req_fail(r, S4KV_ENOMEM, "curl_multi_add_handle failed");
        req_done(R, r);
        return;
    }
    r->aprev = NULL;
    r->anext = R->act;
    if (R->act)
        R->act->aprev = r;
    R->act = r;
    R->active++;
}

static void abort_mpu(runner *R, xjob *j)
{
    s3_req *r = new_req(R, j, K_ABORT, "AbortMultipartUpload", "DELETE");
    if (!r || upload_query(r, j->upload_id, 0)) {
        req_free(r);
        job_finish(R, j);
        return;
    }
    if (push_wait(R, r)) {
        req_free(r);
        job_finish(R, j);
    }
}

/* Reports progress on the caller's thread (s3.h): a batch on an attached
 * loop hands the numbers to its waiting caller (runner_exec), which calls the
 * callback; reports in between are coalesced, the last one is never lost. */
static void progress(runner *R)
{
    if (!R->progress)
        return;
    if (!R->posted) {
        R->progress(R->ctx, R->done_bytes, R->total_bytes);
        return;
    }
    pthread_mutex_lock(&R->mu);
    R->pdone = R->done_bytes;
    R->ptotal = R->total_bytes;
    R->pdirty = 1;
    pthread_cond_signal(&R->cv);
    pthread_mutex_unlock(&R->mu);
}

/* A request reached its final state (r->rc). Advances its job; frees r. */
static void req_done(runner *R, s3_req *r)
{
    if (r == R->single) { /* req_run: the caller reads r */
        R->ndone++;
        return;
    }
    xjob *j = r->job;
    switch (r->kind) {
    case K_PUT:
    case K_GET:
        if (r->rc)
            job_fail(j, r->rc, r->err);
        else if (r->kind == K_GET) {
            R->done_bytes += r->got;
            if (j->x->len == UINT64_MAX)
                R->total_bytes += r->got;
        } else {
            R->done_bytes += r->body_len;
        }
        job_finish(R, j);
        break;
    case K_CREATE:
        if (r->rc) {
            job_fail(j, r->rc, r->err);
            job_finish(R, j);
        }
        break;
    case K_PART:
        j->inflight--;
        if (r->rc) {
            job_fail(j, r->rc, r->err);
        } else {
            R->done_bytes += r->body_len;
            j->etags[r->part - 1] = strdup(r->etag);
            if (!j->etags[r->part - 1])
                job_fail(j, S4KV_ENOMEM, "out of memory");
            else
                j->parts_ok++;
        }
        if (j->failed && j->inflight == 0) {
            abort_mpu(R, j);
        } else if (!j->failed && j->parts_ok == j->nparts) {
            size_t blen = 0;
            s3_req *c = NULL;
            j->complete_body = s3xml_complete_body(j->etags, j->nparts, &blen);
            if (!j->complete_body || !(c = new_req(R, j, K_COMPLETE, "CompleteMultipartUpload", "POST")) ||
                upload_query(c, j->upload_id, 0) || push_wait(R, c)) {
                req_free(c);
                job_fail(j, S4KV_ENOMEM, "out of memory");
                abort_mpu(R, j);
                break;
            }
            snprintf(c->detail, sizeof c->detail, " (%u parts)", j->nparts);
            c->body = (const uint8_t *)j->complete_body;
            c->body_len = blen;
            sigv4_sha256_hex(j->complete_body, blen, c->body_sha);
            c->content_type = "application/xml";
            c->sink = SINK_MEM;
            c->check = complete_check;
        }
        break;
    case K_COMPLETE:
        if (r->rc && r->attempt > 1 && r->rc != S4KV_ENOMEM && completed_anyway(R, j))
            r->rc = 0;
        if (r->rc) {
            job_fail(j, r->rc, r->err);
            abort_mpu(R, j);
        } else {
            job_finish(R, j);
        }
        break;
    case K_ABORT:
        job_finish(R, j); /* the job's own error stands */
        break;
    }
    req_free(r);
    progress(R);
}


/* ---- The driver: curl's multi-socket interface on a libuv loop
 *
 * The pattern of libcurl's docs/examples/multi-uv.c and
 * curl_multi_socket_action(3): curl says which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION -> sock_cb: one uv_poll_t per socket, found again
 * through curl_multi_assign) and when to call it back without socket
 * activity (CURLMOPT_TIMERFUNCTION -> timer_cb: one uv_timer_t, -1 stops it,
 * 0 fires on the loop's next timer pass); the loop calls
 * curl_multi_socket_action for ready sockets (on_poll) and on expiry
 * (on_ctimer), and after each call we collect finished transfers with
 * curl_multi_info_read (pump). curl's callbacks only (re)arm handles: they
 * never call back into curl, so nothing re-enters curl_multi_socket_action.
 * A second uv_timer_t (rtimer) starts retries when their backoff is over. */

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp);
static int timer_cb(CURLM *m, long timeout_ms, void *userp);
static void pump(runner *R);

static CURLM *multi_get(s3_client *cl)
{
    CURLM *m = NULL;
    pthread_mutex_lock(&cl->mu);
    if (cl->nmpool)
        m = cl->mpool[--cl->nmpool];
    pthread_mutex_unlock(&cl->mu);
    if (m || !(m = curl_multi_init()))
        return m;
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, timer_cb);
    /* keep a batch's connections for the next batch (the default keeps 4 per
     * easy handle added, and a batch of one has one) */
    long keep = cl->cfg.max_parallel > 4 ? cl->cfg.max_parallel : 4;
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, keep);
    return m;
}

static void multi_put(s3_client *cl, CURLM *m)
{
    pthread_mutex_lock(&cl->mu);
    if (cl->nmpool < MPOOL_MAX) {
        cl->mpool[cl->nmpool++] = m;
        m = NULL;
    }
    pthread_mutex_unlock(&cl->mu);
    if (m)
        curl_multi_cleanup(m);
}

static const char *xop_name(const s3_xfer *x)
{
    return x->op == S3_XGET_FILE ? "GET" : "PUT";
}

/* The driver failed (R->broken): every request and job still open fails with
 * that message; multipart uploads in flight are left for the bucket's
 * lifecycle rule (nothing can be sent to abort them). */
static void fail_all(runner *R)
{
    while (R->act) {
        s3_req *r = R->act;
        if (r->h) {
            curl_multi_remove_handle(R->m, r->h);
            pool_put(R->cl, r->h);
            r->h = NULL;
        }
        act_unlink(R, r);
        if (r != R->single)
            req_free(r);
    }
    for (size_t i = 0; i < R->nwait; i++)
        if (R->wait[i] != R->single)
            req_free(R->wait[i]);
    R->nwait = 0;
    if (R->single && R->ndone < R->n) {
        req_fail(R->single, S4KV_EIO, "%s", R->broken);
        R->single_started = 1;
        R->ndone = R->n;
    }
    for (size_t i = 0; R->jobs && i < R->n; i++) {
        xjob *j = &R->jobs[i];
        j->open = 1;
        if (!j->done) {
            char m[400];
            snprintf(m, sizeof m, "%s s3://%s/%s: %s", xop_name(j->x), R->cl->bucket,
                     j->x->key ? j->x->key : "", R->broken);
            job_fail(j, S4KV_EIO, m);
            job_finish(R, j);
        }
    }
    R->next_job = R->n;
}

/* Starts what may start: due retries and follow-ups (oldest first), parts of
 * open multipart uploads, new jobs; at most maxp requests on the multi. */
static void schedule(runner *R)
{
    if (R->broken[0]) {
        fail_all(R);
        return;
    }
    uint64_t now = now_ms();
    for (size_t i = 0; i < R->nwait && R->active < R->maxp;) {
        if (R->wait[i]->not_before <= now) {
            s3_req *r = R->wait[i];
            memmove(&R->wait[i], &R->wait[i + 1], (R->nwait - i - 1) * sizeof *R->wait);
            R->nwait--;
            start_req(R, r);
        } else {
            i++;
        }
    }
    for (size_t i = 0; i < R->next_job && R->active < R->maxp; i++) {
        xjob *j = &R->jobs[i];
        while (!j->done && !j->failed && j->mpu && j->upload_id && j->next_part < j->nparts &&
               R->active < R->maxp) {
            s3_req *r = part_req(R, j);
            if (!r) {
                if (j->inflight == 0)
                    abort_mpu(R, j);
                break;
            }
            start_req(R, r);
        }
    }
    if (R->single && !R->single_started) {
        R->single_started = 1;
        start_req(R, R->single);
    }
    while (R->jobs && R->active < R->maxp && R->next_job < R->n)
        job_open(R, &R->jobs[R->next_job++]);
}

/* Collects the transfers curl finished: retry (after a backoff) or done. */
static void finish_msgs(runner *R)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(R->m, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *h = msg->easy_handle;
        CURLcode cc = msg->data.result; /* msg is gone after remove_handle */
        char *priv = NULL;
        curl_easy_getinfo(h, CURLINFO_PRIVATE, &priv);
        s3_req *r = (s3_req *)(void *)priv;
        curl_multi_remove_handle(R->m, h);
        act_unlink(R, r);
        long delay = 0;
        int v = req_finish(r, cc, &delay);
        pool_put(R->cl, h);
        r->h = NULL;
        if (v == V_RETRY) {
            r->not_before = now_ms() + (uint64_t)delay;
            if (push_wait(R, r)) {
                req_fail(r, S4KV_ENOMEM, "out of memory");
                req_done(R, r);
            }
        } else {
            req_done(R, r);
        }
    }
}

static void closed_one(runner *R)
{
    if (--R->nclosing > 0 || !R->closing)
        return;
    if (R->posted) { /* the caller waits in runner_exec; R is gone after the unlock */
        pthread_mutex_lock(&R->mu);
        R->finished = 1;
        pthread_cond_signal(&R->cv);
        pthread_mutex_unlock(&R->mu);
    }
}

static void on_sock_closed(uv_handle_t *h)
{
    sockctx *c = h->data;
    runner *R = c->R;
    free(c);
    closed_one(R);
}

static void on_timer_closed(uv_handle_t *h)
{
    closed_one(h->data);
}

static void sock_close(runner *R, sockctx *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        R->socks = c->next;
    if (c->next)
        c->next->prev = c->prev;
    /* uv_close stops the poll (epoll forgets the fd) now, before curl closes
     * the socket and maybe reuses its number; c is freed in the callback */
    R->nclosing++;
    uv_close((uv_handle_t *)&c->poll, on_sock_closed);
}

/* All jobs done: hands the multi back (or drops it when curl still watches a
 * socket: its uv_poll_t belongs to this loop) and closes the handles. */
static void teardown(runner *R)
{
    R->closing = 1;
    if (R->active || R->nwait) { /* not expected; never leave a request behind */
        snprintf(R->broken, sizeof R->broken, "internal error: batch ended with requests open");
        fail_all(R);
    }
    while (R->socks) {
        curl_multi_assign(R->m, R->socks->fd, NULL);
        sock_close(R, R->socks);
        R->multi_bad = 1;
    }
    curl_multi_setopt(R->m, CURLMOPT_SOCKETDATA, NULL);
    curl_multi_setopt(R->m, CURLMOPT_TIMERDATA, NULL);
    if (R->multi_bad)
        curl_multi_cleanup(R->m);
    else
        multi_put(R->cl, R->m);
    R->m = NULL;
    s3_client *cl = R->cl;
    pthread_mutex_lock(&cl->mu);
    if (R->on_loop)
        cl->dbg.loop_batches++;
    else
        cl->dbg.private_batches++;
    cl->dbg.multis_dropped += (uint64_t)R->multi_bad;
    if (R->thread_set) {
        cl->dbg.last_thread = R->thread;
        cl->dbg.have_thread = 1;
    }
    pthread_mutex_unlock(&cl->mu);
    R->nclosing += 2;
    uv_close((uv_handle_t *)&R->ctimer, on_timer_closed);
    uv_close((uv_handle_t *)&R->rtimer, on_timer_closed);
}

static void on_rtimer(uv_timer_t *t)
{
    pump(t->data);
}

/* After any event: collect, start what may start, then either end the batch
 * or arm the retry timer for the first waiting request. */
static void pump(runner *R)
{
    if (R->closing)
        return;
    finish_msgs(R);
    schedule(R);
    if (R->ndone == R->n && R->active == 0) {
        teardown(R);
        return;
    }
    if (R->nwait && R->active < R->maxp) {
        uint64_t now = now_ms(), first = UINT64_MAX;
        for (size_t i = 0; i < R->nwait; i++)
            if (R->wait[i]->not_before < first)
                first = R->wait[i]->not_before;
        uv_timer_start(&R->rtimer, on_rtimer, first > now ? first - now : 0, 0);
    } else {
        uv_timer_stop(&R->rtimer);
    }
}

static void drive(runner *R, curl_socket_t s, int flags)
{
    int running = 0;
    R->thread = pthread_self();
    R->thread_set = 1;
    CURLMcode mc = curl_multi_socket_action(R->m, s, flags, &running);
    if (mc != CURLM_OK && !R->broken[0]) {
        snprintf(R->broken, sizeof R->broken, "curl_multi_socket_action: %s",
                 curl_multi_strerror(mc));
        R->multi_bad = 1;
    }
    pump(R);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    sockctx *c = p->data;
    int flags = status < 0 ? CURL_CSELECT_ERR : 0;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    drive(c->R, c->fd, flags);
}

static void on_ctimer(uv_timer_t *t)
{
    drive(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)e;
    runner *R = userp;
    sockctx *c = socketp;
    if (!R) /* between batches, or a multi being dropped */
        return 0;
    if (what == CURL_POLL_REMOVE) {
        if (c) {
            curl_multi_assign(R->m, s, NULL);
            sock_close(R, c);
        }
        return 0;
    }
    int rc = 0;
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c || (rc = uv_poll_init_socket(R->loop, &c->poll, s)) != 0) {
            free(c);
            if (!R->broken[0])
                snprintf(R->broken, sizeof R->broken, "uv_poll_init_socket: %s",
                         rc ? uv_strerror(rc) : "out of memory");
            R->multi_bad = 1;
            return -1;
        }
        c->R = R;
        c->fd = s;
        c->poll.data = c;
        c->next = R->socks;
        if (R->socks)
            R->socks->prev = c;
        R->socks = c;
        curl_multi_assign(R->m, s, c);
    }
    int ev = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    if ((rc = uv_poll_start(&c->poll, ev, on_poll)) != 0) {
        if (!R->broken[0])
            snprintf(R->broken, sizeof R->broken, "uv_poll_start: %s", uv_strerror(rc));
        R->multi_bad = 1;
        return -1;
    }
    return 0;
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    runner *R = userp;
    if (!R || R->closing)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&R->ctimer);
    else /* 0: on the next timer pass, not from inside curl */
        uv_timer_start(&R->ctimer, on_ctimer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* On the thread of R->loop. */
static void runner_start(runner *R)
{
    uv_timer_init(R->loop, &R->ctimer);
    uv_timer_init(R->loop, &R->rtimer);
    R->ctimer.data = R->rtimer.data = R;
    curl_multi_setopt(R->m, CURLMOPT_SOCKETDATA, R);
    curl_multi_setopt(R->m, CURLMOPT_TIMERDATA, R);
    pump(R);
}

/* ---- The attached loop (s3_loop) */

struct s3_loop {
    uv_loop_t *loop;
    uv_async_t async;
    pthread_t thread;     /* the loop's thread (the one that called s3_loop_new) */
    pthread_mutex_t mu;   /* the queue and closed */
    runner *head, *tail;  /* posted batches not yet started */
    int closed;
};

static void on_post(uv_async_t *a)
{
    s3_loop *x = a->data;
    for (;;) {
        pthread_mutex_lock(&x->mu);
        runner *R = x->head;
        if (R && !(x->head = R->next))
            x->tail = NULL;
        pthread_mutex_unlock(&x->mu);
        if (!R)
            break;
        R->loop = x->loop;
        R->on_loop = 1;
        runner_start(R);
    }
}

int s3_loop_new(uv_loop_t *loop, s3_loop **out, char *err, size_t errlen)
{
    *out = NULL;
    s3_loop *x = calloc(1, sizeof *x);
    if (!x) {
        seterr(err, errlen, "S3 loop: out of memory");
        return S4KV_ENOMEM;
    }
    int rc = uv_async_init(loop, &x->async, on_post);
    if (rc) {
        free(x);
        seterr(err, errlen, "S3 loop: uv_async_init: %s", uv_strerror(rc));
        return S4KV_EIO;
    }
    pthread_mutex_init(&x->mu, NULL);
    x->loop = loop;
    x->thread = pthread_self();
    x->async.data = x;
    *out = x;
    return 0;
}

static void on_s3_loop_closed(uv_handle_t *h)
{
    s3_loop *x = h->data;
    pthread_mutex_destroy(&x->mu);
    free(x);
}

void s3_loop_close(s3_loop *x)
{
    if (!x)
        return;
    pthread_mutex_lock(&x->mu);
    x->closed = 1;
    pthread_mutex_unlock(&x->mu);
    on_post(&x->async); /* batches already posted still run to their end on the loop */
    uv_close((uv_handle_t *)&x->async, on_s3_loop_closed);
}

void s3_client_attach_loop(s3_client *cl, s3_loop *x)
{
    pthread_mutex_lock(&cl->mu);
    cl->xloop = x;
    pthread_mutex_unlock(&cl->mu);
}

void s3_client_debug(s3_client *cl, s3_debug *d)
{
    pthread_mutex_lock(&cl->mu);
    *d = cl->dbg;
    pthread_mutex_unlock(&cl->mu);
}

/* Runs R to its end: posted to the attached loop when there is one and this
 * is another thread, else on a private loop here. */
static void runner_exec(runner *R)
{
    s3_client *cl = R->cl;
    if (!(R->m = multi_get(cl))) {
        snprintf(R->broken, sizeof R->broken, "cannot create a curl multi handle");
        fail_all(R);
        return;
    }
    pthread_mutex_lock(&cl->mu);
    s3_loop *x = cl->xloop;
    pthread_mutex_unlock(&cl->mu);
    if (x && !pthread_equal(x->thread, pthread_self())) {
        pthread_mutex_init(&R->mu, NULL);
        pthread_cond_init(&R->cv, NULL);
        R->posted = 1;
        pthread_mutex_lock(&x->mu);
        int ok = !x->closed;
        if (ok) {
            if (x->tail)
                x->tail->next = R;
            else
                x->head = R;
            x->tail = R;
            uv_async_send(&x->async);
        }
        pthread_mutex_unlock(&x->mu);
        if (ok) {
            pthread_mutex_lock(&R->mu);
            for (;;) {
                if (R->pdirty) {
                    uint64_t d = R->pdone, t = R->ptotal;
                    R->pdirty = 0;
                    pthread_mutex_unlock(&R->mu);
                    R->progress(R->ctx, d, t);
                    pthread_mutex_lock(&R->mu);
                    continue;
                }
                if (R->finished)
                    break;
                pthread_cond_wait(&R->cv, &R->mu);
            }
            pthread_mutex_unlock(&R->mu);
        }
        pthread_cond_destroy(&R->cv);
        pthread_mutex_destroy(&R->mu);
        R->posted = 0;
        if (ok)
            return;
    }
    uv_loop_t loop;
    int rc = uv_loop_init(&loop);
    if (rc) {
        snprintf(R->broken, sizeof R->broken, "uv_loop_init: %s", uv_strerror(rc));
        fail_all(R);
        multi_put(cl, R->m);
        R->m = NULL;
        return;
    }
    R->loop = &loop;
    runner_start(R);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (!R->closing) { /* the loop ran dry with work left: fail it, do not hang */
        snprintf(R->broken, sizeof R->broken,
                 "internal error: the event loop stopped with %d request(s) open", R->active);
        R->multi_bad = 1;
        pump(R);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&loop);
}

static int req_run(s3_req *r)
{
    runner R = {.cl = r->cl, .n = 1, .maxp = 1, .single = r};
    runner_exec(&R);
    free(R.wait);
    return r->rc;
}

int s3_run(s3_client *cl, s3_xfer *x, size_t n, s3_progress_fn progress_fn, void *ctx)
{
    if (n == 0)
        return 0;
    runner R = {.cl = cl, .n = n, .maxp = cl->cfg.max_parallel, .progress = progress_fn,
                .ctx = ctx};
    R.jobs = calloc(n, sizeof *R.jobs);
    if (!R.jobs) {
        for (size_t i = 0; i < n; i++) {
            x[i].rc = S4KV_ENOMEM;
            snprintf(x[i].err, sizeof x[i].err, "out of memory");
        }
        return S4KV_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        R.jobs[i].x = &x[i];
        R.jobs[i].fd = -1;
        x[i].rc = 0;
        x[i].err[0] = 0;
        if (x[i].op != S3_XGET_FILE || x[i].len != UINT64_MAX)
            R.total_bytes += x[i].len;
    }
    for (size_t i = 0; i < n; i++)
        job_prepare(&R, &R.jobs[i]); /* hashing stays on the caller's thread */
    progress(&R);
    runner_exec(&R);
    for (size_t i = 0; i < n; i++)
        job_settle(&R.jobs[i]);
    free(R.wait);
    free(R.jobs);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = x[i].rc;
    return rc;
}
