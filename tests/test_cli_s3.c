/*
 * test_cli_s3.c - end-to-end tests of the `s4kv` program against S3 (suite
 * "cli_s3"): each test starts its own s3rver on loopback (tu_s3_start, which
 * exports AWS_ENDPOINT_URL_S3 and the credentials into this process's
 * environment, so the CLI children inherit them), runs the real binary and
 * checks stdout bytes, the stderr message and the exit status. Remote output
 * is compared byte for byte with the output of the same command on the local
 * database it was uploaded from.
 */
#include "format.h"
#include "s3util.h"
#include "util.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define URL "s3://bkt/p/"





/* Asserts exactly one line on stderr, starting with "s4kv: " and holding sub. */
static void expect_err1(tu_res *r, const char *sub, const char *what)
{
    cr_assert(strncmp(r->err, "s4kv: ", 6) == 0, "%s: stderr does not start with 's4kv: ': %s",
              what, r->err);
    cr_assert(strstr(r->err, sub), "%s: stderr lacks '%s': %s", what, sub, r->err);
    size_t n = strlen(r->err);
    cr_assert(n > 0 && r->err[n - 1] == '\n' && !memchr(r->err, '\n', n - 1),
              "%s: not exactly one line on stderr: %s", what, r->err);
}

static char *path_in(const char *tmp, const char *name)
{
    size_t n = strlen(tmp) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", tmp, name);
    return p;
}

/* n jsonl records "k00000".."k{n-1}" (sorted, so export gives them back
 * exactly) with random values: binary, printable, with NULs and newlines. */
static char *make_records(uint64_t seed, size_t n, size_t *len)
{
    char *text = NULL;
    FILE *m = open_memstream(&text, len);
    uint64_t s = seed;
    char err[256];
    for (size_t i = 0; i < n; i++) {
        char key[32];
        uint8_t val[700];
        int kl = snprintf(key, sizeof key, "k%05zu", i);
        size_t vl = tu_rand(&s) % 7 == 0 ? 0 : tu_rand(&s) % sizeof val;
        int kind = (int)(tu_rand(&s) % 3);
        for (size_t j = 0; j < vl; j++) {
            uint8_t c = (uint8_t)tu_rand(&s);
            val[j] = kind == 0 ? (uint8_t)(0x20 + c % 95) : kind == 1 ? (uint8_t)(c % 4) : c;
        }
        cr_assert_eq(fmt_write(m, FMT_JSONL, key, (size_t)kl, val, vl, err, sizeof err), 0,
                     "%s", err);
    }
    fclose(m);
    return text;
}

/* Imports n records into db (locally) and returns the jsonl text. */
static char *import_records(const char *db, uint64_t seed, size_t n, size_t *len)
{
    char *text = make_records(seed, n, len);
    tu_res r = RUNI(db, text, *len, "import", "--batch", "50");
    tu_expect(&r, 0, "", 0, "import");
    tu_res_free(&r);
    return text;
}

/* Asserts that `args` gives the same exit 0 and the same stdout bytes on
 * the local database db and remotely from S3 alone (-d missing). */
static void same_local_remote(const char *db, const char *missing, const char *what,
                              const char *a1, const char *a2, const char *a3)
{
    tu_res l = RUN(db, a1, a2, a3), r = RUN(missing, "--s3", URL, a1, a2, a3);
    tu_expect(&l, 0, NULL, 0, what);
    tu_expect(&r, 0, l.out, l.outlen, what);
    cr_assert(l.outlen > 0, "%s: empty output", what);
    tu_res_free(&l);
    tu_res_free(&r);
}

/* Moves the test process (and so its CLI children) into a fresh directory
 * without ./s4kv-data, and forgets $S4KV_DIR and $S4KV_S3. */
static char *fresh_cwd(void)
{
    char *bin = realpath(tu_s4kv_bin(), NULL);
    cr_assert(bin, "no s4kv binary at %s", tu_s4kv_bin());
    setenv("S4KV_BIN", bin, 1);
    free(bin);
    char *cwd = tu_tmpdir("cli-s3-cwd");
    cr_assert_eq(chdir(cwd), 0);
    unsetenv("S4KV_DIR");
    unsetenv("S4KV_S3");
    return cwd;
}

/* ---- upload and remote reads ----------------------------------------------- */

Test(cli_s3, upload_then_remote_reads_match_local)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *cwd = fresh_cwd();
    char *tmp = tu_tmpdir("cli-s3");
    char *db = path_in(tmp, "db"), *missing = path_in(tmp, "missing");
    size_t len;
    char *text = import_records(db, 1, 300, &len);

    tu_res r = RUN(db, "--s3", URL, "upload");
    tu_expect(&r, 0, "", 0, "first upload");
    cr_assert(strstr(r.err, "uploaded ") && strstr(r.err, "published generation 1"),
              "upload summary: %s", r.err);
    cr_assert(strstr(r.err, "requests") && strstr(r.err, "MB/s"), "upload summary: %s", r.err);
    tu_res_free(&r);
    r = RUN(db, "upload", "--s3", URL); /* the option after the command, too */
    tu_expect(&r, 0, "", 0, "second upload");
    cr_assert(strstr(r.err, "nothing to upload"), "second upload: %s", r.err);
    tu_res_free(&r);

    /* a binary value with NUL bytes, put through stdin with --s3 (uploads) */
    static const char bin[] = "\0a\0\xff\n\r\tz\0";
    r = RUNI(db, bin, sizeof bin, "--s3", URL, "put", "bin", "-");
    tu_expect(&r, 0, "", 0, "put --s3 -");
    tu_res_free(&r);

    /* get with no -d at all: the cwd holds no s4kv-data, so S3 alone */
    r = RUN(NULL, "--s3", URL, "get", "bin");
    tu_expect(&r, 0, bin, sizeof bin, "remote get of the binary value, no -d");
    tu_res_free(&r);
    /* $S4KV_S3 instead of --s3, and a -d naming a missing directory */
    setenv("S4KV_S3", URL, 1);
    r = RUN(missing, "get", "k00007");
    tu_res l = RUN(db, "get", "k00007");
    tu_expect(&l, 0, NULL, 0, "local get");
    tu_expect(&r, 0, l.out, l.outlen, "remote get through $S4KV_S3");
    tu_res_free(&l);
    tu_res_free(&r);
    unsetenv("S4KV_S3");
    struct stat st;
    cr_assert(stat(missing, &st) != 0, "a remote read created %s", missing);
    cr_assert(stat("s4kv-data", &st) != 0, "a remote read created ./s4kv-data");

    r = RUN(NULL, "--s3", URL, "get", "absent");
    tu_expect(&r, 1, "", 0, "remote get of an absent key");
    expect_err1(&r, "'absent' not found", "remote get of an absent key");
    tu_res_free(&r);

    same_local_remote(db, missing, "keys", "keys", NULL, NULL);
    same_local_remote(db, missing, "keys --prefix", "keys", "--prefix", "k001");
    same_local_remote(db, missing, "scan", "scan", NULL, NULL);
    same_local_remote(db, missing, "scan --json", "scan", "--json", NULL);
    same_local_remote(db, missing, "export", "export", NULL, NULL);
    same_local_remote(db, missing, "export tsv", "export", "--format", "tsv");

    r = RUN(missing, "--s3", URL, "verify");
    tu_expect(&r, 0, NULL, 0, "remote verify");
    cr_assert(strstr(r.out, "result:           ok"), "remote verify: %s", r.out);
    cr_assert(strstr(r.err, "verified " URL), "remote verify names the URL: %s", r.err);
    tu_res_free(&r);

    r = RUN(missing, "--s3", URL, "stats", "--json");
    tu_expect(&r, 0, NULL, 0, "remote stats --json");
    json_error_t je;
    json_t *j = json_loads(r.out, 0, &je);
    cr_assert(j, "stats --json is not JSON: %s (%s)", r.out, je.text);
    cr_assert_eq(json_integer_value(json_object_get(j, "keys")), 301);
    cr_assert(json_is_true(json_object_get(j, "s3_remote_only")), "%s", r.out);
    cr_assert_gt(json_integer_value(json_object_get(j, "s3_requests")), 0, "%s", r.out);
    cr_assert(json_object_get(j, "s3_retries") && json_object_get(j, "s3_connections"),
              "%s", r.out);
    json_decref(j);
    tu_res_free(&r);
    r = RUN(missing, "--s3", URL, "stats");
    tu_expect(&r, 0, NULL, 0, "remote stats");
    cr_assert(strstr(r.out, "s3 requests:") && strstr(r.out, "s3:             " URL),
              "remote stats: %s", r.out);
    tu_res_free(&r);

    /* rebuild-index without a local database: in memory, nothing written */
    r = RUN(missing, "--s3", URL, "rebuild-index");
    tu_expect(&r, 0, "", 0, "remote rebuild-index");
    cr_assert(strstr(r.err, "in memory") && strstr(r.err, "301 keys"), "%s", r.err);
    tu_res_free(&r);
    cr_assert(stat(missing, &st) != 0, "remote rebuild-index created %s", missing);

    /* with a local database, --s3 reads go through it (same bytes) */
    r = RUN(db, "--s3", URL, "export");
    l = RUN(db, "export");
    tu_expect(&r, 0, l.out, l.outlen, "export --s3 with a local database");
    tu_res_free(&l);
    tu_res_free(&r);

    free(text);
    free(db);
    free(missing);
    tu_rmtree_free(tmp);
    tu_rmtree_free(cwd);
    tu_s3_stop(&s);
}

/* A remote get costs exactly one request more than opening the database
 * (MANIFEST and checkpoint): the ranged GET of the record. Counted by the
 * fault proxy (no faults) in front of s3rver, reached through --endpoint. */
Test(cli_s3, remote_get_is_one_ranged_get)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *cwd = fresh_cwd();
    char *tmp = tu_tmpdir("cli-s3");
    char *db = path_in(tmp, "db");
    size_t len;
    char *text = import_records(db, 6, 300, &len);
    tu_res r = RUN(db, "--s3", URL, "upload");
    tu_expect(&r, 0, "", 0, "upload");
    tu_res_free(&r);
    tu_proxy p;
    tu_proxy_start(&p, s.port, "rate=0");

    long n0 = tu_proxy_stat(&p, "requests");
    r = RUN(NULL, "--s3", URL, "--endpoint", p.endpoint, "stats");
    tu_expect(&r, 0, NULL, 0, "remote stats through the proxy");
    tu_res_free(&r);
    long n1 = tu_proxy_stat(&p, "requests");
    tu_res l = RUN(db, "get", "k00150");
    r = RUN(NULL, "get", "k00150", "--endpoint", p.endpoint, "--s3", URL);
    tu_expect(&l, 0, NULL, 0, "local get");
    tu_expect(&r, 0, l.out, l.outlen, "remote get through the proxy");
    tu_res_free(&l);
    tu_res_free(&r);
    long n2 = tu_proxy_stat(&p, "requests");
    cr_assert(n1 - n0 >= 1, "opening read nothing through --endpoint (%ld requests)", n1 - n0);
    cr_assert_eq(n2 - n1, n1 - n0 + 1,
                 "a remote get sent %ld requests; opening alone sends %ld (want one more)",
                 n2 - n1, n1 - n0);

    tu_proxy_stop(&p);
    free(text);
    free(db);
    tu_rmtree_free(tmp);
    tu_rmtree_free(cwd);
    tu_s3_stop(&s);
}

/* Through a proxy that fails a third of the requests (500, 503 SlowDown,
 * resets, truncated bodies), upload and download still finish, the summary
 * counts the retries, and the data is identical; when every request fails,
 * the error is one line naming the operation, exit 3. */
Test(cli_s3, faults_are_retried_or_reported)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *cwd = fresh_cwd();
    char *tmp = tu_tmpdir("cli-s3");
    char *db = path_in(tmp, "db"), *db2 = path_in(tmp, "db2");
    size_t len;
    char *text = import_records(db, 7, 300, &len);
    tu_proxy p;
    tu_proxy_start(&p, s.port, "rate=0.3,kinds=500+503+reset+truncate,seed=11");
    setenv("AWS_MAX_ATTEMPTS", "10", 1);
    tu_res r = RUN(db, "--s3", URL, "--endpoint", p.endpoint, "upload");
    tu_expect(&r, 0, "", 0, "upload through faults");
    cr_assert(strstr(r.err, "published generation 1"), "%s", r.err);
    tu_res_free(&r);
    r = RUN(db2, "--s3", URL, "--endpoint", p.endpoint, "download");
    tu_expect(&r, 0, "", 0, "download through faults");
    tu_res_free(&r);
    cr_assert_gt(tu_proxy_stat(&p, "faults"), 0, "the proxy faulted nothing");
    r = RUN(db2, "export");
    tu_expect(&r, 0, text, len, "export of the download made through faults");
    tu_res_free(&r);
    tu_proxy_stop(&p);
    unsetenv("AWS_MAX_ATTEMPTS");

    tu_proxy_start(&p, s.port, "rate=1,kinds=503");
    r = RUN(NULL, "--s3", URL, "--endpoint", p.endpoint, "get", "k00001");
    tu_expect(&r, 3, "", 0, "get when every request fails");
    expect_err1(&r, "MANIFEST", "get when every request fails");
    expect_err1(&r, "503", "get when every request fails");
    tu_res_free(&r);
    r = RUN(db, "--s3", URL, "--endpoint", p.endpoint, "upload");
    tu_expect(&r, 3, "", 0, "upload when every request fails");
    expect_err1(&r, "503", "upload when every request fails");
    tu_res_free(&r);
    tu_proxy_stop(&p);

    free(text);
    free(db);
    free(db2);
    tu_rmtree_free(tmp);
    tu_rmtree_free(cwd);
    tu_s3_stop(&s);
}

/* ---- download ----------------------------------------------------------- */

Test(cli_s3, download_verify_export_identical)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *cwd = fresh_cwd();
    char *tmp = tu_tmpdir("cli-s3");
    char *db = path_in(tmp, "db"), *db2 = path_in(tmp, "db2");
    size_t len;
    char *text = import_records(db, 2, 400, &len);
    tu_res r = RUN(db, "--s3", URL, "upload");
    tu_expect(&r, 0, "", 0, "upload");
    tu_res_free(&r);

    r = RUN(db2, "--s3", URL, "download");
    tu_expect(&r, 0, "", 0, "download");
    cr_assert(strstr(r.err, "downloaded ") && strstr(r.err, "generation 1") &&
              strstr(r.err, "MB/s"), "download summary: %s", r.err);
    tu_res_free(&r);
    r = RUN(db2, "verify");
    tu_expect(&r, 0, NULL, 0, "local verify of the download");
    tu_res_free(&r);
    r = RUN(db2, "export");
    tu_expect(&r, 0, text, len, "export of the download");
    tu_res_free(&r);
    r = RUN(db2, "--s3", URL, "download");
    tu_expect(&r, 0, "", 0, "second download");
    cr_assert(strstr(r.err, "nothing to download"), "second download: %s", r.err);
    tu_res_free(&r);

    free(text);
    free(db);
    free(db2);
    tu_rmtree_free(tmp);
    tu_rmtree_free(cwd);
    tu_s3_stop(&s);
}

/* A second, independent S3 client (the AWS SDK for JavaScript) lists and
 * downloads the prefix s4kv wrote and compares it with a download by s4kv. */
Test(cli_s3, aws_sdk_reads_what_s4kv_wrote)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    /* tests/sdk_check.mjs, found before fresh_cwd leaves the source tree */
    const char *td = getenv("S4KV_TESTS_DIR");
    char *tests = realpath(td && *td ? td : "tests", NULL);
    cr_assert(tests, "no tests directory (set S4KV_TESTS_DIR)");
    char *script = path_in(tests, "sdk_check.mjs");
    free(tests);
    char *cwd = fresh_cwd();
    char *tmp = tu_tmpdir("cli-s3");
    char *db = path_in(tmp, "db"), *db2 = path_in(tmp, "db2");
    size_t len;
    char *text = import_records(db, 3, 300, &len);
    tu_res r = RUN(db, "--s3", URL, "upload");
    tu_expect(&r, 0, "", 0, "upload");
    tu_res_free(&r);
    r = RUN(db2, "--s3", URL, "download");
    tu_expect(&r, 0, "", 0, "download");
    tu_res_free(&r);

    /* download leaves its lock file, which is no object */
    char *lock = path_in(db2, "LOCK");
    unlink(lock);
    free(lock);
    struct stat st;
    cr_assert(stat(script, &st) == 0, "%s is missing", script);
    char *argv[] = { "/usr/bin/env", "node", script, "--endpoint", s.endpoint, "--bucket",
                     "bkt", "--prefix", "p/", "--compare", db2, NULL };
    r.rc = tu_run(argv, NULL, 0, &r.out, &r.outlen, &r.err);
    cr_assert_eq(r.rc, 0, "sdk_check.mjs: exit %d\nstdout: %s\nstderr: %s", r.rc, r.out, r.err);
    cr_assert(strstr(r.out, "identical"), "sdk_check.mjs: %s", r.out);
    tu_res_free(&r);
    free(script);

    free(text);
    free(db);
    free(db2);
    tu_rmtree_free(tmp);
    tu_rmtree_free(cwd);
    tu_s3_stop(&s);
}

/* ---- writes with --s3 ---------------------------------------------------- */

Test(cli_s3, put_on_an_empty_dir_downloads_first)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *cwd = fresh_cwd();
    char *tmp = tu_tmpdir("cli-s3");
    char *db = path_in(tmp, "db"), *db2 = path_in(tmp, "db2"), *db3 = path_in(tmp, "db3");
    size_t len;
    char *text = import_records(db, 4, 200, &len);
    tu_res r = RUN(db, "--s3", URL, "upload");
    tu_expect(&r, 0, "", 0, "upload");
    tu_res_free(&r);

    /* db2 does not exist: the put downloads S3's database first */
    r = RUN(db2, "--s3", URL, "put", "newkey", "newvalue");
    tu_expect(&r, 0, "", 0, "put --s3 on a missing directory");
    cr_assert(strstr(r.err, "holds no database") && strstr(r.err, "downloaded "),
              "put --s3 says it downloaded first: %s", r.err);
    tu_res_free(&r);
    r = RUN(NULL, "--s3", URL, "get", "newkey");
    tu_expect(&r, 0, "newvalue", 8, "remote get of the new key");
    tu_res_free(&r);
    tu_res l = RUN(db, "get", "k00123");
    r = RUN(NULL, "--s3", URL, "get", "k00123");
    tu_expect(&l, 0, NULL, 0, "local get of an old key");
    tu_expect(&r, 0, l.out, l.outlen, "remote get of an old key after the put");
    tu_res_free(&l);
    tu_res_free(&r);
    r = RUN(NULL, "--s3", URL, "keys");
    tu_expect(&r, 0, NULL, 0, "remote keys");
    cr_assert_eq(r.outlen, 201 * 7, "201 keys of 6 bytes and a newline: %zu", r.outlen);
    tu_res_free(&r);

    /* delete --s3 and import --s3 upload too */
    r = RUN(db2, "--s3", URL, "delete", "k00000", "k00001");
    tu_expect(&r, 0, "", 0, "delete --s3");
    tu_res_free(&r);
    static const char more[] = "{\"key\": \"imported\", \"value\": \"yes\"}\n";
    r = RUNI(db2, more, sizeof more - 1, "--s3", URL, "import");
    tu_expect(&r, 0, "", 0, "import --s3");
    cr_assert(strstr(r.err, "imported 1 record") && strstr(r.err, "published generation"),
              "import --s3 summary: %s", r.err);
    tu_res_free(&r);
    r = RUN(NULL, "--s3", URL, "get", "k00000");
    tu_expect(&r, 1, "", 0, "remote get of a key deleted with --s3");
    tu_res_free(&r);
    r = RUN(NULL, "--s3", URL, "get", "imported");
    tu_expect(&r, 0, "yes", 3, "remote get of a key imported with --s3");
    tu_res_free(&r);

    /* a different database never goes over an existing one */
    r = RUN(db3, "put", "other", "db");
    tu_expect(&r, 0, "", 0, "put into a third, unrelated database");
    tu_res_free(&r);
    r = RUN(db3, "--s3", URL, "upload");
    tu_expect(&r, 3, "", 0, "upload of a different database");
    expect_err1(&r, "different database", "upload of a different database");
    tu_res_free(&r);
    r = RUN(db3, "--s3", URL, "put", "other2", "x");
    tu_expect(&r, 3, "", 0, "put --s3 into a different database");
    expect_err1(&r, "different database", "put --s3 into a different database");
    tu_res_free(&r);
    r = RUN(NULL, "--s3", URL, "get", "newkey");
    tu_expect(&r, 0, "newvalue", 8, "the S3 database is unchanged");
    tu_res_free(&r);

    free(text);
    free(db);
    free(db2);
    free(db3);
    tu_rmtree_free(tmp);
    tu_rmtree_free(cwd);
    tu_s3_stop(&s);
}

Test(cli_s3, compact_then_remote_reads)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *cwd = fresh_cwd();
    char *tmp = tu_tmpdir("cli-s3");
    char *db = path_in(tmp, "db"), *missing = path_in(tmp, "missing");
    size_t len;
    char *text = import_records(db, 5, 300, &len);
    tu_res r = RUN(db, "--s3", URL, "upload");
    tu_expect(&r, 0, "", 0, "upload");
    tu_res_free(&r);
    /* overwrite and delete a tenth of the keys, with --s3 */
    for (int i = 0; i < 300; i += 10) {
        char key[16];
        snprintf(key, sizeof key, "k%05d", i);
        r = i % 20 ? RUN(db, "--s3", URL, "delete", key) : RUN(db, "--s3", URL, "put", key, "new");
        tu_expect(&r, 0, "", 0, key);
        tu_res_free(&r);
    }
    r = RUN(db, "--s3", URL, "compact");
    tu_expect(&r, 0, "", 0, "compact --s3");
    cr_assert(strstr(r.err, "compacted ") && strstr(r.err, "published generation"),
              "compact --s3 summary: %s", r.err);
    tu_res_free(&r);
    same_local_remote(db, missing, "export after compact", "export", NULL, NULL);
    r = RUN(missing, "--s3", URL, "get", "k00010");
    tu_expect(&r, 1, "", 0, "remote get of a deleted key after compact");
    tu_res_free(&r);
    r = RUN(missing, "--s3", URL, "get", "k00020");
    tu_expect(&r, 0, "new", 3, "remote get of an overwritten key after compact");
    tu_res_free(&r);
    r = RUN(missing, "--s3", URL, "verify");
    tu_expect(&r, 0, NULL, 0, "remote verify after compact");
    tu_res_free(&r);

    /* the next compaction deletes what the first one dropped (default
     * retention), and reads stay correct */
    r = RUN(db, "--s3", URL, "put", "after", "compaction");
    tu_expect(&r, 0, "", 0, "put after compact");
    tu_res_free(&r);
    r = RUN(db, "--s3", URL, "compact");
    tu_expect(&r, 0, "", 0, "second compact --s3");
    cr_assert(strstr(r.err, "published generation") && !strstr(r.err, ", 0 deleted"),
              "the second compaction deletes the objects the first dropped: %s", r.err);
    tu_res_free(&r);
    same_local_remote(db, missing, "export after the second compact", "export", NULL, NULL);
    r = RUN(missing, "--s3", URL, "get", "after");
    tu_expect(&r, 0, "compaction", 10, "remote get after the second compact");
    tu_res_free(&r);

    /* compact --s3 on a missing directory downloads first */
    char *db2 = path_in(tmp, "db2");
    r = RUN(db2, "--s3", URL, "compact");
    tu_expect(&r, 0, "", 0, "compact --s3 on a missing directory");
    cr_assert(strstr(r.err, "holds no database"), "%s", r.err);
    tu_res_free(&r);
    same_local_remote(db2, missing, "export after compact of a download", "export", NULL,
                      NULL);

    free(text);
    free(db);
    free(db2);
    free(missing);
    tu_rmtree_free(tmp);
    tu_rmtree_free(cwd);
    tu_s3_stop(&s);
}

/* ---- errors -------------------------------------------------------------- */

Test(cli_s3, configuration_errors_are_one_line_exit_3)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *cwd = fresh_cwd();
    char *tmp = tu_tmpdir("cli-s3");
    char *db = path_in(tmp, "db");
    tu_res r = RUN(db, "put", "k", "v");
    tu_expect(&r, 0, "", 0, "put");
    tu_res_free(&r);

    /* malformed URLs */
    const char *bad[] = { "http://x", "s3://", "s3:///p/", "bkt/p/", "s3://B_ad/p/" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = RUN(NULL, "--s3", bad[i], "get", "k");
        tu_expect(&r, 3, "", 0, bad[i]);
        expect_err1(&r, "s3://", bad[i]);
        tu_res_free(&r);
        r = RUN(db, "--s3", bad[i], "upload");
        tu_expect(&r, 3, "", 0, bad[i]);
        expect_err1(&r, "S3 URL", bad[i]);
        tu_res_free(&r);
    }

    /* a prefix without a database */
    r = RUN(NULL, "--s3", "s3://bkt/nothing/", "get", "k");
    tu_expect(&r, 3, "", 0, "get under a missing prefix");
    expect_err1(&r, "no database at s3://bkt/nothing/", "get under a missing prefix");
    tu_res_free(&r);
    r = RUN(NULL, "--s3", "s3://bkt/nothing/", "keys");
    tu_expect(&r, 3, "", 0, "keys under a missing prefix");
    expect_err1(&r, "no database at s3://bkt/nothing/", "keys under a missing prefix");
    tu_res_free(&r);
    char *db2 = path_in(tmp, "db2");
    r = RUN(db2, "--s3", "s3://bkt/nothing/", "download");
    tu_expect(&r, 3, "", 0, "download of a missing prefix");
    expect_err1(&r, "no database at s3://bkt/nothing/", "download of a missing prefix");
    tu_res_free(&r);
    r = RUN(db2, "--s3", "s3://bkt/nothing/", "compact");
    tu_expect(&r, 3, "", 0, "compact with no database anywhere");
    expect_err1(&r, "no database at", "compact with no database anywhere");
    tu_res_free(&r);
    /* a missing bucket */
    r = RUN(NULL, "--s3", "s3://nosuchbucket/p/", "get", "k");
    tu_expect(&r, 3, "", 0, "get from a missing bucket");
    expect_err1(&r, "nosuchbucket", "get from a missing bucket");
    tu_res_free(&r);

    /* an unknown profile */
    r = RUN(NULL, "--s3", URL, "--profile", "nosuchprofile", "get", "k");
    tu_expect(&r, 3, "", 0, "unknown --profile");
    expect_err1(&r, "'nosuchprofile'", "unknown --profile");
    tu_res_free(&r);
    setenv("AWS_PROFILE", "envprofile", 1);
    r = RUN(NULL, "--s3", URL, "get", "k");
    tu_expect(&r, 3, "", 0, "unknown AWS_PROFILE");
    expect_err1(&r, "'envprofile'", "unknown AWS_PROFILE");
    tu_res_free(&r);
    unsetenv("AWS_PROFILE");

    /* no credentials anywhere */
    char *creds = path_in(tmp, "credentials"), *conf = path_in(tmp, "config");
    cr_assert_eq(tu_write_file(creds, "", 0), 0);
    cr_assert_eq(tu_write_file(conf, "", 0), 0);
    setenv("AWS_SHARED_CREDENTIALS_FILE", creds, 1);
    setenv("AWS_CONFIG_FILE", conf, 1);
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    unsetenv("AWS_SESSION_TOKEN");
    unsetenv("AWS_PROFILE");
    unsetenv("AWS_DEFAULT_PROFILE");
    r = RUN(NULL, "--s3", URL, "get", "k");
    tu_expect(&r, 3, "", 0, "missing credentials");
    expect_err1(&r, "AWS_ACCESS_KEY_ID", "missing credentials");
    expect_err1(&r, "AWS_SECRET_ACCESS_KEY", "missing credentials");
    tu_res_free(&r);
    r = RUN(db, "--s3", URL, "upload");
    tu_expect(&r, 3, "", 0, "upload without credentials");
    expect_err1(&r, "AWS_ACCESS_KEY_ID", "upload without credentials");
    tu_res_free(&r);
    setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
    r = RUN(NULL, "--s3", URL, "get", "k");
    tu_expect(&r, 3, "", 0, "half the credentials");
    expect_err1(&r, "AWS_SECRET_ACCESS_KEY", "half the credentials");
    tu_res_free(&r);

    /* credentials from a profile work, and secrets never show in errors */
    static const char prof[] = "[ci]\naws_access_key_id = S3RVER\n"
                               "aws_secret_access_key = TOPSECRETVALUE\n";
    unsetenv("AWS_ACCESS_KEY_ID");
    cr_assert_eq(tu_write_file(creds, prof, sizeof prof - 1), 0);
    r = RUN(db, "--s3", URL, "--profile", "ci", "upload");
    tu_expect(&r, 0, "", 0, "upload with --profile");
    tu_res_free(&r);
    r = RUN(NULL, "--s3", URL, "--profile", "ci", "get", "nope");
    tu_expect(&r, 1, "", 0, "remote get with --profile");
    cr_assert(!strstr(r.err, "TOPSECRET"), "a secret in a message: %s", r.err);
    tu_res_free(&r);
    r = RUN(NULL, "--s3", "s3://nosuchbucket/x/", "--profile", "ci", "keys");
    tu_expect(&r, 3, "", 0, "keys of a missing bucket with --profile");
    cr_assert(!strstr(r.err, "TOPSECRET"), "a secret in a message: %s", r.err);
    tu_res_free(&r);

    free(creds);
    free(conf);
    free(db);
    free(db2);
    tu_rmtree_free(tmp);
    tu_rmtree_free(cwd);
    tu_s3_stop(&s);
}

Test(cli_s3, usage_errors_exit_2)
{
    char *cwd = fresh_cwd();
    struct { const char *a[6]; const char *msg; } cases[] = {
        { { "upload" }, "--s3" },
        { { "download" }, "--s3" },
        { { "--s3", "", "get", "k" }, "empty" },
        { { "get", "k", "--s3" }, "needs a value" },
        { { "--s3", URL, "--retention", "soon", "upload" }, "--retention" },
        { { "--s3", URL, "--retention", "10y", "upload" }, "--retention" },
        { { "--s3", URL, "upload", "--retention", "-1" }, "--retention" },
        { { "--s3", URL, "--parallel", "0", "upload" }, "--parallel" },
        { { "--s3", URL, "download", "--parallel", "1000" }, "--parallel" },
        { { "--s3", URL, "upload", "extra" }, "too many arguments" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[10];
        int n = 0;
        argv[n++] = (char *)tu_s4kv_bin();
        for (int j = 0; j < 6 && cases[i].a[j]; j++)
            argv[n++] = (char *)cases[i].a[j];
        argv[n] = NULL;
        tu_res r;
        r.rc = tu_run(argv, NULL, 0, &r.out, &r.outlen, &r.err);
        cr_assert_eq(r.rc, 2, "case %zu: exit %d: %s", i, r.rc, r.err);
        expect_err1(&r, cases[i].msg, "usage error");
        tu_res_free(&r);
    }
    struct stat st;
    cr_assert(stat("s4kv-data", &st) != 0, "a usage error created ./s4kv-data");
    tu_rmtree_free(cwd);
}

Test(cli_s3, help_documents_s3)
{
    tu_res r = RUN(NULL, "--help");
    tu_expect(&r, 0, NULL, 0, "--help");
    const char *want[] = { "upload", "download", "--s3 URL", "$S4KV_S3", "--endpoint URL",
                           "--profile NAME", "--no-verify-tls", "--retention DURATION",
                           "--parallel N", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                           "AWS_SESSION_TOKEN", "AWS_PROFILE", "~/.aws/credentials",
                           "~/.aws/config", "AWS_REGION", "AWS_DEFAULT_REGION",
                           "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE",
                           "malformed s3:// URL" };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(r.out, want[i]), "--help lacks '%s'", want[i]);
    tu_res_free(&r);
    const char *cmds[] = { "upload", "download" };
    for (size_t i = 0; i < 2; i++) {
        r = RUN(NULL, cmds[i], "--help");
        tu_expect(&r, 0, NULL, 0, cmds[i]);
        cr_assert(strstr(r.out, "usage: s4kv [-d DIR] --s3 URL "), "%s", r.out);
        cr_assert(strstr(r.out, "Exit status"), "%s", r.out);
        tu_res_free(&r);
    }
}
