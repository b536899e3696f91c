/*
 * test_http_limits.c - the daemon's HTTP server under hostile or careless
 * clients, at scale: slow clients (a header byte, a body byte or a CRLF every
 * 100 ms) are cut by the request and idle timeouts; 2,000 connections at once
 * against max_connections (503 and closed past the limit, the server keeps
 * answering and its RSS stays bounded); request bodies in flight capped by
 * the 4 x max_body budget (503 past it, 413 past max_body, chunked too);
 * hundreds of pipelined requests answered in order; a client that never
 * reads its responses holds at most the write backlog of http.c (8 MiB), not
 * everything it asked for; the bytes of the answers do not depend on how
 * the request bytes are cut into reads (through the fuzz seam,
 * http_feed_for_test); key listings sent in pages (chunked past one page,
 * after= and limit=, to a client that reads late). (Bad percent-encoding and unknown routes are in
 * test_daemon.c.)
 *
 * The server is the sync loop with the limits set small through
 * s4kv_sync_options, run in a forked child process (so its RSS is its own)
 * against s3rver; it stops on SIGTERM and must exit 0 (final upload done).
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "s4kv.h"
#include "s3util.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif

typedef struct limits {
    uint32_t max_connections, idle_ms, request_ms;
    uint64_t max_body;
} limits;

typedef struct server {
    pid_t pid;
    int port;
    char *dir;
    tu_s3 s3;
} server;

static void quiet(void *ctx, const char *line)
{
    (void)ctx;
    if (getenv("S4KV_TEST_VERBOSE"))
        fprintf(stderr, "server: %s\n", line);
}

/* The child: the sync loop with HTTP on a free port; reports the port on fd,
 * stops on SIGTERM, exits 0 when the final upload succeeded. */
static void server_main(const char *dir, const char *endpoint, const limits *l, int fd)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    s4kv_options o;
    s4kv_options_init(&o);
    o.sync_mode = S4KV_SYNC_NONE;
    o.log = quiet;
    s4kv_db *db;
    char err[512];
    if (s4kv_open(dir, &o, &db, err, sizeof err) != 0)
        _exit(2);
    s4kv_sync_options so;
    s4kv_sync_options_init(&so);
    so.s3.url = "s3://bkt/limits/";
    so.s3.endpoint = endpoint;
    so.s3.log = quiet;
    so.log = quiet;
    so.interval_ms = 1000;
    so.listen = "127.0.0.1:0";
    so.http_max_connections = l->max_connections;
    so.http_idle_timeout_ms = l->idle_ms;
    so.http_request_timeout_ms = l->request_ms;
    so.http_max_body = l->max_body;
    s4kv_sync_loop *sl;
    if (s4kv_sync_start(db, &so, &sl, err, sizeof err) != 0) {
        fprintf(stderr, "sync start: %s\n", err);
        _exit(3);
    }
    char addr[64];
    s4kv_sync_address(sl, addr, sizeof addr);
    int port = atoi(strrchr(addr, ':') + 1);
    if (write(fd, &port, sizeof port) != sizeof port)
        _exit(4);
    close(fd);
    int sig;
    sigwait(&set, &sig);
    int rc = s4kv_sync_stop(sl, err, sizeof err);
    if (rc)
        fprintf(stderr, "sync stop: %s\n", err);
    s4kv_close(db);
    _exit(rc ? 5 : 0);
}

static void server_start(server *s, const limits *l)
{
    memset(s, 0, sizeof *s);
    tu_s3_start(&s->s3, "bkt");
    s->dir = tu_tmpdir("http-limits");
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(p[0]);
        server_main(s->dir, s->s3.endpoint, l, p[1]);
    }
    close(p[1]);
    s->pid = pid;
    cr_assert_eq(read(p[0], &s->port, sizeof s->port), (ssize_t)sizeof s->port,
                 "the server did not start");
    close(p[0]);
}

/* SIGTERM; the server must exit 0 within 30 s. */
static void server_stop(server *s)
{
    cr_assert_eq(kill(s->pid, SIGTERM), 0);
    int st = 0;
    long long t0 = tu_now_ms();
    while (waitpid(s->pid, &st, WNOHANG) == 0) {
        cr_assert(tu_now_ms() - t0 < 30000, "the server did not exit within 30 s of SIGTERM");
        tu_sleep_ms(20);
    }
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "server exit status 0x%x", st);
    tu_s3_stop(&s->s3);
    tu_rmtree_free(s->dir);
}

/* VmRSS of pid in bytes (/proc files have no size: read them by line). */
static long long rss_bytes(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert(f, "cannot read %s", path);
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atoll(line + 6);
    fclose(f);
    cr_assert(kb >= 0, "no VmRSS in %s", path);
    return kb * 1024;
}

/* The server's counter `name` from /metrics (one connection). */
static long long metric(int port, const char *name)
{
    tu_resp r = tu_http(port, "GET", "/metrics", NULL, 0, NULL);
    cr_assert_eq(r.status, 200, "%s", r.head);
    char pat[200];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(r.body, pat);
    cr_assert(p, "/metrics lacks %s", name);
    long long v = atoll(p + strlen(pat));
    free(r.body);
    return v;
}

/* Reads whatever is there without blocking: bytes appended to buf (up to
 * cap), returns 1 when the peer closed (EOF or reset), else 0. */
static int drain(int fd, char *buf, size_t *len, size_t cap)
{
    for (;;) {
        char tmp[4096];
        ssize_t g = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (g == 0)
            return 1;
        if (g < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : 1;
        size_t k = (size_t)g < cap - *len ? (size_t)g : cap - *len;
        memcpy(buf + *len, tmp, k);
        *len += k;
    }
}

static void raise_fd_limit(rlim_t want)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    cr_assert(rl.rlim_cur >= want, "RLIMIT_NOFILE %llu < %llu: raise ulimit -n",
              (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

/* ---- slow clients */

enum { SLOW_HEAD, SLOW_BODY, SLOW_CRLF, NSLOW };

Test(http_limits, slow_clients_are_cut_by_the_timeouts, .timeout = 120)
{
    limits l = {.max_connections = 64, .idle_ms = 1500, .request_ms = 1000,
                .max_body = 1 << 20};
    server s;
    server_start(&s, &l);
    static const char *const what[NSLOW] = {"a header byte every 100 ms",
                                            "a body byte every 100 ms",
                                            "CRLF between requests every 100 ms"};
    static const char head[] = "GET /v1/kv/slow HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    static const char body_head[] = "PUT /v1/kv/slow HTTP/1.1\r\nHost: t\r\n"
                                    "Content-Length: 100000\r\n\r\n";
    int fd[NSLOW];
    char got[NSLOW][512];
    size_t glen[NSLOW] = {0};
    long long t0 = tu_now_ms(), cut[NSLOW] = {0};
    for (int i = 0; i < NSLOW; i++) {
        fd[i] = tu_tcp_connect(s.port);
        cr_assert(fd[i] >= 0);
    }
    /* The body client sends its head whole; the others start from nothing. */
    tu_send_all(fd[SLOW_BODY], body_head, sizeof body_head - 1);
    size_t pos[NSLOW] = {0};
    int open_n = NSLOW, served = 0;
    while (open_n > 0) {
        cr_assert(tu_now_ms() - t0 < 10000, "a slow client is still connected after 10 s "
                                            "(request timeout 1 s, idle timeout 1.5 s)");
        for (int i = 0; i < NSLOW; i++) {
            if (cut[i])
                continue;
            char ch = i == SLOW_HEAD ? (pos[i] < sizeof head - 1 ? head[pos[i]] : 'a')
                      : i == SLOW_BODY ? 'b'
                                       : (pos[i] % 2 ? '\n' : '\r');
            pos[i]++;
            if (send(fd[i], &ch, 1, MSG_NOSIGNAL) != 1 ||
                drain(fd[i], got[i], &glen[i], sizeof got[i] - 1)) {
                cut[i] = tu_now_ms() - t0;
                open_n--;
            }
        }
        /* Meanwhile a fresh client is served at once. */
        if (!served && tu_now_ms() - t0 > 500) {
            tu_resp r = tu_http(s.port, "GET", "/healthz", NULL, 0, NULL);
            cr_assert_eq(r.status, 200);
            free(r.body);
            served = 1;
        }
        tu_sleep_ms(100);
    }
    for (int i = 0; i < NSLOW; i++) {
        /* read what was left (a 408 racing the last send) */
        tu_sleep_ms(i == 0 ? 50 : 0);
        drain(fd[i], got[i], &glen[i], sizeof got[i] - 1);
        got[i][glen[i]] = 0;
        close(fd[i]);
        cr_log_info("slow client (%s): cut after %lld ms: %.12s", what[i], cut[i],
                    glen[i] ? got[i] : "(closed without a response)");
    }
    /* Mid-request: 408 and Connection: close, once the request timeout passed. */
    for (int i = SLOW_HEAD; i <= SLOW_BODY; i++) {
        cr_assert(strncmp(got[i], "HTTP/1.1 408 ", 13) == 0, "%s: got %s", what[i], got[i]);
        cr_assert(strcasestr(got[i], "Connection: close"), "%s: %s", what[i], got[i]);
        cr_assert(cut[i] >= 900, "%s: cut after %lld ms, before the request timeout", what[i],
                  cut[i]);
    }
    /* Between requests: closed by the idle timeout (CRLF does not reset it). */
    cr_assert_eq(glen[SLOW_CRLF], 0, "%s: %s", what[SLOW_CRLF], got[SLOW_CRLF]);
    cr_assert(cut[SLOW_CRLF] >= 1400 && cut[SLOW_CRLF] < 6000,
              "CRLF trickle closed after %lld ms (idle timeout 1500 ms)", cut[SLOW_CRLF]);
    cr_assert_eq(metric(s.port, "s4kv_http_responses_total{code=\"408\"}"), 2);
    server_stop(&s);
}

/* ---- many connections */

#define FLOOD 2000

Test(http_limits, connection_flood_gets_503_and_memory_stays_bounded, .timeout = 180)
{
    raise_fd_limit(FLOOD + 256);
    limits l = {.max_connections = 256, .idle_ms = 8000, .request_ms = 5000,
                .max_body = 1 << 20};
    server s;
    server_start(&s, &l);
    /* Warm up (the loop, the pool, an upload), then the baseline. */
    for (int i = 0; i < 20; i++) {
        char path[32];
        snprintf(path, sizeof path, "/v1/kv/warm%d", i);
        tu_resp r = tu_http(s.port, "PUT", path, "v", 1, NULL);
        cr_assert_eq(r.status, 204);
        free(r.body);
    }
    tu_sleep_ms(1500);
    long long rss0 = rss_bytes(s.pid);

    static int fds[FLOOD];
    long long t0 = tu_now_ms();
    for (int i = 0; i < FLOOD; i++) {
        fds[i] = tu_tcp_connect(s.port);
        cr_assert(fds[i] >= 0, "connect %d: %s", i, strerror(errno));
    }
    long long t_connect = tu_now_ms() - t0;
    /* Classify: a 503 then EOF, or nothing (held, idle). Wait until no
     * socket changed for a second. */
    static char resp[FLOOD][160];
    static size_t rlen[FLOOD];
    static int eof[FLOOD];
    int changed = 1;
    while (changed) {
        changed = 0;
        long long q = tu_now_ms();
        while (tu_now_ms() - q < 1000) {
            for (int i = 0; i < FLOOD; i++) {
                if (eof[i])
                    continue;
                size_t before = rlen[i];
                eof[i] = drain(fds[i], resp[i], &rlen[i], sizeof resp[i] - 1);
                if (eof[i] || rlen[i] != before)
                    changed = 1;
            }
            tu_sleep_ms(50);
        }
        cr_assert(tu_now_ms() - t0 < 5000 || !changed, "sockets still changing after 5 s");
    }
    long long rss1 = rss_bytes(s.pid);
    int refused = 0, held = 0;
    for (int i = 0; i < FLOOD; i++) {
        resp[i][rlen[i]] = 0;
        if (rlen[i]) {
            cr_assert(strncmp(resp[i], "HTTP/1.1 503 ", 13) == 0, "connection %d got %s", i,
                      resp[i]);
            cr_assert(strcasestr(resp[i], "Connection: close"), "%s", resp[i]);
            cr_assert(eof[i], "connection %d: 503 but not closed", i);
            refused++;
        } else {
            cr_assert(!eof[i], "connection %d closed without a response", i);
            held++;
        }
    }
    cr_assert_eq(held, 256, "%d connections held (max_connections 256), %d refused", held,
                 refused);
    cr_assert_eq(refused, FLOOD - 256);
    /* Full: a fresh client gets a prompt 503, not a hang. */
    int f = tu_tcp_connect(s.port);
    cr_assert(f >= 0);
    tu_resp r;
    tu_read_resp(f, &r);
    cr_assert_eq(r.status, 503, "%s", r.head);
    free(r.body);
    close(f);
    /* Clients leaving free their slots at once. */
    int left = 0;
    for (int i = 0; i < FLOOD && left < 10; i++)
        if (!rlen[i]) {
            close(fds[i]);
            fds[i] = -1;
            left++;
        }
    long long tw = tu_now_ms();
    int more503 = 1; /* the fresh client's */
    for (;;) {
        r = tu_http(s.port, "GET", "/healthz", NULL, 0, NULL);
        int st = r.status;
        free(r.body);
        if (st == 200)
            break;
        cr_assert_eq(st, 503);
        more503++;
        cr_assert(tu_now_ms() - tw < 3000, "no slot freed 3 s after 10 clients left");
        tu_sleep_ms(20);
    }
    /* The rest are closed by the idle timeout (8 s after they connected). */
    tw = tu_now_ms();
    int open_n = held - left;
    while (open_n > 0) {
        cr_assert(tu_now_ms() - tw < 15000, "%d idle connections still open 15 s later",
                  open_n);
        open_n = 0;
        for (int i = 0; i < FLOOD; i++) {
            if (fds[i] < 0 || rlen[i])
                continue;
            char tmp[160];
            size_t n = 0;
            if (drain(fds[i], tmp, &n, sizeof tmp)) {
                cr_assert_eq(n, 0, "an idle connection got a response at its timeout");
                close(fds[i]);
                fds[i] = -1;
            } else {
                open_n++;
            }
        }
        tu_sleep_ms(100);
    }
    for (int i = 0; i < FLOOD; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    cr_assert_eq(metric(s.port, "s4kv_http_connections_refused_total"), refused + more503);
    /* refused connections are counted as such, not as requests of some op */
    cr_assert_eq(metric(s.port, "s4kv_http_requests_total{op=\"get\"}"), 0);
    cr_assert_eq(metric(s.port, "s4kv_http_requests_total{op=\"put\"}"), 20);
    /* this /metrics one, and the previous one if its close is not seen yet */
    cr_assert_leq(metric(s.port, "s4kv_http_connections"), 2);
    long long rss2 = rss_bytes(s.pid);
    cr_log_info("flood: %d connections in %lld ms, %d held, %d refused with 503; server RSS "
                "%.1f MiB before, %.1f MiB with them open (+%.1f), %.1f MiB after",
                FLOOD, t_connect, held, refused, rss0 / 1048576.0, rss1 / 1048576.0,
                (rss1 - rss0) / 1048576.0, rss2 / 1048576.0);
    cr_assert(rss1 - rss0 < 64ll << 20, "RSS grew by %lld bytes with %d connections",
              rss1 - rss0, FLOOD);
    server_stop(&s);
}

/* ---- request bodies in flight */

Test(http_limits, bodies_in_flight_are_capped_by_the_budget, .timeout = 120)
{
    const size_t MB = 1 << 20;
    limits l = {.max_connections = 64, .idle_ms = 20000, .request_ms = 20000, .max_body = MB};
    server s;
    server_start(&s, &l);
    char *val = malloc(MB);
    for (size_t i = 0; i < MB; i++)
        val[i] = (char)('a' + i % 23);
    char head[256];
    /* Four bodies of max_body each fill the 4 x max_body budget: send their
     * heads and half of each body. */
    int fd[4];
    for (int i = 0; i < 4; i++) {
        fd[i] = tu_tcp_connect(s.port);
        cr_assert(fd[i] >= 0);
        int hl = snprintf(head, sizeof head, "PUT /v1/kv/big%d HTTP/1.1\r\nHost: t\r\n"
                          "Content-Length: %zu\r\n\r\n", i, MB);
        tu_send_all(fd[i], head, (size_t)hl);
        tu_send_all(fd[i], val, MB / 2);
    }
    tu_sleep_ms(200);
    /* A fifth body, large or small, is refused from its head: 503, closed. */
    const size_t sizes[] = {MB, 10};
    for (size_t k = 0; k < 2; k++) {
        int f = tu_tcp_connect(s.port);
        int hl = snprintf(head, sizeof head, "PUT /v1/kv/fifth HTTP/1.1\r\nHost: t\r\n"
                          "Content-Length: %zu\r\n\r\n", sizes[k]);
        tu_send_all(f, head, (size_t)hl);
        tu_resp r;
        tu_read_resp(f, &r);
        cr_assert_eq(r.status, 503, "body of %zu bytes past the budget: %s", sizes[k], r.head);
        cr_assert(strcasestr(r.head, "Connection: close"), "%s", r.head);
        free(r.body);
        char c;
        cr_assert_eq(recv(f, &c, 1, 0), 0, "not closed after the 503");
        close(f);
    }
    /* Requests without a body are still served. */
    tu_resp r = tu_http(s.port, "GET", "/v1/kv/big0", NULL, 0, NULL);
    cr_assert_eq(r.status, 404);
    free(r.body);
    /* The four finish and are stored. */
    for (int i = 0; i < 4; i++) {
        tu_send_all(fd[i], val + MB / 2, MB - MB / 2);
        tu_read_resp(fd[i], &r);
        cr_assert_eq(r.status, 204, "big%d: %s", i, r.head);
        free(r.body);
        close(fd[i]);
    }
    /* The budget is free again: a fifth now goes through. */
    r = tu_http(s.port, "PUT", "/v1/kv/fifth", val, MB, NULL);
    cr_assert_eq(r.status, 204, "%s", r.head);
    free(r.body);
    r = tu_http(s.port, "GET", "/v1/kv/big3", NULL, 0, NULL);
    cr_assert(r.status == 200 && r.blen == MB && memcmp(r.body, val, MB) == 0);
    free(r.body);
    /* max_body + 1 by Content-Length: 413 before any body byte. */
    int f = tu_tcp_connect(s.port);
    int hl = snprintf(head, sizeof head, "PUT /v1/kv/x HTTP/1.1\r\nHost: t\r\n"
                      "Content-Length: %zu\r\n\r\n", MB + 1);
    tu_send_all(f, head, (size_t)hl);
    tu_read_resp(f, &r);
    cr_assert_eq(r.status, 413, "%s", r.head);
    free(r.body);
    close(f);
    /* Chunked: 413 as soon as the body passes max_body; nothing stored. */
    f = tu_tcp_connect(s.port);
    static const char ch[] = "PUT /v1/kv/chunked HTTP/1.1\r\nHost: t\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n";
    tu_send_all(f, ch, sizeof ch - 1);
    int status = 0;
    for (int i = 0; i < 40 && !status; i++) { /* 40 x 64 KiB > 1 MiB */
        char sz[32];
        int n = snprintf(sz, sizeof sz, "%x\r\n", 65536);
        if (send(f, sz, (size_t)n, MSG_NOSIGNAL) != n ||
            send(f, val, 65536, MSG_NOSIGNAL) != 65536 || send(f, "\r\n", 2, MSG_NOSIGNAL) != 2)
            break;
        struct pollfd pf = {.fd = f, .events = POLLIN};
        if (poll(&pf, 1, 0) == 1)
            break;
    }
    tu_read_resp(f, &r);
    cr_assert_eq(r.status, 413, "chunked past max_body: %s", r.head);
    free(r.body);
    close(f);
    r = tu_http(s.port, "GET", "/v1/kv/chunked", NULL, 0, NULL);
    cr_assert_eq(r.status, 404);
    free(r.body);
    /* 32 clients with a max_body PUT each at once: every answer is 204 or
     * 503 (never a hang or a 5xx of another kind), and at least the budget's
     * four go through. */
    enum { NC = 32 };
    int cf[NC];
    for (int i = 0; i < NC; i++) {
        cf[i] = tu_tcp_connect(s.port);
        cr_assert(cf[i] >= 0);
        hl = snprintf(head, sizeof head, "PUT /v1/kv/many%d HTTP/1.1\r\nHost: t\r\n"
                      "Content-Length: %zu\r\n\r\n", i, MB);
        tu_send_all(cf[i], head, (size_t)hl);
    }
    int ok = 0, busy = 0;
    for (int i = 0; i < NC; i++) {
        /* a refused client is closed: its body send may fail, that is fine */
        size_t off = 0;
        while (off < MB) {
            ssize_t w = send(cf[i], val + off, MB - off, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
    }
    for (int i = 0; i < NC; i++) {
        tu_read_resp(cf[i], &r);
        cr_assert(r.status == 204 || r.status == 503, "many%d: %s", i, r.head);
        ok += r.status == 204;
        busy += r.status == 503;
        free(r.body);
        close(cf[i]);
    }
    cr_log_info("32 x 1 MiB PUTs at once with a 4 MiB budget: %d stored, %d refused (503)",
                ok, busy);
    cr_assert(ok >= 4, "only %d of %d stored", ok, NC);
    cr_assert(busy >= 1, "no 503 with %d MiB asked at once and a 4 MiB budget", NC);
    free(val);
    server_stop(&s);
}

/* ---- pipelining */

Test(http_limits, pipelined_requests_are_answered_in_order, .timeout = 120)
{
    limits l = {.max_connections = 64, .idle_ms = 20000, .request_ms = 20000,
                .max_body = 1 << 20};
    server s;
    server_start(&s, &l);
    /* 600 requests in one send: PUT p_i, GET p_i, then DELETE p_i (every
     * third i) or HEAD p_i. */
    enum { N = 200 };
    size_t cap = N * 400, len = 0;
    char *req = malloc(cap);
    for (int i = 0; i < N; i++) {
        char v[32];
        int vl = snprintf(v, sizeof v, "value-%d", i * 7);
        len += (size_t)snprintf(req + len, cap - len,
                                "PUT /v1/kv/p%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                                "%s", i, vl, v);
        len += (size_t)snprintf(req + len, cap - len, "GET /v1/kv/p%d HTTP/1.1\r\nHost: t\r\n\r\n",
                                i);
        if (i % 3 == 0)
            len += (size_t)snprintf(req + len, cap - len,
                                    "DELETE /v1/kv/p%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
        else
            len += (size_t)snprintf(req + len, cap - len,
                                    "HEAD /v1/kv/p%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
    }
    int fd = tu_tcp_connect(s.port);
    cr_assert(fd >= 0);
    tu_send_all(fd, req, len);
    for (int i = 0; i < N; i++) {
        char v[32];
        int vl = snprintf(v, sizeof v, "value-%d", i * 7);
        tu_resp r;
        tu_read_resp(fd, &r);
        cr_assert_eq(r.status, 204, "PUT %d: %s", i, r.head);
        free(r.body);
        tu_read_resp(fd, &r);
        cr_assert(r.status == 200 && r.blen == (size_t)vl && memcmp(r.body, v, vl) == 0,
                  "GET %d out of order or wrong: %s%s", i, r.head, r.body);
        free(r.body);
        if (i % 3 == 0) {
            tu_read_resp(fd, &r);
            cr_assert_eq(r.status, 204, "DELETE %d: %s", i, r.head);
            free(r.body);
        } else {
            /* HEAD: the head with the value's Content-Length and no body */
            char h[4096];
            size_t n = 0;
            while (n < 4 || memcmp(h + n - 4, "\r\n\r\n", 4) != 0) {
                cr_assert(n < sizeof h - 1 && recv(fd, h + n, 1, 0) == 1, "HEAD %d", i);
                n++;
            }
            h[n] = 0;
            char want[64];
            snprintf(want, sizeof want, "Content-Length: %d\r\n", vl);
            cr_assert(strncmp(h, "HTTP/1.1 200 ", 13) == 0 && strstr(h, want), "HEAD %d: %s", i,
                      h);
        }
    }
    close(fd);
    free(req);
    tu_resp r = tu_http(s.port, "GET", "/v1/keys?prefix=p1", NULL, 0, NULL);
    cr_assert_eq(r.status, 200);
    /* p1, p10..p19, p100..p199 minus the deleted (i % 3 == 0) */
    int want = 0;
    for (int i = 0; i < N; i++) {
        char k[16];
        snprintf(k, sizeof k, "p%d", i);
        if (k[1] == '1' && i % 3 != 0)
            want++;
    }
    int lines = 0;
    for (const char *p = r.body; *p; p++)
        lines += *p == '\n';
    cr_assert_eq(lines, want, "%s", r.body);
    free(r.body);
    server_stop(&s);
}

/* ---- a client that never reads */

Test(http_limits, a_client_that_never_reads_holds_a_bounded_backlog, .timeout = 180)
{
    const size_t MB = 1 << 20;
    limits l = {.max_connections = 64, .idle_ms = 30000, .request_ms = 30000,
                .max_body = 2 * MB};
    server s;
    server_start(&s, &l);
    char *val = malloc(MB);
    for (size_t i = 0; i < MB; i++)
        val[i] = (char)(i * 31 + 7);
    tu_resp r = tu_http(s.port, "PUT", "/v1/kv/big", val, MB, NULL);
    cr_assert_eq(r.status, 204);
    free(r.body);
    tu_sleep_ms(1500); /* the upload of it, then the baseline */
    long long rss0 = rss_bytes(s.pid);
    /* 300 pipelined GETs of the 1 MiB value (300 MiB of responses) on a
     * socket with a small receive buffer, never read for 2 s. */
    enum { N = 300 };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 16384;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static const char get[] = "GET /v1/kv/big HTTP/1.1\r\nHost: t\r\n\r\n";
    char *req = malloc(N * (sizeof get - 1));
    for (int i = 0; i < N; i++)
        memcpy(req + i * (sizeof get - 1), get, sizeof get - 1);
    long long gets0 = metric(s.port, "s4kv_http_requests_total{op=\"get\"}");
    tu_send_all(fd, req, N * (sizeof get - 1));
    free(req);
    tu_sleep_ms(2000);
    long long gets1 = metric(s.port, "s4kv_http_requests_total{op=\"get\"}");
    long long rss1 = rss_bytes(s.pid);
    /* Answered while unread: the 8 MiB backlog plus one response, and what
     * the kernel's socket buffers took; far from 300. */
    long long answered = gets1 - gets0;
    cr_log_info("never-reading client: %lld of %d GETs of 1 MiB answered while unread; server "
                "RSS %.1f MiB -> %.1f MiB (+%.1f)", answered, N, rss0 / 1048576.0,
                rss1 / 1048576.0, (rss1 - rss0) / 1048576.0);
    cr_assert(answered >= 1 && answered <= 40, "%lld responses queued for a client that does "
              "not read (the write backlog is 8 MiB)", answered);
    /* (ASan's allocator and quarantine get more room; 300 MiB unbounded) */
    long long bound = (UNDER_ASAN ? 96ll : 48ll) << 20;
    cr_assert(rss1 - rss0 < bound, "RSS grew by %lld bytes", rss1 - rss0);
    /* Reading resumes the connection: all 300 arrive, whole and in order. */
    for (int i = 0; i < N; i++) {
        tu_read_resp(fd, &r);
        cr_assert(r.status == 200 && r.blen == MB && memcmp(r.body, val, MB) == 0,
                  "response %d: %s", i, r.head);
        free(r.body);
    }
    close(fd);
    cr_assert_eq(metric(s.port, "s4kv_http_requests_total{op=\"get\"}"), gets0 + N);
    free(val);
    server_stop(&s);
}

/* ---- a long key listing, streamed */

static int next_resp(const char **p, const char *end, int *chunked, sbuf *body);

Test(http_limits, a_long_key_listing_streams_in_chunks_to_a_slow_reader, .timeout = 180)
{
    const int N = 400000; /* ~10 MB of listing: 40 pages of 256 KiB */
    limits l = {.max_connections = 64, .idle_ms = 20000, .request_ms = 20000,
                .max_body = 16u << 20};
    server s;
    server_start(&s, &l);
    /* one batch of N puts: 24-byte keys "lst-%07d-abcdefghijkl", values empty */
    size_t cap = (size_t)N * 40, len = 0;
    uint8_t *b = malloc(cap);
    cr_assert(b);
    for (int i = 0; i < N; i++) {
        char k[32];
        /* inserted in a scrambled order (7 and N are coprime) */
        uint32_t kl = (uint32_t)snprintf(k, sizeof k, "lst-%07d-abcdefghijkl", (int)((i * 7L) % N));
        b[len] = 1;
        memcpy(b + len + 1, &kl, 4);
        memset(b + len + 5, 0, 4);
        memcpy(b + len + 9, k, kl);
        len += 9 + kl;
    }
    tu_resp r = tu_http(s.port, "POST", "/v1/batch", b, len, NULL);
    cr_assert_eq(r.status, 204, "%s %s", r.head, r.body);
    free(r.body);
    free(b);
    /* A client that waits before it reads: 10 MB do not fit the socket
     * buffers, so the server waits for it between pages (on_write -> the
     * next page). */
    int fd = tu_tcp_connect(s.port);
    cr_assert(fd >= 0);
    const char *req = "GET /v1/keys?prefix=lst- HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n";
    tu_send_all(fd, req, strlen(req));
    tu_sleep_ms(300);
    tu_read_resp(fd, &r);
    cr_assert_eq(r.status, 200, "%s", r.head);
    cr_assert(r.chunks >= 20, "%d chunks for %zu bytes", r.chunks, r.blen);
    cr_assert_eq(r.blen, (size_t)N * 25);
    for (int i = 0; i < N; i++) {
        char k[32];
        snprintf(k, sizeof k, "lst-%07d-abcdefghijkl\n", i);
        cr_assert(memcmp(r.body + (size_t)i * 25, k, 25) == 0, "line %d: %.25s", i,
                  r.body + (size_t)i * 25);
    }
    free(r.body);
    tu_resp h;
    tu_read_resp(fd, &h); /* the pipelined request after the listing */
    cr_assert(h.status == 200 && strcmp(h.body, "ok\n") == 0, "%s", h.head);
    free(h.body);
    close(fd);
    /* The CLI (libcurl) on the daemon's directory: the same keys. */
    tu_res c = RUN(s.dir, "keys", "--prefix", "lst-000001");
    cr_assert_eq(c.rc, 0, "%s", c.err);
    cr_assert_eq(strlen(c.out), 10 * 25, "%s", c.out);
    cr_assert(strncmp(c.out, "lst-0000010-abcdefghijkl\n", 25) == 0, "%s", c.out);
    tu_res_free(&c);
    /* SIGTERM while a listing waits for its reader: the drain lets it
     * finish, whole (the last chunk, then the close), before the exit. */
    /* The client reads slowly through a small receive buffer, so chunks
     * queue up in the server behind each other, the last one too. */
    fd = tu_tcp_connect(s.port);
    cr_assert(fd >= 0);
    int rcvbuf = 64 << 10;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    req = "GET /v1/keys?prefix=lst- HTTP/1.1\r\n\r\n";
    tu_send_all(fd, req, strlen(req));
    tu_sleep_ms(300);
    cr_assert_eq(kill(s.pid, SIGTERM), 0);
    sbuf all = {0};
    for (;;) { /* to EOF: the server closes after the listing */
        char tmp[16 << 10];
        ssize_t g = recv(fd, tmp, sizeof tmp, 0);
        cr_assert(g >= 0, "recv: %s", strerror(errno));
        if (g == 0)
            break;
        sb_add(&all, tmp, (size_t)g);
        if (all.len % 8 == 0)
            tu_sleep_ms(1);
    }
    close(fd);
    const char *p = all.p, *end = all.p + all.len;
    sbuf body = {0};
    int ch;
    cr_assert_eq(next_resp(&p, end, &ch, &body), 200);
    cr_assert(ch && body.len == (size_t)N * 25 && p == end, "%zu bytes of listing, %zu after",
              body.len, (size_t)(end - p));
    cr_assert(memcmp(body.p + (size_t)(N - 1) * 25, "lst-0399999-abcdefghijkl\n", 25) == 0);
    sb_free(&body);
    sb_free(&all);
    server_stop(&s);
}

/* ---- reads cut anywhere (the fuzz seam, fuzz/fuzz_http.c) */

/* A fresh database in a new temporary directory (*dir: tu_rmtree_free it). */
static s4kv_db *seam_db(const char *tag, char **dir)
{
    *dir = tu_tmpdir(tag);
    s4kv_options o;
    s4kv_options_init(&o);
    o.sync_mode = S4KV_SYNC_NONE;
    o.log = quiet;
    s4kv_db *db;
    char err[512];
    cr_assert_eq(s4kv_open(*dir, &o, &db, err, sizeof err), 0, "%s", err);
    return db;
}

/* The responses to in[0..len) fed in pieces of `chunk` bytes to db, key
 * listings in pages of `page` bytes (0: the default). */
static sbuf feed_db(s4kv_db *db, size_t page, const char *in, size_t len, size_t chunk,
                    int *nresp)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_config cfg = {.max_body = 4096, .max_connections = 16, .list_page_bytes = page};
    cfg.idle_timeout_ms = cfg.request_timeout_ms = 1000;
    sbuf out = {0};
    *nresp = http_feed_for_test(&loop, db, &cfg, in, len, chunk, &out, NULL);
    uv_loop_close(&loop);
    cr_assert(!out.oom);
    return out;
}

/* The same to a fresh database. */
static char *feed_fresh(const char *in, size_t len, size_t chunk, int *nresp, size_t *outlen)
{
    char *dir;
    s4kv_db *db = seam_db("http-seam", &dir);
    sbuf out = feed_db(db, 0, in, len, chunk, nresp);
    s4kv_close(db);
    tu_rmtree_free(dir);
    *outlen = out.len;
    return out.p;
}

Test(http_limits, answers_do_not_depend_on_how_reads_cut_the_requests)
{
    /* a batch: put k1=v1, put "k\0" 2 = "", delete k1 */
    static const char batch[] = "\x01\x02\x00\x00\x00\x02\x00\x00\x00k1v1"
                                "\x01\x03\x00\x00\x00\x00\x00\x00\x00k\x00" "2"
                                "\x02\x02\x00\x00\x00\x00\x00\x00\x00k1";
    char in[2048];
    int n = snprintf(in, sizeof in,
                     "PUT /v1/kv/a%%2Fb HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                     "GET /v1/kv/a%%2Fb HTTP/1.1\r\n\r\n"
                     "HEAD /v1/kv/a%%2Fb HTTP/1.1\r\n\r\n"
                     "\r\n" /* CRLF between requests is skipped */
                     "PUT /v1/kv/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
                     "PUT /v1/kv/e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nxyz"
                     "POST /v1/batch HTTP/1.1\r\nContent-Length: %zu\r\n\r\n",
                     sizeof batch - 1);
    memcpy(in + n, batch, sizeof batch - 1);
    n += (int)(sizeof batch - 1);
    n += snprintf(in + n, sizeof in - (size_t)n,
                  "GET /v1/keys HTTP/1.1\r\n\r\n"
                  "GET /v1/kv/a%%zz HTTP/1.1\r\n\r\n"
                  "DELETE /v1/kv/a%%2Fb HTTP/1.1\r\n\r\n"
                  "GET /v1/kv/c HTTP/1.1\r\nConnection: close\r\n\r\n"
                  "GET /healthz HTTP/1.1\r\n\r\n"); /* after close: never answered */
    int whole_n;
    size_t whole_len;
    char *whole = feed_fresh(in, (size_t)n, 0, &whole_n, &whole_len);
    cr_assert_eq(whole_n, 10, "%d responses:\n%s", whole_n, whole);
    static const char *const want[] = {
        "HTTP/1.1 204 ", "HTTP/1.1 200 ", "HTTP/1.1 200 ", "HTTP/1.1 204 ",
        "HTTP/1.1 100 ", "HTTP/1.1 204 ", "HTTP/1.1 204 ", "HTTP/1.1 200 ",
        "HTTP/1.1 400 ", "HTTP/1.1 204 ", "HTTP/1.1 200 "};
    const char *p = whole;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        p = strstr(p, "HTTP/1.1 ");
        cr_assert(p && strncmp(p, want[i], strlen(want[i])) == 0, "response %zu: want %s in\n%s",
                  i, want[i], whole);
        p++;
    }
    cr_assert_null(strstr(p, "HTTP/1.1 "), "a response after Connection: close:\n%s", whole);
    cr_assert(strstr(whole, "\r\n\r\na/b\nc\ne\nk%002\n"), "keys:\n%s", whole);
    cr_assert(strstr(whole, "Connection: close\r\n\r\nhelloabc"), "%s", whole);
    static const size_t chunks[] = {1, 2, 3, 7, 64};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        int cn;
        size_t cl;
        char *cut = feed_fresh(in, (size_t)n, chunks[i], &cn, &cl);
        cr_assert(cn == whole_n && cl == whole_len && memcmp(cut, whole, cl) == 0,
                  "in pieces of %zu bytes the answers differ:\n%s\n---- whole:\n%s", chunks[i],
                  cut, whole);
        free(cut);
    }
    free(whole);
}

/* ---- key listings in pages (GET /v1/keys through the seam) */

/* One response of a captured stream: its status, whether it was chunked,
 * and its body (chunks joined). Advances *p; asserts on any framing error. */
static int next_resp(const char **p, const char *end, int *chunked, sbuf *body)
{
    const char *s = *p;
    const char *he = memmem(s, (size_t)(end - s), "\r\n\r\n", 4);
    cr_assert(he && strncmp(s, "HTTP/1.1 ", 9) == 0, "not a response head: %.80s", s);
    int st = atoi(s + 9);
    char head[1024];
    size_t hl = (size_t)(he - s) + 4;
    cr_assert(hl < sizeof head);
    memcpy(head, s, hl);
    head[hl] = 0;
    body->len = 0;
    sb_add(body, "", 0);
    const char *cl = strcasestr(head, "\r\nContent-Length: ");
    *chunked = strcasestr(head, "\r\nTransfer-Encoding: chunked\r\n") != NULL;
    cr_assert(!!cl != *chunked, "exactly one of Content-Length and chunked: %s", head);
    s = he + 4;
    if (cl) {
        size_t n = strtoull(cl + 18, NULL, 10);
        cr_assert((size_t)(end - s) >= n, "body cut short");
        sb_add(body, s, n);
        s += n;
    } else {
        for (;;) {
            char *e;
            size_t n = strtoull(s, &e, 16);
            cr_assert(e > s && e + 2 <= end && e[0] == '\r' && e[1] == '\n', "chunk size line");
            s = e + 2;
            if (n == 0) {
                cr_assert(s + 2 <= end && s[0] == '\r' && s[1] == '\n', "last chunk's CRLF");
                s += 2;
                break;
            }
            cr_assert((size_t)(end - s) >= n + 2 && s[n] == '\r' && s[n + 1] == '\n',
                      "chunk of %zu bytes cut short", n);
            sb_add(body, s, n);
            s += n + 2;
        }
    }
    *p = s;
    return st;
}

Test(http_limits, key_listings_are_sent_in_pages)
{
    char *dir;
    s4kv_db *db = seam_db("http-list", &dir);
    char err[512];
    /* 300 keys, every 7th with a space (sent as %20), inserted out of order */
    sbuf all = {0}, json = {0};
    sb_add(&json, "[", 1);
    for (int i = 0; i < 300; i++) {
        char k[32];
        int kl = snprintf(k, sizeof k, "key-%04d%s", (i * 7) % 300, (i * 7) % 300 % 7 ? "" : " x");
        cr_assert_eq(s4kv_put(db, k, (size_t)kl, "v", 1, err, sizeof err), 0, "%s", err);
    }
    for (int i = 0; i < 300; i++) {
        char k[32];
        snprintf(k, sizeof k, "key-%04d%s", i, i % 7 ? "" : "%20x");
        sb_printf(&all, "%s\n", k);
        sb_printf(&json, "%s\"%s\"", i ? "," : "", k);
    }
    sb_add(&json, "]\n", 2);
    const char *in = "GET /v1/keys HTTP/1.1\r\n\r\n"
                     "GET /v1/keys HTTP/1.1\r\nAccept: application/json\r\n\r\n"
                     "GET /v1/keys?prefix=key-01&after=key-0150&limit=20 HTTP/1.1\r\n\r\n"
                     "GET /v1/keys?limit=3&after=key-0006%20x HTTP/1.1\r\n\r\n"
                     "GET /v1/keys?limit=0 HTTP/1.1\r\n\r\n"
                     "GET /v1/keys?after=key-0299 HTTP/1.1\r\n\r\n"
                     "HEAD /v1/keys HTTP/1.1\r\n\r\n"
                     "GET /v1/keys?limit=abc HTTP/1.1\r\n\r\n"
                     "GET /v1/keys?limit=18446744073709551616 HTTP/1.1\r\n\r\n"
                     "GET /v1/keys?after=%zz HTTP/1.1\r\n\r\n"
                     "GET /v1/keys?prefix=key-02 HTTP/1.1\r\nConnection: close\r\n\r\n"
                     "GET /healthz HTTP/1.1\r\n\r\n"; /* after close: never answered */
    sbuf range = {0};
    for (int i = 151; i <= 170; i++)
        sb_printf(&range, "key-%04d%s\n", i, i % 7 ? "" : "%20x");
    sbuf tail = {0};
    for (int i = 200; i < 300; i++)
        sb_printf(&tail, "key-%04d%s\n", i, i % 7 ? "" : "%20x");
    /* Pages of 64 bytes (chunked) and of the default 256 KiB (one body):
     * the same keys, byte for byte. */
    static const size_t pages[] = {64, 1, 0};
    for (size_t pi = 0; pi < sizeof pages / sizeof pages[0]; pi++) {
        int n;
        sbuf out = feed_db(db, pages[pi], in, strlen(in), 0, &n);
        cr_assert_eq(n, 11, "page %zu: %d responses:\n%s", pages[pi], n, out.p);
        const char *p = out.p, *end = out.p + out.len;
        sbuf b = {0};
        int ch, multi = pages[pi] != 0;
        cr_assert_eq(next_resp(&p, end, &ch, &b), 200);
        cr_assert(ch == multi && b.len == all.len && memcmp(b.p, all.p, all.len) == 0,
                  "page %zu: listing:\n%s", pages[pi], b.p);
        cr_assert_eq(next_resp(&p, end, &ch, &b), 200);
        cr_assert(ch == multi && strcmp(b.p, json.p) == 0, "JSON:\n%s", b.p);
        cr_assert_eq(next_resp(&p, end, &ch, &b), 200);
        cr_assert(strcmp(b.p, range.p) == 0, "prefix+after+limit:\n%s", b.p);
        cr_assert_eq(next_resp(&p, end, &ch, &b), 200);
        cr_assert_str_eq(b.p, "key-0007%20x\nkey-0008\nkey-0009\n"); /* after= need not exist */
        cr_assert_eq(next_resp(&p, end, &ch, &b), 200);
        cr_assert(!ch && b.len == 0, "limit=0: an empty body");
        cr_assert_eq(next_resp(&p, end, &ch, &b), 200);
        cr_assert(!ch && b.len == 0, "after the last key: an empty body");
        /* HEAD: the head only (chunked when the listing is), then the
         * next response at once */
        const char *hd = p;
        const char *he = memmem(hd, (size_t)(end - hd), "\r\n\r\n", 4);
        cr_assert(he && strncmp(hd, "HTTP/1.1 200 ", 13) == 0);
        cr_assert(!!memmem(hd, (size_t)(he - hd), "Transfer-Encoding: chunked", 26) == multi);
        p = he + 4;
        cr_assert_eq(next_resp(&p, end, &ch, &b), 400, "limit=abc");
        cr_assert(strstr(b.p, "limit="), "%s", b.p);
        cr_assert_eq(next_resp(&p, end, &ch, &b), 400, "limit past 2^64-1");
        cr_assert_eq(next_resp(&p, end, &ch, &b), 400, "after=%%zz");
        const char *last = p;
        cr_assert_eq(next_resp(&p, end, &ch, &b), 200);
        cr_assert(strstr(last, "Connection: close\r\n") < (const char *)memmem(last, (size_t)(end - last), "\r\n\r\n", 4));
        cr_assert(strcmp(b.p, tail.p) == 0, "prefix key-02:\n%s", b.p);
        cr_assert(p == end, "bytes after the Connection: close listing:\n%s", p);
        sb_free(&b);
        sb_free(&out);
    }
    sb_free(&all);
    sb_free(&json);
    sb_free(&range);
    sb_free(&tail);
    s4kv_close(db);
    tu_rmtree_free(dir);
}
