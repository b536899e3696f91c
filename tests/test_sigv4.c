/*
 * test_sigv4.c - AWS Signature Version 4 (sync/sigv4.c).
 *
 * 1. The AWS signing test suite (../shared/testdata/sigv4, from
 *    awslabs/aws-c-auth; override with S4KV_SIGV4_SUITE): every case folder
 *    is signed in both forms and the canonical request, string to sign and
 *    signature must equal the expected files byte for byte; the
 *    Authorization value, the extra headers and the presigned query
 *    parameters are checked against the *-signed-request.txt files.
 * 2. S3: the published examples of the Amazon S3 API Reference ("Examples:
 *    Signature Calculations in AWS Signature Version 4": GET Object with
 *    Range, PUT Object, GET Bucket lifecycle, GET Bucket (list objects), and
 *    the presigned URL example of "Authenticating Requests: Using Query
 *    Parameters"), unnormalised paths, key encoding, x-amz-content-sha256,
 *    session tokens, valueless query parameters, errors, and that the
 *    secret key never appears in any output.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "sigv4.h"
#include "util.h"

#define EMPTY_SHA "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* ---- small helpers */

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        cr_assert_fail("out of memory");
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = strndup(s, n);
    if (!p)
        cr_assert_fail("out of memory");
    return p;
}

static char *join_path(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + (c ? strlen(c) : 0) + 3;
    char *p = malloc(n);
    if (!p)
        cr_assert_fail("out of memory");
    snprintf(p, n, c ? "%s/%s/%s" : "%s/%s", a, b, c);
    return p;
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string (a bad escape is kept as is). */
static char *pct_decode(const char *s, size_t n)
{
    char *o = malloc(n + 1), *w = o;
    if (!o)
        cr_assert_fail("out of memory");
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexv(s[i + 1]) >= 0 &&
            hexv(s[i + 2]) >= 0) {
            *w++ = (char)(hexv(s[i + 1]) << 4 | hexv(s[i + 2]));
            i += 2;
        } else {
            *w++ = s[i];
        }
    }
    *w = '\0';
    return o;
}

/* Decoded "name=value" strings of a query, sorted, joined with '\n'. */
static int strp_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *query_fingerprint(const char *q)
{
    char *items[256];
    size_t n = 0, total = 1;
    const char *c = q;
    while (*c && n < 256) {
        const char *amp = strchr(c, '&');
        size_t len = amp ? (size_t)(amp - c) : strlen(c);
        if (len) {
            const char *eq = memchr(c, '=', len);
            size_t nl = eq ? (size_t)(eq - c) : len;
            char *name = pct_decode(c, nl);
            char *value = eq ? pct_decode(eq + 1, len - nl - 1) : xstrdup("");
            size_t sz = strlen(name) + strlen(value) + 2;
            items[n] = malloc(sz);
            if (!items[n])
                cr_assert_fail("out of memory");
            snprintf(items[n], sz, "%s=%s", name, value);
            total += sz;
            free(name);
            free(value);
            n++;
        }
        c += len + (amp ? 1 : 0);
    }
    qsort(items, n, sizeof *items, strp_cmp);
    char *out = malloc(total);
    if (!out)
        cr_assert_fail("out of memory");
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        strcat(out, items[i]);
        strcat(out, "\n");
        free(items[i]);
    }
    return out;
}

static int contains(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

/* Every string a result holds, for the secret check. */
static int result_mentions(const sigv4_result *r, const char *s)
{
    if (contains(r->canonical_request, s) || contains(r->string_to_sign, s) ||
        contains(r->signature, s) || contains(r->authorization, s))
        return 1;
    for (size_t i = 0; i < r->nextra; i++)
        if (contains(r->extra[i], s))
            return 1;
    return 0;
}

/* ---- the test suite: one case */

#define MAX_HDRS 64

typedef struct suite_req {
    char *method, *path, *query; /* query NULL when the target has no '?' */
    char *names[MAX_HDRS], *values[MAX_HDRS];
    sigv4_header hdr[MAX_HDRS];
    size_t nhdr;
    char payload[65];
} suite_req;

static void suite_req_free(suite_req *r)
{
    free(r->method);
    free(r->path);
    free(r->query);
    for (size_t i = 0; i < r->nhdr; i++) {
        free(r->names[i]);
        free(r->values[i]);
    }
    memset(r, 0, sizeof *r);
}

/* Parses request.txt: request line, headers (a line starting with a space or
 * tab continues the previous value; it is kept with its "\n" for the signer
 * to fold), a blank line, the body. Returns NULL or a message. */
static const char *parse_request(const char *text, size_t len, suite_req *r)
{
    memset(r, 0, sizeof *r);
    const char *end = text + len, *c = text;
    const char *nl = memchr(c, '\n', (size_t)(end - c));
    const char *le = nl ? nl : end;
    const char *sp1 = memchr(c, ' ', (size_t)(le - c));
    const char *sp2 = le;
    while (sp2 > c && sp2[-1] != ' ')
        sp2--;
    if (!sp1 || sp2 <= sp1 + 1)
        return "malformed request line";
    r->method = xstrndup(c, (size_t)(sp1 - c));
    const char *target = sp1 + 1, *tend = sp2 - 1;
    const char *qm = memchr(target, '?', (size_t)(tend - target));
    r->path = xstrndup(target, (size_t)((qm ? qm : tend) - target));
    if (qm)
        r->query = xstrndup(qm + 1, (size_t)(tend - qm - 1));
    c = nl ? nl + 1 : end;

    while (c < end) {
        nl = memchr(c, '\n', (size_t)(end - c));
        le = nl ? nl : end;
        size_t n = (size_t)(le - c);
        if (n && c[n - 1] == '\r')
            n--;
        if (n == 0) { /* blank line: the body follows */
            c = nl ? nl + 1 : end;
            break;
        }
        if (c[0] == ' ' || c[0] == '\t') {
            if (!r->nhdr)
                return "continuation line before any header";
            char *v = r->values[r->nhdr - 1];
            size_t vl = strlen(v);
            char *nv = realloc(v, vl + n + 2);
            if (!nv)
                cr_assert_fail("out of memory");
            nv[vl] = '\n';
            memcpy(nv + vl + 1, c, n);
            nv[vl + 1 + n] = '\0';
            r->values[r->nhdr - 1] = nv;
        } else {
            const char *colon = memchr(c, ':', n);
            if (!colon)
                return "header line without ':'";
            if (r->nhdr == MAX_HDRS)
                return "too many headers";
            r->names[r->nhdr] = xstrndup(c, (size_t)(colon - c));
            r->values[r->nhdr] = xstrndup(colon + 1, n - (size_t)(colon - c) - 1);
            r->nhdr++;
        }
        c = nl ? nl + 1 : end;
    }
    for (size_t i = 0; i < r->nhdr; i++) {
        r->hdr[i].name = r->names[i];
        r->hdr[i].value = r->values[i];
    }
    sigv4_sha256_hex(c, (size_t)(end - c), r->payload);
    return NULL;
}

typedef struct suite_ctx {
    json_t *root;
    sigv4_credentials cred;
    sigv4_params p;
    char amz_date[17];
} suite_ctx;

static const char *json_str(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static const char *parse_context(const char *path, suite_ctx *cx)
{
    memset(cx, 0, sizeof *cx);
    json_error_t je;
    cx->root = json_load_file(path, 0, &je);
    if (!cx->root)
        return "context.json is not valid JSON";
    json_t *cr = json_object_get(cx->root, "credentials");
    cx->cred.access_key_id = json_str(cr, "access_key_id");
    cx->cred.secret_access_key = json_str(cr, "secret_access_key");
    cx->cred.session_token = json_str(cr, "token");
    cx->p.region = json_str(cx->root, "region");
    cx->p.service = json_str(cx->root, "service");
    const char *ts = json_str(cx->root, "timestamp");
    if (!cx->cred.access_key_id || !cx->cred.secret_access_key || !cx->p.region ||
        !cx->p.service || !ts)
        return "context.json lacks credentials, region, service or timestamp";
    struct tm tm = {0};
    if (sscanf(ts, "%4d-%2d-%2dT%2d:%2d:%2dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
        return "timestamp is not YYYY-MM-DDTHH:MM:SSZ";
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    sigv4_amz_date((int64_t)timegm(&tm), cx->amz_date);
    cx->p.amz_date = cx->amz_date;
    cx->p.normalize_path = json_is_true(json_object_get(cx->root, "normalize"));
    cx->p.sign_body = json_is_true(json_object_get(cx->root, "sign_body"));
    cx->p.omit_session_token = json_is_true(json_object_get(cx->root, "omit_session_token"));
    json_t *exp = json_object_get(cx->root, "expiration_in_seconds");
    cx->p.expires = json_is_integer(exp) ? (uint32_t)json_integer_value(exp) : 3600;
    return NULL;
}

/* s with every line prefixed by "|" (so blank lines survive the log) and a
 * final "$" when s ends without a newline. */
static char *show(const char *s)
{
    size_t n = strlen(s), lines = 1;
    for (size_t i = 0; i < n; i++)
        lines += s[i] == '\n';
    char *o = malloc(n + 2 * lines + 2), *w = o;
    if (!o)
        cr_assert_fail("out of memory");
    *w++ = '|';
    for (size_t i = 0; i < n; i++) {
        *w++ = s[i];
        if (s[i] == '\n')
            *w++ = '|';
    }
    if (!n || s[n - 1] != '\n')
        *w++ = '$';
    *w = '\0';
    return o;
}

/* Compares got with the file dir/name; logs a diff-friendly message: both
 * texts line by line and where they first differ. */
static int check_file(const char *dir, const char *cname, const char *name, const char *got)
{
    char *path = join_path(dir, cname, name);
    size_t len;
    char *want = (char *)tu_read_file(path, &len);
    int ok = want && got && strlen(want) == len && strcmp(want, got) == 0;
    if (!want) {
        cr_log_error("sigv4 suite %s: cannot read %s", cname, path);
    } else if (!ok) {
        const char *g = got ? got : "";
        size_t i = 0, line = 1, col = 1;
        for (; want[i] && want[i] == g[i]; i++) {
            col++;
            if (want[i] == '\n') {
                line++;
                col = 1;
            }
        }
        char *sw = show(want), *sg = show(g);
        cr_log_error("sigv4 suite %s: %s differs at line %zu, column %zu\n"
                     "--- expected (%s)\n%s\n--- got\n%s\n---",
                     cname, name, line, col, path, sw, sg);
        free(sw);
        free(sg);
    }
    free(want);
    free(path);
    return ok;
}

/* The value of the "Name:" line in a signed-request file (first line excluded). */
static char *signed_header(const char *text, const char *name)
{
    size_t nl = strlen(name);
    const char *c = strchr(text, '\n');
    while (c && c[1] && c[1] != '\n') {
        c++;
        const char *e = strchr(c, '\n');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (n > nl && c[nl] == ':' && strncasecmp(c, name, nl) == 0)
            return xstrndup(c + nl + 1, n - nl - 1);
        c = e;
    }
    return NULL;
}

/* Header form extras: Authorization and the X-Amz-* lines of the signed request. */
static int check_signed_header_request(const char *dir, const char *cname,
                                       const sigv4_result *res)
{
    char *path = join_path(dir, cname, "header-signed-request.txt");
    size_t len;
    char *text = (char *)tu_read_file(path, &len);
    free(path);
    if (!text) {
        cr_log_error("sigv4 suite %s: cannot read header-signed-request.txt", cname);
        return 0;
    }
    int ok = 1;
    char *auth = signed_header(text, "Authorization");
    if (!auth || strcmp(auth, res->authorization) != 0) {
        cr_log_error("sigv4 suite %s: Authorization differs\n--- expected\n%s\n--- got\n%s\n---",
                     cname, auth ? auth : "(none)", res->authorization);
        ok = 0;
    }
    free(auth);
    for (size_t i = 0; i < res->nextra; i++) {
        const char *colon = strchr(res->extra[i], ':');
        char *name = xstrndup(res->extra[i], (size_t)(colon - res->extra[i]));
        char *v = signed_header(text, name);
        if (!v || strcmp(v, colon + 2) != 0) {
            cr_log_error("sigv4 suite %s: extra header \"%s\" not in the signed request "
                         "(expected value %s)",
                         cname, res->extra[i], v ? v : "(none)");
            ok = 0;
        }
        free(v);
        free(name);
    }
    free(text);
    return ok;
}

/* Query form: same parameters (decoded, as a set) as the signed request's target. */
static int check_signed_query_request(const char *dir, const char *cname,
                                      const sigv4_result *res)
{
    char *path = join_path(dir, cname, "query-signed-request.txt");
    size_t len;
    char *text = (char *)tu_read_file(path, &len);
    free(path);
    if (!text) {
        cr_log_error("sigv4 suite %s: cannot read query-signed-request.txt", cname);
        return 0;
    }
    char *nl = strchr(text, '\n');
    if (nl)
        *nl = '\0';
    char *last_sp = strrchr(text, ' ');
    if (last_sp)
        *last_sp = '\0';
    char *qm = strchr(text, '?');
    char *want = query_fingerprint(qm ? qm + 1 : "");
    char *got = query_fingerprint(res->authorization);
    int ok = strcmp(want, got) == 0;
    if (!ok)
        cr_log_error("sigv4 suite %s: presigned query parameters differ\n--- expected\n%s--- "
                     "got\n%s---",
                     cname, want, got);
    free(want);
    free(got);
    free(text);
    return ok;
}

/* Runs one case folder in both forms; returns 1 when everything matches. */
static int run_case(const char *dir, const char *cname)
{
    char *cpath = join_path(dir, cname, "context.json");
    char *rpath = join_path(dir, cname, "request.txt");
    suite_ctx cx;
    suite_req r;
    memset(&r, 0, sizeof r);
    int ok = 1;
    const char *perr = parse_context(cpath, &cx);
    size_t rlen = 0;
    char *rtext = perr ? NULL : (char *)tu_read_file(rpath, &rlen);
    if (!perr && !rtext)
        perr = "cannot read request.txt";
    if (!perr)
        perr = parse_request(rtext, rlen, &r);
    if (perr) {
        cr_log_error("sigv4 suite %s: %s", cname, perr);
        ok = 0;
        goto out;
    }

    sigv4_request req = {
        .method = r.method, .path = r.path, .encoded_path = 0, .query = r.query,
        .headers = r.hdr, .nheaders = r.nhdr, .payload_sha256 = r.payload,
    };
    for (int form = 0; form < 2; form++) {
        const char *pre = form ? "query" : "header";
        char err[256] = "";
        sigv4_result res;
        int rc = form ? sigv4_sign_query(&req, &cx.cred, &cx.p, &res, err, sizeof err)
                      : sigv4_sign_header(&req, &cx.cred, &cx.p, &res, err, sizeof err);
        if (rc != 0) {
            cr_log_error("sigv4 suite %s: %s form: signing failed: %s", cname, pre, err);
            ok = 0;
            continue;
        }
        char name[64];
        snprintf(name, sizeof name, "%s-canonical-request.txt", pre);
        ok &= check_file(dir, cname, name, res.canonical_request);
        snprintf(name, sizeof name, "%s-string-to-sign.txt", pre);
        ok &= check_file(dir, cname, name, res.string_to_sign);
        snprintf(name, sizeof name, "%s-signature.txt", pre);
        ok &= check_file(dir, cname, name, res.signature);
        ok &= form ? check_signed_query_request(dir, cname, &res)
                   : check_signed_header_request(dir, cname, &res);
        if (result_mentions(&res, cx.cred.secret_access_key)) {
            cr_log_error("sigv4 suite %s: %s form: the secret key appears in the output",
                         cname, pre);
            ok = 0;
        }
        sigv4_result_free(&res);
    }

out:
    suite_req_free(&r);
    free(rtext);
    json_decref(cx.root);
    free(cpath);
    free(rpath);
    return ok;
}

static int is_case_dir(const char *dir, const char *name)
{
    if (name[0] == '.')
        return 0;
    char *p = join_path(dir, name, "context.json");
    struct stat st;
    int yes = stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return yes;
}

Test(sigv4, aws_test_suite_every_case_both_forms)
{
    const char *dir = getenv("S4KV_SIGV4_SUITE");
    if (!dir || !*dir)
        dir = "../shared/testdata/sigv4";
    DIR *d = opendir(dir);
    if (!d)
        cr_assert_fail("the SigV4 test suite is missing: cannot open %s (%s); it is expected "
                       "at ../shared/testdata/sigv4 from the repository root, or set "
                       "S4KV_SIGV4_SUITE",
                       dir, strerror(errno));
    char *names[512];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 512)
        if (is_case_dir(dir, e->d_name))
            names[n++] = xstrdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, strp_cmp);
    cr_assert_gt(n, 0, "no case folders (with context.json) in %s", dir);

    size_t pass = 0;
    char failed[4096] = "";
    for (size_t i = 0; i < n; i++) {
        if (run_case(dir, names[i])) {
            pass++;
        } else if (strlen(failed) + strlen(names[i]) + 2 < sizeof failed) {
            strcat(failed, " ");
            strcat(failed, names[i]);
        }
        free(names[i]);
    }
    cr_log_info("sigv4 suite %s: %zu of %zu cases pass (header and query forms)", dir, pass, n);
    cr_assert_eq(pass, n, "sigv4 suite: %zu of %zu cases fail:%s (details logged above)",
                 n - pass, n, failed);
}

/* ---- S3: the published examples */

#define S3_AKID "AKIAIOSFODNN7EXAMPLE"
#define S3_SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define S3_HOST "examplebucket.s3.amazonaws.com"
#define S3_SCOPE "20130524/us-east-1/s3/aws4_request"

static const sigv4_credentials S3_CRED = {S3_AKID, S3_SECRET, NULL};

static sigv4_params s3_params(void)
{
    sigv4_params p = {
        .region = "us-east-1", .service = "s3", .amz_date = "20130524T000000Z",
        .normalize_path = 0, .sign_body = 1, .omit_session_token = 0, .expires = 86400,
    };
    return p;
}

static void sign_ok(int presign, const sigv4_request *req, const sigv4_credentials *cred,
                    const sigv4_params *p, sigv4_result *res)
{
    char err[256] = "";
    int rc = presign ? sigv4_sign_query(req, cred, p, res, err, sizeof err)
                     : sigv4_sign_header(req, cred, p, res, err, sizeof err);
    cr_assert_eq(rc, 0, "signing failed: %s", err);
    cr_assert_not(result_mentions(res, cred->secret_access_key),
                  "the secret key appears in the output");
}

static int has_extra(const sigv4_result *r, const char *line)
{
    for (size_t i = 0; i < r->nextra; i++)
        if (strcmp(r->extra[i], line) == 0)
            return 1;
    return 0;
}

Test(sigv4, s3_doc_get_object_range)
{
    sigv4_header h[] = {{"Host", S3_HOST}, {"Range", "bytes=0-9"}};
    sigv4_request req = {"GET", "/test.txt", 0, NULL, h, 2, NULL};
    sigv4_params p = s3_params();
    sigv4_result r;
    sign_ok(0, &req, &S3_CRED, &p, &r);
    cr_expect_str_eq(r.canonical_request,
                     "GET\n/test.txt\n\n"
                     "host:" S3_HOST "\n"
                     "range:bytes=0-9\n"
                     "x-amz-content-sha256:" EMPTY_SHA "\n"
                     "x-amz-date:20130524T000000Z\n\n"
                     "host;range;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA);
    cr_expect_str_eq(r.string_to_sign,
                     "AWS4-HMAC-SHA256\n20130524T000000Z\n" S3_SCOPE "\n"
                     "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
    cr_expect_str_eq(r.signature,
                     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    cr_expect_str_eq(r.authorization,
                     "AWS4-HMAC-SHA256 Credential=" S3_AKID "/" S3_SCOPE
                     ", SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                     "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    cr_expect_eq(r.nextra, 2);
    cr_expect(has_extra(&r, "X-Amz-Date: 20130524T000000Z"));
    cr_expect(has_extra(&r, "x-amz-content-sha256: " EMPTY_SHA));
    sigv4_result_free(&r);
}

Test(sigv4, s3_doc_put_object)
{
    const char *body = "Welcome to Amazon S3.";
    char sha[65];
    sigv4_sha256_hex(body, strlen(body), sha);
    cr_assert_str_eq(sha, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
    sigv4_header h[] = {
        {"Host", S3_HOST},
        {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
        {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
    };
    sigv4_request req = {"PUT", "/test$file.text", 0, NULL, h, 3, sha};
    sigv4_params p = s3_params();
    sigv4_result r;
    sign_ok(0, &req, &S3_CRED, &p, &r);
    cr_expect_str_eq(r.canonical_request,
                     "PUT\n/test%24file.text\n\n"
                     "date:Fri, 24 May 2013 00:00:00 GMT\n"
                     "host:" S3_HOST "\n"
                     "x-amz-content-sha256:"
                     "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n"
                     "x-amz-date:20130524T000000Z\n"
                     "x-amz-storage-class:REDUCED_REDUNDANCY\n\n"
                     "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n"
                     "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
    cr_expect_str_eq(r.string_to_sign,
                     "AWS4-HMAC-SHA256\n20130524T000000Z\n" S3_SCOPE "\n"
                     "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d");
    cr_expect_str_eq(r.signature,
                     "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
    sigv4_result_free(&r);
}

Test(sigv4, s3_doc_get_bucket_lifecycle_valueless_param)
{
    sigv4_header h[] = {{"Host", S3_HOST}};
    sigv4_request req = {"GET", "/", 0, "lifecycle", h, 1, NULL};
    sigv4_params p = s3_params();
    sigv4_result r;
    sign_ok(0, &req, &S3_CRED, &p, &r);
    cr_expect_str_eq(r.canonical_request,
                     "GET\n/\nlifecycle=\n"
                     "host:" S3_HOST "\n"
                     "x-amz-content-sha256:" EMPTY_SHA "\n"
                     "x-amz-date:20130524T000000Z\n\n"
                     "host;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA);
    cr_expect_str_eq(r.string_to_sign,
                     "AWS4-HMAC-SHA256\n20130524T000000Z\n" S3_SCOPE "\n"
                     "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca");
    cr_expect_str_eq(r.signature,
                     "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
    sigv4_result_free(&r);
}

Test(sigv4, s3_doc_list_objects)
{
    sigv4_header h[] = {{"Host", S3_HOST}};
    sigv4_request req = {"GET", "/", 0, "max-keys=2&prefix=J", h, 1, NULL};
    sigv4_params p = s3_params();
    sigv4_result r;
    sign_ok(0, &req, &S3_CRED, &p, &r);
    cr_expect_str_eq(r.canonical_request,
                     "GET\n/\nmax-keys=2&prefix=J\n"
                     "host:" S3_HOST "\n"
                     "x-amz-content-sha256:" EMPTY_SHA "\n"
                     "x-amz-date:20130524T000000Z\n\n"
                     "host;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA);
    cr_expect_str_eq(r.string_to_sign,
                     "AWS4-HMAC-SHA256\n20130524T000000Z\n" S3_SCOPE "\n"
                     "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7");
    cr_expect_str_eq(r.signature,
                     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
    sigv4_result_free(&r);
}

Test(sigv4, s3_doc_presigned_url)
{
    sigv4_header h[] = {{"Host", S3_HOST}};
    sigv4_request req = {"GET", "/test.txt", 0, NULL, h, 1, "UNSIGNED-PAYLOAD"};
    sigv4_params p = s3_params();
    sigv4_result r;
    sign_ok(1, &req, &S3_CRED, &p, &r);
    cr_expect_str_eq(r.canonical_request,
                     "GET\n/test.txt\n"
                     "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" S3_AKID
                     "%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
                     "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\n"
                     "host:" S3_HOST "\n\nhost\nUNSIGNED-PAYLOAD");
    cr_expect_str_eq(r.string_to_sign,
                     "AWS4-HMAC-SHA256\n20130524T000000Z\n" S3_SCOPE "\n"
                     "3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04");
    cr_expect_str_eq(r.signature,
                     "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    cr_expect_str_eq(r.authorization,
                     "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" S3_AKID
                     "%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
                     "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature="
                     "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    cr_expect_eq(r.nextra, 0);
    sigv4_result_free(&r);
}

/* ---- S3: canonicalisation rules */

/* The canonical URI (second line of the canonical request) for path. */
static char *canon_uri_of(const char *path, int encoded, int normalize)
{
    sigv4_header h[] = {{"Host", "bucket.example"}};
    sigv4_request req = {"GET", path, encoded, NULL, h, 1, NULL};
    sigv4_params p = s3_params();
    p.normalize_path = normalize;
    sigv4_result r;
    sign_ok(0, &req, &S3_CRED, &p, &r);
    const char *a = strchr(r.canonical_request, '\n') + 1;
    char *uri = xstrndup(a, (size_t)(strchr(a, '\n') - a));
    sigv4_result_free(&r);
    return uri;
}

#define EXPECT_URI(path, enc, norm, want)                                                   \
    do {                                                                                     \
        char *u_ = canon_uri_of(path, enc, norm);                                            \
        cr_expect_str_eq(u_, want, "path \"%s\" (encoded %d, normalize %d)", path, enc, norm); \
        free(u_);                                                                            \
    } while (0)

Test(sigv4, s3_paths_are_never_normalised)
{
    EXPECT_URI("/bucket/a/../b//c", 0, 0, "/bucket/a/../b//c");
    EXPECT_URI("/bucket/./x/", 0, 0, "/bucket/./x/");
    EXPECT_URI("//", 0, 0, "//");
    EXPECT_URI("/bucket/a/../b//c", 1, 0, "/bucket/a/../b//c");
    /* The generic (non-S3) rule, for contrast. */
    EXPECT_URI("/bucket/a/../b//c", 0, 1, "/bucket/b/c");
    EXPECT_URI("/bucket/a/b/..", 0, 1, "/bucket/a/");
    EXPECT_URI("/..", 0, 1, "/");
    EXPECT_URI("", 0, 0, "/");
}

Test(sigv4, s3_keys_encoded_once_per_segment)
{
    const char *want = "/bucket/my%20key/%C3%BCn%C3%AF%20c%C3%B6d%C3%A9%2B%2A%3D~.txt";
    EXPECT_URI("/bucket/my key/\xc3\xbcn\xc3\xaf c\xc3\xb6" "d\xc3\xa9+*=~.txt", 0, 0, want);
    /* The same key already encoded (lower-case escapes too): same canonical URI,
     * not encoded a second time. */
    EXPECT_URI(want, 1, 0, want);
    EXPECT_URI("/bucket/my%20key/%c3%bcn%c3%af%20c%c3%b6d%c3%a9%2b%2a%3d%7E.txt", 1, 0, want);
    /* '/' separates segments; an encoded slash stays inside its segment. */
    EXPECT_URI("/bucket/a%2Fb/c", 1, 0, "/bucket/a%2Fb/c");
    /* A raw '%' in a key is data. */
    EXPECT_URI("/bucket/100%/x%41", 0, 0, "/bucket/100%25/x%2541");
    EXPECT_URI("/bucket/\xe1\x88\xb4", 0, 0, "/bucket/%E1%88%B4");
    EXPECT_URI("/bucket/a:b@c!d$e&f'g(h)i,j;k", 0, 0,
               "/bucket/a%3Ab%40c%21d%24e%26f%27g%28h%29i%2Cj%3Bk");

    /* Raw and encoded spellings sign identically. */
    sigv4_header h[] = {{"Host", S3_HOST}};
    sigv4_request raw = {"GET", "/bucket/my key", 0, NULL, h, 1, NULL};
    sigv4_request enc = {"GET", "/bucket/my%20key", 1, NULL, h, 1, NULL};
    sigv4_params p = s3_params();
    sigv4_result a, b;
    sign_ok(0, &raw, &S3_CRED, &p, &a);
    sign_ok(0, &enc, &S3_CRED, &p, &b);
    cr_expect_str_eq(a.signature, b.signature);
    sigv4_result_free(&a);
    sigv4_result_free(&b);
}

/* The canonical query string (third line) for query. */
static char *canon_query_of(const char *query)
{
    sigv4_header h[] = {{"Host", S3_HOST}};
    sigv4_request req = {"GET", "/", 0, query, h, 1, NULL};
    sigv4_params p = s3_params();
    sigv4_result r;
    sign_ok(0, &req, &S3_CRED, &p, &r);
    const char *a = strchr(strchr(r.canonical_request, '\n') + 1, '\n') + 1;
    char *q = xstrndup(a, (size_t)(strchr(a, '\n') - a));
    sigv4_result_free(&r);
    return q;
}

#define EXPECT_QUERY(query, want)                                     \
    do {                                                              \
        char *q_ = canon_query_of(query);                             \
        cr_expect_str_eq(q_, want, "query \"%s\"", query ? query : "(null)"); \
        free(q_);                                                     \
    } while (0)

Test(sigv4, s3_query_parameters)
{
    EXPECT_QUERY("uploads", "uploads=");
    EXPECT_QUERY("delete", "delete=");
    EXPECT_QUERY("uploads=", "uploads=");
    EXPECT_QUERY("uploadId=abc&partNumber=2", "partNumber=2&uploadId=abc");
    EXPECT_QUERY("versions&prefix=x", "prefix=x&versions=");
    EXPECT_QUERY("list-type=2&prefix=a/b c&continuation-token=x%3D%3D&start-after=",
                 "continuation-token=x%3D%3D&list-type=2&prefix=a%2Fb%20c&start-after=");
    EXPECT_QUERY("prefix=a%2fb%20c+d", "prefix=a%2Fb%20c%2Bd");
    EXPECT_QUERY("k=b&k=a&K=c", "K=c&k=a&k=b");
    EXPECT_QUERY("a=1&&b=2&", "a=1&b=2");
    EXPECT_QUERY("", "");
    EXPECT_QUERY(NULL, "");
    EXPECT_QUERY("x=%7E%41", "x=~A");
}

Test(sigv4, s3_content_sha256_signed)
{
    sigv4_header h[] = {{"Host", S3_HOST}};
    sigv4_request req = {"PUT", "/bucket/k", 0, NULL, h, 1, "UNSIGNED-PAYLOAD"};
    sigv4_params p = s3_params();
    sigv4_result r;
    sign_ok(0, &req, &S3_CRED, &p, &r);
    cr_expect(contains(r.canonical_request, "\nx-amz-content-sha256:UNSIGNED-PAYLOAD\n"));
    cr_expect(contains(r.canonical_request, "\nhost;x-amz-content-sha256;x-amz-date\n"));
    cr_expect(contains(r.authorization, "SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
    cr_expect(has_extra(&r, "x-amz-content-sha256: UNSIGNED-PAYLOAD"));
    sigv4_result_free(&r);

    /* Passed by the caller with the same value: signed once, not repeated. */
    sigv4_header h2[] = {{"Host", S3_HOST}, {"X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD"}};
    req.headers = h2;
    req.nheaders = 2;
    sigv4_result r2;
    sign_ok(0, &req, &S3_CRED, &p, &r2);
    cr_expect(contains(r2.canonical_request, "\nhost;x-amz-content-sha256;x-amz-date\n"));
    cr_expect_eq(r2.nextra, 1);
    cr_expect(has_extra(&r2, "X-Amz-Date: 20130524T000000Z"));
    sigv4_result_free(&r2);

    /* ... with another value: refused. */
    char err[256];
    req.payload_sha256 = EMPTY_SHA;
    cr_expect_eq(sigv4_sign_header(&req, &S3_CRED, &p, &r2, err, sizeof err), -1);
    cr_expect(contains(err, "x-amz-content-sha256"), "%s", err);

    /* sign_body off: not signed, not added. */
    req.headers = h;
    req.nheaders = 1;
    p.sign_body = 0;
    sign_ok(0, &req, &S3_CRED, &p, &r2);
    cr_expect_not(contains(r2.canonical_request, "x-amz-content-sha256"));
    cr_expect_eq(r2.nextra, 1);
    sigv4_result_free(&r2);
}

#define TOKEN "FwoGZXIvYXdzEJr//////////wEaDE+token/with+specials=="
#define TOKEN_ENC                                                                           \
    "FwoGZXIvYXdzEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaDE%2Btoken%2Fwith%2Bspecials%3D%3D"

Test(sigv4, s3_session_token)
{
    sigv4_credentials cred = {S3_AKID, S3_SECRET, TOKEN};
    sigv4_header h[] = {{"Host", S3_HOST}};
    sigv4_request req = {"GET", "/bucket/k", 0, NULL, h, 1, NULL};
    sigv4_params p = s3_params();
    sigv4_result r;

    sign_ok(0, &req, &cred, &p, &r);
    cr_expect(contains(r.canonical_request, "\nx-amz-security-token:" TOKEN "\n"));
    cr_expect(contains(r.authorization,
                       "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"));
    cr_expect_eq(r.nextra, 3);
    cr_expect_str_eq(r.extra[0], "X-Amz-Date: 20130524T000000Z");
    cr_expect_str_eq(r.extra[1], "X-Amz-Security-Token: " TOKEN);
    cr_expect_str_eq(r.extra[2], "x-amz-content-sha256: " EMPTY_SHA);
    sigv4_result_free(&r);

    /* Presigned, token signed (what S3 wants). */
    p.sign_body = 0;
    sign_ok(1, &req, &cred, &p, &r);
    cr_expect(contains(r.canonical_request,
                       "&X-Amz-Security-Token=" TOKEN_ENC "&X-Amz-SignedHeaders=host\n"));
    cr_expect(contains(r.authorization, "&X-Amz-Security-Token=" TOKEN_ENC "&"));
    cr_expect(contains(r.authorization, "&X-Amz-Signature="));
    char sig_signed[65];
    memcpy(sig_signed, r.signature, 65);
    sigv4_result_free(&r);

    /* Presigned, token appended after signing. */
    p.omit_session_token = 1;
    sign_ok(1, &req, &cred, &p, &r);
    cr_expect_not(contains(r.canonical_request, "Security-Token"));
    size_t al = strlen(r.authorization), tl = strlen("&X-Amz-Security-Token=" TOKEN_ENC);
    cr_expect(al > tl && strcmp(r.authorization + al - tl, "&X-Amz-Security-Token=" TOKEN_ENC) == 0,
              "%s", r.authorization);
    cr_expect_str_neq(r.signature, sig_signed);
    sigv4_result_free(&r);

    /* An empty token counts as none. */
    sigv4_credentials nocred = {S3_AKID, S3_SECRET, ""};
    p.omit_session_token = 0;
    sign_ok(0, &req, &nocred, &p, &r);
    cr_expect_not(contains(r.canonical_request, "security-token"));
    sigv4_result_free(&r);
}

Test(sigv4, s3_header_canonicalisation)
{
    sigv4_header h[] = {
        {"  Host ", S3_HOST},
        {"X-Amz-Meta-B", "  two   words\t here  "},
        {"x-amz-meta-a", "\"quoted   stays  collapsed\""},
        {"X-AMZ-META-B", "second"},
        {"x-amz-meta-empty", ""},
        {"X-Amz-Meta-Fold", "line1\r\n  line2"},
    };
    sigv4_request req = {"GET", "/b/k", 0, NULL, h, 6, NULL};
    sigv4_params p = s3_params();
    p.sign_body = 0;
    sigv4_result r;
    sign_ok(0, &req, &S3_CRED, &p, &r);
    cr_expect_str_eq(r.canonical_request,
                     "GET\n/b/k\n\n"
                     "host:" S3_HOST "\n"
                     "x-amz-date:20130524T000000Z\n"
                     "x-amz-meta-a:\"quoted stays collapsed\"\n"
                     "x-amz-meta-b:two words here,second\n"
                     "x-amz-meta-empty:\n"
                     "x-amz-meta-fold:line1 line2\n\n"
                     "host;x-amz-date;x-amz-meta-a;x-amz-meta-b;x-amz-meta-empty;x-amz-meta-fold\n"
                     EMPTY_SHA);
    sigv4_result_free(&r);
}

/* ---- errors, secrets, helpers */

#define EXPECT_REFUSED(presign, req, cred, p, what)                                           \
    do {                                                                                     \
        char err_[256] = "";                                                                 \
        sigv4_result r_;                                                                     \
        memset(&r_, 0x5a, sizeof r_);                                                        \
        errno = 0;                                                                           \
        int rc_ = (presign) ? sigv4_sign_query(req, cred, p, &r_, err_, sizeof err_)         \
                            : sigv4_sign_header(req, cred, p, &r_, err_, sizeof err_);       \
        cr_expect_eq(rc_, -1, "%s: accepted", what);                                         \
        cr_expect_eq(errno, EINVAL, "%s: errno %d", what, errno);                            \
        cr_expect(err_[0] != '\0', "%s: no message", what);                                  \
        cr_expect_not(contains(err_, S3_SECRET), "%s: the secret is in the message", what);  \
        cr_expect_null(r_.canonical_request, "%s: result not zeroed", what);                 \
        cr_expect_eq(r_.nextra, 0, "%s: result not zeroed", what);                           \
        sigv4_result_free(&r_);                                                              \
    } while (0)

Test(sigv4, malformed_requests_are_refused)
{
    sigv4_header h[] = {{"Host", S3_HOST}};
    sigv4_header noh[] = {{"Range", "bytes=0-1"}};
    sigv4_header badname[] = {{"Host", S3_HOST}, {"Bad Name", "x"}};
    sigv4_header emptyname[] = {{"Host", S3_HOST}, {"  ", "x"}};
    sigv4_params p = s3_params();
    sigv4_request ok = {"GET", "/b/k", 0, NULL, h, 1, NULL};
    sigv4_request req;

    req = ok;
    req.headers = noh;
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "no Host");
    req = ok;
    req.headers = badname;
    req.nheaders = 2;
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "header name with a space");
    req.headers = emptyname;
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "empty header name");
    req = ok;
    req.path = "b/k";
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "relative path");
    req = ok;
    req.path = "/b/%zz";
    req.encoded_path = 1;
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "bad escape in an encoded path");
    req = ok;
    req.query = "prefix=%4";
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "bad escape in the query");
    req = ok;
    req.query = "X-Amz-Signature=abc";
    EXPECT_REFUSED(1, &req, &S3_CRED, &p, "presigning a presigned query");
    req = ok;
    req.payload_sha256 = "not a hash";
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "bad payload hash");
    req = ok;
    req.method = "";
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "empty method");

    sigv4_params bp = p;
    bp.amz_date = "2013-05-24T00:00:00Z";
    EXPECT_REFUSED(0, &ok, &S3_CRED, &bp, "extended date");
    bp = p;
    bp.region = "";
    EXPECT_REFUSED(0, &ok, &S3_CRED, &bp, "empty region");
    bp = p;
    bp.service = "s3/x";
    EXPECT_REFUSED(0, &ok, &S3_CRED, &bp, "service with a slash");
    bp = p;
    bp.expires = 0;
    EXPECT_REFUSED(1, &ok, &S3_CRED, &bp, "expires 0");
    bp.expires = 604801;
    EXPECT_REFUSED(1, &ok, &S3_CRED, &bp, "expires over seven days");

    sigv4_credentials c = {NULL, S3_SECRET, NULL};
    EXPECT_REFUSED(0, &ok, &c, &p, "no access key");
    sigv4_credentials c2 = {S3_AKID, NULL, NULL};
    EXPECT_REFUSED(0, &ok, &c2, &p, "no secret");
    sigv4_credentials c3 = {S3_AKID, S3_SECRET, "tok\r\nX-Evil: 1"};
    EXPECT_REFUSED(0, &ok, &c3, &p, "token with CR LF");

    /* x-amz-date passed with another value than amz_date. */
    sigv4_header dh[] = {{"Host", S3_HOST}, {"X-Amz-Date", "20200101T000000Z"}};
    req = ok;
    req.headers = dh;
    req.nheaders = 2;
    EXPECT_REFUSED(0, &req, &S3_CRED, &p, "conflicting X-Amz-Date");
}

Test(sigv4, secret_never_in_output)
{
    sigv4_credentials cred = {S3_AKID, S3_SECRET, TOKEN};
    sigv4_header h[] = {{"Host", S3_HOST}, {"x-amz-meta-note", "hello"}};
    sigv4_request req = {"PUT", "/bucket/a key", 0, "uploads&x=1", h, 2, NULL};
    sigv4_params p = s3_params();
    const char *needles[] = {S3_SECRET, "AWS4" S3_SECRET, "wJalrXUtnFEMI", "EXAMPLEKEY"};
    for (int presign = 0; presign < 2; presign++) {
        for (int omit = 0; omit < 2; omit++) {
            p.omit_session_token = omit;
            sigv4_result r;
            sign_ok(presign, &req, &cred, &p, &r);
            for (size_t i = 0; i < sizeof needles / sizeof *needles; i++)
                cr_expect_not(result_mentions(&r, needles[i]), "%s found (presign %d omit %d)",
                              needles[i], presign, omit);
            sigv4_result_free(&r);
        }
    }
}

Test(sigv4, helpers)
{
    char d[17];
    sigv4_amz_date(1440938160, d);
    cr_expect_str_eq(d, "20150830T123600Z");
    sigv4_amz_date(1369353600, d);
    cr_expect_str_eq(d, "20130524T000000Z");
    sigv4_amz_date(0, d);
    cr_expect_str_eq(d, "19700101T000000Z");
    sigv4_amz_date(951782400, d);
    cr_expect_str_eq(d, "20000229T000000Z");
    sigv4_amz_date(253402300799, d);
    cr_expect_str_eq(d, "99991231T235959Z");

    char h[65];
    sigv4_sha256_hex("", 0, h);
    cr_expect_str_eq(h, EMPTY_SHA);
    sigv4_sha256_hex("abc", 3, h);
    cr_expect_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    const char *s = "a b/c~d_e-f.g+h=i%\xe1\x88\xb4";
    char *e1 = sigv4_uri_encode(s, strlen(s), 1), *e0 = sigv4_uri_encode(s, strlen(s), 0);
    cr_expect_str_eq(e1, "a%20b/c~d_e-f.g%2Bh%3Di%25%E1%88%B4");
    cr_expect_str_eq(e0, "a%20b%2Fc~d_e-f.g%2Bh%3Di%25%E1%88%B4");
    free(e1);
    free(e0);
    char *e2 = sigv4_uri_encode("x\0y", 3, 0);
    cr_expect_str_eq(e2, "x%00y");
    free(e2);
}
