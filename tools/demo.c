/*
 * demo.c - `s4kv-demo`, the README's main job: load Debian's package index
 * (`apt-cache dumpavail`) into s4kv and show that every byte comes back,
 * through close and reopen, deletes, compaction and verify; with --s3 URL,
 * also through S3: upload, remote-only reads from a fresh process (one
 * ranged GET per get), upload after compaction, download into a fresh
 * directory.
 *
 * Owns: the stanza parser, an in-memory reference map (the model the
 * database must match: key = the `Package:` value, value = the stanza text
 * exactly as in the source, a later stanza for a name replacing the earlier
 * one), the phase timings, the S3 request counts and the printed summary.
 *
 * Invariant: the demo reports success only after every live key has been read
 * back and compared byte for byte with the reference twice (after a reopen,
 * and after deletes + compaction + reopen + verify), every deleted key has
 * been found absent, and an iteration over the database has listed exactly
 * the live reference keys. With --s3, also: a fresh process that opens the
 * uploaded database remote-only reads N random keys (fixed seed), each
 * compared byte for byte and each costing exactly one HTTP request, once
 * after the import and once after the compaction (deleted keys absent,
 * no request); and the database downloaded into an empty directory
 * verifies clean, matches the reference key by key, and its segment files
 * are byte-identical to the local ones. Any difference names the key and
 * exits 1.
 *
 * The fresh reader is this program run again (/proc/self/exe --remote-check)
 * with the source piped to its stdin, so it builds its own reference from the
 * same bytes and shares nothing else with the writer; it reports its request
 * counts back on a pipe (--report-fd).
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
#include <signal.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCH_OPS 1000
#define DELETE_EVERY 10 /* delete every 10th key in sorted key order */
#define REMOTE_GETS 1000 /* --n: random keys the fresh remote reader gets */
#define REMOTE_SEED 0x5eed5eedULL

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

static phase phases[32];
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

/* A transfer phase: bytes moved, MiB/s and the HTTP requests it took
 * (bytes 0: only the requests). */
static void phase_done_xfer(const char *name, uint64_t t0, uint64_t bytes, uint64_t requests)
{
    phase *ph = &phases[nphases++];
    ph->name = name;
    ph->ns = now_ns() - t0;
    ph->records = 0;
    double secs = (double)(ph->ns ? ph->ns : 1) / 1e9;
    if (bytes)
        printf("  %-22s %18s %10.1f ms %12.1f MiB/s   %s requests\n", name, mib(bytes),
               (double)ph->ns / 1e6, (double)bytes / 1048576.0 / secs, num(requests));
    else
        printf("  %-22s %18s %10.1f ms %18s   %s requests\n", name, "", (double)ph->ns / 1e6, "",
               num(requests));
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
/* The same for the directory --s3 downloads into. */
static char dl_path[4096];
static int remove_dl;

static void at_exit_cleanup(void)
{
    if (tmpdir_path[0] && remove_tmpdir)
        rmtree(tmpdir_path);
    else if (tmpdir_path[0])
        fprintf(stderr, "s4kv-demo: database kept in %s\n", tmpdir_path);
    if (dl_path[0] && remove_dl)
        rmtree(dl_path);
    else if (dl_path[0])
        fprintf(stderr, "s4kv-demo: downloaded database kept in %s\n", dl_path);
}

/* ---- S3: upload, the fresh remote reader, download */

/* Request counts of one S3 phase, for the summary. */
typedef struct s3_phase {
    const char *name;
    uint64_t requests, retries, bytes;
    char detail[200];
} s3_phase;

static s3_phase s3_phases[8];
static size_t ns3_phases;

static s3_phase *s3_phase_add(const char *name, uint64_t requests, uint64_t retries,
                              uint64_t bytes)
{
    s3_phase *p = &s3_phases[ns3_phases++];
    *p = (s3_phase){ .name = name, .requests = requests, .retries = retries, .bytes = bytes };
    return p;
}

/* Where requests go: the endpoint the library will use (same rule). */
static const char *s3_endpoint_name(void)
{
    const char *e = getenv("AWS_ENDPOINT_URL_S3");
    if (!e || !*e)
        e = getenv("AWS_ENDPOINT_URL");
    return e && *e ? e : "AWS S3 (no custom endpoint)";
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile (pct in whole percent) of n sorted samples. */
static uint64_t percentile(const uint64_t *v, size_t n, unsigned pct)
{
    if (!n)
        return 0;
    size_t r = (n * pct + 99) / 100;
    return v[r ? r - 1 : 0];
}

/* Segment and checkpoint files of dir, as a sorted list of names. */
typedef struct namelist {
    char **v;
    size_t n;
} namelist;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_db_file(const char *name)
{
    size_t l = strlen(name);
    return (strncmp(name, "data_", 5) == 0 && l > 10 && strcmp(name + l - 5, ".s4kv") == 0) ||
           (strncmp(name, "index_", 6) == 0 && l > 11 && strcmp(name + l - 5, ".s4ki") == 0);
}

static namelist db_files(const char *dir)
{
    namelist nl = { 0 };
    DIR *d = opendir(dir);
    if (!d)
        die("opendir %s: %s", dir, strerror(errno));
    struct dirent *de;
    size_t cap = 0;
    while ((de = readdir(d))) {
        if (!is_db_file(de->d_name))
            continue;
        if (nl.n == cap) {
            cap = cap ? cap * 2 : 16;
            nl.v = realloc(nl.v, cap * sizeof *nl.v);
            if (!nl.v)
                die("out of memory");
        }
        nl.v[nl.n] = strdup(de->d_name);
        if (!nl.v[nl.n++])
            die("out of memory");
    }
    closedir(d);
    if (nl.n)
        qsort(nl.v, nl.n, sizeof *nl.v, cmp_str);
    return nl;
}

static size_t namelist_minus(const namelist *a, const namelist *b)
{
    size_t k = 0;
    for (size_t i = 0; i < a->n; i++)
        if (!b->n || !bsearch(&a->v[i], b->v, b->n, sizeof *b->v, cmp_str))
            k++;
    return k;
}

static void namelist_free(namelist *nl)
{
    for (size_t i = 0; i < nl->n; i++)
        free(nl->v[i]);
    free(nl->v);
    memset(nl, 0, sizeof *nl);
}

/* Uploads db to url as phase `name`; a new generation must be published. */
static s4kv_s3_report s3_upload(s4kv_db *db, const char *url, const char *name)
{
    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = url;
    s4kv_s3_report rep;
    memset(&rep, 0, sizeof rep);
    uint64_t t0 = now_ns();
    errbuf[0] = '\0';
    int rc = s4kv_upload(db, &o, &rep, errbuf, sizeof errbuf);
    if (rc)
        die("%s: s4kv_upload to %s: %s: %s", name, url, s4kv_strerror(rc), errbuf);
    phase_done_xfer(name, t0, rep.bytes_uploaded, rep.requests);
    if (!rep.published)
        die("%s: s4kv_upload published no new manifest generation (generation %" PRIu64 ")",
            name, rep.generation);
    printf("  %-22s generation %s: %s objects uploaded, %s already there, %s deleted; "
           "%s retries, %s connections\n", "", num(rep.generation), num(rep.objects_uploaded),
           num(rep.objects_skipped), num(rep.objects_deleted), num(rep.retries),
           num(rep.connections));
    s3_phase *p = s3_phase_add(name, rep.requests, rep.retries, rep.bytes_uploaded);
    snprintf(p->detail, sizeof p->detail, "%s objects, %s, generation %s", num(rep.objects_uploaded),
             mib(rep.bytes_uploaded), num(rep.generation));
    return rep;
}

/* What the fresh reader sends back on --report-fd. */
typedef struct remote_result {
    uint64_t requests, retries, open_requests, gets, found, p50_ns, p99_ns;
} remote_result;

/*
 * The fresh reader (--remote-check): opens url remote-only (no local
 * directory: MANIFEST and checkpoint from S3, each get one ranged GET), gets
 * n distinct keys of the reference chosen with a fixed seed and compares
 * each with the source byte for byte (a key deleted by the demo must be
 * absent). Exactly one request per key found, none for an absent key: any
 * other count fails. Writes a remote_result line to report_fd (-1 = none).
 */
static void remote_check(const char *url, refmap *m, size_t n, uint64_t seed, int report_fd)
{
    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = url;
    s4kv_db *db = NULL;
    uint64_t t0 = now_ns();
    errbuf[0] = '\0';
    int rc = s4kv_open_s3(NULL, NULL, &o, &db, errbuf, sizeof errbuf);
    if (rc)
        die("remote open of %s: %s: %s", url, s4kv_strerror(rc), errbuf);
    s4kv_s3_report r0, r1;
    if (s4kv_s3_stats(db, &r0))
        die("s4kv_s3_stats failed");
    phase_done_xfer("remote open", t0, 0, r0.requests);

    if (n > m->n)
        n = m->n;
    uint32_t *pick = xmalloc(m->n * sizeof *pick);
    for (size_t i = 0; i < m->n; i++)
        pick[i] = (uint32_t)i;
    uint64_t rng = seed;
    for (size_t i = 0; i < n; i++) { /* partial Fisher-Yates: n distinct keys */
        size_t j = i + (size_t)(((unsigned __int128)splitmix64(&rng) * (m->n - i)) >> 64);
        uint32_t t = pick[i];
        pick[i] = pick[j];
        pick[j] = t;
    }
    uint64_t *lat = xmalloc(n * sizeof *lat);
    size_t found = 0;
    t0 = now_ns();
    for (size_t i = 0; i < n; i++) {
        const ref *r = &m->v[pick[i]];
        void *val = NULL;
        size_t vlen = 0;
        errbuf[0] = '\0';
        uint64_t g0 = now_ns();
        rc = s4kv_get(db, r->key, r->klen, &val, &vlen, errbuf, sizeof errbuf);
        lat[i] = now_ns() - g0;
        if (r->deleted) {
            if (rc == 0) {
                s4kv_free(val);
                die("remote get: key '%.*s' was deleted but is still present", (int)r->klen,
                    r->key);
            }
            if (rc != S4KV_ENOTFOUND)
                die("remote get '%.*s': %s: %s", (int)r->klen, r->key, s4kv_strerror(rc), errbuf);
            continue;
        }
        if (rc)
            die("remote get '%.*s': %s: %s", (int)r->klen, r->key, s4kv_strerror(rc), errbuf);
        if (vlen != r->vlen || memcmp(val, r->val, vlen) != 0)
            die("remote get: MISMATCH for key '%.*s': got %zu bytes, expected %zu", (int)r->klen,
                r->key, vlen, r->vlen);
        s4kv_free(val);
        found++;
    }
    phase_done("remote get + compare", t0, n);
    if (s4kv_s3_stats(db, &r1))
        die("s4kv_s3_stats failed");
    uint64_t req = r1.requests - r0.requests, retries = r1.retries - r0.retries;
    qsort(lat, n, sizeof *lat, cmp_u64);
    remote_result res = { .requests = r1.requests, .retries = r1.retries,
                          .open_requests = r0.requests, .gets = n, .found = found,
                          .p50_ns = percentile(lat, n, 50), .p99_ns = percentile(lat, n, 99) };
    printf("  %-22s %s found and identical, %s deleted and absent; %s requests = %.2f per found "
           "get (%s retries), %s new connections; latency p50 %.2f ms, p99 %.2f ms\n", "",
           num(found), num(n - found), num(req), found ? (double)(req - retries) / (double)found : 0.0,
           num(retries), num(r1.connections - r0.connections), (double)res.p50_ns / 1e6,
           (double)res.p99_ns / 1e6);
    fflush(stdout);
    if (req - retries != found)
        die("remote get: %" PRIu64 " requests (%" PRIu64 " retries) for %zu found keys and %zu "
            "absent ones; expected exactly one ranged GET per found key and none for an absent one",
            req, retries, found, n - found);
    db_close(db);
    if (report_fd >= 0) {
        char line[256];
        int len = snprintf(line, sizeof line,
                           "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                           " %" PRIu64 "\n", res.requests, res.retries, res.open_requests,
                           res.gets, res.found, res.p50_ns, res.p99_ns);
        if (write(report_fd, line, (size_t)len) != len)
            die("writing the report: %s", strerror(errno));
        close(report_fd);
    }
    free(lat);
    free(pick);
}

/* Runs this program again as a fresh process (--remote-check) with the
 * source on its stdin; returns what it reported. Any failure of the child
 * (it names the key) fails the demo. */
static remote_result spawn_remote_check(const char *url, const input *in, size_t n, int after_deletes)
{
    char exe[4096];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (l < 0)
        die("readlink /proc/self/exe: %s", strerror(errno));
    exe[l] = '\0';
    char nbuf[32], seedbuf[32];
    snprintf(nbuf, sizeof nbuf, "%zu", n);
    snprintf(seedbuf, sizeof seedbuf, "%llu", (unsigned long long)REMOTE_SEED);
    char *argv[16];
    int a = 0;
    argv[a++] = exe;
    argv[a++] = "--remote-check";
    argv[a++] = (char *)url;
    argv[a++] = "--input";
    argv[a++] = "-";
    argv[a++] = "--n";
    argv[a++] = nbuf;
    argv[a++] = "--seed";
    argv[a++] = seedbuf;
    argv[a++] = "--report-fd";
    argv[a++] = "3";
    if (after_deletes)
        argv[a++] = "--after-deletes";
    argv[a] = NULL;

    int inp[2], rep[2];
    if (pipe2(inp, O_CLOEXEC) || pipe2(rep, O_CLOEXEC))
        die("pipe: %s", strerror(errno));
    fflush(stdout);
    fflush(stderr);
    uint64_t t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        if (dup2(inp[0], 0) < 0 || dup2(rep[1], 3) < 0)
            _exit(127);
        fcntl(3, F_SETFD, 0); /* dup2 onto itself keeps close-on-exec */
        fcntl(0, F_SETFD, 0);
        execv(exe, argv);
        fprintf(stderr, "s4kv-demo: exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(inp[0]);
    close(rep[1]);
    signal(SIGPIPE, SIG_IGN); /* a reader that died early is reported by waitpid */
    for (size_t off = 0; off < in->n;) {
        ssize_t w = write(inp[1], in->p + off, in->n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(inp[1]);
    char line[256];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(rep[0], line + got, sizeof line - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || (got += (size_t)r) == sizeof line - 1)
            break;
    }
    line[got] = '\0';
    close(rep[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die("the fresh remote reader failed (%s %d)", WIFEXITED(st) ? "exit status" : "signal",
            WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    remote_result res;
    if (sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                     " %" SCNu64, &res.requests, &res.retries, &res.open_requests, &res.gets,
               &res.found, &res.p50_ns, &res.p99_ns) != 7)
        die("the fresh remote reader sent no report");
    phase_done("fresh reader, total", t0, 0);
    return res;
}

/* Records a fresh reader's requests for the summary. */
static void reader_phase(remote_result r, const char *name)
{
    s3_phase *p = s3_phase_add(name, r.requests, r.retries, 0);
    snprintf(p->detail, sizeof p->detail,
             "%s to open + %s ranged GETs for %s gets (%s keys found); p50 %.2f ms, p99 %.2f ms",
             num(r.open_requests), num(r.requests - r.open_requests), num(r.gets), num(r.found),
             (double)r.p50_ns / 1e6, (double)r.p99_ns / 1e6);
}

/* The segment files of the downloaded directory must equal the local ones
 * byte for byte (the local file may be longer: bytes once written never
 * change). Returns the number of bytes compared. */
static uint64_t compare_segments(const char *local, const char *downloaded, uint64_t *files)
{
    namelist nl = db_files(downloaded);
    uint64_t total = 0;
    *files = 0;
    static char a[1 << 16], b[1 << 16];
    for (size_t i = 0; i < nl.n; i++) {
        if (strncmp(nl.v[i], "data_", 5) != 0)
            continue;
        char pa[8192], pb[8192];
        snprintf(pa, sizeof pa, "%s/%s", downloaded, nl.v[i]);
        snprintf(pb, sizeof pb, "%s/%s", local, nl.v[i]);
        FILE *fa = fopen(pa, "rb"), *fb = fopen(pb, "rb");
        if (!fa || !fb)
            die("compare: cannot open %s: %s", fa ? pb : pa, strerror(errno));
        uint64_t off = 0;
        size_t na;
        while ((na = fread(a, 1, sizeof a, fa)) > 0) {
            size_t nb = fread(b, 1, na, fb);
            if (nb != na || memcmp(a, b, na) != 0) {
                size_t at = 0;
                while (at < nb && a[at] == b[at])
                    at++;
                die("compare: downloaded %s differs from the local file at byte %" PRIu64, nl.v[i],
                    off + at);
            }
            off += na;
        }
        if (ferror(fa) || ferror(fb))
            die("compare: reading %s: %s", nl.v[i], strerror(errno));
        fclose(fa);
        fclose(fb);
        total += off;
        ++*files;
    }
    namelist_free(&nl);
    return total;
}


/* ---- main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: s4kv-demo [--dir DIR] [--input FILE] [--keep]\n"
            "                 [--s3 URL [--n N] [--download-dir DIR]]\n"
            "       s4kv-demo --remote-check URL [--input FILE] [--n N] [--seed N]\n"
            "                 [--after-deletes]\n"
            "\n"
            "Loads Debian's package index into an s4kv database and proves it\n"
            "comes back byte for byte: import (batches of %d, S4KV_SYNC_BATCH),\n"
            "close, reopen, read every key back, delete every %dth key (sorted\n"
            "order), compact, close, reopen, verify, read back again, and print\n"
            "counts, sizes and timings. Key = the Package: field; value = the\n"
            "whole stanza; a later stanza for the same name replaces an earlier one.\n"
            "\n"
            "With --s3 URL (s3://bucket/prefix/, configured like the AWS CLI:\n"
            "AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_REGION, ...)\n"
            "it also uploads after the import; runs a fresh process that opens the\n"
            "database remote-only and reads N random keys (one ranged GET each,\n"
            "compared with the source); uploads again after the deletes and the\n"
            "compaction, runs the fresh reader again (deleted keys must be absent);\n"
            "downloads into an empty directory, verifies it and compares every key\n"
            "and every segment file; and prints timings, MiB/s and request counts.\n"
            "\n"
            "  --input FILE  read the index from FILE ('-' = stdin) instead of\n"
            "                running `apt-cache dumpavail`\n"
            "  --dir DIR     put the database in DIR (must be empty or missing;\n"
            "                kept afterwards). Default: a fresh temporary directory,\n"
            "                removed at the end\n"
            "  --keep        keep the temporary directories and print their paths\n"
            "  --s3 URL      the S3 phases above, against URL (a fresh prefix: upload\n"
            "                refuses a prefix that holds another database)\n"
            "  --download-dir DIR  download into DIR (must be empty or missing; kept).\n"
            "                Default: a fresh temporary directory, removed at the end\n"
            "  --n N         keys the fresh reader gets (default %d, distinct)\n"
            "  --remote-check URL  only the fresh reader: open URL remote-only, get N\n"
            "                random keys (--seed, default %llu) and compare them with\n"
            "                the source; --after-deletes: the database had every\n"
            "                %dth key deleted, as the demo does\n"
            "  --help        this text\n"
            "\n"
            "Exit status: 0 all checks passed, 1 a check or an operation failed\n"
            "(the message names the key), 2 usage.\n",
            BATCH_OPS, DELETE_EVERY, REMOTE_GETS, (unsigned long long)REMOTE_SEED, DELETE_EVERY);
}

/* Parses the input into stanzas and the reference map; prints the phases. */
static void build_reference(const input *in, parsed *ps, refmap *m, size_t *replaced)
{
    uint64_t t0 = now_ns();
    memset(ps, 0, sizeof *ps);
    memset(m, 0, sizeof *m);
    parse_stanzas(in->p, in->n, ps);
    refmap_grow(m);
    *replaced = 0;
    for (size_t i = 0; i < ps->n; i++)
        if (!refmap_set(m, ps->v[i].key, ps->v[i].klen, ps->v[i].text, ps->v[i].len))
            ++*replaced;
    phase_done("parse", t0, ps->n);
    if (ps->n == 0)
        die("no stanzas with a Package: field in the input");
    if (m->n > UINT32_MAX / 2)
        die("too many keys");
}

/* The reference keys in sorted order (memcmp, shorter first). */
static ref **sorted_refs(refmap *m)
{
    ref **sorted = xmalloc(m->n * sizeof *sorted);
    for (size_t i = 0; i < m->n; i++)
        sorted[i] = &m->v[i];
    qsort(sorted, m->n, sizeof *sorted, cmp_ref_key);
    return sorted;
}

static uint64_t parse_u64(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-') {
        fprintf(stderr, "s4kv-demo: %s: expected a number, got '%s'\n", opt, s);
        exit(2);
    }
    return (uint64_t)v;
}

/* --remote-check: the fresh reader on its own. */
static int remote_check_main(const char *url, const char *input_path, size_t n, uint64_t seed,
                             int after_deletes, int report_fd)
{
    const char *src = !input_path ? "apt-cache dumpavail"
                      : strcmp(input_path, "-") == 0 ? "the writer, on a pipe" : input_path;
    printf("  %-22s pid %ld: s4kv-demo --remote-check, source from %s, no local directory\n",
           "fresh reader", (long)getpid(), src);
    fflush(stdout);
    input in;
    uint64_t t0 = now_ns();
    load_input(input_path, &in);
    phase_done("read input", t0, 0);
    parsed ps;
    refmap m;
    size_t replaced;
    build_reference(&in, &ps, &m, &replaced);
    if (after_deletes) {
        ref **sorted = sorted_refs(&m);
        for (size_t i = DELETE_EVERY - 1; i < m.n; i += DELETE_EVERY)
            sorted[i]->deleted = 1;
        free(sorted);
    }
    remote_check(url, &m, n, seed, report_fd);
    free(m.v);
    free(m.slots);
    free(ps.v);
    free(in.p);
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *input_path = NULL, *s3url = NULL, *check_url = NULL, *ddir = NULL;
    int keep = 0, after_deletes = 0, report_fd = -1;
    uint64_t nremote = REMOTE_GETS, seed = REMOTE_SEED;
    static const struct option lopts[] = {
        { "dir", required_argument, NULL, 'd' },
        { "input", required_argument, NULL, 'i' },
        { "keep", no_argument, NULL, 'k' },
        { "s3", required_argument, NULL, 's' },
        { "download-dir", required_argument, NULL, 'D' },
        { "n", required_argument, NULL, 'n' },
        { "remote-check", required_argument, NULL, 'R' },
        { "seed", required_argument, NULL, 'S' },
        { "after-deletes", no_argument, NULL, 'A' },
        { "report-fd", required_argument, NULL, 'F' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "d:i:kh", lopts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'i': input_path = optarg; break;
        case 'k': keep = 1; break;
        case 's': s3url = optarg; break;
        case 'D': ddir = optarg; break;
        case 'n': nremote = parse_u64("--n", optarg); break;
        case 'R': check_url = optarg; break;
        case 'S': seed = parse_u64("--seed", optarg); break;
        case 'A': after_deletes = 1; break;
        case 'F': report_fd = (int)parse_u64("--report-fd", optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "s4kv-demo: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (nremote == 0 || nremote > UINT32_MAX) {
        fprintf(stderr, "s4kv-demo: --n: expected 1 .. %u\n", UINT32_MAX);
        return 2;
    }
    if (ddir && !s3url) {
        fprintf(stderr, "s4kv-demo: --download-dir goes with --s3\n");
        return 2;
    }
    if (check_url) {
        if (dir || s3url || keep) {
            fprintf(stderr, "s4kv-demo: --remote-check takes only --input, --n, --seed, "
                            "--after-deletes\n");
            return 2;
        }
        return remote_check_main(check_url, input_path, (size_t)nremote, seed, after_deletes,
                                 report_fd);
    }
    if (after_deletes || report_fd >= 0 || seed != REMOTE_SEED) {
        fprintf(stderr, "s4kv-demo: --seed, --after-deletes and --report-fd go with --remote-check\n");
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
    }
    if (ddir) {
        if (!dir_is_empty_or_missing(ddir))
            die("%s is not empty; the download needs a fresh directory", ddir);
    } else if (s3url) {
        const char *t = getenv("TMPDIR");
        snprintf(dl_path, sizeof dl_path, "%s/s4kv-demo-download.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dl_path))
            die("mkdtemp %s: %s", dl_path, strerror(errno));
        ddir = dl_path;
    }
    atexit(at_exit_cleanup);

    printf("s4kv demo: Debian's package index in s4kv %s\n", S4KV_VERSION_STRING);
    printf("  source: %s\n  database: %s\n  durability: S4KV_SYNC_BATCH (fdatasync per batch of %d)\n",
           input_path ? input_path : "apt-cache dumpavail", dir, BATCH_OPS);
    if (s3url)
        printf("  s3: %s on %s\n  download into: %s\n", s3url, s3_endpoint_name(), ddir);
    printf("\n");

    /* 1. read and parse */
    input in;
    uint64_t t0 = now_ns();
    load_input(input_path, &in);
    phase_done("read input", t0, 0);

    parsed ps;
    refmap m;
    size_t replaced;
    build_reference(&in, &ps, &m, &replaced);
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

    /* 3b. S3: upload, then a fresh process opens it remote-only and reads
     * nremote random keys with one ranged GET each */
    namelist files1 = { 0 };
    if (s3url) {
        s3_upload(db, s3url, "upload");
        files1 = db_files(dir);
        reader_phase(spawn_remote_check(s3url, &in, (size_t)nremote, 0), "fresh reader");
    }

    /* 4. delete every DELETE_EVERY-th key in sorted order, in batches */
    ref **sorted = sorted_refs(&m);
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

    /* 5b. S3: upload the compacted database; the fresh reader again */
    if (s3url) {
        s4kv_s3_report up = s3_upload(db, s3url, "upload after compact");
        namelist files2 = db_files(dir);
        printf("  %-22s %s objects of generation %s dropped by generation %s stay in S3 for its "
               "readers until the next compaction (default retention); %s deleted now\n", "",
               num(namelist_minus(&files1, &files2)), num(up.generation - 1), num(up.generation),
               num(up.objects_deleted));
        namelist_free(&files2);
        reader_phase(spawn_remote_check(s3url, &in, (size_t)nremote, 1), "fresh reader, deletes");
    }
    namelist_free(&files1);
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

    /* 5c. S3: download into an empty directory; verify it, compare every key
     * and every segment file */
    uint64_t cmp_bytes = 0, cmp_files = 0;
    if (s3url) {
        s4kv_s3_options o;
        s4kv_s3_options_init(&o);
        o.url = s3url;
        s4kv_s3_report dr;
        t0 = now_ns();
        errbuf[0] = '\0';
        rc = s4kv_download(ddir, &o, &dr, errbuf, sizeof errbuf);
        if (rc)
            die("s4kv_download of %s into %s: %s: %s", s3url, ddir, s4kv_strerror(rc), errbuf);
        phase_done_xfer("download", t0, dr.bytes_downloaded, dr.requests);
        printf("  %-22s generation %s: %s objects downloaded, %s already there; %s retries, %s "
               "connections\n", "", num(dr.generation), num(dr.objects_downloaded),
               num(dr.objects_skipped), num(dr.retries), num(dr.connections));
        s3_phase *sp = s3_phase_add("download", dr.requests, dr.retries, dr.bytes_downloaded);
        snprintf(sp->detail, sizeof sp->detail, "%s objects, %s, generation %s",
                 num(dr.objects_downloaded), mib(dr.bytes_downloaded), num(dr.generation));

        s4kv_options dopt;
        s4kv_options_init(&dopt);
        dopt.read_only = 1;
        dopt.create_if_missing = 0;
        s4kv_db *ddb = NULL;
        t0 = now_ns();
        errbuf[0] = '\0';
        rc = s4kv_open(ddir, &dopt, &ddb, errbuf, sizeof errbuf);
        if (rc)
            die("open the download %s: %s: %s", ddir, s4kv_strerror(rc), errbuf);
        phase_done("open download", t0, 0);
        s4kv_verify_report dvr;
        memset(&dvr, 0, sizeof dvr);
        t0 = now_ns();
        errbuf[0] = '\0';
        rc = s4kv_verify(ddb, &dvr, errbuf, sizeof errbuf);
        if (rc)
            die("s4kv_verify of the download: %s: %s (bad records %" PRIu64
                ", index mismatches %" PRIu64 ")", s4kv_strerror(rc), errbuf, dvr.bad_records,
                dvr.index_mismatches);
        phase_done("verify download", t0, dvr.records);
        if (dvr.keys != live)
            die("verify of the download counted %" PRIu64 " live keys, expected %zu", dvr.keys, live);
        t0 = now_ns();
        check_all(ddb, &m, "read back from the download");
        phase_done("get + compare", t0, m.n);
        t0 = now_ns();
        check_iteration(ddb, &m, live);
        phase_done("iterate keys", t0, live);
        db_close(ddb);
        t0 = now_ns();
        cmp_bytes = compare_segments(dir, ddir, &cmp_files);
        phase_done("compare segment files", t0, 0);
        if (cmp_files == 0)
            die("the download holds no segment files");
    }

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
    if (s3url) {
        printf("\nS3 requests (%s on %s)\n", s3url, s3_endpoint_name());
        uint64_t req = 0, retries = 0;
        for (size_t i = 0; i < ns3_phases; i++) {
            const s3_phase *p = &s3_phases[i];
            printf("  %-22s %8s requests  %s\n", p->name, num(p->requests), p->detail);
            req += p->requests;
            retries += p->retries;
        }
        printf("  %-22s %8s requests  (%s retries among them)\n", "total", num(req), num(retries));
        printf("  %-22s %s segment files, %s bytes, identical to the local ones\n", "download",
               num(cmp_files), num(cmp_bytes));
    }
    printf("\nOK: %s keys read back byte for byte twice, %s deletes confirmed, verify clean\n",
           num(live), num(ndel));
    if (s3url)
        printf("OK: through S3, %s random keys read remote-only by a fresh process twice (one "
               "ranged GET each), the download verified and identical\n", num(nremote));

    free(sorted);
    free(m.v);
    free(m.slots);
    free(ps.v);
    free(in.p);
    if (tmpdir_path[0])
        remove_tmpdir = !keep;
    if (dl_path[0])
        remove_dl = !keep;
    return 0;
}
