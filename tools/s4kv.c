/*
 * s4kv.c - the `s4kv` command-line program: argument parsing, one function
 * per command, progress and summaries on stderr, and the mapping of engine
 * errors to exit codes. The import/export codecs live in format.c.
 *
 * With --s3 (or $S4KV_S3) the same commands work against a database in
 * s3://bucket/prefix/ (sync/replica.c): reads open DIR when it holds a
 * database (segments missing there are read remotely) or S3 alone; writes
 * go to DIR first (downloading the remote database when DIR has none, so a
 * write never starts a new database over an existing one) and are uploaded
 * after; upload and download move the whole database.
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
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Exit statuses (a public contract: documented in the help text). */
enum {
    EX_OK = 0,
    EX_NOTFOUND = 1, /* get of an absent key */
    EX_USAGE = 2,    /* bad command line */
    EX_ERR = 3,      /* I/O or any other error, malformed import input, every S3
                        error including its configuration (URL, profile,
                        credentials: they come from the environment and files
                        as much as from the command line, and scripts test 3) */
    EX_CORRUPT = 4,  /* S4KV_ECORRUPT: a checksum or structure check failed */
    EX_LOCKED = 5,   /* S4KV_ELOCKED: another process holds the writer lock */
    EX_DAEMON = 100, /* internal, never an exit status: open_db met the lock
                        with c->via_daemon set (the command goes to the daemon) */
};

#define OUT_BUF_BYTES (1u << 20)
#define IMPORT_BATCH_DEFAULT 1000ul
/* A batch is also committed early once it holds this many bytes, so that a
 * --batch of large values stays far below S4KV_MAX_BATCH_BYTES. */
#define IMPORT_BATCH_BYTES (64u << 20)
/* --parallel: concurrent S3 transfers. */
#define PARALLEL_MAX 256

/* Which options a command accepts (besides -d/--dir and -h/--help). */
enum {
    OPT_PREFIX = 1 << 0,
    OPT_NUL0 = 1 << 1,
    OPT_JSON = 1 << 2,
    OPT_FORMAT = 1 << 3,
    OPT_BATCH = 1 << 4,
    OPT_SYNC = 1 << 5, /* the sync daemon's options */
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
    /* S3 (global options, also accepted after the command) */
    const char *s3;       /* --s3 URL, else $S4KV_S3; NULL = local only */
    const char *endpoint; /* --endpoint */
    const char *profile;  /* --profile */
    int insecure_tls;     /* --no-verify-tls */
    int64_t retention_s;  /* --retention; -1 = until the next compaction */
    int parallel;         /* --parallel; 0 = the library's default */
    s4kv_s3_options s3o;  /* built from the above; outlives every handle */
    const char *label;    /* what messages call the database: DIR, or the S3
                             URL when it was opened from S3 alone */
    /* sync (the daemon) */
    uint32_t interval_ms, seal_age_ms; /* 0 = the library's default */
    double compact_ratio; /* -1 = the library's default */
    const char *listen;   /* --listen; "none" = no HTTP server */
    const char *token;    /* --token, else $S4KV_SYNC_TOKEN */
    int insecure;         /* --insecure */
    const char *log_path; /* --log FILE; NULL = stderr */
    /* a read-write open that meets the lock returns EX_DAEMON instead of
       failing, with the engine's message in lock_err (put, delete) */
    int via_daemon;
    char lock_err[512];
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
    "     an empty or oversized key or value given on the command line, upload\n"
    "     or download without --s3 (or $S4KV_S3), a bad --retention or --parallel\n"
    "  3  I/O or other error: malformed import input, no database at DIR for a\n"
    "     read-only command, a failed write to stdout (a closed pipe, EPIPE,\n"
    "     exits 3 without a message); and every S3 error: no database under the\n"
    "     prefix, a prefix holding a different database, a request that failed\n"
    "     after its retries (the message names the operation, the object and\n"
    "     the HTTP status), and the S3 configuration: a malformed s3:// URL or\n"
    "     endpoint, an unknown profile, missing credentials (the message says\n"
    "     what to set)\n"
    "  4  corruption detected: a checksum or structure check failed (verify\n"
    "     found problems, get met a damaged record, a downloaded object failed\n"
    "     its checks)\n"
    "  5  the database is locked by another writer\n"
    "Every error is one line on stderr starting with \"s4kv: \".\n";

static const char HELP_GLOBAL[] =
    "usage: s4kv [-d DIR] [--s3 s3://BUCKET/PREFIX/] COMMAND [ARGS...]\n"
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
    "  upload                            send DIR's database to S3 (needs --s3)\n"
    "  download                          fetch the S3 database into DIR (needs --s3)\n"
    "  sync [--interval D] [--listen A]  run the sync daemon: keep S3 current, compact,\n"
    "                                    serve HTTP (needs --s3; 's4kv sync --help')\n"
    "\n"
    "Options:\n"
    "  -d, --dir DIR  the database directory (default: $S4KV_DIR, else\n"
    "                 ./s4kv-data); also accepted after the command\n"
    "  --s3 URL       the database in S3 (default: $S4KV_S3); see \"S3\" below\n"
    "  -h, --help     this help; 's4kv COMMAND --help' for one command\n"
    "  --version      print the version\n"
    "  --             ends the options (for keys that start with '-')\n"
    "\n"
    "Read-only commands (get, keys, scan, export, verify, stats) never create a\n"
    "database and run beside a writer; put, delete and import create DIR when\n"
    "it is missing; compact and rebuild-index need an existing database.\n"
    "\n"
    "With a sync daemon running on DIR ('s4kv sync', which holds the writer\n"
    "lock and writes its address to DIR/SYNC_ADDR), put, get, delete and keys\n"
    "talk to it over HTTP on loopback instead of failing on the lock: put and\n"
    "delete when the read-write open finds the lock taken and SYNC_ADDR present\n"
    "(delete KEY... is one atomic POST /v1/batch); get and keys whenever\n"
    "SYNC_ADDR names a daemon that accepts a connection, so they read its newest\n"
    "state (a SYNC_ADDR nobody answers on is ignored). The output and exit\n"
    "statuses are the same as locally; a refusal names the daemon's address and\n"
    "HTTP status (exit 3; 2 for a 400). The token, when the daemon has one:\n"
    "$S4KV_SYNC_TOKEN, else DIR/SYNC_TOKEN (mode 0600, written by the daemon).\n"
    "scan, export, verify and stats read the files (a read-only open works\n"
    "beside the daemon).\n"
    "\n"
    "S3 (these options are also accepted after the command):\n"
    "  --s3 URL              s3://BUCKET/PREFIX/ holding the database (a missing\n"
    "                        trailing '/' is added); default $S4KV_S3\n"
    "  --endpoint URL        S3 endpoint, e.g. http://127.0.0.1:4568; overrides\n"
    "                        AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL. A custom\n"
    "                        endpoint is addressed path-style\n"
    "  --profile NAME        AWS profile in ~/.aws/credentials or ~/.aws/config;\n"
    "                        overrides AWS_PROFILE, and its keys are used instead\n"
    "                        of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n"
    "  --no-verify-tls       do not verify the endpoint's TLS certificate (the\n"
    "                        only ways to turn verification off are this and\n"
    "                        S4KV_S3_INSECURE_TLS=1)\n"
    "  --retention DURATION  N[s|m|h|d|w] (a plain N is seconds): an object an\n"
    "                        upload dropped from the database (compaction) is\n"
    "                        deleted by the first later upload at least DURATION\n"
    "                        after it was dropped. Default: by the upload of the\n"
    "                        next compaction, so readers of the previous\n"
    "                        generation keep working until then\n"
    "  --parallel N          concurrent transfers, 1 to 256 (default 8)\n"
    "Configuration is read the way the AWS CLI reads it: AWS_ACCESS_KEY_ID,\n"
    "AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; else the profile\n"
    "(AWS_PROFILE, else \"default\") in ~/.aws/credentials and ~/.aws/config\n"
    "(paths from AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE);\n"
    "AWS_REGION or AWS_DEFAULT_REGION (else the profile's region, else\n"
    "us-east-1); AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (else the profile's\n"
    "endpoint_url, else AWS for the region); AWS_CA_BUNDLE (a CA file);\n"
    "AWS_MAX_ATTEMPTS (attempts per request, default 3). Secrets are never\n"
    "printed.\n"
    "With --s3:\n"
    "  get, keys, scan, export, verify, stats open DIR when it holds a database\n"
    "    (segments missing there are read from S3), else S3 alone, with no\n"
    "    local files: a get is one ranged GET; keys, scan and export fetch\n"
    "    whole segments. stats adds the request counts.\n"
    "  put, delete, import write to DIR, then upload. When DIR holds no\n"
    "    database but S3 does, it is downloaded first (a write never starts a\n"
    "    new database over an existing one).\n"
    "  compact compacts DIR (downloading first likewise), then uploads; objects\n"
    "    the compaction dropped are deleted later, per --retention.\n"
    "  rebuild-index rebuilds DIR's index and uploads; without a database in\n"
    "    DIR it rebuilds the S3 database's index in memory and writes nothing.\n"
    "  upload and download move the database between DIR and S3.\n"
    "A prefix without a MANIFEST holds no database: reads and download fail\n"
    "(exit 3), while put, delete, import and upload start one there.\n"
    "\n";

/* The S3 lines of every command's --help. */
static const char HELP_S3_SHORT[] =
    "  --s3 URL       the database in S3, s3://BUCKET/PREFIX/ (default:\n"
    "                 $S4KV_S3); --endpoint, --profile, --no-verify-tls,\n"
    "                 --retention, --parallel and the AWS environment: see\n"
    "                 's4kv --help'\n";

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
          "                 ./s4kv-data)\n", f);
    fputs(HELP_S3_SHORT, f);
    fputs("  -h, --help     this help\n\n", f);
    if (cmd->formats_help) {
        fputs(HELP_FORMATS, f);
        fputc('\n', f);
    }
    fputs(HELP_EXIT, f);
}

/* ---- opening ------------------------------------------------------------ */

/* Whether DIR holds a database (its MANIFEST, the commit point, exists). */
static int local_db_exists(const cli *c)
{
    char path[PATH_MAX];
    struct stat st;
    if ((size_t)snprintf(path, sizeof path, "%s/MANIFEST", c->dir) >= sizeof path)
        return 0;
    return stat(path, &st) == 0;
}

/* Fills c->s3o from the S3 options; progress: report transfers on a TTY. */
static s4kv_s3_options *s3_options(cli *c, int progress)
{
    s4kv_s3_options *o = &c->s3o;
    s4kv_s3_options_init(o);
    o->url = c->s3;
    o->profile = c->profile;
    o->endpoint = c->endpoint;
    o->insecure_tls = c->insecure_tls;
    o->retention_s = c->retention_s;
    if (c->parallel > 0)
        o->max_parallel = c->parallel;
    o->log = log_cb;
    o->log_ctx = c;
    if (progress && c->tty) {
        o->progress = progress_cb;
        o->progress_ctx = c;
    }
    return o;
}

static const char *plural(uint64_t n)
{
    return n == 1 ? "" : "s";
}

static double mb_per_s(uint64_t bytes, double secs)
{
    return secs > 0 ? (double)bytes / 1e6 / secs : 0;
}

/* The summary line of an upload on stderr. */
static void upload_summary(cli *c, const s4kv_s3_report *r, double secs)
{
    char a[32];
    if (!r->published)
        fprintf(stderr, "nothing to upload: %s is up to date at generation %llu "
                "(%llu object%s already there); %llu request%s, %llu retr%s; %.2f s\n",
                c->s3, (unsigned long long)r->generation,
                (unsigned long long)r->objects_skipped, plural(r->objects_skipped),
                (unsigned long long)r->requests, plural(r->requests),
                (unsigned long long)r->retries, r->retries == 1 ? "y" : "ies", secs);
    else
        fprintf(stderr, "uploaded %llu object%s (%s) to %s, %llu skipped, %llu deleted; "
                "published generation %llu; %llu request%s, %llu retr%s; %.2f s, "
                "%.1f MB/s\n",
                (unsigned long long)r->objects_uploaded, plural(r->objects_uploaded),
                hsize(r->bytes_uploaded, a), c->s3, (unsigned long long)r->objects_skipped,
                (unsigned long long)r->objects_deleted, (unsigned long long)r->generation,
                (unsigned long long)r->requests, plural(r->requests),
                (unsigned long long)r->retries, r->retries == 1 ? "y" : "ies", secs,
                mb_per_s(r->bytes_uploaded, secs));
}

/* The summary line of a download on stderr. */
static void download_summary(cli *c, const s4kv_s3_report *r, double secs)
{
    char a[32];
    if (!r->objects_downloaded)
        fprintf(stderr, "nothing to download: %s already holds generation %llu of %s "
                "(%llu object%s checked); %llu request%s, %llu retr%s; %.2f s\n",
                c->dir, (unsigned long long)r->generation, c->s3,
                (unsigned long long)r->objects_skipped, plural(r->objects_skipped),
                (unsigned long long)r->requests, plural(r->requests),
                (unsigned long long)r->retries, r->retries == 1 ? "y" : "ies", secs);
    else
        fprintf(stderr, "downloaded %llu object%s (%s) from %s into %s, %llu skipped "
                "(already there); generation %llu; %llu request%s, %llu retr%s; %.2f s, "
                "%.1f MB/s\n",
                (unsigned long long)r->objects_downloaded, plural(r->objects_downloaded),
                hsize(r->bytes_downloaded, a), c->s3, c->dir,
                (unsigned long long)r->objects_skipped, (unsigned long long)r->generation,
                (unsigned long long)r->requests, plural(r->requests),
                (unsigned long long)r->retries, r->retries == 1 ? "y" : "ies", secs,
                mb_per_s(r->bytes_downloaded, secs));
}

/* Opens the database of --s3 read-only: through DIR when it holds one
 * (segments missing there are read remotely), else from S3 alone. */
static int open_s3_db(cli *c, int progress, s4kv_db **db)
{
    int local = local_db_exists(c);
    s4kv_options opt;
    s4kv_options_init(&opt);
    opt.log = log_cb;
    opt.log_ctx = c;
    if (progress && c->tty) {
        opt.progress = progress_cb;
        opt.progress_ctx = c;
    }
    char err[512] = "";
    int rc = s4kv_open_s3(local ? c->dir : NULL, &opt, s3_options(c, 0), db, err, sizeof err);
    if (rc == 0) {
        if (!local)
            c->label = c->s3;
        return EX_OK;
    }
    /* A remote-only open that finds no MANIFEST: the engine's message names
     * the placeholder directory s4kv_open_s3 passes, not the URL. */
    if (rc == S4KV_ENOENT && !local && strstr(err, "no database at"))
        msg("no database at %s (no MANIFEST under the prefix)", c->s3);
    else if (rc == S4KV_ENOENT && strstr(err, "no database at"))
        msg("%s", err);
    else
        msg("cannot open the database at %s: %s", local ? c->dir : c->s3, detail(err, rc));
    return exit_for(rc);
}

/* Before a write with --s3: when DIR holds no database but the S3 prefix
 * does, downloads it into DIR, so that the upload after the write continues
 * that database instead of starting a new one over it. must_exist: the
 * command needs a database (compact) and neither place has one. */
static int s3_prepare_write(cli *c, int must_exist)
{
    if (!c->s3 || local_db_exists(c))
        return EX_OK;
    s4kv_s3_report rep;
    memset(&rep, 0, sizeof rep);
    char err[512] = "";
    double t0 = now();
    int rc = s4kv_download(c->dir, s3_options(c, 1), &rep, err, sizeof err);
    progress_clear(c);
    if (rc == S4KV_ENOENT && strstr(err, "no database at")) {
        if (!must_exist)
            return EX_OK; /* a new database, uploaded after the write */
        msg("no database at %s or at %s", c->dir, c->s3);
        return EX_ERR;
    }
    if (rc) {
        msg("%s: downloading %s into %s first: %s", c->cmd, c->s3, c->dir, detail(err, rc));
        return exit_for(rc);
    }
    fprintf(stderr, "%s holds no database: ", c->dir);
    download_summary(c, &rep, now() - t0);
    return EX_OK;
}

/* After a write with --s3: uploads what S3 lacks, filling *rep and *secs
 * for upload_summary (callers that print a summary print it after their
 * own). Without --s3 does nothing (rep->requests stays 0). */
static int s3_upload_after(cli *c, s4kv_db *db, s4kv_s3_report *rep, double *secs)
{
    memset(rep, 0, sizeof *rep);
    *secs = 0;
    if (!c->s3)
        return EX_OK;
    char err[512] = "";
    double t0 = now();
    int rc = s4kv_upload(db, s3_options(c, 1), rep, err, sizeof err);
    *secs = now() - t0;
    progress_clear(c);
    if (rc == S4KV_EEXIST) /* the message says what to do */
        msg("%s: upload: %s", c->cmd, detail(err, rc));
    else if (rc)
        msg("%s: upload: %s (the %s is committed in %s; 's4kv upload' sends it)", c->cmd,
            detail(err, rc), strcmp(c->cmd, "compact") == 0 ? "compaction" : "change",
            c->dir);
    return exit_for(rc);
}

/* Opens c->dir (with --s3 and read-only: see open_s3_db). writable:
 * read-write (else read-only); create: create the database when missing;
 * progress: report progress on a TTY. Returns an exit status; on EX_OK *db
 * is open. */
static int open_db(cli *c, int writable, int create, int progress, s4kv_db **db)
{
    if (c->s3 && !writable)
        return open_s3_db(c, progress, db);
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
    else if (rc == S4KV_ELOCKED && writable && c->via_daemon) {
        snprintf(c->lock_err, sizeof c->lock_err, "%s", detail(err, rc));
        return EX_DAEMON;
    } else if (rc == S4KV_ELOCKED)
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
        msg("closing the database at %s: %s", c->label, s4kv_strerror(rc));
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

/* ---- through a running sync daemon --------------------------------------- */

/* While `s4kv sync` runs on DIR it holds the writer lock and records its
 * HTTP address in DIR/SYNC_ADDR. Then:
 *   put, delete   a read-write open fails with S4KV_ELOCKED; when SYNC_ADDR
 *                 exists the command goes to the daemon instead (put: PUT
 *                 /v1/kv/KEY; delete: one POST /v1/batch, so several keys
 *                 stay one atomic batch).
 *   get, keys     go to the daemon when SYNC_ADDR names one that accepts a
 *                 connection (GET /v1/kv/KEY; GET /v1/keys?prefix=P): the
 *                 daemon answers from its open index, so a get costs one
 *                 loopback round trip instead of opening the database
 *                 (loading the checkpoint and replaying the log tail), and
 *                 reads see the daemon's newest state, the writes the
 *                 previous commands made through it included. A SYNC_ADDR
 *                 nobody answers on (a daemon killed -9) is ignored and
 *                 the files are read as before.
 *   scan, export, verify, stats and the other read-only commands keep
 *                 reading the files with a read-only open (a snapshot as
 *                 of the open), which works beside the daemon's lock.
 * The client is a small blocking HTTP/1.1 client over a plain socket (one
 * request per connection, "Connection: close"); the daemon always answers
 * with Content-Length. The token, when the daemon wants one: $S4KV_SYNC_TOKEN,
 * else DIR/SYNC_TOKEN (which `s4kv sync` writes, mode 0600, while it runs). */

#define DAEMON_TIMEOUT_S 300

typedef struct daemon_link {
    char addr[128];       /* from SYNC_ADDR: "127.0.0.1:7070", "[::1]:7070" */
    char *token;          /* NULL = none */
    const char *token_src; /* "$S4KV_SYNC_TOKEN" or "DIR/SYNC_TOKEN" */
    int fd;               /* a connection, or -1 */
} daemon_link;

typedef struct http_reply {
    int status;
    char *body;           /* malloc'd, NUL-terminated */
    size_t blen;
} http_reply;

/* Reads a small file in DIR (its first line, without the newline) into buf.
 * 1 = read, 0 = absent or unreadable. */
static int dir_file_line(const cli *c, const char *name, char *buf, size_t cap)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", c->dir, name) >= sizeof path)
        return 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    if (!ok)
        return 0;
    buf[strcspn(buf, "\r\n")] = 0;
    return buf[0] != 0;
}

/* Connects to l->addr. 0, or -1 with errno set. */
static int daemon_connect(daemon_link *l)
{
    char host[128];
    const char *colon = strrchr(l->addr, ':');
    if (!colon || colon == l->addr || (size_t)(colon - l->addr) >= sizeof host) {
        errno = EINVAL;
        return -1;
    }
    const char *h = l->addr;
    size_t hl = (size_t)(colon - l->addr);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = 0;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res) {
        errno = EINVAL;
        return -1;
    }
    int fd = -1, e = ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        errno = e;
        return -1;
    }
    struct timeval tv = {DAEMON_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    l->fd = fd;
    return 0;
}

/* The token for l: $S4KV_SYNC_TOKEN, else DIR/SYNC_TOKEN, else none. */
static void daemon_token(const cli *c, daemon_link *l)
{
    const char *env = getenv("S4KV_SYNC_TOKEN");
    char buf[1024];
    if (env && *env) {
        l->token = strdup(env);
        l->token_src = "$S4KV_SYNC_TOKEN";
    } else if (dir_file_line(c, "SYNC_TOKEN", buf, sizeof buf)) {
        l->token = strdup(buf);
        l->token_src = "DIR/SYNC_TOKEN";
    }
}

static void daemon_link_free(daemon_link *l)
{
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    free(l->token);
    l->token = NULL;
}

/* Whether DIR/SYNC_ADDR names a daemon that accepts a connection; on 1, l
 * is connected (free it with daemon_link_free). */
static int daemon_probe(const cli *c, daemon_link *l)
{
    memset(l, 0, sizeof *l);
    l->fd = -1;
    if (!dir_file_line(c, "SYNC_ADDR", l->addr, sizeof l->addr))
        return 0;
    if (daemon_connect(l) != 0)
        return 0;
    daemon_token(c, l);
    return 1;
}

/* Appends s[0..n) percent-encoded (all but unreserved characters). */
static int pct_append(char **buf, size_t *len, size_t *cap, const void *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    if (*len + 3 * n + 1 > *cap) {
        size_t nc = *len + 3 * n + 1 + 256;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = nc;
    }
    const unsigned char *p = s;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = p[i];
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            (*buf)[(*len)++] = (char)ch;
        } else {
            (*buf)[(*len)++] = '%';
            (*buf)[(*len)++] = hex[ch >> 4];
            (*buf)[(*len)++] = hex[ch & 15];
        }
    }
    (*buf)[*len] = 0;
    return 0;
}

/* base + the key, percent-encoded (malloc'd; NULL out of memory). */
static char *kv_path(const char *base, const void *key, size_t klen)
{
    size_t len = strlen(base), cap = len + 1;
    char *p = malloc(cap);
    if (!p)
        return NULL;
    memcpy(p, base, len + 1);
    if (pct_append(&p, &len, &cap, key, klen) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One request on l's connection (connecting first when it has none), the
 * whole reply read. 0, or -1 with a message in err (the connection failed,
 * timed out, or the reply was malformed or cut short). The connection is
 * used up either way. */
static int daemon_request(daemon_link *l, const char *method, const char *path,
                          const void *body, size_t blen, http_reply *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    if (l->fd < 0 && daemon_connect(l) != 0) {
        snprintf(err, errlen, "cannot connect: %s", strerror(errno));
        return -1;
    }
    char head[2048];
    /* The path may be long (a 64 KiB key encodes to 192 KiB): sent apart. */
    size_t plen = strlen(path);
    int fd = l->fd;
    l->fd = -1;
    int sent = send_all(fd, method, strlen(method)) == 0 && send_all(fd, " ", 1) == 0 &&
               send_all(fd, path, plen) == 0;
    int hl = snprintf(head, sizeof head,
                  " HTTP/1.1\r\nHost: %s\r\nUser-Agent: s4kv/%s\r\nContent-Length: %zu\r\n"
                  "Connection: close\r\n", l->addr, S4KV_VERSION_STRING, blen);
    sent = sent && send_all(fd, head, (size_t)hl) == 0;
    if (sent && l->token) {
        sent = send_all(fd, "Authorization: Bearer ", 22) == 0 &&
               send_all(fd, l->token, strlen(l->token)) == 0 && send_all(fd, "\r\n", 2) == 0;
    }
    sent = sent && send_all(fd, "\r\n", 2) == 0 && (blen == 0 || send_all(fd, body, blen) == 0);
    int send_errno = sent ? 0 : errno;
    /* Read the reply even when sending failed: the daemon may have answered
     * (413) and closed before taking the whole body. */
    size_t cap = 16384, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                close(fd);
                snprintf(err, errlen, "out of memory reading the reply");
                return -1;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t g = recv(fd, buf + n, cap - n - 1, 0);
        if (g < 0 && errno == EINTR)
            continue;
        if (g < 0) {
            int e = errno;
            free(buf);
            close(fd);
            if (e == EAGAIN || e == EWOULDBLOCK)
                snprintf(err, errlen, "no reply within %d s", DAEMON_TIMEOUT_S);
            else if (send_errno)
                snprintf(err, errlen, "sending the request: %s", strerror(send_errno));
            else
                snprintf(err, errlen, "reading the reply: %s", strerror(e));
            return -1;
        }
        if (g == 0)
            break;
        n += (size_t)g;
    }
    close(fd);
    buf[n] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    int st = 0;
    if (n == 0 || !end || sscanf(buf, "HTTP/1.%*d %d", &st) != 1 || st < 100 || st > 599) {
        free(buf);
        if (n == 0 && send_errno)
            snprintf(err, errlen, "sending the request: %s", strerror(send_errno));
        else
            snprintf(err, errlen, n ? "a malformed reply" : "the connection closed without a reply");
        return -1;
    }
    *end = 0;
    const char *cl = strcasestr(buf, "\r\nContent-Length:");
    size_t off = (size_t)(end + 4 - buf), want = n - off;
    if (cl) {
        unsigned long long v = strtoull(cl + 17, NULL, 10);
        if (v > n - off) {
            free(buf);
            snprintf(err, errlen, "the reply was cut short (%zu of %llu body bytes)", n - off, v);
            return -1;
        }
        want = (size_t)v;
    }
    memmove(buf, buf + off, want);
    buf[want] = 0;
    r->status = st;
    r->body = buf;
    r->blen = want;
    return 0;
}

/* The reason phrase of the statuses the daemon sends. */
static const char *http_reason(int st)
{
    switch (st) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return "";
    }
}

/* Reports a reply other than the expected one; returns the exit status
 * (400: EX_USAGE, as the engine's EINVAL locally; else EX_ERR). what names
 * the operation ("put 'k'"). */
static int daemon_status_error(const cli *c, const daemon_link *l, const char *what,
                               const http_reply *r)
{
    char text[512];
    size_t n = r->blen < sizeof text - 1 ? r->blen : sizeof text - 1;
    memcpy(text, r->body ? r->body : "", n);
    text[n] = 0;
    text[strcspn(text, "\r\n")] = 0;
    if (r->status == 401) {
        if (l->token)
            msg("%s: the sync daemon at %s (%s/SYNC_ADDR) answered %d %s: the token from %s "
                "was refused", what, l->addr, c->dir, r->status, http_reason(r->status),
                l->token_src);
        else
            msg("%s: the sync daemon at %s (%s/SYNC_ADDR) answered %d %s: it needs a token; "
                "set $S4KV_SYNC_TOKEN (%s/SYNC_TOKEN, which the daemon writes, is missing)",
                what, l->addr, c->dir, r->status, http_reason(r->status), c->dir);
        return EX_ERR;
    }
    msg("%s: the sync daemon at %s (%s/SYNC_ADDR) answered %d %s%s%s", what, l->addr, c->dir,
        r->status, http_reason(r->status), text[0] ? ": " : "", text);
    return r->status == 400 ? EX_USAGE : EX_ERR;
}

/* A request that got no reply: which daemon, and why. */
static int daemon_io_error(const cli *c, const daemon_link *l, const char *what, const char *err)
{
    msg("%s: the sync daemon at %s (%s/SYNC_ADDR): %s", what, l->addr, c->dir, err);
    return EX_ERR;
}

/* After a read-write open failed with S4KV_ELOCKED (lock_err: the engine's
 * message): 1 with l set up when DIR/SYNC_ADDR names a daemon that accepts
 * a connection, else 0 after printing the lock error (exit EX_LOCKED). */
static int daemon_after_lock(const cli *c, const char *lock_err, daemon_link *l)
{
    if (daemon_probe(c, l))
        return 1;
    if (l->addr[0])
        msg("database %s is locked by another writer (%s); %s/SYNC_ADDR names %s, which does "
            "not accept connections (%s)", c->dir, lock_err, c->dir, l->addr, strerror(errno));
    else
        msg("database %s is locked by another writer (%s)", c->dir, lock_err);
    return 0;
}

/* The quoted key (q), "OP 'key'" for messages (what) and the request path
 * /v1/kv/KEY (malloc'd; NULL after a message when out of memory). */
static char *daemon_kv_target(const char *op, const char *key, char *q, size_t qcap,
                              char *what, size_t wcap)
{
    fmt_quote(q, qcap, key, strlen(key));
    snprintf(what, wcap, "%s %s", op, q);
    char *path = kv_path("/v1/kv/", key, strlen(key));
    if (!path)
        msg("%s: out of memory", op);
    return path;
}

static int daemon_put(cli *c, daemon_link *l, const char *key, const void *val, size_t vlen)
{
    char q[256], err[512], what[300];
    char *path = daemon_kv_target("put", key, q, sizeof q, what, sizeof what);
    if (!path)
        return EX_ERR;
    http_reply r;
    int st = EX_OK;
    if (daemon_request(l, "PUT", path, val, vlen, &r, err, sizeof err) != 0)
        st = daemon_io_error(c, l, what, err);
    else if (r.status != 204 && r.status != 200)
        st = daemon_status_error(c, l, what, &r);
    free(r.body);
    free(path);
    return st;
}

static int daemon_get(cli *c, daemon_link *l, const char *key)
{
    char q[256], err[512], what[300];
    char *path = daemon_kv_target("get", key, q, sizeof q, what, sizeof what);
    if (!path)
        return EX_ERR;
    http_reply r;
    int st = EX_OK;
    if (daemon_request(l, "GET", path, NULL, 0, &r, err, sizeof err) != 0) {
        st = daemon_io_error(c, l, what, err);
    } else if (r.status == 404) {
        msg("key %s not found", q);
        st = EX_NOTFOUND;
    } else if (r.status != 200) {
        st = daemon_status_error(c, l, what, &r);
    } else if (r.blen && fwrite(r.body, 1, r.blen, stdout) != r.blen) {
        st = out_error();
    } else {
        st = out_flush();
    }
    free(r.body);
    free(path);
    return st;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* delete KEY...: one POST /v1/batch of deletes (the framing in sync/http.c). */
static int daemon_delete(cli *c, daemon_link *l)
{
    size_t n = 0;
    for (int i = 0; i < c->npos; i++)
        n += 9 + strlen(c->pos[i]);
    unsigned char *body = malloc(n ? n : 1), *p = body;
    if (!body) {
        msg("delete: out of memory");
        return EX_ERR;
    }
    for (int i = 0; i < c->npos; i++) {
        size_t kl = strlen(c->pos[i]);
        *p = 2;
        put_le32(p + 1, (uint32_t)kl);
        put_le32(p + 5, 0);
        memcpy(p + 9, c->pos[i], kl);
        p += 9 + kl;
    }
    char q[256], err[512], what[320];
    snprintf(what, sizeof what, "delete %s%s",
             fmt_quote(q, sizeof q, c->pos[0], strlen(c->pos[0])),
             c->npos > 1 ? " and the other keys" : "");
    http_reply r;
    int st = EX_OK;
    if (daemon_request(l, "POST", "/v1/batch", body, n, &r, err, sizeof err) != 0)
        st = daemon_io_error(c, l, what, err);
    else if (r.status != 204 && r.status != 200)
        st = daemon_status_error(c, l, what, &r);
    free(r.body);
    free(body);
    return st;
}

/* Writes one key as `keys` does: a tsv-escaped line, or raw and
 * NUL-terminated (kind OUT_KEY_NUL). 0 or a FMT_E* code (message printed
 * for FMT_EDATA). */
static int write_key(int nul0, const void *key, size_t klen)
{
    char q[256];
    if (!nul0) {
        int w = fmt_write_tsv_field(stdout, key, klen);
        if (w == 0 && putchar('\n') == EOF)
            w = FMT_EIO;
        return w;
    }
    if (memchr(key, 0, klen)) {
        msg("keys: key %s holds a NUL byte, which -0 cannot carry "
            "(use keys without -0, or export --format jsonl)",
            fmt_quote(q, sizeof q, key, klen));
        return FMT_EDATA;
    }
    if (fwrite(key, 1, klen, stdout) != klen || putchar('\0') == EOF)
        return FMT_EIO;
    return 0;
}

static int hexdig(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* keys [--prefix P] [-0]: GET /v1/keys?prefix=P, one percent-encoded key per
 * line, decoded and written as locally. */
static int daemon_keys(cli *c, daemon_link *l)
{
    const char *prefix = c->prefix ? c->prefix : "";
    char err[512];
    char *path = kv_path("/v1/keys?prefix=", prefix, strlen(prefix));
    if (!path) {
        msg("keys: out of memory");
        return EX_ERR;
    }
    http_reply r;
    int st = EX_OK;
    if (daemon_request(l, "GET", path, NULL, 0, &r, err, sizeof err) != 0) {
        st = daemon_io_error(c, l, "keys", err);
        free(path);
        return st;
    }
    free(path);
    if (r.status != 200) {
        st = daemon_status_error(c, l, "keys", &r);
        free(r.body);
        return st;
    }
    setvbuf(stdout, NULL, _IOFBF, OUT_BUF_BYTES);
    char *line = r.body, *end = r.body + r.blen;
    while (line < end) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl) {
            msg("keys: the sync daemon at %s sent a key list without its last newline", l->addr);
            st = EX_ERR;
            break;
        }
        /* Decode in place (the encoding is never shorter). */
        size_t k = 0;
        int bad = 0;
        for (char *s = line; s < nl; s++) {
            if (*s != '%') {
                line[k++] = *s;
                continue;
            }
            int a = s + 1 < nl ? hexdig((unsigned char)s[1]) : -1;
            int b = s + 2 < nl ? hexdig((unsigned char)s[2]) : -1;
            if (a < 0 || b < 0) {
                bad = 1;
                break;
            }
            line[k++] = (char)(a * 16 + b);
            s += 2;
        }
        if (bad) {
            msg("keys: the sync daemon at %s sent a malformed key", l->addr);
            st = EX_ERR;
            break;
        }
        int w = write_key(c->nul0, line, k);
        if (w) {
            st = w == FMT_EIO ? out_error() : EX_ERR;
            break;
        }
        line = nl + 1;
    }
    free(r.body);
    if (st == EX_OK)
        st = out_flush();
    return st;
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
    c->via_daemon = 1;
    if ((st = s3_prepare_write(c, 0)) || (st = open_db(c, 1, 1, 0, &db))) {
        if (st == EX_DAEMON) {
            daemon_link l;
            st = daemon_after_lock(c, c->lock_err, &l) ? daemon_put(c, &l, key, val, vlen)
                                                      : EX_LOCKED;
            daemon_link_free(&l);
        }
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
    s4kv_s3_report rep;
    double secs;
    if (st == EX_OK)
        st = s3_upload_after(c, db, &rep, &secs);
    return close_db(c, db, st);
}

static int cmd_get(cli *c)
{
    const char *key = c->pos[0];
    int st = check_arg_key(c, key);
    if (st)
        return st;
    daemon_link l;
    if (daemon_probe(c, &l)) {
        st = daemon_get(c, &l, key);
        daemon_link_free(&l);
        return st;
    }
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
    c->via_daemon = 1;
    if ((st = s3_prepare_write(c, 0)) || (st = open_db(c, 1, 1, 0, &db))) {
        s4kv_batch_free(b);
        if (st == EX_DAEMON) {
            daemon_link l;
            st = daemon_after_lock(c, c->lock_err, &l) ? daemon_delete(c, &l) : EX_LOCKED;
            daemon_link_free(&l);
        }
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
    s4kv_s3_report rep;
    double secs;
    if (st == EX_OK)
        st = s3_upload_after(c, db, &rep, &secs);
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
    char err[512] = "";
    s4kv_iter *it = NULL;
    int rc = s4kv_iter_new(db, prefix, strlen(prefix), flags, &it, err, sizeof err);
    if (rc) {
        msg("%s: cannot iterate %s: %s", c->cmd, c->label, detail(err, rc));
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
            msg("%s: reading %s: %s", c->cmd, c->label, detail(err, rc));
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
        case OUT_KEY_NUL:
            w = write_key(kind == OUT_KEY_NUL, key, klen);
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
    daemon_link l;
    if (daemon_probe(c, &l)) {
        int st = daemon_keys(c, &l);
        daemon_link_free(&l);
        return st;
    }
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
    int st = s3_prepare_write(c, 0);
    if (st || (st = open_db(c, 1, 1, 0, &db)))
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
    double t1 = now(), secs;
    s4kv_s3_report rep;
    if (st == EX_OK)
        st = s3_upload_after(c, db, &rep, &secs);
    st = close_db(c, db, st);
    if (st == EX_OK) {
        char a[32];
        progress_clear(c);
        fprintf(stderr, "imported %llu record%s (%s) in %.2f s\n",
                (unsigned long long)committed, committed == 1 ? "" : "s",
                hsize(in_bytes, a), t1 - t0);
        if (c->s3)
            upload_summary(c, &rep, secs);
    }
    return st;
}

/* ---- maintenance -------------------------------------------------------- */

static int cmd_compact(cli *c)
{
    s4kv_db *db;
    int st = s3_prepare_write(c, 1);
    if (st || (st = open_db(c, 1, 0, 1, &db)))
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
    double t1 = now(), secs;
    s4kv_s3_report rep;
    st = s3_upload_after(c, db, &rep, &secs);
    st = close_db(c, db, st);
    if (st == EX_OK) {
        char a[32], b[32], g[32];
        uint64_t freed = before.segment_bytes > after.segment_bytes
                             ? before.segment_bytes - after.segment_bytes : 0;
        fprintf(stderr,
                "compacted %s in %.2f s: %llu segment%s (%s) -> %llu segment%s (%s), "
                "%s reclaimed, %llu keys\n",
                c->dir, t1 - t0, (unsigned long long)before.segments,
                before.segments == 1 ? "" : "s", hsize(before.segment_bytes, a),
                (unsigned long long)after.segments, after.segments == 1 ? "" : "s",
                hsize(after.segment_bytes, b), hsize(freed, g),
                (unsigned long long)after.keys);
        if (c->s3)
            upload_summary(c, &rep, secs);
    }
    return st;
}

static int cmd_rebuild(cli *c)
{
    s4kv_db *db;
    /* With --s3 and no database in DIR: S3's, read-only, rebuilt in memory
     * (a check that the log replays; nothing is written anywhere). */
    int in_memory = c->s3 && !local_db_exists(c);
    int st = open_db(c, !in_memory, 0, 1, &db);
    if (st)
        return st;
    double t0 = now();
    char err[512] = "";
    int rc = s4kv_rebuild_index(db, err, sizeof err);
    progress_clear(c);
    if (rc) {
        msg("rebuild-index %s: %s", c->label, detail(err, rc));
        return close_db(c, db, exit_for(rc));
    }
    s4kv_stats s;
    s4kv_stats_get(db, &s);
    double t1 = now(), secs;
    s4kv_s3_report rep;
    st = in_memory ? EX_OK : s3_upload_after(c, db, &rep, &secs);
    st = close_db(c, db, st);
    if (st == EX_OK) {
        char a[32];
        fprintf(stderr, "rebuilt the index of %s %sin %.2f s: %llu keys, %s of index "
                "memory%s\n", c->label, in_memory ? "in memory " : "", t1 - t0,
                (unsigned long long)s.keys, hsize(s.index_bytes, a),
                in_memory ? " (no database in DIR: nothing written)" : "");
        if (c->s3 && !in_memory)
            upload_summary(c, &rep, secs);
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
        msg("verify %s: %s", c->label, detail(err, rc));
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
        msg("verify %s: %llu bad records, %llu index mismatches%s%s", c->label,
            (unsigned long long)rep.bad_records, (unsigned long long)rep.index_mismatches,
            err[0] ? ": " : "", err);
        st = EX_CORRUPT;
    } else if (st == EX_OK) {
        char a[32];
        fprintf(stderr, "verified %s in %.2f s: %llu records in %llu segment%s (%s), "
                "no problems\n", c->label, now() - t0, (unsigned long long)rep.records,
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
        msg("stats %s: %s", c->label, s4kv_strerror(rc));
        return close_db(c, db, exit_for(rc));
    }
    /* With --s3: the requests this process sent (manifest, checkpoint). */
    s4kv_s3_report r3;
    memset(&r3, 0, sizeof r3);
    if (c->s3)
        s4kv_s3_stats(db, &r3);
    if (c->json) {
        printf("{\"keys\": %llu, \"live_bytes\": %llu, \"garbage_bytes\": %llu, "
               "\"segment_bytes\": %llu, \"segments\": %llu, \"index_bytes\": %llu, "
               "\"next_seq\": %llu, \"generation\": %llu, \"active_segment\": %lu",
               (unsigned long long)s.keys, (unsigned long long)s.live_bytes,
               (unsigned long long)s.garbage_bytes, (unsigned long long)s.segment_bytes,
               (unsigned long long)s.segments, (unsigned long long)s.index_bytes,
               (unsigned long long)s.next_seq, (unsigned long long)s.generation,
               (unsigned long)s.active_segment);
        if (c->s3)
            printf(", \"s3_remote_only\": %s, \"s3_requests\": %llu, \"s3_retries\": %llu, "
                   "\"s3_connections\": %llu", c->label == c->s3 ? "true" : "false",
                   (unsigned long long)r3.requests, (unsigned long long)r3.retries,
                   (unsigned long long)r3.connections);
        fputs("}\n", stdout);
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
               c->label == c->s3 ? "(none: read from S3 alone)" : c->dir,
               (unsigned long long)s.keys,
               (unsigned long long)s.live_bytes, hsize(s.live_bytes, a),
               (unsigned long long)s.garbage_bytes, hsize(s.garbage_bytes, b), gr,
               (unsigned long long)s.segment_bytes, hsize(s.segment_bytes, g),
               (unsigned long long)s.segments, (unsigned long)s.active_segment,
               (unsigned long long)s.index_bytes, hsize(s.index_bytes, d),
               s.keys ? (double)s.index_bytes / (double)s.keys : 0.0,
               (unsigned long long)s.next_seq, (unsigned long long)s.generation);
        if (c->s3)
            printf("s3:             %s\n"
                   "s3 requests:    %llu (%llu retr%s, %llu connection%s)\n",
                   c->s3, (unsigned long long)r3.requests, (unsigned long long)r3.retries,
                   r3.retries == 1 ? "y" : "ies", (unsigned long long)r3.connections,
                   plural(r3.connections));
    }
    return close_db(c, db, out_flush());
}

/* ---- upload, download ---------------------------------------------------- */

/* upload and download need an S3 URL; EX_OK or EX_USAGE. */
static int need_s3(const cli *c)
{
    if (c->s3)
        return EX_OK;
    msg("%s: no S3 location: give --s3 s3://BUCKET/PREFIX/ or set S4KV_S3", c->cmd);
    return EX_USAGE;
}

static int cmd_upload(cli *c)
{
    int st = need_s3(c);
    s4kv_db *db;
    if (st || (st = open_db(c, 1, 0, 0, &db)))
        return st;
    s4kv_s3_report rep;
    memset(&rep, 0, sizeof rep);
    char err[512] = "";
    double t0 = now();
    int rc = s4kv_upload(db, s3_options(c, 1), &rep, err, sizeof err);
    double secs = now() - t0;
    progress_clear(c);
    if (rc)
        msg("upload %s to %s: %s", c->dir, c->s3, detail(err, rc));
    st = close_db(c, db, exit_for(rc));
    if (st == EX_OK)
        upload_summary(c, &rep, secs);
    return st;
}

static int cmd_download(cli *c)
{
    int st = need_s3(c);
    if (st)
        return st;
    s4kv_s3_report rep;
    memset(&rep, 0, sizeof rep);
    char err[512] = "";
    double t0 = now();
    int rc = s4kv_download(c->dir, s3_options(c, 1), &rep, err, sizeof err);
    progress_clear(c);
    if (rc == S4KV_ENOENT && strstr(err, "no database at"))
        msg("%s", err);
    else if (rc)
        msg("download %s into %s: %s", c->s3, c->dir, detail(err, rc));
    else
        download_summary(c, &rep, now() - t0);
    return exit_for(rc);
}

/* ---- sync (the daemon) --------------------------------------------------- */

/* The daemon's log: one line per event, "2024-05-01T12:00:00.123Z LEVEL
 * text", to stderr or --log FILE (appended; SIGHUP reopens it, for
 * logrotate). Called from the loop thread and the pool: serialised. */
typedef struct daemon_log {
    pthread_mutex_t mu;
    FILE *f;              /* stderr, or the --log file */
    const char *path;     /* NULL = stderr */
} daemon_log;

static void daemon_log_line(void *ctx, const char *line)
{
    daemon_log *l = ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char t[32];
    strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
    pthread_mutex_lock(&l->mu);
    fprintf(l->f, "%s.%03ldZ %s\n", t, ts.tv_nsec / 1000000, line);
    fflush(l->f);
    pthread_mutex_unlock(&l->mu);
}

/* The engine's and the S3 client's own lines. */
static void daemon_engine_log(void *ctx, const char *line)
{
    char buf[1100];
    snprintf(buf, sizeof buf, "info engine: %s", line);
    daemon_log_line(ctx, buf);
}

/* Opens (or, on SIGHUP, reopens) the log file. 0 or -1 (message printed). */
static int daemon_log_open(daemon_log *l)
{
    if (!l->path)
        return 0;
    FILE *f = fopen(l->path, "a");
    if (!f) {
        msg("sync: cannot open the log file %s: %s", l->path, strerror(errno));
        return -1;
    }
    setvbuf(f, NULL, _IOLBF, 0);
    pthread_mutex_lock(&l->mu);
    FILE *old = l->f;
    l->f = f;
    pthread_mutex_unlock(&l->mu);
    if (old && old != stderr)
        fclose(old);
    return 0;
}

/* --interval and --seal-age: N[ms|s|m|h], a plain N in seconds; 0 < d <= 1 day. */
static int parse_duration_ms(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned long long mul = 0;
    if (errno)
        return -1;
    if (!*end || strcmp(end, "s") == 0)
        mul = 1000;
    else if (strcmp(end, "ms") == 0)
        mul = 1;
    else if (strcmp(end, "m") == 0)
        mul = 60000;
    else if (strcmp(end, "h") == 0)
        mul = 3600000;
    if (!mul || v == 0 || v > 86400000ull / mul)
        return -1;
    *out = (uint32_t)(v * mul);
    return 0;
}

/* DIR/SYNC_TOKEN: the daemon's token, mode 0600, for the CLI on the same
 * machine (put, get, delete and keys read it when $S4KV_SYNC_TOKEN is not
 * set). Written under the writer lock, before SYNC_ADDR appears, through a
 * temporary file and a rename; removed when the daemon exits. 0 or -1
 * (message printed). */
static int sync_token_write(const cli *c, const char *token)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/SYNC_TOKEN", c->dir) >= sizeof path ||
        (size_t)snprintf(tmp, sizeof tmp, "%s/SYNC_TOKEN.tmp", c->dir) >= sizeof tmp) {
        msg("sync: the path of %s/SYNC_TOKEN is too long", c->dir);
        return -1;
    }
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        msg("sync: cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    size_t n = strlen(token);
    int ok = fchmod(fd, 0600) == 0 && write(fd, token, n) == (ssize_t)n &&
             write(fd, "\n", 1) == 1;
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        msg("sync: cannot write %s: %s", path, strerror(e));
        return -1;
    }
    return 0;
}

static void sync_token_remove(const cli *c)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/SYNC_TOKEN", c->dir) < sizeof path)
        unlink(path);
}

static int cmd_sync(cli *c)
{
    int st = need_s3(c);
    if (st)
        return st;
    s4kv_sync_options so;
    s4kv_sync_options_init(&so);
    so.s3 = *s3_options(c, 0);
    if (c->interval_ms)
        so.interval_ms = c->interval_ms;
    if (c->seal_age_ms)
        so.seal_age_ms = c->seal_age_ms;
    if (c->compact_ratio >= 0)
        so.compact_ratio = c->compact_ratio;
    if (!c->listen)
        so.listen = "127.0.0.1:7070";
    else if (strcmp(c->listen, "none") != 0)
        so.listen = c->listen;
    const char *tok = c->token ? c->token : getenv("S4KV_SYNC_TOKEN");
    so.token = tok && *tok ? tok : NULL;
    so.insecure = c->insecure;
    char err[512] = "";
    int rc = s4kv_sync_options_check(&so, err, sizeof err);
    if (rc) {
        msg("sync: %s", detail(err, rc));
        return EX_USAGE;
    }

    daemon_log lg = { .f = stderr, .path = c->log_path };
    pthread_mutex_init(&lg.mu, NULL);
    if (daemon_log_open(&lg) != 0) {
        pthread_mutex_destroy(&lg.mu);
        return EX_ERR;
    }
    so.log = daemon_log_line;
    so.log_ctx = &lg;
    so.s3.log = daemon_engine_log;
    so.s3.log_ctx = &lg;

    /* Every thread started from here on (the engine's, the loop's, libuv's
     * pool) inherits this mask: the signals reach sigwait below only. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old);

    s4kv_db *db = NULL;
    s4kv_sync_loop *loop = NULL;
    if ((st = s3_prepare_write(c, 0)) == EX_OK) {
        s4kv_options opt;
        s4kv_options_init(&opt);
        opt.log = daemon_engine_log;
        opt.log_ctx = &lg;
        rc = s4kv_open(c->dir, &opt, &db, err, sizeof err);
        if (rc == S4KV_ELOCKED)
            msg("database %s is locked by another writer (%s)", c->dir, detail(err, rc));
        else if (rc)
            msg("cannot open the database at %s: %s", c->dir, detail(err, rc));
        st = exit_for(rc);
    }
    int token_file = 0;
    if (st == EX_OK && so.token) {
        if (sync_token_write(c, so.token) != 0) {
            st = EX_ERR;
        } else {
            token_file = 1;
        }
    }
    if (st == EX_OK) {
        rc = s4kv_sync_start(db, &so, &loop, err, sizeof err);
        if (rc) {
            msg("sync: %s", detail(err, rc));
            st = rc == S4KV_EINVAL ? EX_USAGE : exit_for(rc);
        }
    }
    if (st == EX_OK) {
        for (;;) {
            int sig = 0;
            if (sigwait(&set, &sig) != 0)
                continue;
            if (sig == SIGHUP) {
                if (daemon_log_open(&lg) == 0)
                    daemon_log_line(&lg, "info log file reopened (SIGHUP)");
                continue;
            }
            char line[96];
            snprintf(line, sizeof line, "info %s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
            daemon_log_line(&lg, line);
            break;
        }
        err[0] = 0;
        rc = s4kv_sync_stop(loop, err, sizeof err);
        if (rc) {
            char line[700];
            snprintf(line, sizeof line, "error %s", detail(err, rc));
            daemon_log_line(&lg, line);
            if (lg.path)
                msg("sync: %s", detail(err, rc));
            st = exit_for(rc);
        }
    }
    if (token_file)
        sync_token_remove(c);
    if (db)
        st = close_db(c, db, st);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (lg.f != stderr)
        fclose(lg.f);
    pthread_mutex_destroy(&lg.mu);
    return st;
}

/* ---- command table and argument parsing --------------------------------- */

static const command COMMANDS[] = {
    { "put", cmd_put, 0, 2, 2, "put KEY VALUE",
      "Stores VALUE under KEY (one atomic write). VALUE '-' reads the value\n"
      "from stdin, binary safe, up to 256 MiB (so a literal value '-' must come\n"
      "through stdin). Creates the database when DIR is missing. With --s3,\n"
      "uploads after the write (see 's4kv --help'). When a sync daemon holds\n"
      "DIR's lock (DIR/SYNC_ADDR exists), sends PUT /v1/kv/KEY to it instead\n"
      "(the daemon refuses values over its 64 MiB body limit: 413); the token\n"
      "comes from $S4KV_SYNC_TOKEN, else DIR/SYNC_TOKEN.\n", 0 },
    { "get", cmd_get, 0, 1, 1, "get KEY",
      "Writes KEY's value to stdout, raw, with nothing added. An absent key\n"
      "exits 1 with a message on stderr. With --s3 and no database in DIR, the\n"
      "value comes from S3 with one ranged GET, checked by its checksum. When\n"
      "DIR/SYNC_ADDR names a running sync daemon, asks it (GET /v1/kv/KEY): one\n"
      "round trip, and the daemon's newest state.\n", 0 },
    { "delete", cmd_delete, 0, 1, -1, "delete KEY...",
      "Deletes the keys in one atomic batch. Absent keys are not an error\n"
      "(exit 0), as with s4kv_delete. With --s3, uploads after the write. When\n"
      "a sync daemon holds DIR's lock, sends it one POST /v1/batch of deletes,\n"
      "so the keys still go in one atomic batch.\n", 0 },
    { "keys", cmd_keys, OPT_PREFIX | OPT_NUL0, 0, 0, "keys [--prefix P] [-0]",
      "Lists the live keys in key order, one per line with the tsv escaping\n"
      "(\\\\ \\t \\n \\r \\0), or raw and NUL-terminated with -0 (a key holding a\n"
      "NUL byte is then an error). When DIR/SYNC_ADDR names a running sync\n"
      "daemon, asks it (GET /v1/keys?prefix=P); the output is the same.\n\nOptions:\n"
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
      "Creates the database when DIR is missing. With --s3, uploads once at\n"
      "the end, and only when the whole input was imported.\n\nOptions:\n"
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
      "tombstones (online in the library and the daemon: reads and writes go\n"
      "on meanwhile). Shows progress on a terminal and a\n"
      "summary (segments and bytes before and after) on stderr. With --s3,\n"
      "uploads the result; the objects it dropped stay in S3 for readers of\n"
      "the previous generation until --retention allows deleting them.\n", 0 },
    { "rebuild-index", cmd_rebuild, 0, 0, 0, "rebuild-index",
      "Discards the index, rebuilds it by replaying every segment and writes a\n"
      "fresh checkpoint. Shows progress on a terminal and a summary on stderr.\n"
      "With --s3, uploads after; with --s3 and no database in DIR, rebuilds the\n"
      "S3 database's index in memory (a check that its log replays) and writes\n"
      "nothing.\n", 0 },
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
      "next_seq, generation, active_segment (sizes in bytes). With --s3 also\n"
      "s3_remote_only (true when DIR holds no database and S3 alone was read),\n"
      "s3_requests, s3_retries and s3_connections (what this command sent).\n\nOptions:\n"
      "  --json         one JSON object\n", 0 },
    { "upload", cmd_upload, 0, 0, 0, "--s3 URL upload",
      "Sends DIR's database to S3, only what S3 lacks: new segments and the\n"
      "grown part of the active one, then the index checkpoint, then a MANIFEST\n"
      "of a new generation (the commit point: a reader that finds a MANIFEST\n"
      "finds everything it names). Nothing new: no new generation ('nothing to\n"
      "upload'). Then deletes objects dropped earlier whose retention passed\n"
      "(--retention). Refuses a prefix holding a different database (exit 3).\n"
      "Needs --s3 (or $S4KV_S3) and a database in DIR; takes the writer lock.\n"
      "Shows progress on a terminal and a summary on stderr: objects and bytes\n"
      "uploaded, skipped, deleted, requests, retries, generation, time, MB/s.\n", 0 },
    { "download", cmd_download, 0, 0, 0, "--s3 URL download",
      "Fetches everything the newest MANIFEST under the prefix names into DIR\n"
      "(created when missing), in parallel, checks every segment and the\n"
      "checkpoint by their checksums, and writes DIR/MANIFEST last. Resumable:\n"
      "files already in DIR with the right length and checksums are not fetched\n"
      "again. DIR then holds the S3 database as of that MANIFEST: writes made\n"
      "in DIR and not uploaded are replaced. Needs --s3 (or $S4KV_S3). Shows\n"
      "progress on a terminal and a summary on stderr.\n", 0 },
    { "sync", cmd_sync, OPT_SYNC, 0, 0,
      "--s3 URL sync [--interval D] [--seal-age D] [--compact-ratio R]\n"
      "            [--retention D] [--listen ADDR|none] [--token T | --insecure]\n"
      "            [--log FILE]",
      "Runs the sync daemon in the foreground until SIGINT or SIGTERM. It holds\n"
      "DIR's writer lock (creating the database, or downloading it from S3\n"
      "first when DIR has none and S3 has one) and, on one libuv loop:\n"
      "  - every --interval, when writes arrived since the last upload, seals\n"
      "    the active segment once its first write is --seal-age old and\n"
      "    uploads what S3 lacks (as 's4kv upload'). An idle database sends no\n"
      "    S3 requests. A failed upload is retried at later ticks with\n"
      "    exponential backoff (up to 30 s) while writes keep succeeding\n"
      "    locally. A write acknowledged at time t is in S3 by about t +\n"
      "    interval + the upload's duration (the lag is in /metrics).\n"
      "  - compacts when garbage reaches --compact-ratio of the segment bytes\n"
      "    (and at least 1 MiB), then uploads; online: reads and writes go on,\n"
      "    and the longest stall it caused is in /metrics.\n"
      "  - serves HTTP/1.1 on --listen: GET/PUT/DELETE /v1/kv/KEY (raw bytes,\n"
      "    percent-encoded key; a bad escape is 400), POST /v1/batch (below),\n"
      "    GET /v1/keys?prefix=P (one percent-encoded key per line, a JSON array\n"
      "    with Accept: application/json; after=K starts after key K, limit=N\n"
      "    stops after N keys; longer than 256 KiB: sent chunked, page by page),\n"
      "    GET /healthz, GET /metrics\n"
      "    (Prometheus). Bodies over 64 MiB get 413, unknown routes 404, wrong\n"
      "    methods 405.\n"
      "POST /v1/batch: puts and deletes committed as one atomic write (204). The\n"
      "body is one or more records back to back, each\n"
      "    op u8 (1 put, 2 delete) | key length u32 LE (1..65535) |\n"
      "    value length u32 LE (0..256 MiB; 0 for a delete) | key | value\n"
      "A malformed body (unknown op, a bad length, a record cut short, nothing\n"
      "at all) is 400 naming the record and its byte offset, and writes nothing.\n"
      "The bound address goes to DIR/SYNC_ADDR while it runs, and the token (from\n"
      "--token or $S4KV_SYNC_TOKEN) to DIR/SYNC_TOKEN, mode 0600, removed at exit:\n"
      "'s4kv put/get/delete/keys' on DIR then go through the daemon (see\n"
      "'s4kv --help'). SIGINT or SIGTERM:\n"
      "stops accepting, finishes requests in flight, uploads a last time and\n"
      "exits 0 (3 when that upload fails: the writes stay in DIR). SIGHUP\n"
      "reopens the --log file.\n\nOptions:\n"
      "  --interval D       how often to look for new writes: N[ms|s|m|h] (a\n"
      "                     plain N is seconds); default 1s\n"
      "  --seal-age D       seal the active segment before an upload once its\n"
      "                     first write is this old; default: the interval\n"
      "  --compact-ratio R  garbage ratio that starts a compaction, 0 to 1; 0\n"
      "                     never compacts; default 0.5\n"
      "  --retention D      see 's4kv --help' (objects a compaction dropped)\n"
      "  --listen ADDR      HTTP address: IPV4:PORT, [IPV6]:PORT or\n"
      "                     localhost:PORT (port 0 picks one); default\n"
      "                     127.0.0.1:7070; 'none' serves no HTTP. A\n"
      "                     non-loopback address needs --token or --insecure\n"
      "  --token T          require \"Authorization: Bearer T\" on every request\n"
      "                     but /healthz (default: $S4KV_SYNC_TOKEN, which keeps\n"
      "                     it out of the process list); also written to\n"
      "                     DIR/SYNC_TOKEN (0600) for the CLI while it runs\n"
      "  --insecure         allow a non-loopback --listen without a token\n"
      "  --log FILE         append the log to FILE instead of stderr\n", 0 },
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

/* --retention: N[s|m|h|d|w], a plain N in seconds. */
static int parse_duration(const char *s, int64_t *out)
{
    static const struct { char unit; int64_t secs; } units[] = {
        { 's', 1 }, { 'm', 60 }, { 'h', 3600 }, { 'd', 86400 }, { 'w', 604800 },
    };
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    int64_t mul = *end ? 0 : 1;
    for (size_t i = 0; i < sizeof units / sizeof units[0] && *end; i++)
        if (end[0] == units[i].unit && end[1] == 0)
            mul = units[i].secs;
    if (mul == 0 || v > (unsigned long long)(INT64_MAX / mul))
        return -1;
    *out = (int64_t)v * mul;
    return 0;
}

/* The S3 options, accepted before and after the command (as -d). Returns 1
 * when argv[*i] was one (consumed, with its value), 0 when it is not, -1 on
 * a usage error (message printed). where: the command, or NULL. */
static int s3_option(cli *c, int argc, char **argv, int *i, const char *where)
{
    const char *v, *w = where ? where : "", *sep = where ? ": " : "";
    int r;
    if (strcmp(argv[*i], "--no-verify-tls") == 0) {
        c->insecure_tls = 1;
        return 1;
    }
    if ((r = opt_value(argc, argv, i, NULL, "--s3", &v, where))) {
        if (r > 0 && !*v) {
            msg("%s%s--s3: the S3 URL is an empty string (s3://BUCKET/PREFIX/)", w, sep);
            return -1;
        }
        c->s3 = v;
    } else if ((r = opt_value(argc, argv, i, NULL, "--endpoint", &v, where))) {
        c->endpoint = v;
    } else if ((r = opt_value(argc, argv, i, NULL, "--profile", &v, where))) {
        if (r > 0 && !*v) {
            msg("%s%s--profile: the profile name is an empty string", w, sep);
            return -1;
        }
        c->profile = v;
    } else if ((r = opt_value(argc, argv, i, NULL, "--retention", &v, where))) {
        if (r > 0 && parse_duration(v, &c->retention_s) != 0) {
            msg("%s%s--retention wants a duration such as 30s, 10m, 1h or 2d "
                "(a plain number is seconds), not '%s'", w, sep, v);
            return -1;
        }
    } else if ((r = opt_value(argc, argv, i, NULL, "--parallel", &v, where))) {
        unsigned long n;
        if (r > 0 && (parse_batch(v, &n) != 0 || n > PARALLEL_MAX)) {
            msg("%s%s--parallel wants a number from 1 to %d, not '%s'", w, sep,
                PARALLEL_MAX, v);
            return -1;
        }
        if (r > 0)
            c->parallel = (int)n;
    }
    return r;
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
        } else if ((r = s3_option(c, argc, argv, &i, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
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
        } else if ((cmd->opts & OPT_SYNC) &&
                   ((r = opt_value(argc, argv, &i, NULL, "--interval", &v, cmd->name)) ||
                    (r = opt_value(argc, argv, &i, NULL, "--seal-age", &v, cmd->name)))) {
            if (r < 0)
                return EX_USAGE;
            int seal = strncmp(a, "--seal-age", 10) == 0;
            if (parse_duration_ms(v, seal ? &c->seal_age_ms : &c->interval_ms) != 0) {
                msg("%s: %s wants a duration such as 500ms, 1s or 2m (a plain number is "
                    "seconds; at most 1 day), not '%s'", cmd->name,
                    seal ? "--seal-age" : "--interval", v);
                return EX_USAGE;
            }
        } else if ((cmd->opts & OPT_SYNC) &&
                   (r = opt_value(argc, argv, &i, NULL, "--compact-ratio", &v, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
            char *end;
            errno = 0;
            double d = strtod(v, &end);
            if (errno || end == v || *end || !(d >= 0 && d <= 1)) {
                msg("%s: --compact-ratio wants a number from 0 to 1, not '%s'", cmd->name, v);
                return EX_USAGE;
            }
            c->compact_ratio = d;
        } else if ((cmd->opts & OPT_SYNC) &&
                   (r = opt_value(argc, argv, &i, NULL, "--listen", &v, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
            c->listen = v;
        } else if ((cmd->opts & OPT_SYNC) &&
                   (r = opt_value(argc, argv, &i, NULL, "--token", &v, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
            if (!*v) {
                msg("%s: --token is an empty string", cmd->name);
                return EX_USAGE;
            }
            c->token = v;
        } else if ((cmd->opts & OPT_SYNC) &&
                   (r = opt_value(argc, argv, &i, NULL, "--log", &v, cmd->name))) {
            if (r < 0)
                return EX_USAGE;
            c->log_path = v;
        } else if ((cmd->opts & OPT_SYNC) && strcmp(a, "--insecure") == 0) {
            c->insecure = 1;
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
        if (r > 0)
            c->dir = v;
        else if (r == 0)
            r = s3_option(c, argc, argv, &i, NULL);
        if (r < 0)
            return EX_USAGE;
        if (r == 0) {
            msg("unknown option '%s' (see 's4kv --help')", a);
            return EX_USAGE;
        }
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
    c->label = c->dir;
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
    env = getenv("S4KV_S3");
    c.s3 = env && *env ? env : NULL;
    c.retention_s = -1;
    c.compact_ratio = -1;
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
