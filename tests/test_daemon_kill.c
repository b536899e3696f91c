/*
 * test_daemon_kill.c - SIGKILL the `s4kv sync` daemon (the real binary,
 * $S4KV_BIN) at random moments while a client writes batches over HTTP and
 * the daemon uploads (every 200 ms) and compacts (ratio 0.2), many times;
 * S3 is s3rver behind the fault proxy without faults (the proxy forwards a
 * request only once it has it whole, as S3 stores a PUT: s3rver alone would
 * keep half an object of a killed client).
 *
 * The client sends POST /v1/batch (1-24 puts and deletes over 300 keys,
 * values of 1-8 KiB that do not compress, each naming its key and batch)
 * on one keep-alive connection and keeps an oracle: every batch answered 204
 * is acknowledged; at most one more (sent, no answer) is in flight. Each
 * kill is timed one of three ways, at random: at a uniform random time;
 * while the proxy has an S3 request in flight (an upload); or 50-400 ms after
 * /metrics shows the garbage ratio past 0.2 with 1 MiB of garbage (a
 * compaction starts at the next 200 ms tick). After each kill:
 *  - S3 holds a complete database: a fresh `s4kv --s3 URL verify` (no local
 *    files) passes, and a fresh remote reader finds the state after some
 *    batch no later than the last one sent (a consistent snapshot, never a
 *    mix, never a torn value);
 *  - the daemon restarts on the same directory and holds the acknowledged
 *    state, or that plus the batch in flight (durability mode batch): no
 *    acknowledged write is lost.
 * At the end a clean stop (SIGTERM: final upload, exit 0) leaves S3 with
 * exactly the local state.
 *
 * S4KV_DAEMON_KILLS sets the number of kills (default 10 in `make test`).
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "s4kv.h"
#include "s3util.h"
#include "util.h"

#define NK 300          /* key space */
#define MAXB 200000     /* batches a run may send */
#define URL "s3://bkt/kill/"
#define MAXV 8192       /* longest value */
#define MAXOPS 24       /* most operations in a batch */

/* ---- the batch stream and its history */

typedef struct op {
    int b;              /* batch number */
    int del;
} op;

/* Per key: every batch that touched it, in order (the last op of a batch). */
typedef struct hist {
    op *v;
    int n, cap;
} hist;

static hist H[NK];

static void hist_add(int k, int b, int del)
{
    hist *h = &H[k];
    if (h->n && h->v[h->n - 1].b == b) { /* the same key twice in a batch: the last wins */
        h->v[h->n - 1].del = del;
        return;
    }
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        h->v = realloc(h->v, (size_t)h->cap * sizeof *h->v);
        cr_assert(h->v);
    }
    h->v[h->n++] = (op){b, del};
}

/* The version of key k after batch b: the batch of its last put, or -1
 * (absent: never written, or deleted last). */
static int version_at(int k, int b)
{
    const hist *h = &H[k];
    int lo = 0, hi = h->n; /* first entry with .b > b */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (h->v[mid].b <= b)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    return h->v[lo - 1].del ? -1 : h->v[lo - 1].b;
}

static void keyname(char *out, int k)
{
    snprintf(out, 16, "key%04d", k);
}

/* The value written to key k by batch b: a header naming both, then bytes
 * that do not compress, 1 KiB .. 8 KiB in all. */
static size_t value_of(int k, int b, uint8_t *out)
{
    uint64_t s = (uint64_t)b * 0x9e3779b97f4a7c15ull ^ (uint64_t)k * 0xbf58476d1ce4e5b9ull;
    size_t n = 1024 + tu_rand(&s) % (MAXV - 1024);
    int h = snprintf((char *)out, 32, "k%d b%d|", k, b);
    for (size_t i = (size_t)h; i < n; i++)
        out[i] = (uint8_t)tu_rand(&s);
    return n;
}

/* Parses the header of a stored value; -1 when it is malformed. */
static int value_batch(int k, const uint8_t *v, size_t n)
{
    int kk, b;
    char h[32];
    size_t hl = n < sizeof h - 1 ? n : sizeof h - 1;
    memcpy(h, v, hl);
    h[hl] = 0;
    if (n < 8 || sscanf(h, "k%d b%d|", &kk, &b) != 2 || kk != k || b < 0)
        return -1;
    uint8_t want[MAXV];
    if (value_of(k, b, want) != n || memcmp(want, v, n) != 0)
        return -1;
    return b;
}

/* Batch b's body in the POST /v1/batch framing; appends its ops to H. */
static size_t batch_body(int b, uint8_t *out)
{
    uint64_t s = (uint64_t)b * 0xd1b54a32d192ed03ull + 7;
    int n = 1 + (int)(tu_rand(&s) % MAXOPS);
    size_t off = 0;
    for (int j = 0; j < n; j++) {
        int k = (int)(tu_rand(&s) % NK);
        int del = tu_rand(&s) % 8 == 0;
        char key[16];
        keyname(key, k);
        uint32_t kl = (uint32_t)strlen(key), vl = 0;
        uint8_t *rec = out + off;
        rec[0] = del ? 2 : 1;
        memcpy(rec + 9, key, kl);
        if (!del)
            vl = (uint32_t)value_of(k, b, rec + 9 + kl);
        for (int i = 0; i < 4; i++) {
            rec[1 + i] = (uint8_t)(kl >> (8 * i));
            rec[5 + i] = (uint8_t)(vl >> (8 * i));
        }
        off += 9 + kl + vl;
        hist_add(k, b, del);
    }
    return off;
}

/* ---- the daemon */

typedef struct daemon_proc {
    pid_t pid;
    int port;
} daemon_proc;

static char logfile[PATH_MAX];

static void daemon_start(daemon_proc *d, const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/SYNC_ADDR", dir);
    unlink(path); /* a killed daemon leaves its address behind */
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 2);
        dup2(fd, 1);
        execl(tu_s4kv_bin(), tu_s4kv_bin(), "-d", dir, "--s3", URL, "sync", "--listen",
              "127.0.0.1:0", "--interval", "200ms", "--compact-ratio", "0.2", (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    long long t0 = tu_now_ms();
    for (;;) {
        size_t n;
        uint8_t *a = tu_read_file(path, &n);
        if (a && n && a[n - 1] == '\n') {
            const char *colon = strrchr((char *)a, ':');
            cr_assert(colon, "SYNC_ADDR: %s", a);
            d->port = atoi(colon + 1);
            free(a);
            return;
        }
        free(a);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            uint8_t *l = tu_read_file(logfile, &n);
            cr_assert_fail("s4kv sync exited at start (status %d): %s", st, l ? (char *)l : "");
        }
        cr_assert(tu_now_ms() - t0 < 15000, "s4kv sync wrote no SYNC_ADDR in 15 s");
        tu_sleep_ms(10);
    }
}

/* ---- a keep-alive client that survives the daemon's death */

/* Reads one response; its status, or -1 when the connection broke. The body
 * (when want_body) is malloc'd into *body. */
static int read_resp(int fd, uint8_t **body, size_t *blen)
{
    char head[4096];
    size_t n = 0;
    while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
        if (n >= sizeof head - 1 || recv(fd, head + n, 1, 0) != 1)
            return -1;
        n++;
    }
    head[n] = 0;
    int st = 0;
    const char *cl = strcasestr(head, "\r\nContent-Length:");
    if (sscanf(head, "HTTP/1.1 %d", &st) != 1 || !cl)
        return -1;
    size_t len = strtoul(cl + 17, NULL, 10), got = 0;
    uint8_t *b = malloc(len + 1);
    while (got < len) {
        ssize_t g = recv(fd, b + got, len - got, 0);
        if (g <= 0) {
            free(b);
            return -1;
        }
        got += (size_t)g;
    }
    if (body) {
        *body = b;
        *blen = len;
    } else {
        free(b);
    }
    return st;
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- the killer thread */

enum { AT_RANDOM, AT_UPLOAD, AT_COMPACTION, NMODES };
static const char *const mode_names[NMODES] = {"at a random time", "with an S3 request in flight",
                                               "as a compaction became due"};

typedef struct killer {
    pid_t pid;
    int port;
    int delay_ms;          /* at least this long after the start */
    int mode;              /* then AT_UPLOAD: until the proxy has an S3 request in
                              flight; AT_COMPACTION: until /metrics shows the garbage
                              ratio at 0.2, then 0..150 ms more */
    int jitter_ms;
    const tu_proxy *proxy;
    int during_upload;     /* out: the proxy had a request in flight at the kill */
    int compaction_due;    /* out: AT_COMPACTION saw a compaction become due */
} killer;

/* 1 when the daemon's /metrics shows what starts a compaction at the next
 * tick (garbage ratio >= 0.2 and at least 1 MiB of garbage), 0 when not
 * yet, -1 without an answer. */
static int compaction_due(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    char buf[16384];
    size_t n = 0;
    ssize_t r;
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return -1;
    }
    while (n < sizeof buf - 1 && (r = recv(fd, buf + n, sizeof buf - 1 - n, 0)) > 0)
        n += (size_t)r;
    close(fd);
    buf[n] = 0;
    const char *p = strstr(buf, "\ns4kv_garbage_ratio ");
    const char *q = strstr(buf, "\ns4kv_garbage_bytes ");
    if (!p || !q)
        return -1;
    return atof(p + 20) >= 0.2 && atof(q + 20) >= 1048576.0;
}

static void *killer_main(void *arg)
{
    killer *k = arg;
    tu_sleep_ms(k->delay_ms);
    long long t0 = tu_now_ms();
    if (k->mode == AT_UPLOAD)
        while (tu_now_ms() - t0 < 3000 && tu_proxy_stat(k->proxy, "inflight") == 0)
            tu_sleep_ms(1);
    if (k->mode == AT_COMPACTION) {
        int due;
        while (tu_now_ms() - t0 < 5000 && (due = compaction_due(k->port)) == 0)
            tu_sleep_ms(5);
        k->compaction_due = due == 1;
        tu_sleep_ms(k->jitter_ms);
    }
    k->during_upload = tu_proxy_stat(k->proxy, "inflight") > 0;
    kill(k->pid, SIGKILL);
    return NULL;
}

/* Segment files in dir that its MANIFEST does not name: the output of an
 * interrupted compaction or rotation (the next open removes them). */
static int orphan_segments(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    size_t n;
    char *m = (char *)tu_read_file(path, &n);
    cr_assert(m, "no MANIFEST in %s after the kill", dir);
    int orphans = 0;
    for (unsigned no = 0; no < 100000; no++) {
        snprintf(path, sizeof path, "%s/data_%06u.s4kv", dir, no);
        if (access(path, F_OK) != 0)
            continue;
        char line[32];
        snprintf(line, sizeof line, "\nsegment %u ", no);
        orphans += strstr(m, line) == NULL;
    }
    free(m);
    return orphans;
}

/* ---- checks */

/* The local state through the daemon: versions[k] for every key. */
static void read_local(int port, int *ver)
{
    int fd = tu_tcp_connect(port);
    cr_assert(fd >= 0);
    for (int k = 0; k < NK; k++) {
        char key[16], req[128];
        keyname(key, k);
        int n = snprintf(req, sizeof req, "GET /v1/kv/%s HTTP/1.1\r\nHost: t\r\n\r\n", key);
        cr_assert_eq(send_all(fd, req, (size_t)n), 0);
        uint8_t *v = NULL;
        size_t vl = 0;
        int st = read_resp(fd, &v, &vl);
        cr_assert(st == 200 || st == 404, "GET %s: status %d", key, st);
        ver[k] = st == 404 ? -1 : value_batch(k, v, vl);
        cr_assert(st == 404 || ver[k] >= 0, "GET %s: a value of no batch (%zu bytes)", key, vl);
        free(v);
    }
    close(fd);
}

static int state_is(const int *ver, int b)
{
    for (int k = 0; k < NK; k++)
        if (ver[k] != version_at(k, b))
            return 0;
    return 1;
}

static void quiet(void *ctx, const char *line)
{
    (void)ctx;
    (void)line;
}

/* What a fresh remote reader of S3 finds: versions[k] (through s3rver
 * directly; the proxy has nothing in flight when this runs). */
static void read_remote(const char *endpoint, int *ver)
{
    s4kv_db *db = tu_remote_reader(URL, endpoint, quiet);
    char err[512] = "";
    for (int k = 0; k < NK; k++) {
        char key[16];
        keyname(key, k);
        void *v = NULL;
        size_t vl = 0;
        int rc = s4kv_get(db, key, strlen(key), &v, &vl, err, sizeof err);
        cr_assert(rc == 0 || rc == S4KV_ENOTFOUND, "remote get %s: %s", key, err);
        ver[k] = rc ? -1 : value_batch(k, v, vl);
        cr_assert(rc || ver[k] >= 0, "remote %s: a value of no batch", key);
        s4kv_free(v);
    }
    s4kv_close(db);
}

/* The batch after which the state is ver (the smallest), or -2 when no
 * batch in [-1, last] gives it. */
static int snapshot_of(const int *ver, int last)
{
    int lo = -1;
    for (int k = 0; k < NK; k++)
        if (ver[k] > lo)
            lo = ver[k];
    for (int b = lo; b <= last; b++)
        if (state_is(ver, b))
            return b;
    return -2;
}

static void wait_proxy_idle(const tu_proxy *p)
{
    long long t0 = tu_now_ms();
    while (tu_proxy_stat(p, "inflight") != 0) {
        cr_assert(tu_now_ms() - t0 < 10000, "the proxy still has requests in flight after 10 s");
        tu_sleep_ms(5);
    }
}

static int count_in_log(const char *what)
{
    size_t n;
    char *l = (char *)tu_read_file(logfile, &n);
    int c = 0;
    for (const char *p = l; p && (p = strstr(p, what)); p++)
        c++;
    free(l);
    return c;
}

Test(daemon_kill, sigkill_during_upload_and_compaction, .timeout = 1800)
{
    const char *e = getenv("S4KV_DAEMON_KILLS");
    int kills = e && atoi(e) > 0 ? atoi(e) : 10;
    tu_s3 s3;
    tu_s3_start(&s3, "bkt");
    tu_proxy px;
    tu_proxy_start(&px, s3.port, "rate=0");
    setenv("AWS_ENDPOINT_URL_S3", px.endpoint, 1); /* the daemon goes through the proxy */
    char *dir = tu_tmpdir("daemon-kill");
    char *logdir = tu_tmpdir("daemon-kill-log");
    snprintf(logfile, sizeof logfile, "%s/sync.log", logdir);
    uint8_t *body = malloc(MAXOPS * (9 + 16 + MAXV));
    cr_assert(body);

    int acked = -1;        /* last batch answered 204 */
    int sent = -1;         /* last batch sent */
    int ver[NK];
    uint64_t seed = 20261122;
    int during_upload = 0, inflight_durable = 0, inflight_lost = 0, violations = 0;
    int by_mode[NMODES] = {0}, kills_with_orphans = 0, kills_compaction_due = 0;
    long long t_start = tu_now_ms();
    daemon_proc d = {0};
    for (int t = 0; t <= kills; t++) {
        daemon_start(&d, dir);
        /* Local durability: the acknowledged state, or that plus the batch
         * in flight at the kill. */
        read_local(d.port, ver);
        if (state_is(ver, acked)) {
            if (sent > acked)
                inflight_lost++;
        } else if (sent > acked && state_is(ver, sent)) {
            acked = sent;
            inflight_durable++;
        } else {
            violations++;
            cr_assert_fail("kill %d: after restart the database is neither the state after "
                           "acknowledged batch %d nor after batch %d in flight", t, acked, sent);
        }
        /* The stream continues after the last batch the database holds: a
         * lost in-flight batch is forgotten (its number is reused by the next
         * batch, with the same content). */
        if (sent > acked) {
            for (int k = 0; k < NK; k++)
                while (H[k].n && H[k].v[H[k].n - 1].b > acked)
                    H[k].n--;
            sent = acked;
        }
        if (t == kills)
            break;

        killer kl = {.pid = d.pid, .port = d.port, .delay_ms = 150 + (int)(tu_rand(&seed) % 1800),
                     .mode = (int)(tu_rand(&seed) % NMODES),
                     .jitter_ms = 50 + (int)(tu_rand(&seed) % 350), .proxy = &px};
        if (kl.mode != AT_RANDOM)
            kl.delay_ms = 100;
        pthread_t th;
        cr_assert_eq(pthread_create(&th, NULL, killer_main, &kl), 0);
        int fd = tu_tcp_connect(d.port);
        cr_assert(fd >= 0);
        for (;;) {
            int b = sent + 1;
            cr_assert(b < MAXB);
            size_t blen = batch_body(b, body);
            char head[128];
            int hl = snprintf(head, sizeof head, "POST /v1/batch HTTP/1.1\r\nHost: t\r\n"
                              "Content-Length: %zu\r\n\r\n", blen);
            sent = b;
            if (send_all(fd, head, (size_t)hl) || send_all(fd, body, blen))
                break;
            int st = read_resp(fd, NULL, NULL);
            if (st < 0)
                break;
            cr_assert_eq(st, 204, "batch %d: status %d", b, st);
            acked = b;
        }
        close(fd);
        pthread_join(th, NULL);
        int wst;
        cr_assert_eq(waitpid(d.pid, &wst, 0), d.pid);
        cr_assert(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "kill %d: the daemon exited "
                  "on its own (status 0x%x)", t, wst);
        during_upload += kl.during_upload;
        by_mode[kl.mode]++;
        kills_compaction_due += kl.compaction_due;
        int orph = orphan_segments(dir);
        kills_with_orphans += orph > 0;

        /* S3: complete (a fresh verify passes) and a consistent snapshot. */
        wait_proxy_idle(&px);
        char *argv[] = {(char *)tu_s4kv_bin(), "--s3", URL, "--endpoint", s3.endpoint,
                        "verify", NULL};
        char *out = NULL, *err = NULL;
        size_t olen;
        int rc = tu_run(argv, NULL, 0, &out, &olen, &err);
        /* Before the first upload there is no database in S3 yet. */
        int empty = rc == 3 && strstr(err, "no database at") && count_in_log("upload done") == 0;
        if (rc != 0 && !empty)
            violations++;
        cr_assert(rc == 0 || empty, "kill %d: s4kv --s3 verify failed (%d): %s%s", t, rc, out,
                  err);
        free(out);
        free(err);
        if (empty)
            for (int k = 0; k < NK; k++)
                ver[k] = -1;
        else
            read_remote(s3.endpoint, ver);
        int snap = snapshot_of(ver, sent);
        if (snap < -1)
            violations++;
        cr_assert(snap >= -1, "kill %d: S3 holds no state of the stream (a mix of batches?)", t);
    }
    /* The daemon restarted after the last kill stops cleanly: the final
     * upload, exit 0, and S3 holds exactly the local state. */
    cr_assert_eq(kill(d.pid, SIGTERM), 0);
    int wst;
    cr_assert_eq(waitpid(d.pid, &wst, 0), d.pid);
    size_t ln;
    uint8_t *lg = tu_read_file(logfile, &ln);
    cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "clean stop: status 0x%x; log tail:\n%s",
              wst, lg && ln > 3000 ? (char *)lg + ln - 3000 : lg ? (char *)lg : "");
    free(lg);
    wait_proxy_idle(&px);
    read_remote(s3.endpoint, ver);
    cr_assert(state_is(ver, acked), "after the clean stop S3 lacks acknowledged writes");
    int compactions = count_in_log("compaction done"), uploads = count_in_log("upload done");
    cr_log_info("daemon kill loop: %d SIGKILLs in %.1f s (timed %s %d, %s %d, %s %d; %d found "
                "an S3 request in flight, %d left segment files the manifest does not name), "
                "%d batches acknowledged, in-flight batch durable %d / lost %d times, %d "
                "uploads and %d compactions logged, %d kills when a compaction was due, %d "
                "violations", kills, (tu_now_ms() - t_start) / 1000.0, mode_names[0],
                by_mode[0], mode_names[1], by_mode[1], mode_names[2], by_mode[2], during_upload,
                kills_with_orphans, acked + 1, inflight_durable, inflight_lost, uploads,
                compactions, kills_compaction_due, violations);
    cr_assert(compactions + kills_compaction_due >= 1,
              "no compaction ran or was due at a kill: the loop did not exercise compaction");
    free(body);
    for (int k = 0; k < NK; k++)
        free(H[k].v);
    tu_proxy_stop(&px);
    tu_s3_stop(&s3);
    tu_rmtree_free(dir);
    tu_rmtree_free(logdir);
}
