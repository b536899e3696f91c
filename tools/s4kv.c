/*
 * s4kv.c - the `s4kv` command-line program: argument parsing, one function
 * per command, progress and summaries on stderr, and the mapping of engine
 * errors to exit codes. The import/export codecs live in format.c.
 *
 * Invariants: every error is exactly one line on stderr starting with
 * "s4kv: " and naming what failed (the key, the directory, the input line);
 * stdout carries only the command's output (values, keys, records, reports);
 * the exit status follows the table in the help text (EX_* below). Commands
 * return their exit status and free everything they took, so the program is
 * clean under LeakSanitizer on every path.
 */
#include "format.h"
#include "s4kv.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Exit statuses (a public contract: documented in the help text). */
enum {
    EX_OK = 0,
    EX_NOTFOUND = 1, /* get of an absent key */
    EX_USAGE = 2,    /* bad command line */
    EX_ERR = 3,      /* I/O or any other error, malformed import input */
    EX_CORRUPT = 4,  /* S4KV_ECORRUPT: a checksum or structure check failed */
    EX_LOCKED = 5,   /* S4KV_ELOCKED: another process holds the writer lock */
};

#define OUT_BUF_BYTES (1u << 20)
#define IMPORT_BATCH_DEFAULT 1000ul
/* A batch is also committed early once it holds this many bytes, so that a
 * --batch of large values stays far below S4KV_MAX_BATCH_BYTES. */
#define IMPORT_BATCH_BYTES (64u << 20)

/* Which options a command accepts (besides -d/--dir and -h/--help). */
enum {
    OPT_PREFIX = 1 << 0,
    OPT_NUL0 = 1 << 1,
    OPT_JSON = 1 << 2,
    OPT_FORMAT = 1 << 3,
    OPT_BATCH = 1 << 4,
};

typedef struct cli {
    const char *dir;
    const char *cmd;
    const char *prefix;
    int nul0, json;
    fmt_format format;
    unsigned long batch;
    char **pos;           /* positional arguments of the command */
    int npos;
    int tty;              /* stderr is a terminal: show progress */
    double last_progress; /* monotonic seconds of the last progress line */
    int progress_shown;   /* a progress line is on the terminal */
} cli;

typedef struct command {
    const char *name;
    int (*run)(cli *c);
    unsigned opts;
    int min_pos, max_pos; /* max_pos -1: unlimited */
    const char *usage;
    const char *help;
    int formats_help;     /* append the formats section to --help */
} command;

static cli *g_cli; /* for the message helpers, which clear the progress line */

/* ---- messages ----------------------------------------------------------- */

static void progress_clear(cli *c)
{
    if (c && c->progress_shown) {
        fputs("\r\033[K", stderr);
        c->progress_shown = 0;
    }
}

static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line on stderr: "s4kv: " + text + newline. */
static void msg(const char *fmt, ...)
{
    progress_clear(g_cli);
    va_list ap;
    va_start(ap, fmt);
    fputs("s4kv: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* The engine's detail message, or the name of the code when it gave none. */
static const char *detail(const char *err, int rc)
{
    return err[0] ? err : s4kv_strerror(rc);
}

static int exit_for(int rc)
{
    switch (rc) {
    case S4KV_OK: return EX_OK;
    case S4KV_ENOTFOUND: return EX_NOTFOUND;
    case S4KV_ECORRUPT: return EX_CORRUPT;
    case S4KV_ELOCKED: return EX_LOCKED;
    default: return EX_ERR;
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Decimal units, as `ls --si`: "812 B", "50.2 MB". */
static const char *hsize(uint64_t n, char buf[32])
{
    static const char *unit[] = { "kB", "MB", "GB", "TB", "PB" };
    if (n < 1000) {
        snprintf(buf, 32, "%llu B", (unsigned long long)n);
        return buf;
    }
    double v = (double)n / 1000;
    int u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    snprintf(buf, 32, "%.1f %s", v, unit[u]);
    return buf;
}

static void progress_cb(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
    cli *c = ctx;
    double t = now();
    if (c->progress_shown && t - c->last_progress < 0.1)
        return;
    c->last_progress = t;
    char a[32], b[32];
    if (total)
        fprintf(stderr, "\r\033[K%s: %s / %s (%.0f%%)", phase, hsize(done, a),
                hsize(total, b), 100.0 * (double)done / (double)total);
    else
        fprintf(stderr, "\r\033[K%s: %s", phase, hsize(done, a));
    fflush(stderr);
    c->progress_shown = 1;
}

static void log_cb(void *ctx, const char *line)
{
    progress_clear(ctx);
    fprintf(stderr, "s4kv: %s\n", line);
}

/* A write to stdout failed: a closed pipe (EPIPE) exits quietly, anything
 * else says so. Either way EX_ERR. */
static int out_error(void)
{
    if (errno != EPIPE)
        msg("writing to stdout: %s", strerror(errno));
    return EX_ERR;
}

static int out_flush(void)
{
    return fflush(stdout) == 0 ? EX_OK : out_error();
}

/* ---- help --------------------------------------------------------------- */

static const char HELP_FORMATS[] =
    "Formats (import and export are exact inverses, byte for byte):\n"
    "  jsonl  one JSON object per line, written exactly as\n"
    "             {\"key\": \"K\", \"value\": \"V\"}\n"
    "         K and V are JSON strings: \\\" \\\\ \\b \\f \\n \\r \\t, \\u00XX for the\n"
    "         other control bytes (\\u0000 for NUL), all other UTF-8 raw. A field\n"
    "         whose bytes are not valid UTF-8 is written as \"key_b64\" or\n"
    "         \"value_b64\" instead: standard base64 with padding (RFC 4648).\n"
    "         import takes the members in any order and any JSON whitespace,\n"
    "         needs one of key/key_b64 and one of value/value_b64, and rejects\n"
    "         other members, blank lines and non-canonical base64.\n"
    "  tsv    KEY<TAB>VALUE<LF> per line. In both fields backslash, TAB, LF, CR\n"
    "         and NUL are written as \\\\ \\t \\n \\r \\0; every other byte is raw.\n"
    "         import rejects unknown escapes, a missing or extra TAB, a raw CR\n"
    "         (CRLF input) and a last line without its LF.\n"
    "  nul    KEY<NUL>VALUE<NUL>, repeated, raw bytes. Neither field may hold a\n"
    "         NUL byte: export stops with an error naming such a key (use\n"
    "         jsonl), import rejects an incomplete last record.\n"
    "Keys must be non-empty. Output of keys, scan and export is sorted by key\n"
    "bytes (memcmp order, a shorter key first when one is a prefix).\n";

static const char HELP_EXIT[] =
    "Exit status:\n"
    "  0  success (delete of an absent key is a success)\n"
    "  1  not found: get of an absent key\n"
    "  2  usage error: unknown command or option, missing or extra arguments,\n"
    "     an empty or oversized key or value given on the command line\n"
    "  3  I/O or other error: malformed import input, no database at DIR for a\n"
    "     read-only command, a failed write to stdout (a closed pipe, EPIPE,\n"
    "     exits 3 without a message)\n"
    "  4  corruption detected: a checksum or structure check failed (verify\n"
    "     found problems, get met a damaged record)\n"
    "  5  the database is locked by another writer\n"
    "Every error is one line on stderr starting with \"s4kv: \".\n";

static const char HELP_GLOBAL[] =
    "usage: s4kv [-d DIR] COMMAND [ARGS...]\n"
    "\n"
    "s4kv is a log-structured key-value store. Keys are byte strings of 1 to\n"
    "65535 bytes, values byte strings of 0 to 256 MiB.\n"
    "\n"
    "Commands:\n"
    "  put KEY VALUE                     store VALUE under KEY; VALUE '-' reads\n"
    "                                    stdin (binary safe)\n"
    "  get KEY                           write KEY's value to stdout, raw\n"
    "  delete KEY...                     delete keys in one atomic batch\n"
    "  keys [--prefix P] [-0]            list keys (tsv-escaped lines, or raw\n"
    "                                    NUL-terminated with -0)\n"
    "  scan [--prefix P] [--json]        list KEY<TAB>VALUE lines (tsv format),\n"
    "                                    or JSONL with --json\n"
    "  import [--format F] [--batch N]   load records from stdin\n"
    "  export [--format F] [--prefix P]  write records to stdout\n"
    "  compact                           rewrite live records, drop garbage\n"
    "  rebuild-index                     rebuild the index from the log\n"
    "  verify                            check every record and the index\n"
    "  stats [--json]                    show counters\n"
    "\n"
    "Options:\n"
    "  -d, --dir DIR  the database directory (default: $S4KV_DIR, else\n"
    "                 ./s4kv-data); also accepted after the command\n"
    "  -h, --help     this help; 's4kv COMMAND --help' for one command\n"
    "  --version      print the version\n"
    "  --             ends the options (for keys that start with '-')\n"
    "\n"
    "Read-only commands (get, keys, scan, export, verify, stats) never create a\n"
    "database and run beside a writer; put, delete and import create DIR when\n"
    "it is missing; compact and rebuild-index need an existing database.\n"
    "\n";

static void print_help(FILE *f, const command *cmd)
{
    if (!cmd) {
        fputs(HELP_GLOBAL, f);
        fputs(HELP_FORMATS, f);
        fputc('\n', f);
        fputs(HELP_EXIT, f);
        return;
    }
    fprintf(f, "usage: s4kv [-d DIR] %s\n\n%s%s", cmd->usage, cmd->help,
            cmd->opts ? "" : "\nOptions:\n");
    fputs("  -d, --dir DIR  the database directory (default: $S4KV_DIR, else\n"
          "                 ./s4kv-data)\n"
          "  -h, --help     this help\n\n", f);
    if (cmd->formats_help) {
        fputs(HELP_FORMATS, f);
        fputc('\n', f);
    }
    fputs(HELP_EXIT, f);
}

/* ---- opening ------------------------------------------------------------ */

/* Opens c->dir. writable: read-write (else read-only); create: create the
 * database when missing; progress: report progress on a TTY. Returns an exit
 * status; on EX_OK *db is open. */
static int open_db(cli *c, int writable, int create, int progress, s4kv_db **db)
{
    struct stat st;
    if (!create && stat(c->dir, &st) != 0 && errno == ENOENT) {
        msg("no database at %s", c->dir);
        return EX_ERR;
    }
    s4kv_options opt;
    s4kv_options_init(&opt);
    opt.read_only = !writable;
    opt.create_if_missing = create;
    opt.log = log_cb;
    opt.log_ctx = c;
    if (progress && c->tty) {
        opt.progress = progress_cb;
        opt.progress_ctx = c;
    }
    char err[512] = "";
    int rc = s4kv_open(c->dir, &opt, db, err, sizeof err);
    if (rc == 0)
        return EX_OK;
    if (rc == S4KV_ENOENT && strstr(err, "no database at"))
        msg("%s", err);
    else if (rc == S4KV_ENOENT)
        msg("no database at %s (%s)", c->dir, detail(err, rc));
    else if (rc == S4KV_ELOCKED)
        msg("database %s is locked by another writer (%s)", c->dir, detail(err, rc));
    else
        msg("cannot open the database at %s: %s", c->dir, detail(err, rc));
    return exit_for(rc);
}

/* Closes db; a failure there (a final flush or checkpoint) is an error too. */
static int close_db(cli *c, s4kv_db *db, int status)
{
    int rc = s4kv_close(db);
    if (rc != 0 && status == EX_OK) {
        msg("closing the database at %s: %s", c->dir, s4kv_strerror(rc));
        return exit_for(rc);
    }
    return status;
}

/* Checks a key given on the command line; EX_OK or EX_USAGE. */
static int check_arg_key(const cli *c, const char *key)
{
    size_t n = strlen(key);
    if (n == 0) {
        msg("%s: the key is empty (keys are 1 to %u bytes)", c->cmd, S4KV_MAX_KEY_BYTES);
        return EX_USAGE;
    }
    if (n > S4KV_MAX_KEY_BYTES) {
        msg("%s: the key is %zu bytes long; the limit is %u", c->cmd, n,
            S4KV_MAX_KEY_BYTES);
        return EX_USAGE;
    }
    return EX_OK;
}

/* Reads all of stdin into *buf (malloc'd), at most S4KV_MAX_VALUE_BYTES. */
static int read_stdin_value(char **buf, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    if (!b) {
        msg("put: out of memory reading stdin");
        return EX_ERR;
    }
    for (;;) {
        if (n == cap) {
            if (cap > S4KV_MAX_VALUE_BYTES) {
                free(b);
                msg("put: the value on stdin is larger than the limit of %u bytes",
                    S4KV_MAX_VALUE_BYTES);
                return EX_USAGE;
            }
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                msg("put: out of memory reading stdin");
                return EX_ERR;
            }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n, stdin);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(stdin)) {
        msg("put: reading stdin: %s", strerror(errno));
        free(b);
        return EX_ERR;
    }
    if (n > S4KV_MAX_VALUE_BYTES) {
        free(b);
        msg("put: the value on stdin is larger than the limit of %u bytes",
            S4KV_MAX_VALUE_BYTES);
        return EX_USAGE;
    }
    *buf = b;
    *len = n;
    return EX_OK;
}

/* ---- put, get, delete --------------------------------------------------- */

static int cmd_put(cli *c)
{
    const char *key = c->pos[0];
    int st = check_arg_key(c, key);
    if (st)
        return st;
    char *stdin_val = NULL;
    const char *val = c->pos[1];
    size_t vlen = strlen(val);
    if (strcmp(val, "-") == 0 && (st = read_stdin_value(&stdin_val, &vlen)))
        return st;
    if (stdin_val)
        val = stdin_val;
    else if (vlen > S4KV_MAX_VALUE_BYTES) {
        msg("put: the value is larger than the limit of %u bytes", S4KV_MAX_VALUE_BYTES);
        return EX_USAGE;
    }
    s4kv_db *db;
    if ((st = open_db(c, 1, 1, 0, &db))) {
        free(stdin_val);
        return st;
    }
    char err[512] = "", q[256];
    int rc = s4kv_put(db, key, strlen(key), val, vlen, err, sizeof err);
    if (rc) {
        msg("put %s: %s", fmt_quote(q, sizeof q, key, strlen(key)), detail(err, rc));
        st = rc == S4KV_EINVAL ? EX_USAGE : exit_for(rc);
    }
    free(stdin_val);
    return close_db(c, db, st);
}

static int cmd_get(cli *c)
{
    const char *key = c->pos[0];
    int st = check_arg_key(c, key);
    if (st)
        return st;
    s4kv_db *db;
    if ((st = open_db(c, 0, 0, 0, &db)))
        return st;
    char err[512] = "", q[256];
    void *val = NULL;
    size_t vlen = 0;
    int rc = s4kv_get(db, key, strlen(key), &val, &vlen, err, sizeof err);
    fmt_quote(q, sizeof q, key, strlen(key));
    if (rc == S4KV_ENOTFOUND) {
        msg("key %s not found", q);
        st = EX_NOTFOUND;
    } else if (rc) {
        msg("%s", detail(err, rc)); /* the engine's message names the key */
        st = rc == S4KV_EINVAL ? EX_USAGE : exit_for(rc);
    } else {
        if (vlen && fwrite(val, 1, vlen, stdout) != vlen)
            st = out_error();
        else
            st = out_flush();
        s4kv_free(val);
    }
    return close_db(c, db, st);
}

static int cmd_delete(cli *c)
{
    int st;
    for (int i = 0; i < c->npos; i++)
        if ((st = check_arg_key(c, c->pos[i])))
            return st;
    s4kv_batch *b = s4kv_batch_new();
    if (!b) {
        msg("delete: out of memory");
        return EX_ERR;
    }
    for (int i = 0; i < c->npos; i++) {
        int rc = s4kv_batch_delete(b, c->pos[i], strlen(c->pos[i]));
        if (rc != 0) {
            msg("delete: %s", s4kv_strerror(rc));
            s4kv_batch_free(b);
            return rc == S4KV_EINVAL ? EX_USAGE : EX_ERR;
        }
    }
    s4kv_db *db;
    if ((st = open_db(c, 1, 1, 0, &db))) {
        s4kv_batch_free(b);
        return st;
    }
    char err[512] = "";
    int rc = s4kv_write(db, b, err, sizeof err);
    if (rc) {
        char q[256];
        msg("delete %s%s: %s", fmt_quote(q, sizeof q, c->pos[0], strlen(c->pos[0])),
            c->npos > 1 ? " and the other keys" : "", detail(err, rc));
        st = exit_for(rc);
    }
    s4kv_batch_free(b);
    return close_db(c, db, st);
}

/* ---- keys, scan, export ------------------------------------------------- */

/* What to write per key while iterating. */
typedef enum { OUT_KEY_LINE, OUT_KEY_NUL, OUT_RECORD } out_kind;

/* Iterates the live keys under c->prefix in key order and writes each one.
 * A record the engine cannot read (S4KV_ECORRUPT) is reported and skipped,
 * and the command then exits 4 after the rest is written (salvage); any other
 * error stops the command. */
static int iterate_out(cli *c, out_kind kind, fmt_format f)
{
    s4kv_db *db;
    int st = open_db(c, 0, 0, 0, &db);
    if (st)
        return st;
    setvbuf(stdout, NULL, _IOFBF, OUT_BUF_BYTES);
    unsigned flags = S4KV_ITER_SORTED | (kind == OUT_RECORD ? 0 : S4KV_ITER_KEYS_ONLY);
    const char *prefix = c->prefix ? c->prefix : "";
    char err[512] = "", q[256];
    s4kv_iter *it = NULL;
    int rc = s4kv_iter_new(db, prefix, strlen(prefix), flags, &it, err, sizeof err);
    if (rc) {
        msg("%s: cannot iterate %s: %s", c->cmd, c->dir, detail(err, rc));
        return close_db(c, db, exit_for(rc));
    }
    uint64_t damaged = 0;
    for (;;) {
        err[0] = 0;
        rc = s4kv_iter_next(it, err, sizeof err);
        if (rc == 0)
            break;
        if (rc == S4KV_ECORRUPT) {
            msg("%s: skipping a damaged record: %s", c->cmd, detail(err, rc));
            damaged++;
            continue;
        }
        if (rc < 0) {
            msg("%s: reading %s: %s", c->cmd, c->dir, detail(err, rc));
            st = exit_for(rc);
            break;
        }
        size_t klen, vlen = 0;
        const void *key = s4kv_iter_key(it, &klen), *val = NULL;
        if (kind == OUT_RECORD)
            val = s4kv_iter_value(it, &vlen);
        int w = 0;
        switch (kind) {
        case OUT_KEY_LINE:
            w = fmt_write_tsv_field(stdout, key, klen);
            if (w == 0 && putchar('\n') == EOF)
                w = FMT_EIO;
            break;
        case OUT_KEY_NUL:
            if (memchr(key, 0, klen)) {
                msg("keys: key %s holds a NUL byte, which -0 cannot carry "
                    "(use keys without -0, or export --format jsonl)",
                    fmt_quote(q, sizeof q, key, klen));
                w = FMT_EDATA;
            } else if (fwrite(key, 1, klen, stdout) != klen || putchar('\0') == EOF) {
                w = FMT_EIO;
            }
            break;
        case OUT_RECORD:
            w = fmt_write(stdout, f, key, klen, val, vlen, err, sizeof err);
            if (w == FMT_EDATA)
                msg("%s: %s", c->cmd, err);
            else if (w == FMT_ENOMEM)
                msg("%s: out of memory", c->cmd);
            break;
        }
        if (w) {
            st = w == FMT_EIO ? out_error() : EX_ERR;
            break;
        }
    }
    s4kv_iter_free(it);
    if (st == EX_OK)
        st = out_flush();
    if (st == EX_OK && damaged) {
        msg("%s: %llu damaged record%s skipped (run 's4kv verify')", c->cmd,
            (unsigned long long)damaged, damaged == 1 ? "" : "s");
        st = EX_CORRUPT;
    }
    return close_db(c, db, st);
}

static int cmd_keys(cli *c)
{
    return iterate_out(c, c->nul0 ? OUT_KEY_NUL : OUT_KEY_LINE, FMT_TSV);
}

static int cmd_scan(cli *c)
{
    return iterate_out(c, OUT_RECORD, c->json ? FMT_JSONL : FMT_TSV);
}

static int cmd_export(cli *c)
{
    return iterate_out(c, OUT_RECORD, c->format);
}

/* ---- import ------------------------------------------------------------- */

static void import_progress(cli *c, const fmt_reader *r, uint64_t committed)
{
    double t = now();
    if (c->progress_shown && t - c->last_progress < 0.1)
        return;
    c->last_progress = t;
    char a[32];
    fprintf(stderr, "\r\033[Kimport: %llu records committed, %s read",
            (unsigned long long)committed, hsize(fmt_reader_bytes(r), a));
    fflush(stderr);
    c->progress_shown = 1;
}

static int cmd_import(cli *c)
{
    s4kv_db *db;
    int st = open_db(c, 1, 1, 0, &db);
    if (st)
        return st;
    s4kv_batch *b = s4kv_batch_new();
    fmt_reader *r = fmt_reader_new(stdin, c->format);
    if (!b || !r) {
        msg("import: out of memory");
        s4kv_batch_free(b);
        fmt_reader_free(r);
        return close_db(c, db, EX_ERR);
    }
    setvbuf(stdin, NULL, _IOFBF, OUT_BUF_BYTES);
    double t0 = now();
    uint64_t committed = 0, batch_bytes = 0;
    char err[512] = "", where[64], q[256];
    for (;;) {
        const uint8_t *key, *val;
        size_t klen, vlen;
        int rc = fmt_reader_next(r, &key, &klen, &val, &vlen, err, sizeof err);
        if (rc < 0) {
            if (rc == FMT_EDATA)
                msg("import: %s (%llu records imported before the error)", err,
                    (unsigned long long)committed);
            else
                msg("import: reading stdin: %s (%llu records imported before the error)",
                    err, (unsigned long long)committed);
            st = EX_ERR;
            break;
        }
        if (rc == 1) {
            fmt_reader_where(r, where, sizeof where);
            if (klen > S4KV_MAX_KEY_BYTES || vlen > S4KV_MAX_VALUE_BYTES) {
                msg("import: %s: %s %s is %zu bytes; the limit is %u "
                    "(%llu records imported before the error)", where,
                    klen > S4KV_MAX_KEY_BYTES ? "the key" : "the value of key",
                    fmt_quote(q, sizeof q, key, klen),
                    klen > S4KV_MAX_KEY_BYTES ? klen : vlen,
                    klen > S4KV_MAX_KEY_BYTES ? S4KV_MAX_KEY_BYTES : S4KV_MAX_VALUE_BYTES,
                    (unsigned long long)committed);
                st = EX_ERR;
                break;
            }
            int brc = s4kv_batch_put(b, key, klen, val, vlen);
            if (brc) {
                msg("import: %s: key %s: %s (%llu records imported before the error)",
                    where, fmt_quote(q, sizeof q, key, klen), s4kv_strerror(brc),
                    (unsigned long long)committed);
                st = EX_ERR;
                break;
            }
            batch_bytes += klen + vlen;
        }
        size_t n = s4kv_batch_count(b);
        if (n > 0 && (rc == 0 || n >= c->batch || batch_bytes >= IMPORT_BATCH_BYTES)) {
            err[0] = 0;
            int wrc = s4kv_write(db, b, err, sizeof err);
            if (wrc) {
                fmt_reader_where(r, where, sizeof where);
                msg("import: committing the batch ending at %s: %s "
                    "(%llu records imported before the error)", where,
                    detail(err, wrc), (unsigned long long)committed);
                st = exit_for(wrc);
                break;
            }
            committed += n;
            s4kv_batch_clear(b);
            batch_bytes = 0;
            if (c->tty)
                import_progress(c, r, committed);
        }
        if (rc == 0)
            break;
    }
    uint64_t in_bytes = fmt_reader_bytes(r);
    s4kv_batch_free(b);
    fmt_reader_free(r);
    st = close_db(c, db, st);
    if (st == EX_OK) {
        char a[32];
        progress_clear(c);
        fprintf(stderr, "imported %llu record%s (%s) in %.2f s\n",
                (unsigned long long)committed, committed == 1 ? "" : "s",
                hsize(in_bytes, a), now() - t0);
    }
    return st;
}

/* ---- maintenance -------------------------------------------------------- */

static int cmd_compact(cli *c)
{
    s4kv_db *db;
    int st = open_db(c, 1, 0, 1, &db);
    if (st)
        return st;
    s4kv_stats before, after;
    s4kv_stats_get(db, &before);
    double t0 = now();
    char err[512] = "";
    int rc = s4kv_compact(db, err, sizeof err);
    progress_clear(c);
    if (rc) {
        msg("compact %s: %s", c->dir, detail(err, rc));
        return close_db(c, db, exit_for(rc));
    }
    s4kv_stats_get(db, &after);
    st = close_db(c, db, EX_OK);
    if (st == EX_OK) {
        char a[32], b[32], g[32];
        uint64_t freed = before.segment_bytes > after.segment_bytes
                             ? before.segment_bytes - after.segment_bytes : 0;
        fprintf(stderr,
                "compacted %s in %.2f s: %llu segment%s (%s) -> %llu segment%s (%s), "
                "%s reclaimed, %llu keys\n",
                c->dir, now() - t0, (unsigned long long)before.segments,
                before.segments == 1 ? "" : "s", hsize(before.segment_bytes, a),
                (unsigned long long)after.segments, after.segments == 1 ? "" : "s",
                hsize(after.segment_bytes, b), hsize(freed, g),
                (unsigned long long)after.keys);
    }
    return st;
}

static int cmd_rebuild(cli *c)
{
    s4kv_db *db;
    int st = open_db(c, 1, 0, 1, &db);
    if (st)
        return st;
    double t0 = now();
    char err[512] = "";
    int rc = s4kv_rebuild_index(db, err, sizeof err);
    progress_clear(c);
    if (rc) {
        msg("rebuild-index %s: %s", c->dir, detail(err, rc));
        return close_db(c, db, exit_for(rc));
    }
    s4kv_stats s;
    s4kv_stats_get(db, &s);
    st = close_db(c, db, EX_OK);
    if (st == EX_OK) {
        char a[32];
        fprintf(stderr, "rebuilt the index of %s in %.2f s: %llu keys, %s of index memory\n",
                c->dir, now() - t0, (unsigned long long)s.keys, hsize(s.index_bytes, a));
    }
    return st;
}

static int cmd_verify(cli *c)
{
    s4kv_db *db;
    int st = open_db(c, 0, 0, 1, &db);
    if (st)
        return st;
    double t0 = now();
    s4kv_verify_report rep;
    memset(&rep, 0, sizeof rep);
    char err[512] = "";
    int rc = s4kv_verify(db, &rep, err, sizeof err);
    progress_clear(c);
    if (rc && rc != S4KV_ECORRUPT) {
        msg("verify %s: %s", c->dir, detail(err, rc));
        return close_db(c, db, exit_for(rc));
    }
    printf("segments:         %llu\n"
           "bytes:            %llu\n"
           "batches:          %llu\n"
           "records:          %llu\n"
           "bad records:      %llu\n"
           "index mismatches: %llu\n"
           "keys:             %llu\n"
           "result:           %s\n",
           (unsigned long long)rep.segments, (unsigned long long)rep.bytes,
           (unsigned long long)rep.batches, (unsigned long long)rep.records,
           (unsigned long long)rep.bad_records, (unsigned long long)rep.index_mismatches,
           (unsigned long long)rep.keys, rc ? "PROBLEMS FOUND" : "ok");
    st = out_flush();
    if (rc == S4KV_ECORRUPT) {
        msg("verify %s: %llu bad records, %llu index mismatches%s%s", c->dir,
            (unsigned long long)rep.bad_records, (unsigned long long)rep.index_mismatches,
            err[0] ? ": " : "", err);
        st = EX_CORRUPT;
    } else if (st == EX_OK) {
        char a[32];
        fprintf(stderr, "verified %s in %.2f s: %llu records in %llu segment%s (%s), "
                "no problems\n", c->dir, now() - t0, (unsigned long long)rep.records,
                (unsigned long long)rep.segments, rep.segments == 1 ? "" : "s",
                hsize(rep.bytes, a));
    }
    return close_db(c, db, st);
}

static int cmd_stats(cli *c)
{
    s4kv_db *db;
    int st = open_db(c, 0, 0, 0, &db);
    if (st)
        return st;
    s4kv_stats s;
    int rc = s4kv_stats_get(db, &s);
    if (rc) {
        msg("stats %s: %s", c->dir, s4kv_strerror(rc));
        return close_db(c, db, exit_for(rc));
    }
    if (c->json) {
        printf("{\"keys\": %llu, \"live_bytes\": %llu, \"garbage_bytes\": %llu, "
               "\"segment_bytes\": %llu, \"segments\": %llu, \"index_bytes\": %llu, "
               "\"next_seq\": %llu, \"generation\": %llu, \"active_segment\": %lu}\n",
               (unsigned long long)s.keys, (unsigned long long)s.live_bytes,
               (unsigned long long)s.garbage_bytes, (unsigned long long)s.segment_bytes,
               (unsigned long long)s.segments, (unsigned long long)s.index_bytes,
               (unsigned long long)s.next_seq, (unsigned long long)s.generation,
               (unsigned long)s.active_segment);
    } else {
        char a[32], b[32], g[32], d[32];
        double gr = s.segment_bytes ? 100.0 * (double)s.garbage_bytes / (double)s.segment_bytes : 0;
        printf("directory:      %s\n"
               "keys:           %llu\n"
               "live bytes:     %llu (%s)\n"
               "garbage bytes:  %llu (%s, %.1f%% of segment bytes)\n"
               "segment bytes:  %llu (%s)\n"
               "segments:       %llu\n"
               "active segment: %lu\n"
               "index memory:   %llu (%s, %.1f bytes per key)\n"
               "next sequence:  %llu\n"
               "generation:     %llu\n",
               c->dir, (unsigned long long)s.keys,
               (unsigned long long)s.live_bytes, hsize(s.live_bytes, a),
               (unsigned long long)s.garbage_bytes, hsize(s.garbage_bytes, b), gr,
               (unsigned long long)s.segment_bytes, hsize(s.segment_bytes, g),
               (unsigned long long)s.segments, (unsigned long)s.active_segment,
               (unsigned long long)s.index_bytes, hsize(s.index_bytes, d),
               s.keys ? (double)s.index_bytes / (double)s.keys : 0.0,
               (unsigned long long)s.next_seq, (unsigned long long)s.generation);
    }
    return close_db(c, db, out_flush());
}

/* ---- command table and argument parsing --------------------------------- */

static const command COMMANDS[] = {
    { "put", cmd_put, 0, 2, 2, "put KEY VALUE",
      "Stores VALUE under KEY (one atomic write). VALUE '-' reads the value\n"
      "from stdin, binary safe, up to 256 MiB (so a literal value '-' must come\n"
      "through stdin). Creates the database when DIR is missing.\n", 0 },
    { "get", cmd_get, 0, 1, 1, "get KEY",
      "Writes KEY's value to stdout, raw, with nothing added. An absent key\n"
      "exits 1 with a message on stderr.\n", 0 },
    { "delete", cmd_delete, 0, 1, -1, "delete KEY...",
      "Deletes the keys in one atomic batch. Absent keys are not an error\n"
      "(exit 0), as with s4kv_delete.\n", 0 },
    { "keys", cmd_keys, OPT_PREFIX | OPT_NUL0, 0, 0, "keys [--prefix P] [-0]",
      "Lists the live keys in key order, one per line with the tsv escaping\n"
      "(\\\\ \\t \\n \\r \\0), or raw and NUL-terminated with -0 (a key holding a\n"
      "NUL byte is then an error).\n\nOptions:\n"
      "  --prefix P     only keys that start with P\n"
      "  -0, --null     NUL-terminated raw keys\n", 1 },
    { "scan", cmd_scan, OPT_PREFIX | OPT_JSON, 0, 0, "scan [--prefix P] [--json]",
      "Lists the live records in key order as KEY<TAB>VALUE lines in the tsv\n"
      "format (so 'scan' output imports with 'import --format tsv'), or as\n"
      "JSONL in the jsonl format with --json.\n\nOptions:\n"
      "  --prefix P     only keys that start with P\n"
      "  --json         JSONL instead of tsv\n", 1 },
    { "import", cmd_import, OPT_FORMAT | OPT_BATCH, 0, 0,
      "import [--format jsonl|tsv|nul] [--batch N]",
      "Reads records from stdin and stores them, N records per atomic batch\n"
      "(a batch is also committed early once it holds 64 MB). A later record\n"
      "for the same key replaces an earlier one. A malformed record stops the\n"
      "import with an error naming its line (record for nul); the batches\n"
      "committed before it stay committed, and the message says how many\n"
      "records that is. Shows progress on a terminal and a summary on stderr.\n"
      "Creates the database when DIR is missing.\n\nOptions:\n"
      "  --format F     jsonl (default), tsv or nul\n"
      "  --batch N      records per batch, default 1000\n", 1 },
    { "export", cmd_export, OPT_FORMAT | OPT_PREFIX, 0, 0,
      "export [--format jsonl|tsv|nul] [--prefix P]",
      "Writes every live record to stdout in key order; 'import' of the output\n"
      "recreates the same records, and exporting again gives identical bytes.\n\nOptions:\n"
      "  --format F     jsonl (default), tsv or nul\n"
      "  --prefix P     only keys that start with P\n", 1 },
    { "compact", cmd_compact, 0, 0, 0, "compact",
      "Rewrites the live records into new segments and drops stale values and\n"
      "tombstones; writers wait meanwhile. Shows progress on a terminal and a\n"
      "summary (segments and bytes before and after) on stderr.\n", 0 },
    { "rebuild-index", cmd_rebuild, 0, 0, 0, "rebuild-index",
      "Discards the index, rebuilds it by replaying every segment and writes a\n"
      "fresh checkpoint. Shows progress on a terminal and a summary on stderr.\n", 0 },
    { "verify", cmd_verify, 0, 0, 0, "verify",
      "Reads every segment, checks every batch and record checksum, and compares\n"
      "a replay of the log with the index. Prints a report on stdout (one\n"
      "'name: number' line per counter, then 'result: ok' or 'result: PROBLEMS\n"
      "FOUND'); each problem is logged on stderr. Exits 4 when anything failed.\n"
      "Runs read-only, beside a writer.\n", 0 },
    { "stats", cmd_stats, OPT_JSON, 0, 0, "stats [--json]",
      "Prints the database counters, one 'name: value' line each, or with\n"
      "--json one JSON object on one line holding every field of s4kv_stats:\n"
      "keys, live_bytes, garbage_bytes, segment_bytes, segments, index_bytes,\n"
      "next_seq, generation, active_segment (sizes in bytes).\n\nOptions:\n"
      "  --json         one JSON object\n", 0 },
};

#define NCOMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(COMMANDS[i].name, name) == 0)
            return &COMMANDS[i];
    return NULL;
}

/* Matches argv[*i] against a long option "--name" (taking "--name=V" or the
 * next argument as its value) or a short "-x" ("-xV" or the next argument).
 * Returns 1 and sets *val when matched, 0 when not, -1 when the value is
 * missing (message printed). */
static int opt_value(int argc, char **argv, int *i, const char *shortname,
                     const char *longname, const char **val, const char *where)
{
    const char *a = argv[*i];
    size_t ln = longname ? strlen(longname) : 0;
    int match = 0;
    if (longname && strncmp(a, longname, ln) == 0 && (a[ln] == 0 || a[ln] == '=')) {
        if (a[ln] == '=') {
            *val = a + ln + 1;
            return 1;
        }
        match = 1;
    } else if (shortname && strncmp(a, shortname, 2) == 0) {
        if (a[2]) {
            *val = a + 2;
            return 1;
        }
        match = 1;
    }
    if (!match)
        return 0;
    if (*i + 1 >= argc) {
        msg("%s%soption '%s' needs a value", where ? where : "", where ? ": " : "", a);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

static int parse_batch(const char *s, unsigned long *out)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v == 0 || v > S4KV_MAX_BATCH_OPS)
        return -1;
    *out = v;
    return 0;
}

/* Parses the command's arguments. Returns -1 to go on, or an exit status
 * (help printed, or a usage error). */
static int parse_command_args(cli *c, const command *cmd, int argc, char **argv)
{
    int only_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        if (only_pos || a[0] != '-' || a[1] == 0) {
            c->pos[c->npos++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            print_help(stdout, cmd);
            return fflush(stdout) == 0 ? EX_OK : EX_ERR;
        }
        int r;
        if ((r = opt_value(argc, argv, &i, "-d", "--dir", &v, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
            c->dir = v;
        } else if ((cmd->opts & OPT_PREFIX) &&
                   (r = opt_value(argc, argv, &i, NULL, "--prefix", &v, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
            c->prefix = v;
        } else if ((cmd->opts & OPT_FORMAT) &&
                   (r = opt_value(argc, argv, &i, NULL, "--format", &v, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
            if (fmt_parse_name(v, &c->format) != 0) {
                msg("%s: unknown format '%s' (jsonl, tsv or nul)", cmd->name, v);
                return EX_USAGE;
            }
        } else if ((cmd->opts & OPT_BATCH) &&
                   (r = opt_value(argc, argv, &i, NULL, "--batch", &v, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
            if (parse_batch(v, &c->batch) != 0) {
                msg("%s: --batch wants a number from 1 to %u, not '%s'", cmd->name,
                    S4KV_MAX_BATCH_OPS, v);
                return EX_USAGE;
            }
        } else if ((cmd->opts & OPT_NUL0) && (strcmp(a, "-0") == 0 || strcmp(a, "--null") == 0)) {
            c->nul0 = 1;
        } else if ((cmd->opts & OPT_JSON) && strcmp(a, "--json") == 0) {
            c->json = 1;
        } else {
            msg("%s: unknown option '%s' (see 's4kv %s --help')", cmd->name, a, cmd->name);
            return EX_USAGE;
        }
    }
    if (c->npos < cmd->min_pos || (cmd->max_pos >= 0 && c->npos > cmd->max_pos)) {
        msg("%s: %s arguments; usage: s4kv [-d DIR] %s", cmd->name,
            c->npos < cmd->min_pos ? "missing" : "too many", cmd->usage);
        return EX_USAGE;
    }
    return -1;
}

static int run(int argc, char **argv, cli *c)
{
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i], *v;
        if (a[0] != '-')
            break;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            print_help(stdout, NULL);
            return fflush(stdout) == 0 ? EX_OK : EX_ERR;
        }
        if (strcmp(a, "--version") == 0) {
            printf("s4kv %s\n", S4KV_VERSION_STRING);
            return fflush(stdout) == 0 ? EX_OK : EX_ERR;
        }
        int r = opt_value(argc, argv, &i, "-d", "--dir", &v, NULL);
        if (r < 0)
            return EX_USAGE;
        if (r == 0) {
            msg("unknown option '%s' (see 's4kv --help')", a);
            return EX_USAGE;
        }
        c->dir = v;
    }
    if (i >= argc) {
        msg("no command given (see 's4kv --help')");
        return EX_USAGE;
    }
    const command *cmd = find_command(argv[i]);
    if (!cmd) {
        msg("unknown command '%s' (see 's4kv --help')", argv[i]);
        return EX_USAGE;
    }
    c->cmd = cmd->name;
    int st = parse_command_args(c, cmd, argc - i - 1, argv + i + 1);
    if (st >= 0)
        return st;
    if (!c->dir || !*c->dir) {
        msg("%s: the database directory is an empty string", cmd->name);
        return EX_USAGE;
    }
    return cmd->run(c);
}

int main(int argc, char **argv)
{
    /* A closed pipe shows up as EPIPE on write, handled (quietly) there. */
    signal(SIGPIPE, SIG_IGN);
    cli c;
    memset(&c, 0, sizeof c);
    const char *env = getenv("S4KV_DIR");
    c.dir = env && *env ? env : "./s4kv-data";
    c.format = FMT_JSONL;
    c.batch = IMPORT_BATCH_DEFAULT;
    c.tty = isatty(STDERR_FILENO);
    c.pos = calloc((size_t)argc + 1, sizeof *c.pos);
    if (!c.pos) {
        fputs("s4kv: out of memory\n", stderr);
        return EX_ERR;
    }
    g_cli = &c;
    int st = run(argc, argv, &c);
    free(c.pos);
    progress_clear(&c);
    /* stdout may still hold buffered output (a failed flush is an error;
     * a command that printed nothing does not care whether fd 1 is open) */
    if ((fflush(stdout) != 0 || ferror(stdout)) && st == EX_OK)
        st = out_error();
    return st;
}
