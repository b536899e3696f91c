/*
 * sigv4.c - AWS Signature Version 4: the canonical request, the string to
 * sign, the signing key (HMAC chain) and the signature, for the
 * Authorization-header form and the presigned query-string form.
 *
 * Follows the AWS General Reference ("Signature Version 4 signing process":
 * canonical request, string to sign, signing key, signature; "Create a
 * presigned URL") and the Amazon S3 API Reference ("Authenticating Requests
 * (AWS Signature Version 4)": no path normalisation, each path segment
 * URI-encoded once, x-amz-content-sha256). Checked against the AWS signing
 * test suite in ../shared/testdata/sigv4 (tests/test_sigv4.c). HMAC-SHA256
 * and SHA-256 come from OpenSSL's libcrypto.
 *
 * Canonicalisation rules implemented here:
 *  - URI: with normalize_path, "." and ".." segments are removed and empty
 *    segments merged (a trailing slash is kept); then every segment is
 *    URI-encoded once with the unreserved set A-Z a-z 0-9 - . _ ~. An
 *    already-encoded path (encoded_path) is decoded segment by segment first,
 *    so an encoded "/" (%2F) inside a segment stays encoded.
 *  - Query: split on '&', each parameter split at the first '=', name and
 *    value percent-decoded ('+' is a literal plus) and re-encoded, sorted by
 *    encoded name then encoded value; a valueless parameter gets "=".
 *  - Headers: names lower-cased and trimmed; values trimmed and every run of
 *    whitespace (space, tab, CR, LF: folded continuation lines) collapsed to
 *    one space; repeated names joined with "," in the order given; sorted by
 *    name. Every header the caller passes is signed.
 *
 * Secrets: the secret key only enters the HMAC chain (its buffers are
 * cleansed); error messages name fields, never their values.
 */
#include "sigv4.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define ALGORITHM "AWS4-HMAC-SHA256"
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define MAX_EXPIRES 604800u /* seven days, the SigV4 maximum */

/* ---- errors */

static int fail(char *err, size_t errlen, int eno, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int eno, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    errno = eno;
    return -1;
}

#define OOM(err, errlen) fail(err, errlen, ENOMEM, "sigv4: out of memory")

/* ---- growable strings (an allocation failure sticks in `oom`) */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_add(sbuf *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

static void sb_addc(sbuf *b, char c)
{
    sb_addn(b, &c, 1);
}

static void sb_free(sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Returns the string (never NULL unless out of memory) and resets b. */
static char *sb_take(sbuf *b)
{
    if (!b->oom && !b->p)
        sb_addn(b, "", 0);
    if (b->oom) {
        sb_free(b);
        return NULL;
    }
    char *p = b->p;
    memset(b, 0, sizeof *b);
    return p;
}

/* ---- hashing */

static const char HEX[] = "0123456789abcdef";

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = HEX[in[i] >> 4];
        out[2 * i + 1] = HEX[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void sigv4_sha256_hex(const void *buf, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(len ? buf : "", len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) {
        /* Only on a broken libcrypto; an all-zero hash never verifies. */
        memset(out, '0', 64);
        out[64] = '\0';
        return;
    }
    hex_encode(md, 32, out);
}

static int hmac_sha256(const void *key, size_t klen, const void *data, size_t dlen,
                       unsigned char out[32])
{
    unsigned int olen = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, data, dlen, out, &olen) || olen != 32)
        return -1;
    return 0;
}

/* ---- URI encoding */

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

static void sb_uri_encode(sbuf *b, const char *s, size_t len, int keep_slash)
{
    static const char UHEX[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c) || (keep_slash && c == '/')) {
            sb_addc(b, (char)c);
        } else {
            char e[3] = {'%', UHEX[c >> 4], UHEX[c & 15]};
            sb_addn(b, e, 3);
        }
    }
}

char *sigv4_uri_encode(const char *s, size_t len, int keep_slash)
{
    sbuf b = {0};
    sb_uri_encode(&b, s, len, keep_slash);
    return sb_take(&b);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Appends the percent-decoding of s[0..len) to b; -1 on a malformed escape. */
static int sb_pct_decode(sbuf *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            sb_addc(b, s[i]);
            continue;
        }
        if (len - i < 3)
            return -1;
        int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
        if (hi < 0 || lo < 0)
            return -1;
        sb_addc(b, (char)(hi << 4 | lo));
        i += 2;
    }
    return 0;
}

/* ---- dates */

static int valid_amz_date(const char *d)
{
    if (!d || strlen(d) != 16 || d[8] != 'T' || d[15] != 'Z')
        return 0;
    for (int i = 0; i < 15; i++)
        if (i != 8 && (d[i] < '0' || d[i] > '9'))
            return 0;
    return 1;
}

void sigv4_amz_date(int64_t t, char out[17])
{
    /* Days to civil date (proleptic Gregorian), valid for years 1970..9999. */
    if (t < 0)
        t = 0;
    if (t > INT64_C(253402300799))
        t = INT64_C(253402300799);
    int64_t days = t / 86400, secs = t % 86400;
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1);
    int m = (int)(mp < 10 ? mp + 3 : mp - 9);
    int y = (int)(yoe + era * 400 + (m <= 2));
    int v[6] = {y, m, d, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60)};
    int w[6] = {4, 2, 2, 2, 2, 2};
    char *o = out;
    for (int i = 0; i < 6; i++) {
        for (int k = w[i] - 1, x = v[i]; k >= 0; k--, x /= 10)
            o[k] = (char)('0' + x % 10);
        o += w[i];
        if (i == 2)
            *o++ = 'T';
    }
    *o++ = 'Z';
    *o = '\0';
}

/* ---- canonical URI */

typedef struct seg {
    const char *s;
    size_t n;
} seg;

static int is_dot(const seg *g)
{
    return g->n == 1 && g->s[0] == '.';
}

static int is_dotdot(const seg *g)
{
    return g->n == 2 && g->s[0] == '.' && g->s[1] == '.';
}

/* Appends the canonical URI of req->path to out. */
static int canonical_uri(const sigv4_request *req, int normalize, sbuf *out, char *err,
                         size_t errlen)
{
    const char *path = req->path && *req->path ? req->path : "/";
    if (path[0] != '/')
        return fail(err, errlen, EINVAL, "sigv4: the request path must start with '/'");

    size_t nseg = 0;
    for (const char *c = path; *c; c++)
        nseg += *c == '/';
    seg *segs = calloc(nseg, sizeof *segs);
    size_t *keep = calloc(nseg, sizeof *keep);
    sbuf dec = {0}; /* decoded segments, NUL-separated, when encoded_path */
    size_t *offs = calloc(nseg, sizeof *offs);
    int rc = 0;
    if (!segs || !keep || !offs) {
        rc = OOM(err, errlen);
        goto done;
    }

    /* Split into the pieces after each '/'. */
    const char *c = path + 1;
    for (size_t i = 0; i < nseg; i++) {
        const char *e = strchr(c, '/');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (req->encoded_path) {
            offs[i] = dec.len;
            if (sb_pct_decode(&dec, c, n) < 0) {
                rc = fail(err, errlen, EINVAL,
                          "sigv4: malformed percent-encoding in the request path");
                goto done;
            }
            segs[i].n = dec.len - offs[i];
            sb_addc(&dec, '\0');
        } else {
            segs[i].s = c;
            segs[i].n = n;
        }
        c += n + 1;
    }
    if (dec.oom) {
        rc = OOM(err, errlen);
        goto done;
    }
    if (req->encoded_path)
        for (size_t i = 0; i < nseg; i++)
            segs[i].s = dec.p + offs[i];

    if (!normalize) {
        for (size_t i = 0; i < nseg; i++) {
            sb_addc(out, '/');
            sb_uri_encode(out, segs[i].s, segs[i].n, 0);
        }
        goto done;
    }

    /* RFC 3986 dot-segment removal, with empty segments merged. */
    size_t nkeep = 0;
    for (size_t i = 0; i < nseg; i++) {
        if (segs[i].n == 0 || is_dot(&segs[i]))
            continue;
        if (is_dotdot(&segs[i])) {
            if (nkeep)
                nkeep--;
            continue;
        }
        keep[nkeep++] = i;
    }
    const seg *last = &segs[nseg - 1];
    int trailing = last->n == 0 || is_dot(last) || is_dotdot(last);
    for (size_t k = 0; k < nkeep; k++) {
        sb_addc(out, '/');
        sb_uri_encode(out, segs[keep[k]].s, segs[keep[k]].n, 0);
    }
    if (nkeep == 0 || trailing)
        sb_addc(out, '/');

done:
    free(segs);
    free(keep);
    free(offs);
    sb_free(&dec);
    return rc;
}

/* ---- canonical query string */

typedef struct qparam {
    char *name; /* encoded */
    char *value;
} qparam;

typedef struct qlist {
    qparam *v;
    size_t n, cap;
} qlist;

static void qlist_free(qlist *q)
{
    for (size_t i = 0; i < q->n; i++) {
        free(q->v[i].name);
        free(q->v[i].value);
    }
    free(q->v);
    memset(q, 0, sizeof *q);
}

/* Adds a parameter from its decoded name and value; -1 when out of memory. */
static int qlist_add(qlist *q, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        qparam *nv = realloc(q->v, cap * sizeof *nv);
        if (!nv)
            return -1;
        q->v = nv;
        q->cap = cap;
    }
    char *en = sigv4_uri_encode(name, nlen, 0);
    char *ev = sigv4_uri_encode(value, vlen, 0);
    if (!en || !ev) {
        free(en);
        free(ev);
        return -1;
    }
    q->v[q->n].name = en;
    q->v[q->n].value = ev;
    q->n++;
    return 0;
}

static int qlist_add_str(qlist *q, const char *name, const char *value)
{
    return qlist_add(q, name, strlen(name), value, strlen(value));
}

static int qparam_cmp(const void *a, const void *b)
{
    const qparam *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->value, y->value);
}

/* Names the presigned form adds itself; a query that already has one is refused. */
static const char *const PRESIGN_NAMES[] = {
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
    "X-Amz-SignedHeaders", "X-Amz-Security-Token", "X-Amz-Signature",
};

/* Parses the caller's query into q (decoded, then re-encoded). */
static int parse_query(const char *query, int presign, qlist *q, char *err, size_t errlen)
{
    if (!query)
        return 0;
    const char *c = query;
    while (*c) {
        const char *amp = strchr(c, '&');
        size_t n = amp ? (size_t)(amp - c) : strlen(c);
        if (n) {
            const char *eq = memchr(c, '=', n);
            size_t nl = eq ? (size_t)(eq - c) : n;
            sbuf name = {0}, value = {0};
            int bad = sb_pct_decode(&name, c, nl) < 0 ||
                      (eq && sb_pct_decode(&value, eq + 1, n - nl - 1) < 0);
            if (bad) {
                sb_free(&name);
                sb_free(&value);
                return fail(err, errlen, EINVAL,
                            "sigv4: malformed percent-encoding in the query string");
            }
            int oom = name.oom || value.oom;
            if (!oom && presign) {
                for (size_t i = 0; i < sizeof PRESIGN_NAMES / sizeof *PRESIGN_NAMES; i++) {
                    if (name.len == strlen(PRESIGN_NAMES[i]) &&
                        memcmp(name.p, PRESIGN_NAMES[i], name.len) == 0) {
                        sb_free(&name);
                        sb_free(&value);
                        return fail(err, errlen, EINVAL,
                                    "sigv4: the query already has %s; the presigner adds it",
                                    PRESIGN_NAMES[i]);
                    }
                }
            }
            if (!oom)
                oom = qlist_add(q, name.p ? name.p : "", name.len, value.p ? value.p : "",
                                value.len) < 0;
            sb_free(&name);
            sb_free(&value);
            if (oom)
                return OOM(err, errlen);
        }
        c += n + (amp ? 1 : 0);
    }
    return 0;
}

static void sb_add_query(sbuf *out, qlist *q)
{
    if (q->n > 1)
        qsort(q->v, q->n, sizeof *q->v, qparam_cmp);
    for (size_t i = 0; i < q->n; i++) {
        if (i)
            sb_addc(out, '&');
        sb_add(out, q->v[i].name);
        sb_addc(out, '=');
        sb_add(out, q->v[i].value);
    }
}

/* ---- canonical headers */

typedef struct chdr {
    char *name;  /* lower-cased, trimmed */
    char *value; /* trimmed, whitespace runs collapsed */
    size_t order;
} chdr;

typedef struct hlist {
    chdr *v;
    size_t n, cap;
} hlist;

static void hlist_free(hlist *h)
{
    for (size_t i = 0; i < h->n; i++) {
        free(h->v[i].name);
        free(h->v[i].value);
    }
    free(h->v);
    memset(h, 0, sizeof *h);
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Header name token: visible ASCII except ':' (RFC 9110 is stricter; this
 * only keeps the canonical form unambiguous). */
static int valid_name_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != ':';
}

/* Lower-cased, trimmed name into *out: 0, -1 on a bad name, -2 on ENOMEM. */
static int canon_name(const char *s, char **out)
{
    *out = NULL;
    while (is_ws(*s))
        s++;
    size_t n = strlen(s);
    while (n && is_ws(s[n - 1]))
        n--;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!valid_name_char((unsigned char)s[i]))
            return -1;
    char *o = malloc(n + 1);
    if (!o)
        return -2;
    for (size_t i = 0; i < n; i++)
        o[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
    o[n] = '\0';
    *out = o;
    return 0;
}

static char *canon_value(const char *s)
{
    sbuf b = {0};
    while (is_ws(*s))
        s++;
    while (*s) {
        if (is_ws(*s)) {
            while (is_ws(*s))
                s++;
            if (*s)
                sb_addc(&b, ' ');
            continue;
        }
        sb_addc(&b, *s++);
    }
    return sb_take(&b);
}

/* Adds one header; -1 with err set on a bad name or no memory. */
static int hlist_add(hlist *h, const char *name, const char *value, char *err, size_t errlen)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        chdr *nv = realloc(h->v, cap * sizeof *nv);
        if (!nv)
            return OOM(err, errlen);
        h->v = nv;
        h->cap = cap;
    }
    char *cn;
    int r = canon_name(name ? name : "", &cn);
    if (r == -1)
        return fail(err, errlen, EINVAL, "sigv4: header #%zu has an empty or invalid name",
                    h->n + 1);
    if (r < 0)
        return OOM(err, errlen);
    char *cv = canon_value(value ? value : "");
    if (!cv) {
        free(cn);
        return OOM(err, errlen);
    }
    h->v[h->n].name = cn;
    h->v[h->n].value = cv;
    h->v[h->n].order = h->n;
    h->n++;
    return 0;
}

static const chdr *hlist_find(const hlist *h, const char *lname)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->v[i].name, lname) == 0)
            return &h->v[i];
    return NULL;
}

static int chdr_cmp(const void *a, const void *b)
{
    const chdr *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Sorts h and appends the canonical header block to out and the signed
 * header list to signed_hdrs. */
static void sb_add_headers(sbuf *out, sbuf *signed_hdrs, hlist *h)
{
    if (h->n > 1)
        qsort(h->v, h->n, sizeof *h->v, chdr_cmp);
    for (size_t i = 0; i < h->n; i++) {
        int first = i == 0 || strcmp(h->v[i - 1].name, h->v[i].name) != 0;
        int last = i + 1 == h->n || strcmp(h->v[i + 1].name, h->v[i].name) != 0;
        if (first) {
            sb_add(out, h->v[i].name);
            sb_addc(out, ':');
            if (signed_hdrs->len)
                sb_addc(signed_hdrs, ';');
            sb_add(signed_hdrs, h->v[i].name);
        } else {
            sb_addc(out, ',');
        }
        sb_add(out, h->v[i].value);
        if (last)
            sb_addc(out, '\n');
    }
}

/* The signer's own header (x-amz-date, ...): added unless the caller already
 * passed it with the same value; a different value is an error. *added says
 * whether the caller must still send it. */
static int add_own_header(hlist *h, const char *lname, const char *value, int *added,
                          char *err, size_t errlen)
{
    const chdr *have = hlist_find(h, lname);
    *added = 0;
    if (have) {
        if (strcmp(have->value, value) != 0)
            return fail(err, errlen, EINVAL,
                        "sigv4: the request's %s header differs from the value being signed",
                        lname);
        return 0;
    }
    if (hlist_add(h, lname, value, err, errlen) < 0)
        return -1;
    *added = 1;
    return 0;
}

/* ---- validation */

/* Scope parts and the access key id: non-empty, printable, no '/', ',', ';',
 * '=' or whitespace (they would break the scope or the Authorization value). */
static int valid_scope_part(const char *s)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || c == '/' || c == ',' || c == ';' || c == '=')
            return 0;
    }
    return 1;
}

static int valid_payload_hash(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return 0;
    }
    return 1;
}

static int has_ctl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return 1;
    return 0;
}

static int validate(const sigv4_request *req, const sigv4_credentials *cred,
                    const sigv4_params *p, int presign, char *err, size_t errlen)
{
    if (!req || !cred || !p)
        return fail(err, errlen, EINVAL, "sigv4: missing request, credentials or parameters");
    if (!req->method || !*req->method || strpbrk(req->method, " \t\r\n"))
        return fail(err, errlen, EINVAL, "sigv4: missing or malformed HTTP method");
    if (req->nheaders && !req->headers)
        return fail(err, errlen, EINVAL, "sigv4: nheaders is set but headers is NULL");
    if (!valid_scope_part(cred->access_key_id))
        return fail(err, errlen, EINVAL, "sigv4: missing or malformed access key id");
    if (!cred->secret_access_key || !*cred->secret_access_key)
        return fail(err, errlen, EINVAL, "sigv4: missing secret access key");
    if (cred->session_token && has_ctl(cred->session_token))
        return fail(err, errlen, EINVAL, "sigv4: the session token contains control characters");
    if (!valid_scope_part(p->region))
        return fail(err, errlen, EINVAL, "sigv4: missing or malformed region");
    if (!valid_scope_part(p->service))
        return fail(err, errlen, EINVAL, "sigv4: missing or malformed service name");
    if (!valid_amz_date(p->amz_date))
        return fail(err, errlen, EINVAL,
                    "sigv4: amz_date must be ISO 8601 basic UTC, e.g. 20150830T123600Z");
    if (req->payload_sha256 && !valid_payload_hash(req->payload_sha256))
        return fail(err, errlen, EINVAL,
                    "sigv4: payload_sha256 must be a hex digest or UNSIGNED-PAYLOAD");
    if (presign && (p->expires < 1 || p->expires > MAX_EXPIRES))
        return fail(err, errlen, EINVAL, "sigv4: expires must be 1..%u seconds (got %lu)",
                    MAX_EXPIRES, (unsigned long)p->expires);
    return 0;
}

/* ---- signing */

/* hex(HMAC(signing key, string_to_sign)) into sig[65]. */
static int compute_signature(const char *secret, const char *date8, const char *region,
                             const char *service, const char *sts, char sig[65])
{
    size_t slen = strlen(secret);
    unsigned char *k0 = malloc(4 + slen);
    unsigned char k[32], mac[32];
    int rc = -1;
    if (!k0)
        return -1;
    memcpy(k0, "AWS4", 4);
    memcpy(k0 + 4, secret, slen);
    if (hmac_sha256(k0, 4 + slen, date8, 8, k) == 0 &&
        hmac_sha256(k, 32, region, strlen(region), k) == 0 &&
        hmac_sha256(k, 32, service, strlen(service), k) == 0 &&
        hmac_sha256(k, 32, "aws4_request", 12, k) == 0 &&
        hmac_sha256(k, 32, sts, strlen(sts), mac) == 0) {
        hex_encode(mac, 32, sig);
        rc = 0;
    }
    OPENSSL_clear_free(k0, 4 + slen);
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(mac, sizeof mac);
    return rc;
}

static int sign(const sigv4_request *req, const sigv4_credentials *cred, const sigv4_params *p,
                int presign, sigv4_result *res, char *err, size_t errlen)
{
    if (res)
        memset(res, 0, sizeof *res);
    if (!res)
        return fail(err, errlen, EINVAL, "sigv4: missing result");
    if (validate(req, cred, p, presign, err, errlen) < 0)
        return -1;

    const char *token =
        cred->session_token && *cred->session_token ? cred->session_token : NULL;
    const char *payload = req->payload_sha256 ? req->payload_sha256 : EMPTY_SHA256;
    char date8[9];
    memcpy(date8, p->amz_date, 8);
    date8[8] = '\0';

    hlist h = {0};
    qlist q = {0};
    sbuf creq = {0}, signed_hdrs = {0}, scope = {0}, sts = {0}, auth = {0}, cred_str = {0};
    sbuf hdrblock = {0};
    int rc = -1;
    int add_date = 0, add_token = 0, add_sha = 0;

    for (size_t i = 0; i < req->nheaders; i++)
        if (hlist_add(&h, req->headers[i].name, req->headers[i].value, err, errlen) < 0)
            goto out;
    if (!hlist_find(&h, "host")) {
        fail(err, errlen, EINVAL, "sigv4: the request has no Host header");
        goto out;
    }
    if (!presign) {
        if (add_own_header(&h, "x-amz-date", p->amz_date, &add_date, err, errlen) < 0)
            goto out;
        if (token && !p->omit_session_token &&
            add_own_header(&h, "x-amz-security-token", token, &add_token, err, errlen) < 0)
            goto out;
        if (token && p->omit_session_token) {
            if (hlist_find(&h, "x-amz-security-token")) {
                fail(err, errlen, EINVAL,
                     "sigv4: omit_session_token is set but the request already has "
                     "X-Amz-Security-Token");
                goto out;
            }
            add_token = 1; /* sent, not signed */
        }
        if (p->sign_body &&
            add_own_header(&h, "x-amz-content-sha256", payload, &add_sha, err, errlen) < 0)
            goto out;
    }

    sb_add(&scope, date8);
    sb_addc(&scope, '/');
    sb_add(&scope, p->region);
    sb_addc(&scope, '/');
    sb_add(&scope, p->service);
    sb_add(&scope, "/aws4_request");
    sb_add(&cred_str, cred->access_key_id);
    sb_addc(&cred_str, '/');
    sb_addn(&cred_str, scope.p, scope.len);

    /* Canonical request. */
    sb_add(&creq, req->method);
    sb_addc(&creq, '\n');
    if (canonical_uri(req, p->normalize_path, &creq, err, errlen) < 0)
        goto out;
    sb_addc(&creq, '\n');
    if (parse_query(req->query, presign, &q, err, errlen) < 0)
        goto out;
    sb_add_headers(&hdrblock, &signed_hdrs, &h);
    if (presign && !hdrblock.oom && !signed_hdrs.oom && !scope.oom && !cred_str.oom) {
        char exp[16];
        snprintf(exp, sizeof exp, "%lu", (unsigned long)p->expires);
        if (qlist_add_str(&q, "X-Amz-Algorithm", ALGORITHM) < 0 ||
            qlist_add_str(&q, "X-Amz-Credential", cred_str.p) < 0 ||
            qlist_add_str(&q, "X-Amz-Date", p->amz_date) < 0 ||
            qlist_add_str(&q, "X-Amz-Expires", exp) < 0 ||
            (token && !p->omit_session_token &&
             qlist_add_str(&q, "X-Amz-Security-Token", token) < 0) ||
            qlist_add_str(&q, "X-Amz-SignedHeaders", signed_hdrs.p) < 0) {
            OOM(err, errlen);
            goto out;
        }
    }
    size_t qstart = creq.len;
    sb_add_query(&creq, &q);
    size_t qend = creq.len;
    sb_addc(&creq, '\n');
    if (hdrblock.p)
        sb_addn(&creq, hdrblock.p, hdrblock.len);
    int hoom = hdrblock.oom;
    sb_addc(&creq, '\n');
    if (signed_hdrs.p)
        sb_addn(&creq, signed_hdrs.p, signed_hdrs.len);
    sb_addc(&creq, '\n');
    sb_add(&creq, payload);
    if (hoom || creq.oom || signed_hdrs.oom || scope.oom || cred_str.oom) {
        OOM(err, errlen);
        goto out;
    }

    /* String to sign and signature. */
    char creq_hash[65], sig[65];
    sigv4_sha256_hex(creq.p, creq.len, creq_hash);
    sb_add(&sts, ALGORITHM "\n");
    sb_add(&sts, p->amz_date);
    sb_addc(&sts, '\n');
    sb_addn(&sts, scope.p, scope.len);
    sb_addc(&sts, '\n');
    sb_add(&sts, creq_hash);
    if (sts.oom) {
        OOM(err, errlen);
        goto out;
    }
    if (compute_signature(cred->secret_access_key, date8, p->region, p->service, sts.p, sig) <
        0) {
        fail(err, errlen, EIO, "sigv4: HMAC-SHA256 failed (libcrypto)");
        goto out;
    }

    /* What goes on the wire. */
    if (presign) {
        sb_addn(&auth, creq.p + qstart, qend - qstart);
        sb_add(&auth, "&X-Amz-Signature=");
        sb_add(&auth, sig);
        if (token && p->omit_session_token) {
            sb_add(&auth, "&X-Amz-Security-Token=");
            sb_uri_encode(&auth, token, strlen(token), 0);
        }
    } else {
        sb_add(&auth, ALGORITHM " Credential=");
        sb_addn(&auth, cred_str.p, cred_str.len);
        sb_add(&auth, ", SignedHeaders=");
        sb_addn(&auth, signed_hdrs.p, signed_hdrs.len);
        sb_add(&auth, ", Signature=");
        sb_add(&auth, sig);
        const char *names[3] = {"X-Amz-Date", "X-Amz-Security-Token", "x-amz-content-sha256"};
        const char *values[3] = {p->amz_date, token, payload};
        int want[3] = {add_date, add_token, add_sha};
        for (int i = 0; i < 3; i++) {
            if (!want[i])
                continue;
            sbuf e = {0};
            sb_add(&e, names[i]);
            sb_add(&e, ": ");
            sb_add(&e, values[i]);
            if (!(res->extra[res->nextra] = sb_take(&e))) {
                OOM(err, errlen);
                goto out;
            }
            res->nextra++;
        }
    }
    res->signature = malloc(65);
    if (res->signature)
        memcpy(res->signature, sig, 65);
    res->canonical_request = sb_take(&creq);
    res->string_to_sign = sb_take(&sts);
    res->authorization = sb_take(&auth);
    if (!res->signature || !res->canonical_request || !res->string_to_sign ||
        !res->authorization) {
        OOM(err, errlen);
        goto out;
    }
    rc = 0;

out:
    if (rc < 0)
        sigv4_result_free(res);
    hlist_free(&h);
    qlist_free(&q);
    sb_free(&creq);
    sb_free(&signed_hdrs);
    sb_free(&scope);
    sb_free(&sts);
    sb_free(&auth);
    sb_free(&cred_str);
    sb_free(&hdrblock);
    return rc;
}

int sigv4_sign_header(const sigv4_request *req, const sigv4_credentials *cred,
                      const sigv4_params *p, sigv4_result *res, char *err, size_t errlen)
{
    return sign(req, cred, p, 0, res, err, errlen);
}

int sigv4_sign_query(const sigv4_request *req, const sigv4_credentials *cred,
                     const sigv4_params *p, sigv4_result *res, char *err, size_t errlen)
{
    return sign(req, cred, p, 1, res, err, errlen);
}

void sigv4_result_free(sigv4_result *res)
{
    if (!res)
        return;
    free(res->canonical_request);
    free(res->string_to_sign);
    free(res->signature);
    free(res->authorization);
    for (size_t i = 0; i < sizeof res->extra / sizeof *res->extra; i++)
        free(res->extra[i]);
    memset(res, 0, sizeof *res);
}
