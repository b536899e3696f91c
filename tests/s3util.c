/*
 * s3util.c - a real S3 server for tests (s3rver from npm) and the loopback
 * fault proxy (build/faultproxy), started as child processes and stopped
 * afterwards (see s3util.h).
 *
 * Invariants:
 * - Every child runs in its own process group with PR_SET_PDEATHSIG=SIGTERM,
 *   so a test that crashes or fails an assertion (Criterion's worker exits)
 *   leaves no node or proxy process behind. Stop signals the whole group.
 * - The port is chosen by the child itself: s3rver is started with --port 0
 *   and prints "S3rver listening on 127.0.0.1:PORT" (it prints that line even
 *   with --silent); faultproxy is started with --listen 127.0.0.1:0 and prints
 *   its port. No bind-close-rebind race, so no collision retry is needed.
 *   Before returning, tu_s3_start also checks that GET / answers over HTTP.
 * - A missing node, s3rver or faultproxy fails the test with a message that
 *   says how to install it; nothing is skipped silently.
 * - The child's stdout/stderr go to a log file next to its directory
 *   ("<dir>.log" for s3rver, "$TMPDIR/s4kv-faultproxy-<pid>.log" for the
 *   proxy); its tail is quoted when start-up fails, and it is removed on stop
 *   (printed first when S4KV_TEST_VERBOSE is set).
 */
#include "s3util.h"
#include "s4kv.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define START_TIMEOUT_MS 20000
#define STOP_GRACE_MS 5000

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static const char *tmp_base(void)
{
    const char *base = getenv("TMPDIR");
    return (base && *base) ? base : "/tmp";
}

/* The tests directory, absolute: $S4KV_TESTS_DIR, else ./tests. */
static void tests_dir(char *out, size_t n)
{
    const char *d = getenv("S4KV_TESTS_DIR");
    if (!d || !*d)
        d = "tests";
    char *r = realpath(d, NULL);
    snprintf(out, n, "%s", r ? r : d);
    free(r);
}

/* Finds prog on $PATH (prog without a slash); writes the full path. */
static int find_on_path(const char *prog, char *out, size_t n)
{
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    const char *p = path;
    while (*p) {
        const char *e = strchr(p, ':');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > 0 && len + strlen(prog) + 2 <= n) {
            snprintf(out, n, "%.*s/%s", (int)len, p, prog);
            if (access(out, X_OK) == 0)
                return 0;
        }
        if (!e)
            break;
        p = e + 1;
    }
    return -1;
}

static char *read_small(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    close(fd);
    if (buf)
        buf[len] = 0;
    return buf;
}

/* Last ~1500 bytes of a log file, for error messages (static buffer). */
static const char *log_tail(const char *path)
{
    static char tail[1600];
    char *s = read_small(path);
    if (!s) {
        snprintf(tail, sizeof tail, "(no log)");
        return tail;
    }
    size_t len = strlen(s);
    const char *from = len > 1500 ? s + len - 1500 : s;
    snprintf(tail, sizeof tail, "%s", *from ? from : "(empty log)");
    free(s);
    return tail;
}

static void dump_log_if_verbose(const char *what, const char *path)
{
    const char *v = getenv("S4KV_TEST_VERBOSE");
    if (!v || !*v || strcmp(v, "0") == 0)
        return;
    char *s = read_small(path);
    if (s && *s)
        fprintf(stderr, "--- %s log %s ---\n%s--- end ---\n", what, path, s);
    free(s);
}

/*
 * Forks argv[0] (an absolute path) in its own process group, with
 * PDEATHSIG=SIGTERM, stdin from /dev/null and stdout+stderr to logpath.
 * extra_env ("NAME=value" or NULL) is added to the child's environment.
 * Returns the pid, or -1 with errno (exec failures are reported through a
 * close-on-exec pipe, so ENOENT/EACCES come back here, not as an exit code).
 */
static pid_t spawn(char *const argv[], const char *logpath, const char *extra_env)
{
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) != 0)
        return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(ep[0]);
        close(ep[1]);
        errno = e;
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) /* parent already gone */
            _exit(127);
        signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int in = open("/dev/null", O_RDONLY);
        int out = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
        if (in < 0 || out < 0)
            goto fail;
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        if (in > 2)
            close(in);
        if (out > 2)
            close(out);
        if (extra_env) {
            char *kv = strdup(extra_env);
            if (!kv || putenv(kv) != 0)
                goto fail;
        }
        execv(argv[0], argv);
    fail:;
        int e = errno;
        ssize_t w = write(ep[1], &e, sizeof e);
        (void)w;
        _exit(127);
    }
    close(ep[1]);
    int e = 0;
    ssize_t r;
    do
        r = read(ep[0], &e, sizeof e);
    while (r < 0 && errno == EINTR);
    close(ep[0]);
    if (r == (ssize_t)sizeof e) {
        waitpid(pid, NULL, 0);
        errno = e;
        return -1;
    }
    return pid;
}

/* SIGTERM to the child's group, SIGKILL after grace_ms; reaps it.
 * Returns the wait status, or -1 if it could not be reaped. */
static int terminate(pid_t pid, int grace_ms)
{
    if (pid <= 0)
        return -1;
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid) {
        kill(-pid, SIGKILL); /* stragglers in its group, if any */
        return st;
    }
    if (kill(-pid, SIGTERM) != 0)
        kill(pid, SIGTERM);
    long long deadline = now_ms() + grace_ms;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) {
            kill(-pid, SIGKILL);
            return st;
        }
        if (w < 0 && errno != EINTR)
            return -1;
        if (now_ms() >= deadline)
            break;
        sleep_ms(20);
    }
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return st;
}

/* Polls logpath for a complete line "<marker> HOST:PORT..." and returns
 * PORT (the number after the first ':' following the marker), 0 while not
 * yet there. */
static int port_from_log(const char *logpath, const char *marker)
{
    char *s = read_small(logpath);
    if (!s)
        return 0;
    int port = 0;
    char *m = strstr(s, marker);
    if (m) {
        char *eol = strchr(m, '\n');
        if (eol) { /* only a complete line */
            *eol = 0;
            char *colon = strchr(m + strlen(marker), ':');
            const char *num = colon ? colon + 1 : m + strlen(marker);
            char *end;
            long v = strtol(num, &end, 10);
            if (end != num && v > 0 && v < 65536)
                port = (int)v;
        }
    }
    free(s);
    return port;
}

/* One HTTP exchange: GET / to 127.0.0.1:port; 1 if an HTTP status line came
 * back, 0 otherwise. */
static int http_answers(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        char req[128];
        int n = snprintf(req, sizeof req,
                         "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", port);
        if (send(fd, req, (size_t)n, MSG_NOSIGNAL) == n) {
            char buf[16];
            size_t got = 0;
            long long deadline = now_ms() + timeout_ms;
            while (got < 9) {
                struct pollfd pfd = {fd, POLLIN, 0};
                long long left = deadline - now_ms();
                if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
                    break;
                ssize_t r = recv(fd, buf + got, sizeof buf - got, 0);
                if (r <= 0)
                    break;
                got += (size_t)r;
            }
            ok = got >= 9 && memcmp(buf, "HTTP/1.", 7) == 0;
        }
    }
    close(fd);
    return ok;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

void tu_s3_start(tu_s3 *s, const char *bucket)
{
    memset(s, 0, sizeof *s);
    s->pid = -1;

    char tdir[PATH_MAX], script[PATH_MAX + 64], node[PATH_MAX];
    tests_dir(tdir, sizeof tdir);
    snprintf(script, sizeof script, "%s/node_modules/s3rver/bin/s3rver.js", tdir);
    if (find_on_path("node", node, sizeof node) != 0)
        cr_assert_fail("s3rver not installed: node is not on PATH (run: make test-deps)");
    if (access(script, R_OK) != 0)
        cr_assert_fail("s3rver not installed: %s missing (run: make test-deps; "
                       "S4KV_TESTS_DIR names the tests directory)", script);

    size_t n = strlen(tmp_base()) + 32;
    s->dir = malloc(n);
    cr_assert(s->dir != NULL, "out of memory");
    snprintf(s->dir, n, "%s/s4kv-s3rver-XXXXXX", tmp_base());
    if (!mkdtemp(s->dir))
        cr_assert_fail("mkdtemp %s: %s", s->dir, strerror(errno));
    char logpath[PATH_MAX];
    snprintf(logpath, sizeof logpath, "%s.log", s->dir);

    char *argv[16];
    int a = 0;
    argv[a++] = node;
    argv[a++] = script;
    argv[a++] = "--address";
    argv[a++] = "127.0.0.1";
    argv[a++] = "--port";
    argv[a++] = "0";
    argv[a++] = "--directory";
    argv[a++] = s->dir;
    if (bucket && *bucket) {
        argv[a++] = "--configure-bucket";
        argv[a++] = (char *)bucket;
    }
    argv[a++] = "--silent";
    argv[a] = NULL;

    long long t0 = now_ms();
    pid_t pid = spawn(argv, logpath, "NODE_OPTIONS=--openssl-legacy-provider");
    if (pid < 0)
        cr_assert_fail("s3rver: cannot run %s: %s (run: make test-deps)", node, strerror(errno));
    s->pid = pid;

    int port = 0;
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = -1;
            cr_assert_fail("s3rver exited during start-up (%s %d); its log:\n%s",
                           WIFEXITED(st) ? "status" : "signal",
                           WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), log_tail(logpath));
        }
        if (!port)
            port = port_from_log(logpath, "S3rver listening on");
        if (port && http_answers(port, 2000))
            break;
        if (now_ms() - t0 > START_TIMEOUT_MS) {
            terminate(pid, 1000);
            s->pid = -1;
            cr_assert_fail("s3rver did not answer within %d ms (port %d); its log:\n%s",
                           START_TIMEOUT_MS, port, log_tail(logpath));
        }
        sleep_ms(port ? 20 : 30);
    }
    s->port = port;
    snprintf(s->endpoint, sizeof s->endpoint, "http://127.0.0.1:%d", port);
    setenv("AWS_ENDPOINT_URL_S3", s->endpoint, 1);
    setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "S3RVER", 1);
    setenv("AWS_REGION", "us-east-1", 1);
    const char *v = getenv("S4KV_TEST_VERBOSE");
    if (v && *v && strcmp(v, "0") != 0)
        fprintf(stderr, "s3rver up on %s in %lld ms (dir %s)\n", s->endpoint, now_ms() - t0,
                s->dir);
}

void tu_s3_stop(tu_s3 *s)
{
    if (!s)
        return;
    if (s->pid > 0)
        terminate(s->pid, STOP_GRACE_MS);
    s->pid = -1;
    if (s->dir) {
        char logpath[PATH_MAX];
        snprintf(logpath, sizeof logpath, "%s.log", s->dir);
        dump_log_if_verbose("s3rver", logpath);
        unlink(logpath);
        nftw(s->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(s->dir);
        s->dir = NULL;
    }
}

/* The faultproxy binary: $S4KV_FAULTPROXY, else beside $S4KV_BIN (build/ or
 * build-san/), else build/faultproxy. */
static void faultproxy_path(char *out, size_t n)
{
    const char *p = getenv("S4KV_FAULTPROXY");
    if (p && *p) {
        snprintf(out, n, "%s", p);
    } else if ((p = getenv("S4KV_BIN")) && *p) {
        char *copy = strdup(p);
        snprintf(out, n, "%s/faultproxy", copy ? dirname(copy) : "build");
        free(copy);
    } else {
        snprintf(out, n, "build/faultproxy");
    }
    char *r = realpath(out, NULL);
    if (r) {
        snprintf(out, n, "%s", r);
        free(r);
    }
}

static void proxy_log_path(char *out, size_t n, int pid)
{
    snprintf(out, n, "%s/s4kv-faultproxy-%d.log", tmp_base(), pid);
}

void tu_proxy_start(tu_proxy *p, int upstream_port, const char *spec)
{
    memset(p, 0, sizeof *p);
    p->pid = -1;
    char bin[PATH_MAX];
    faultproxy_path(bin, sizeof bin);
    if (access(bin, X_OK) != 0)
        cr_assert_fail("faultproxy not built: %s (run: make build/faultproxy, or set "
                       "S4KV_FAULTPROXY)", bin);

    /* The log name uses our pid plus a counter until the child exists. */
    static int seq;
    char logpath[PATH_MAX], up[64];
    snprintf(logpath, sizeof logpath, "%s/s4kv-faultproxy-start-%d-%d.log", tmp_base(),
             (int)getpid(), ++seq);
    snprintf(up, sizeof up, "127.0.0.1:%d", upstream_port);
    char *argv[] = {bin, "--listen", "127.0.0.1:0", "--upstream", up,
                    "--faults", (char *)(spec && *spec ? spec : "rate=0"), NULL};
    long long t0 = now_ms();
    pid_t pid = spawn(argv, logpath, NULL);
    if (pid < 0)
        cr_assert_fail("faultproxy: cannot run %s: %s", bin, strerror(errno));
    char final_log[PATH_MAX];
    proxy_log_path(final_log, sizeof final_log, pid);
    p->pid = pid;

    int port = 0;
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            p->pid = -1;
            const char *t = log_tail(logpath);
            unlink(logpath);
            cr_assert_fail("faultproxy exited during start-up (spec \"%s\"); its output:\n%s",
                           spec ? spec : "", t);
        }
        port = port_from_log(logpath, "faultproxy listening on");
        if (port)
            break;
        if (now_ms() - t0 > START_TIMEOUT_MS) {
            terminate(pid, 1000);
            p->pid = -1;
            const char *t = log_tail(logpath);
            unlink(logpath);
            cr_assert_fail("faultproxy did not start within %d ms; its output:\n%s",
                           START_TIMEOUT_MS, t);
        }
        sleep_ms(10);
    }
    rename(logpath, final_log);
    p->port = port;
    snprintf(p->endpoint, sizeof p->endpoint, "http://127.0.0.1:%d", port);
}

void tu_proxy_stop(tu_proxy *p)
{
    if (!p || p->pid <= 0)
        return;
    terminate(p->pid, STOP_GRACE_MS);
    char logpath[PATH_MAX];
    proxy_log_path(logpath, sizeof logpath, p->pid);
    dump_log_if_verbose("faultproxy", logpath);
    unlink(logpath);
    p->pid = -1;
}

/* A counter of the fault proxy's statistics (GET /__faultproxy/stats, which
 * the proxy neither counts nor faults), over a raw socket. */
long tu_proxy_stat(const tu_proxy *p, const char *name)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)p->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    static const char req[] = "GET /__faultproxy/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              "Connection: close\r\n\r\n";
    cr_assert_eq(send(fd, req, sizeof req - 1, MSG_NOSIGNAL), (ssize_t)(sizeof req - 1));
    char buf[8192];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = recv(fd, buf + n, sizeof buf - 1 - n, 0)) > 0)
        n += (size_t)r;
    close(fd);
    buf[n] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    cr_assert(body, "proxy stats: %s", buf);
    size_t nl = strlen(name);
    for (char *line = body + 4; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, name, nl) == 0 && line[nl] == ' ')
            return strtol(line + nl + 1, NULL, 10);
    cr_assert_fail("proxy stats lack %s: %s", name, body + 4);
    return -1;
}

s4kv_db *tu_remote_reader(const char *url, const char *endpoint,
                          void (*log)(void *ctx, const char *line))
{
    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = url;
    o.endpoint = endpoint;
    o.log = log;
    s4kv_options opt;
    s4kv_options_init(&opt);
    opt.log = log;
    s4kv_db *db = NULL;
    char err[512] = "";
    int rc = s4kv_open_s3(NULL, &opt, &o, &db, err, sizeof err);
    cr_assert_eq(rc, 0, "remote open %s: %s", url, err);
    return db;
}
