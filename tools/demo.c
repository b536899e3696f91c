/*
 * demo.c - `s4kv-demo`, the README's main job: load Debian's package index
 * (`apt-cache dumpavail`) into s4kv and show that every byte comes back,
 * through close and reopen, deletes, compaction and verify.
 *
 * Owns: the stanza parser, an in-memory reference map (the model the
 * database must match: key = the `Package:` value, value = the stanza text
 * exactly as in the source, a later stanza for a name replacing the earlier
 * one), the phase timings and the printed summary.
 *
 * Invariant: the demo reports success only after every live key has been read
 * back and compared byte for byte with the reference twice (after a reopen,
 * and after deletes + compaction + reopen + verify), every deleted key has
 * been found absent, and an iteration over the database has listed exactly
 * the live reference keys. Any difference names the key and exits 1.
 *
 * Writes use the library's default durability, S4KV_SYNC_BATCH (one
 * fdatasync per acknowledged batch of 1000 records).
 */
#include "s4kv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH_OPS 1000
#define DELETE_EVERY 10 /* delete every 10th key in sorted key order */

/* ---- small helpers */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("s4kv-demo: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Formats v with thousands separators into one of a few rotating buffers. */
static const char *num(uint64_t v)
{
    static char bufs[8][32];
    static unsigned next;
    char *out = bufs[next++ % 8], tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v), o = 0;
    for (int i = 0; i < n; i++) {
        if (i && (n - i) % 3 == 0)
            out[o++] = ',';
        out[o++] = tmp[i];
    }
    out[o] = '\0';
    return out;
}

static const char *mib(uint64_t bytes)
{
    static char bufs[4][32];
    static unsigned next;
    char *out = bufs[next++ % 4];
    snprintf(out, 32, "%.2f MiB", (double)bytes / (1024.0 * 1024.0));
    return out;
}

/* ---- input */

typedef struct input {
    char *p;
    size_t n;
} input;

static void read_stream(FILE *f, const char *what, input *in)
{
    size_t cap = 64u << 20, n = 0;
    char *p = xmalloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            char *q = realloc(p, cap);
            if (!q)
                die("out of memory reading %s", what);
            p = q;
        }
        size_t got = fread(p + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                die("reading %s: %s", what, strerror(errno));
            break;
        }
    }
    in->p = p;
    in->n = n;
}

static void load_input(const char *path, input *in)
{
    if (path) {
        FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
        if (!f)
            die("cannot open %s: %s", path, strerror(errno));
        read_stream(f, path, in);
        if (f != stdin)
            fclose(f);
        return;
    }
    FILE *f = popen("apt-cache dumpavail", "r");
    if (!f)
        die("cannot run apt-cache dumpavail: %s (use --input FILE)", strerror(errno));
    read_stream(f, "apt-cache dumpavail", in);
    int st = pclose(f);
    if (st != 0)
        die("apt-cache dumpavail failed (status %d); is this Debian? use --input FILE", st);
}

/* ---- reference map: key -> the last stanza with that Package name.
 * Keys and values point into the input buffer (no copies). */

typedef struct ref {
    const char *key, *val;
    size_t klen, vlen;
    int deleted;
} ref;

typedef struct refmap {
    ref *v;          /* unique keys in order of first appearance */
    size_t n, cap;
    uint32_t *slots; /* open addressing: index + 1 into v, 0 = empty */
    size_t nslots;
} refmap;

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    while (n--) {
        h ^= *s++;
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint32_t *refmap_slot(const refmap *m, const char *k, size_t klen)
{
    size_t mask = m->nslots - 1, i = hash_bytes(k, klen) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t s = m->slots[i];
        if (!s)
            return &m->slots[i];
        const ref *r = &m->v[s - 1];
        if (r->klen == klen && memcmp(r->key, k, klen) == 0)
            return &m->slots[i];
    }
}

static void refmap_grow(refmap *m)
{
    size_t old_n = m->nslots;
    uint32_t *old = m->slots;
    m->nslots = old_n ? old_n * 2 : 1u << 16;
    m->slots = calloc(m->nslots, sizeof *m->slots);
    if (!m->slots)
        die("out of memory");
    for (size_t i = 0; i < old_n; i++)
        if (old[i]) {
            const ref *r = &m->v[old[i] - 1];
            *refmap_slot(m, r->key, r->klen) = old[i];
        }
    free(old);
}

static const ref *refmap_find(const refmap *m, const char *k, size_t klen)
{
    uint32_t s = *refmap_slot(m, k, klen);
    return s ? &m->v[s - 1] : NULL;
}

/* Returns 1 when key was new, 0 when it replaced an earlier stanza. */
static int refmap_set(refmap *m, const char *k, size_t klen, const char *v,
                      size_t vlen)
{
    if ((m->n + 1) * 2 > m->nslots)
        refmap_grow(m);
    uint32_t *slot = refmap_slot(m, k, klen);
    if (*slot) {
        ref *r = &m->v[*slot - 1];
        r->val = v;
        r->vlen = vlen;
        return 0;
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 4096;
        m->v = realloc(m->v, m->cap * sizeof *m->v);
        if (!m->v)
            die("out of memory");
    }
    m->v[m->n] = (ref){ .key = k, .klen = klen, .val = v, .vlen = vlen };
    *slot = (uint32_t)++m->n;
    return 1;
}

/* ---- stanza parser (deb822: paragraphs separated by blank lines) */

typedef struct stanza {
    const char *text, *key;
    size_t len, klen;
} stanza;

typedef struct parsed {
    stanza *v;
    size_t n, cap;
    size_t no_package; /* stanzas without a Package: field (skipped) */
} parsed;

static int is_blank(const char *p, const char *e)
{
    for (; p < e; p++)
        if (*p != ' ' && *p != '\t')
            return 0;
    return 1;
}

static void push_stanza(parsed *ps, const char *text, size_t len,
                        const char *key, size_t klen)
{
    if (!key || klen == 0) {
        ps->no_package++;
        return;
    }
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 65536;
        ps->v = realloc(ps->v, ps->cap * sizeof *ps->v);
        if (!ps->v)
            die("out of memory");
    }
    ps->v[ps->n++] = (stanza){ .text = text, .len = len, .key = key, .klen = klen };
}

/* Finds the stanzas in buf. A stanza is a run of non-blank lines, each line
 * with its trailing "\n"; its key is the value of its first Package: field
 * (field names are case-insensitive), trimmed of spaces and tabs. */
static void parse_stanzas(const char *buf, size_t n, parsed *ps)
{
    const char *p = buf, *end = buf + n, *start = NULL, *key = NULL;
    size_t klen = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end, *next = nl ? nl + 1 : end;
        if (is_blank(p, eol)) {
            if (start)
                push_stanza(ps, start, (size_t)(p - start), key, klen);
            start = key = NULL;
            klen = 0;
        } else {
            if (!start)
                start = p;
            if (!key && eol - p >= 8 && strncasecmp(p, "Package:", 8) == 0) {
                const char *k = p + 8, *ke = eol;
                while (k < ke && (*k == ' ' || *k == '\t'))
                    k++;
                while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t' || ke[-1] == '\r'))
                    ke--;
                key = k;
                klen = (size_t)(ke - k);
            }
        }
        p = next;
    }
    if (start)
        push_stanza(ps, start, (size_t)(end - start), key, klen);
}

/* ---- phases and timings */

typedef struct phase {
    const char *name;
    uint64_t ns, records;
} phase;

static phase phases[16];
static size_t nphases;

static void phase_done(const char *name, uint64_t t0, uint64_t records)
{
    phase *ph = &phases[nphases++];
    ph->name = name;
    ph->ns = now_ns() - t0;
    ph->records = records;
    double ms = (double)ph->ns / 1e6;
    if (records)
        printf("  %-22s %10s records %10.1f ms %12s records/s\n", name,
               num(records), ms, num((uint64_t)((double)records * 1e9 / (double)(ph->ns ? ph->ns : 1))));
    else
        printf("  %-22s %18s %10.1f ms\n", name, "", ms);
    fflush(stdout);
}

/* ---- database helpers */

static char errbuf[1024];

static s4kv_db *db_open(const char *dir)
{
    s4kv_options opt;
    s4kv_options_init(&opt);
    opt.sync_mode = S4KV_SYNC_BATCH; /* the default, stated */
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

static void db_commit(s4kv_db *db, s4kv_batch *b, const char *what)
{
    errbuf[0] = '\0';
    int rc = s4kv_write(db, b, errbuf, sizeof errbuf);
    if (rc)
        die("%s: s4kv_write of %zu operations: %s: %s", what,
            s4kv_batch_count(b), s4kv_strerror(rc), errbuf);
    s4kv_batch_clear(b);
}

static s4kv_stats db_stats(s4kv_db *db)
{
    s4kv_stats st;
    int rc = s4kv_stats_get(db, &st);
    if (rc)
        die("s4kv_stats_get: %s", s4kv_strerror(rc));
    return st;
}

/* Sums the sizes of DIR/data_*.s4kv (the segments) and of every regular
 * file in DIR. */
static void dir_sizes(const char *dir, uint64_t *segs, uint64_t *nsegs,
                      uint64_t *all)
{
    DIR *d = opendir(dir);
    if (!d)
        die("opendir %s: %s", dir, strerror(errno));
    *segs = *nsegs = *all = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        struct stat sb;
        if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) || !S_ISREG(sb.st_mode))
            continue;
        *all += (uint64_t)sb.st_size;
        size_t l = strlen(de->d_name);
        if (strncmp(de->d_name, "data_", 5) == 0 && l > 10 &&
            strcmp(de->d_name + l - 5, ".s4kv") == 0) {
            *segs += (uint64_t)sb.st_size;
            ++*nsegs;
        }
    }
    closedir(d);
}

/* Reads every reference key back: live keys must match byte for byte,
 * deleted keys must be absent. Exits 1 naming the first key that differs. */
static void check_all(s4kv_db *db, const refmap *m, const char *when)
{
    for (size_t i = 0; i < m->n; i++) {
        const ref *r = &m->v[i];
        void *val = NULL;
        size_t vlen = 0;
        errbuf[0] = '\0';
        int rc = s4kv_get(db, r->key, r->klen, &val, &vlen, errbuf, sizeof errbuf);
        if (r->deleted) {
            if (rc == 0) {
                s4kv_free(val);
                die("%s: key '%.*s' was deleted but is still present", when,
                    (int)r->klen, r->key);
            }
            if (rc != S4KV_ENOTFOUND)
                die("%s: get '%.*s': %s: %s", when, (int)r->klen, r->key,
                    s4kv_strerror(rc), errbuf);
            continue;
        }
        if (rc)
            die("%s: get '%.*s': %s: %s", when, (int)r->klen, r->key,
                s4kv_strerror(rc), errbuf);
        if (vlen != r->vlen || memcmp(val, r->val, vlen) != 0) {
            size_t at = 0, min = vlen < r->vlen ? vlen : r->vlen;
            while (at < min && ((const char *)val)[at] == r->val[at])
                at++;
            die("%s: MISMATCH for key '%.*s': got %zu bytes, expected %zu, first difference at byte %zu",
                when, (int)r->klen, r->key, vlen, r->vlen, at);
        }
        s4kv_free(val);
    }
}

/* Iterates the database (keys only): every key must be a live reference key,
 * and the count must equal the live count. */
static void check_iteration(s4kv_db *db, const refmap *m, size_t live)
{
    s4kv_iter *it = NULL;
    int rc = s4kv_iter_new(db, NULL, 0, S4KV_ITER_KEYS_ONLY, &it, errbuf, sizeof errbuf);
    if (rc)
        die("s4kv_iter_new: %s: %s", s4kv_strerror(rc), errbuf);
    size_t seen = 0;
    while ((rc = s4kv_iter_next(it, errbuf, sizeof errbuf)) == 1) {
        size_t klen;
        const char *k = s4kv_iter_key(it, &klen);
        const ref *r = refmap_find(m, k, klen);
        if (!r || r->deleted)
            die("iteration: key '%.*s' is %s", (int)klen, k,
                r ? "deleted but listed" : "not in the source");
        seen++;
    }
    if (rc < 0)
        die("s4kv_iter_next: %s: %s", s4kv_strerror(rc), errbuf);
    s4kv_iter_free(it);
    if (seen != live)
        die("iteration listed %zu keys, expected %zu", seen, live);
}

static int cmp_ref_key(const void *a, const void *b)
{
    const ref *x = *(ref *const *)a, *y = *(ref *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* ---- temporary directory */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "s4kv-demo: remove %s: %s\n", path, strerror(errno));
    return 0;
}

static void rmtree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int dir_is_empty_or_missing(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT;
    struct dirent *de;
    int empty = 1;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            empty = 0;
    closedir(d);
    return empty;
}

/* Set when the database lives in a directory we created; removed at exit
 * after success (unless --keep), kept after a failure for inspection. */
static char tmpdir_path[4096];
static int remove_tmpdir;

static void at_exit_cleanup(void)
{
    if (tmpdir_path[0] && remove_tmpdir)
        rmtree(tmpdir_path);
    else if (tmpdir_path[0])
        fprintf(stderr, "s4kv-demo: database kept in %s\n", tmpdir_path);
}

/* ---- main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: s4kv-demo [--dir DIR] [--input FILE] [--keep]\n"
            "\n"
            "Loads Debian's package index into an s4kv database and proves it\n"
            "comes back byte for byte: import (batches of %d, S4KV_SYNC_BATCH),\n"
            "close, reopen, read every key back, delete every %dth key (sorted\n"
            "order), compact, close, reopen, verify, read back again, and print\n"
            "counts, sizes and timings. Key = the Package: field; value = the\n"
            "whole stanza; a later stanza for the same name replaces an earlier one.\n"
            "\n"
            "  --input FILE  read the index from FILE ('-' = stdin) instead of\n"
            "                running `apt-cache dumpavail`\n"
            "  --dir DIR     put the database in DIR (must be empty or missing;\n"
            "                kept afterwards). Default: a fresh temporary directory,\n"
            "                removed at the end\n"
            "  --keep        keep the temporary directory and print its path\n"
            "  --help        this text\n"
            "\n"
            "Exit status: 0 all checks passed, 1 a check or an operation failed\n"
            "(the message names the key), 2 usage.\n",
            BATCH_OPS, DELETE_EVERY);
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *input_path = NULL;
    int keep = 0;
    static const struct option lopts[] = {
        { "dir", required_argument, NULL, 'd' },
        { "input", required_argument, NULL, 'i' },
        { "keep", no_argument, NULL, 'k' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "d:i:kh", lopts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'i': input_path = optarg; break;
        case 'k': keep = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "s4kv-demo: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    if (dir) {
        if (!dir_is_empty_or_missing(dir))
            die("%s is not empty; the demo needs a fresh database directory", dir);
    } else {
        const char *t = getenv("TMPDIR");
        snprintf(tmpdir_path, sizeof tmpdir_path, "%s/s4kv-demo.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmpdir_path))
            die("mkdtemp %s: %s", tmpdir_path, strerror(errno));
        dir = tmpdir_path;
        atexit(at_exit_cleanup);
    }

    printf("s4kv demo: Debian's package index in s4kv %s\n", S4KV_VERSION_STRING);
    printf("  source: %s\n  database: %s\n  durability: S4KV_SYNC_BATCH (fdatasync per batch of %d)\n\n",
           input_path ? input_path : "apt-cache dumpavail", dir, BATCH_OPS);

    /* 1. read and parse */
    input in;
    uint64_t t0 = now_ns();
    load_input(input_path, &in);
    phase_done("read input", t0, 0);

    t0 = now_ns();
    parsed ps = { 0 };
    parse_stanzas(in.p, in.n, &ps);
    refmap m = { 0 };
    refmap_grow(&m);
    size_t replaced = 0;
    for (size_t i = 0; i < ps.n; i++)
        if (!refmap_set(&m, ps.v[i].key, ps.v[i].klen, ps.v[i].text, ps.v[i].len))
            replaced++;
    phase_done("parse", t0, ps.n);
    if (ps.n == 0)
        die("no stanzas with a Package: field in the input");
    if (m.n > UINT32_MAX / 2)
        die("too many keys");
    uint64_t value_bytes = 0, key_bytes = 0;
    for (size_t i = 0; i < m.n; i++) {
        value_bytes += m.v[i].vlen;
        key_bytes += m.v[i].klen;
    }

    /* 2. import every stanza in source order, batches of BATCH_OPS */
    s4kv_batch *b = s4kv_batch_new();
    if (!b)
        die("out of memory");
    t0 = now_ns();
    s4kv_db *db = db_open(dir);
    for (size_t i = 0; i < ps.n; i++) {
        int rc = s4kv_batch_put(b, ps.v[i].key, ps.v[i].klen, ps.v[i].text, ps.v[i].len);
        if (rc)
            die("batch put '%.*s' (%zu bytes): %s", (int)ps.v[i].klen, ps.v[i].key,
                ps.v[i].len, s4kv_strerror(rc));
        if (s4kv_batch_count(b) == BATCH_OPS)
            db_commit(db, b, "import");
    }
    if (s4kv_batch_count(b))
        db_commit(db, b, "import");
    phase_done("open + import", t0, ps.n);
    s4kv_stats st_import = db_stats(db);
    if (st_import.keys != m.n)
        die("after import the database has %" PRIu64 " keys, expected %zu", st_import.keys, m.n);
    t0 = now_ns();
    db_close(db);
    phase_done("close", t0, 0);
    uint64_t seg_import, nseg_import, all_import;
    dir_sizes(dir, &seg_import, &nseg_import, &all_import);

    /* 3. reopen, read everything back */
    t0 = now_ns();
    db = db_open(dir);
    phase_done("reopen", t0, 0);
    t0 = now_ns();
    check_all(db, &m, "read back after reopen");
    phase_done("get + compare", t0, m.n);

    /* 4. delete every DELETE_EVERY-th key in sorted order, in batches */
    ref **sorted = xmalloc(m.n * sizeof *sorted);
    for (size_t i = 0; i < m.n; i++)
        sorted[i] = &m.v[i];
    qsort(sorted, m.n, sizeof *sorted, cmp_ref_key);
    size_t ndel = 0;
    t0 = now_ns();
    for (size_t i = DELETE_EVERY - 1; i < m.n; i += DELETE_EVERY) {
        int rc = s4kv_batch_delete(b, sorted[i]->key, sorted[i]->klen);
        if (rc)
            die("batch delete '%.*s': %s", (int)sorted[i]->klen, sorted[i]->key, s4kv_strerror(rc));
        sorted[i]->deleted = 1;
        ndel++;
        if (s4kv_batch_count(b) == BATCH_OPS)
            db_commit(db, b, "delete");
    }
    if (s4kv_batch_count(b))
        db_commit(db, b, "delete");
    phase_done("delete", t0, ndel);
    size_t live = m.n - ndel;
    s4kv_stats st_del = db_stats(db);
    if (st_del.keys != live)
        die("after deletes the database has %" PRIu64 " keys, expected %zu", st_del.keys, live);

    /* 5. compact, close, reopen, verify, read back again */
    t0 = now_ns();
    errbuf[0] = '\0';
    int rc = s4kv_compact(db, errbuf, sizeof errbuf);
    if (rc)
        die("s4kv_compact: %s: %s", s4kv_strerror(rc), errbuf);
    phase_done("compact", t0, live);
    s4kv_stats st_compact = db_stats(db);
    db_close(db);
    uint64_t seg_compact, nseg_compact, all_compact;
    dir_sizes(dir, &seg_compact, &nseg_compact, &all_compact);

    t0 = now_ns();
    db = db_open(dir);
    phase_done("reopen", t0, 0);
    s4kv_verify_report vr;
    memset(&vr, 0, sizeof vr);
    t0 = now_ns();
    errbuf[0] = '\0';
    rc = s4kv_verify(db, &vr, errbuf, sizeof errbuf);
    if (rc)
        die("s4kv_verify: %s: %s (bad records %" PRIu64 ", index mismatches %" PRIu64 ")",
            s4kv_strerror(rc), errbuf, vr.bad_records, vr.index_mismatches);
    phase_done("verify", t0, vr.records);
    if (vr.keys != live)
        die("verify counted %" PRIu64 " live keys, expected %zu", vr.keys, live);
    t0 = now_ns();
    check_all(db, &m, "read back after compaction");
    phase_done("get + compare", t0, m.n);
    t0 = now_ns();
    check_iteration(db, &m, live);
    phase_done("iterate keys", t0, live);
    s4kv_stats st_final = db_stats(db);
    db_close(db);
    s4kv_batch_free(b);

    /* 6. summary */
    printf("\nsummary\n");
    printf("  input                  %s bytes (%s), %s stanzas\n", num(in.n), mib(in.n), num(ps.n));
    if (ps.no_package)
        printf("  skipped                %s stanzas without a Package: field\n", num(ps.no_package));
    printf("  unique keys            %s (%s stanzas replaced by a later one)\n", num(m.n), num(replaced));
    printf("  live data              %s key bytes + %s value bytes (%s)\n", num(key_bytes),
           num(value_bytes), mib(key_bytes + value_bytes));
    printf("  after import           %s segment bytes in %s segments (%s); stats: %s segment bytes, %s garbage\n",
           num(seg_import), num(nseg_import), mib(seg_import), num(st_import.segment_bytes),
           num(st_import.garbage_bytes));
    printf("  compression            %.2fx (input bytes / segment bytes), %.2fx (live key+value bytes / segment bytes)\n",
           (double)in.n / (double)(seg_import ? seg_import : 1),
           (double)(key_bytes + value_bytes) / (double)(seg_import ? seg_import : 1));
    printf("  deleted                %s keys (every %dth in sorted order); %s live\n", num(ndel),
           DELETE_EVERY, num(live));
    printf("  after compaction       %s segment bytes in %s segments (%s); stats: %s segment bytes, %s garbage\n",
           num(seg_compact), num(nseg_compact), mib(seg_compact), num(st_compact.segment_bytes),
           num(st_compact.garbage_bytes));
    printf("  whole directory        %s bytes after import, %s after compaction\n", num(all_import),
           num(all_compact));
    printf("  index memory           %s bytes (%.1f bytes/key) after import, %s (%.1f bytes/key) at the end\n",
           num(st_import.index_bytes), (double)st_import.index_bytes / (double)(st_import.keys ? st_import.keys : 1),
           num(st_final.index_bytes), (double)st_final.index_bytes / (double)(st_final.keys ? st_final.keys : 1));
    printf("  verify                 %s segments, %s bytes, %s batches, %s records, %s bad, %s index mismatches\n",
           num(vr.segments), num(vr.bytes), num(vr.batches), num(vr.records), num(vr.bad_records),
           num(vr.index_mismatches));
    uint64_t total_ns = 0;
    for (size_t i = 0; i < nphases; i++)
        total_ns += phases[i].ns;
    printf("  total time             %.1f ms\n", (double)total_ns / 1e6);
    printf("\nOK: %s keys read back byte for byte twice, %s deletes confirmed, verify clean\n",
           num(live), num(ndel));

    free(sorted);
    free(m.v);
    free(m.slots);
    free(ps.v);
    free(in.p);
    if (tmpdir_path[0])
        remove_tmpdir = !keep;
    return 0;
}
