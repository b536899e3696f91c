/*
 * s3.c - the S3 workloads of s4kv-bench (s4kv only; they run with
 * --s3-url): remote gets next to raw ranged GETs with libcurl, upload and
 * download next to raw PUT and GET of the same files, and the s4db shapes
 * (s4db's own benchmark on s4kv: 100,000 keys of 256-byte values put in
 * batches of 1000 and of 100 then uploaded, 20,000 local gets after a
 * download, 2,000 remote gets next to raw ranged GETs of the same bytes).
 *
 * Invariants: every workload writes under its own fresh prefix below
 * --s3-url ("<name>-<unix time>-<pid>/"), so reruns never meet an older
 * database; every value a get returns is checked, and every byte a raw GET
 * returns is compared with the segment file it came from.
 */
#include "bench.h"

#include "s4kv.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static s4kv_db *db_open(const char *dir, s4kv_sync_mode mode)
{
    s4kv_options opt;
    s4kv_options_init(&opt);
    opt.sync_mode = mode;
    s4kv_db *db = NULL;
    errbuf[0] = '\0';
    int rc = s4kv_open(dir, &opt, &db, errbuf, sizeof errbuf);
    if (rc)
        die("open %s: %s: %s", dir, s4kv_strerror(rc), errbuf);
    return db;
}

static void db_close(s4kv_db *db)
{
    int rc = s4kv_close(db);
    if (rc)
        die("close: %s", s4kv_strerror(rc));
}

static void check_get(int rc, uint64_t i, unsigned ver, const char *buf, size_t vlen,
                      size_t vbytes, const char *what)
{
    if (rc) {
        char key[KEY_BYTES];
        make_key(i, key);
        die("%s: get %.16s: %s: %s", what, key, s4kv_strerror(rc), errbuf);
    }
    check_value_len(i, ver, buf, vlen, vbytes, what);
}

typedef struct s3loc {
    char url[1100];    /* s3://bucket/prefix/ of this run's database */
    char bucket[256];
    char prefix[768];  /* ends with '/' (or is empty) */
} s3loc;

/* The endpoint raw curl requests go to: the one the library uses when a
 * custom endpoint is configured; NULL for AWS itself (raw requests would
 * need signing there, so the curl workloads are skipped). */
static const char *s3_endpoint(void)
{
    const char *e = getenv("AWS_ENDPOINT_URL_S3");
    if (!e || !*e)
        e = getenv("AWS_ENDPOINT_URL");
    return e && *e ? e : NULL;
}

/* Fresh location name-<time>-<pid>/ under cfg.s3_url. */
static s3loc s3_location(const char *name)
{
    s3loc l;
    memset(&l, 0, sizeof l);
    const char *u = cfg.s3_url;
    if (strncmp(u, "s3://", 5) != 0)
        die("--s3-url: expected s3://BUCKET/PREFIX/, got '%s'", u);
    const char *b = u + 5, *slash = strchr(b, '/');
    size_t blen = slash ? (size_t)(slash - b) : strlen(b);
    if (blen == 0 || blen >= sizeof l.bucket)
        die("--s3-url: no bucket in '%s'", u);
    memcpy(l.bucket, b, blen);
    const char *p = slash ? slash + 1 : "";
    size_t plen = strlen(p);
    snprintf(l.prefix, sizeof l.prefix, "%s%s%s-%ld-%ld/", p, plen && p[plen - 1] != '/' ? "/" : "",
             name, (long)time(NULL), (long)getpid());
    snprintf(l.url, sizeof l.url, "s3://%s/%s", l.bucket, l.prefix);
    return l;
}

/* endpoint/bucket/prefix+name, path-style, every byte outside
 * [A-Za-z0-9-._~/] percent-encoded. */
static void object_url(char *out, size_t cap, const char *endpoint, const s3loc *l, const char *name)
{
    size_t elen = strlen(endpoint);
    while (elen && endpoint[elen - 1] == '/')
        elen--;
    int n = snprintf(out, cap, "%.*s/", (int)elen, endpoint);
    size_t o = n > 0 ? (size_t)n : 0;
    char key[2048];
    snprintf(key, sizeof key, "%s/%s%s", l->bucket, l->prefix, name);
    for (const unsigned char *s = (const unsigned char *)key; *s && o + 4 < cap; s++) {
        if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
            strchr("-._~/", *s))
            out[o++] = (char)*s;
        else
            o += (size_t)snprintf(out + o, cap - o, "%%%02X", *s);
    }
    out[o] = '\0';
}

typedef struct membuf {
    char *p;
    size_t n, cap;
} membuf;

static size_t membuf_write(char *data, size_t size, size_t nmemb, void *ctx)
{
    membuf *m = ctx;
    size_t n = size * nmemb;
    if (m->n + n > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->n + n)
            cap *= 2;
        char *q = realloc(m->p, cap);
        if (!q)
            return 0;
        m->p = q;
        m->cap = cap;
    }
    memcpy(m->p + m->n, data, n);
    m->n += n;
    return n;
}

/* How the raw curl requests authenticate. With credentials in the
 * environment (bench/with-s3rver.sh exports them) libcurl signs them itself
 * (CURLOPT_AWS_SIGV4, libcurl >= 7.75), so the server does the same work
 * for the reference as for s4kv's requests (s3rver checks signatures in
 * JavaScript: an unsigned request is cheaper for it, not for the client);
 * without credentials they go unsigned. */
static int curl_signs(void)
{
    const char *id = getenv("AWS_ACCESS_KEY_ID"), *sk = getenv("AWS_SECRET_ACCESS_KEY");
    return id && *id && sk && *sk;
}

static const char *signing_note(void)
{
    return curl_signs() ? "signed by libcurl itself (CURLOPT_AWS_SIGV4)"
                        : "UNSIGNED (no credentials in the environment; s3rver accepts that)";
}

/* New connections the raw requests opened (CURLINFO_NUM_CONNECTS is per
 * transfer, so curl_perform sums it); reset by curl_handle. */
static long curl_conns;

static CURL *curl_handle(void)
{
    CURL *h = curl_easy_init();
    if (!h)
        die("curl_easy_init failed");
    curl_conns = 0;
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    if (curl_signs()) {
        static char provider[128], userpwd[512];
        const char *region = getenv("AWS_REGION");
        snprintf(provider, sizeof provider, "aws:amz:%s:s3", region && *region ? region : "us-east-1");
        snprintf(userpwd, sizeof userpwd, "%s:%s", getenv("AWS_ACCESS_KEY_ID"),
                 getenv("AWS_SECRET_ACCESS_KEY"));
        curl_easy_setopt(h, CURLOPT_AWS_SIGV4, provider);
        curl_easy_setopt(h, CURLOPT_USERPWD, userpwd);
        /* S3 wants the payload hash header; libcurl 7.88 does not add it */
        static struct curl_slist *hdrs;
        if (!hdrs)
            hdrs = curl_slist_append(NULL, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    }
    return h;
}

/* One raw request on h; dies unless the status is `want`. */
static void curl_perform(CURL *h, const char *what, const char *url, long want)
{
    CURLcode cc = curl_easy_perform(h);
    long c = 0;
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &c);
    curl_conns += c;
    if (cc != CURLE_OK)
        die("%s %s: %s", what, url, curl_easy_strerror(cc));
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (status != want)
        die("%s %s: HTTP %ld, expected %ld", what, url, status, want);
}

static long curl_connects(CURL *h)
{
    (void)h;
    return curl_conns;
}

/* Loads keys 0..count-1 (version 1, vbytes-byte values) into a new database
 * at dir in batches of `batch`, with sync mode `mode`; count 0 = until the
 * segments hold min_bytes. Returns the open handle; *loaded gets the key
 * count, *put_ns (may be NULL) the time spent in s4kv_batch_put and
 * s4kv_write (the value generator is not timed). */
static s4kv_db *load_db(const char *dir, uint64_t count, uint64_t min_bytes, size_t vbytes,
                        uint64_t batch, s4kv_sync_mode mode, uint64_t *loaded, uint64_t *put_ns)
{
    DIR *probe = opendir(dir);
    if (probe) {
        closedir(probe);
        die("%s already exists; give --dir an empty directory", dir);
    }
    s4kv_db *db = db_open(dir, mode);
    s4kv_batch *b = s4kv_batch_new();
    if (!b)
        die("out of memory");
    char key[KEY_BYTES], val[MAX_VALUE_BYTES];
    uint64_t i = 0, ns = 0;
    for (;;) {
        if (count && i >= count)
            break;
        if (!count && i % (batch * 16) == 0) {
            s4kv_stats sst;
            if (s4kv_stats_get(db, &sst))
                die("s4kv_stats_get failed");
            if (sst.segment_bytes >= min_bytes)
                break;
        }
        make_key(i, key);
        make_value(i, 1, val, vbytes);
        uint64_t t0 = now_ns();
        if (s4kv_batch_put(b, key, KEY_BYTES, val, vbytes))
            die("s4kv_batch_put failed");
        i++;
        if (s4kv_batch_count(b) == batch) {
            errbuf[0] = '\0';
            int rc = s4kv_write(db, b, errbuf, sizeof errbuf);
            if (rc)
                die("s4kv_write: %s: %s", s4kv_strerror(rc), errbuf);
            s4kv_batch_clear(b);
        }
        ns += now_ns() - t0;
    }
    if (s4kv_batch_count(b)) {
        errbuf[0] = '\0';
        uint64_t t0 = now_ns();
        int rc = s4kv_write(db, b, errbuf, sizeof errbuf);
        ns += now_ns() - t0;
        if (rc)
            die("s4kv_write: %s: %s", s4kv_strerror(rc), errbuf);
    }
    s4kv_batch_free(b);
    *loaded = i;
    if (put_ns)
        *put_ns = ns;
    return db;
}

static s4kv_s3_report s3_upload(s4kv_db *db, const char *url, uint64_t *ns)
{
    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = url;
    s4kv_s3_report rep;
    uint64_t t0 = now_ns();
    errbuf[0] = '\0';
    int rc = s4kv_upload(db, &o, &rep, errbuf, sizeof errbuf);
    *ns = now_ns() - t0;
    if (rc)
        die("s4kv_upload to %s: %s: %s", url, s4kv_strerror(rc), errbuf);
    return rep;
}

/* A read seam that serves segments from a local directory and records every
 * (segment, offset, length) the engine asks for: the byte ranges a remote
 * get fetches, for curlget to fetch the same way. */
typedef struct range {
    uint32_t segno;
    uint64_t off;
    size_t len;
} range;

typedef struct recorder {
    const char *dir;
    range *v;
    size_t n, cap;
} recorder;

static int rec_read_range(void *ctx, uint32_t segno, uint64_t off, void *buf, size_t len,
                          char *err, size_t errlen)
{
    recorder *r = ctx;
    char path[4200];
    snprintf(path, sizeof path, "%s/data_%06u.s4kv", r->dir, segno);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t got = fd < 0 ? -1 : pread(fd, buf, len, (off_t)off);
    if (fd >= 0)
        close(fd);
    if (got != (ssize_t)len) {
        snprintf(err, errlen, "pread %s at %" PRIu64 ": %s", path, off,
                 got < 0 ? strerror(errno) : "short read");
        return S4KV_EIO;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 1024;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        if (!r->v)
            die("out of memory");
    }
    r->v[r->n++] = (range){ segno, off, len };
    return 0;
}

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b)
        die("copy %s to %s: %s", from, to, strerror(errno));
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
        if (fwrite(buf, 1, n, b) != n)
            die("writing %s: %s", to, strerror(errno));
    if (ferror(a) || fclose(b))
        die("copy %s to %s: %s", from, to, strerror(errno));
    fclose(a);
}

/* The byte ranges the gets of keys[0..nreads) read: the same gets on a
 * local read-only copy of the uploaded MANIFEST (s4kv_download writes it
 * with every segment's committed length; only sealed segments may be read
 * through the seam) and checkpoint, segments served by the recording seam.
 * Exactly one range per get (else the comparison would not be like for
 * like). The caller frees rec->v. */
static void record_ranges(const char *parent, const s3loc *loc, const char *rname,
                          const uint64_t *keys, uint64_t nreads, size_t vbytes, recorder *rec)
{
    char rdir[4200], ddir[4200], key[KEY_BYTES], buf[MAX_VALUE_BYTES * 2];
    snprintf(rdir, sizeof rdir, "%s/%s-ranges", parent, rname);
    snprintf(ddir, sizeof ddir, "%s/%s-download", parent, rname);
    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = loc->url;
    errbuf[0] = '\0';
    int rc = s4kv_download(ddir, &o, NULL, errbuf, sizeof errbuf);
    if (rc)
        die("s4kv_download %s: %s: %s", loc->url, s4kv_strerror(rc), errbuf);
    if (mkdir(rdir, 0755))
        die("mkdir %s: %s", rdir, strerror(errno));
    DIR *d = opendir(ddir);
    if (!d)
        die("opendir %s: %s", ddir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (strcmp(de->d_name, "MANIFEST") == 0 ||
            (strncmp(de->d_name, "index_", 6) == 0 && l > 5 &&
             strcmp(de->d_name + l - 5, ".s4ki") == 0)) {
            char a[8400], b[8400];
            snprintf(a, sizeof a, "%s/%s", ddir, de->d_name);
            snprintf(b, sizeof b, "%s/%s", rdir, de->d_name);
            copy_file(a, b);
        }
    }
    closedir(d);
    *rec = (recorder){ .dir = ddir };
    s4kv_remote seam = { .read_range = rec_read_range, .ctx = rec };
    s4kv_options opt;
    s4kv_options_init(&opt);
    opt.read_only = 1;
    opt.create_if_missing = 0;
    opt.remote = &seam;
    s4kv_db *ldb = NULL;
    errbuf[0] = '\0';
    rc = s4kv_open(rdir, &opt, &ldb, errbuf, sizeof errbuf);
    if (rc)
        die("open %s with the recording seam: %s: %s", rdir, s4kv_strerror(rc), errbuf);
    for (uint64_t n = 0; n < nreads; n++) {
        make_key(keys[n], key);
        size_t vlen = 0;
        size_t before = rec->n;
        rc = s4kv_get_into(ldb, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
        check_get(rc, keys[n], 1, buf, vlen, vbytes, "curlget (ranges)");
        if (rec->n != before + 1)
            die("curlget: get %.16s read %zu ranges, expected 1", key, rec->n - before);
    }
    db_close(ldb);
    rec->dir = NULL;
}

/* One raw ranged GET of range g with h; *ns its time. The bytes must be the
 * segment's in dir (checked after the timing). */
static void curl_range(CURL *h, membuf *mb, const char *ep, const s3loc *loc, const char *dir,
                       const range *g, char **want, size_t *want_cap, uint64_t *ns)
{
    char url[4096], rg[64], name[64];
    snprintf(name, sizeof name, "data_%06u.s4kv", g->segno);
    object_url(url, sizeof url, ep, loc, name);
    snprintf(rg, sizeof rg, "%" PRIu64 "-%" PRIu64, g->off, g->off + g->len - 1);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_RANGE, rg);
    mb->n = 0;
    uint64_t g0 = now_ns();
    curl_perform(h, "ranged GET", url, 206);
    *ns = now_ns() - g0;
    if (!dir)
        return;
    if (g->len > *want_cap) {
        *want_cap = g->len;
        *want = realloc(*want, *want_cap);
        if (!*want)
            die("out of memory");
    }
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || pread(fd, *want, g->len, (off_t)g->off) != (ssize_t)g->len)
        die("pread %s: %s", path, strerror(errno));
    close(fd);
    if (mb->n != g->len || memcmp(mb->p, *want, g->len) != 0)
        die("curlget: %s bytes %s: %zu bytes differ from the segment's %zu", url, rg, mb->n,
            g->len);
}

/* Remote gets of a database uploaded to loc (num keys of vbytes-byte values,
 * version 1; its local copy in dir) and the same byte ranges as raw ranged
 * GETs with libcurl on one reused easy handle: rows rname and cname. The
 * two are interleaved request by request (s4kv first on even requests, curl
 * first on odd ones), so both see the emulator in the same state: run one
 * after the other, the same binary measured 0.8x to 2.9x of curl as the
 * emulator's speed drifted. Each starts with WARMUP_GETS untimed requests;
 * throughput is requests / the sum of their timed calls. */
#define WARMUP_GETS 200
static void remote_gets(const char *parent, const char *dir, const s3loc *lp, uint64_t num,
                        size_t vbytes, uint64_t nreads, const char *rname, const char *cname)
{
    s3loc loc = *lp;
    uint64_t *keys = xcalloc(nreads, sizeof *keys);
    uint64_t rng = cfg.seed ^ 0x72656d6f7465ULL;
    for (uint64_t n = 0; n < nreads; n++)
        keys[n] = rand_below(&rng, num);
    double *rs = xcalloc(nreads, sizeof *rs), *cs = xcalloc(nreads, sizeof *cs);
    char key[KEY_BYTES], buf[MAX_VALUE_BYTES * 2];
    const char *ep = s3_endpoint();
    int do_r = selected(rname), do_c = selected(cname) && ep;
    if (selected(cname) && !ep)
        fprintf(stderr, "  curlget skipped: no custom endpoint (raw GETs are unsigned; they "
                        "need s3rver or another endpoint that accepts them)\n");

    recorder rec = { 0 };
    CURL *h = NULL;
    membuf mb = { 0 };
    char *want = NULL;
    size_t want_cap = 0;
    uint64_t ns;
    if (do_c) {
        record_ranges(parent, &loc, rname, keys, nreads, vbytes, &rec);
        h = curl_handle();
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, membuf_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &mb);
        for (size_t n = 0; n < WARMUP_GETS; n++)
            curl_range(h, &mb, ep, &loc, NULL, &rec.v[n % rec.n], &want, &want_cap, &ns);
    }
    s4kv_db *rdb = NULL;
    uint64_t open_ns = 0;
    s4kv_s3_report ro = { 0 }, r0 = { 0 }, r1 = { 0 };
    if (do_r) {
        s4kv_s3_options o;
        s4kv_s3_options_init(&o);
        o.url = loc.url;
        uint64_t t0 = now_ns();
        errbuf[0] = '\0';
        int rc = s4kv_open_s3(NULL, NULL, &o, &rdb, errbuf, sizeof errbuf);
        if (rc)
            die("s4kv_open_s3 %s: %s: %s", loc.url, s4kv_strerror(rc), errbuf);
        open_ns = now_ns() - t0;
        s4kv_s3_stats(rdb, &ro);
        /* Warm-up (not timed, not counted): the emulator's JIT and caches. */
        for (uint64_t n = 0; n < WARMUP_GETS; n++) {
            uint64_t i = n % num;
            make_key(i, key);
            size_t vlen = 0;
            rc = s4kv_get_into(rdb, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
            check_get(rc, i, 1, buf, vlen, vbytes, "remote warm-up");
        }
        s4kv_s3_stats(rdb, &r0);
    }
    uint64_t rtotal = 0, ctotal = 0;
    for (uint64_t n = 0; n < nreads; n++) {
        for (int turn = 0; turn < 2; turn++) {
            if ((turn == 0) == (n % 2 == 0)) {
                if (!do_r)
                    continue;
                make_key(keys[n], key);
                size_t vlen = 0;
                uint64_t g0 = now_ns();
                int rc = s4kv_get_into(rdb, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf,
                                       sizeof errbuf);
                ns = now_ns() - g0;
                check_get(rc, keys[n], 1, buf, vlen, vbytes, rname);
                rs[n] = (double)ns;
                rtotal += ns;
            } else if (do_c) {
                curl_range(h, &mb, ep, &loc, dir, &rec.v[n], &want, &want_cap, &ns);
                cs[n] = (double)ns;
                ctotal += ns;
            }
        }
    }
    const char *order = do_r && do_c ? "interleaved request by request with " : "";
    if (do_r) {
        s4kv_s3_stats(rdb, &r1);
        db_close(rdb);
        double per_get = (double)(r1.requests - r0.requests) / (double)nreads;
        emit_result(rname, nreads, rtotal, rs, nreads, 0,
                    "s4kv_open_s3(NULL) of %" PRIu64 " keys of %zu bytes (open %.1f ms, %" PRIu64
                    " requests), uniform gets, %s%s, every value checked; %.2f requests per "
                    "get, %" PRIu64 " retries, %" PRIu64 " new connections",
                    num, vbytes, (double)open_ns / 1e6, ro.requests, order, do_c ? cname : "",
                    per_get, r1.retries - r0.retries, r1.connections - r0.connections);
        char mname[64];
        snprintf(mname, sizeof mname, "%s.requests_per_get", rname);
        emit_metric(mname, per_get, "s4kv_s3_stats delta over the gets");
    }
    if (do_c) {
        long conns = curl_connects(h);
        curl_easy_cleanup(h);
        uint64_t total = 0;
        for (size_t n = 0; n < rec.n; n++)
            total += rec.v[n].len;
        emit_result(cname, rec.n, ctotal, cs, rec.n, 0,
                    "the %s byte ranges (%.0f bytes average) as raw ranged GETs, libcurl, one "
                    "reused easy handle (%ld connection%s), %s%s, %s, bytes checked",
                    rname, (double)total / (double)(rec.n ? rec.n : 1), conns,
                    conns == 1 ? "" : "s", order, do_r ? rname : "", signing_note());
    }
    free(mb.p);
    free(want);
    free(rec.v);
    free(rs);
    free(cs);
    free(keys);
}

/* Names of the files a database directory holds that upload sends:
 * segments, checkpoints and MANIFEST; sizes in *sizes. */
static size_t xfer_files(const char *dir, char names[][64], uint64_t *sizes, size_t cap)
{
    DIR *d = opendir(dir);
    if (!d)
        die("opendir %s: %s", dir, strerror(errno));
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < cap) {
        size_t l = strlen(de->d_name);
        int seg = strncmp(de->d_name, "data_", 5) == 0 && l > 10 && strcmp(de->d_name + l - 5, ".s4kv") == 0;
        int ckpt = strncmp(de->d_name, "index_", 6) == 0 && l > 11 && strcmp(de->d_name + l - 5, ".s4ki") == 0;
        if (!seg && !ckpt && strcmp(de->d_name, "MANIFEST") != 0)
            continue;
        struct stat sb;
        if (fstatat(dirfd(d), de->d_name, &sb, 0) || l >= 64)
            continue;
        memcpy(names[n], de->d_name, l + 1);
        sizes[n++] = (uint64_t)sb.st_size;
    }
    closedir(d);
    return n;
}

static double mibps(uint64_t bytes, uint64_t ns)
{
    return (double)bytes / 1048576.0 / ((double)(ns ? ns : 1) / 1e9);
}

/* upload and download: a database of about cfg.xfer_mib MiB; s4kv_upload
 * and s4kv_download next to raw PUTs and GETs of the same files with libcurl
 * (one after another on one reused easy handle, single PUTs, unsigned). The
 * files are the ones the download produced: exactly the uploaded objects
 * (segments, the checkpoint MANIFEST names, MANIFEST). */
static void run_xfer(const char *parent)
{
    char dir[4200], ddir[4200];
    snprintf(dir, sizeof dir, "%s/xfer", parent);
    snprintf(ddir, sizeof ddir, "%s/xfer-download", parent);
    uint64_t loaded;
    s4kv_db *db = load_db(dir, 0, cfg.xfer_mib << 20, VALUE_BYTES, cfg.batch, S4KV_SYNC_NONE, &loaded, NULL);
    s4kv_stats sst;
    if (s4kv_stats_get(db, &sst))
        die("s4kv_stats_get failed");
    uint64_t seg_bytes = sst.segment_bytes;
    s3loc loc = s3_location("upload");
    uint64_t up_ns;
    s4kv_s3_report up = s3_upload(db, loc.url, &up_ns);
    db_close(db);

    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = loc.url;
    s4kv_s3_report dr;
    uint64_t t0 = now_ns();
    errbuf[0] = '\0';
    int rc = s4kv_download(ddir, &o, &dr, errbuf, sizeof errbuf);
    uint64_t dl_ns = now_ns() - t0;
    if (rc)
        die("s4kv_download %s: %s: %s", loc.url, s4kv_strerror(rc), errbuf);

    char names[64][64];
    uint64_t sizes[64], total = 0;
    size_t nf = xfer_files(ddir, names, sizes, 64);
    for (size_t i = 0; i < nf; i++)
        total += sizes[i];
    const char *ep = s3_endpoint();
    char url[4096], path[4400];

    if (selected("upload")) {
        emit_result("upload", up.objects_uploaded, up_ns, NULL, 0, 1,
                 "s4kv_upload of %" PRIu64 " keys: %.1f MiB (%.1f MiB of segments) in %" PRIu64
                 " objects, %.1f MiB/s; %" PRIu64 " requests, %" PRIu64
                 " connections (multipart >= 16 MiB, 8 MiB parts, 8 parallel); ops = objects",
                 loaded, (double)up.bytes_uploaded / 1048576.0, (double)seg_bytes / 1048576.0,
                 up.objects_uploaded,
                 mibps(up.bytes_uploaded, up_ns), up.requests, up.connections);
        emit_metric("upload.mib_per_s", mibps(up.bytes_uploaded, up_ns),
                    "s4kv_upload: segments + checkpoint + MANIFEST");
    }
    if (selected("upload") && ep) {
        s3loc cl = s3_location("curlput");
        CURL *h = curl_handle();
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        membuf sink = { 0 };
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, membuf_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
        t0 = now_ns();
        for (size_t i = 0; i < nf; i++) {
            snprintf(path, sizeof path, "%s/%s", ddir, names[i]);
            FILE *f = fopen(path, "rb");
            if (!f)
                die("open %s: %s", path, strerror(errno));
            object_url(url, sizeof url, ep, &cl, names[i]);
            curl_easy_setopt(h, CURLOPT_URL, url);
            curl_easy_setopt(h, CURLOPT_READDATA, f);
            curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)sizes[i]);
            curl_perform(h, "PUT", url, 200);
            fclose(f);
        }
        uint64_t ns = now_ns() - t0;
        long conns = curl_connects(h);
        curl_easy_cleanup(h);
        free(sink.p);
        emit_result("curlput", nf, ns, NULL, 0, 1,
                 "raw PUT of the same %zu files (%.1f MiB), one at a time, single PUTs, libcurl, "
                 "%s: %.1f MiB/s, %ld connection%s; ops = objects",
                 nf, (double)total / 1048576.0, signing_note(), mibps(total, ns), conns,
                 conns == 1 ? "" : "s");
        emit_metric("curlput.mib_per_s", mibps(total, ns),
                    "raw PUT (libcurl) of the same files, one at a time");
    }

    if (selected("download")) {
        emit_result("download", dr.objects_downloaded, dl_ns, NULL, 0, 1,
                 "s4kv_download into an empty directory: %.1f MiB in %" PRIu64
                 " objects, %.1f MiB/s, every batch checked; %" PRIu64 " requests, %" PRIu64
                 " connections; ops = objects",
                 (double)dr.bytes_downloaded / 1048576.0, dr.objects_downloaded,
                 mibps(dr.bytes_downloaded, dl_ns), dr.requests, dr.connections);
        emit_metric("download.mib_per_s", mibps(dr.bytes_downloaded, dl_ns),
                    "s4kv_download: segments + checkpoint, checked");
    }
    if (selected("download") && ep) {
        char cdir[4200];
        snprintf(cdir, sizeof cdir, "%s/xfer-curl", parent);
        if (mkdir(cdir, 0755))
            die("mkdir %s: %s", cdir, strerror(errno));
        CURL *h = curl_handle();
        uint64_t got = 0;
        t0 = now_ns();
        for (size_t i = 0; i < nf; i++) {
            snprintf(path, sizeof path, "%s/%s", cdir, names[i]);
            FILE *f = fopen(path, "wb");
            if (!f)
                die("create %s: %s", path, strerror(errno));
            object_url(url, sizeof url, ep, &loc, names[i]);
            curl_easy_setopt(h, CURLOPT_URL, url);
            curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, NULL);
            curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
            curl_perform(h, "GET", url, 200);
            if (fclose(f))
                die("writing %s: %s", path, strerror(errno));
            struct stat sb;
            if (stat(path, &sb))
                die("stat %s: %s", path, strerror(errno));
            got += (uint64_t)sb.st_size;
        }
        uint64_t ns = now_ns() - t0;
        long conns = curl_connects(h);
        curl_easy_cleanup(h);
        emit_result("curlgetfile", nf, ns, NULL, 0, 1,
                 "raw GET of the same %zu objects to files (%.1f MiB), one at a time, libcurl, "
                 "%s, unchecked: %.1f MiB/s, %ld connection%s; ops = objects",
                 nf, (double)got / 1048576.0, signing_note(), mibps(got, ns), conns,
                 conns == 1 ? "" : "s");
        emit_metric("curlgetfile.mib_per_s", mibps(got, ns),
                    "raw GET (libcurl) of the same objects, one at a time");
    }
    if (!ep && (selected("upload") || selected("download")))
        fprintf(stderr, "  raw curl PUT/GET skipped: no custom endpoint (they are unsigned)\n");
}

/* remoteget and curlget: cfg.remote_num keys of 100 bytes uploaded, then
 * cfg.remote_reads remote gets and as many raw ranged GETs. */
static void run_remote(const char *parent)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/remote", parent);
    uint64_t loaded;
    s4kv_db *db =
        load_db(dir, cfg.remote_num, 0, VALUE_BYTES, cfg.batch, S4KV_SYNC_NONE, &loaded, NULL);
    s3loc loc = s3_location("remoteget");
    uint64_t up_ns;
    s4kv_s3_report up = s3_upload(db, loc.url, &up_ns);
    db_close(db);
    fprintf(stderr, "  (setup: %" PRIu64 " keys uploaded to %s: %.1f MiB, %" PRIu64 " requests)\n",
            loaded, loc.url, (double)up.bytes_uploaded / 1048576.0, up.requests);
    remote_gets(parent, dir, &loc, cfg.remote_num, VALUE_BYTES, cfg.remote_reads, "remoteget",
                "curlget");
}

/* The s4db shapes: s4db's own benchmark (100,000 keys, 256-byte values) on
 * s4kv with its defaults (S4KV_SYNC_BATCH: one fdatasync per batch). */
#define S4DB_KEYS 100000u
#define S4DB_VALUE 256u
#define S4DB_LOCAL_GETS 20000u
#define S4DB_REMOTE_GETS 2000u
static void run_s4db(const char *parent)
{
    static const uint64_t batches[] = { 1000, 100 };
    char dir1000[4200] = "";
    s3loc loc1000;
    memset(&loc1000, 0, sizeof loc1000);
    for (size_t k = 0; k < sizeof batches / sizeof batches[0]; k++) {
        uint64_t bsz = batches[k], loaded, put_ns, up_ns;
        char dir[4200], name[64];
        snprintf(dir, sizeof dir, "%s/s4db-b%" PRIu64, parent, bsz);
        s4kv_db *db =
            load_db(dir, S4DB_KEYS, 0, S4DB_VALUE, bsz, S4KV_SYNC_BATCH, &loaded, &put_ns);
        snprintf(name, sizeof name, "s4db-put%" PRIu64, bsz);
        emit_result(name, loaded, put_ns, NULL, 0, 0,
                    "s4db shape: %u keys of %u bytes (half random) in batches of %" PRIu64
                    ", s4kv defaults (S4KV_SYNC_BATCH: fdatasync per batch); the put phase "
                    "(s4kv_batch_put + s4kv_write)",
                    S4DB_KEYS, S4DB_VALUE, bsz);
        snprintf(name, sizeof name, "s4db-b%" PRIu64, bsz);
        s3loc loc = s3_location(name);
        s4kv_s3_report up = s3_upload(db, loc.url, &up_ns);
        db_close(db);
        snprintf(name, sizeof name, "s4db-upload%" PRIu64, bsz);
        emit_result(name, up.objects_uploaded, up_ns, NULL, 0, 1,
                    "s4kv_upload of that database: %.1f MiB in %" PRIu64 " objects, %" PRIu64
                    " requests, %.1f MiB/s; ops = objects",
                    (double)up.bytes_uploaded / 1048576.0, up.objects_uploaded, up.requests,
                    mibps(up.bytes_uploaded, up_ns));
        if (bsz == 1000) {
            snprintf(dir1000, sizeof dir1000, "%s", dir);
            loc1000 = loc;
        }
    }

    /* The same put phase at s4db's own durability: s4db appends and flushes
     * its data file and rewrites its index file on every put() but never
     * fsyncs (s4db/db.py, commit 48791bf), so the like-for-like comparison
     * is S4KV_SYNC_NONE. */
    for (size_t k = 0; k < sizeof batches / sizeof batches[0]; k++) {
        uint64_t bsz = batches[k], loaded, put_ns;
        char dir[4200], name[64];
        snprintf(dir, sizeof dir, "%s/s4db-nosync-b%" PRIu64, parent, bsz);
        s4kv_db *db = load_db(dir, S4DB_KEYS, 0, S4DB_VALUE, bsz, S4KV_SYNC_NONE, &loaded, &put_ns);
        db_close(db);
        snprintf(name, sizeof name, "s4db-put%" PRIu64 "-nosync", bsz);
        emit_result(name, loaded, put_ns, NULL, 0, 0,
                    "the same put phase with S4KV_SYNC_NONE: no fsync, as s4db (which never "
                    "fsyncs its data or index files)");
    }

    /* local gets after a download into an empty directory */
    char ddir[4300];
    snprintf(ddir, sizeof ddir, "%s/s4db-local", parent);
    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = loc1000.url;
    s4kv_s3_report dr;
    errbuf[0] = '\0';
    uint64_t t0 = now_ns();
    int rc = s4kv_download(ddir, &o, &dr, errbuf, sizeof errbuf);
    uint64_t dl_ns = now_ns() - t0;
    if (rc)
        die("s4kv_download %s: %s: %s", loc1000.url, s4kv_strerror(rc), errbuf);
    emit_result("s4db-download", dr.objects_downloaded, dl_ns, NULL, 0, 1,
                "s4kv_download of the batches-of-1000 database into an empty directory: %.1f "
                "MiB, %.1f MiB/s, checked; ops = objects",
                (double)dr.bytes_downloaded / 1048576.0, mibps(dr.bytes_downloaded, dl_ns));
    s4kv_db *db = db_open(ddir, S4KV_SYNC_BATCH);
    double *samples = xcalloc(S4DB_LOCAL_GETS, sizeof *samples);
    uint64_t rng = cfg.seed ^ 0x6c6f63616cULL, total = 0;
    char key[KEY_BYTES], buf[MAX_VALUE_BYTES * 2];
    for (uint64_t n = 0; n < S4DB_LOCAL_GETS; n++) {
        uint64_t i = rand_below(&rng, S4DB_KEYS);
        make_key(i, key);
        size_t vlen = 0;
        uint64_t g0 = now_ns();
        rc = s4kv_get_into(db, key, KEY_BYTES, buf, sizeof buf, &vlen, errbuf, sizeof errbuf);
        uint64_t ns = now_ns() - g0;
        check_get(rc, i, 1, buf, vlen, S4DB_VALUE, "s4db-localget");
        samples[n] = (double)ns;
        total += ns;
    }
    db_close(db);
    emit_result("s4db-localget", S4DB_LOCAL_GETS, total, samples, S4DB_LOCAL_GETS, 0,
                "uniform gets on the downloaded copy (first open after download), every value "
                "checked");
    free(samples);

    remote_gets(parent, dir1000, &loc1000, S4DB_KEYS, S4DB_VALUE, S4DB_REMOTE_GETS,
                "s4db-remoteget", "s4db-curlget");
}

void run_s3(const char *parent)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    emit_open("s4kv");
    fprintf(stderr, "s4kv-bench: S3 workloads under %s on %s\n", cfg.s3_url,
            s3_endpoint() ? s3_endpoint() : "AWS S3");
    if (selected("remoteget") || selected("curlget"))
        run_remote(parent);
    if (selected("upload") || selected("download"))
        run_xfer(parent);
    if (selected("s4db-put1000") || selected("s4db-localget") || selected("s4db-remoteget"))
        run_s4db(parent);
    emit_close();
}

const char *bench_s3_endpoint(void)
{
    return s3_endpoint();
}
