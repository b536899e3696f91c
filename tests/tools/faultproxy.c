/*
 * faultproxy.c - a small HTTP/1.1 forwarding proxy for loopback that injects
 * faults, put by the S3 tests between the S3 client and s3rver.
 *
 *   faultproxy --listen 127.0.0.1:PORT|0 --upstream 127.0.0.1:PORT
 *              --faults SPEC [--port-file F] [--log]
 *
 * Design: one thread per client connection (simple beats clever here). The
 * client side is keep-alive: requests and responses are framed by parsing
 * Content-Length and chunked transfer coding (request and response), so a
 * client can send many requests on one connection. Each request is forwarded
 * on a fresh upstream connection, closed after the response (s3rver drops
 * idle keep-alive connections after 5 s; a fresh connection per request
 * never races that). Request bodies are read whole before forwarding
 * (atomic=1, the default: an upload cut by a dying client never reaches
 * s3rver, which would otherwise keep the truncated object), or streamed with
 * atomic=0. Responses are streamed unless a fault needs the whole body
 * (truncate, corrupt), in which case the body is buffered and re-framed with
 * Content-Length.
 * `Expect: 100-continue` is answered by the proxy itself and not forwarded.
 *
 * Fault decisions are a pure function of (seed, request number): request n
 * (1-based, in the order the proxy reads request heads) is faulted when
 * splitmix64(seed, n) says so. With one client connection at a time the
 * sequence of faults is therefore the same on every run with the same seed.
 *
 * Invariants: only loopback addresses are accepted for --listen and
 * --upstream; a request the proxy answers itself (500, 503, reset) never
 * reaches upstream; every other request reaches upstream at most once (with
 * atomic=1, exactly when its whole body arrived).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 65536
#define BUF_SIZE 65536
#define CLIENT_IDLE_MS 120000
#define UPSTREAM_MS 60000

enum kind { K_500, K_503, K_RESET, K_TRUNCATE, K_DELAY, K_CORRUPT, K_COUNT };
static const char *const kind_names[K_COUNT] = {"500", "503", "reset", "truncate", "delay",
                                                "corrupt"};

static struct {
    double rate;
    unsigned kinds; /* bit per enum kind */
    uint64_t seed;
    int delay_ms;
    long skip;     /* the first `skip` requests are never faulted */
    long max;      /* at most `max` faults in all (-1: no limit) */
    char methods[128]; /* "+GET+PUT+" or "" for all */
    char match[256];   /* substring of the request target, or "" */
    int atomic;        /* read request bodies whole before forwarding */
} spec = {0, (1u << K_500) | (1u << K_503) | (1u << K_RESET) | (1u << K_TRUNCATE),
          1, 500, 0, -1, "", "", 1};

static struct sockaddr_in upstream_addr;
static int log_requests;
static volatile sig_atomic_t stop_flag;

static atomic_long n_requests, n_connections, n_faults, n_upstream_errors, n_aborted;
static atomic_long n_inflight; /* requests forwarded upstream, response not yet read */
static atomic_long n_by_kind[K_COUNT];

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("faultproxy: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* The i-th random number for request n. */
static uint64_t req_rand(long n, int i)
{
    return splitmix64(splitmix64(spec.seed ^ ((uint64_t)n * 0x100000001b3ULL)) + (uint64_t)i);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- buffered socket reader ---- */

typedef struct bconn {
    int fd;
    int timeout_ms;
    size_t pos, len;
    char buf[BUF_SIZE];
} bconn;

/* Reads more bytes; 1 if some arrived, 0 on EOF, -1 on error or timeout. */
static int bfill(bconn *b)
{
    if (b->pos == b->len)
        b->pos = b->len = 0;
    if (b->len == sizeof b->buf) {
        if (b->pos == 0)
            return -1;
        memmove(b->buf, b->buf + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
    }
    for (;;) {
        struct pollfd p = {b->fd, POLLIN, 0};
        int r = poll(&p, 1, b->timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        ssize_t got = recv(b->fd, b->buf + b->len, sizeof b->buf - b->len, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0)
            return 0;
        b->len += (size_t)got;
        return 1;
    }
}

static int send_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads a header block (up to and including the blank line) into a malloc'd
 * NUL-terminated string. 1 ok, 0 clean EOF before any byte, -1 error. */
static int read_head(bconn *b, char **out, size_t *outlen)
{
    size_t scanned = 0;
    for (;;) {
        size_t avail = b->len - b->pos;
        /* tolerate stray CRLFs between requests (RFC 9112 2.2) */
        while (avail >= 2 && scanned == 0 && b->buf[b->pos] == '\r' && b->buf[b->pos + 1] == '\n') {
            b->pos += 2;
            avail -= 2;
        }
        char *start = b->buf + b->pos;
        char *end = avail >= 4 ? memmem(start + (scanned > 3 ? scanned - 3 : 0),
                                        avail - (scanned > 3 ? scanned - 3 : 0), "\r\n\r\n", 4)
                               : NULL;
        if (end) {
            size_t n = (size_t)(end - start) + 4;
            *out = malloc(n + 1);
            if (!*out)
                return -1;
            memcpy(*out, start, n);
            (*out)[n] = 0;
            *outlen = n;
            b->pos += n;
            return 1;
        }
        scanned = avail;
        if (avail >= HEAD_MAX)
            return -1;
        int r = bfill(b);
        if (r <= 0)
            return (r == 0 && b->len - b->pos == 0) ? 0 : -1;
    }
}

/* Value of header `name` in a head block (first match), copied into out. */
static int header_get(const char *head, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line && line[2] != '\r';
         line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
            const char *v = h + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            size_t n = (size_t)(e - v);
            if (n >= cap)
                n = cap - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return 1;
        }
    }
    return 0;
}

static int header_has_token(const char *head, const char *name, const char *token)
{
    char v[512];
    if (!header_get(head, name, v, sizeof v))
        return 0;
    for (char *p = v; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return strstr(v, token) != NULL;
}

/* Copy of head without the named headers (NULL-terminated list), with
 * `extra` ("Name: value\r\n" lines or NULL) added before the blank line. */
static char *head_rewrite(const char *head, const char *const drop[], const char *extra,
                          size_t *outlen)
{
    size_t cap = strlen(head) + (extra ? strlen(extra) : 0) + 1;
    char *out = malloc(cap), *o = out;
    if (!out)
        return NULL;
    const char *line = head;
    int first = 1;
    for (;;) {
        const char *e = strstr(line, "\r\n");
        if (!e)
            break;
        if (e == line) { /* blank line: end */
            if (extra) {
                size_t n = strlen(extra);
                memcpy(o, extra, n);
                o += n;
            }
            memcpy(o, "\r\n", 2);
            o += 2;
            break;
        }
        int keep = 1;
        if (!first)
            for (int i = 0; drop[i]; i++) {
                size_t nl = strlen(drop[i]);
                if (strncasecmp(line, drop[i], nl) == 0 && line[nl] == ':')
                    keep = 0;
            }
        if (keep) {
            memcpy(o, line, (size_t)(e - line) + 2);
            o += (e - line) + 2;
        }
        first = 0;
        line = e + 2;
    }
    *o = 0;
    *outlen = (size_t)(o - out);
    return out;
}

/* ---- body relay ---- */

typedef struct membuf {
    char *p;
    size_t len, cap;
} membuf;

static int mb_add(membuf *m, const void *p, size_t n)
{
    if (m->len + n > m->cap) {
        size_t c = m->cap ? m->cap : 65536;
        while (c < m->len + n)
            c *= 2;
        char *np = realloc(m->p, c);
        if (!np)
            return -1;
        m->p = np;
        m->cap = c;
    }
    memcpy(m->p + m->len, p, n);
    m->len += n;
    return 0;
}

/* Where relayed bytes go: raw (framed) bytes to fd (-1: nowhere), payload
 * bytes also to mb (NULL: nowhere). A write error to fd sets out_err and the
 * relay keeps reading, so the source stays in sync. */
typedef struct sink {
    int fd;
    membuf *mb;
    int out_err;
} sink;

static int sink_raw(sink *s, const char *p, size_t n)
{
    if (s->fd >= 0 && !s->out_err && send_all(s->fd, p, n) != 0)
        s->out_err = 1;
    return 0;
}

static int sink_data(sink *s, const char *p, size_t n)
{
    sink_raw(s, p, n);
    if (s->mb && mb_add(s->mb, p, n) != 0)
        return -1;
    return 0;
}

/* Relays exactly n bytes. 0 ok, -1 source ended early or failed. */
static int relay_fixed(bconn *b, unsigned long long n, sink *s)
{
    while (n) {
        if (b->pos == b->len && bfill(b) <= 0)
            return -1;
        size_t take = b->len - b->pos;
        if (take > n)
            take = (size_t)n;
        if (sink_data(s, b->buf + b->pos, take) != 0)
            return -1;
        b->pos += take;
        n -= take;
    }
    return 0;
}

/* Relays everything until EOF. */
static int relay_to_eof(bconn *b, sink *s)
{
    for (;;) {
        if (b->pos < b->len) {
            if (sink_data(s, b->buf + b->pos, b->len - b->pos) != 0)
                return -1;
            b->pos = b->len;
        }
        int r = bfill(b);
        if (r == 0)
            return 0;
        if (r < 0)
            return -1;
    }
}

/* Reads one line (through LF) into line (NUL-terminated, truncated to cap). */
static int read_line(bconn *b, char *line, size_t cap, sink *s)
{
    size_t n = 0;
    for (;;) {
        if (b->pos == b->len && bfill(b) <= 0)
            return -1;
        char c = b->buf[b->pos++];
        sink_raw(s, &c, 1);
        if (n + 1 < cap)
            line[n++] = c;
        if (c == '\n')
            break;
        if (n > 4096)
            return -1;
    }
    line[n] = 0;
    return 0;
}

/* Relays a chunked body, raw framing to s->fd and payload to s->mb. */
static int relay_chunked(bconn *b, sink *s)
{
    char line[512];
    for (;;) { /* each framing line is read silently, then sent in one piece */
        sink ls = {-1, NULL, 0};
        if (read_line(b, line, sizeof line, &ls) != 0)
            return -1;
        sink_raw(s, line, strlen(line));
        char *end;
        unsigned long long sz = strtoull(line, &end, 16);
        if (end == line)
            return -1;
        if (sz == 0) {
            for (;;) { /* trailers, then the blank line */
                if (read_line(b, line, sizeof line, &ls) != 0)
                    return -1;
                sink_raw(s, line, strlen(line));
                if (strcmp(line, "\r\n") == 0 || strcmp(line, "\n") == 0)
                    return 0;
            }
        }
        if (relay_fixed(b, sz, s) != 0)
            return -1;
        if (read_line(b, line, sizeof line, &ls) != 0)
            return -1;
        sink_raw(s, line, strlen(line));
    }
}

/* ---- responses made by the proxy ---- */

static void send_error(int fd, int status, const char *code, const char *msg, long reqno,
                       int is_head, int keep_alive)
{
    char body[512], head[512];
    int bl = snprintf(body, sizeof body,
                      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code>"
                      "<Message>%s</Message><RequestId>FAULTPROXY%08ld</RequestId>"
                      "<HostId>faultproxy</HostId></Error>",
                      code, msg, reqno);
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\n"
                      "Content-Length: %d\r\nx-amz-request-id: FAULTPROXY%08ld\r\n"
                      "Server: faultproxy\r\nConnection: %s\r\n\r\n",
                      status,
                      status == 500   ? "Internal Server Error"
                      : status == 503 ? "Slow Down"
                      : status == 502 ? "Bad Gateway"
                                      : "Bad Request",
                      bl, reqno, keep_alive ? "keep-alive" : "close");
    send_all(fd, head, (size_t)hl);
    if (!is_head)
        send_all(fd, body, (size_t)bl);
}

static void abort_connection(int fd)
{
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void format_stats(char *out, size_t cap)
{
    int n = snprintf(out, cap,
                     "requests %ld\nconnections %ld\nfaults %ld\nupstream_errors %ld\n"
                     "aborted_requests %ld\ninflight %ld\n",
                     atomic_load(&n_requests), atomic_load(&n_connections),
                     atomic_load(&n_faults), atomic_load(&n_upstream_errors),
                     atomic_load(&n_aborted), atomic_load(&n_inflight));
    for (int k = 0; k < K_COUNT && n > 0 && (size_t)n < cap; k++)
        n += snprintf(out + n, cap - (size_t)n, "%s %ld\n", kind_names[k],
                      atomic_load(&n_by_kind[k]));
}

/* ---- the fault decision ---- */

static int method_selected(const char *method)
{
    if (!spec.methods[0])
        return 1;
    char m[40];
    snprintf(m, sizeof m, "+%s+", method);
    return strstr(spec.methods, m) != NULL;
}

/* Returns the kind to inject for request n, or -1. */
static int decide(long n, const char *method, const char *target)
{
    if (spec.rate <= 0 || !spec.kinds || n <= spec.skip)
        return -1;
    if (!method_selected(method) || (spec.match[0] && !strstr(target, spec.match)))
        return -1;
    double u = (double)(req_rand(n, 0) >> 11) * (1.0 / 9007199254740992.0);
    if (!(spec.rate >= 1 || u < spec.rate))
        return -1;
    if (spec.max >= 0) {
        long f = atomic_fetch_add(&n_faults, 1);
        if (f >= spec.max) {
            atomic_fetch_sub(&n_faults, 1);
            return -1;
        }
    } else {
        atomic_fetch_add(&n_faults, 1);
    }
    int kinds[K_COUNT], nk = 0;
    for (int k = 0; k < K_COUNT; k++)
        if (spec.kinds & (1u << k))
            kinds[nk++] = k;
    int k = kinds[req_rand(n, 1) % (uint64_t)nk];
    atomic_fetch_add(&n_by_kind[k], 1);
    return k;
}

/* ---- one client connection ---- */

static int connect_upstream(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&upstream_addr, sizeof upstream_addr) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

typedef enum { BODY_NONE, BODY_FIXED, BODY_CHUNKED, BODY_EOF } body_kind;

/* Request body framing: Content-Length or chunked; none otherwise. */
static body_kind request_framing(const char *head, unsigned long long *len)
{
    char v[64];
    if (header_has_token(head, "Transfer-Encoding", "chunked"))
        return BODY_CHUNKED;
    if (header_get(head, "Content-Length", v, sizeof v)) {
        *len = strtoull(v, NULL, 10);
        return *len ? BODY_FIXED : BODY_NONE;
    }
    return BODY_NONE;
}

static body_kind response_framing(const char *head, int status, int is_head,
                                  unsigned long long *len)
{
    char v[64];
    if (is_head || (status >= 100 && status < 200) || status == 204 || status == 304)
        return BODY_NONE;
    if (header_has_token(head, "Transfer-Encoding", "chunked"))
        return BODY_CHUNKED;
    if (header_get(head, "Content-Length", v, sizeof v)) {
        *len = strtoull(v, NULL, 10);
        return BODY_FIXED;
    }
    return BODY_EOF;
}

static int relay_body(bconn *b, body_kind k, unsigned long long len, sink *s)
{
    switch (k) {
    case BODY_NONE: return 0;
    case BODY_FIXED: return relay_fixed(b, len, s);
    case BODY_CHUNKED: return relay_chunked(b, s);
    case BODY_EOF: return relay_to_eof(b, s);
    }
    return -1;
}

/* Serves one request. Returns 1 to keep the client connection, 0 to close it
 * normally, -1 when it was already closed/aborted (fd no longer valid). */
static int serve_one(bconn *cb, bconn *ub)
{
    char *head = NULL;
    size_t hlen = 0;
    int r = read_head(cb, &head, &hlen);
    if (r <= 0)
        return 0;

    char method[32] = "", target[2048] = "";
    if (sscanf(head, "%31s %2047s", method, target) != 2) {
        send_error(cb->fd, 400, "BadRequest", "malformed request line", 0, 0, 0);
        free(head);
        return 0;
    }
    int is_head = strcmp(method, "HEAD") == 0;
    const char *eol = strstr(head, "\r\n");
    int http10 = eol && eol - head >= 8 && memcmp(eol - 8, "HTTP/1.0", 8) == 0;
    int client_close = http10 || header_has_token(head, "Connection", "close");
    unsigned long long qlen = 0;
    body_kind qk = request_framing(head, &qlen);
    if (header_has_token(head, "Expect", "100-continue") && qk != BODY_NONE)
        send_all(cb->fd, "HTTP/1.1 100 Continue\r\n\r\n", 25);

    if (strcmp(method, "GET") == 0 && strcmp(target, "/__faultproxy/stats") == 0) {
        char body[1024], rh[256];
        format_stats(body, sizeof body);
        int n = snprintf(rh, sizeof rh,
                         "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                         "Connection: %s\r\n\r\n",
                         strlen(body), client_close ? "close" : "keep-alive");
        sink none = {-1, NULL, 0};
        relay_body(cb, qk, qlen, &none);
        send_all(cb->fd, rh, (size_t)n);
        send_all(cb->fd, body, strlen(body));
        free(head);
        return client_close ? 0 : 1;
    }

    long reqno = atomic_fetch_add(&n_requests, 1) + 1;
    int fault = decide(reqno, method, target);
    if (log_requests)
        fprintf(stderr, "faultproxy: #%ld %s %s%s%s\n", reqno, method, target,
                fault >= 0 ? " fault=" : "", fault >= 0 ? kind_names[fault] : "");

    if (fault == K_500 || fault == K_503 || fault == K_RESET) {
        sink none = {-1, NULL, 0};
        int ok = relay_body(cb, qk, qlen, &none) == 0;
        free(head);
        if (fault == K_RESET) {
            abort_connection(cb->fd);
            return -1;
        }
        if (fault == K_500)
            send_error(cb->fd, 500, "InternalError",
                       "We encountered an internal error. Please try again.", reqno, is_head,
                       ok && !client_close);
        else
            send_error(cb->fd, 503, "SlowDown", "Please reduce your request rate.", reqno,
                       is_head, ok && !client_close);
        return ok && !client_close ? 1 : 0;
    }
    if (fault == K_DELAY)
        sleep_ms(spec.delay_ms);

    /* With atomic=1 the request body is read whole first: a client that dies
     * mid-body sends nothing upstream (s3rver writes a PUT body straight into
     * the object file, so a cut upload would leave a truncated object behind,
     * which real S3 never does). */
    membuf qbody = {0};
    int buffered = spec.atomic && qk != BODY_NONE;
    if (buffered) {
        sink capture = {-1, &qbody, 0};
        if (relay_body(cb, qk, qlen, &capture) != 0) {
            atomic_fetch_add(&n_aborted, 1);
            free(qbody.p);
            free(head);
            return 0; /* the client went away: forward nothing */
        }
    }

    /* forward the request on a fresh upstream connection */
    ub->fd = connect_upstream();
    ub->pos = ub->len = 0;
    if (ub->fd >= 0)
        atomic_fetch_add(&n_inflight, 1); /* until its upstream socket closes */
    if (ub->fd < 0) {
        atomic_fetch_add(&n_upstream_errors, 1);
        sink none = {-1, NULL, 0};
        int ok = buffered || relay_body(cb, qk, qlen, &none) == 0;
        send_error(cb->fd, 502, "BadGateway", "faultproxy: upstream connection refused", reqno,
                   is_head, ok && !client_close);
        free(qbody.p);
        free(head);
        return ok && !client_close ? 1 : 0;
    }
    static const char *const drop_req[] = {"Expect", "Proxy-Connection", NULL};
    static const char *const drop_req_chunked[] = {"Expect", "Proxy-Connection",
                                                   "Transfer-Encoding", "Content-Length", NULL};
    size_t fl;
    char *fwd;
    if (buffered && qk == BODY_CHUNKED) { /* re-framed with the decoded length */
        char extra[64];
        snprintf(extra, sizeof extra, "Content-Length: %zu\r\n", qbody.len);
        fwd = head_rewrite(head, drop_req_chunked, extra, &fl);
    } else {
        fwd = head_rewrite(head, drop_req, NULL, &fl);
    }
    free(head);
    head = NULL;
    int keep = !client_close;
    sink up = {ub->fd, NULL, 0};
    int sent = fwd && send_all(ub->fd, fwd, fl) == 0;
    if (sent && buffered)
        sent = qbody.len == 0 || send_all(ub->fd, qbody.p, qbody.len) == 0;
    else if (sent && relay_body(cb, qk, qlen, &up) != 0)
        sent = 0; /* client went away mid-body (streamed: upstream saw a part) */
    free(qbody.p);
    free(fwd);
    if (!sent || up.out_err) {
        close(ub->fd);
        atomic_fetch_sub(&n_inflight, 1);
        ub->fd = -1;
        if (buffered || up.out_err) { /* the request body was consumed */
            atomic_fetch_add(&n_upstream_errors, 1);
            send_error(cb->fd, 502, "BadGateway", "faultproxy: upstream write failed", reqno,
                       is_head, 0);
        }
        return 0;
    }

    /* the response (skipping interim 1xx answers, which are not forwarded) */
    char *rhead = NULL;
    size_t rhl = 0;
    int status = 0;
    for (;;) {
        free(rhead);
        rhead = NULL;
        if (read_head(ub, &rhead, &rhl) != 1 || sscanf(rhead, "HTTP/1.%*d %d", &status) != 1) {
            free(rhead);
            close(ub->fd);
            atomic_fetch_sub(&n_inflight, 1);
            ub->fd = -1;
            atomic_fetch_add(&n_upstream_errors, 1);
            send_error(cb->fd, 502, "BadGateway", "faultproxy: no response from upstream",
                       reqno, is_head, 0);
            return 0;
        }
        if (status >= 200 || status == 101)
            break;
    }
    if (header_has_token(rhead, "Connection", "close"))
        keep = 0;
    unsigned long long rlen = 0;
    body_kind rk = response_framing(rhead, status, is_head, &rlen);

    int ret;
    if (fault == K_TRUNCATE || fault == K_CORRUPT) {
        membuf mb = {0};
        sink cap = {-1, &mb, 0};
        int ok = relay_body(ub, rk, rlen, &cap) == 0;
        static const char *const drop_resp[] = {"Content-Length", "Transfer-Encoding", NULL};
        char extra[64];
        size_t nh;
        char *nhead;
        if (rk == BODY_NONE) {
            nhead = head_rewrite(rhead, (const char *const[]){NULL}, NULL, &nh);
        } else {
            snprintf(extra, sizeof extra, "Content-Length: %zu\r\n", mb.len);
            nhead = head_rewrite(rhead, drop_resp, extra, &nh);
        }
        if (!ok || !nhead) {
            keep = 0;
        }
        if (nhead && fault == K_TRUNCATE) {
            if (mb.len == 0 || rk == BODY_NONE)
                send_all(cb->fd, nhead, nh / 2); /* nothing to cut: cut the head */
            else {
                send_all(cb->fd, nhead, nh);
                send_all(cb->fd, mb.p, mb.len / 2);
            }
            keep = 0;
        } else if (nhead) {
            if (mb.len > 0) {
                size_t at = (size_t)(req_rand(reqno, 2) % mb.len);
                mb.p[at] ^= (char)(1u << (req_rand(reqno, 3) % 8));
            }
            send_all(cb->fd, nhead, nh);
            if (mb.len)
                send_all(cb->fd, mb.p, mb.len);
        }
        free(nhead);
        free(mb.p);
        ret = keep ? 1 : 0;
    } else {
        sink cl = {cb->fd, NULL, 0};
        int head_sent = send_all(cb->fd, rhead, rhl);
        int ok = relay_body(ub, rk, rlen, &cl) == 0;
        if (rk == BODY_EOF)
            keep = 0;
        ret = (head_sent == 0 && ok && !cl.out_err && keep) ? 1 : 0;
    }
    free(rhead);
    close(ub->fd);
    atomic_fetch_sub(&n_inflight, 1);
    ub->fd = -1;
    return ret;
}

static void *client_thread(void *arg)
{
    int fd = (int)(intptr_t)arg;
    bconn *cb = malloc(sizeof *cb), *ub = malloc(sizeof *ub);
    if (cb && ub) {
        cb->fd = fd;
        cb->timeout_ms = CLIENT_IDLE_MS;
        cb->pos = cb->len = 0;
        ub->fd = -1;
        ub->timeout_ms = UPSTREAM_MS;
        ub->pos = ub->len = 0;
        int r;
        while ((r = serve_one(cb, ub)) == 1)
            ;
        if (r == 0)
            close(fd);
    } else {
        close(fd);
    }
    free(cb);
    free(ub);
    return NULL;
}

/* ---- command line ---- */

static void usage(FILE *f)
{
    fputs("usage: faultproxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT\n"
          "                  [--faults SPEC] [--port-file FILE] [--log]\n"
          "\n"
          "An HTTP/1.1 forwarding proxy for loopback tests that injects faults.\n"
          "PORT 0 for --listen picks a free port. Once listening, the port is\n"
          "printed on stdout (a line with the number) and written to FILE, and\n"
          "'faultproxy listening on 127.0.0.1:PORT' goes to stderr. At exit\n"
          "(SIGTERM, SIGINT) the statistics go to stderr. GET /__faultproxy/stats\n"
          "answers them at any time (that request is neither counted nor faulted);\n"
          "'inflight' there counts requests forwarded upstream whose response has\n"
          "not been read whole yet (wait for 0 before reading what a killed client\n"
          "was writing: s3rver writes objects in place).\n"
          "\n"
          "SPEC is a comma-separated list of key=value:\n"
          "  rate=R        fraction of requests faulted, 0..1 (default 0; 1 = all)\n"
          "  kinds=K+K..   which faults, chosen uniformly per faulted request\n"
          "                (default 500+503+reset+truncate):\n"
          "     500        answer 500 InternalError (XML) without forwarding\n"
          "     503        answer 503 SlowDown (XML, as S3 does) without forwarding\n"
          "     reset      read the request, do not forward it, close the client\n"
          "                connection with a TCP RST (SO_LINGER 0)\n"
          "     truncate   forward; send the response head with the full\n"
          "                Content-Length but only half the body, then close\n"
          "                (bodyless responses: half the head)\n"
          "     delay      sleep delay_ms, then forward normally\n"
          "     corrupt    forward; flip one bit of one response body byte\n"
          "  seed=N        PRNG seed (default 1); the decision for request n\n"
          "                depends only on (seed, n)\n"
          "  delay_ms=N    for delay (default 500)\n"
          "  skip=N        never fault the first N requests (default 0)\n"
          "  max=N         at most N faults in all (default no limit)\n"
          "  methods=M+M   only fault these methods, e.g. GET+PUT (default all)\n"
          "  match=STR     only fault requests whose target contains STR\n"
          "  atomic=1|0    1 (default): read each request body whole before sending\n"
          "                anything upstream, so a client that dies mid-upload leaves\n"
          "                nothing behind (s3rver writes PUT bodies in place and keeps\n"
          "                a truncated object; real S3 never does); chunked request\n"
          "                bodies are re-framed with Content-Length. 0: stream bodies\n"
          "\n"
          "Example: --faults rate=0.3,kinds=500+503+reset+truncate,seed=7\n",
          f);
}

static void parse_addr(const char *s, struct sockaddr_in *a, const char *what)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    const char *port;
    if (colon) {
        size_t n = (size_t)(colon - s);
        if (n >= sizeof host)
            die("%s: bad address '%s'", what, s);
        memcpy(host, s, n);
        host[n] = 0;
        port = colon + 1;
    } else {
        strcpy(host, "127.0.0.1");
        port = s;
    }
    if (strcmp(host, "localhost") == 0 || !host[0])
        strcpy(host, "127.0.0.1");
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
        die("%s: '%s' is not an IPv4 address", what, host);
    if ((ntohl(a->sin_addr.s_addr) >> 24) != 127)
        die("%s: %s is not a loopback address (127.0.0.0/8 only)", what, host);
    char *end;
    long p = strtol(port, &end, 10);
    if (!*port || *end || p < 0 || p > 65535)
        die("%s: bad port '%s'", what, port);
    a->sin_port = htons((uint16_t)p);
}

static void parse_spec(const char *s)
{
    char *copy = strdup(s), *save = NULL;
    if (!copy)
        die("out of memory");
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq)
            die("--faults: '%s' is not key=value", item);
        *eq = 0;
        const char *k = item, *v = eq + 1;
        char *end;
        if (strcmp(k, "rate") == 0) {
            spec.rate = strtod(v, &end);
            if (end == v || *end || spec.rate < 0 || spec.rate > 1)
                die("--faults: rate must be in 0..1, got '%s'", v);
        } else if (strcmp(k, "kinds") == 0) {
            spec.kinds = 0;
            char *kc = strdup(v), *ks = NULL;
            for (char *t = strtok_r(kc, "+", &ks); t; t = strtok_r(NULL, "+", &ks)) {
                int found = -1;
                for (int i = 0; i < K_COUNT; i++)
                    if (strcmp(t, kind_names[i]) == 0)
                        found = i;
                if (found < 0)
                    die("--faults: unknown kind '%s' (500, 503, reset, truncate, delay, corrupt)",
                        t);
                spec.kinds |= 1u << found;
            }
            free(kc);
            if (!spec.kinds)
                die("--faults: kinds is empty");
        } else if (strcmp(k, "seed") == 0) {
            spec.seed = strtoull(v, &end, 0);
            if (end == v || *end)
                die("--faults: bad seed '%s'", v);
        } else if (strcmp(k, "delay_ms") == 0) {
            long d = strtol(v, &end, 10);
            if (end == v || *end || d < 0 || d > 600000)
                die("--faults: bad delay_ms '%s'", v);
            spec.delay_ms = (int)d;
        } else if (strcmp(k, "atomic") == 0) {
            if (strcmp(v, "0") != 0 && strcmp(v, "1") != 0)
                die("--faults: atomic must be 0 or 1, got '%s'", v);
            spec.atomic = v[0] == '1';
        } else if (strcmp(k, "skip") == 0 || strcmp(k, "max") == 0) {
            long n = strtol(v, &end, 10);
            if (end == v || *end || n < 0)
                die("--faults: bad %s '%s'", k, v);
            if (k[0] == 's')
                spec.skip = n;
            else
                spec.max = n;
        } else if (strcmp(k, "methods") == 0) {
            if (strlen(v) + 3 > sizeof spec.methods)
                die("--faults: methods too long");
            snprintf(spec.methods, sizeof spec.methods, "+%s+", v);
        } else if (strcmp(k, "match") == 0) {
            if (strlen(v) >= sizeof spec.match)
                die("--faults: match too long");
            snprintf(spec.match, sizeof spec.match, "%s", v);
        } else {
            die("--faults: unknown key '%s' (see --help)", k);
        }
    }
    free(copy);
}

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

int main(int argc, char **argv)
{
    const char *listen_s = NULL, *upstream_s = NULL, *port_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_next = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--listen") == 0 && has_next) {
            listen_s = argv[++i];
        } else if (strcmp(a, "--upstream") == 0 && has_next) {
            upstream_s = argv[++i];
        } else if (strcmp(a, "--faults") == 0 && has_next) {
            parse_spec(argv[++i]);
        } else if (strcmp(a, "--port-file") == 0 && has_next) {
            port_file = argv[++i];
        } else if (strcmp(a, "--log") == 0) {
            log_requests = 1;
        } else {
            fprintf(stderr, "faultproxy: unknown or incomplete option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!listen_s || !upstream_s) {
        usage(stderr);
        return 2;
    }
    struct sockaddr_in la;
    parse_addr(listen_s, &la, "--listen");
    parse_addr(upstream_s, &upstream_addr, "--upstream");

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd < 0)
        die("socket: %s", strerror(errno));
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&la, sizeof la) != 0)
        die("bind %s: %s", listen_s, strerror(errno));
    if (listen(lfd, 128) != 0)
        die("listen: %s", strerror(errno));
    socklen_t sl = sizeof la;
    getsockname(lfd, (struct sockaddr *)&la, &sl);
    int port = ntohs(la.sin_port);
    if (port_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, port_file) != 0)
            die("--port-file %s: %s", port_file, strerror(errno));
    }
    printf("%d\n", port);
    fflush(stdout);
    char ubuf[32];
    inet_ntop(AF_INET, &upstream_addr.sin_addr, ubuf, sizeof ubuf);
    fprintf(stderr, "faultproxy listening on 127.0.0.1:%d (upstream %s:%d)\n", port, ubuf,
            ntohs(upstream_addr.sin_port));

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    while (!stop_flag) {
        struct pollfd p = {lfd, POLLIN, 0};
        int r = poll(&p, 1, 500);
        if (r <= 0)
            continue;
        int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0)
            continue;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        atomic_fetch_add(&n_connections, 1);
        pthread_t t;
        if (pthread_create(&t, &attr, client_thread, (void *)(intptr_t)cfd) != 0)
            close(cfd);
    }
    close(lfd);
    char stats[1024];
    format_stats(stats, sizeof stats);
    for (char *c = stats; *c; c++)
        if (*c == '\n')
            *c = *(c + 1) ? ',' : 0;
    fprintf(stderr, "faultproxy: stats: %s\n", stats);
    fflush(stderr);
    _exit(0); /* client threads may still be blocked; do not wait for them */
}
