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

/* ---- servers, stopped by the suite's fini even when an assertion fails ---- */

static tu_s3 S1, S2;
static tu_proxy P;

static void stop_all(void)
{
    tu_proxy_stop(&P);
    tu_s3_stop(&S1);
    tu_s3_stop(&S2);
}

TestSuite(harness, .fini = stop_all);

/* ---- s3rver ---- */

Test(harness, s3rver_put_get_list)
{
    tu_s3_start(&S1, "bkt");
    cr_assert(S1.port > 0 && S1.pid > 0);
    char want[64];
    snprintf(want, sizeof want, "http://127.0.0.1:%d", S1.port);
    cr_assert_str_eq(S1.endpoint, want);
    cr_assert_str_eq(getenv("AWS_ENDPOINT_URL_S3"), S1.endpoint);
    cr_assert_str_eq(getenv("AWS_ACCESS_KEY_ID"), "S3RVER");
    cr_assert_str_eq(getenv("AWS_SECRET_ACCESS_KEY"), "S3RVER");
    cr_assert_str_eq(getenv("AWS_REGION"), "us-east-1");

    size_t n = 300000;
    char *payload = make_payload(n, 1);
    int fd = connect_port(S1.port);
    resp r;
    http(fd, "PUT", "/bkt/dir/obj%20one.bin", S1.port, payload, n, &r);
    cr_assert_eq(r.status, 200, "PUT: %d\n%s%s", r.status, r.head, r.body);
    free(r.body);
    /* same connection: keep-alive works */
    http(fd, "GET", "/bkt/dir/obj%20one.bin", S1.port, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, n);
    cr_assert(memcmp(r.body, payload, n) == 0);
    free(r.body);
    http(fd, "GET", "/bkt?list-type=2&prefix=dir/", S1.port, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "<Key>dir/obj one.bin</Key>"), "%s", r.body);
    free(r.body);
    http(fd, "GET", "/bkt/missing", S1.port, NULL, 0, &r);
    cr_assert_eq(r.status, 404);
    cr_assert(strstr(r.body, "NoSuchKey"), "%s", r.body);
    free(r.body);
    close(fd);
    free(payload);
    tu_s3_stop(&S1);
}

Test(harness, s3rver_stop_removes_dir_and_process)
{
    tu_s3_start(&S1, "bkt");
    char *dir = strdup(S1.dir);
    int pid = S1.pid, port = S1.port;
    struct stat st;
    cr_assert(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
    resp r;
    http1(port, "PUT", "/bkt/k", "v", 1, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    tu_s3_stop(&S1);
    cr_assert(stat(dir, &st) != 0 && errno == ENOENT, "%s still exists", dir);
    cr_assert(kill(pid, 0) != 0 && errno == ESRCH, "s3rver pid %d still alive", pid);
    cr_assert_null(S1.dir);
    /* nothing listens there any more */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(connect(fd, (struct sockaddr *)&S1, sizeof a) != 0);
    close(fd);
    free(dir);
    tu_s3_stop(&S1); /* idempotent */
}

Test(harness, two_servers_at_once)
{
    tu_s3_start(&S1, "one");
    tu_s3_start(&S2, "two");
    cr_assert_neq(S1.port, S2.port);
    cr_assert_str_neq(S1.dir, S2.dir);
    resp r;
    http1(S1.port, "PUT", "/one/x", "from-a", 6, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    http1(S2.port, "GET", "/one/x", NULL, 0, &r);
    cr_assert_eq(r.status, 404, "bucket one must not exist on b");
    free(r.body);
    http1(S2.port, "PUT", "/two/x", "from-b", 6, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    http1(S1.port, "GET", "/one/x", NULL, 0, &r);
    cr_assert_str_eq(r.body, "from-a");
    free(r.body);
    http1(S2.port, "GET", "/two/x", NULL, 0, &r);
    cr_assert_str_eq(r.body, "from-b");
    free(r.body);
    tu_s3_stop(&S1);
    tu_s3_stop(&S2);
}

/* ---- the fault proxy ---- */

static long stat_of(int proxy_port, const char *name)
{
    resp r;
    http1(proxy_port, "GET", "/__faultproxy/stats", NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    long v = -1;
    size_t nl = strlen(name);
    for (char *line = r.body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, name, nl) == 0 && line[nl] == ' ')
            v = strtol(line + nl + 1, NULL, 10);
    free(r.body);
    return v;
}

/* The header block without its Date line (which may tick between calls). */
static void strip_date(char *head)
{
    char *d = strstr(head, "\r\nDate: ");
    if (d) {
        char *e = strstr(d + 2, "\r\n");
        memmove(d, e, strlen(e) + 1);
    }
}

Test(harness, proxy_rate0_forwards_byte_identically)
{
    tu_s3_start(&S1, "bkt");
    tu_proxy_start(&P, S1.port, "rate=0");
    cr_assert(P.port > 0 && P.port != S1.port);
    char want[64];
    snprintf(want, sizeof want, "http://127.0.0.1:%d", P.port);
    cr_assert_str_eq(P.endpoint, want);

    size_t n = 2500000;
    char *payload = make_payload(n, 2);
    int fd = connect_port(P.port); /* one client connection for everything */
    resp r, d;
    http(fd, "PUT", "/bkt/big", P.port, payload, n, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    http(fd, "PUT", "/bkt/empty", P.port, "", 0, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    const char *paths[] = {"/bkt/big", "/bkt/empty", "/bkt?list-type=2", "/bkt/nope", "/nob/x"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        http(fd, "GET", paths[i], P.port, NULL, 0, &r);
        http1(S1.port, "GET", paths[i], NULL, 0, &d);
        cr_assert_eq(r.status, d.status, "%s", paths[i]);
        cr_assert_eq(r.body_len, d.body_len, "%s", paths[i]);
        if (strstr(paths[i], "list-type")) { /* LastModified is per second, same here */
            cr_assert(strstr(r.body, "<Key>big</Key>") && strstr(r.body, "<Key>empty</Key>"));
        }
        cr_assert(memcmp(r.body, d.body, r.body_len) == 0, "%s differs", paths[i]);
        strip_date(r.head);
        strip_date(d.head);
        cr_assert_str_eq(r.head, d.head, "%s", paths[i]);
        free(r.body);
        free(d.body);
    }
    http(fd, "HEAD", "/bkt/big", P.port, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.content_length, (long)n);
    cr_assert_eq(r.body_len, 0);
    free(r.body);
    http(fd, "GET", "/bkt/big", P.port, NULL, 0, &r);
    cr_assert_eq(r.body_len, n);
    cr_assert(memcmp(r.body, payload, n) == 0);
    free(r.body);
    close(fd);
    /* A proxy thread counts its request in flight until it has closed the
     * upstream socket, just after relaying the last byte to us: a stats read
     * can get in first, so wait (at most 5 s) for the count to drop. */
    long inflight, reads = 0;
    long long t0 = tu_now_ms();
    while ((void)reads++, (inflight = stat_of(P.port, "inflight")) != 0 && tu_now_ms() - t0 < 5000)
        tu_sleep_ms(2);
    cr_assert_eq(inflight, 0);
    cr_assert_eq(stat_of(P.port, "requests"), 9);
    cr_assert_eq(stat_of(P.port, "faults"), 0);
    /* 1 for the requests above (keep-alive held), one per stats read (each
     * on its own connection: the inflight reads, two more and this one) */
    cr_assert_eq(stat_of(P.port, "connections"), 1 + reads + 3);
    free(payload);
    tu_proxy_stop(&P);
    tu_s3_stop(&S1);
}

Test(harness, proxy_503_on_every_request)
{
    tu_s3_start(&S1, "bkt");
    tu_proxy_start(&P, S1.port, "rate=1,kinds=503");
    int fd = connect_port(P.port);
    resp r;
    const char *methods[] = {"PUT", "GET", "HEAD", "DELETE", "GET"};
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        int put = strcmp(methods[i], "PUT") == 0;
        http(fd, methods[i], "/bkt/k", P.port, put ? "value" : NULL, put ? 5 : 0, &r);
        cr_assert_eq(r.status, 503, "%s: %d", methods[i], r.status);
        cr_assert_not(r.closed_early, "keep-alive after a 503");
        if (strcmp(methods[i], "HEAD") != 0) {
            cr_assert(strstr(r.body, "<Code>SlowDown</Code>"), "%s", r.body);
            cr_assert(strstr(r.head, "application/xml"));
        }
        free(r.body);
    }
    close(fd);
    /* a request answered by the proxy never reaches s3rver */
    http1(S1.port, "GET", "/bkt/k", NULL, 0, &r);
    cr_assert_eq(r.status, 404);
    free(r.body);
    cr_assert_eq(stat_of(P.port, "503"), 5);
    tu_proxy_stop(&P);
    tu_s3_stop(&S1);
}

Test(harness, proxy_500_reset_truncate_corrupt)
{
    tu_s3_start(&S1, "bkt");
    size_t n = 100000;
    char *payload = make_payload(n, 3);
    resp r;
    http1(S1.port, "PUT", "/bkt/obj", payload, n, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);

    tu_proxy_start(&P, S1.port, "rate=1,kinds=500");
    http1(P.port, "GET", "/bkt/obj", NULL, 0, &r);
    cr_assert_eq(r.status, 500);
    cr_assert(strstr(r.body, "<Code>InternalError</Code>"), "%s", r.body);
    free(r.body);
    tu_proxy_stop(&P);

    tu_proxy_start(&P, S1.port, "rate=1,kinds=reset");
    http1(P.port, "GET", "/bkt/obj", NULL, 0, &r);
    cr_assert_eq(r.status, 0);
    cr_assert(r.closed_early && r.reset, "reset: closed %d reset %d", r.closed_early, r.reset);
    free(r.body);
    tu_proxy_stop(&P);

    tu_proxy_start(&P, S1.port, "rate=1,kinds=truncate");
    http1(P.port, "GET", "/bkt/obj", NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.content_length, (long)n);
    cr_assert(r.closed_early);
    cr_assert_lt(r.body_len, n);
    cr_assert_eq(r.body_len, n / 2);
    cr_assert(memcmp(r.body, payload, r.body_len) == 0);
    free(r.body);
    tu_proxy_stop(&P);

    tu_proxy_start(&P, S1.port, "rate=1,kinds=corrupt,seed=5");
    int fd = connect_port(P.port);
    for (int round = 0; round < 2; round++) { /* keep-alive after corrupt */
        http(fd, "GET", "/bkt/obj", P.port, NULL, 0, &r);
        cr_assert_eq(r.status, 200);
        cr_assert_eq(r.body_len, n);
        size_t diffs = 0;
        for (size_t i = 0; i < n; i++)
            diffs += r.body[i] != payload[i];
        cr_assert_eq(diffs, 1, "round %d: %zu bytes differ", round, diffs);
        free(r.body);
    }
    close(fd);
    tu_proxy_stop(&P);

    tu_proxy_start(&P, S1.port, "rate=1,kinds=delay,delay_ms=300");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    http1(P.port, "GET", "/bkt/obj", NULL, 0, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, n);
    free(r.body);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    cr_assert_geq(ms, 300);
    tu_proxy_stop(&P);
    free(payload);
    tu_s3_stop(&S1);
}

/* The faults for request n depend only on (seed, n). */
static void fault_pattern(int upstream, const char *spec, char *out, int count)
{
    tu_proxy_start(&P, upstream, spec);
    int fd = connect_port(P.port);
    for (int i = 0; i < count; i++) {
        resp r;
        http(fd, "GET", "/bkt/x", P.port, NULL, 0, &r);
        cr_assert(r.status == 404 || r.status == 503 || r.status == 500, "%d", r.status);
        out[i] = r.status == 404 ? '.' : r.status == 503 ? 'S' : 'I';
        free(r.body);
    }
    out[count] = 0;
    close(fd);
    tu_proxy_stop(&P);
}

Test(harness, proxy_faults_are_deterministic_per_seed)
{
    tu_s3_start(&S1, "bkt");
    char a[41], b[41], c[41], d[41];
    fault_pattern(S1.port, "rate=0.5,kinds=500+503,seed=7", a, 40);
    fault_pattern(S1.port, "rate=0.5,kinds=500+503,seed=7", b, 40);
    fault_pattern(S1.port, "rate=0.5,kinds=500+503,seed=8", c, 40);
    fault_pattern(S1.port, "rate=1,kinds=503,skip=3,max=2", d, 10);
    cr_assert_str_eq(a, b);
    cr_assert_str_neq(a, c);
    cr_assert(strchr(a, '.') && strchr(a, 'S') && strchr(a, 'I'), "%s", a);
    cr_assert_str_eq(d, "...SS.....");
    tu_s3_stop(&S1);
}

/* ---- the independent reader, tests/sdk_check.mjs ---- */

static int run_sdk_check(const char *mode, const char *dir, const char *page_size, char **out,
                         char **err)
{
    char script[4096];
    const char *td = getenv("S4KV_TESTS_DIR");
    snprintf(script, sizeof script, "%s/sdk_check.mjs", td && *td ? td : "tests");
    char *argv[] = {"/usr/bin/env", "node", script, "--bucket", "bkt", "--prefix", "db/",
                    "--page-size", (char *)page_size, (char *)mode, (char *)dir, NULL};
    size_t outlen;
    return tu_run(argv, NULL, 0, out, &outlen, err);
}

Test(harness, sdk_check_reads_what_was_written)
{
    tu_s3_start(&S1, "bkt");
    char *dir = tu_tmpdir("sdkcheck");
    char path[4096];
    snprintf(path, sizeof path, "%s/sub", dir);
    cr_assert(mkdir(path, 0755) == 0);
    const char *names[] = {"data_000001.s4kv", "MANIFEST", "empty", "sub/x y.bin", "sub/z"};
    const char *keys[] = {"db/data_000001.s4kv", "db/MANIFEST", "db/empty", "db/sub/x%20y.bin",
                          "db/sub/z"};
    for (int i = 0; i < 5; i++) {
        size_t n = i == 0 ? 700000 : i == 2 ? 0 : 100 + (size_t)i;
        char *body = make_payload(n ? n : 1, 10 + (uint64_t)i);
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        cr_assert(tu_write_file(path, body, n) == 0);
        char target[256];
        snprintf(target, sizeof target, "/bkt/%s", keys[i]);
        resp r;
        http1(S1.port, "PUT", target, body, n, &r);
        cr_assert_eq(r.status, 200);
        free(r.body);
        free(body);
    }
    resp r;
    http1(S1.port, "PUT", "/bkt/other/ignored", "x", 1, &r); /* outside the prefix */
    free(r.body);

    char *out = NULL, *err = NULL;
    int rc = run_sdk_check("--compare", dir, "2", &out, &err); /* 3 list pages */
    cr_assert_eq(rc, 0, "sdk_check: %s%s", out, err);
    cr_assert(strstr(out, "5 objects") && strstr(out, "5 identical") && strstr(out, "3 list pages"),
              "%s", out);
    free(out);
    free(err);

    char *down = tu_tmpdir("sdkcheck-out");
    rc = run_sdk_check("--out", down, "1000", &out, &err);
    cr_assert_eq(rc, 0, "sdk_check: %s%s", out, err);
    free(out);
    free(err);
    for (int i = 0; i < 5; i++) {
        char a[4096], b[4096];
        snprintf(a, sizeof a, "%s/%s", dir, names[i]);
        snprintf(b, sizeof b, "%s/%s", down, names[i]);
        size_t la, lb;
        uint8_t *da = tu_read_file(a, &la), *db = tu_read_file(b, &lb);
        cr_assert(da && db, "%s", names[i]);
        cr_assert(la == lb && memcmp(da, db, la) == 0, "%s differs", names[i]);
        free(da);
        free(db);
    }
    tu_rmtree_free(down);

    /* one flipped byte, one file without an object: exit 1 and both named */
    snprintf(path, sizeof path, "%s/sub/z", dir);
    cr_assert(tu_write_file(path, "not the same", 12) == 0);
    snprintf(path, sizeof path, "%s/local-only", dir);
    cr_assert(tu_write_file(path, "x", 1) == 0);
    rc = run_sdk_check("--compare", dir, "1000", &out, &err);
    cr_assert_eq(rc, 1, "%s%s", out, err);
    cr_assert(strstr(err, "db/sub/z: differs") && strstr(err, "local-only: file has no object"),
              "%s", err);
    free(out);
    free(err);
    tu_rmtree_free(dir);
    tu_s3_stop(&S1);
}

/* s3rver writes a PUT body straight into the object file, so an upload cut
 * by a dying client leaves a truncated object (real S3 keeps the old one).
 * The proxy reads request bodies whole before forwarding (atomic=1, its
 * default), so tests that kill the client mid-upload go through it. */
Test(harness, proxy_atomic_put_survives_a_dying_client)
{
    tu_s3_start(&S1, "bkt");
    char v1[1000];
    memset(v1, 'A', sizeof v1);
    resp r;
    http1(S1.port, "PUT", "/bkt/MANIFEST", v1, sizeof v1, &r);
    cr_assert_eq(r.status, 200);
    free(r.body);
    tu_proxy_start(&P, S1.port, "rate=0");
    int fd = connect_port(P.port);
    char req[256], part[300];
    int n = snprintf(req, sizeof req,
                     "PUT /bkt/MANIFEST HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 1000\r\n\r\n",
                     P.port);
    memset(part, 'B', sizeof part);
    send_all(fd, req, (size_t)n);
    send_all(fd, part, sizeof part);
    close(fd); /* the client dies mid-body */
    for (int i = 0; i < 200 && stat_of(P.port, "aborted_requests") < 1; i++)
        usleep(10000);
    cr_assert_eq(stat_of(P.port, "aborted_requests"), 1);
    http1(S1.port, "GET", "/bkt/MANIFEST", NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, sizeof v1, "old object replaced by %zu bytes", r.body_len);
    cr_assert(memcmp(r.body, v1, sizeof v1) == 0);
    free(r.body);
    tu_proxy_stop(&P);
    tu_s3_stop(&S1);
}

/* Chunked request bodies pass through, buffered (atomic=1, re-framed with
 * Content-Length) and streamed (atomic=0). */
Test(harness, proxy_chunked_request_body)
{
    tu_s3_start(&S1, "bkt");
    const char *specs[] = {"rate=0", "rate=0,atomic=0"};
    for (int i = 0; i < 2; i++) {
        tu_proxy_start(&P, S1.port, specs[i]);
        int fd = connect_port(P.port);
        char req[512];
        int n = snprintf(req, sizeof req,
                         "PUT /bkt/chunked%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                         "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
                         "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n",
                         i, P.port);
        send_all(fd, req, (size_t)n);
        /* the proxy answers 100 Continue itself, then the final answer */
        char buf[4096];
        size_t got = 0;
        while (got < sizeof buf - 1) {
            struct pollfd pfd = {fd, POLLIN, 0};
            cr_assert(poll(&pfd, 1, 10000) == 1);
            ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
            cr_assert(k > 0);
            got += (size_t)k;
            buf[got] = 0;
            if (strstr(buf, "HTTP/1.1 200") && strstr(strstr(buf, "HTTP/1.1 200"), "\r\n\r\n"))
                break;
        }
        cr_assert(strncmp(buf, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0, "%s", buf);
        close(fd);
        char path[64];
        snprintf(path, sizeof path, "/bkt/chunked%d", i);
        resp r;
        http1(S1.port, "GET", path, NULL, 0, &r);
        cr_assert_eq(r.status, 200);
        cr_assert_str_eq(r.body, "hello, world", "%s", specs[i]);
        free(r.body);
        tu_proxy_stop(&P);
    }
    tu_s3_stop(&S1);
}
