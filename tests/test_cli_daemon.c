/*
 * test_cli_daemon.c - the CLI beside a running `s4kv sync` daemon (a child
 * process against s3rver on loopback): put, get, delete and keys go through
 * the daemon instead of failing on its lock and agree byte for byte with a
 * local run after it stops; delete KEY... is one atomic POST /v1/batch; the
 * token file DIR/SYNC_TOKEN is found, and without a token the CLI reports the
 * daemon's 401; POST /v1/batch validates its framing (400 naming the byte
 * offset, nothing written), refuses oversized bodies (413) and applies a
 * mixed batch whole.
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
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

#include "s3util.h"
#include "util.h"








/* ---- the daemon as a child process */

typedef struct sdaemon {
    pid_t pid;
    int port;
    char addr[64];
    char logfile[PATH_MAX];
    char *logdir;
} sdaemon;

static void daemon_start(sdaemon *d, const char *dir, const char *url, const char *token)
{
    memset(d, 0, sizeof *d);
    d->logdir = tu_tmpdir("cli-daemon-log");
    snprintf(d->logfile, sizeof d->logfile, "%s/sync.log", d->logdir);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(d->logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 2);
        dup2(fd, 1);
        const char *bin = tu_s4kv_bin();
        if (token)
            execl(bin, bin, "-d", dir, "--s3", url, "sync", "--listen", "127.0.0.1:0",
                  "--interval", "200ms", "--token", token, (char *)NULL);
        else
            execl(bin, bin, "-d", dir, "--s3", url, "sync", "--listen", "127.0.0.1:0",
                  "--interval", "200ms", (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/SYNC_ADDR", dir);
    long long t0 = tu_now_ms();
    for (;;) {
        size_t n;
        uint8_t *a = tu_read_file(path, &n);
        if (a) {
            a[strcspn((char *)a, "\n")] = 0;
            const char *colon = strrchr((char *)a, ':');
            cr_assert(colon && strncmp((char *)a, "127.0.0.1:", 10) == 0, "SYNC_ADDR: %s", a);
            d->port = atoi(colon + 1);
            snprintf(d->addr, sizeof d->addr, "%s", (char *)a);
            free(a);
            return;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            uint8_t *l = tu_read_file(d->logfile, &n);
            cr_assert_fail("s4kv sync exited at start (status %d): %s", st, l ? (char *)l : "");
        }
        cr_assert(tu_now_ms() - t0 < 15000, "s4kv sync wrote no SYNC_ADDR in 15 s");
        tu_sleep_ms(20);
    }
}

/* SIGTERM, then the exit status must be 0 (the final upload reached S3). */
static void daemon_stop(sdaemon *d)
{
    cr_assert_eq(kill(d->pid, SIGTERM), 0);
    int st = 0;
    long long t0 = tu_now_ms();
    while (waitpid(d->pid, &st, WNOHANG) == 0) {
        cr_assert(tu_now_ms() - t0 < 30000, "s4kv sync did not exit within 30 s of SIGTERM");
        tu_sleep_ms(20);
    }
    size_t n;
    uint8_t *l = tu_read_file(d->logfile, &n);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d; log:\n%s", st,
              l ? (char *)l : "");
    free(l);
    tu_rmtree_free(d->logdir);
}

/* ---- running the CLI */

typedef struct run {
    int st;
    char *out, *err;
    size_t outlen;
} run;

static run cli(const char *dir, const void *in, size_t inlen, const char *a1, const char *a2,
               const char *a3, const char *a4, const char *a5)
{
    char *argv[10] = {(char *)tu_s4kv_bin(), "-d", (char *)dir};
    const char *rest[] = {a1, a2, a3, a4, a5};
    int n = 3;
    for (int i = 0; i < 5 && rest[i]; i++)
        argv[n++] = (char *)rest[i];
    argv[n] = NULL;
    run r;
    r.st = tu_run(argv, in, inlen, &r.out, &r.outlen, &r.err);
    return r;
}

static void run_free(run *r)
{
    free(r->out);
    free(r->err);
}

/* The daemon's counter line `name` (e.g. s4kv_http_requests_total{op="batch"}). */
static long metric(int port, const char *name)
{
    tu_resp r = tu_http(port, "GET", "/metrics", NULL, 0, NULL);
    cr_assert_eq(r.status, 200);
    char pat[200];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(r.body, pat);
    cr_assert(p, "/metrics lacks %s", name);
    long v = strtol(p + strlen(pat), NULL, 10);
    free(r.body);
    return v;
}

/* ---- the tests */

Test(cli_daemon, put_get_delete_keys_go_through_the_daemon, .timeout = 120)
{
    unsetenv("S4KV_SYNC_TOKEN");
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("cli-daemon");
    sdaemon d;
    daemon_start(&d, dir, "s3://bkt/cli/", NULL);

    /* A binary value with NUL and 0xff bytes, through stdin. */
    uint8_t val[5000];
    for (size_t i = 0; i < sizeof val; i++)
        val[i] = (uint8_t)(i * 13 + 1);
    val[0] = 0;
    val[100] = 0xff;
    val[4999] = 0;
    run r = cli(dir, val, sizeof val, "put", "bin key/ü", "-", NULL, NULL);
    cr_assert_eq(r.st, 0, "put through the daemon: %s", r.err);
    cr_assert_str_eq(r.err, "");
    run_free(&r);
    const char *ks[] = {"k1", "k2", "k3", "k\t4", "other"};
    for (size_t i = 0; i < 5; i++) {
        char v[32];
        snprintf(v, sizeof v, "value %zu", i);
        r = cli(dir, NULL, 0, "put", ks[i], v, NULL, NULL);
        cr_assert_eq(r.st, 0, "put %s: %s", ks[i], r.err);
        run_free(&r);
    }
    /* The daemon holds the values (the CLI did not write the files itself). */
    tu_resp h = tu_http(d.port, "GET", "/v1/kv/bin%20key%2F%C3%BC", NULL, 0, NULL);
    cr_assert_eq(h.status, 200, "%s", h.head);
    cr_assert(h.blen == sizeof val && memcmp(h.body, val, sizeof val) == 0);
    free(h.body);
    long gets0 = metric(d.port, "s4kv_http_requests_total{op=\"get\"}");

    r = cli(dir, NULL, 0, "get", "bin key/ü", NULL, NULL, NULL);
    cr_assert_eq(r.st, 0, "%s", r.err);
    cr_assert(r.outlen == sizeof val && memcmp(r.out, val, sizeof val) == 0,
              "get through the daemon returned other bytes (%zu)", r.outlen);
    run_free(&r);
    cr_assert_eq(metric(d.port, "s4kv_http_requests_total{op=\"get\"}"), gets0 + 1,
                 "get did not go through the daemon");
    run absent_d = cli(dir, NULL, 0, "get", "absent", NULL, NULL, NULL);
    cr_assert_eq(absent_d.st, 1, "%s", absent_d.err);

    /* delete of several keys: one POST /v1/batch, no single DELETE. */
    r = cli(dir, NULL, 0, "delete", "k1", "k2", "never-there", NULL);
    cr_assert_eq(r.st, 0, "%s", r.err);
    run_free(&r);
    cr_assert_eq(metric(d.port, "s4kv_http_requests_total{op=\"batch\"}"), 1);
    cr_assert_eq(metric(d.port, "s4kv_http_requests_total{op=\"delete\"}"), 0);
    r = cli(dir, NULL, 0, "get", "k1", NULL, NULL, NULL);
    cr_assert_eq(r.st, 1);
    run_free(&r);

    run keys_d = cli(dir, NULL, 0, "keys", NULL, NULL, NULL, NULL);
    cr_assert_eq(keys_d.st, 0, "%s", keys_d.err);
    cr_assert_str_eq(keys_d.out, "bin key/ü\nk\\t4\nk3\nother\n");
    run keys0_d = cli(dir, NULL, 0, "keys", "-0", "--prefix", "k", NULL);
    cr_assert_eq(keys0_d.st, 0, "%s", keys0_d.err);
    cr_assert(keys0_d.outlen == 7 && memcmp(keys0_d.out, "k\t4\0k3\0", 7) == 0);
    cr_assert(metric(d.port, "s4kv_http_requests_total{op=\"keys\"}") >= 2,
              "keys did not go through the daemon");

    daemon_stop(&d);
    char p[PATH_MAX];
    struct stat st;
    snprintf(p, sizeof p, "%s/SYNC_ADDR", dir);
    cr_assert(stat(p, &st) != 0, "SYNC_ADDR left behind");

    /* The same commands on the files now agree byte for byte. */
    r = cli(dir, NULL, 0, "get", "bin key/ü", NULL, NULL, NULL);
    cr_assert_eq(r.st, 0, "%s", r.err);
    cr_assert(r.outlen == sizeof val && memcmp(r.out, val, sizeof val) == 0);
    run_free(&r);
    r = cli(dir, NULL, 0, "get", "absent", NULL, NULL, NULL);
    cr_assert_eq(r.st, 1);
    cr_assert_str_eq(r.err, absent_d.err);
    run_free(&r);
    r = cli(dir, NULL, 0, "keys", NULL, NULL, NULL, NULL);
    cr_assert(r.st == 0 && r.outlen == keys_d.outlen && memcmp(r.out, keys_d.out, r.outlen) == 0,
              "local keys:\n%s\nthrough the daemon:\n%s", r.out, keys_d.out);
    run_free(&r);
    r = cli(dir, NULL, 0, "keys", "-0", "--prefix", "k", NULL);
    cr_assert(r.st == 0 && r.outlen == keys0_d.outlen &&
              memcmp(r.out, keys0_d.out, r.outlen) == 0);
    run_free(&r);
    run_free(&absent_d);
    run_free(&keys_d);
    run_free(&keys0_d);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
}

Test(cli_daemon, token_file_found_and_401_without_it, .timeout = 120)
{
    unsetenv("S4KV_SYNC_TOKEN");
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("cli-daemon-tok");
    sdaemon d;
    daemon_start(&d, dir, "s3://bkt/tok/", "s3cret-token");
    char tp[PATH_MAX], moved[PATH_MAX];
    snprintf(tp, sizeof tp, "%s/SYNC_TOKEN", dir);
    snprintf(moved, sizeof moved, "%s.moved", dir);
    struct stat st;
    cr_assert_eq(stat(tp, &st), 0, "no SYNC_TOKEN");
    cr_assert_eq(st.st_mode & 0777, 0600, "SYNC_TOKEN mode %o", st.st_mode & 0777);
    size_t n;
    uint8_t *t = tu_read_file(tp, &n);
    cr_assert(t && strcmp((char *)t, "s3cret-token\n") == 0);
    free(t);

    run r = cli(dir, NULL, 0, "put", "a", "1", NULL, NULL);
    cr_assert_eq(r.st, 0, "put with the token file: %s", r.err);
    run_free(&r);
    r = cli(dir, NULL, 0, "get", "a", NULL, NULL, NULL);
    cr_assert(r.st == 0 && strcmp(r.out, "1") == 0, "%s", r.err);
    run_free(&r);

    /* No token anywhere: a clear 401 naming the daemon. */
    cr_assert_eq(rename(tp, moved), 0);
    const char *cmds[][3] = {{"put", "a", "2"}, {"get", "a", NULL}, {"delete", "a", NULL},
                             {"keys", NULL, NULL}};
    for (size_t i = 0; i < 4; i++) {
        r = cli(dir, NULL, 0, cmds[i][0], cmds[i][1], cmds[i][2], NULL, NULL);
        cr_assert_eq(r.st, 3, "%s without a token: exit %d (%s)", cmds[i][0], r.st, r.err);
        cr_assert(strstr(r.err, "401 Unauthorized") && strstr(r.err, d.addr) &&
                      strstr(r.err, "S4KV_SYNC_TOKEN") && strncmp(r.err, "s4kv: ", 6) == 0,
                  "%s: %s", cmds[i][0], r.err);
        run_free(&r);
    }
    setenv("S4KV_SYNC_TOKEN", "wrong", 1);
    r = cli(dir, NULL, 0, "put", "a", "2", NULL, NULL);
    cr_assert(r.st == 3 && strstr(r.err, "401") && strstr(r.err, "refused"), "%s", r.err);
    run_free(&r);
    setenv("S4KV_SYNC_TOKEN", "s3cret-token", 1);
    r = cli(dir, NULL, 0, "put", "a", "2", NULL, NULL);
    cr_assert_eq(r.st, 0, "put with $S4KV_SYNC_TOKEN: %s", r.err);
    run_free(&r);
    unsetenv("S4KV_SYNC_TOKEN");
    cr_assert_eq(rename(moved, tp), 0);
    r = cli(dir, NULL, 0, "get", "a", NULL, NULL, NULL);
    cr_assert(r.st == 0 && strcmp(r.out, "2") == 0, "%s", r.err);
    run_free(&r);

    daemon_stop(&d);
    cr_assert(stat(tp, &st) != 0, "SYNC_TOKEN left behind after the daemon exited");
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
}

/* Appends one batch record. */
static size_t rec(uint8_t *p, uint8_t op, const void *k, uint32_t kl, const void *v, uint32_t vl)
{
    p[0] = op;
    for (int i = 0; i < 4; i++) {
        p[1 + i] = (uint8_t)(kl >> (8 * i));
        p[5 + i] = (uint8_t)(vl >> (8 * i));
    }
    memcpy(p + 9, k, kl);
    if (vl)
        memcpy(p + 9 + kl, v, vl);
    return 9 + (size_t)kl + vl;
}

static void expect_400(int port, const void *body, size_t n, const char *want)
{
    tu_resp r = tu_http(port, "POST", "/v1/batch", body, n, NULL);
    cr_assert_eq(r.status, 400, "%s%s", r.head, r.body);
    cr_assert(strstr(r.body, want), "wanted \"%s\" in: %s", want, r.body);
    free(r.body);
}

Test(cli_daemon, batch_framing_validated_and_applied_whole, .timeout = 120)
{
    unsetenv("S4KV_SYNC_TOKEN");
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("cli-daemon-batch");
    sdaemon d;
    daemon_start(&d, dir, "s3://bkt/batch/", NULL);
    static uint8_t b[4096];
    size_t n;

    /* Malformed: every error names the byte offset, and nothing is written
     * (the valid first record of each body is absent afterwards). */
    n = rec(b, 1, "x", 1, "1", 1);
    memcpy(b + n, "\x01\x01\x00", 3);
    expect_400(d.port, b, n + 3, "record 2 at byte offset 11");
    n = rec(b, 1, "x", 1, "1", 1);
    n += rec(b + n, 7, "y", 1, NULL, 0);
    expect_400(d.port, b, n, "record 2 at byte offset 11: unknown op 7");
    n = rec(b, 1, "x", 1, "1", 1);
    n += rec(b + n, 1, "", 0, "v", 1);
    expect_400(d.port, b, n, "byte offset 12: key length 0");
    n = rec(b, 2, "x", 1, NULL, 0);
    b[n++] = 1;
    b[n++] = 100; b[n++] = 0; b[n++] = 0; b[n++] = 0; /* key length 100 */
    b[n++] = 0; b[n++] = 0; b[n++] = 0; b[n++] = 0;
    memcpy(b + n, "short", 5);
    n += 5;
    expect_400(d.port, b, n, "record 2 at byte offset 19: key and value need 100 bytes, 5 are left");
    n = rec(b, 2, "x", 1, "zzz", 3);
    expect_400(d.port, b, n, "record 1 at byte offset 5: a delete with value length 3");
    n = rec(b, 1, "x", 1, "1", 1);
    b[n++] = 1;
    b[n++] = 0xff; b[n++] = 0xff; b[n++] = 0xff; b[n++] = 0xff;
    b[n++] = 0; b[n++] = 0; b[n++] = 0; b[n++] = 0;
    expect_400(d.port, b, n, "byte offset 12: key length 4294967295");
    expect_400(d.port, "", 0, "empty");
    tu_resp r = tu_http(d.port, "GET", "/v1/kv/x", NULL, 0, NULL);
    cr_assert_eq(r.status, 404, "a rejected batch wrote its first record");
    free(r.body);

    /* Oversized: 413 from the head. */
    int fd = tu_tcp_connect(d.port);
    const char big[] = "POST /v1/batch HTTP/1.1\r\nHost: t\r\nContent-Length: 67108865\r\n\r\n";
    tu_send_all(fd, big, sizeof big - 1);
    tu_read_resp(fd, &r);
    cr_assert_eq(r.status, 413, "%s", r.head);
    free(r.body);
    close(fd);
    r = tu_http(d.port, "GET", "/v1/batch", NULL, 0, NULL);
    cr_assert(r.status == 405 && strcasestr(r.head, "Allow: POST"), "%s", r.head);
    free(r.body);

    /* A mixed batch applies whole. */
    r = tu_http(d.port, "PUT", "/v1/kv/d1", "old1", 4, NULL);
    cr_assert_eq(r.status, 204);
    free(r.body);
    r = tu_http(d.port, "PUT", "/v1/kv/d2", "old2", 4, NULL);
    cr_assert_eq(r.status, 204);
    free(r.body);
    const uint8_t binv[] = {0, 1, 0xff, 0, 'z'};
    const uint8_t nulkey[] = {'n', 0, 'k'};
    n = rec(b, 1, "a", 1, "A1", 2);
    n += rec(b + n, 1, nulkey, 3, binv, sizeof binv);
    n += rec(b + n, 2, "d1", 2, NULL, 0);
    n += rec(b + n, 1, "a", 1, "A2", 2); /* a later record for the same key wins */
    n += rec(b + n, 2, "never", 5, NULL, 0);
    n += rec(b + n, 1, "e", 1, NULL, 0); /* an empty value */
    r = tu_http(d.port, "POST", "/v1/batch", b, n, NULL);
    cr_assert_eq(r.status, 204, "%s%s", r.head, r.body);
    free(r.body);
    struct { const char *path; int status; const void *v; size_t vl; } want[] = {
        {"/v1/kv/a", 200, "A2", 2},        {"/v1/kv/n%00k", 200, binv, sizeof binv},
        {"/v1/kv/d1", 404, NULL, 0},       {"/v1/kv/d2", 200, "old2", 4},
        {"/v1/kv/never", 404, NULL, 0},    {"/v1/kv/e", 200, "", 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        r = tu_http(d.port, "GET", want[i].path, NULL, 0, NULL);
        cr_assert_eq(r.status, want[i].status, "%s: %s", want[i].path, r.head);
        if (want[i].status == 200)
            cr_assert(r.blen == want[i].vl && memcmp(r.body, want[i].v, r.blen) == 0,
                      "%s: wrong value", want[i].path);
        free(r.body);
    }
    run k = cli(dir, NULL, 0, "keys", NULL, NULL, NULL, NULL);
    cr_assert_eq(k.st, 0, "%s", k.err);
    cr_assert_str_eq(k.out, "a\nd2\ne\nn\\0k\n");
    run_free(&k);
    cr_assert_eq(metric(d.port, "s4kv_http_responses_total{code=\"400\"}"), 7);
    daemon_stop(&d);
    tu_s3_stop(&s);
    tu_rmtree_free(dir);
}
