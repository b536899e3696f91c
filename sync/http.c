/*
 * http.c - the sync loop's HTTP/1.1 server: libuv TCP, requests parsed by
 * http-parser (Debian's libhttp-parser-dev), answered from the engine.
 *
 *   GET|HEAD /v1/kv/{key}   the value, raw (application/octet-stream); 404
 *   PUT /v1/kv/{key}        stores the body (raw bytes) -> 204
 *   DELETE /v1/kv/{key}     -> 204 (also when the key was absent)
 *   GET /v1/keys?prefix=P   live keys in key order, one percent-encoded key
 *                           per line (text/plain), or with "Accept:
 *                           application/json" a JSON array of the same
 *                           percent-encoded strings. Optional: after=K
 *                           (percent-encoded) starts after key K, limit=N
 *                           (1 .. 2^64-1) stops after N keys; a client
 *                           pages with limit=N&after=<last key it got>
 *                           until a page holds fewer than N keys.
 *   POST /v1/batch          an atomic batch of puts and deletes in the binary
 *                           framing below, committed with one s4kv_write -> 204
 *   GET /healthz            "ok" (never needs the token)
 *   GET /metrics            Prometheus text format
 * Keys in paths and the prefix are percent-decoded ("%2F" is '/', '+' is a
 * plus); a '%' not followed by two hex digits is 400.
 *
 * The batch framing (POST /v1/batch, any Content-Type; binary so that the
 * library needs no JSON parser): the body is one or more records, back to
 * back, each
 *     op         u8      1 = put, 2 = delete
 *     key_len    u32 LE  1 .. 65535
 *     value_len  u32 LE  0 .. 256 MiB for a put; 0 for a delete
 *     key        key_len bytes
 *     value      value_len bytes
 * and nothing after the last record. Every length is checked before any
 * byte is used: an unknown op, a key length of 0 or over 65535, a value
 * length over 256 MiB or on a delete, a record cut short, or an empty body
 * is 400 with a message naming the byte offset of the offending record
 * field ("batch: record 3 at byte offset 40: ..."), and nothing is written.
 * The whole body counts against max_body (413). A later record for the same
 * key wins, as in s4kv_write. The batch is committed with one s4kv_write on
 * the thread pool, like a PUT: all of it or none of it.
 *
 * A key listing is a snapshot of the matching keys taken when it starts
 * (s4kv_iter: their bytes plus 16 bytes each, held for the listing's
 * duration), sent in pages of list_page_bytes (default 256 KiB) of encoded
 * keys, each encoded by a job of its own on the thread pool. A listing that
 * fits one page is answered with a Content-Length, as before; a longer one
 * with "Transfer-Encoding: chunked", one chunk a page, and the next page is
 * encoded only once the connection's queued output is under 1 MiB: the
 * memory of a listing of any size is its snapshot plus about two pages,
 * never the whole response. (HEAD of a longer listing: the chunked head.)
 *
 * Where the engine runs: gets on the loop thread (the keydir lookup and a
 * read of a mapped segment take microseconds), puts, deletes and key
 * listings on libuv's thread pool (a put waits for its fdatasync in the
 * default durability mode, and concurrent puts from several connections are
 * group-committed by the engine there). A connection whose request is on the
 * pool is paused: its parser stops and unread bytes wait, so pipelined
 * responses keep their order.
 *
 * Limits (invariants): a request body over max_body is refused with 413
 * before it is read (Content-Length) or as soon as it passes the limit
 * (chunked); all request bodies buffered at once stay under 4 x max_body
 * (503 past that); request heads over http-parser's 80 KiB get 431;
 * connections past max_connections get 503 and are closed; a connection
 * silent for idle_timeout_ms (CR and LF between requests, which http-parser
 * skips, do not count as activity), or whose request does not arrive whole
 * within request_timeout_ms, gets 408 (mid-request) or is closed; responses queued
 * but unread past 8 MiB stop the connection's parsing until they drain.
 * Memory per connection is therefore bounded by its body and its queued
 * responses.
 */
#include "daemon.h"
#include "internal.h"

#include <http_parser.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define READ_BUF (64u * 1024)
#define WRITE_HIGH (8u << 20)
#define WRITE_LOW (1u << 20)
#define HDR_VALUE_MAX 8192
#define LIST_PAGE (256u * 1024) /* default bytes of encoded keys a listing page */

enum route { R_NONE, R_HEALTH, R_METRICS, R_KEYS, R_KV, R_BATCH };
enum op { OP_GET, OP_PUT, OP_DELETE, OP_KEYS, OP_BATCH, OP_OTHER, OP_N };
static const char *const op_names[OP_N] = {"get", "put", "delete", "keys", "batch", "other"};
enum hdr { H_NONE, H_AUTH, H_ACCEPT, H_EXPECT, H_N };

static const int codes[] = {200, 204, 400, 401, 404, 405, 408, 413, 431, 500, 501, 503, 507};
#define NCODES (sizeof codes / sizeof codes[0])

typedef struct conn conn;
typedef struct listing listing;

struct http_server {
    uv_loop_t *loop;
    s4kv_db *db;
    s4kv_sync_loop *owner;
    http_config cfg;
    char *token;
    uv_tcp_t listener;
    uv_timer_t drain_timer;
    int handles;             /* open handles besides the connections' */
    char addr[96];
    conn *conns;
    uint64_t nconns;
    uint64_t body_reserved, body_budget;
    int draining, done_called;
    void (*done)(void *);
    void *done_ctx;
    http_parser_settings settings;
    char rbuf[READ_BUF];
    /* metrics (loop thread) */
    uint64_t requests, ops[OP_N], bytes_in, bytes_out, status_n[NCODES + 1];
    uint64_t accepted, refused;
    lat_hist lat[OP_N];
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    http_server *h;
    conn *prev, *next;
    http_parser p;
    int handles;             /* open uv handles (tcp, timer) */
    int dead;                /* closing: no more reads or writes */
    int job;                 /* a pool job holds the connection */
    int paused;              /* parser paused (job, write backlog, closing) */
    int wpaused;             /* paused because too much output is queued */
    int close_after;         /* the next response says Connection: close */
    int closing_write;       /* a Connection: close response is queued */
    sbuf pend;               /* bytes read but not parsed while paused */
    size_t wq;               /* bytes queued for writing */
    uint64_t last_io;        /* loop ms */
    /* the request being received */
    int in_msg;
    uint64_t nmsg;           /* requests begun */
    uint64_t req_start;      /* loop ms at its first byte */
    uint64_t t_complete_ns;  /* uv_hrtime at its last byte */
    sbuf url, body, key;
    uint64_t reserved;       /* bytes of body_budget held */
    char hname[24];
    size_t hnlen;
    int hstate, cur;
    sbuf hv[H_N];
    int route, op, head_only;
    int status;              /* an error decided at the head, answered at the end */
    char msg[160];
    int reject;              /* answered at once, then closed */
    sbuf *capture;           /* test seam: responses go here, not to a socket */
    sbuf *capture_heads;     /* test seam: offsets of the response heads in capture */
    int nresp;               /* responses captured */
    /* GET /v1/keys: the query's after= and limit=; the listing being sent */
    sbuf after;
    int has_after;
    uint64_t limit;
    listing *list;           /* set while a listing is sent; c->job stays 1 */
};

/* A key listing in progress (GET /v1/keys). The pool job of a page owns it
 * while `running`; otherwise the loop thread does. */
struct listing {
    s4kv_iter *it;           /* NULL until the first page's job creates it */
    sbuf after;              /* skip keys <= after (while has_after) */
    int has_after;
    uint64_t left;           /* keys still to send (limit=) */
    size_t page;             /* bytes of encoded keys a page */
    int json, first, started, done, running, head_only, close;
};

typedef struct wreq {
    uv_write_t w;
    conn *c;
    char *head;
    void *body;
    size_t total;
    void (*bfree)(void *);
    int close;
} wreq;

typedef struct hjob {
    uv_work_t w;
    conn *c;
    int op, json;
    listing *list;           /* OP_KEYS */
    sbuf key, body;
    uint64_t reserved;
    uint64_t start_ms;
    int rc;
    char err[512];
    sbuf out;
} hjob;

static void conn_close(conn *c);
static void resume(conn *c);
static void feed(conn *c, const char *data, size_t len);

/* ---- small helpers */

static const char *reason(int st)
{
    switch (st) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return "Error";
    }
}

static int status_for(int rc)
{
    switch (rc) {
    case S4KV_ENOTFOUND: return 404;
    case S4KV_EINVAL: return 400;
    case S4KV_EREADONLY: return 403;
    case S4KV_ENOSPC: return 507;
    case S4KV_ENOMEM: return 503;
    case S4KV_ECLOSED: return 503;
    default: return 500;
    }
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into out: 0, -1 on a bad escape, -2 out of memory. */
static int pct_decode(const char *s, size_t n, sbuf *out)
{
    out->len = 0;
    if (sb_reserve(out, n) != 0)
        return -2;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out->p[out->len++] = s[i];
            continue;
        }
        int a = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
        int b = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
        if (a < 0 || b < 0)
            return -1;
        out->p[out->len++] = (char)(a * 16 + b);
        i += 2;
    }
    out->p[out->len] = 0;
    return 0;
}

/* Unreserved characters of RFC 3986 section 2.3, plus '/': sent raw. */
static const uint8_t pct_raw[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['/'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* Appends key k[0..n) percent-encoded (unreserved characters and '/' raw):
 * one table load a byte, no branch chain. */
S4KV_NO_COVERAGE static void pct_encode(sbuf *b, const uint8_t *k, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    if (sb_reserve(b, n * 3) != 0)
        return;
    char *o = b->p + b->len;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = k[i], raw = pct_raw[ch];
        /* branch-free: the byte or '%', then two hex digits that the next
         * byte overwrites when this one is sent raw */
        o[0] = (char)(raw ? ch : '%');
        o[1] = hex[ch >> 4];
        o[2] = hex[ch & 15];
        o += 3 - 2 * raw;
    }
    b->len = (size_t)(o - b->p);
    b->p[b->len] = 0;
}

static int token_ok(const http_server *h, const sbuf *auth)
{
    static const char pre[] = "Bearer ";
    size_t tl = strlen(h->token);
    if (auth->len != sizeof pre - 1 + tl || strncasecmp(auth->p, pre, sizeof pre - 1) != 0)
        return 0;
    unsigned diff = 0;
    for (size_t i = 0; i < tl; i++)
        diff |= (unsigned)(auth->p[sizeof pre - 1 + i] ^ h->token[i]);
    return diff == 0;
}

static void count_status(http_server *h, int st)
{
    size_t i = 0;
    while (i < NCODES && codes[i] != st)
        i++;
    h->status_n[i]++;
}

static void release_body(conn *c)
{
    c->h->body_reserved -= c->reserved;
    c->reserved = 0;
}

/* ---- connection lifetime */

static void check_drained(http_server *h);

static void maybe_free(conn *c)
{
    if (c->handles || c->job)
        return;
    http_server *h = c->h;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->nconns--;
    release_body(c);
    sb_free(&c->pend);
    sb_free(&c->url);
    sb_free(&c->body);
    sb_free(&c->key);
    sb_free(&c->after);
    for (int i = 0; i < H_N; i++)
        sb_free(&c->hv[i]);
    free(c);
    if (h->owner)
        sync_http_counts(h->owner, h->requests, h->nconns);
    check_drained(h);
}

static void on_conn_handle_closed(uv_handle_t *hd)
{
    conn *c = hd->data;
    c->handles--;
    maybe_free(c);
}

static void list_free(conn *c);

static void conn_close(conn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    if (c->list && !c->list->running)
        list_free(c); /* between pages; a running page's job_done frees it */
    if (c->capture)
        return; /* freed by http_feed_for_test (handles stays 1 until then) */
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

/* ---- responses */

static void list_next(conn *c);

static void on_write(uv_write_t *w, int status)
{
    wreq *r = w->data;
    conn *c = r->c;
    c->wq -= r->total;
    free(r->head);
    if (r->bfree)
        r->bfree(r->body);
    int close = r->close;
    free(r);
    if (c->dead)
        return;
    c->last_io = uv_now(c->h->loop);
    if (status < 0 || close) {
        conn_close(c);
        return;
    }
    if (c->list) {
        list_next(c);
        return;
    }
    if (c->wpaused && c->wq < WRITE_LOW) {
        c->wpaused = 0;
        resume(c);
    }
}

/* Queues head (malloc'd, may be NULL) and body (blen bytes; owned by the
 * call when bfree is set) for writing, or appends them to the test seam's
 * capture. close: close the connection once they are written. Returns the
 * bytes queued, or 0 after closing the connection on a failure. */
static size_t queue_bytes(conn *c, char *head, size_t hlen, void *body, size_t blen,
                          void (*bfree)(void *), int close)
{
    size_t total = hlen + blen;
    if (c->capture) { /* the test seam: the bytes are "written" at once */
        if (hlen)
            sb_add(c->capture, head, hlen);
        if (blen)
            sb_add(c->capture, body, blen);
        free(head);
        if (bfree)
            bfree(body);
        c->h->bytes_out += total;
        return total;
    }
    wreq *r = calloc(1, sizeof *r);
    uv_buf_t bufs[2];
    unsigned n = 0;
    if (hlen)
        bufs[n++] = uv_buf_init(head, (unsigned)hlen);
    if (blen)
        bufs[n++] = uv_buf_init(body, (unsigned)blen);
    if (r) {
        r->w.data = r;
        r->c = c;
        r->head = head;
        r->close = close;
        r->total = total;
        r->body = body;
        r->bfree = bfree;
    }
    if (!r || uv_write(&r->w, (uv_stream_t *)&c->tcp, bufs, n, on_write) != 0) {
        free(r);
        free(head);
        if (bfree)
            bfree(body);
        conn_close(c);
        return 0;
    }
    c->wq += total;
    c->h->bytes_out += total;
    return total;
}

/* Queues a response. body (blen bytes) is owned by the call when bfree is
 * set; head_only sends the head with the body's Content-Length (HEAD).
 * chunked: the head says "Transfer-Encoding: chunked" instead of a
 * Content-Length, body is chunk-framed already, and the connection stays
 * open (a listing's last chunk closes it when it must; see list_send). */
static void respond_ex(conn *c, int st, const char *ctype, void *body, size_t blen,
                       void (*bfree)(void *), const char *extra, int head_only, int chunked)
{
    http_server *h = c->h;
    if (c->dead) {
        if (bfree)
            bfree(body);
        return;
    }
    int close = c->close_after || c->reject || h->draining || !http_should_keep_alive(&c->p);
    sbuf hd = {0};
    if (chunked)
        sb_printf(&hd, "HTTP/1.1 %d %s\r\nTransfer-Encoding: chunked\r\n", st, reason(st));
    else
        sb_printf(&hd, "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n", st, reason(st), blen);
    if (ctype)
        sb_printf(&hd, "Content-Type: %s\r\n", ctype);
    if (extra)
        sb_printf(&hd, "%s", extra);
    if (close)
        sb_printf(&hd, "Connection: close\r\n");
    sb_add(&hd, "\r\n", 2);
    if (hd.oom) {
        sb_free(&hd);
        if (bfree)
            bfree(body);
        conn_close(c);
        return;
    }
    if (head_only) {
        if (bfree)
            bfree(body);
        body = NULL;
        blen = 0;
        bfree = NULL;
    }
    if (c->list)
        c->list->close = close;
    if (c->capture_heads) {
        size_t at = c->capture->len;
        sb_add(c->capture_heads, &at, sizeof at);
    }
    /* A chunked head leaves the close to the last chunk (none for HEAD). */
    if (queue_bytes(c, hd.p, hd.len, body, blen, bfree, close && (!chunked || head_only)) == 0)
        return;
    c->nresp++;
    h->requests++;
    count_status(h, st);
    if (c->t_complete_ns) {
        lat_add(&h->lat[c->op], (uv_hrtime() - c->t_complete_ns) / 1000);
        c->t_complete_ns = 0;
    }
    h->ops[c->op]++;
    if (h->owner)
        sync_http_counts(h->owner, h->requests, h->nconns);
    if (close) {
        c->closing_write = 1;
        if (!c->capture)
            uv_read_stop((uv_stream_t *)&c->tcp);
    } else if (c->wq > WRITE_HIGH) {
        c->wpaused = 1;
    }
}

static void respond(conn *c, int st, const char *ctype, void *body, size_t blen,
                    void (*bfree)(void *), const char *extra, int head_only)
{
    respond_ex(c, st, ctype, body, blen, bfree, extra, head_only, 0);
}

static void respond_text(conn *c, int st, const char *text, const char *extra)
{
    size_t n = strlen(text);
    char *b = malloc(n + 1);
    if (!b) {
        conn_close(c);
        return;
    }
    memcpy(b, text, n + 1);
    respond(c, st, "text/plain; charset=utf-8", b, n, free, extra, 0);
}

static void respond_error(conn *c, int st, const char *msg)
{
    char line[700];
    snprintf(line, sizeof line, "%s\n", msg && *msg ? msg : reason(st));
    const char *extra = NULL;
    if (st == 405)
        extra = c->route == R_KV      ? "Allow: GET, HEAD, PUT, DELETE\r\n"
                : c->route == R_BATCH ? "Allow: POST\r\n"
                                      : "Allow: GET, HEAD\r\n";
    else if (st == 401)
        extra = "WWW-Authenticate: Bearer\r\n";
    respond_text(c, st, line, extra);
}

/* ---- the pool jobs (put, delete, keys, batch) */

static uint32_t rd32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Decodes a batch body (the framing at the top) into b. 0, S4KV_EINVAL with
 * a message naming the record and byte offset, or S4KV_ENOMEM. */
static int batch_decode(const uint8_t *p, size_t n, s4kv_batch *b, char *err, size_t errlen)
{
    if (n == 0)
        return seterr(err, errlen, S4KV_EINVAL, "batch: the body is empty (at least one record "
                                                "is needed)");
    size_t off = 0;
    for (uint64_t rec = 1; off < n; rec++) {
        if (n - off < 9)
            return seterr(err, errlen, S4KV_EINVAL,
                          "batch: record %" PRIu64 " at byte offset %zu: the 9-byte record head "
                          "is cut short (%zu bytes left)", rec, off, n - off);
        uint8_t op = p[off];
        uint32_t kl = rd32le(p + off + 1), vl = rd32le(p + off + 5);
        if (op != 1 && op != 2)
            return seterr(err, errlen, S4KV_EINVAL,
                          "batch: record %" PRIu64 " at byte offset %zu: unknown op %u (1 put, "
                          "2 delete)", rec, off, op);
        if (kl == 0 || kl > S4KV_MAX_KEY_BYTES)
            return seterr(err, errlen, S4KV_EINVAL,
                          "batch: record %" PRIu64 " at byte offset %zu: key length %" PRIu32
                          " (1 to %u)", rec, off + 1, kl, S4KV_MAX_KEY_BYTES);
        if (op == 2 && vl != 0)
            return seterr(err, errlen, S4KV_EINVAL,
                          "batch: record %" PRIu64 " at byte offset %zu: a delete with value "
                          "length %" PRIu32 " (must be 0)", rec, off + 5, vl);
        if (vl > S4KV_MAX_VALUE_BYTES)
            return seterr(err, errlen, S4KV_EINVAL,
                          "batch: record %" PRIu64 " at byte offset %zu: value length %" PRIu32
                          " (at most %u)", rec, off + 5, vl, S4KV_MAX_VALUE_BYTES);
        size_t need = (size_t)kl + vl;
        if (n - off - 9 < need)
            return seterr(err, errlen, S4KV_EINVAL,
                          "batch: record %" PRIu64 " at byte offset %zu: key and value need %zu "
                          "bytes, %zu are left", rec, off + 9, need, n - off - 9);
        const uint8_t *k = p + off + 9;
        int rc = op == 1 ? s4kv_batch_put(b, k, kl, k + kl, vl) : s4kv_batch_delete(b, k, kl);
        if (rc)
            return seterr(err, errlen, rc,
                          "batch: record %" PRIu64 " at byte offset %zu: %s", rec, off,
                          rc == S4KV_ENOMEM ? "out of memory" : "the batch is too large");
        off += 9 + need;
    }
    return 0;
}

/* memcmp order, shorter first on a tie (the order of S4KV_ITER_SORTED). */
static int key_cmp(const void *a, size_t al, const void *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

/* On the pool: the next page of a listing into j->out (the first page
 * creates the snapshot from the prefix in j->key and skips to after=). */
static void list_page(hjob *j)
{
    listing *L = j->list;
    if (!L->it) {
        j->rc = s4kv_iter_new(j->c->h->db, j->key.p, j->key.len,
                              S4KV_ITER_SORTED | S4KV_ITER_KEYS_ONLY, &L->it, j->err,
                              sizeof j->err);
        if (j->rc)
            return;
        if (L->json)
            sb_add(&j->out, "[", 1);
    }
    while (j->out.len < L->page && !j->out.oom) {
        /* Keys only: s4kv_iter_next reads no value and cannot fail. */
        if (L->left == 0 || s4kv_iter_next(L->it, NULL, 0) <= 0) {
            L->done = 1;
            break;
        }
        size_t kl;
        const void *k = s4kv_iter_key(L->it, &kl);
        if (L->has_after) {
            if (key_cmp(k, kl, L->after.p, L->after.len) <= 0)
                continue;
            L->has_after = 0; /* sorted: every later key is past it too */
        }
        L->left--;
        if (L->json) {
            sb_add(&j->out, L->first ? "\"" : ",\"", L->first ? 1 : 2);
            pct_encode(&j->out, k, kl);
            sb_add(&j->out, "\"", 1);
        } else {
            pct_encode(&j->out, k, kl);
            sb_add(&j->out, "\n", 1);
        }
        L->first = 0;
    }
    if (L->done && L->json)
        sb_add(&j->out, "]\n", 2);
    if (j->out.oom) {
        j->rc = S4KV_ENOMEM;
        snprintf(j->err, sizeof j->err, "out of memory listing keys");
    }
}

static void job_work(uv_work_t *w)
{
    hjob *j = w->data;
    s4kv_db *db = j->c->h->db;
    if (j->op == OP_PUT) {
        j->rc = s4kv_put(db, j->key.p, j->key.len, j->body.p, j->body.len, j->err, sizeof j->err);
    } else if (j->op == OP_DELETE) {
        j->rc = s4kv_delete(db, j->key.p, j->key.len, j->err, sizeof j->err);
    } else if (j->op == OP_BATCH) {
        s4kv_batch *b = s4kv_batch_new();
        if (!b) {
            j->rc = seterr(j->err, sizeof j->err, S4KV_ENOMEM, "out of memory");
            return;
        }
        j->rc = batch_decode((const uint8_t *)j->body.p, j->body.len, b, j->err, sizeof j->err);
        /* The body is no longer needed: free it before the commit waits. */
        sb_free(&j->body);
        if (j->rc == 0)
            j->rc = s4kv_write(db, b, j->err, sizeof j->err);
        s4kv_batch_free(b);
    } else {
        list_page(j);
    }
}

/* Frees the connection's listing (loop thread, no page job running) and
 * releases the connection it held. */
static void list_free(conn *c)
{
    listing *L = c->list;
    if (!L)
        return;
    s4kv_iter_free(L->it);
    sb_free(&L->after);
    free(L);
    c->list = NULL;
    c->job = 0;
}

/* Sends the page a job encoded: the whole response when the listing fits
 * one page, else the chunked head or the next chunk (and the last chunk
 * after the last page, closing the connection then if the head said so). */
static void list_send(conn *c, hjob *j)
{
    listing *L = c->list;
    const char *ctype = L->json ? "application/json" : "text/plain; charset=utf-8";
    if (!L->started && L->done) {
        respond(c, 200, ctype, j->out.p, j->out.len, free, NULL, L->head_only);
        j->out.p = NULL;
        return;
    }
    sbuf ch = {0};
    if (j->out.len) {
        sb_printf(&ch, "%zx\r\n", j->out.len);
        sb_add(&ch, j->out.p, j->out.len);
        sb_add(&ch, "\r\n", 2);
    }
    if (L->done)
        sb_add(&ch, "0\r\n\r\n", 5);
    if (ch.oom) {
        sb_free(&ch);
        conn_close(c);
        return;
    }
    if (!L->started) {
        L->started = 1;
        respond_ex(c, 200, ctype, ch.p, ch.len, free, NULL, L->head_only, 1);
        if (L->head_only)
            L->done = 1;
    } else {
        /* After the last chunk: close if the head said so, or if the
         * server began draining meanwhile (resume would otherwise close the
         * connection at once and cancel the queued chunk). */
        int close = L->done && (L->close || c->close_after || c->h->draining);
        if (queue_bytes(c, NULL, 0, ch.p, ch.len, free, close) && close) {
            c->closing_write = 1;
            if (!c->capture)
                uv_read_stop((uv_stream_t *)&c->tcp);
        }
    }
}

static void list_next(conn *c);

static void job_done(uv_work_t *w, int status)
{
    hjob *j = w->data;
    conn *c = j->c;
    http_server *h = c->h;
    c->job = 0;
    h->body_reserved -= j->reserved;
    if (status == UV_ECANCELED && j->rc == 0) {
        j->rc = S4KV_EIO;
        snprintf(j->err, sizeof j->err, "cancelled");
    }
    if ((j->op == OP_PUT || j->op == OP_DELETE || j->op == OP_BATCH) && j->rc == 0 && h->owner)
        sync_note_write(h->owner, j->start_ms);
    if (j->op == OP_KEYS) {
        listing *L = c->list;
        L->running = 0;
        c->job = 1; /* the listing holds the connection until list_free */
        if (c->dead) {
            list_free(c);
        } else if (j->rc) {
            int started = L->started;
            list_free(c);
            if (started)
                conn_close(c); /* mid-body: the status is sent; cut the response */
            else
                respond_error(c, status_for(j->rc), j->err);
        } else {
            list_send(c, j);
            if (c->list && (c->list->done || c->dead))
                list_free(c);
        }
    } else if (!c->dead) {
        if (j->rc)
            respond_error(c, status_for(j->rc), j->err);
        else
            respond(c, 204, NULL, NULL, 0, NULL, NULL, 0);
    }
    sb_free(&j->key);
    sb_free(&j->body);
    sb_free(&j->out);
    free(j);
    if (c->dead)
        maybe_free(c);
    else if (c->list)
        list_next(c);
    else if (!c->capture)
        resume(c);
}

static hjob *job_new(conn *c, int op)
{
    hjob *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->w.data = j;
    j->c = c;
    j->op = op;
    j->list = c->list;
    j->start_ms = c->req_start;
    return j;
}

/* Runs j: inline for the test seam, else on the pool. -1 when it cannot be
 * queued (j is then the caller's again). */
static int job_run(conn *c, hjob *j)
{
    if (j->list)
        j->list->running = 1;
    c->job = 1;
    if (c->capture) {
        job_work(&j->w);
        job_done(&j->w, 0);
        return 0;
    }
    if (uv_queue_work(c->h->loop, &j->w, job_work, job_done) != 0) {
        if (j->list)
            j->list->running = 0;
        c->job = c->list != NULL;
        return -1;
    }
    return 0;
}

/* The listing's next page, once the queued output is under WRITE_LOW (from
 * job_done and on_write). The test seam runs the pages in start_job. */
static void list_next(conn *c)
{
    listing *L = c->list;
    if (!L || L->running || c->dead || c->capture || c->wq >= WRITE_LOW)
        return;
    hjob *j = job_new(c, OP_KEYS);
    if (!j || job_run(c, j) != 0) {
        free(j);
        list_free(c);
        conn_close(c);
    }
}

static int start_job(conn *c, int op)
{
    hjob *j = job_new(c, op);
    if (!j)
        return -1;
    j->json = c->hv[H_ACCEPT].p && strstr(c->hv[H_ACCEPT].p, "application/json") != NULL;
    if (op == OP_KEYS) {
        listing *L = calloc(1, sizeof *L);
        if (!L) {
            free(j);
            return -1;
        }
        L->after = c->after;
        memset(&c->after, 0, sizeof c->after);
        L->has_after = c->has_after;
        L->left = c->limit;
        L->page = c->h->cfg.list_page_bytes ? c->h->cfg.list_page_bytes : LIST_PAGE;
        L->json = j->json;
        L->first = 1;
        L->head_only = c->head_only;
        c->list = j->list = L;
    }
    j->key = c->key;
    memset(&c->key, 0, sizeof c->key);
    j->body = c->body;
    memset(&c->body, 0, sizeof c->body);
    j->reserved = c->reserved;
    c->reserved = 0;
    if (job_run(c, j) != 0) {
        c->key = j->key;
        c->body = j->body;
        c->reserved = j->reserved;
        free(j);
        list_free(c);
        return -1;
    }
    /* The test seam: the pages of a listing, one after the other. */
    while (c->capture && c->list && !c->dead) {
        hjob *k = job_new(c, OP_KEYS);
        if (!k) {
            list_free(c);
            conn_close(c);
            break;
        }
        job_run(c, k);
    }
    return 0;
}

/* ---- requests */

static void dispatch(conn *c)
{
    http_server *h = c->h;
    if (c->status) {
        respond_error(c, c->status, c->msg);
        return;
    }
    switch (c->route) {
    case R_HEALTH:
        respond(c, 200, "text/plain; charset=utf-8", "ok\n", 3, NULL, NULL, c->head_only);
        return;
    case R_METRICS: {
        sbuf b = {0};
        if (h->owner)
            sync_metrics_text(h->owner, &b);
        http_metrics_text(h, &b);
        if (b.oom) {
            sb_free(&b);
            respond_error(c, 503, "out of memory");
            return;
        }
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len, free, NULL,
                c->head_only);
        return;
    }
    case R_BATCH:
        if (start_job(c, OP_BATCH) != 0)
            respond_error(c, 503, "out of memory");
        return;
    case R_KEYS:
        if (start_job(c, OP_KEYS) != 0)
            respond_error(c, 503, "out of memory");
        return;
    case R_KV:
        if (c->op == OP_GET) {
            void *v = NULL;
            size_t vl = 0;
            char err[512] = "";
            int rc = s4kv_get(h->db, c->key.p, c->key.len, &v, &vl, err, sizeof err);
            if (rc == S4KV_ENOTFOUND)
                respond_error(c, 404, "not found");
            else if (rc)
                respond_error(c, status_for(rc), err);
            else
                respond(c, 200, "application/octet-stream", v, vl, s4kv_free, NULL, c->head_only);
            return;
        }
        if (start_job(c, c->op) != 0)
            respond_error(c, 503, "out of memory");
        return;
    default:
        respond_error(c, 404, "no such route");
    }
}

static int has_body(const http_parser *p)
{
    return (p->flags & F_CHUNKED) || (p->content_length > 0 && p->content_length != ULLONG_MAX);
}

static void set_status(conn *c, int st, const char *msg)
{
    c->status = st;
    snprintf(c->msg, sizeof c->msg, "%s", msg);
}

static int on_message_begin(http_parser *p)
{
    conn *c = p->data;
    c->in_msg = 1;
    c->nmsg++;
    c->req_start = uv_now(c->h->loop);
    c->url.len = 0;
    c->body.len = 0;
    c->key.len = 0;
    c->after.len = 0;
    c->has_after = 0;
    c->limit = UINT64_MAX;
    for (int i = 0; i < H_N; i++) {
        c->hv[i].len = 0;
        if (c->hv[i].p)
            c->hv[i].p[0] = 0;
    }
    c->hnlen = 0;
    c->hstate = 0;
    c->cur = H_NONE;
    c->route = R_NONE;
    c->op = OP_OTHER;
    c->head_only = 0;
    c->status = 0;
    c->msg[0] = 0;
    c->reject = 0;
    c->t_complete_ns = 0;
    release_body(c);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    sb_add(&c->url, at, n);
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    if (c->hstate != 1) {
        c->hnlen = 0;
        c->cur = H_NONE;
    }
    c->hstate = 1;
    for (size_t i = 0; i < n; i++) {
        if (c->hnlen < sizeof c->hname - 1)
            c->hname[c->hnlen] = at[i];
        c->hnlen++;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    if (c->hstate == 1) {
        size_t l = c->hnlen < sizeof c->hname ? c->hnlen : sizeof c->hname - 1;
        c->hname[l] = 0;
        c->cur = H_NONE;
        if (c->hnlen < sizeof c->hname) {
            if (strcasecmp(c->hname, "authorization") == 0)
                c->cur = H_AUTH;
            else if (strcasecmp(c->hname, "accept") == 0)
                c->cur = H_ACCEPT;
            else if (strcasecmp(c->hname, "expect") == 0)
                c->cur = H_EXPECT;
        }
        if (c->cur)
            c->hv[c->cur].len = 0;
    }
    c->hstate = 2;
    if (c->cur && c->hv[c->cur].len + n <= HDR_VALUE_MAX)
        sb_add(&c->hv[c->cur], at, n);
    return 0;
}

/* Route, method and authorization, decided from the head. */
static void route(conn *c)
{
    http_server *h = c->h;
    const char *u = c->url.p ? c->url.p : "";
    size_t plen = strcspn(u, "?#");
    const char *q = u[plen] == '?' ? u + plen + 1 : NULL;
    int m = c->p.method;
    int get = m == HTTP_GET || m == HTTP_HEAD;
    c->head_only = m == HTTP_HEAD;
#define IS(path) (plen == sizeof(path) - 1 && memcmp(u, path, plen) == 0)
    if (IS("/healthz")) {
        c->route = R_HEALTH;
        if (!get)
            set_status(c, 405, "GET /healthz");
        return;
    }
    if (h->token && !token_ok(h, &c->hv[H_AUTH])) {
        set_status(c, 401, "this server needs \"Authorization: Bearer TOKEN\"");
        return;
    }
    if (IS("/metrics")) {
        c->route = R_METRICS;
        if (!get)
            set_status(c, 405, "GET /metrics");
    } else if (IS("/v1/batch")) {
        c->route = R_BATCH;
        c->op = OP_BATCH;
        if (m != HTTP_POST)
            set_status(c, 405, "POST /v1/batch");
    } else if (IS("/v1/keys")) {
        c->route = R_KEYS;
        c->op = OP_KEYS;
        if (!get) {
            set_status(c, 405, "GET /v1/keys?prefix=P&after=K&limit=N");
            return;
        }
        while (q && *q) {
            size_t n = strcspn(q, "&#");
            if (n > 7 && memcmp(q, "prefix=", 7) == 0) {
                int rc = pct_decode(q + 7, n - 7, &c->key);
                if (rc == -1)
                    set_status(c, 400, "bad percent-encoding in the prefix");
                else if (rc)
                    set_status(c, 503, "out of memory");
            } else if (n >= 6 && memcmp(q, "after=", 6) == 0) {
                int rc = pct_decode(q + 6, n - 6, &c->after);
                c->has_after = 1;
                if (rc == -1)
                    set_status(c, 400, "bad percent-encoding in after=");
                else if (rc)
                    set_status(c, 503, "out of memory");
            } else if (n >= 6 && memcmp(q, "limit=", 6) == 0) {
                uint64_t v = 0;
                size_t i = 6;
                for (; i < n && q[i] >= '0' && q[i] <= '9'; i++) {
                    unsigned d = (unsigned)(q[i] - '0');
                    if (v > (UINT64_MAX - d) / 10)
                        break;
                    v = v * 10 + d;
                }
                if (i == 6 || i != n)
                    set_status(c, 400, "limit= must be a number from 0 to 18446744073709551615");
                else
                    c->limit = v;
            }
            q += n;
            if (*q != '&')
                break;
            q++;
        }
    } else if (plen > 7 && memcmp(u, "/v1/kv/", 7) == 0) {
        c->route = R_KV;
        if (get)
            c->op = OP_GET;
        else if (m == HTTP_PUT)
            c->op = OP_PUT;
        else if (m == HTTP_DELETE)
            c->op = OP_DELETE;
        else {
            set_status(c, 405, "GET, HEAD, PUT or DELETE /v1/kv/KEY");
            return;
        }
        int rc = pct_decode(u + 7, plen - 7, &c->key);
        if (rc == -1)
            set_status(c, 400, "bad percent-encoding in the key ('%' must be followed by two "
                               "hex digits)");
        else if (rc)
            set_status(c, 503, "out of memory");
        else if (c->key.len > S4KV_MAX_KEY_BYTES)
            set_status(c, 400, "the key is longer than 65535 bytes");
    } else if (IS("/v1/kv/") || IS("/v1/kv")) {
        c->route = R_KV;
        set_status(c, 400, "empty key: use /v1/kv/KEY");
    } else {
        set_status(c, 404, "no such route (see /v1/kv/KEY, /v1/batch, /v1/keys, /healthz, "
                           "/metrics)");
    }
#undef IS
}

static int on_headers_complete(http_parser *p)
{
    conn *c = p->data;
    http_server *h = c->h;
    if (c->hstate == 2 || c->hstate == 1)
        c->hstate = 3;
    route(c);
    if (c->status) {
        /* Answer at once rather than read a body we would throw away. */
        if (has_body(p)) {
            c->reject = c->status;
            return -1;
        }
        return 0;
    }
    if (p->content_length != ULLONG_MAX && p->content_length > h->cfg.max_body) {
        set_status(c, 413, "");
        snprintf(c->msg, sizeof c->msg, "the body is larger than the limit of %" PRIu64 " bytes",
                 h->cfg.max_body);
        c->reject = 413;
        return -1;
    }
    if (p->content_length != ULLONG_MAX && p->content_length > 0) {
        if (h->body_reserved + p->content_length > h->body_budget) {
            set_status(c, 503, "too many large requests at once; retry");
            c->reject = 503;
            return -1;
        }
        c->reserved = p->content_length;
        h->body_reserved += c->reserved;
        if ((c->op == OP_PUT || c->op == OP_BATCH) &&
            sb_reserve(&c->body, (size_t)p->content_length) != 0) {
            set_status(c, 503, "out of memory");
            c->reject = 503;
            return -1;
        }
    }
    if (c->hv[H_EXPECT].len && strncasecmp(c->hv[H_EXPECT].p, "100-continue", 12) == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        wreq *r = calloc(1, sizeof *r);
        if (r) {
            r->w.data = r;
            r->c = c;
            r->total = sizeof cont - 1;
            uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
            if (c->capture) {
                if (c->capture_heads) {
                    size_t at = c->capture->len;
                    sb_add(c->capture_heads, &at, sizeof at);
                }
                sb_add(c->capture, cont, sizeof cont - 1);
                free(r);
            } else if (uv_write(&r->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) == 0) {
                c->wq += r->total;
            } else {
                free(r);
            }
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    http_server *h = c->h;
    int keep = c->op == OP_PUT || c->op == OP_BATCH;
    uint64_t have = keep ? c->body.len : 0;
    if (have + n > h->cfg.max_body) {
        set_status(c, 413, "");
        snprintf(c->msg, sizeof c->msg, "the body is larger than the limit of %" PRIu64 " bytes",
                 h->cfg.max_body);
        c->reject = 413;
        return -1;
    }
    if (!keep)
        return 0; /* a body on another method is read and ignored */
    if (c->body.len + n > c->reserved) { /* chunked: reserve as it grows */
        uint64_t more = c->body.len + n - c->reserved;
        if (h->body_reserved + more > h->body_budget) {
            set_status(c, 503, "too many large requests at once; retry");
            c->reject = 503;
            return -1;
        }
        c->reserved += more;
        h->body_reserved += more;
    }
    sb_add(&c->body, at, n);
    if (c->body.oom) {
        set_status(c, 503, "out of memory");
        c->reject = 503;
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn *c = p->data;
    c->in_msg = 0;
    c->t_complete_ns = uv_hrtime();
    if (c->body.p == NULL && (c->op == OP_PUT || c->op == OP_BATCH))
        sb_add(&c->body, "", 0); /* an empty value: a valid pointer */
    dispatch(c);
    if (!c->dead && (c->job || c->wpaused || c->closing_write)) {
        http_parser_pause(p, 1);
        c->paused = 1;
    }
    return 0;
}

/* ---- reading */

static void alloc_cb(uv_handle_t *hd, size_t sug, uv_buf_t *buf)
{
    conn *c = hd->data;
    (void)sug;
    *buf = uv_buf_init(c->h->rbuf, READ_BUF);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void feed(conn *c, const char *data, size_t len)
{
    size_t n = http_parser_execute(&c->p, &c->h->settings, data, len);
    if (c->dead)
        return;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
    if (e == HPE_PAUSED) {
        sb_add(&c->pend, data + n, len - n);
        if (!c->capture)
            uv_read_stop((uv_stream_t *)&c->tcp);
        if (c->pend.oom)
            conn_close(c);
        return;
    }
    if (e != HPE_OK) {
        int st = c->reject ? c->reject : e == HPE_HEADER_OVERFLOW ? 431 : 400;
        if (!c->reject) {
            c->reject = st;
            c->op = OP_OTHER;
            snprintf(c->msg, sizeof c->msg, "%s", http_errno_description(e));
        }
        c->in_msg = 0;
        respond_error(c, st, c->msg);
        return;
    }
    if (c->p.upgrade) {
        c->reject = 501;
        respond_error(c, 501, "upgrades are not supported");
    }
}

static void resume(conn *c)
{
    if (c->dead || c->job || c->wpaused || c->closing_write)
        return;
    http_parser_pause(&c->p, 0);
    c->paused = 0;
    if (c->pend.len) {
        sbuf tmp = c->pend;
        memset(&c->pend, 0, sizeof c->pend);
        feed(c, tmp.p, tmp.len);
        sb_free(&tmp);
    }
    if (!c->dead && !c->paused && !c->closing_write) {
        if (c->h->draining && !c->in_msg) {
            conn_close(c);
            return;
        }
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
    }
}

static void on_conn_timer(uv_timer_t *t)
{
    conn *c = t->data;
    http_server *h = c->h;
    if (c->dead)
        return;
    uint64_t now = uv_now(h->loop), idle = h->cfg.idle_timeout_ms;
    /* A listing waiting for its client to read is idle like any backlog. */
    int busy = c->job && !(c->list && !c->list->running);
    if (busy || (c->wq && now - c->last_io < idle)) {
        uv_timer_start(&c->timer, on_conn_timer, idle, 0);
        return;
    }
    if (c->in_msg && !c->wq) {
        c->reject = 408;
        c->in_msg = 0;
        c->op = OP_OTHER;
        respond_error(c, 408, "the request did not arrive in time");
        return;
    }
    conn_close(c);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = st->data;
    http_server *h = c->h;
    (void)buf;
    if (c->dead)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    uint64_t now = uv_now(h->loop);
    c->last_io = now;
    h->bytes_in += (uint64_t)nread;
    if (c->in_msg && now - c->req_start > h->cfg.request_timeout_ms) {
        c->reject = 408;
        c->in_msg = 0;
        c->op = OP_OTHER;
        respond_error(c, 408, "the request did not arrive in time");
        return;
    }
    /* Only bytes of a request restart the idle timer: http-parser skips
     * CR and LF between requests, and a client trickling those must not
     * hold its connection past idle_timeout_ms. */
    int was_in_msg = c->in_msg;
    uint64_t begun = c->nmsg;
    feed(c, buf->base, (size_t)nread);
    if (!c->dead && (was_in_msg || c->nmsg != begun))
        uv_timer_start(&c->timer, on_conn_timer, h->cfg.idle_timeout_ms, 0);
}

static void on_connection(uv_stream_t *ls, int status)
{
    http_server *h = ls->data;
    if (status < 0 || h->draining)
        return;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->h = h;
    c->op = OP_OTHER; /* a 503 for the connection limit is no GET */
    uv_tcp_init(h->loop, &c->tcp);
    c->tcp.data = c;
    c->handles = 1;
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        c->dead = 1;
        uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
        return;
    }
    uv_timer_init(h->loop, &c->timer);
    c->timer.data = c;
    c->handles = 2;
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    c->last_io = uv_now(h->loop);
    uv_tcp_nodelay(&c->tcp, 1);
    h->accepted++;
    sync_http_counts(h->owner, h->requests, h->nconns);
    if (h->nconns > h->cfg.max_connections) {
        h->refused++;
        c->reject = 503;
        respond_error(c, 503, "too many connections");
        return;
    }
    uv_timer_start(&c->timer, on_conn_timer, h->cfg.idle_timeout_ms, 0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

/* ---- the server */

static void init_settings(http_server *h)
{
    h->settings.on_message_begin = on_message_begin;
    h->settings.on_url = on_url;
    h->settings.on_header_field = on_header_field;
    h->settings.on_header_value = on_header_value;
    h->settings.on_headers_complete = on_headers_complete;
    h->settings.on_body = on_body;
    h->settings.on_message_complete = on_message_complete;
}

static void on_failed_listener_closed(uv_handle_t *hd)
{
    http_server *h = hd->data;
    free(h->token);
    free(h);
}

int http_start(uv_loop_t *loop, s4kv_db *db, s4kv_sync_loop *owner, const http_config *cfg,
               http_server **out, char *err, size_t errlen)
{
    *out = NULL;
    http_server *h = calloc(1, sizeof *h);
    if (!h)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    h->loop = loop;
    h->db = db;
    h->owner = owner;
    h->cfg = *cfg;
    h->cfg.addr = NULL;
    h->cfg.listen = NULL;
    h->cfg.token = NULL;
    h->body_budget = 4 * cfg->max_body;
    if (cfg->token && !(h->token = strdup(cfg->token))) {
        free(h);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    init_settings(h);
    uv_tcp_init(loop, &h->listener);
    h->listener.data = h;
    int rc = uv_tcp_bind(&h->listener, (const struct sockaddr *)&cfg->addr->ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&h->listener, 511, on_connection);
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (rc == 0)
        rc = uv_tcp_getsockname(&h->listener, (struct sockaddr *)&ss, &sl);
    if (rc) {
        seterr(err, errlen, S4KV_EIO, "cannot listen on %s: %s", cfg->listen, uv_strerror(rc));
        uv_close((uv_handle_t *)&h->listener, on_failed_listener_closed);
        return S4KV_EIO;
    }
    sync_addr_format((const struct sockaddr *)&ss, h->addr, sizeof h->addr);
    uv_timer_init(loop, &h->drain_timer);
    h->drain_timer.data = h;
    h->handles = 2;
    *out = h;
    return 0;
}

const char *http_address(const http_server *h)
{
    return h->addr;
}

static void on_server_handle_closed(uv_handle_t *hd)
{
    http_server *h = hd->data;
    h->handles--;
    if (h->handles == 0 && !h->done_called) {
        h->done_called = 1;
        if (h->done)
            h->done(h->done_ctx);
    }
}

static void check_drained(http_server *h)
{
    if (!h->draining || h->conns)
        return;
    if (!uv_is_closing((uv_handle_t *)&h->drain_timer))
        uv_close((uv_handle_t *)&h->drain_timer, on_server_handle_closed);
}

static void on_drain_timeout(uv_timer_t *t)
{
    http_server *h = t->data;
    for (conn *c = h->conns; c; c = c->next)
        conn_close(c);
}

void http_drain(http_server *h, void (*done)(void *ctx), void *ctx)
{
    if (h->draining)
        return;
    h->draining = 1;
    h->done = done;
    h->done_ctx = ctx;
    uv_close((uv_handle_t *)&h->listener, on_server_handle_closed);
    for (conn *c = h->conns, *next; c; c = next) {
        next = c->next;
        if (!c->dead && !c->in_msg && !c->job && !c->wq)
            conn_close(c);
        else
            c->close_after = 1;
    }
    uv_timer_start(&h->drain_timer, on_drain_timeout, h->cfg.request_timeout_ms, 0);
    check_drained(h);
}

void http_free(http_server *h)
{
    if (!h)
        return;
    free(h->token);
    free(h);
}

void http_metrics_text(http_server *h, sbuf *b)
{
    sb_printf(b, "# HELP s4kv_http_requests_total HTTP requests answered, by operation.\n"
                 "# TYPE s4kv_http_requests_total counter\n");
    for (int i = 0; i < OP_N; i++)
        sb_printf(b, "s4kv_http_requests_total{op=\"%s\"} %" PRIu64 "\n", op_names[i], h->ops[i]);
    sb_printf(b, "# HELP s4kv_http_responses_total HTTP responses, by status code.\n"
                 "# TYPE s4kv_http_responses_total counter\n");
    for (size_t i = 0; i <= NCODES; i++)
        if (h->status_n[i]) {
            if (i < NCODES)
                sb_printf(b, "s4kv_http_responses_total{code=\"%d\"} %" PRIu64 "\n", codes[i],
                          h->status_n[i]);
            else
                sb_printf(b, "s4kv_http_responses_total{code=\"other\"} %" PRIu64 "\n",
                          h->status_n[i]);
        }
    sb_printf(b, "# HELP s4kv_http_request_duration_seconds Time from a request's last byte to "
                 "its response being queued.\n"
                 "# TYPE s4kv_http_request_duration_seconds summary\n");
    for (int i = 0; i < OP_N; i++) {
        char lab[32];
        snprintf(lab, sizeof lab, "op=\"%s\"", op_names[i]);
        lat_prom(b, "s4kv_http_request_duration_seconds", lab, &h->lat[i]);
    }
    sb_printf(b, "# HELP s4kv_http_received_bytes_total Bytes read from clients.\n"
                 "# TYPE s4kv_http_received_bytes_total counter\n"
                 "s4kv_http_received_bytes_total %" PRIu64 "\n"
                 "# HELP s4kv_http_sent_bytes_total Bytes queued to clients.\n"
                 "# TYPE s4kv_http_sent_bytes_total counter\n"
                 "s4kv_http_sent_bytes_total %" PRIu64 "\n"
                 "# HELP s4kv_http_connections Open connections.\n"
                 "# TYPE s4kv_http_connections gauge\n"
                 "s4kv_http_connections %" PRIu64 "\n"
                 "# HELP s4kv_http_connections_total Connections accepted.\n"
                 "# TYPE s4kv_http_connections_total counter\n"
                 "s4kv_http_connections_total %" PRIu64 "\n"
                 "# HELP s4kv_http_connections_refused_total Connections refused (limit).\n"
                 "# TYPE s4kv_http_connections_refused_total counter\n"
                 "s4kv_http_connections_refused_total %" PRIu64 "\n",
              h->bytes_in, h->bytes_out, h->nconns, h->accepted, h->refused);
}

/* ---- the test seam (fuzz/fuzz_http.c) */

int http_feed_for_test(uv_loop_t *loop, s4kv_db *db, const http_config *cfg, const void *data,
                       size_t len, size_t chunk, sbuf *out, sbuf *heads)
{
    http_server *h = calloc(1, sizeof *h);
    conn *c = calloc(1, sizeof *c);
    if (!h || !c || (cfg->token && !(h->token = strdup(cfg->token)))) {
        free(h);
        free(c);
        return -1;
    }
    h->loop = loop;
    h->db = db;
    h->cfg = *cfg;
    h->cfg.addr = NULL;
    h->cfg.listen = NULL;
    h->cfg.token = NULL;
    h->body_budget = 4 * cfg->max_body;
    init_settings(h);
    c->h = h;
    c->handles = 1; /* stands for the socket: conn_close does not free */
    c->capture = out;
    c->capture_heads = heads;
    h->conns = c;
    h->nconns = 1;
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    c->last_io = uv_now(loop);
    if (chunk == 0)
        chunk = len ? len : 1;
    const char *p = data;
    /* As on_read: stop where the real server stops reading (a Connection:
     * close response queued, the connection closed, the parser paused). */
    for (size_t off = 0; off < len && !c->dead && !c->paused && !c->closing_write;) {
        size_t n = len - off < chunk ? len - off : chunk;
        feed(c, p + off, n);
        off += n;
    }
    int nresp = c->nresp;
    c->dead = 1;
    c->handles = 0;
    maybe_free(c);
    free(h->token);
    free(h);
    return nresp;
}
