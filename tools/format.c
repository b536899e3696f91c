/*
 * format.c - the import/export codecs of the s4kv command line (nul, tsv,
 * jsonl; see format.h for the exact formats).
 *
 * Invariant: for every format, fmt_reader_next on the output of fmt_write
 * yields exactly the bytes that were written, and fmt_write of what the
 * reader yields reproduces canonical input byte for byte. JSON strings are
 * escaped and parsed by jansson; base64 goes through OpenSSL's EVP block
 * coder, with the strict checks it lacks (padding, alphabet, spare bits) done
 * here first.
 */
#include "format.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ------------------------------------------------------ */

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int fmt_parse_name(const char *name, fmt_format *out)
{
    if (strcmp(name, "jsonl") == 0)
        *out = FMT_JSONL;
    else if (strcmp(name, "tsv") == 0)
        *out = FMT_TSV;
    else if (strcmp(name, "nul") == 0)
        *out = FMT_NUL;
    else
        return FMT_EDATA;
    return 0;
}

const char *fmt_name(fmt_format f)
{
    switch (f) {
    case FMT_JSONL: return "jsonl";
    case FMT_TSV: return "tsv";
    case FMT_NUL: return "nul";
    }
    return "?";
}

char *fmt_quote(char *buf, size_t cap, const void *bytes, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *p = bytes;
    size_t show = len > 60 ? 60 : len, o = 0;
    if (cap == 0)
        return buf;
    /* worst case per byte is 4 chars; stop early when the buffer is short */
    if (o + 1 < cap)
        buf[o++] = '\'';
    for (size_t i = 0; i < show && o + 4 + 5 < cap; i++) {
        uint8_t c = p[i];
        const char *esc = NULL;
        switch (c) {
        case '\\': esc = "\\\\"; break;
        case '\t': esc = "\\t"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\0': esc = "\\0"; break;
        case '\'': esc = "\\'"; break;
        default: break;
        }
        if (esc) {
            buf[o++] = esc[0];
            buf[o++] = esc[1];
        } else if (c < 0x20 || c >= 0x7f) {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        } else {
            buf[o++] = (char)c;
        }
    }
    if (o + 1 < cap)
        buf[o++] = '\'';
    if (show < len && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o < cap ? o : cap - 1] = 0;
    return buf;
}

/* Printable form of one byte for "unknown escape" messages. */
static const char *byte_repr(uint8_t c, char tmp[8])
{
    if (c >= 0x21 && c < 0x7f)
        snprintf(tmp, 8, "%c", c);
    else
        snprintf(tmp, 8, "\\x%02x", c);
    return tmp;
}

int fmt_utf8_valid(const void *buf, size_t len)
{
    const uint8_t *p = buf, *end = p + len;
    while (p < end) {
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2; cp = c & 0x1f; min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3; cp = c & 0x0f; min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4; cp = c & 0x07; min = 0x10000;
        } else {
            return 0;
        }
        if ((size_t)(end - p) < n)
            return 0;
        for (size_t i = 1; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        p += n;
    }
    return 1;
}

/* ---- base64 ------------------------------------------------------------- */

/* EVP_EncodeBlock/DecodeBlock take an int length: work in chunks. */
#define B64_CHUNK_IN  (3u * 256 * 1024)
#define B64_CHUNK_OUT (4u * 256 * 1024)

char *fmt_b64_encode(const void *buf, size_t len, size_t *outlen)
{
    size_t n = (len + 2) / 3 * 4;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    const unsigned char *in = buf;
    size_t o = 0;
    for (size_t i = 0; i < len; i += B64_CHUNK_IN) {
        size_t c = len - i < B64_CHUNK_IN ? len - i : B64_CHUNK_IN;
        o += (size_t)EVP_EncodeBlock((unsigned char *)out + o, in + i, (int)c);
    }
    out[o] = 0;
    *outlen = o;
    return out;
}

static int b64_val(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict RFC 4648 check: EVP_DecodeBlock itself skips surrounding
 * whitespace, accepts "Q===" and "QQ=A" and ignores spare bits. Returns the
 * number of padding characters, or -1. */
static int b64_check(const char *s, size_t len)
{
    if (len % 4 != 0)
        return -1;
    size_t pad = 0;
    if (len >= 4) {
        if (s[len - 1] == '=')
            pad = s[len - 2] == '=' ? 2 : 1;
    }
    for (size_t i = 0; i < len - pad; i++)
        if (b64_val(s[i]) < 0)
            return -1;
    if (pad == 2 && (b64_val(s[len - 3]) & 0x0f) != 0)
        return -1;
    if (pad == 1 && (b64_val(s[len - 2]) & 0x03) != 0)
        return -1;
    return (int)pad;
}

uint8_t *fmt_b64_decode(const char *s, size_t len, size_t *outlen, int *bad)
{
    *bad = 0;
    int pad = b64_check(s, len);
    if (pad < 0) {
        *bad = 1;
        return NULL;
    }
    uint8_t *out = malloc(len / 4 * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += B64_CHUNK_OUT) {
        size_t c = len - i < B64_CHUNK_OUT ? len - i : B64_CHUNK_OUT;
        int r = EVP_DecodeBlock(out + o, (const unsigned char *)s + i, (int)c);
        if (r < 0) { /* cannot happen after b64_check; be safe */
            free(out);
            *bad = 1;
            return NULL;
        }
        o += (size_t)r;
    }
    /* EVP_DecodeBlock counts the padding as decoded zero bytes */
    o -= (size_t)pad;
    out[o] = 0;
    *outlen = o;
    return out;
}

/* ---- writer ------------------------------------------------------------- */

static int put_bytes(FILE *out, const void *p, size_t n)
{
    return (n == 0 || fwrite(p, 1, n, out) == n) ? 0 : FMT_EIO;
}

int fmt_write_tsv_field(FILE *out, const void *buf, size_t len)
{
    if (len == 0)
        return 0;
    const uint8_t *p = buf, *run = p, *end = p + len;
    for (; p < end; p++) {
        const char *esc;
        switch (*p) {
        case '\\': esc = "\\\\"; break;
        case '\t': esc = "\\t"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\0': esc = "\\0"; break;
        default: continue;
        }
        if (put_bytes(out, run, (size_t)(p - run)) || put_bytes(out, esc, 2))
            return FMT_EIO;
        run = p + 1;
    }
    return put_bytes(out, run, (size_t)(end - run));
}

/* A JSON member name and its string: "name": "..." */
typedef struct json_field {
    int b64;        /* 1: s holds base64 text that needs no escaping */
    json_t *js;     /* plain form: a jansson string (dumped with escapes) */
    char *s;        /* b64 form */
    size_t slen;
} json_field;

static int json_field_make(json_field *f, const void *buf, size_t len)
{
    memset(f, 0, sizeof *f);
    if (fmt_utf8_valid(buf, len)) {
        f->js = json_stringn_nocheck(len ? buf : "", len);
        return f->js ? 0 : FMT_ENOMEM;
    }
    f->b64 = 1;
    f->s = fmt_b64_encode(buf, len, &f->slen);
    return f->s ? 0 : FMT_ENOMEM;
}

static void json_field_free(json_field *f)
{
    json_decref(f->js);
    free(f->s);
}

static int json_field_write(FILE *out, const char *name, const json_field *f)
{
    if (fprintf(out, "\"%s%s\": ", name, f->b64 ? "_b64" : "") < 0)
        return FMT_EIO;
    if (f->b64) {
        if (put_bytes(out, "\"", 1) || put_bytes(out, f->s, f->slen) ||
            put_bytes(out, "\"", 1))
            return FMT_EIO;
        return 0;
    }
    if (json_dumpf(f->js, out, JSON_ENCODE_ANY) != 0)
        return ferror(out) ? FMT_EIO : FMT_ENOMEM;
    return 0;
}

static int write_jsonl(FILE *out, const void *key, size_t klen,
                       const void *val, size_t vlen, char *err, size_t errlen)
{
    json_field k, v;
    int rc = json_field_make(&k, key, klen);
    if (rc == 0) {
        rc = json_field_make(&v, val, vlen);
        if (rc != 0)
            json_field_free(&k);
    }
    if (rc != 0) {
        seterr(err, errlen, "out of memory encoding a JSON record");
        return rc;
    }
    if (put_bytes(out, "{", 1) || (rc = json_field_write(out, "key", &k)) ||
        put_bytes(out, ", ", 2) || (rc = json_field_write(out, "value", &v)) ||
        put_bytes(out, "}\n", 2))
        rc = rc ? rc : FMT_EIO;
    json_field_free(&k);
    json_field_free(&v);
    if (rc == FMT_EIO)
        seterr(err, errlen, "write failed: %s", strerror(errno));
    else if (rc != 0)
        seterr(err, errlen, "out of memory writing a JSON record");
    return rc;
}

int fmt_write(FILE *out, fmt_format f, const void *key, size_t klen,
              const void *val, size_t vlen, char *err, size_t errlen)
{
    char q[256];
    int rc = 0;
    switch (f) {
    case FMT_NUL:; /* a declaration after a label needs C23; the ';' keeps C11 */
        int kz = klen && memchr(key, 0, klen), vz = vlen && memchr(val, 0, vlen);
        if (kz || vz) {
            seterr(err, errlen,
                   "key %s: the nul format cannot carry a %s containing a NUL byte",
                   fmt_quote(q, sizeof q, key, klen),
                   kz ? "key" : "value");
            return FMT_EDATA;
        }
        if (put_bytes(out, key, klen) || put_bytes(out, "", 1) ||
            put_bytes(out, val, vlen) || put_bytes(out, "", 1))
            rc = FMT_EIO;
        break;
    case FMT_TSV:
        if (fmt_write_tsv_field(out, key, klen) || put_bytes(out, "\t", 1) ||
            fmt_write_tsv_field(out, val, vlen) || put_bytes(out, "\n", 1))
            rc = FMT_EIO;
        break;
    case FMT_JSONL:
        return write_jsonl(out, key, klen, val, vlen, err, errlen);
    }
    if (rc == FMT_EIO)
        seterr(err, errlen, "write failed: %s", strerror(errno));
    return rc;
}

/* ---- reader ------------------------------------------------------------- */

struct fmt_reader {
    FILE *in;
    fmt_format f;
    char *line, *line2;     /* getdelim buffers (nul uses both) */
    size_t cap, cap2;
    uint8_t *kbuf, *vbuf;   /* decoded fields (tsv, jsonl) */
    size_t kcap, vcap;
    uint64_t records;       /* records returned */
    uint64_t bytes;         /* input bytes consumed */
    uint64_t lineno;        /* tsv/jsonl: line of the current record */
    uint64_t recstart;      /* nul: byte offset of the current record */
    int state;              /* 0 ok, 1 at end, < 0 the sticky error */
    char msg[512];          /* the sticky error message */
};

fmt_reader *fmt_reader_new(FILE *in, fmt_format f)
{
    fmt_reader *r = calloc(1, sizeof *r);
    if (r) {
        r->in = in;
        r->f = f;
    }
    return r;
}

void fmt_reader_free(fmt_reader *r)
{
    if (!r)
        return;
    free(r->line);
    free(r->line2);
    free(r->kbuf);
    free(r->vbuf);
    free(r);
}

uint64_t fmt_reader_records(const fmt_reader *r) { return r->records; }
uint64_t fmt_reader_bytes(const fmt_reader *r) { return r->bytes; }

void fmt_reader_where(const fmt_reader *r, char *buf, size_t len)
{
    if (r->f == FMT_NUL)
        snprintf(buf, len, "record %llu (byte %llu)",
                 (unsigned long long)r->records + (r->state < 0 ? 1 : 0),
                 (unsigned long long)r->recstart);
    else
        snprintf(buf, len, "line %llu", (unsigned long long)r->lineno);
}

/* Records a sticky error, prefixed with the current position. */
static int fail(fmt_reader *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(fmt_reader *r, int code, const char *fmt, ...)
{
    char where[64], what[400];
    r->state = code;
    fmt_reader_where(r, where, sizeof where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(r->msg, sizeof r->msg, "%s: %s", where, what);
    return code;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 256;
    while (nc < need)
        nc *= 2;
    uint8_t *nb = realloc(*buf, nc);
    if (!nb)
        return FMT_ENOMEM;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* getdelim wrapper: returns the length read, 0 at EOF, or a negative code
 * (with the sticky error set). */
static ssize_t read_until(fmt_reader *r, char **buf, size_t *cap, int delim)
{
    errno = 0;
    ssize_t n = getdelim(buf, cap, delim, r->in);
    if (n >= 0) {
        r->bytes += (uint64_t)n;
        return n;
    }
    if (ferror(r->in))
        return fail(r, FMT_EIO, "read error: %s", strerror(errno ? errno : EIO));
    if (errno == ENOMEM)
        return fail(r, FMT_ENOMEM, "out of memory");
    return 0;
}

static int next_nul(fmt_reader *r)
{
    r->recstart = r->bytes;
    ssize_t n = read_until(r, &r->line, &r->cap, '\0');
    if (n <= 0) {
        if (n == 0)
            r->state = 1;
        return (int)n;
    }
    if (r->line[n - 1] != '\0')
        return fail(r, FMT_EDATA,
                    "incomplete record: input ends inside the key (no NUL after it)");
    if (n == 1)
        return fail(r, FMT_EDATA, "empty key");
    ssize_t m = read_until(r, &r->line2, &r->cap2, '\0');
    if (m < 0)
        return (int)m;
    if (m == 0)
        return fail(r, FMT_EDATA, "incomplete record: input ends after the key");
    if (r->line2[m - 1] != '\0')
        return fail(r, FMT_EDATA,
                    "incomplete record: input ends inside the value (no NUL after it)");
    return 1;
}

static int next_tsv(fmt_reader *r, size_t *klen, size_t *vlen)
{
    ssize_t n = read_until(r, &r->line, &r->cap, '\n');
    if (n <= 0) {
        if (n == 0)
            r->state = 1;
        return (int)n;
    }
    r->lineno++;
    if (r->line[n - 1] != '\n')
        return fail(r, FMT_EDATA, "missing newline at the end of the input (truncated?)");
    n--;
    if (grow(&r->kbuf, &r->kcap, (size_t)n + 1) || grow(&r->vbuf, &r->vcap, (size_t)n + 1))
        return fail(r, FMT_ENOMEM, "out of memory");
    const uint8_t *p = (const uint8_t *)r->line, *end = p + n;
    uint8_t *o = r->kbuf;
    int field = 0; /* 0 key, 1 value */
    char tmp[8];
    for (; p < end; p++) {
        uint8_t c = *p;
        if (c == '\t') {
            if (field == 1)
                return fail(r, FMT_EDATA, "extra TAB in the value (write \\t)");
            *klen = (size_t)(o - r->kbuf);
            field = 1;
            o = r->vbuf;
        } else if (c == '\r') {
            return fail(r, FMT_EDATA,
                        "raw carriage return (CRLF line endings?); write \\r");
        } else if (c == '\\') {
            if (p + 1 == end)
                return fail(r, FMT_EDATA, "backslash at the end of the line");
            switch (*++p) {
            case '\\': *o++ = '\\'; break;
            case 't': *o++ = '\t'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case '0': *o++ = '\0'; break;
            default:
                return fail(r, FMT_EDATA, "unknown escape '\\%s'",
                            byte_repr(*p, tmp));
            }
        } else {
            *o++ = c;
        }
    }
    if (field == 0)
        return fail(r, FMT_EDATA, "missing TAB between key and value");
    *vlen = (size_t)(o - r->vbuf);
    if (*klen == 0)
        return fail(r, FMT_EDATA, "empty key");
    r->kbuf[*klen] = 0;
    r->vbuf[*vlen] = 0;
    return 1;
}

/* Copies one JSON member (plain or _b64) into *buf. */
static int json_take(fmt_reader *r, const char *name, json_t *v, int b64,
                     uint8_t **buf, size_t *cap, size_t *len)
{
    if (!json_is_string(v))
        return fail(r, FMT_EDATA, "\"%s\" must be a string", name);
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (!b64) {
        if (grow(buf, cap, n + 1))
            return fail(r, FMT_ENOMEM, "out of memory");
        memcpy(*buf, s, n);
        (*buf)[n] = 0;
        *len = n;
        return 0;
    }
    int bad;
    size_t dn;
    uint8_t *d = fmt_b64_decode(s, n, &dn, &bad);
    if (!d)
        return bad ? fail(r, FMT_EDATA, "\"%s\" is not valid base64 (standard alphabet, with padding)", name)
                   : fail(r, FMT_ENOMEM, "out of memory");
    free(*buf);
    *buf = d;
    *cap = dn + 1;
    *len = dn;
    return 0;
}

static int next_jsonl(fmt_reader *r, size_t *klen, size_t *vlen)
{
    ssize_t n = read_until(r, &r->line, &r->cap, '\n');
    if (n <= 0) {
        if (n == 0)
            r->state = 1;
        return (int)n;
    }
    r->lineno++;
    size_t body = (size_t)n - (r->line[n - 1] == '\n');
    if (strspn(r->line, " \t\r\n") >= body && memchr(r->line, 0, body) == NULL)
        return fail(r, FMT_EDATA, "blank line (expected a JSON object)");
    json_error_t je;
    json_t *obj = json_loadb(r->line, body, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &je);
    if (!obj)
        return fail(r, FMT_EDATA, "invalid JSON at column %d: %s", je.column, je.text);
    int rc = 0, have_k = 0, have_v = 0;
    if (!json_is_object(obj)) {
        rc = fail(r, FMT_EDATA, "not a JSON object");
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v) {
        int b64 = 0, is_key;
        if (strcmp(name, "key") == 0 || (b64 = strcmp(name, "key_b64") == 0))
            is_key = 1;
        else if (strcmp(name, "value") == 0 || (b64 = strcmp(name, "value_b64") == 0))
            is_key = 0;
        else {
            char q[128];
            rc = fail(r, FMT_EDATA, "unknown member %s (expected key or key_b64, "
                      "value or value_b64)", fmt_quote(q, sizeof q, name, strlen(name)));
            goto out;
        }
        int *have = is_key ? &have_k : &have_v;
        if (*have) {
            rc = fail(r, FMT_EDATA, "both \"%s\" and \"%s_b64\"",
                      is_key ? "key" : "value", is_key ? "key" : "value");
            goto out;
        }
        *have = 1;
        rc = is_key ? json_take(r, name, v, b64, &r->kbuf, &r->kcap, klen)
                    : json_take(r, name, v, b64, &r->vbuf, &r->vcap, vlen);
        if (rc)
            goto out;
    }
    if (!have_k)
        rc = fail(r, FMT_EDATA, "missing \"key\" (or \"key_b64\")");
    else if (!have_v)
        rc = fail(r, FMT_EDATA, "missing \"value\" (or \"value_b64\")");
    else if (*klen == 0)
        rc = fail(r, FMT_EDATA, "empty key");
out:
    json_decref(obj);
    return rc ? rc : 1;
}

int fmt_reader_next(fmt_reader *r, const uint8_t **key, size_t *klen,
                    const uint8_t **val, size_t *vlen, char *err,
                    size_t errlen)
{
    if (r->state == 1)
        return 0;
    if (r->state < 0) {
        seterr(err, errlen, "%s", r->msg);
        return r->state;
    }
    int rc;
    switch (r->f) {
    case FMT_NUL:
        rc = next_nul(r);
        if (rc == 1) {
            *key = (const uint8_t *)r->line;
            *klen = strlen(r->line);   /* the fields hold no NUL */
            *val = (const uint8_t *)r->line2;
            *vlen = strlen(r->line2);
        }
        break;
    case FMT_TSV:
        rc = next_tsv(r, klen, vlen);
        if (rc == 1) {
            *key = r->kbuf;
            *val = r->vbuf;
        }
        break;
    case FMT_JSONL:
        rc = next_jsonl(r, klen, vlen);
        if (rc == 1) {
            *key = r->kbuf;
            *val = r->vbuf;
        }
        break;
    default:
        rc = fail(r, FMT_EDATA, "unknown format");
    }
    if (rc == 1)
        r->records++;
    else if (rc < 0)
        seterr(err, errlen, "%s", r->msg);
    return rc;
}
