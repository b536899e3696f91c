/*
 * test_s3.c - the S3 client (sync/s3.c, sync/s3xml.c; suite "s3") against a
 * real S3 server on loopback (s3rver, started per test by tests/s3util.c):
 * round trips of awkward keys, exact ranged GETs and their failures, 404s
 * with the key and status in the message, ListObjectsV2 pagination,
 * DeleteObjects batches, multipart upload, many transfers at once (s3_run),
 * connection reuse, retries against a dead port and through the fault proxy,
 * the retry budget; plus the XML builders and parsers without a server.
 *
 * s3rver accepts any signature and returns a plain MD5 as a multipart ETag;
 * nothing here leans on either (signing is proven by test_sigv4.c).
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "s3.h"
#include "s3_internal.h"
#include "s3util.h"
#include "s4kv.h"
#include "util.h"

TestSuite(s3, .timeout = 120);

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(uint8_t *buf, size_t n, uint64_t seed)
{
    uint64_t st = seed;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = tu_rand(&st);
        memcpy(buf + i, &v, n - i < 8 ? n - i : 8);
    }
}

/* A client on the s3rver the harness started (it exported the env). */
static s3_client *client(s3_config *c, const char *bucket)
{
    char err[512] = "";
    cr_assert_eq(s3_config_from_env(c, NULL, NULL, err, sizeof err), 0, "%s", err);
    s3_client *cl = s3_client_new(c, bucket, err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    return cl;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- single requests */

static const char *ODD_KEYS[] = {
    "plain",
    "with space/and more spaces",
    "unicode/h\xc3\xa9llo-\xe4\xb8\x96\xe7\x95\x8c",
    "plus+sign",
    "percent%41%2F",
    "question?mark=1&x",
    "hash#tag",
    "xml&<>\"'chars",
    "tilde~_-.dots..",
    "deep/er/and/deeper/",
};
#define NODD (sizeof ODD_KEYS / sizeof *ODD_KEYS)

Test(s3, put_get_head_delete_round_trip_with_odd_keys)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    s3_client *cl = client(&c, "bucket");
    char err[512];
    for (size_t i = 0; i < NODD; i++) {
        size_t n = 100 + i * 37;
        uint8_t *v = malloc(n);
        fill(v, n, i);
        cr_assert_eq(s3_put(cl, ODD_KEYS[i], v, n, err, sizeof err), 0, "%s", err);
        uint64_t sz = 0;
        cr_assert_eq(s3_head(cl, ODD_KEYS[i], &sz, err, sizeof err), 0, "%s", err);
        cr_expect_eq(sz, n, "HEAD size of '%s'", ODD_KEYS[i]);
        uint8_t *got = NULL;
        size_t glen = 0;
        cr_assert_eq(s3_get(cl, ODD_KEYS[i], &got, &glen, err, sizeof err), 0, "%s", err);
        cr_expect(glen == n && memcmp(got, v, n) == 0, "GET of '%s' differs", ODD_KEYS[i]);
        free(got);
        free(v);
    }
    /* the listing gives the keys back byte for byte */
    s3_object *objs;
    size_t nobj;
    cr_assert_eq(s3_list(cl, "", &objs, &nobj, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nobj, NODD);
    char *want[NODD], *have[NODD];
    for (size_t i = 0; i < NODD; i++) {
        want[i] = (char *)ODD_KEYS[i];
        have[i] = objs[i].key;
    }
    qsort(want, NODD, sizeof *want, cmp_str);
    qsort(have, NODD, sizeof *have, cmp_str);
    for (size_t i = 0; i < NODD; i++)
        cr_expect_str_eq(have[i], want[i]);
    for (size_t i = 0; i < nobj; i++) {
        cr_expect(objs[i].mtime > 1600000000, "LastModified parsed");
        cr_expect(strlen(objs[i].etag) == 32 && !strchr(objs[i].etag, '"'), "etag %s",
                  objs[i].etag);
    }
    s3_objects_free(objs, nobj);

    for (size_t i = 0; i < NODD; i++) {
        cr_assert_eq(s3_delete(cl, ODD_KEYS[i], err, sizeof err), 0, "%s", err);
        cr_expect_eq(s3_head(cl, ODD_KEYS[i], NULL, err, sizeof err), S4KV_ENOENT);
    }
    cr_expect_eq(s3_delete(cl, "never-existed", err, sizeof err), 0, "%s", err);
    /* an empty object */
    cr_assert_eq(s3_put(cl, "empty", NULL, 0, err, sizeof err), 0, "%s", err);
    uint8_t *got = NULL;
    size_t glen = 9;
    cr_assert_eq(s3_get(cl, "empty", &got, &glen, err, sizeof err), 0, "%s", err);
    cr_expect_eq(glen, 0);
    cr_expect_not_null(got);
    free(got);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

Test(s3, ranged_get_exact_bytes_and_errors)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    s3_client *cl = client(&c, "bucket");
    char err[512];
    size_t n = 100000;
    uint8_t *v = malloc(n);
    fill(v, n, 42);
    const char *key = "db/data_000003.s4kv";
    cr_assert_eq(s3_put(cl, key, v, n, err, sizeof err), 0, "%s", err);
    struct { uint64_t off; size_t len; } cases[] = {
        /* not {0, 1}: s3rver 3.7.1 reads "bytes=0-0" as "bytes=0-" */
        {0, 2}, {0, 100000}, {99999, 1}, {12345, 6789}, {65535, 2}, {1, 99999},
    };
    uint8_t *buf = malloc(n);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memset(buf, 0xAA, n);
        cr_assert_eq(s3_get_range(cl, key, cases[i].off, buf, cases[i].len, err, sizeof err), 0,
                     "%s", err);
        cr_expect(memcmp(buf, v + cases[i].off, cases[i].len) == 0, "bytes %llu+%zu",
                  (unsigned long long)cases[i].off, cases[i].len);
        cr_expect_eq(buf[cases[i].len < n ? cases[i].len : 0], cases[i].len < n ? 0xAA : v[0],
                     "nothing written past len");
    }
    /* starting past the end: 416 */
    err[0] = 0;
    cr_expect_eq(s3_get_range(cl, key, n, buf, 10, err, sizeof err), S4KV_ECORRUPT);
    cr_expect(strstr(err, "GET s3://bucket/db/data_000003.s4kv") && strstr(err, "416"), "%s", err);
    cr_log_info("past the end: %s", err);
    /* straddling the end: a short 206 */
    err[0] = 0;
    cr_expect_eq(s3_get_range(cl, key, n - 10, buf, 20, err, sizeof err), S4KV_ECORRUPT);
    cr_expect(strstr(err, "s3://bucket/db/data_000003.s4kv") && strstr(err, "10 of 20"), "%s", err);
    cr_log_info("straddling: %s", err);
    /* a missing object */
    err[0] = 0;
    cr_expect_eq(s3_get_range(cl, "db/nope", 0, buf, 10, err, sizeof err), S4KV_ENOENT);
    cr_expect(strstr(err, "s3://bucket/db/nope") && strstr(err, "404"), "%s", err);
    cr_expect_eq(s3_get_range(cl, key, 5, buf, 0, err, sizeof err), 0, "len 0 is a no-op");
    s3_stats st;
    s3_client_stats(cl, &st);
    cr_expect_eq(st.retries, 0, "a short or missing range is not retried");
    free(buf);
    free(v);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

Test(s3, not_found_names_key_status_and_code)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    s3_client *cl = client(&c, "bucket");
    char err[512] = "";
    uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(s3_get(cl, "db/data_000003.s4kv", &buf, &len, err, sizeof err), S4KV_ENOENT);
    cr_expect_str_eq(err, "GET s3://bucket/db/data_000003.s4kv: HTTP 404 NoSuchKey (The "
                          "specified key does not exist.)");
    cr_expect_null(buf);
    err[0] = 0;
    cr_assert_eq(s3_head(cl, "no such/key", NULL, err, sizeof err), S4KV_ENOENT);
    cr_expect_str_eq(err, "HEAD s3://bucket/no such/key: HTTP 404 NotFound");
    s3_stats st;
    s3_client_stats(cl, &st);
    cr_expect_eq(st.requests, 2, "404 is not retried");
    s3_client_free(cl);

    cl = s3_client_new(&c, "no-such-bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    cr_assert_eq(s3_get(cl, "k", &buf, &len, err, sizeof err), S4KV_ENOENT);
    cr_expect(strstr(err, "GET s3://no-such-bucket/k: HTTP 404 NoSuchBucket"), "%s", err);
    s3_object *objs;
    size_t n;
    cr_assert_eq(s3_list(cl, "p/", &objs, &n, err, sizeof err), S4KV_ENOENT);
    cr_expect(strstr(err, "ListObjectsV2 s3://no-such-bucket/p/: HTTP 404 NoSuchBucket"), "%s",
              err);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

Test(s3, secrets_stay_out_of_messages)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    setenv("AWS_SECRET_ACCESS_KEY", "very-secret-DO-NOT-PRINT", 1);
    setenv("AWS_SESSION_TOKEN", "token-DO-NOT-PRINT", 1);
    s3_config c;
    s3_client *cl = client(&c, "bucket");
    char err[512] = "";
    uint8_t *buf;
    size_t len;
    cr_assert_eq(s3_get(cl, "missing", &buf, &len, err, sizeof err), S4KV_ENOENT);
    cr_expect_null(strstr(err, "DO-NOT-PRINT"), "%s", err);
    cr_expect_null(strstr(err, "Signature"), "%s", err);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

/* ---- listing and bulk delete */

/* Puts n small objects "PREFIX%05zu" with s3_run. */
static void put_many(s3_client *cl, const char *prefix, size_t n, char ***keys_out)
{
    s3_xfer *x = calloc(n, sizeof *x);
    char **keys = calloc(n, sizeof *keys);
    for (size_t i = 0; i < n; i++) {
        keys[i] = malloc(strlen(prefix) + 16);
        sprintf(keys[i], "%s%05zu", prefix, i);
        x[i].op = S3_XPUT_BUF;
        x[i].key = keys[i];
        x[i].buf = keys[i];
        x[i].len = strlen(keys[i]);
    }
    double t0 = now_s();
    int rc = s3_run(cl, x, n, NULL, NULL);
    cr_assert_eq(rc, 0, "%s", x[0].rc ? x[0].err : "see other transfers");
    cr_log_info("put %zu objects in %.2f s", n, now_s() - t0);
    free(x);
    *keys_out = keys;
}

static void free_keys(char **keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
}

Test(s3, list_paginates_and_delete_many_batches_1500_keys)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    s3_client *cl = client(&c, "bucket");
    char err[512];
    char **keys;
    enum { N = 1500 };
    put_many(cl, "many/k&<'\"-", N, &keys);
    cr_assert_eq(s3_put(cl, "other/x", "x", 1, err, sizeof err), 0, "%s", err);

    s3_stats a, b;
    s3_client_stats(cl, &a);
    s3_object *objs;
    size_t n;
    cr_assert_eq(s3_list(cl, "many/", &objs, &n, err, sizeof err), 0, "%s", err);
    s3_client_stats(cl, &b);
    cr_assert_eq(n, N);
    cr_expect_eq(b.requests - a.requests, 2, "two pages of ListObjectsV2");
    for (size_t i = 0; i < N; i++) {
        cr_expect_str_eq(objs[i].key, keys[i], "sorted, complete");
        cr_expect_eq(objs[i].size, strlen(keys[i]));
    }
    s3_objects_free(objs, n);
    /* the page-size knob gives the same answer in more pages */
    s3_client_set_list_page_size(cl, 100);
    cr_assert_eq(s3_list(cl, "many/", &objs, &n, err, sizeof err), 0, "%s", err);
    s3_client_stats(cl, &a);
    cr_expect_eq(n, N);
    cr_expect_eq(a.requests - b.requests, 15);
    s3_objects_free(objs, n);
    s3_client_set_list_page_size(cl, 0);
    cr_assert_eq(s3_list(cl, "nothing-here/", &objs, &n, err, sizeof err), 0, "%s", err);
    cr_expect_eq(n, 0);
    s3_objects_free(objs, n);

    /* a key XML 1.0 cannot carry goes by DeleteObject (s3rver cannot list it:
     * it ignores encoding-type=url and sends the raw control byte) */
    const char *ctl = "many/ctl\x01key";
    cr_assert_eq(s3_put(cl, ctl, "c", 1, err, sizeof err), 0, "%s", err);
    char **all = calloc(N + 2, sizeof *all);
    memcpy(all, keys, N * sizeof *all);
    all[N] = (char *)ctl;
    all[N + 1] = "many/never-existed";
    s3_client_stats(cl, &a);
    cr_assert_eq(s3_delete_many(cl, all, N + 2, err, sizeof err), 0, "%s", err);
    s3_client_stats(cl, &b);
    /* s3rver sometimes answers a DeleteObjects with 500: retries may add requests */
    cr_expect_eq(b.requests - a.requests - (b.retries - a.retries), 3,
                 "two DeleteObjects and one DeleteObject, not %llu",
                 (unsigned long long)(b.requests - a.requests - (b.retries - a.retries)));
    cr_assert_eq(s3_list(cl, "", &objs, &n, err, sizeof err), 0, "%s", err);
    cr_expect_eq(n, 1);
    if (n)
        cr_expect_str_eq(objs[0].key, "other/x");
    s3_objects_free(objs, n);
    cr_expect_eq(s3_delete_many(cl, all, 0, err, sizeof err), 0);
    free(all);
    free_keys(keys, N);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

/* ---- multipart and s3_run */

static char *tmpfile_with(const char *dir, const char *name, const void *buf, size_t len)
{
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    cr_assert_eq(tu_write_file(p, buf, len), 0);
    return p;
}

static void expect_file(const char *path, const void *buf, size_t len)
{
    size_t got = 0;
    uint8_t *d = tu_read_file(path, &got);
    cr_assert_not_null(d, "read %s", path);
    cr_expect(got == len && memcmp(d, buf, len) == 0, "%s: %zu bytes, want %zu, same: %d", path,
              got, len, got == len && memcmp(d, buf, len) == 0);
    free(d);
}

Test(s3, multipart_upload_of_20_mib_is_byte_identical)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    c.multipart_threshold = 5u << 20;
    c.part_size = 5u << 20;
    s3_client *cl = s3_client_new(&c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    char *dir = tu_tmpdir("s3mpu");
    size_t n = (20u << 20) + 12345; /* 5 parts, the last one short */
    uint8_t *v = malloc(n);
    fill(v, n, 7);
    char *src = tmpfile_with(dir, "src.bin", v, n);
    char *dst = malloc(strlen(dir) + 16);
    sprintf(dst, "%s/dst.bin", dir);
    s3_xfer x = {.op = S3_XPUT_FILE, .key = "big/file.bin", .path = src, .len = n};
    double t0 = now_s();
    cr_assert_eq(s3_run(cl, &x, 1, NULL, NULL), 0, "%s", x.err);
    double t1 = now_s();
    s3_stats st;
    s3_client_stats(cl, &st);
    cr_expect_eq(st.requests, 7, "create + 5 parts + complete");
    cr_expect_geq(st.bytes_sent, n);
    cr_log_info("multipart PUT of %zu bytes: %.2f s (%.0f MB/s)", n, t1 - t0,
                n / 1e6 / (t1 - t0));
    uint64_t sz = 0;
    cr_assert_eq(s3_head(cl, "big/file.bin", &sz, err, sizeof err), 0, "%s", err);
    cr_expect_eq(sz, n);
    s3_xfer g = {.op = S3_XGET_FILE, .key = "big/file.bin", .path = dst, .len = n};
    cr_assert_eq(s3_run(cl, &g, 1, NULL, NULL), 0, "%s", g.err);
    expect_file(dst, v, n);
    /* the same through s3_put from memory, and s3_get */
    cr_assert_eq(s3_put(cl, "big/buf.bin", v, n, err, sizeof err), 0, "%s", err);
    uint8_t *back = NULL;
    size_t blen = 0;
    cr_assert_eq(s3_get(cl, "big/buf.bin", &back, &blen, err, sizeof err), 0, "%s", err);
    cr_expect(blen == n && memcmp(back, v, n) == 0, "s3_get of a multipart object");
    free(back);
    /* a failed upload leaves nothing behind: source shorter than len */
    s3_xfer bad = {.op = S3_XPUT_FILE, .key = "big/bad.bin", .path = src, .len = n + 1};
    cr_expect_eq(s3_run(cl, &bad, 1, NULL, NULL), S4KV_EIO);
    cr_expect(strstr(bad.err, src) && strstr(bad.err, "big/bad.bin"), "%s", bad.err);
    cr_expect_eq(s3_head(cl, "big/bad.bin", NULL, err, sizeof err), S4KV_ENOENT);
    free(src);
    free(dst);
    free(v);
    tu_rmtree_free(dir);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

typedef struct prog {
    uint64_t last_done, total, calls;
    int backwards;
} prog;

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    prog *p = ctx;
    if (done < p->last_done)
        p->backwards = 1;
    p->last_done = done;
    p->total = total;
    p->calls++;
}

Test(s3, run_20_mixed_transfers_in_parallel)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    c.multipart_threshold = 5u << 20;
    c.part_size = 5u << 20;
    c.max_parallel = 6;
    s3_client *cl = s3_client_new(&c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    char *dir = tu_tmpdir("s3run");
    enum { N = 20 };
    uint8_t *data[N];
    size_t len[N];
    char keys[N][64], paths[N][512];
    /* existing objects for the GETs */
    for (int i = 0; i < N; i++) {
        len[i] = i == 3 ? (6u << 20) + 1 : (size_t)(1000 + i * 4099);
        data[i] = malloc(len[i]);
        fill(data[i], len[i], 100 + (uint64_t)i);
        snprintf(keys[i], sizeof keys[i], "run/obj %02d", i);
        snprintf(paths[i], sizeof paths[i], "%s/f%02d", dir, i);
        if (i % 3 == 2)
            cr_assert_eq(s3_put(cl, keys[i], data[i], len[i], err, sizeof err), 0, "%s", err);
        else if (i % 3 == 1)
            cr_assert_eq(tu_write_file(paths[i], data[i], len[i]), 0);
    }
    s3_xfer x[N];
    memset(x, 0, sizeof x);
    for (int i = 0; i < N; i++) {
        x[i].key = keys[i];
        x[i].len = len[i];
        if (i % 3 == 0) {
            x[i].op = S3_XPUT_BUF; /* i == 3 is multipart */
            x[i].buf = data[i];
        } else if (i % 3 == 1) {
            x[i].op = S3_XPUT_FILE;
            x[i].path = paths[i];
        } else {
            x[i].op = S3_XGET_FILE;
            x[i].path = paths[i];
            x[i].len = i % 2 ? len[i] : UINT64_MAX;
        }
    }
    prog p = {0};
    double t0 = now_s();
    int rc = s3_run(cl, x, N, on_progress, &p);
    cr_log_info("20 mixed transfers: %.3f s", now_s() - t0);
    for (int i = 0; i < N; i++)
        cr_expect_eq(x[i].rc, 0, "%d: %s", i, x[i].err);
    cr_assert_eq(rc, 0);
    cr_expect_eq(p.backwards, 0);
    cr_expect_eq(p.last_done, p.total);
    cr_expect_gt(p.calls, 1);
    for (int i = 0; i < N; i++) {
        if (x[i].op == S3_XGET_FILE) {
            expect_file(paths[i], data[i], len[i]);
            char tmp[600];
            snprintf(tmp, sizeof tmp, "%.512s.tmp", paths[i]);
            cr_expect_neq(access(tmp, F_OK), 0, "no %s left", tmp);
        } else {
            uint8_t *back;
            size_t blen;
            cr_assert_eq(s3_get(cl, keys[i], &back, &blen, err, sizeof err), 0, "%s", err);
            cr_expect(blen == len[i] && memcmp(back, data[i], blen) == 0, "%s", keys[i]);
            free(back);
        }
    }
    /* failures are per transfer: a missing object and a wrong expected size */
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/missing", dir);
    snprintf(p2, sizeof p2, "%s/wrongsize", dir);
    s3_xfer f[3] = {
        {.op = S3_XGET_FILE, .key = "run/none", .path = p1, .len = UINT64_MAX},
        {.op = S3_XGET_FILE, .key = keys[2], .path = p2, .len = len[2] + 1},
        {.op = S3_XPUT_BUF, .key = "run/fine", .buf = "ok", .len = 2},
    };
    rc = s3_run(cl, f, 3, NULL, NULL);
    cr_expect_eq(rc, S4KV_ENOENT);
    cr_expect_eq(f[0].rc, S4KV_ENOENT);
    cr_expect(strstr(f[0].err, "GET s3://bucket/run/none: HTTP 404 NoSuchKey"), "%s", f[0].err);
    cr_expect_eq(f[1].rc, S4KV_ECORRUPT, "%s", f[1].err);
    cr_expect_eq(f[2].rc, 0, "%s", f[2].err);
    cr_expect_neq(access(p1, F_OK), 0);
    cr_expect_neq(access(p2, F_OK), 0);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.tmp", p1);
    cr_expect_neq(access(tmp, F_OK), 0, "no temp file left after a failure");
    for (int i = 0; i < N; i++)
        free(data[i]);
    tu_rmtree_free(dir);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

/* ---- connections and retries */

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

Test(s3, sequential_ranged_gets_reuse_one_connection)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    s3_config c;
    s3_client *cl = client(&c, "bucket");
    char err[512];
    size_t n = 1 << 20;
    uint8_t *v = malloc(n);
    fill(v, n, 9);
    s3_client *writer = s3_client_new(&c, "bucket", err, sizeof err);
    cr_assert_eq(s3_put(writer, "db/seg", v, n, err, sizeof err), 0, "%s", err);
    s3_client_free(writer);
    double lat[50];
    uint64_t st = 5;
    for (int i = 0; i < 50; i++) {
        uint8_t buf[4096];
        size_t len = 1 + tu_rand(&st) % sizeof buf;
        uint64_t off = tu_rand(&st) % (n - len);
        double t0 = now_s();
        cr_assert_eq(s3_get_range(cl, "db/seg", off, buf, len, err, sizeof err), 0, "%s", err);
        lat[i] = now_s() - t0;
        cr_assert(memcmp(buf, v + off, len) == 0);
    }
    s3_stats stt;
    s3_client_stats(cl, &stt);
    cr_expect_eq(stt.connections, 1, "50 GETs, %llu connections",
                 (unsigned long long)stt.connections);
    cr_expect_eq(stt.requests, 50);
    qsort(lat, 50, sizeof *lat, cmp_dbl);
    cr_log_info("ranged GET over a reused connection: p50 %.2f ms, p90 %.2f ms, max %.2f ms",
                lat[25] * 1e3, lat[45] * 1e3, lat[49] * 1e3);
    free(v);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_s3_stop(&s);
}

/* A loopback port with nothing listening. */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    return ntohs(a.sin_port);
}

static s3_client *dead_client(s3_config *c)
{
    char ep[64], err[512];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", dead_port());
    setenv("AWS_ACCESS_KEY_ID", "K", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "secret-DO-NOT-PRINT", 1);
    setenv("S4KV_S3_RETRY_BASE_MS", "20", 1);
    cr_assert_eq(s3_config_from_env(c, NULL, ep, err, sizeof err), 0, "%s", err);
    s3_client *cl = s3_client_new(c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    return cl;
}

Test(s3, dead_endpoint_fails_after_max_attempts_naming_the_key)
{
    s3_config c;
    s3_client *cl = dead_client(&c);
    char err[512] = "";
    uint8_t *buf;
    size_t len;
    double t0 = now_s();
    int rc = s3_get(cl, "db/data_000001.s4kv", &buf, &len, err, sizeof err);
    double dt = now_s() - t0;
    cr_expect_eq(rc, S4KV_EREMOTE);
    cr_expect(strstr(err, "GET s3://bucket/db/data_000001.s4kv: curl error 7") &&
                  strstr(err, "after 3 attempts"), "%s", err);
    cr_expect_null(strstr(err, "DO-NOT-PRINT"));
    cr_expect_lt(dt, 2.0, "took %.2f s", dt);
    s3_stats st;
    s3_client_stats(cl, &st);
    cr_expect_eq(st.requests, 3);
    cr_expect_eq(st.retries, 2);
    cr_expect_eq(st.errors, 1);
    cr_log_info("dead endpoint: %s (%.0f ms)", err, dt * 1e3);
    /* s3_run fails each transfer the same way */
    s3_xfer x[2] = {{.op = S3_XPUT_BUF, .key = "a", .buf = "x", .len = 1},
                    {.op = S3_XPUT_BUF, .key = "b", .buf = "y", .len = 1}};
    cr_expect_eq(s3_run(cl, x, 2, NULL, NULL), S4KV_EREMOTE);
    cr_expect(strstr(x[1].err, "PUT s3://bucket/b: curl error 7") &&
                  strstr(x[1].err, "after 3 attempts"), "%s", x[1].err);
    s3_client_free(cl);
    s3_config_free(&c);
}

Test(s3, retry_budget_makes_a_dead_endpoint_fail_fast)
{
    s3_config c;
    s3_client *cl = dead_client(&c);
    s3_client_set_backoff(cl, 0, 0);
    char err[512] = "";
    uint8_t *buf;
    size_t len;
    /* 500 tokens at 5 per retry: 100 retries, i.e. 50 operations of 3 attempts */
    for (int i = 0; i < 50; i++) {
        cr_assert_eq(s3_get(cl, "k", &buf, &len, err, sizeof err), S4KV_EREMOTE);
        cr_assert(strstr(err, "after 3 attempts") && !strstr(err, "budget"), "%d: %s", i, err);
    }
    cr_assert_eq(s3_get(cl, "k", &buf, &len, err, sizeof err), S4KV_EREMOTE);
    cr_expect(strstr(err, "after 1 attempt; retry budget exhausted"), "%s", err);
    s3_stats st;
    s3_client_stats(cl, &st);
    cr_expect_eq(st.retries, 100);
    cr_expect_eq(st.requests, 151);
    s3_client_free(cl);
    s3_config_free(&c);
}

Test(s3, faults_are_retried_and_data_stays_identical)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    tu_proxy px;
    tu_proxy_start(&px, s.port, "rate=0.25,kinds=500+503+reset+truncate,seed=11");
    setenv("S4KV_S3_RETRY_BASE_MS", "5", 1);
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, px.endpoint, err, sizeof err), 0, "%s", err);
    c.max_attempts = 8;
    s3_client *cl = s3_client_new(&c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    enum { N = 40 };
    uint8_t *v[N];
    char key[N][32];
    for (int i = 0; i < N; i++) {
        v[i] = malloc(20000);
        fill(v[i], 20000, (uint64_t)i);
        snprintf(key[i], sizeof key[i], "f/%d", i);
        cr_assert_eq(s3_put(cl, key[i], v[i], 20000, err, sizeof err), 0, "%s", err);
    }
    for (int i = 0; i < N; i++) {
        uint8_t buf[5000];
        cr_assert_eq(s3_get_range(cl, key[i], 1000, buf, sizeof buf, err, sizeof err), 0, "%s",
                     err);
        cr_expect(memcmp(buf, v[i] + 1000, sizeof buf) == 0);
        uint8_t *all;
        size_t len;
        cr_assert_eq(s3_get(cl, key[i], &all, &len, err, sizeof err), 0, "%s", err);
        cr_expect(len == 20000 && memcmp(all, v[i], len) == 0);
        free(all);
    }
    s3_object *objs;
    size_t n;
    cr_assert_eq(s3_list(cl, "f/", &objs, &n, err, sizeof err), 0, "%s", err);
    cr_expect_eq(n, N);
    s3_objects_free(objs, n);
    s3_stats st;
    s3_client_stats(cl, &st);
    cr_expect_gt(st.retries, 5, "faults were met (%llu retries)", (unsigned long long)st.retries);
    cr_log_info("through the fault proxy: %llu requests, %llu retries, %llu connections",
                (unsigned long long)st.requests, (unsigned long long)st.retries,
                (unsigned long long)st.connections);
    for (int i = 0; i < N; i++)
        free(v[i]);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_proxy_stop(&px);
    tu_s3_stop(&s);
}

Test(s3, multipart_survives_faults_and_a_lost_completion_answer)
{
    tu_s3 s;
    tu_s3_start(&s, "bucket");
    /* every CompleteMultipartUpload answer is cut: S3 (here s3rver) has
     * completed the upload, the retry meets NoSuchUpload */
    tu_proxy px;
    tu_proxy_start(&px, s.port, "rate=1,kinds=truncate,methods=POST,match=uploadId=,max=1");
    setenv("S4KV_S3_RETRY_BASE_MS", "5", 1);
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, px.endpoint, err, sizeof err), 0, "%s", err);
    c.multipart_threshold = 5u << 20;
    c.part_size = 5u << 20;
    s3_client *cl = s3_client_new(&c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    size_t n = (12u << 20) + 1;
    uint8_t *v = malloc(n);
    fill(v, n, 3);
    cr_assert_eq(s3_put(cl, "mp/lost", v, n, err, sizeof err), 0, "%s", err);
    s3_stats st;
    s3_client_stats(cl, &st);
    cr_expect_geq(st.retries, 1, "the completion was retried");
    uint8_t *back;
    size_t blen;
    cr_assert_eq(s3_get(cl, "mp/lost", &back, &blen, err, sizeof err), 0, "%s", err);
    cr_expect(blen == n && memcmp(back, v, n) == 0);
    free(back);
    s3_client_free(cl);
    tu_proxy_stop(&px);

    /* faults on a third of all requests, parts included */
    tu_proxy_start(&px, s.port, "rate=0.33,kinds=500+503+reset+truncate,seed=5");
    free(c.endpoint);
    c.endpoint = strdup(px.endpoint);
    c.max_attempts = 10;
    cl = s3_client_new(&c, "bucket", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    cr_assert_eq(s3_put(cl, "mp/faulty", v, n, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s3_get(cl, "mp/faulty", &back, &blen, err, sizeof err), 0, "%s", err);
    cr_expect(blen == n && memcmp(back, v, n) == 0);
    free(back);
    s3_client_stats(cl, &st);
    cr_log_info("multipart through faults: %llu requests, %llu retries",
                (unsigned long long)st.requests, (unsigned long long)st.retries);
    free(v);
    s3_client_free(cl);
    s3_config_free(&c);
    tu_proxy_stop(&px);
    tu_s3_stop(&s);
}

/* ---- XML, no server */

Test(s3, xml_escape_and_delete_body)
{
    char *b = NULL;
    size_t l = 0, cap = 0;
    cr_assert_eq(s3xml_escape_append(&b, &l, &cap, "a&b<c>d\"e'f\tg\nh\ri"), 0);
    cr_expect_str_eq(b, "a&amp;b&lt;c&gt;d&quot;e&apos;f&#9;g&#10;h&#13;i");
    free(b);
    char *keys[] = {"plain", "x&<y>\"'", "line\nbreak\r"};
    size_t len;
    char *body = s3xml_delete_body(keys, 3, &len);
    cr_assert_not_null(body);
    cr_expect_eq(strlen(body), len);
    cr_expect(strstr(body, "<Quiet>true</Quiet><Object><Key>plain</Key></Object>"), "%s", body);
    cr_expect(strstr(body, "<Key>x&amp;&lt;y&gt;&quot;&apos;</Key>"), "%s", body);
    cr_expect(strstr(body, "<Key>line&#10;break&#13;</Key>"), "%s", body);
    free(body);
    char *etags[] = {"\"abc\"", "\"def\""};
    body = s3xml_complete_body(etags, 2, &len);
    cr_expect(strstr(body, "<Part><PartNumber>1</PartNumber><ETag>&quot;abc&quot;</ETag></Part>"
                           "<Part><PartNumber>2</PartNumber>"), "%s", body);
    free(body);
}

Test(s3, xml_key_ok)
{
    cr_expect(s3xml_key_ok("plain/key with space"));
    cr_expect(s3xml_key_ok("tab\tnl\ncr\r"));
    cr_expect(s3xml_key_ok("h\xc3\xa9llo \xf0\x9f\x98\x80"));
    cr_expect_not(s3xml_key_ok("ctl\x01"));
    cr_expect_not(s3xml_key_ok("esc\x1b"));
    cr_expect_not(s3xml_key_ok("bad utf8 \xff"));
    cr_expect_not(s3xml_key_ok("overlong \xc0\xaf"));
    cr_expect_not(s3xml_key_ok("surrogate \xed\xa0\x80"));
    cr_expect_not(s3xml_key_ok("cut \xe4\xb8"));
}

Test(s3, xml_parse_error_list_upload_delete)
{
    const char e[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>"
                     "<Message>The specified key does not exist.</Message><Key>a&amp;b</Key>"
                     "</Error>";
    char code[64], msg[128];
    cr_expect_eq(s3xml_parse_error(e, strlen(e), code, sizeof code, msg, sizeof msg), 1);
    cr_expect_str_eq(code, "NoSuchKey");
    cr_expect_str_eq(msg, "The specified key does not exist.");
    cr_expect_eq(s3xml_parse_error("<html>", 6, code, sizeof code, msg, sizeof msg), 0);
    cr_expect_str_eq(code, "");
    cr_expect_eq(s3xml_parse_error(NULL, 0, code, sizeof code, msg, sizeof msg), 0);

    const char l[] =
        "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        "<Name>b</Name><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
        "<NextContinuationToken>tok/+=</NextContinuationToken>"
        "<Contents><Key>a%20b+c%2Bd%0A</Key><LastModified>2023-01-02T03:04:05.000Z</LastModified>"
        "<ETag>&quot;0123&quot;</ETag><Size>42</Size></Contents>"
        "<Contents><Key>z</Key><Size>0</Size><ETag>\"x-2\"</ETag></Contents>"
        "</ListBucketResult>";
    s3_object *objs = NULL;
    size_t n = 0, cap = 0;
    int trunc = 0;
    char *tok = NULL, err[256];
    cr_assert_eq(s3xml_parse_list(l, strlen(l), &objs, &n, &cap, &trunc, &tok, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(n, 2);
    cr_expect_str_eq(objs[0].key, "a b c+d\n");
    cr_expect_eq(objs[0].size, 42);
    cr_expect_eq(objs[0].mtime, 1672628645);
    cr_expect_str_eq(objs[0].etag, "0123");
    cr_expect_str_eq(objs[1].etag, "x-2");
    cr_expect_eq(trunc, 1);
    cr_expect_str_eq(tok, "tok/+=");
    free(tok);
    const char bad[] = "<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents>"
                       "</ListBucketResult>";
    cr_expect_eq(s3xml_parse_list(bad, strlen(bad), &objs, &n, &cap, &trunc, &tok, err, sizeof err),
                 S4KV_ECORRUPT);
    cr_expect_eq(n, 2, "a failed page adds nothing");
    cr_expect_eq(s3xml_parse_list(e, strlen(e), &objs, &n, &cap, &trunc, &tok, err, sizeof err),
                 S4KV_ECORRUPT);
    cr_expect(strstr(err, "<Error>"), "%s", err);
    cr_expect_eq(s3xml_parse_list("<a><b>", 6, &objs, &n, &cap, &trunc, &tok, err, sizeof err),
                 S4KV_ECORRUPT);
    s3_objects_free(objs, n);

    const char u[] = "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
                     "<UploadId>VXBsb2FkIElE</UploadId></InitiateMultipartUploadResult>";
    char *id = NULL;
    cr_assert_eq(s3xml_parse_upload_id(u, strlen(u), &id, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(id, "VXBsb2FkIElE");
    free(id);
    cr_expect_eq(s3xml_parse_upload_id(e, strlen(e), &id, err, sizeof err), S4KV_ECORRUPT);

    const char d[] = "<DeleteResult><Deleted><Key>ok</Key></Deleted>"
                     "<Error><Key>k&lt;1</Key><Code>AccessDenied</Code><Message>Access Denied"
                     "</Message></Error><Error><Key>k2</Key><Code>InternalError</Code></Error>"
                     "</DeleteResult>";
    size_t nerr = 0;
    char key[64];
    cr_assert_eq(s3xml_parse_delete_result(d, strlen(d), &nerr, key, sizeof key, code, sizeof code,
                                           msg, sizeof msg, err, sizeof err), 0, "%s", err);
    cr_expect_eq(nerr, 2);
    cr_expect_str_eq(key, "k<1");
    cr_expect_str_eq(code, "AccessDenied");
    cr_expect_str_eq(msg, "Access Denied");
}
