/*
 * util.c - test helpers (see util.h). Plain POSIX; no Criterion calls except
 * cr_assert_fail on setup failures that make a test meaningless.
 */
#include "util.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

char *tu_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    size_t n = strlen(base) + strlen(tag) + 32;
    char *p = malloc(n);
    if (!p)
        cr_assert_fail("out of memory");
    snprintf(p, n, "%s/s4kv-test-%s-XXXXXX", base, tag);
    if (!mkdtemp(p))
        cr_assert_fail("mkdtemp %s: %s", p, strerror(errno));
    return p;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

void tu_rmtree_free(char *path)
{
    if (!path)
        return;
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(path);
}

uint8_t *tu_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return NULL;
    }
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0) {
            free(buf);
            buf = NULL;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    if (buf) {
        buf[got] = 0;
        *len = got;
    }
    return buf;
}

int tu_write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return close(fd);
}

const char *tu_s4kv_bin(void)
{
    const char *b = getenv("S4KV_BIN");
    return (b && *b) ? b : "build/s4kv";
}

static int append(char **buf, size_t *len, size_t *cap, const char *src, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap ? *cap * 2 : 4096);
        while (nc < *len + n + 1)
            nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

int tu_run(char *const argv[], const void *in, size_t inlen, char **out,
           size_t *outlen, char **errout)
{
    int pin[2], pout[2], perr[2];
    if (pipe(pin) || pipe(pout) || pipe(perr))
        cr_assert_fail("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        cr_assert_fail("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        close(pin[0]); close(pin[1]); close(pout[0]); close(pout[1]);
        close(perr[0]); close(perr[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    signal(SIGPIPE, SIG_IGN);
    char *ob = NULL, *eb = NULL;
    size_t ol = 0, oc = 0, el = 0, ec = 0, inoff = 0;
    append(&ob, &ol, &oc, "", 0);
    append(&eb, &el, &ec, "", 0);
    int in_open = 1, out_open = 1, err_open = 1;
    if (inlen == 0) {
        close(pin[1]);
        in_open = 0;
    }
    while (out_open || err_open) {
        struct pollfd fds[3];
        int n = 0, iin = -1, iout = -1, ierr = -1;
        if (in_open) { fds[n].fd = pin[1]; fds[n].events = POLLOUT; iin = n++; }
        if (out_open) { fds[n].fd = pout[0]; fds[n].events = POLLIN; iout = n++; }
        if (err_open) { fds[n].fd = perr[0]; fds[n].events = POLLIN; ierr = n++; }
        if (poll(fds, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        char tmp[65536];
        if (iin >= 0 && fds[iin].revents) {
            ssize_t w = write(pin[1], (const char *)in + inoff, inlen - inoff);
            if (w > 0)
                inoff += (size_t)w;
            if (w < 0 || inoff == inlen) {
                close(pin[1]);
                in_open = 0;
            }
        }
        if (iout >= 0 && fds[iout].revents) {
            ssize_t r = read(pout[0], tmp, sizeof tmp);
            if (r > 0)
                append(&ob, &ol, &oc, tmp, (size_t)r);
            else {
                close(pout[0]);
                out_open = 0;
            }
        }
        if (ierr >= 0 && fds[ierr].revents) {
            ssize_t r = read(perr[0], tmp, sizeof tmp);
            if (r > 0)
                append(&eb, &el, &ec, tmp, (size_t)r);
            else {
                close(perr[0]);
                err_open = 0;
            }
        }
    }
    if (in_open)
        close(pin[1]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (out)
        *out = ob;
    else
        free(ob);
    if (outlen)
        *outlen = ol;
    if (errout)
        *errout = eb;
    else
        free(eb);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

uint64_t tu_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

long long tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tu_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void tu_res_free(tu_res *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

tu_res tu_run_cli(const char *dir, const void *in, size_t inlen, ...)
{
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)tu_s4kv_bin();
    if (dir) {
        argv[n++] = "-d";
        argv[n++] = (char *)dir;
    }
    va_list ap;
    va_start(ap, inlen);
    char *a;
    while ((a = va_arg(ap, char *)) != NULL && n < 63)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    tu_res r;
    r.rc = tu_run(argv, in, inlen, &r.out, &r.outlen, &r.err);
    return r;
}

void tu_expect(tu_res *r, int rc, const char *want, size_t wantlen, const char *what)
{
    cr_assert_eq(r->rc, rc, "%s: exit %d, want %d; stderr: %s", what, r->rc, rc, r->err);
    if (want) {
        cr_assert_eq(r->outlen, wantlen, "%s: stdout is %zu bytes, want %zu: [%.200s]", what,
                     r->outlen, wantlen, r->out);
        cr_assert(memcmp(r->out, want, wantlen) == 0, "%s: stdout [%.200s], want [%.200s]", what,
                  r->out, want);
    }
}

int tu_tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

void tu_send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        cr_assert(w > 0, "send: %s", strerror(errno));
        c += w;
        n -= (size_t)w;
    }
}

/* One CRLF-terminated line (without it) into buf. */
static void read_line(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        cr_assert(n < cap - 1, "chunk line too long");
        cr_assert(recv(fd, buf + n, 1, 0) == 1, "connection closed in a chunked body");
        n++;
        if (n >= 2 && buf[n - 2] == '\r' && buf[n - 1] == '\n')
            break;
    }
    buf[n - 2] = 0;
}

/* A "Transfer-Encoding: chunked" body (RFC 9112 section 7.1; no trailers)
 * into r->body, r->blen; r->chunks counts its chunks. */
static void read_chunked(int fd, tu_resp *r)
{
    size_t cap = 4096;
    r->body = malloc(cap);
    cr_assert(r->body);
    for (;;) {
        char line[64];
        read_line(fd, line, sizeof line);
        char *e;
        size_t n = strtoull(line, &e, 16);
        cr_assert(e > line && *e == 0, "bad chunk size line '%s'", line);
        if (n == 0)
            break;
        r->chunks++;
        while (r->blen + n + 1 > cap)
            cap *= 2;
        r->body = realloc(r->body, cap);
        cr_assert(r->body);
        for (size_t got = 0; got < n;) {
            ssize_t g = recv(fd, r->body + r->blen + got, n - got, 0);
            cr_assert(g > 0, "chunk cut short");
            got += (size_t)g;
        }
        r->blen += n;
        read_line(fd, line, sizeof line);
        cr_assert(line[0] == 0, "no CRLF after a chunk");
    }
    char line[64];
    read_line(fd, line, sizeof line);
    cr_assert(line[0] == 0, "trailers are not expected: '%s'", line);
    r->body[r->blen] = 0;
}

void tu_read_resp(int fd, tu_resp *r)
{
    memset(r, 0, sizeof *r);
    size_t n = 0;
    for (;;) {
        cr_assert(n < sizeof r->head - 1, "response head too long");
        ssize_t g = recv(fd, r->head + n, 1, 0);
        cr_assert(g == 1, "connection closed or timed out reading a response head (%zu bytes: %.*s)",
                  n, (int)n, r->head);
        n++;
        if (n >= 4 && memcmp(r->head + n - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    r->head[n] = 0;
    cr_assert(sscanf(r->head, "HTTP/1.1 %d", &r->status) == 1, "%s", r->head);
    const char *cl = strcasestr(r->head, "\r\nContent-Length:");
    if (!cl && strcasestr(r->head, "\r\nTransfer-Encoding: chunked\r\n")) {
        read_chunked(fd, r);
        return;
    }
    cr_assert(cl, "no Content-Length: %s", r->head);
    r->blen = strtoul(cl + 17, NULL, 10);
    r->body = malloc(r->blen + 1);
    size_t got = 0;
    while (got < r->blen) {
        ssize_t g = recv(fd, r->body + got, r->blen - got, 0);
        cr_assert(g > 0, "body cut short");
        got += (size_t)g;
    }
    r->body[r->blen] = 0;
}

tu_resp tu_http(int port, const char *method, const char *path, const void *body, size_t blen,
                const char *extra)
{
    int fd = tu_tcp_connect(port);
    cr_assert(fd >= 0, "connect: %s", strerror(errno));
    char head[2048];
    int hl = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n%s\r\n",
                      method, path, blen, extra ? extra : "");
    tu_send_all(fd, head, (size_t)hl);
    if (blen)
        tu_send_all(fd, body, blen);
    tu_resp r;
    tu_read_resp(fd, &r);
    close(fd);
    return r;
}
