/*
 * test_cli.c - end-to-end tests of the `s4kv` program (suite "cli"): each
 * test runs the real binary (tu_s4kv_bin) on a fresh temporary directory and
 * checks stdout bytes, the stderr message and the exit status.
 */
#include "format.h"
#include "util.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>





/* Asserts a one-line error message starting with "s4kv: " that contains sub. */
static void expect_err(tu_res *r, const char *sub, const char *what)
{
    cr_assert(strncmp(r->err, "s4kv: ", 6) == 0, "%s: stderr does not start with 's4kv: ': %s",
              what, r->err);
    cr_assert(strstr(r->err, sub), "%s: stderr lacks '%s': %s", what, sub, r->err);
}

static char *db_path(const char *tmp, const char *name)
{
    size_t n = strlen(tmp) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", tmp, name);
    return p;
}

/* Puts key -> value (binary) through stdin. */
static void put_bin(const char *db, const char *key, const void *val, size_t vlen)
{
    tu_res r = RUNI(db, val, vlen, "put", key, "-");
    tu_expect(&r, 0, NULL, 0, "put -");
    tu_res_free(&r);
}

/* Random test records with unique, non-empty keys, written with fmt_write
 * in key order (so the text is exactly what export writes). */
static char *make_records(fmt_format f, uint64_t seed, size_t n, size_t *len)
{
    char *text = NULL;
    FILE *m = open_memstream(&text, len);
    uint64_t s = seed;
    char err[256];
    for (size_t i = 0; i < n; i++) {
        uint8_t key[64], val[600];
        /* "k%05zu" keeps keys unique and sorted; a random binary tail follows */
        int kl = snprintf((char *)key, sizeof key, "k%05zu", i);
        size_t extra = tu_rand(&s) % 8;
        for (size_t j = 0; j < extra; j++) {
            uint8_t c = (uint8_t)tu_rand(&s);
            key[kl++] = (f == FMT_NUL && c == 0) ? 0x80 : c;
        }
        size_t vl = tu_rand(&s) % 5 == 0 ? 0 : tu_rand(&s) % sizeof val;
        int kind = (int)(tu_rand(&s) % 3);
        for (size_t j = 0; j < vl; j++) {
            uint8_t c = (uint8_t)tu_rand(&s);
            if (kind == 0)
                c = (uint8_t)(0x20 + c % 95);
            else if (kind == 1 && c >= 0x80)
                c = '\n';
            if (f == FMT_NUL && c == 0)
                c = 1;
            val[j] = c;
        }
        cr_assert_eq(fmt_write(m, f, key, (size_t)kl, val, vl, err, sizeof err), 0, "%s", err);
    }
    fclose(m);
    return text;
}

static const char *FORMATS[] = { "jsonl", "tsv", "nul" };

/* ---- put, get, delete --------------------------------------------------- */

Test(cli, put_get_delete)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    tu_res r = RUN(db, "put", "alpha", "one");
    tu_expect(&r, 0, "", 0, "put");
    tu_res_free(&r);
    r = RUN(db, "get", "alpha");
    tu_expect(&r, 0, "one", 3, "get");
    tu_res_free(&r);
    r = RUN(db, "put", "alpha", "two");
    tu_res_free(&r);
    r = RUN(db, "get", "alpha");
    tu_expect(&r, 0, "two", 3, "get after overwrite");
    tu_res_free(&r);

    r = RUN(db, "get", "missing");
    tu_expect(&r, 1, "", 0, "get of an absent key");
    expect_err(&r, "'missing'", "get of an absent key");
    expect_err(&r, "not found", "get of an absent key");
    tu_res_free(&r);

    r = RUN(db, "put", "beta", "b");
    tu_res_free(&r);
    r = RUN(db, "put", "gamma", "g");
    tu_res_free(&r);
    r = RUN(db, "delete", "alpha", "beta", "never-there");
    tu_expect(&r, 0, "", 0, "delete of present and absent keys");
    tu_res_free(&r);
    r = RUN(db, "get", "alpha");
    tu_expect(&r, 1, "", 0, "get after delete");
    tu_res_free(&r);
    r = RUN(db, "keys");
    tu_expect(&r, 0, "gamma\n", 6, "keys after delete");
    tu_res_free(&r);
    r = RUN(db, "delete", "nothing");
    tu_expect(&r, 0, "", 0, "delete of an absent key");
    cr_assert_str_eq(r.err, "");
    tu_res_free(&r);

    /* keys that look like options, after -- */
    r = RUNI(db, "-", 1, "put", "--", "-dash", "-");
    tu_expect(&r, 0, "", 0, "put -- -dash - (value '-' on stdin)");
    tu_res_free(&r);
    r = RUN(db, "get", "--", "-dash");
    tu_expect(&r, 0, "-", 1, "a literal '-' value after --");
    tu_res_free(&r);
    free(db);
    tu_rmtree_free(tmp);
}

Test(cli, binary_values_through_stdin)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    put_bin(db, "all-bytes", all, sizeof all);
    size_t big = 300 * 1024;
    uint8_t *rnd = malloc(big);
    uint64_t s = 42;
    for (size_t i = 0; i < big; i++)
        rnd[i] = (uint8_t)tu_rand(&s);
    put_bin(db, "random", rnd, big);
    put_bin(db, "empty", "", 0);

    tu_res r = RUN(db, "get", "all-bytes");
    tu_expect(&r, 0, (const char *)all, sizeof all, "all 256 byte values");
    tu_res_free(&r);
    r = RUN(db, "get", "random");
    tu_expect(&r, 0, (const char *)rnd, big, "300 KiB of random bytes");
    tu_res_free(&r);
    r = RUN(db, "get", "empty");
    tu_expect(&r, 0, "", 0, "empty value");
    tu_res_free(&r);
    free(rnd);
    free(db);
    tu_rmtree_free(tmp);
}

/* ---- keys, scan --------------------------------------------------------- */

Test(cli, keys_sorted_prefix_and_nul)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    const char *keys[] = { "b", "a\tb", "ab", "a", "c\\d", "user:2", "user:10", "\xc3\xa9" };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        tu_res r = RUN(db, "put", keys[i], "v");
        tu_expect(&r, 0, NULL, 0, keys[i]);
        tu_res_free(&r);
    }
    static const char want[] = "a\na\\tb\nab\nb\nc\\\\d\nuser:10\nuser:2\n\xc3\xa9\n";
    tu_res r = RUN(db, "keys");
    tu_expect(&r, 0, want, sizeof want - 1, "keys, sorted by bytes, tsv-escaped");
    tu_res_free(&r);
    r = RUN(db, "keys", "--prefix", "user:");
    tu_expect(&r, 0, "user:10\nuser:2\n", 15, "keys --prefix");
    tu_res_free(&r);
    r = RUN(db, "keys", "--prefix=a", "-0");
    tu_expect(&r, 0, "a\0a\tb\0ab\0", 9, "keys --prefix=a -0 (raw)");
    tu_res_free(&r);
    r = RUN(db, "keys", "--prefix", "zzz");
    tu_expect(&r, 0, "", 0, "keys with no match");
    tu_res_free(&r);
    free(db);
    tu_rmtree_free(tmp);
}

Test(cli, scan_tsv_and_json)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    tu_res r = RUN(db, "put", "k1", "line1\nline2\ttab\\");
    tu_res_free(&r);
    put_bin(db, "k2", "\xff\x00", 2);
    r = RUN(db, "put", "other", "x");
    tu_res_free(&r);

    static const char tsv[] = "k1\tline1\\nline2\\ttab\\\\\nk2\t\xff\\0\nother\tx\n";
    r = RUN(db, "scan");
    tu_expect(&r, 0, tsv, sizeof tsv - 1, "scan");
    tu_res_free(&r);
    static const char json[] =
        "{\"key\": \"k1\", \"value\": \"line1\\nline2\\ttab\\\\\"}\n"
        "{\"key\": \"k2\", \"value_b64\": \"/wA=\"}\n";
    r = RUN(db, "scan", "--json", "--prefix", "k");
    tu_expect(&r, 0, json, sizeof json - 1, "scan --json --prefix k");
    tu_res_free(&r);
    /* scan output is the tsv import format */
    char *db2 = db_path(tmp, "db2");
    r = RUNI(db2, tsv, sizeof tsv - 1, "import", "--format", "tsv");
    tu_expect(&r, 0, "", 0, "import of scan output");
    tu_res_free(&r);
    r = RUN(db2, "scan");
    tu_expect(&r, 0, tsv, sizeof tsv - 1, "scan after re-import");
    tu_res_free(&r);
    free(db2);
    free(db);
    tu_rmtree_free(tmp);
}

/* ---- import, export ----------------------------------------------------- */

Test(cli, export_import_export_is_identical)
{
    char *tmp = tu_tmpdir("cli");
    for (int fi = 0; fi < 3; fi++) {
        fmt_format f;
        cr_assert_eq(fmt_parse_name(FORMATS[fi], &f), 0);
        size_t len;
        char *text = make_records(f, 100 + (uint64_t)fi, 500, &len);
        char name[32];
        snprintf(name, sizeof name, "a-%s", FORMATS[fi]);
        char *db1 = db_path(tmp, name);
        snprintf(name, sizeof name, "b-%s", FORMATS[fi]);
        char *db2 = db_path(tmp, name);

        tu_res r = RUNI(db1, text, len, "import", "--format", FORMATS[fi], "--batch", "64");
        tu_expect(&r, 0, "", 0, "import");
        cr_assert(strstr(r.err, "imported 500 records"), "summary: %s", r.err);
        tu_res_free(&r);
        tu_res e1 = RUN(db1, "export", "--format", FORMATS[fi]);
        /* the input was canonical and sorted: export gives it back exactly */
        tu_expect(&e1, 0, text, len, FORMATS[fi]);
        r = RUNI(db2, e1.out, e1.outlen, "import", "--format", FORMATS[fi]);
        tu_expect(&r, 0, "", 0, "re-import");
        tu_res_free(&r);
        tu_res e2 = RUN(db2, "export", "--format", FORMATS[fi]);
        tu_expect(&e2, 0, e1.out, e1.outlen, "export of the re-import");
        /* and both databases agree in another format too */
        tu_res j1 = RUN(db1, "export"), j2 = RUN(db2, "export");
        tu_expect(&j2, 0, j1.out, j1.outlen, "jsonl exports of both");
        tu_res_free(&e1);
        tu_res_free(&e2);
        tu_res_free(&j1);
        tu_res_free(&j2);
        free(text);
        free(db1);
        free(db2);
    }
    tu_rmtree_free(tmp);
}

Test(cli, import_later_record_wins)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    static const char in[] = "k\t1\nj\tx\nk\t2\n";
    tu_res r = RUNI(db, in, sizeof in - 1, "import", "--format", "tsv", "--batch", "1");
    tu_expect(&r, 0, "", 0, "import");
    tu_res_free(&r);
    r = RUN(db, "get", "k");
    tu_expect(&r, 0, "2", 1, "later record wins");
    tu_res_free(&r);
    free(db);
    tu_rmtree_free(tmp);
}

Test(cli, import_error_names_line_and_keeps_batches)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    static const char in[] = "a\t1\nb\t2\nc\t3\nd\t4\ne\t5\nbroken line\nf\t6\n";
    tu_res r = RUNI(db, in, sizeof in - 1, "import", "--format", "tsv", "--batch", "2");
    cr_assert_eq(r.rc, 3, "exit %d: %s", r.rc, r.err);
    expect_err(&r, "line 6", "malformed tsv");
    expect_err(&r, "missing TAB", "malformed tsv");
    expect_err(&r, "4 records imported before the error", "malformed tsv");
    cr_assert_eq(strchr(r.err, '\n'), r.err + strlen(r.err) - 1, "one line: %s", r.err);
    tu_res_free(&r);
    /* batches [a b] [c d] are committed; e was in the open batch */
    r = RUN(db, "keys");
    tu_expect(&r, 0, "a\nb\nc\nd\n", 8, "keys after the failed import");
    tu_res_free(&r);

    static const char js[] = "{\"key\": \"x\", \"value\": \"1\"}\n{\"key\": \"y\", \"value\": 2}\n";
    r = RUNI(db, js, sizeof js - 1, "import", "--batch", "1");
    cr_assert_eq(r.rc, 3);
    expect_err(&r, "line 2", "malformed jsonl");
    expect_err(&r, "1 records imported before the error", "malformed jsonl");
    tu_res_free(&r);
    r = RUN(db, "get", "x");
    tu_expect(&r, 0, "1", 1, "record before the bad line");
    tu_res_free(&r);

    static const char nul[] = "p\0" "1\0" "q\0" "2";
    r = RUNI(db, nul, sizeof nul - 1, "import", "--format", "nul");
    cr_assert_eq(r.rc, 3);
    expect_err(&r, "record 2", "incomplete nul record");
    expect_err(&r, "0 records imported before the error", "incomplete nul record");
    tu_res_free(&r);
    r = RUN(db, "get", "p");
    tu_expect(&r, 1, "", 0, "nothing of the failed batch is committed");
    tu_res_free(&r);

    /* a key past S4KV_MAX_KEY_BYTES names its line */
    size_t biglen = 70000;
    char *big = malloc(biglen + 16);
    memcpy(big, "ok\t1\n", 5);
    memset(big + 5, 'K', biglen);
    memcpy(big + 5 + biglen, "\tv\n", 3);
    r = RUNI(db, big, biglen + 8, "import", "--format", "tsv", "--batch", "1");
    cr_assert_eq(r.rc, 3, "oversized key: exit %d: %s", r.rc, r.err);
    expect_err(&r, "line 2", "oversized key");
    expect_err(&r, "65535", "oversized key");
    expect_err(&r, "1 records imported before the error", "oversized key");
    tu_res_free(&r);
    big[biglen] = 0;
    r = RUN(db, "put", big + 5, "v");
    cr_assert_eq(r.rc, 2, "put of an oversized key: exit %d: %s", r.rc, r.err);
    expect_err(&r, "65535", "put of an oversized key");
    tu_res_free(&r);
    free(big);

    static const char empty_key[] = "\tvalue\n";
    r = RUNI(db, empty_key, sizeof empty_key - 1, "import", "--format", "tsv");
    cr_assert_eq(r.rc, 3);
    expect_err(&r, "line 1: empty key", "empty key");
    tu_res_free(&r);
    free(db);
    tu_rmtree_free(tmp);
}

Test(cli, export_nul_refuses_nul_bytes)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    put_bin(db, "has-nul", "a\0b", 3);
    tu_res r = RUN(db, "export", "--format", "nul");
    cr_assert_eq(r.rc, 3);
    expect_err(&r, "'has-nul'", "nul export of a NUL value");
    tu_res_free(&r);
    r = RUN(db, "export", "--format", "tsv");
    tu_expect(&r, 0, "has-nul\ta\\0b\n", 13, "tsv carries it");
    tu_res_free(&r);
    r = RUN(db, "export");
    static const char js[] = "{\"key\": \"has-nul\", \"value\": \"a\\u0000b\"}\n";
    tu_expect(&r, 0, js, sizeof js - 1, "jsonl carries it as \\u0000");
    tu_res_free(&r);
    free(db);
    tu_rmtree_free(tmp);
}

/* ---- maintenance -------------------------------------------------------- */

Test(cli, stats_verify_compact_rebuild)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    size_t len;
    char *text = make_records(FMT_JSONL, 7, 300, &len);
    tu_res r = RUNI(db, text, len, "import");
    tu_expect(&r, 0, "", 0, "import");
    tu_res_free(&r);
    r = RUN(db, "put", "gone1", "x");
    tu_res_free(&r);
    r = RUN(db, "put", "gone2", "y");
    tu_res_free(&r);
    r = RUN(db, "delete", "gone1", "gone2");
    tu_expect(&r, 0, "", 0, "delete");
    tu_res_free(&r);
    tu_res before = RUN(db, "export");
    tu_expect(&before, 0, NULL, 0, "export");

    r = RUN(db, "stats", "--json");
    tu_expect(&r, 0, NULL, 0, "stats --json");
    json_error_t je;
    json_t *o = json_loads(r.out, 0, &je);
    cr_assert(o, "stats --json is not JSON: %s (%s)", je.text, r.out);
    const char *fields[] = { "keys", "live_bytes", "garbage_bytes", "segment_bytes", "segments",
                             "index_bytes", "next_seq", "generation", "active_segment" };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        cr_assert(json_is_integer(json_object_get(o, fields[i])), "no %s in %s", fields[i], r.out);
    cr_assert_eq(json_integer_value(json_object_get(o, "keys")), 300);
    cr_assert_eq(json_object_size(o), 9);
    json_decref(o);
    tu_res_free(&r);
    r = RUN(db, "stats");
    tu_expect(&r, 0, NULL, 0, "stats");
    cr_assert(strstr(r.out, "keys:") && strstr(r.out, "300"), "%s", r.out);
    tu_res_free(&r);

    r = RUN(db, "verify");
    tu_expect(&r, 0, NULL, 0, "verify");
    cr_assert(strstr(r.out, "bad records:      0"), "%s", r.out);
    cr_assert(strstr(r.out, "result:           ok"), "%s", r.out);
    tu_res_free(&r);
    r = RUN(db, "compact");
    tu_expect(&r, 0, "", 0, "compact");
    cr_assert(strstr(r.err, "compacted"), "summary: %s", r.err);
    tu_res_free(&r);
    r = RUN(db, "rebuild-index");
    tu_expect(&r, 0, "", 0, "rebuild-index");
    cr_assert(strstr(r.err, "300 keys"), "summary: %s", r.err);
    tu_res_free(&r);
    r = RUN(db, "verify");
    tu_expect(&r, 0, NULL, 0, "verify after compact");
    tu_res_free(&r);
    r = RUN(db, "export");
    tu_expect(&r, 0, before.out, before.outlen, "the same records after compact and rebuild");
    tu_res_free(&r);
    tu_res_free(&before);
    free(text);
    free(db);
    tu_rmtree_free(tmp);
}

/* Finds needle in the data_*.s4kv files of dir and flips one byte of it. */
static int flip_in_segments(const char *dir, const uint8_t *needle, size_t nlen)
{
    DIR *d = opendir(dir);
    cr_assert(d);
    struct dirent *e;
    int done = 0;
    while (!done && (e = readdir(d))) {
        if (strncmp(e->d_name, "data_", 5) != 0)
            continue;
        char *p = db_path(dir, e->d_name);
        size_t len;
        uint8_t *buf = tu_read_file(p, &len);
        for (size_t i = 0; buf && !done && i + nlen <= len; i++) {
            if (memcmp(buf + i, needle, nlen) == 0) {
                buf[i + nlen / 2] ^= 0x5a;
                cr_assert_eq(tu_write_file(p, buf, len), 0);
                done = 1;
            }
        }
        free(buf);
        free(p);
    }
    closedir(d);
    return done;
}

Test(cli, corruption_exits_4)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    uint8_t vals[4][2048];
    uint64_t s = 9;
    char key[16];
    for (int k = 0; k < 4; k++) {
        for (size_t i = 0; i < sizeof vals[k]; i++)
            vals[k][i] = (uint8_t)tu_rand(&s); /* incompressible: stored raw */
        snprintf(key, sizeof key, "key%d", k);
        put_bin(db, key, vals[k], sizeof vals[k]);
    }
    /* Random bytes do not compress, so they are stored raw and must be found. */
    cr_assert(flip_in_segments(db, vals[1], sizeof vals[1]),
              "the value bytes were not found raw in a data_*.s4kv segment");
    tu_res r = RUN(db, "verify");
    cr_assert_eq(r.rc, 4, "verify of a damaged database: exit %d, stderr %s", r.rc, r.err);
    cr_assert(strstr(r.out, "PROBLEMS FOUND"), "%s", r.out);
    expect_err(&r, "verify", "verify");
    tu_res_free(&r);
    r = RUN(db, "get", "key1");
    cr_assert(r.rc == 4 || r.rc == 1, "get of the damaged record: exit %d (%s)", r.rc, r.err);
    cr_assert_eq(r.outlen, 0, "no wrong data on stdout");
    tu_res_free(&r);
    r = RUN(db, "get", "key2");
    tu_expect(&r, 0, (const char *)vals[2], sizeof vals[2], "an intact key");
    tu_res_free(&r);
    free(db);
    tu_rmtree_free(tmp);
}

/* ---- errors, usage, help ------------------------------------------------ */

Test(cli, usage_errors_exit_2)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    struct { const char *a[6]; const char *msg; } cases[] = {
        { { "frobnicate" }, "unknown command 'frobnicate'" },
        { { "get" }, "missing arguments" },
        { { "get", "a", "b" }, "too many arguments" },
        { { "put", "k" }, "missing arguments" },
        { { "delete" }, "missing arguments" },
        { { "keys", "--bogus" }, "unknown option '--bogus'" },
        { { "get", "--json", "k" }, "unknown option '--json'" },
        { { "import", "--format", "csv" }, "unknown format 'csv'" },
        { { "import", "--batch", "0" }, "--batch" },
        { { "import", "--batch", "12x" }, "--batch" },
        { { "export", "--format" }, "needs a value" },
        { { "put", "", "v" }, "empty" },
        { { "get", "" }, "empty" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[10];
        int n = 0;
        argv[n++] = (char *)tu_s4kv_bin();
        argv[n++] = "-d";
        argv[n++] = db;
        for (int j = 0; j < 6 && cases[i].a[j]; j++)
            argv[n++] = (char *)cases[i].a[j];
        argv[n] = NULL;
        tu_res r;
        r.rc = tu_run(argv, NULL, 0, &r.out, &r.outlen, &r.err);
        cr_assert_eq(r.rc, 2, "case %zu (%s): exit %d: %s", i, cases[i].a[0], r.rc, r.err);
        expect_err(&r, cases[i].msg, cases[i].a[0]);
        cr_assert_eq(r.outlen, 0);
        tu_res_free(&r);
    }
    tu_res r = RUN(NULL, "--bogus");
    cr_assert_eq(r.rc, 2);
    expect_err(&r, "unknown option", "global option");
    tu_res_free(&r);
    char *argv[] = { (char *)tu_s4kv_bin(), NULL };
    r.rc = tu_run(argv, NULL, 0, &r.out, &r.outlen, &r.err);
    cr_assert_eq(r.rc, 2);
    expect_err(&r, "no command", "no arguments");
    tu_res_free(&r);
    /* none of that created the database */
    struct stat st;
    cr_assert(stat(db, &st) != 0, "a usage error created %s", db);
    free(db);
    tu_rmtree_free(tmp);
}

Test(cli, help_on_every_command)
{
    const char *cmds[] = { "put", "get", "delete", "keys", "scan", "import", "export",
                           "compact", "rebuild-index", "verify", "stats" };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        tu_res r = RUN("/nonexistent/s4kv-help", cmds[i], "--help");
        cr_assert_eq(r.rc, 0, "%s --help: exit %d: %s", cmds[i], r.rc, r.err);
        cr_assert(strncmp(r.out, "usage: s4kv", 11) == 0, "%s --help: %s", cmds[i], r.out);
        cr_assert(strstr(r.out, cmds[i]), "%s --help does not name it", cmds[i]);
        cr_assert(strstr(r.out, "Exit status"), "%s --help lacks exit codes", cmds[i]);
        cr_assert_str_eq(r.err, "");
        tu_res_free(&r);
        r = RUN(NULL, cmds[i], "-h");
        cr_assert_eq(r.rc, 0, "%s -h", cmds[i]);
        tu_res_free(&r);
    }
    tu_res r = RUN(NULL, "export", "--help");
    cr_assert(strstr(r.out, "{\"key\": \"K\", \"value\": \"V\"}") && strstr(r.out, "\\\\ \\t \\n \\r \\0"),
              "export --help lacks the formats: %s", r.out);
    tu_res_free(&r);
    r = RUN(NULL, "--help");
    cr_assert_eq(r.rc, 0);
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        cr_assert(strstr(r.out, cmds[i]), "--help does not list %s", cmds[i]);
    cr_assert(strstr(r.out, "S4KV_DIR") && strstr(r.out, "Exit status"));
    tu_res_free(&r);
    r = RUN(NULL, "-h");
    cr_assert_eq(r.rc, 0);
    tu_res_free(&r);
    r = RUN(NULL, "--version");
    cr_assert_eq(r.rc, 0);
    cr_assert(strncmp(r.out, "s4kv ", 5) == 0, "%s", r.out);
    tu_res_free(&r);
}

Test(cli, read_only_commands_on_missing_dir)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "nope");
    const char *cmds[][2] = { { "get", "k" }, { "keys", NULL }, { "scan", NULL },
                              { "export", NULL }, { "verify", NULL }, { "stats", NULL },
                              { "compact", NULL }, { "rebuild-index", NULL } };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        tu_res r = cmds[i][1] ? RUN(db, cmds[i][0], cmds[i][1]) : RUN(db, cmds[i][0]);
        cr_assert_eq(r.rc, 3, "%s on a missing dir: exit %d: %s", cmds[i][0], r.rc, r.err);
        expect_err(&r, "no database at", cmds[i][0]);
        expect_err(&r, db, cmds[i][0]);
        tu_res_free(&r);
    }
    struct stat st;
    cr_assert(stat(db, &st) != 0, "a read-only command created %s", db);
    free(db);
    tu_rmtree_free(tmp);
}

Test(cli, dir_option_spellings_and_env)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    char opt[4096];
    snprintf(opt, sizeof opt, "--dir=%s", db);
    tu_res r = RUN(NULL, opt, "put", "k", "v1");
    tu_expect(&r, 0, "", 0, "--dir=DIR");
    tu_res_free(&r);
    r = RUN(NULL, "--dir", db, "get", "k");
    tu_expect(&r, 0, "v1", 2, "--dir DIR");
    tu_res_free(&r);
    r = RUN(NULL, "get", "k", "-d", db);
    tu_expect(&r, 0, "v1", 2, "-d after the command");
    tu_res_free(&r);
    setenv("S4KV_DIR", db, 1);
    r = RUN(NULL, "get", "k");
    tu_expect(&r, 0, "v1", 2, "$S4KV_DIR");
    tu_res_free(&r);
    unsetenv("S4KV_DIR");
    free(db);
    tu_rmtree_free(tmp);
}

Test(cli, locked_database_exits_5)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    tu_res r = RUN(db, "put", "k", "v");
    tu_expect(&r, 0, "", 0, "put");
    tu_res_free(&r);
    /* hold the writer lock the way a read-write handle does (kv/FORMAT.md) */
    char *lock = db_path(db, "LOCK");
    int fd = open(lock, O_RDWR | O_CREAT, 0644);
    cr_assert(fd >= 0);
    cr_assert_eq(flock(fd, LOCK_EX | LOCK_NB), 0);
    r = RUN(db, "put", "k", "w");
    cr_assert_eq(r.rc, 5, "put beside a writer: exit %d: %s", r.rc, r.err);
    expect_err(&r, "locked", "put beside a writer");
    tu_res_free(&r);
    r = RUNI(db, "a\t1\n", 4, "import", "--format", "tsv");
    cr_assert_eq(r.rc, 5, "import beside a writer: exit %d: %s", r.rc, r.err);
    tu_res_free(&r);
    /* read-only commands run beside the writer */
    r = RUN(db, "get", "k");
    tu_expect(&r, 0, "v", 1, "get beside a writer");
    tu_res_free(&r);
    r = RUN(db, "keys");
    tu_expect(&r, 0, "k\n", 2, "keys beside a writer");
    tu_res_free(&r);
    close(fd);
    r = RUN(db, "put", "k", "w");
    tu_expect(&r, 0, "", 0, "put after the lock is released");
    tu_res_free(&r);
    free(lock);
    free(db);
    tu_rmtree_free(tmp);
}

/* Runs s4kv with stdout on fd out_fd and stderr into a file; returns the exit
 * status and the stderr text (malloc'd). */
static int run_with_stdout(int out_fd, const char *errpath, char *const argv[], char **errtext)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        int efd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(out_fd, 1);
        dup2(efd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    size_t n;
    *errtext = (char *)tu_read_file(errpath, &n);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(cli, stdout_write_errors)
{
    char *tmp = tu_tmpdir("cli");
    char *db = db_path(tmp, "db");
    char *errpath = db_path(tmp, "stderr.txt");
    size_t len;
    char *text = make_records(FMT_TSV, 3, 400, &len);
    tu_res r = RUNI(db, text, len, "import", "--format", "tsv");
    tu_expect(&r, 0, "", 0, "import");
    tu_res_free(&r);

    /* a closed pipe: exit 3 without a message */
    int p[2];
    cr_assert_eq(pipe(p), 0);
    close(p[0]);
    char *argv[] = { (char *)tu_s4kv_bin(), "-d", db, "export", NULL };
    char *err = NULL;
    int rc = run_with_stdout(p[1], errpath, argv, &err);
    close(p[1]);
    cr_assert_eq(rc, 3, "EPIPE: exit %d (%s)", rc, err);
    cr_assert_str_eq(err, "", "EPIPE is quiet");
    free(err);

    /* a full device: exit 3 with a message */
    int full = open("/dev/full", O_WRONLY);
    if (full >= 0) {
        rc = run_with_stdout(full, errpath, argv, &err);
        close(full);
        cr_assert_eq(rc, 3, "ENOSPC: exit %d (%s)", rc, err);
        cr_assert(strstr(err, "s4kv: writing to stdout"), "%s", err);
        free(err);
    }
    free(text);
    free(errpath);
    free(db);
    tu_rmtree_free(tmp);
}
