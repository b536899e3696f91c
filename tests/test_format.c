/*
 * test_format.c - unit tests of the import/export codecs (tools/format.c):
 * exact bytes written for known records, random binary round trips in all
 * three formats (read(write(x)) == x and write(read(text)) == text), and
 * every malformed-input error with its position in the message.
 */
#include "format.h"
#include "util.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------ */

typedef struct rec {
    uint8_t *k, *v;
    size_t kl, vl;
} rec;

/* Writes one record to a memory stream; returns the malloc'd bytes. */
static char *write_one(fmt_format f, const void *k, size_t kl, const void *v,
                       size_t vl, size_t *len, int *rc, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&buf, &n);
    cr_assert(m);
    *rc = fmt_write(m, f, k, kl, v, vl, err, errlen);
    fclose(m);
    *len = n;
    return buf;
}

/* Asserts that (k, v) is written as exactly `want` (NUL-safe, wantlen). */
static void expect_out(fmt_format f, const void *k, size_t kl, const void *v,
                       size_t vl, const char *want, size_t wantlen)
{
    size_t n;
    int rc;
    char err[256] = "";
    char *got = write_one(f, k, kl, v, vl, &n, &rc, err, sizeof err);
    cr_assert_eq(rc, 0, "fmt_write failed: %s", err);
    cr_assert_eq(n, wantlen, "length %zu, want %zu: got [%.*s] want [%s]", n, wantlen,
                 (int)n, got, want);
    cr_assert(memcmp(got, want, n) == 0, "got [%.*s] want [%s]", (int)n, got, want);
    free(got);
}

#define EXPECT(f, k, v, want) \
    expect_out(f, k, sizeof(k) - 1, v, sizeof(v) - 1, want, sizeof(want) - 1)

static FILE *input(const void *buf, size_t len)
{
    FILE *f = tmpfile();
    cr_assert(f);
    if (len)
        cr_assert_eq(fwrite(buf, 1, len, f), len);
    rewind(f);
    return f;
}

/* Reads all records of text; returns the count, or the error code with the
 * message in err (records before it counted in *nok). */
static int read_all(fmt_format f, const void *text, size_t len, rec **out,
                    size_t *nrec, char *err, size_t errlen)
{
    FILE *in = input(text, len);
    fmt_reader *r = fmt_reader_new(in, f);
    cr_assert(r);
    rec *recs = NULL;
    size_t n = 0;
    int rc;
    for (;;) {
        const uint8_t *k, *v;
        size_t kl, vl;
        rc = fmt_reader_next(r, &k, &kl, &v, &vl, err, errlen);
        if (rc != 1)
            break;
        cr_assert_eq(k[kl], 0, "key buffer not NUL-terminated");
        cr_assert_eq(v[vl], 0, "value buffer not NUL-terminated");
        recs = realloc(recs, (n + 1) * sizeof *recs);
        recs[n].k = malloc(kl + 1);
        recs[n].v = malloc(vl + 1);
        memcpy(recs[n].k, k, kl);
        memcpy(recs[n].v, v, vl);
        recs[n].kl = kl;
        recs[n].vl = vl;
        n++;
    }
    cr_assert_eq(fmt_reader_records(r), n);
    if (rc == 0)
        cr_assert_eq(fmt_reader_bytes(r), len);
    fmt_reader_free(r);
    fclose(in);
    *out = recs;
    *nrec = n;
    return rc;
}

static void free_recs(rec *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].k);
        free(r[i].v);
    }
    free(r);
}

/* Asserts that reading text fails with FMT_EDATA, a message containing
 * `where` and `what`, after exactly `good` records. */
static void expect_bad(fmt_format f, const void *text, size_t len, size_t good,
                       const char *where, const char *what)
{
    char err[512] = "";
    rec *recs;
    size_t n;
    int rc = read_all(f, text, len, &recs, &n, err, sizeof err);
    cr_assert_eq(rc, FMT_EDATA, "%s input [%.*s]: rc %d (err '%s'), want FMT_EDATA",
                 fmt_name(f), (int)len, (const char *)text, rc, err);
    cr_assert_eq(n, good, "%zu good records before the error, want %zu", n, good);
    cr_assert(strncmp(err, where, strlen(where)) == 0, "message '%s' does not start with '%s'",
              err, where);
    cr_assert(strstr(err, what), "message '%s' does not mention '%s'", err, what);
    free_recs(recs, n);
}

#define BAD(f, text, good, where, what) expect_bad(f, text, sizeof(text) - 1, good, where, what)

/* Random bytes of one of three kinds: printable ASCII, valid UTF-8 with
 * multibyte characters and control bytes, or arbitrary bytes. */
static uint8_t *rand_bytes(uint64_t *s, size_t len, int allow_nul, int kind)
{
    static const char *utf8[] = { "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                  "\xef\xbf\xbf", "\x7f", "\x01", "\n", "\t", "\"",
                                  "\\", "/", "\x00", "a", "\xc2\x80", "\xf4\x8f\xbf\xbf" };
    uint8_t *b = malloc(len + 8);
    size_t i = 0;
    while (i < len) {
        uint64_t r = tu_rand(s);
        if (kind == 0) {
            b[i++] = (uint8_t)(0x20 + r % 95);
        } else if (kind == 1) {
            const char *u = utf8[r % (sizeof utf8 / sizeof utf8[0])];
            size_t ul = u[0] ? strlen(u) : 1;
            if (i + ul > len || (!allow_nul && !u[0]))
                b[i++] = 'x';
            else {
                memcpy(b + i, u, ul);
                i += ul;
            }
        } else {
            uint8_t c = (uint8_t)r;
            b[i++] = (!allow_nul && c == 0) ? 1 : c;
        }
    }
    return b;
}

/* Round trip of nrec random records through format f. */
static void round_trip(fmt_format f, uint64_t seed, size_t nrec)
{
    int allow_nul = f != FMT_NUL;
    rec *in = calloc(nrec, sizeof *in);
    uint64_t s = seed;
    for (size_t i = 0; i < nrec; i++) {
        in[i].kl = 1 + tu_rand(&s) % 40;
        in[i].vl = tu_rand(&s) % 5 == 0 ? 0 : tu_rand(&s) % 300;
        in[i].k = rand_bytes(&s, in[i].kl, allow_nul, (int)(tu_rand(&s) % 3));
        in[i].v = rand_bytes(&s, in[i].vl, allow_nul, (int)(tu_rand(&s) % 3));
    }
    /* one record with every byte value (but NUL for the nul format) */
    in[0].kl = in[0].vl = allow_nul ? 256 : 255;
    free(in[0].k);
    free(in[0].v);
    in[0].k = malloc(256);
    in[0].v = malloc(256);
    for (int i = 0; i < 256; i++)
        in[0].k[i] = in[0].v[i] = (uint8_t)(allow_nul ? i : (i % 255) + 1);

    char *text = NULL;
    size_t tlen = 0;
    FILE *m = open_memstream(&text, &tlen);
    char err[512] = "";
    for (size_t i = 0; i < nrec; i++)
        cr_assert_eq(fmt_write(m, f, in[i].k, in[i].kl, in[i].v, in[i].vl, err, sizeof err), 0,
                     "%s", err);
    fclose(m);

    rec *out;
    size_t n;
    int rc = read_all(f, text, tlen, &out, &n, err, sizeof err);
    cr_assert_eq(rc, 0, "%s: reading back failed: %s", fmt_name(f), err);
    cr_assert_eq(n, nrec);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(out[i].kl, in[i].kl, "%s record %zu key length", fmt_name(f), i);
        cr_assert_eq(out[i].vl, in[i].vl, "%s record %zu value length", fmt_name(f), i);
        cr_assert(memcmp(out[i].k, in[i].k, in[i].kl) == 0, "%s record %zu key", fmt_name(f), i);
        cr_assert(in[i].vl == 0 || memcmp(out[i].v, in[i].v, in[i].vl) == 0,
                  "%s record %zu value", fmt_name(f), i);
    }
    /* and writing what was read gives the same text */
    char *text2 = NULL;
    size_t tlen2 = 0;
    m = open_memstream(&text2, &tlen2);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(fmt_write(m, f, out[i].k, out[i].kl, out[i].v, out[i].vl, err, sizeof err), 0);
    fclose(m);
    cr_assert_eq(tlen2, tlen);
    cr_assert(memcmp(text, text2, tlen) == 0, "%s: second write differs", fmt_name(f));
    free(text);
    free(text2);
    free_recs(out, n);
    free_recs(in, nrec);
}

/* ---- exact output ------------------------------------------------------- */

Test(format, jsonl_exact_plain)
{
    EXPECT(FMT_JSONL, "a", "1", "{\"key\": \"a\", \"value\": \"1\"}\n");
    EXPECT(FMT_JSONL, "k", "", "{\"key\": \"k\", \"value\": \"\"}\n");
    EXPECT(FMT_JSONL, "q\"\\/", "\x01\t\n\r\b\f\x1f\x7f \xc3\xa9",
           "{\"key\": \"q\\\"\\\\/\", \"value\": \"\\u0001\\t\\n\\r\\b\\f\\u001F\x7f \xc3\xa9\"}\n");
    /* NUL is carried in the plain form as \u0000 */
    EXPECT(FMT_JSONL, "n\0k", "a\0b",
           "{\"key\": \"n\\u0000k\", \"value\": \"a\\u0000b\"}\n");
}

Test(format, jsonl_exact_b64)
{
    EXPECT(FMT_JSONL, "k", "\xff", "{\"key\": \"k\", \"value_b64\": \"/w==\"}\n");
    EXPECT(FMT_JSONL, "\xc0\x80", "ok", "{\"key_b64\": \"wIA=\", \"value\": \"ok\"}\n");
    /* a lone surrogate and a code point past U+10FFFF are not UTF-8 */
    EXPECT(FMT_JSONL, "\xed\xa0\x80", "\xf4\x90\x80\x80",
           "{\"key_b64\": \"7aCA\", \"value_b64\": \"9JCAgA==\"}\n");
}

Test(format, tsv_exact)
{
    EXPECT(FMT_TSV, "a", "1", "a\t1\n");
    EXPECT(FMT_TSV, "a\\b\tc", "\n\r\0x\xff", "a\\\\b\\tc\t\\n\\r\\0x\xff\n");
    EXPECT(FMT_TSV, "k", "", "k\t\n");
}

Test(format, nul_exact)
{
    EXPECT(FMT_NUL, "k", "v", "k\0v\0");
    EXPECT(FMT_NUL, "k\t\n", "", "k\t\n\0\0");
}

Test(format, nul_refuses_nul_bytes)
{
    size_t n;
    int rc;
    char err[256] = "";
    char *out = write_one(FMT_NUL, "bad\0key", 7, "v", 1, &n, &rc, err, sizeof err);
    cr_assert_eq(rc, FMT_EDATA);
    cr_assert_eq(n, 0, "nothing may be written");
    cr_assert(strstr(err, "'bad\\0key'"), "message names the key: %s", err);
    free(out);
    out = write_one(FMT_NUL, "key", 3, "v\0", 2, &n, &rc, err, sizeof err);
    cr_assert_eq(rc, FMT_EDATA);
    cr_assert_eq(n, 0);
    cr_assert(strstr(err, "'key'") && strstr(err, "value"), "%s", err);
    free(out);
}

Test(format, write_error_is_eio)
{
    FILE *f = fopen("/dev/full", "w");
    cr_assert(f);
    setvbuf(f, NULL, _IONBF, 0);
    char err[256] = "";
    cr_assert_eq(fmt_write(f, FMT_TSV, "k", 1, "v", 1, err, sizeof err), FMT_EIO);
    cr_assert_eq(fmt_write(f, FMT_JSONL, "k", 1, "v", 1, err, sizeof err), FMT_EIO);
    cr_assert_eq(fmt_write(f, FMT_NUL, "k", 1, "v", 1, err, sizeof err), FMT_EIO);
    fclose(f);
}

/* ---- round trips -------------------------------------------------------- */

Test(format, round_trip_jsonl)
{
    for (uint64_t seed = 1; seed <= 20; seed++)
        round_trip(FMT_JSONL, seed, 200);
}

Test(format, round_trip_tsv)
{
    for (uint64_t seed = 1; seed <= 20; seed++)
        round_trip(FMT_TSV, seed, 200);
}

Test(format, round_trip_nul)
{
    for (uint64_t seed = 1; seed <= 20; seed++)
        round_trip(FMT_NUL, seed, 200);
}

Test(format, empty_input_has_no_records)
{
    for (int f = FMT_JSONL; f <= FMT_NUL; f++) {
        rec *r;
        size_t n;
        char err[128];
        cr_assert_eq(read_all((fmt_format)f, "", 0, &r, &n, err, sizeof err), 0);
        cr_assert_eq(n, 0);
        free(r);
    }
}

Test(format, jsonl_reader_accepts_any_member_order_and_spacing)
{
    static const char text[] =
        "{\"value\":\"v1\",\"key\":\"k1\"}\n"
        "  { \"key_b64\" : \"/w==\" ,\t\"value_b64\": \"\" }  \r\n"
        "{\"key\": \"k\\u00e9\\ud83d\\ude00\", \"value\": \"\\u0000\"}"; /* no final LF */
    rec *r;
    size_t n;
    char err[256] = "";
    cr_assert_eq(read_all(FMT_JSONL, text, sizeof text - 1, &r, &n, err, sizeof err), 0, "%s", err);
    cr_assert_eq(n, 3);
    cr_assert(r[0].kl == 2 && memcmp(r[0].k, "k1", 2) == 0);
    cr_assert(r[0].vl == 2 && memcmp(r[0].v, "v1", 2) == 0);
    cr_assert(r[1].kl == 1 && r[1].k[0] == 0xff && r[1].vl == 0);
    cr_assert(r[2].kl == 7 && memcmp(r[2].k, "k\xc3\xa9\xf0\x9f\x98\x80", 7) == 0);
    cr_assert(r[2].vl == 1 && r[2].v[0] == 0);
    free_recs(r, n);
}

/* ---- malformed input ---------------------------------------------------- */

Test(format, tsv_errors)
{
    BAD(FMT_TSV, "a\t1\nnotab\n", 1, "line 2", "missing TAB");
    BAD(FMT_TSV, "a\t1\nb\t2\nc\t3\t4\n", 2, "line 3", "extra TAB");
    BAD(FMT_TSV, "a\\q\t1\n", 0, "line 1", "unknown escape '\\q'");
    BAD(FMT_TSV, "a\t\\x41\n", 0, "line 1", "unknown escape '\\x'");
    BAD(FMT_TSV, "a\t1\\\n", 0, "line 1", "backslash at the end");
    BAD(FMT_TSV, "a\t1\r\n", 0, "line 1", "carriage return");
    BAD(FMT_TSV, "a\t1\n\tv\n", 1, "line 2", "empty key");
    BAD(FMT_TSV, "a\t1\nb\t2", 1, "line 2", "missing newline");
    BAD(FMT_TSV, "a\t1\n\n", 1, "line 2", "missing TAB");
    /* a raw NUL byte is data, not an error */
    rec *r;
    size_t n;
    char err[128] = "";
    cr_assert_eq(read_all(FMT_TSV, "k\0\t\0\n", 5, &r, &n, err, sizeof err), 0, "%s", err);
    cr_assert(n == 1 && r[0].kl == 2 && r[0].vl == 1 && r[0].v[0] == 0);
    free_recs(r, n);
}

Test(format, nul_errors)
{
    BAD(FMT_NUL, "a\0" "1\0" "key", 1, "record 2 (byte 4)", "inside the key");
    BAD(FMT_NUL, "a\0" "1\0" "key\0", 1, "record 2", "ends after the key");
    BAD(FMT_NUL, "a\0" "1\0" "key\0val", 1, "record 2", "inside the value");
    BAD(FMT_NUL, "a\0" "1\0" "\0v\0", 1, "record 2", "empty key");
}

Test(format, jsonl_errors)
{
#define OK1 "{\"key\": \"a\", \"value\": \"1\"}\n"
    BAD(FMT_JSONL, OK1 "{\"key\": \"b\", \"value\": \n", 1, "line 2", "invalid JSON");
    BAD(FMT_JSONL, OK1 OK1 "[1, 2]\n", 2, "line 3", "not a JSON object");
    BAD(FMT_JSONL, OK1 "{\"key\": \"b\", \"value\": \"2\", \"x\": 1}\n", 1, "line 2",
        "unknown member 'x'");
    BAD(FMT_JSONL, "{\"key\": \"b\", \"key_b64\": \"YQ==\", \"value\": \"\"}\n", 0, "line 1",
        "both \"key\" and \"key_b64\"");
    BAD(FMT_JSONL, "{\"value\": \"2\"}\n", 0, "line 1", "missing \"key\"");
    BAD(FMT_JSONL, "{\"key\": \"k\"}\n", 0, "line 1", "missing \"value\"");
    BAD(FMT_JSONL, "{\"key\": \"k\", \"value\": 5}\n", 0, "line 1", "must be a string");
    BAD(FMT_JSONL, "{\"key\": null, \"value\": \"\"}\n", 0, "line 1", "must be a string");
    BAD(FMT_JSONL, "{\"key\": \"\", \"value\": \"v\"}\n", 0, "line 1", "empty key");
    BAD(FMT_JSONL, "{\"key_b64\": \"\", \"value\": \"v\"}\n", 0, "line 1", "empty key");
    BAD(FMT_JSONL, OK1 "\n" OK1, 1, "line 2", "blank line");
    BAD(FMT_JSONL, "{\"key\": \"a\", \"key\": \"b\", \"value\": \"\"}\n", 0, "line 1",
        "duplicate");
    BAD(FMT_JSONL, "{\"key\": \"\\ud800\", \"value\": \"\"}\n", 0, "line 1", "invalid JSON");
    BAD(FMT_JSONL, "{\"key\": \"a\xff\", \"value\": \"\"}\n", 0, "line 1", "invalid JSON");
    BAD(FMT_JSONL, "{\"key\": \"a\", \"value\": \"1\"} {}\n", 0, "line 1", "invalid JSON");
    /* base64 that EVP_DecodeBlock alone would accept */
    BAD(FMT_JSONL, "{\"key\": \"a\", \"value_b64\": \"Q===\"}\n", 0, "line 1", "base64");
    BAD(FMT_JSONL, "{\"key\": \"a\", \"value_b64\": \"QQ=A\"}\n", 0, "line 1", "base64");
    BAD(FMT_JSONL, "{\"key\": \"a\", \"value_b64\": \"QR==\"}\n", 0, "line 1", "base64");
    BAD(FMT_JSONL, "{\"key\": \"a\", \"value_b64\": \" QQ==\"}\n", 0, "line 1", "base64");
    BAD(FMT_JSONL, "{\"key\": \"a\", \"value_b64\": \"QQ\"}\n", 0, "line 1", "base64");
    BAD(FMT_JSONL, "{\"key\": \"a\", \"value_b64\": \"Q-==\"}\n", 0, "line 1", "base64");
    BAD(FMT_JSONL, "{\"key\": \"a\", \"value_b64\": \"QQ==QQ==\"}\n", 0, "line 1", "base64");
#undef OK1
}

Test(format, reader_error_is_sticky)
{
    FILE *in = input("x\n", 2);
    fmt_reader *r = fmt_reader_new(in, FMT_TSV);
    const uint8_t *k, *v;
    size_t kl, vl;
    char e1[128] = "", e2[128] = "";
    cr_assert_eq(fmt_reader_next(r, &k, &kl, &v, &vl, e1, sizeof e1), FMT_EDATA);
    cr_assert_eq(fmt_reader_next(r, &k, &kl, &v, &vl, e2, sizeof e2), FMT_EDATA);
    cr_assert_str_eq(e1, e2);
    fmt_reader_free(r);
    fclose(in);
}

/* ---- helpers ------------------------------------------------------------ */

Test(format, base64_rfc4648_vectors)
{
    static const char *plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
    static const char *enc[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
    for (int i = 0; i < 7; i++) {
        size_t n;
        char *e = fmt_b64_encode(plain[i], strlen(plain[i]), &n);
        cr_assert_str_eq(e, enc[i]);
        cr_assert_eq(n, strlen(enc[i]));
        int bad;
        uint8_t *d = fmt_b64_decode(e, n, &n, &bad);
        cr_assert(d, "decode %s", e);
        cr_assert_eq(n, strlen(plain[i]));
        cr_assert(memcmp(d, plain[i], n) == 0);
        free(d);
        free(e);
    }
}

Test(format, utf8_validation)
{
    cr_assert(fmt_utf8_valid("", 0));
    cr_assert(fmt_utf8_valid("a\0b", 3));
    cr_assert(fmt_utf8_valid("\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xef\xbf\xbf", 11));
    cr_assert(!fmt_utf8_valid("\xc0\x80", 2));         /* overlong NUL */
    cr_assert(!fmt_utf8_valid("\xe0\x80\x80", 3));     /* overlong */
    cr_assert(!fmt_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    cr_assert(!fmt_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    cr_assert(!fmt_utf8_valid("\xe2\x82", 2));         /* truncated */
    cr_assert(!fmt_utf8_valid("\x80", 1));             /* lone continuation */
    cr_assert(!fmt_utf8_valid("\xff", 1));
}

Test(format, names_and_quote)
{
    fmt_format f;
    cr_assert_eq(fmt_parse_name("jsonl", &f), 0);
    cr_assert_eq(f, FMT_JSONL);
    cr_assert_eq(fmt_parse_name("tsv", &f), 0);
    cr_assert_eq(f, FMT_TSV);
    cr_assert_eq(fmt_parse_name("nul", &f), 0);
    cr_assert_eq(f, FMT_NUL);
    cr_assert_eq(fmt_parse_name("csv", &f), FMT_EDATA);
    cr_assert_str_eq(fmt_name(FMT_TSV), "tsv");
    char q[128];
    cr_assert_str_eq(fmt_quote(q, sizeof q, "a'\\\t\n\0\xff", 7), "'a\\'\\\\\\t\\n\\0\\xff'");
    char long_key[100];
    memset(long_key, 'x', sizeof long_key);
    fmt_quote(q, sizeof q, long_key, sizeof long_key);
    cr_assert(strstr(q, "'...") && strlen(q) < 70, "%s", q);
    char tiny[8];
    fmt_quote(tiny, sizeof tiny, long_key, sizeof long_key);
    cr_assert(strlen(tiny) < sizeof tiny);
}
