/*
 * test_security.c - the security checks of issue 6 as tests:
 *
 *  - TLS verification is on by default: against a loopback TLS server with a
 *    self-signed certificate (openssl req + openssl s_server -HTTP, both
 *    from the openssl CLI) the CLI fails with a certificate error, and gets
 *    past TLS (to the server's 404) with AWS_CA_BUNDLE naming the
 *    certificate or with --no-verify-tls;
 *  - no secret (secret key, session token, the Authorization header or a
 *    signature, a bearer token) appears in the output of a failing run: the
 *    CLI against a dead port, a 403 from the TLS server and a fault proxy
 *    answering 503 to everything; the daemon with --token refusing requests;
 *  - keys with '/', "..", NUL and the like never create files outside the
 *    database directory (nor any file but the engine's own).
 *
 * Already covered elsewhere: a non-loopback --listen without a token is
 * refused (daemon suite), file modes (engine suite).
 */
#include "s3util.h"
#include "s4kv.h"
#include "util.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
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

#define FAKE_AKID "AKIDSECURITYTEST1234"
#define FAKE_SECRET "fakeSecretKey/0123456789abcdefXYZ+secret"
#define FAKE_SESSION "fakeSessionTokenQWERTY0987654321sessiontoken"
#define FAKE_BEARER "fakeBearerToken-5f3a9c1d7e"


static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    return ntohs(a.sin_port);
}


static void write_text(const char *path, const char *text)
{
    cr_assert(tu_write_file(path, text, strlen(text)) == 0, "write %s", path);
}

/* Fails the test if any secret, or anything that looks like a signed
 * request, appears in text. */
static void assert_no_secrets(const char *what, const char *text)
{
    static const char *const bad[] = {FAKE_SECRET, FAKE_SESSION, FAKE_BEARER, "Authorization",
                                      "Signature=", "X-Amz-Security-Token", "Bearer "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert(!strstr(text, bad[i]), "%s contains \"%s\":\n%s", what, bad[i], text);
    /* A fragment of the secret (say, a prefix in a truncated message) too. */
    cr_assert(!strstr(text, "fakeSecretKey") && !strstr(text, "fakeSessionToken"),
              "%s contains part of a secret:\n%s", what, text);
}

static void set_fake_credentials(void)
{
    setenv("AWS_ACCESS_KEY_ID", FAKE_AKID, 1);
    setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET, 1);
    setenv("AWS_SESSION_TOKEN", FAKE_SESSION, 1);
    setenv("AWS_REGION", "us-east-1", 1);
    setenv("S4KV_SYNC_TOKEN", FAKE_BEARER, 1);
    setenv("S4KV_S3_RETRY_BASE_MS", "1", 1);
    setenv("S4KV_S3_RETRY_CAP_MS", "5", 1);
    unsetenv("AWS_PROFILE");
    unsetenv("AWS_CA_BUNDLE");
    unsetenv("S4KV_S3_INSECURE_TLS");
    unsetenv("AWS_ENDPOINT_URL");
    unsetenv("AWS_ENDPOINT_URL_S3");
    /* no ~/.aws of the machine */
    setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials", 1);
    setenv("AWS_CONFIG_FILE", "/nonexistent/config", 1);
}

/* Runs the CLI; returns its exit status, *all = stdout + stderr. */
static int run_cli(char *const argv[], char **all)
{
    char *out = NULL, *err = NULL;
    size_t ol = 0;
    int rc = tu_run(argv, NULL, 0, &out, &ol, &err);
    size_t n = strlen(out) + strlen(err) + 2;
    *all = malloc(n);
    snprintf(*all, n, "%s\n%s", out, err);
    free(out);
    free(err);
    return rc;
}

/* ---- a loopback TLS server: openssl s_server -HTTP serves files under www/
 * whose contents are whole HTTP responses. */

typedef struct tls_srv {
    pid_t pid;
    int port;
    char *dir;
    char cert[PATH_MAX];
    char endpoint[64];
} tls_srv;

static void put_response(const char *www, const char *path, int status, const char *reason,
                         const char *code)
{
    char body[512], resp[1024], file[PATH_MAX], d[PATH_MAX];
    int bl = snprintf(body, sizeof body,
                      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code>"
                      "<Message>%s</Message><RequestId>t</RequestId></Error>", code, reason);
    snprintf(resp, sizeof resp, "HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\n"
             "Content-Length: %d\r\nConnection: close\r\n\r\n%s", status, reason, bl, body);
    snprintf(file, sizeof file, "%s/%s", www, path);
    snprintf(d, sizeof d, "%s", file);
    for (char *p = d + strlen(www) + 1; (p = strchr(p, '/')); p++) {
        *p = 0;
        mkdir(d, 0755);
        *p = '/';
    }
    write_text(file, resp);
}

static void tls_start(tls_srv *s)
{
    memset(s, 0, sizeof *s);
    s->dir = tu_tmpdir("sec-tls");
    char key[PATH_MAX], www[PATH_MAX], cmd[4 * PATH_MAX];
    snprintf(s->cert, sizeof s->cert, "%s/cert.pem", s->dir);
    snprintf(key, sizeof key, "%s/key.pem", s->dir);
    snprintf(www, sizeof www, "%s/www", s->dir);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout '%s' -out '%s' -days 2 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1", key, s->cert);
    cr_assert(system(cmd) == 0, "openssl req failed (is the openssl CLI installed?)");
    cr_assert(mkdir(www, 0755) == 0);
    /* What the CLI asks first is the MANIFEST under the prefix. */
    put_response(www, "bkt/missing/MANIFEST", 404, "Not Found", "NoSuchKey");
    put_response(www, "bkt/forbidden/MANIFEST", 403, "Forbidden", "AccessDenied");
    for (int attempt = 0; attempt < 5; attempt++) {
        s->port = free_port();
        s->pid = fork();
        cr_assert(s->pid >= 0);
        if (s->pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (chdir(www) != 0)
                _exit(126);
            int dn = open("/dev/null", O_RDWR);
            dup2(dn, 0);
            dup2(dn, 1);
            dup2(dn, 2);
            char acc[64];
            snprintf(acc, sizeof acc, "127.0.0.1:%d", s->port);
            execlp("openssl", "openssl", "s_server", "-quiet", "-accept", acc, "-cert", s->cert,
                   "-key", key, "-HTTP", (char *)NULL);
            _exit(127);
        }
        for (int i = 0; i < 100; i++) {
            int fd = tu_tcp_connect(s->port);
            if (fd >= 0) {
                close(fd);
                snprintf(s->endpoint, sizeof s->endpoint, "https://127.0.0.1:%d", s->port);
                return;
            }
            int st;
            if (waitpid(s->pid, &st, WNOHANG) == s->pid)
                break; /* port taken meanwhile: try another */
            tu_sleep_ms(20);
        }
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
    }
    cr_assert_fail("openssl s_server did not start");
}

static void tls_stop(tls_srv *s)
{
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    tu_rmtree_free(s->dir);
}

static int cli_get(const char *dbdir, const char *url, const char *endpoint, int no_verify,
                   char **all)
{
    char *argv[] = {(char *)tu_s4kv_bin(), "-d", (char *)dbdir, "--s3", (char *)url,
                    "--endpoint", (char *)endpoint, "get", "k",
                    no_verify ? "--no-verify-tls" : NULL, NULL};
    return run_cli(argv, all);
}

Test(security, tls_verification_is_on_by_default, .timeout = 60)
{
    set_fake_credentials();
    tls_srv s;
    tls_start(&s);
    char *tmp = tu_tmpdir("sec-tls-db");
    char db[PATH_MAX];
    snprintf(db, sizeof db, "%s/db", tmp);
    char *all;

    /* Default: the self-signed certificate is refused. */
    int rc = cli_get(db, "s3://bkt/missing/", s.endpoint, 0, &all);
    cr_assert_neq(rc, 0, "%s", all);
    cr_assert(strstr(all, "certificate"), "no certificate error: %s", all);
    cr_assert(!strstr(all, "NoSuchKey") && !strstr(all, "not found"), "got past TLS: %s", all);
    assert_no_secrets("output of the certificate failure", all);
    free(all);

    /* S4KV_S3_INSECURE_TLS=0 is not a way to turn it off. */
    setenv("S4KV_S3_INSECURE_TLS", "0", 1);
    rc = cli_get(db, "s3://bkt/missing/", s.endpoint, 0, &all);
    cr_assert(rc != 0 && strstr(all, "certificate"), "%s", all);
    free(all);
    unsetenv("S4KV_S3_INSECURE_TLS");

    /* With the certificate as CA bundle: past TLS, to the server's 404. */
    setenv("AWS_CA_BUNDLE", s.cert, 1);
    rc = cli_get(db, "s3://bkt/missing/", s.endpoint, 0, &all);
    cr_assert_neq(rc, 0, "%s", all);
    cr_assert(!strstr(all, "certificate"), "certificate error with AWS_CA_BUNDLE: %s", all);
    cr_assert(strstr(all, "MANIFEST"), "%s", all);
    assert_no_secrets("output of the 404 run", all);
    free(all);
    unsetenv("AWS_CA_BUNDLE");

    /* --no-verify-tls: past TLS as well. */
    rc = cli_get(db, "s3://bkt/missing/", s.endpoint, 1, &all);
    cr_assert(rc != 0 && !strstr(all, "certificate") && strstr(all, "MANIFEST"), "%s", all);
    free(all);

    /* A 403 AccessDenied (what a wrong secret gets): reported, no secret. */
    setenv("AWS_CA_BUNDLE", s.cert, 1);
    rc = cli_get(db, "s3://bkt/forbidden/", s.endpoint, 0, &all);
    cr_assert_neq(rc, 0, "%s", all);
    cr_assert(strstr(all, "AccessDenied") || strstr(all, "403"), "%s", all);
    assert_no_secrets("output of the 403 run", all);
    free(all);

    tls_stop(&s);
    tu_rmtree_free(tmp);
}

static void local_db(const char *dir)
{
    s4kv_options o;
    s4kv_options_init(&o);
    s4kv_db *db;
    char err[512];
    cr_assert(s4kv_open(dir, &o, &db, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < 20; i++) {
        char k[32];
        snprintf(k, sizeof k, "key%02d", i);
        cr_assert(s4kv_put(db, k, strlen(k), "value", 5, err, sizeof err) == 0, "%s", err);
    }
    cr_assert(s4kv_close(db) == 0);
}

Test(security, no_secret_in_the_output_of_failing_runs, .timeout = 120)
{
    tu_s3 s3;
    tu_s3_start(&s3, "bkt");
    tu_proxy px;
    tu_proxy_start(&px, s3.port, "rate=1,kinds=503,seed=1");
    set_fake_credentials();
    char *tmp = tu_tmpdir("sec-secrets");
    char db[PATH_MAX], fresh[PATH_MAX], dead[64];
    snprintf(db, sizeof db, "%s/db", tmp);
    snprintf(fresh, sizeof fresh, "%s/fresh", tmp);
    local_db(db);
    snprintf(dead, sizeof dead, "http://127.0.0.1:%d", free_port());

    const char *endpoints[] = {dead, px.endpoint};
    int runs = 0;
    for (size_t e = 0; e < 2; e++) {
        const char *ep = endpoints[e];
        char *up[] = {(char *)tu_s4kv_bin(), "-d", db, "--s3", "s3://bkt/sec/", "--endpoint",
                      (char *)ep, "upload", NULL};
        char *down[] = {(char *)tu_s4kv_bin(), "-d", fresh, "--s3", "s3://bkt/sec/",
                        "--endpoint", (char *)ep, "download", NULL};
        char *get[] = {(char *)tu_s4kv_bin(), "-d", fresh, "--s3", "s3://bkt/sec/",
                       "--endpoint", (char *)ep, "get", "key01", NULL};
        char *const *cmds[] = {up, down, get};
        for (size_t c = 0; c < 3; c++) {
            char *all;
            int rc = run_cli(cmds[c], &all);
            cr_assert_neq(rc, 0, "%s %s succeeded against %s: %s", cmds[c][7], ep, ep, all);
            cr_assert(strlen(all) > 2, "no error message");
            assert_no_secrets(cmds[c][7], all);
            free(all);
            runs++;
        }
    }
    cr_assert(tu_proxy_stat(&px, "faults") > 0, "the proxy faulted nothing");
    cr_log_info("security: %d failing CLI runs (dead port, 503 proxy), no secret in output", runs);
    tu_proxy_stop(&px);
    tu_s3_stop(&s3);
    tu_rmtree_free(tmp);
}

Test(security, daemon_token_never_logged, .timeout = 120)
{
    tu_s3 s3;
    tu_s3_start(&s3, "bkt");
    char *dir = tu_tmpdir("sec-daemon");
    char *logdir = tu_tmpdir("sec-daemon-log");
    char logfile[PATH_MAX], outfile[PATH_MAX], addrf[PATH_MAX];
    snprintf(logfile, sizeof logfile, "%s/sync.log", logdir);
    snprintf(outfile, sizeof outfile, "%s/out.txt", logdir);
    snprintf(addrf, sizeof addrf, "%s/SYNC_ADDR", dir);
    setenv("S4KV_S3_RETRY_BASE_MS", "1", 1);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(outfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(tu_s4kv_bin(), tu_s4kv_bin(), "-d", dir, "--s3", "s3://bkt/tok/", "sync",
              "--listen", "127.0.0.1:0", "--token", FAKE_BEARER, "--log", logfile,
              "--interval", "200ms", (char *)NULL);
        _exit(127);
    }
    int port = 0;
    for (int i = 0; i < 750 && !port; i++) {
        size_t n;
        uint8_t *a = tu_read_file(addrf, &n);
        if (a) {
            const char *colon = strrchr((char *)a, ':');
            port = colon ? atoi(colon + 1) : 0;
            free(a);
        } else {
            cr_assert(waitpid(pid, NULL, WNOHANG) == 0, "s4kv sync exited at start");
            tu_sleep_ms(20);
        }
    }
    cr_assert(port > 0, "no SYNC_ADDR");

    /* Refused: no token, a wrong token (that contains the right one), the
     * token in the wrong scheme; then one accepted request. */
    const char *auths[] = {"", "Authorization: Bearer wrong-" FAKE_BEARER "\r\n",
                           "Authorization: Basic " FAKE_BEARER "\r\n",
                           "Authorization: Bearer " FAKE_BEARER "x\r\n",
                           "Authorization: Bearer " FAKE_BEARER "\r\n"};
    const int want[] = {401, 401, 401, 401, 404};
    for (size_t i = 0; i < 5; i++) {
        int fd = tu_tcp_connect(port);
        cr_assert(fd >= 0);
        char req[1024], resp[4096];
        int n = snprintf(req, sizeof req, "GET /v1/kv/nokey HTTP/1.1\r\nHost: t\r\n%s"
                         "Connection: close\r\n\r\n", auths[i]);
        cr_assert(send(fd, req, (size_t)n, MSG_NOSIGNAL) == n);
        size_t got = 0;
        ssize_t g;
        while (got < sizeof resp - 1 && (g = recv(fd, resp + got, sizeof resp - 1 - got, 0)) > 0)
            got += (size_t)g;
        resp[got] = 0;
        close(fd);
        int st = 0;
        sscanf(resp, "HTTP/1.1 %d", &st);
        cr_assert_eq(st, want[i], "request %zu: %s", i, resp);
        cr_assert(!strstr(resp, FAKE_BEARER), "the response echoes the token: %s", resp);
    }
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    size_t n1 = 0, n2 = 0;
    char *log = (char *)tu_read_file(logfile, &n1);
    char *out = (char *)tu_read_file(outfile, &n2);
    cr_assert(log && n1 > 0, "empty daemon log");
    cr_assert(!memmem(log, n1, FAKE_BEARER, strlen(FAKE_BEARER)), "the log has the token:\n%s",
              log);
    cr_assert(!out || !memmem(out, n2, FAKE_BEARER, strlen(FAKE_BEARER)),
              "the output has the token:\n%s", out);
    free(log);
    free(out);
    tu_rmtree_free(logdir);
    tu_rmtree_free(dir);
    tu_s3_stop(&s3);
}

/* ---- keys never become paths */

static int count_tree(const char *dir, char *listing, size_t cap, size_t *used)
{
    DIR *d = opendir(dir);
    cr_assert(d, "opendir %s", dir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        cr_assert(lstat(p, &sb) == 0);
        *used += (size_t)snprintf(listing + *used, cap - *used, "%s\n", p);
        n++;
        if (S_ISDIR(sb.st_mode))
            n += count_tree(p, listing, cap, used);
    }
    closedir(d);
    return n;
}

static int engine_name(const char *name)
{
    unsigned no;
    char tail[16];
    if (!strcmp(name, "LOCK") || !strcmp(name, "MANIFEST"))
        return 1;
    if (sscanf(name, "data_%u.%15s", &no, tail) == 2 && !strcmp(tail, "s4kv"))
        return 1;
    if (sscanf(name, "index_%u.%15s", &no, tail) == 2 && !strcmp(tail, "s4ki"))
        return 1;
    return 0;
}

Test(security, keys_never_create_files_outside_the_directory)
{
    char *root = tu_tmpdir("sec-keys");
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/db", root);
    static const char *const keys[] = {
        "../escape", "../../escape2", "/etc/passwd", "/tmp/s4kv-sec-abs", "a/b/c", "..", ".",
        "./MANIFEST", "MANIFEST", "LOCK", "data_000001.s4kv", "index_000009.s4ki",
        "../db/MANIFEST", "x/../../../y", "sub/", "~/home", "MANIFEST.tmp", "\\..\\win",
    };
    size_t nk = sizeof keys / sizeof keys[0];
    const char nulkey[] = "../nul\0/../after";
    s4kv_options o;
    s4kv_options_init(&o);
    s4kv_db *db;
    char err[512];
    for (int round = 0; round < 2; round++) { /* twice: the second reopens */
        cr_assert(s4kv_open(dir, &o, &db, err, sizeof err) == 0, "%s", err);
        for (size_t i = 0; i < nk; i++)
            cr_assert(s4kv_put(db, keys[i], strlen(keys[i]), keys[i], strlen(keys[i]), err,
                               sizeof err) == 0, "%s", err);
        cr_assert(s4kv_put(db, nulkey, sizeof nulkey - 1, "n", 1, err, sizeof err) == 0);
        cr_assert(s4kv_checkpoint(db, err, sizeof err) == 0, "%s", err);
        cr_assert(s4kv_compact(db, err, sizeof err) == 0, "%s", err);
        for (size_t i = 0; i < nk; i++) {
            void *v;
            size_t vl;
            cr_assert(s4kv_get(db, keys[i], strlen(keys[i]), &v, &vl, err, sizeof err) == 0);
            cr_assert(vl == strlen(keys[i]) && !memcmp(v, keys[i], vl));
            s4kv_free(v);
        }
        cr_assert(s4kv_close(db) == 0);
    }
    /* The CLI too (keys after --). */
    for (size_t i = 0; i < 4; i++) {
        char *argv[] = {(char *)tu_s4kv_bin(), "-d", dir, "put", "--", (char *)keys[i], "v", NULL};
        char *out, *er;
        size_t ol;
        cr_assert(tu_run(argv, NULL, 0, &out, &ol, &er) == 0, "%s", er);
        free(out);
        free(er);
    }
    char listing[8192];
    size_t used = 0;
    int n = count_tree(root, listing, sizeof listing, &used);
    /* root holds only db/, and db/ only the engine's flat files. */
    DIR *d = opendir(dir);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        cr_assert(engine_name(e->d_name), "unexpected file %s in the database:\n%s", e->d_name,
                  listing);
        files++;
    }
    closedir(d);
    cr_assert_eq(n, files + 1, "files outside the database directory:\n%s", listing);
    struct stat sb;
    cr_assert(stat("/tmp/s4kv-sec-abs", &sb) != 0, "a key created /tmp/s4kv-sec-abs");
    cr_log_info("security: %zu path-like keys stored, the tree holds %d engine files only",
                nk + 1, files);
    tu_rmtree_free(root);
}
