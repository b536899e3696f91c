/*
 * test_harness.c - tests of the test harness itself (suite "harness"): the
 * s3rver start/stop helpers of s3util.c and the loopback fault proxy
 * (tests/tools/faultproxy.c). HTTP is spoken over raw sockets here so these
 * tests depend on nothing under test (no S3 client, no curl).
 */
#include "s3util.h"
#include "util.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- a minimal HTTP/1.1 client over one (reusable) connection ---- */

typedef struct resp {
    int status;         /* 0 when no status line came back */
    char head[4096];    /* raw header block, NUL-terminated */
    long content_length; /* -1 when absent */
    int chunked;
    char *body;         /* malloc'd, NUL-terminated (decoded when chunked) */
    size_t body_len;
    int closed_early;   /* connection ended before the framed body did */
    int reset;          /* recv failed with ECONNRESET */
} resp;

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect %d: %s", port,
              strerror(errno));
    return fd;
}

static void send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the peer may have reset us on purpose */
        p += w;
        len -= (size_t)w;
    }
}

/* Reads into a growing buffer; returns bytes read (0 = EOF, -1 = error). */
static ssize_t recv_some(int fd, char **buf, size_t *len, size_t *cap, int *reset)
{
    if (*cap - *len < 65536) {
        *cap = *cap * 2 + 65536;
        *buf = realloc(*buf, *cap + 1);
        cr_assert(*buf);
    }
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 15000) <= 0)
        return -1;
    ssize_t r = recv(fd, *buf + *len, *cap - *len, 0);
    if (r < 0 && errno == ECONNRESET)
        *reset = 1;
    if (r > 0)
        *len += (size_t)r;
    return r;
}

/* Sends one request (body may be NULL) and reads one response. The request
 * is anonymous: s3rver serves requests without an Authorization header; one
 * with an Authorization header must also carry x-amz-date (else 403
 * AccessDenied), its access key must be S3RVER, and a V4 signature is then
 * not checked. */
static void http(int fd, const char *method, const char *path, int port, const void *body,
                 size_t blen, resp *r)
{
    memset(r, 0, sizeof *r);
    r->content_length = -1;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     method, path, port, blen);
    send_all(fd, req, (size_t)n);
    if (blen)
        send_all(fd, body, blen);

    char *buf = NULL;
    size_t len = 0, cap = 0;
    char *eoh = NULL;
    while (!eoh) {
        ssize_t got = recv_some(fd, &buf, &len, &cap, &r->reset);
        if (got <= 0) {
            r->closed_early = 1;
            free(buf);
            r->body = calloc(1, 1);
            return;
        }
        buf[len] = 0;
        eoh = strstr(buf, "\r\n\r\n");
    }
    size_t hlen = (size_t)(eoh - buf) + 4;
    snprintf(r->head, sizeof r->head, "%.*s", (int)hlen, buf);
    sscanf(buf, "HTTP/1.%*d %d", &r->status);
    for (char *line = strstr(r->head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        char *h = line + 2;
        if (strncasecmp(h, "Content-Length:", 15) == 0)
            r->content_length = strtol(h + 15, NULL, 10);
        else if (strncasecmp(h, "Transfer-Encoding:", 18) == 0 && strstr(h, "chunked"))
            r->chunked = 1;
    }
    int no_body = strcmp(method, "HEAD") == 0 || r->status == 204 || r->status == 304;
    char *raw = buf + hlen;
    size_t rawlen = len - hlen;
    if (no_body) {
        r->body = calloc(1, 1);
    } else if (r->chunked) {
        /* decode chunks as they arrive */
        size_t pos = 0;
        char *out = malloc(1);
        size_t olen = 0;
        for (;;) {
            raw = buf + hlen;
            rawlen = len - hlen;
            char *crlf = memmem(raw + pos, rawlen - pos, "\r\n", 2);
            if (!crlf) {
                if (recv_some(fd, &buf, &len, &cap, &r->reset) <= 0) {
                    r->closed_early = 1;
                    break;
                }
                continue;
            }
            size_t csz = strtoul(raw + pos, NULL, 16);
            size_t need = (size_t)(crlf - raw) + 2 + csz + 2;
            if (rawlen < need) {
                if (recv_some(fd, &buf, &len, &cap, &r->reset) <= 0) {
                    r->closed_early = 1;
                    break;
                }
                continue;
            }
            if (csz == 0)
                break; /* no trailers expected */
            out = realloc(out, olen + csz + 1);
            memcpy(out + olen, crlf + 2, csz);
            olen += csz;
            pos = need;
        }
        out[olen] = 0;
        r->body = out;
        r->body_len = olen;
    } else if (r->content_length >= 0) {
        while (len - hlen < (size_t)r->content_length) {
            if (recv_some(fd, &buf, &len, &cap, &r->reset) <= 0) {
                r->closed_early = 1;
                break;
            }
        }
        r->body_len = len - hlen;
        if (r->body_len > (size_t)r->content_length)
            r->body_len = (size_t)r->content_length;
        r->body = malloc(r->body_len + 1);
        memcpy(r->body, buf + hlen, r->body_len);
        r->body[r->body_len] = 0;
    } else {
        while (recv_some(fd, &buf, &len, &cap, &r->reset) > 0)
            ;
        r->body_len = len - hlen;
        r->body = malloc(r->body_len + 1);
        memcpy(r->body, buf + hlen, r->body_len);
        r->body[r->body_len] = 0;
    }
    free(buf);
}

/* One request on a fresh connection. */
static void http1(int port, const char *method, const char *path, const void *body,
                  size_t blen, resp *r)
{
    int fd = connect_port(port);
    http(fd, method, path, port, body, blen, r);
    close(fd);
}

static char *make_payload(size_t n, uint64_t seed)
{
    char *p = malloc(n);
    cr_assert(p);
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0)
            (void)tu_rand(&seed);
        p[i] = (char)(seed >> (8 * (i % 8)));
    }
    return p;
}

/* ---- s3rver ---- */

Test(harness, s3rver_put_get_list)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    cr_assert(s.port > 0 && s.pid > 0);
    char want[64];
    snprintf(want, sizeof want, "http://127.0.0.1:%d", s.port);
    cr_assert_str_eq(s.endpoint, want);
    cr_assert_str_eq(getenv("AWS_ENDPOINT_URL_S3"), s.endpoint);
    cr_assert_str_eq(getenv("AWS_ACCESS_KEY_ID"), "S3RVER");
    cr_assert_str_eq(getenv("AWS_SECRET_ACCESS_KEY"), "S3RVER");
    cr_assert_str_eq(getenv("AWS_REGION"), "us-east-1");

    size_t n = 300000;
    char *payload = make_payload(n, 1);
    int fd = connect_port(s.port);
    resp r;
    http(fd, "PUT", "/bkt/dir/obj%20one.bin", s.port, payload, n, &r);
    cr_assert_eq(r.status, 200, "PUT: %d\n%s%s", r.status, r.head, r.body);
    free(r.body);
    /* same connection: keep-alive works */
    http(fd, "GET", "/bkt/dir/obj%20one.bin", s.port, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, n);
    cr_assert(memcmp(r.body, payload, n) == 0);
    free(r.body);
    http(fd, "GET", "/bkt?list-type=2&prefix=dir/", s.port, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "<Key>dir/obj one.bin</Key>"), "%s", r.body);
    free(r.body);
    http(fd, "GET", "/bkt/missing", s.port, NULL, 0, &r);
    cr_assert_eq(r.status, 404);
    cr_assert(strstr(r.body, "NoSuchKey"), "%s", r.body);
    free(r.body);
    close(fd);
    free(payload);
    tu_s3_stop(&s);
}

Test(harness, s3rver_stop_removes_dir_and_process)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = strdup(s.dir);
    int pid = s.pid, port = s.port;
    struct stat st;
    cr_assert(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
    resp r;
    http1(port, "PUT", "/bkt/k", "v", 1, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    tu_s3_stop(&s);
    cr_assert(stat(dir, &st) != 0 && errno == ENOENT, "%s still exists", dir);
    cr_assert(kill(pid, 0) != 0 && errno == ESRCH, "s3rver pid %d still alive", pid);
    cr_assert_null(s.dir);
    /* nothing listens there any more */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(connect(fd, (struct sockaddr *)&a, sizeof a) != 0);
    close(fd);
    free(dir);
    tu_s3_stop(&s); /* idempotent */
}

Test(harness, two_servers_at_once)
{
    tu_s3 a, b;
    tu_s3_start(&a, "one");
    tu_s3_start(&b, "two");
    cr_assert_neq(a.port, b.port);
    cr_assert_str_neq(a.dir, b.dir);
    resp r;
    http1(a.port, "PUT", "/one/x", "from-a", 6, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    http1(b.port, "GET", "/one/x", NULL, 0, &r);
    cr_assert_eq(r.status, 404, "bucket one must not exist on b");
    free(r.body);
    http1(b.port, "PUT", "/two/x", "from-b", 6, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    http1(a.port, "GET", "/one/x", NULL, 0, &r);
    cr_assert_str_eq(r.body, "from-a");
    free(r.body);
    http1(b.port, "GET", "/two/x", NULL, 0, &r);
    cr_assert_str_eq(r.body, "from-b");
    free(r.body);
    tu_s3_stop(&a);
    tu_s3_stop(&b);
}
