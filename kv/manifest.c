/*
 * manifest.c - the MANIFEST file, the commit point of the database
 * (kv/FORMAT.md, "Manifest"). Invariant: MANIFEST is only ever replaced whole
 * by rename of a fully written and fsynced MANIFEST.tmp, followed by an fsync
 * of the directory, so a crash leaves the old or the new one, never a mix.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define MANIFEST_MAX (64u << 20)

static int appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return -1;
        if ((size_t)n < *cap - *len) {
            *len += (size_t)n;
            return 0;
        }
        size_t nc = *cap * 2 + (size_t)n;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = nc;
    }
}

/* Writes path.tmp with buf, fsyncs it, renames it over path, fsyncs dir. */
static int write_atomic(s4kv_db *db, const char *path, const void *buf, size_t len,
                        char *err, size_t errlen)
{
    int renamed = 0;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = db->v->open(db->v, tmp, O_WRONLY | O_CREAT | O_TRUNC, S4KV_FILE_MODE);
    if (fd < 0)
        return seterr(err, errlen, errno_code(fd), "open %s: %s", tmp, strerror(-fd));
    ssize_t w = db->v->pwrite(db->v, fd, buf, len, 0);
    int rc = w < 0 ? (int)w : 0;
    const char *what = "write";
    if (rc == 0) {
        rc = db->v->fdatasync(db->v, fd);
        what = "fdatasync";
    }
    db->v->close(db->v, fd);
    if (rc == 0) {
        rc = db->v->rename(db->v, tmp, path);
        what = "rename";
    }
    if (rc == 0) {
        renamed = 1;
        rc = db->v->fsync_dir(db->v, db->dir);
        what = "fsync directory of";
    }
    if (rc != 0 && renamed) {
        /* The new file replaced the old one but may not survive a crash:
         * which one a reopen sees is unknown, so nothing either may name can
         * be deleted. Stop taking writes; reopen resolves it. */
        db->failed = 1;
    } else if (rc != 0) {
        db->v->unlink(db->v, tmp);
        return seterr(err, errlen, errno_code(rc), "%s %s: %s", what, path, strerror(-rc));
    }
    return 0;
}

int file_write_atomic(s4kv_db *db, const char *path, const void *buf, size_t len,
                      char *err, size_t errlen)
{
    return write_atomic(db, path, buf, len, err, errlen);
}

int manifest_format(const manifest *m, char **out, size_t *outlen)
{
    size_t len = 0, cap = 256 + m->nseg * 48 + m->nretired * 64;
    char *buf = malloc(cap);
    if (!buf)
        return S4KV_ENOMEM;
    int bad = appendf(&buf, &len, &cap,
                      "s4kv-manifest 1\nid %016" PRIx64 "\ngeneration %" PRIu64
                      "\nnext_segment %" PRIu32 "\ncheckpoint %s\n",
                      m->id, m->generation, m->next_segment, m->checkpoint ? m->checkpoint : "-");
    for (size_t i = 0; i < m->nseg && !bad; i++) {
        if (m->sealed_len[i] != UINT64_MAX)
            bad = appendf(&buf, &len, &cap, "segment %" PRIu32 " sealed %" PRIu64 "\n",
                          m->segno[i], m->sealed_len[i]);
        else
            bad = appendf(&buf, &len, &cap, "segment %" PRIu32 " active\n", m->segno[i]);
    }
    for (size_t i = 0; i < m->nretired && !bad; i++)
        bad = appendf(&buf, &len, &cap, "retired %s %" PRIu64 " %" PRId64 "\n",
                      m->retired[i].name, m->retired[i].generation, m->retired[i].time);
    if (!bad)
        bad = appendf(&buf, &len, &cap, "checksum %016" PRIx64 "\n", s4kv_hash(buf, len));
    if (bad) {
        free(buf);
        return S4KV_ENOMEM;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

int manifest_commit(s4kv_db *db, char *err, size_t errlen)
{
    manifest m = {.id = db->id, .generation = db->generation + 1,
                  .next_segment = db->next_segment,
                  .checkpoint = db->ckpt_name, .nseg = db->nsegs};
    m.segno = malloc((db->nsegs + 1) * sizeof *m.segno);
    m.sealed_len = malloc((db->nsegs + 1) * sizeof *m.sealed_len);
    char *buf = NULL;
    size_t len = 0;
    int rc = (m.segno && m.sealed_len) ? 0 : S4KV_ENOMEM;
    for (size_t i = 0; rc == 0 && i < db->nsegs; i++) {
        m.segno[i] = db->segs[i]->no;
        m.sealed_len[i] = db->segs[i]->sealed ? db->segs[i]->size : UINT64_MAX;
    }
    if (rc == 0)
        rc = manifest_format(&m, &buf, &len);
    free(m.segno);
    free(m.sealed_len);
    if (rc)
        return seterr(err, errlen, rc, "out of memory writing MANIFEST");
    char path[4096];
    snprintf(path, sizeof path, "%s/MANIFEST", db->dir);
    rc = write_atomic(db, path, buf, len, err, errlen);
    free(buf);
    if (rc == 0)
        db->generation = m.generation;
    return rc;
}

void manifest_free(manifest *m)
{
    for (size_t i = 0; i < m->nretired; i++)
        free(m->retired[i].name);
    free(m->retired);
    free(m->checkpoint);
    free(m->segno);
    free(m->sealed_len);
    memset(m, 0, sizeof *m);
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int manifest_load(s4kv_db *db, manifest *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/MANIFEST", db->dir);
    int fd = db->v->open(db->v, path, O_RDONLY, 0);
    if (fd == -ENOENT)
        return seterr(err, errlen, S4KV_ENOENT, "%s: no such file", path);
    if (fd < 0)
        return seterr(err, errlen, S4KV_EIO, "open %s: %s", path, strerror(-fd));
    uint64_t size = 0;
    int rc = db->v->fsize(db->v, fd, &size);
    if (rc == 0 && size > MANIFEST_MAX)
        rc = -EFBIG;
    char *buf = rc == 0 ? malloc(size + 1) : NULL;
    if (rc == 0 && !buf)
        rc = -ENOMEM;
    if (rc == 0) {
        ssize_t r = db->v->pread(db->v, fd, buf, size, 0);
        rc = r < 0 ? (int)r : ((uint64_t)r != size ? -EIO : 0);
    }
    db->v->close(db->v, fd);
    if (rc != 0) {
        free(buf);
        return seterr(err, errlen, errno_code(rc), "read %s: %s", path, strerror(-rc));
    }
    int prc = manifest_parse(buf, (size_t)size, path, m, err, errlen);
    free(buf);
    return prc;
}

int manifest_parse(const char *text, size_t size, const char *name, manifest *m, char *err,
                   size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (size > MANIFEST_MAX)
        return seterr(err, errlen, S4KV_ECORRUPT, "%s: %zu bytes is too large for a manifest",
                      name, size);
    char *buf = malloc(size + 1);
    if (!buf)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory reading %s", name);
    memcpy(buf, text, size);
    buf[size] = 0;
    /* Tokenising writes NULs into buf: hash the checksummed prefix first. */
    const char *cks = strstr(buf, "\nchecksum ");
    uint64_t prefix_hash = cks ? s4kv_hash(buf, (size_t)(cks - buf) + 1) : 0;
    if (memchr(buf, 0, size)) {
        free(buf);
        return seterr(err, errlen, S4KV_ECORRUPT, "%s: NUL byte in manifest", name);
    }

    int code = S4KV_ECORRUPT;
    const char *why = NULL;
    size_t lineno = 0, cap = 0, have_id = 0, have_gen = 0, have_next = 0, have_ck = 0, have_sum = 0;
    char *save = NULL;
    char *line = buf;
    while (line && *line && !why) {
        char *nl = strchr(line, '\n');
        if (!nl) {
            why = "last line has no newline (truncated)";
            break;
        }
        *nl = 0;
        lineno++;
        char *next = nl + 1;
        char *kw = strtok_r(line, " ", &save);
        char *a1 = kw ? strtok_r(NULL, " ", &save) : NULL;
        char *a2 = a1 ? strtok_r(NULL, " ", &save) : NULL;
        char *a3 = a2 ? strtok_r(NULL, " ", &save) : NULL;
        char *extra = a3 ? strtok_r(NULL, " ", &save) : NULL;
        uint64_t v = 0;
        if (!kw || extra) {
            why = "malformed line";
        } else if (lineno == 1) {
            if (strcmp(kw, "s4kv-manifest") != 0 || !a1 || a2)
                why = "not an s4kv manifest";
            else if (strcmp(a1, "1") != 0)
                why = "unsupported manifest version", code = S4KV_EVERSION;
        } else if (strcmp(kw, "id") == 0 && a1 && !a2 && strlen(a1) == 16 &&
                   strspn(a1, "0123456789abcdef") == 16) {
            m->id = strtoull(a1, NULL, 16);
            have_id++;
        } else if (strcmp(kw, "generation") == 0 && a1 && !a2 && parse_u64(a1, &v) == 0) {
            m->generation = v;
            have_gen++;
        } else if (strcmp(kw, "next_segment") == 0 && a1 && !a2 && parse_u64(a1, &v) == 0 &&
                   v <= UINT32_MAX) {
            m->next_segment = (uint32_t)v;
            have_next++;
        } else if (strcmp(kw, "checkpoint") == 0 && a1 && !a2) {
            if (have_ck++) {
                why = "checkpoint named twice";
                break;
            }
            if (strcmp(a1, "-") != 0) {
                if (strchr(a1, '/') || strncmp(a1, "index_", 6) != 0)
                    why = "bad checkpoint name";
                else if (!(m->checkpoint = strdup(a1)))
                    why = "out of memory", code = S4KV_ENOMEM;
            }
        } else if (strcmp(kw, "segment") == 0 && a1 && a2 && parse_u64(a1, &v) == 0 &&
                   v >= 1 && v <= UINT32_MAX) {
            uint64_t sl = UINT64_MAX;
            if (strcmp(a2, "sealed") == 0 && a3 && parse_u64(a3, &sl) == 0 && sl >= SEG_HDR) {
            } else if (strcmp(a2, "active") == 0 && !a3) {
                sl = UINT64_MAX;
            } else {
                why = "bad segment line";
                break;
            }
            if (m->nseg == cap) {
                cap = cap ? cap * 2 : 16;
                uint32_t *ns = realloc(m->segno, cap * sizeof *ns);
                if (ns)
                    m->segno = ns;
                uint64_t *nl2 = realloc(m->sealed_len, cap * sizeof *nl2);
                if (nl2)
                    m->sealed_len = nl2;
                if (!ns || !nl2) {
                    why = "out of memory", code = S4KV_ENOMEM;
                    break;
                }
            }
            m->segno[m->nseg] = (uint32_t)v;
            m->sealed_len[m->nseg++] = sl;
        } else if (strcmp(kw, "retired") == 0 && a1 && a2 && a3 && parse_u64(a2, &v) == 0) {
            uint64_t t = 0;
            /* t > INT64_MAX would come back negative from manifest_format */
            if (parse_u64(a3, &t) != 0 || t > INT64_MAX || strchr(a1, '/') || a1[0] == '.') {
                why = "bad retired line";
                break;
            }
            retired_entry *nr = realloc(m->retired, (m->nretired + 1) * sizeof *nr);
            char *nm = strdup(a1);
            if (!nr || !nm) {
                free(nm);
                if (nr)
                    m->retired = nr;
                why = "out of memory", code = S4KV_ENOMEM;
                break;
            }
            m->retired = nr;
            m->retired[m->nretired++] = (retired_entry){nm, v, (int64_t)t};
        } else if (strcmp(kw, "checksum") == 0 && a1 && !a2) {
            char want[17];
            snprintf(want, sizeof want, "%016" PRIx64, prefix_hash);
            if (!cks || line != cks + 1)
                why = "checksum line out of place";
            else if (strcmp(a1, want) != 0)
                why = "checksum mismatch";
            else if (*next)
                why = "data after checksum line";
            have_sum++;
        } else {
            why = "unknown or malformed line";
        }
        line = next;
    }
    if (!why && (have_id != 1 || have_gen != 1 || have_next != 1 || have_ck != 1 ||
                 have_sum != 1 || !m->nseg))
        why = "missing or repeated field";
    for (size_t i = 0; !why && i < m->nseg; i++) {
        if (m->segno[i] >= m->next_segment)
            why = "segment number >= next_segment";
        if (m->sealed_len[i] == UINT64_MAX && i + 1 != m->nseg)
            why = "only the last segment may be active";
        for (size_t j = 0; j < i && !why; j++)
            if (m->segno[j] == m->segno[i])
                why = "segment listed twice";
    }
    free(buf);
    if (why) {
        int c = code;
        manifest_free(m);
        return seterr(err, errlen, c, "%s: %s (line %zu)", name, why, lineno);
    }
    return 0;
}
