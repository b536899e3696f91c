/*
 * s3xml.c - the XML half of the S3 client: parsing S3's answers with expat
 * and building the two request bodies S3 wants in XML.
 *
 * Parsed: ListObjectsV2 results (ListBucketResult: Contents/Key, Size,
 * LastModified, ETag; IsTruncated, NextContinuationToken, EncodingType),
 * error bodies (Error: Code, Message), InitiateMultipartUploadResult
 * (UploadId) and DeleteResult (its Error entries). Built: the DeleteObjects
 * <Delete> body and the <CompleteMultipartUpload> body. Sources: Amazon S3
 * API Reference for ListObjectsV2, DeleteObjects, CreateMultipartUpload,
 * CompleteMultipartUpload and "Error responses"; the S3 User Guide's "XML
 * related object key constraints" for escaping keys.
 *
 * Invariant: a parser never trusts the document's shape. Elements are
 * matched by their full path from the root (namespace prefixes dropped), text
 * is capped, and a document whose root is not the expected one is
 * S4KV_ECORRUPT, never an empty success.
 */
#include <ctype.h>
#include <expat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "s3_internal.h"
#include "s4kv.h"

#define XW_MAX_DEPTH 16
#define XW_MAX_PATH 256
#define XW_MAX_TEXT (1u << 20)

/* ---- A tiny path-tracking walker over expat. */

typedef struct xw {
    char path[XW_MAX_PATH];
    size_t plen;
    size_t stack[XW_MAX_DEPTH + 1]; /* path length before each open element */
    int depth;                      /* open elements */
    int skip;                       /* elements open beyond the tracked depth */
    char *text;
    size_t tlen, tcap;
    int oom;
    char root[64];
    void (*on_start)(struct xw *w, const char *path);
    void (*on_end)(struct xw *w, const char *path, const char *text, size_t len);
    void *ctx;
} xw;

static void XMLCALL xw_start(void *ud, const XML_Char *name, const XML_Char **atts)
{
    xw *w = ud;
    (void)atts;
    const char *colon = strrchr(name, ':');
    const char *local = colon ? colon + 1 : name;
    size_t nl = strlen(local);
    if (w->skip || w->depth >= XW_MAX_DEPTH || w->plen + nl + 2 > sizeof w->path) {
        w->skip++;
        return;
    }
    if (w->depth == 0)
        snprintf(w->root, sizeof w->root, "%s", local);
    w->stack[w->depth++] = w->plen;
    if (w->plen)
        w->path[w->plen++] = '/';
    memcpy(w->path + w->plen, local, nl + 1);
    w->plen += nl;
    w->tlen = 0;
    if (w->on_start)
        w->on_start(w, w->path);
}

static void XMLCALL xw_end(void *ud, const XML_Char *name)
{
    xw *w = ud;
    (void)name;
    if (w->skip) {
        w->skip--;
        return;
    }
    if (w->depth == 0)
        return;
    if (w->text)
        w->text[w->tlen] = 0;
    if (w->on_end)
        w->on_end(w, w->path, w->text ? w->text : "", w->tlen);
    w->plen = w->stack[--w->depth];
    w->path[w->plen] = 0;
    w->tlen = 0;
}

static void XMLCALL xw_text(void *ud, const XML_Char *s, int len)
{
    xw *w = ud;
    if (w->skip || len <= 0 || w->oom)
        return;
    if (w->tlen + (size_t)len + 1 > XW_MAX_TEXT)
        return; /* capped: nothing S3 sends is this long */
    if (w->tlen + (size_t)len + 1 > w->tcap) {
        size_t nc = w->tcap ? w->tcap : 256;
        while (nc < w->tlen + (size_t)len + 1)
            nc *= 2;
        char *t = realloc(w->text, nc);
        if (!t) {
            w->oom = 1;
            return;
        }
        w->text = t;
        w->tcap = nc;
    }
    memcpy(w->text + w->tlen, s, (size_t)len);
    w->tlen += (size_t)len;
}

/* Parses body; 0, S4KV_ECORRUPT (not well-formed) or S4KV_ENOMEM. */
static int xw_parse(xw *w, const void *body, size_t len, const char *what, char *err,
                    size_t errlen)
{
    XML_Parser p = XML_ParserCreate("UTF-8");
    if (!p) {
        if (err)
            snprintf(err, errlen, "%s: out of memory creating the XML parser", what);
        return S4KV_ENOMEM;
    }
    XML_SetUserData(p, w);
    XML_SetElementHandler(p, xw_start, xw_end);
    XML_SetCharacterDataHandler(p, xw_text);
    int rc = 0;
    const char *b = body;
    /* XML_Parse takes an int length; feed large bodies in pieces. */
    for (;;) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        int final = (size_t)chunk == len;
        if (XML_Parse(p, b, chunk, final) != XML_STATUS_OK) {
            if (err)
                snprintf(err, errlen, "%s: malformed XML at line %lu: %s", what,
                         (unsigned long)XML_GetCurrentLineNumber(p),
                         XML_ErrorString(XML_GetErrorCode(p)));
            rc = S4KV_ECORRUPT;
            break;
        }
        b += chunk;
        len -= (size_t)chunk;
        if (final)
            break;
    }
    XML_ParserFree(p);
    free(w->text);
    w->text = NULL;
    if (rc == 0 && w->oom) {
        if (err)
            snprintf(err, errlen, "%s: out of memory parsing XML", what);
        rc = S4KV_ENOMEM;
    }
    return rc;
}

static void copy_trunc(char *dst, size_t dstlen, const char *src, size_t n)
{
    if (!dst || !dstlen)
        return;
    if (n >= dstlen)
        n = dstlen - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* ---- Error */

typedef struct err_ctx {
    char *code, *msg;
    size_t codelen, msglen;
} err_ctx;

static void err_end(xw *w, const char *path, const char *text, size_t len)
{
    err_ctx *c = w->ctx;
    if (!strcmp(path, "Error/Code"))
        copy_trunc(c->code, c->codelen, text, len);
    else if (!strcmp(path, "Error/Message"))
        copy_trunc(c->msg, c->msglen, text, len);
}

int s3xml_parse_error(const void *body, size_t len, char *code, size_t codelen, char *msg,
                      size_t msglen)
{
    if (code && codelen)
        code[0] = 0;
    if (msg && msglen)
        msg[0] = 0;
    if (!body || len == 0)
        return 0;
    err_ctx c = {code, msg, codelen, msglen};
    xw w = {0};
    w.on_end = err_end;
    w.ctx = &c;
    if (xw_parse(&w, body, len, "error body", NULL, 0) != 0 || strcmp(w.root, "Error")) {
        if (code && codelen)
            code[0] = 0;
        if (msg && msglen)
            msg[0] = 0;
        return 0;
    }
    return 1;
}

/* ---- ListObjectsV2 */

typedef struct list_ctx {
    s3_object **objs;
    size_t *n, *cap;
    int in_contents;
    int truncated;
    int url_encoded;
    char *token;
    int bad;      /* 1 bad number/date, 2 ENOMEM */
    char what[80];
} list_ctx;

static int64_t parse_iso8601(const char *s)
{
    int Y, M, D, h, m, sec;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d", &Y, &M, &D, &h, &m, &sec) != 6)
        return -1;
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec;
    return (int64_t)timegm(&tm);
}

static void list_start(xw *w, const char *path)
{
    list_ctx *c = w->ctx;
    if (strcmp(path, "ListBucketResult/Contents") || c->bad)
        return;
    if (*c->n == *c->cap) {
        size_t nc = *c->cap ? *c->cap * 2 : 64;
        s3_object *o = realloc(*c->objs, nc * sizeof *o);
        if (!o) {
            c->bad = 2;
            return;
        }
        *c->objs = o;
        *c->cap = nc;
    }
    memset(&(*c->objs)[*c->n], 0, sizeof(s3_object));
    (*c->n)++;
    c->in_contents = 1;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* application/x-www-form-urlencoded decoding, as S3 does for EncodingType=url
 * ('+' is a space, %XX a byte). In place. */
static void url_decode(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p == '+') {
            *o++ = ' ';
        } else if (*p == '%' && hexval((unsigned char)p[1]) >= 0 &&
                   hexval((unsigned char)p[2]) >= 0) {
            *o++ = (char)(hexval((unsigned char)p[1]) << 4 | hexval((unsigned char)p[2]));
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = 0;
}

static void list_end(xw *w, const char *path, const char *text, size_t len)
{
    list_ctx *c = w->ctx;
    if (c->bad)
        return;
    if (!strcmp(path, "ListBucketResult/IsTruncated")) {
        c->truncated = len == 4 && !strcmp(text, "true");
    } else if (!strcmp(path, "ListBucketResult/NextContinuationToken")) {
        free(c->token);
        c->token = strndup(text, len);
        if (!c->token)
            c->bad = 2;
    } else if (!strcmp(path, "ListBucketResult/EncodingType")) {
        c->url_encoded = !strcmp(text, "url");
    } else if (!strcmp(path, "ListBucketResult/Contents")) {
        c->in_contents = 0;
    } else if (c->in_contents && !strncmp(path, "ListBucketResult/Contents/", 26)) {
        s3_object *o = &(*c->objs)[*c->n - 1];
        const char *f = path + 26;
        if (!strcmp(f, "Key")) {
            free(o->key);
            o->key = strndup(text, len);
            if (!o->key)
                c->bad = 2;
        } else if (!strcmp(f, "Size")) {
            char *end;
            unsigned long long v = strtoull(text, &end, 10);
            if (end == text || *end || text[0] == '-') {
                c->bad = 1;
                snprintf(c->what, sizeof c->what, "bad Size");
            }
            o->size = v;
        } else if (!strcmp(f, "LastModified")) {
            o->mtime = parse_iso8601(text);
        } else if (!strcmp(f, "ETag")) {
            const char *s = text;
            size_t l = len;
            if (l >= 2 && s[0] == '"' && s[l - 1] == '"') {
                s++;
                l -= 2;
            }
            copy_trunc(o->etag, sizeof o->etag, s, l);
        }
    }
}

int s3xml_parse_list(const void *body, size_t len, s3_object **objs, size_t *n, size_t *cap,
                     int *truncated, char **next_token, char *err, size_t errlen)
{
    size_t n0 = *n;
    list_ctx c = {.objs = objs, .n = n, .cap = cap};
    xw w = {0};
    w.on_start = list_start;
    w.on_end = list_end;
    w.ctx = &c;
    *truncated = 0;
    *next_token = NULL;
    int rc = xw_parse(&w, body, len, "ListObjectsV2 answer", err, errlen);
    if (rc == 0 && c.bad == 2) {
        if (err)
            snprintf(err, errlen, "ListObjectsV2 answer: out of memory");
        rc = S4KV_ENOMEM;
    } else if (rc == 0 && c.bad == 1) {
        if (err)
            snprintf(err, errlen, "ListObjectsV2 answer: %s", c.what);
        rc = S4KV_ECORRUPT;
    } else if (rc == 0 && strcmp(w.root, "ListBucketResult")) {
        if (err)
            snprintf(err, errlen, "ListObjectsV2 answer: root element <%.40s>, not "
                     "<ListBucketResult>", w.root);
        rc = S4KV_ECORRUPT;
    }
    if (rc == 0) {
        for (size_t i = n0; i < *n; i++) {
            if (!(*objs)[i].key) {
                if (err)
                    snprintf(err, errlen, "ListObjectsV2 answer: <Contents> without <Key>");
                rc = S4KV_ECORRUPT;
                break;
            }
            if (c.url_encoded)
                url_decode((*objs)[i].key);
        }
    }
    if (rc) {
        for (size_t i = n0; i < *n; i++)
            free((*objs)[i].key);
        *n = n0;
        free(c.token);
        return rc;
    }
    *truncated = c.truncated;
    *next_token = c.token;
    return 0;
}

/* ---- InitiateMultipartUploadResult */

static void upload_end(xw *w, const char *path, const char *text, size_t len)
{
    char **id = w->ctx;
    if (!strcmp(path, "InitiateMultipartUploadResult/UploadId") && !*id) {
        *id = strndup(text, len);
        if (!*id)
            w->oom = 1;
    }
}

int s3xml_parse_upload_id(const void *body, size_t len, char **upload_id, char *err,
                          size_t errlen)
{
    char *id = NULL;
    xw w = {0};
    w.on_end = upload_end;
    w.ctx = &id;
    int rc = xw_parse(&w, body, len, "CreateMultipartUpload answer", err, errlen);
    if (rc == 0 && (!id || !*id)) {
        if (err)
            snprintf(err, errlen, "CreateMultipartUpload answer: no UploadId (root <%.40s>)",
                     w.root);
        rc = S4KV_ECORRUPT;
    }
    if (rc) {
        free(id);
        return rc;
    }
    *upload_id = id;
    return 0;
}

/* ---- DeleteResult */

typedef struct del_ctx {
    size_t nerrors;
    char *key, *code, *msg;
    size_t keylen, codelen, msglen;
} del_ctx;

static void del_end(xw *w, const char *path, const char *text, size_t len)
{
    del_ctx *c = w->ctx;
    if (!strcmp(path, "DeleteResult/Error")) {
        c->nerrors++;
        return;
    }
    if (c->nerrors != 0 || strncmp(path, "DeleteResult/Error/", 19))
        return; /* keep the first error only */
    const char *f = path + 19;
    if (!strcmp(f, "Key"))
        copy_trunc(c->key, c->keylen, text, len);
    else if (!strcmp(f, "Code"))
        copy_trunc(c->code, c->codelen, text, len);
    else if (!strcmp(f, "Message"))
        copy_trunc(c->msg, c->msglen, text, len);
}

int s3xml_parse_delete_result(const void *body, size_t len, size_t *nerrors, char *key,
                              size_t keylen, char *code, size_t codelen, char *msg,
                              size_t msglen, char *err, size_t errlen)
{
    del_ctx c = {0, key, code, msg, keylen, codelen, msglen};
    copy_trunc(key, keylen, "", 0);
    copy_trunc(code, codelen, "", 0);
    copy_trunc(msg, msglen, "", 0);
    xw w = {0};
    w.on_end = del_end;
    w.ctx = &c;
    *nerrors = 0;
    int rc = xw_parse(&w, body, len, "DeleteObjects answer", err, errlen);
    if (rc == 0 && strcmp(w.root, "DeleteResult")) {
        if (err)
            snprintf(err, errlen, "DeleteObjects answer: root element <%.40s>, not "
                     "<DeleteResult>", w.root);
        rc = S4KV_ECORRUPT;
    }
    if (rc == 0)
        *nerrors = c.nerrors;
    return rc;
}

/* ---- Building bodies */

static int sb_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 1024;
        while (nc < *len + n + 1)
            nc *= 2;
        char *b = realloc(*buf, nc);
        if (!b)
            return -1;
        *buf = b;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

static int sb_puts(char **buf, size_t *len, size_t *cap, const char *s)
{
    return sb_append(buf, len, cap, s, strlen(s));
}

int s3xml_escape_append(char **buf, size_t *len, size_t *cap, const char *s)
{
    const char *run = s;
    for (const char *p = s;; p++) {
        const char *rep = NULL;
        switch (*p) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&apos;"; break;
        case '\t': rep = "&#9;"; break;
        case '\n': rep = "&#10;"; break;
        case '\r': rep = "&#13;"; break;
        case 0: break;
        default: continue;
        }
        if (sb_append(buf, len, cap, run, (size_t)(p - run)))
            return -1;
        if (!*p)
            return 0;
        if (sb_puts(buf, len, cap, rep))
            return -1;
        run = p + 1;
    }
}

int s3xml_key_ok(const char *key)
{
    const unsigned char *p = (const unsigned char *)key;
    while (*p) {
        unsigned c = *p;
        if (c < 0x80) {
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
                return 0;
            p++;
            continue;
        }
        int n;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        for (int i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF)
            return 0; /* overlong, out of range, surrogate, or not an XML Char */
        p += n + 1;
    }
    return 1;
}

char *s3xml_delete_body(char *const *keys, size_t n, size_t *len)
{
    char *b = NULL;
    size_t l = 0, cap = 0;
    int bad = sb_puts(&b, &l, &cap,
                      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                      "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                      "<Quiet>true</Quiet>");
    for (size_t i = 0; i < n && !bad; i++)
        bad = sb_puts(&b, &l, &cap, "<Object><Key>") ||
              s3xml_escape_append(&b, &l, &cap, keys[i]) ||
              sb_puts(&b, &l, &cap, "</Key></Object>");
    if (!bad)
        bad = sb_puts(&b, &l, &cap, "</Delete>");
    if (bad) {
        free(b);
        return NULL;
    }
    *len = l;
    return b;
}

char *s3xml_complete_body(char *const *etags, size_t nparts, size_t *len)
{
    char *b = NULL;
    size_t l = 0, cap = 0;
    int bad = sb_puts(&b, &l, &cap,
                      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                      "<CompleteMultipartUpload "
                      "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (size_t i = 0; i < nparts && !bad; i++) {
        char num[64];
        snprintf(num, sizeof num, "<Part><PartNumber>%zu</PartNumber><ETag>", i + 1);
        bad = sb_puts(&b, &l, &cap, num) || s3xml_escape_append(&b, &l, &cap, etags[i]) ||
              sb_puts(&b, &l, &cap, "</ETag></Part>");
    }
    if (!bad)
        bad = sb_puts(&b, &l, &cap, "</CompleteMultipartUpload>");
    if (bad) {
        free(b);
        return NULL;
    }
    *len = l;
    return b;
}
