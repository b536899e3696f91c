/*
 * daemon.c - the sync loop: one libuv loop on a background thread that keeps
 * S3 current (seal by age, upload, retry with backoff), compacts when the
 * garbage ratio passes the threshold, and hosts the HTTP server (http.c).
 * The same code runs embedded (s4kv_sync_start) and as `s4kv sync`.
 *
 * Invariants:
 * - At most one job (seal+upload, or compact+upload) runs at a time, on the
 *   libuv thread pool; the loop thread only samples counters and decides, so
 *   it stays responsive for HTTP while S3 is slow or down.
 * - No S3 request without a reason: an upload runs only when the sequence
 *   number moved since the last successful upload (or a compaction changed
 *   the segments), plus once at start.
 * - uploaded_seq only moves forward, and only to a value read before the
 *   upload took its snapshot, so "seq < uploaded_seq => in S3" always holds.
 * - Lag is an upper bound: the time of the first write not yet in S3 is taken
 *   as the previous sample (or the time of the stats read before an upload
 *   that may have missed it), never later than the write itself.
 *
 * S3 transfers run on this loop: the loop thread creates an s3_loop
 * (s3_internal.h) and the uploads' long-lived S3 client (replica_remote,
 * opened by the first upload, kept across successful ones so its connections
 * stay open, reopened after a failure so credentials are read afresh) is
 * attached to it. The upload's orchestration - listing, hashing the files,
 * the snapshot, the manifest commit order - stays on the pool thread; each
 * batch of requests it makes is posted to the loop, which drives libcurl's
 * multi interface with curl_multi_socket_action (a uv_poll_t per socket, one
 * uv_timer_t for curl, one for retry backoff) next to the HTTP server, while
 * the pool thread waits. Stopping closes the remote and the s3_loop only
 * when no job runs, so no posted batch is ever stranded; a batch still
 * queued at that point would run to its end before the loop exits.
 */
#include "daemon.h"
#include "internal.h"
#include "s3_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LAG_RING 4096
#define DEFAULT_MIN_GARBAGE (1ull << 20)

typedef enum { JOB_UPLOAD = 1, JOB_COMPACT = 2, JOB_FINAL = 3 } job_kind;

typedef struct job {
    uv_work_t w;
    job_kind kind;
    int seal;                 /* seal the active segment first */
    /* results (written by the pool thread) */
    int rc;
    char err[512];
    int sealed;
    int compact_rc;
    char compact_err[512];
    uint64_t compact_ms;       /* whole duration */
    uint64_t compact_pause_ms; /* its longest stall (s4kv_compact_stats), rounded up */
    uint64_t garbage_after;
    int written_beside;       /* next_seq moved while the compaction ran */
    uint64_t covered_seq;     /* next_seq read before the upload's snapshot */
    uint64_t covered_t;       /* loop-clock ms of that read */
    uint64_t start_t, end_t;
    s4kv_s3_report rep;
} job;

struct s4kv_sync_loop {
    s4kv_db *db;
    s4kv_sync_options o;      /* strings point into the copies below */
    char *url, *profile, *endpoint, *listen, *token;
    char *addr_file;          /* DIR/SYNC_ADDR, or NULL */

    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wake;
    uv_timer_t tick, sample;
    http_server *http;
    int thread_started;
    s3_loop *s3loop;          /* runs the uploads' transfers on this loop (NULL: could not) */
    replica_remote *remote;   /* the uploads' S3 client, kept across successful uploads;
                                 touched only by the job in flight, or once none runs */

    /* loop-thread state */
    uint32_t poll_ms;
    uint64_t seen_seq;        /* next_seq at the last sample */
    uint64_t last_sample_t;
    uint64_t uploaded_seq;
    int have_uploaded;        /* 0 until the first success (forces the first upload) */
    int force_upload;         /* segments changed without new seqs (compaction) */
    uint64_t dirty_since;     /* first write not yet in S3 (loop ms), 0 = none known */
    uint32_t active_no;
    uint64_t active_since;    /* first write into the active segment, 0 = empty */
    uint64_t next_try_t;      /* backoff: no upload before this */
    uint64_t garbage_base;    /* garbage left by the last compaction that ran with no
                                 write beside it (see job_done) */
    uint64_t compact_not_before;
    job *running;             /* the job in flight, or NULL */
    int missed_tick;          /* a tick found a job running */
    int stopping, http_drained, final_started, final_done, closing;
    int final_rc;
    char final_err[512];
    uint64_t lag_ring[LAG_RING];
    size_t lag_n;

    /* metrics, guarded by mu (read from any thread) */
    pthread_mutex_t mu;
    s4kv_sync_metrics m;
    s3_debug s3dbg;           /* the uploads' client, after the last job (sync_s3_debug) */
    pthread_mutex_t log_mu;
};

/* ---- sbuf, latency summaries, addresses (shared with http.c) */

int sb_reserve(sbuf *b, size_t n)
{
    if (b->oom)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + n + 1)
        nc *= 2;
    char *np = realloc(b->p, nc);
    if (!np) {
        b->oom = 1;
        return -1;
    }
    b->p = np;
    b->cap = nc;
    return 0;
}

void sb_add(sbuf *b, const void *data, size_t n)
{
    if (sb_reserve(b, n) != 0)
        return;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
}

void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        sb_add(b, tmp, (size_t)n);
        return;
    }
    if (sb_reserve(b, (size_t)n) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sb_free(sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* 2^(k/4) for k = 0..3 (no libm: the library does not link it). */
static const double quarter[4] = {1.0, 1.189207115002721, 1.414213562373095, 1.681792830507429};

static double pow2q(int i)
{
    return (double)(1ull << (i / 4)) * quarter[i % 4];
}

static uint64_t ceil_u64(double x)
{
    uint64_t v = (uint64_t)x;
    return (double)v < x ? v + 1 : v;
}

void lat_add(lat_hist *h, uint64_t usec)
{
    /* The smallest i with usec <= 2^(i/4). */
    int i = 0;
    if (usec > 1) {
        int msb = 63 - __builtin_clzll(usec);
        i = 4 * msb;
        while (i < LAT_BUCKETS - 1 && (double)usec > pow2q(i))
            i++;
    }
    if (i >= LAT_BUCKETS)
        i = LAT_BUCKETS - 1;
    h->b[i]++;
    h->count++;
    h->sum_s += (double)usec / 1e6;
}

double lat_quantile(const lat_hist *h, double q)
{
    if (!h->count)
        return 0;
    uint64_t want = ceil_u64(q * (double)h->count), cum = 0;
    if (want == 0)
        want = 1;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        cum += h->b[i];
        if (cum >= want)
            return pow2q(i) / 1e6;
    }
    return pow2q(LAT_BUCKETS - 1) / 1e6;
}

void lat_prom(sbuf *b, const char *name, const char *labels, const lat_hist *h)
{
    static const double qs[] = {0.5, 0.9, 0.99};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++)
        sb_printf(b, "%s{%s%squantile=\"%g\"} %.6f\n", name, labels, *labels ? "," : "", qs[i],
                  lat_quantile(h, qs[i]));
    sb_printf(b, "%s_sum%s%s%s %.6f\n", name, *labels ? "{" : "", labels, *labels ? "}" : "",
              h->sum_s);
    sb_printf(b, "%s_count%s%s%s %" PRIu64 "\n", name, *labels ? "{" : "", labels,
              *labels ? "}" : "", h->count);
}

int sync_addr_parse(const char *s, sync_addr *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return seterr(err, errlen, S4KV_EINVAL,
                      "listen address '%s' is not HOST:PORT (e.g. 127.0.0.1:7070)", s);
    char host[128];
    size_t hl = (size_t)(colon - s);
    if (hl >= sizeof host)
        return seterr(err, errlen, S4KV_EINVAL, "listen address '%s': host too long", s);
    memcpy(host, s, hl);
    host[hl] = 0;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || port < 0 || port > 65535)
        return seterr(err, errlen, S4KV_EINVAL,
                      "listen address '%s': the port must be a number from 0 to 65535", s);
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    if (host[0] == '[') {
        size_t n = strlen(host);
        if (n < 3 || host[n - 1] != ']')
            return seterr(err, errlen, S4KV_EINVAL, "listen address '%s': unbalanced [", s);
        host[n - 1] = 0;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a->ss;
        if (uv_ip6_addr(host + 1, (int)port, a6) != 0)
            return seterr(err, errlen, S4KV_EINVAL,
                          "listen address '%s': '%s' is not an IPv6 address", s, host + 1);
        static const uint8_t lo6[16] = {[15] = 1};
        a->loopback = memcmp(&a6->sin6_addr, lo6, 16) == 0;
        return 0;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)&a->ss;
    if (uv_ip4_addr(host, (int)port, a4) != 0 || strchr(host, ':'))
        return seterr(err, errlen, S4KV_EINVAL,
                      "listen address '%s': '%s' is not an IPv4 address (use [ADDR] for IPv6, "
                      "or localhost)", s, host);
    a->loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    return 0;
}

void sync_addr_format(const struct sockaddr *sa, char *buf, size_t cap)
{
    char ip[64] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)sa;
        uv_ip6_name(a6, ip, sizeof ip);
        port = ntohs(a6->sin6_port);
        snprintf(buf, cap, "[%s]:%d", ip, port);
    } else {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)sa;
        uv_ip4_name(a4, ip, sizeof ip);
        port = ntohs(a4->sin_port);
        snprintf(buf, cap, "%s:%d", ip, port);
    }
}

/* ---- logging and metrics */

void sync_log(s4kv_sync_loop *s, const char *level, const char *fmt, ...)
{
    char line[1200];
    int n = snprintf(line, sizeof line, "%s ", level);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&s->log_mu);
    if (s->o.log)
        s->o.log(s->o.log_ctx, line);
    else
        fprintf(stderr, "s4kv sync: %s\n", line);
    pthread_mutex_unlock(&s->log_mu);
}

/* The S3 client's own lines (retries, failed deletes) at level info. */
static void s3_log_cb(void *ctx, const char *line)
{
    sync_log(ctx, "info", "s3: %s", line);
}

/* Copies msg into last_error, truncated. Caller holds mu. */
static void put_error(s4kv_sync_loop *s, const char *msg)
{
    size_t n = strnlen(msg, sizeof s->m.last_error - 1);
    memcpy(s->m.last_error, msg, n);
    s->m.last_error[n] = 0;
}

static void set_error(s4kv_sync_loop *s, const char *msg)
{
    pthread_mutex_lock(&s->mu);
    put_error(s, msg);
    pthread_mutex_unlock(&s->mu);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Quantiles of the lag ring (loop thread; copies under mu). */
static void lag_quantiles(s4kv_sync_loop *s, uint64_t *p50, uint64_t *p99)
{
    size_t n = s->lag_n < LAG_RING ? s->lag_n : LAG_RING;
    *p50 = *p99 = 0;
    if (!n)
        return;
    uint64_t *v = malloc(n * sizeof *v);
    if (!v)
        return;
    memcpy(v, s->lag_ring, n * sizeof *v);
    qsort(v, n, sizeof *v, cmp_u64);
    *p50 = v[(n - 1) / 2];
    size_t i99 = (size_t)ceil_u64(0.99 * (double)n);
    *p99 = v[i99 ? i99 - 1 : 0];
    free(v);
}

int s4kv_sync_metrics_get(s4kv_sync_loop *s, s4kv_sync_metrics *m)
{
    if (!s || !m)
        return S4KV_EINVAL;
    pthread_mutex_lock(&s->mu);
    *m = s->m;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int s4kv_sync_address(s4kv_sync_loop *s, char *buf, size_t cap)
{
    if (!s || !buf || !cap)
        return S4KV_EINVAL;
    if (!s->http)
        return S4KV_ENOENT;
    snprintf(buf, cap, "%s", http_address(s->http));
    return 0;
}

void sync_metrics_text(s4kv_sync_loop *s, sbuf *b)
{
    s4kv_sync_metrics m;
    s4kv_sync_metrics_get(s, &m);
    s4kv_stats st;
    int have = s4kv_stats_get(s->db, &st) == 0;
#define G(name, help, type, fmt, val)                                                     \
    sb_printf(b, "# HELP " name " " help "\n# TYPE " name " " type "\n" name " " fmt "\n", val)
    G("s4kv_uploads_total", "Successful uploads to S3.", "counter", "%" PRIu64, m.uploads);
    G("s4kv_upload_failures_total", "Failed upload attempts.", "counter", "%" PRIu64,
      m.upload_failures);
    G("s4kv_upload_consecutive_failures", "Failed uploads since the last success.", "gauge",
      "%" PRIu64, m.consecutive_failures);
    G("s4kv_upload_bytes_total", "Bytes sent by successful uploads.", "counter", "%" PRIu64,
      m.upload_bytes);
    G("s4kv_upload_objects_total", "Objects sent by successful uploads.", "counter", "%" PRIu64,
      m.upload_objects);
    G("s4kv_upload_generation", "Remote manifest generation after the last upload.", "gauge",
      "%" PRIu64, m.generation);
    G("s4kv_upload_duration_seconds", "Duration of the last upload.", "gauge", "%.3f",
      (double)m.last_upload_ms / 1e3);
    G("s4kv_upload_lag_seconds", "Upload lag of the last upload that carried writes "
      "(first write not in S3 to the end of its upload).", "gauge", "%.3f",
      (double)m.lag_last_ms / 1e3);
    G("s4kv_upload_lag_max_seconds", "Largest upload lag seen.", "gauge", "%.3f",
      (double)m.lag_max_ms / 1e3);
    sb_printf(b, "# HELP s4kv_upload_lag_quantile_seconds Upload lag over the last %d uploads.\n"
                 "# TYPE s4kv_upload_lag_quantile_seconds gauge\n"
                 "s4kv_upload_lag_quantile_seconds{quantile=\"0.5\"} %.3f\n"
                 "s4kv_upload_lag_quantile_seconds{quantile=\"0.99\"} %.3f\n",
              LAG_RING, (double)m.lag_p50_ms / 1e3, (double)m.lag_p99_ms / 1e3);
    G("s4kv_upload_pending_seconds", "Age of the oldest write not yet in S3 (0 = caught up).",
      "gauge", "%.3f", (double)m.lag_pending_ms / 1e3);
    G("s4kv_seals_total", "Active segments sealed by age.", "counter", "%" PRIu64, m.seals);
    G("s4kv_s3_requests_total", "HTTP requests sent to S3 (every attempt).", "counter",
      "%" PRIu64, m.s3_requests);
    G("s4kv_s3_retries_total", "S3 requests that were retries.", "counter", "%" PRIu64,
      m.s3_retries);
    G("s4kv_s3_errors_total", "S3 operations that failed after their retries.", "counter",
      "%" PRIu64, m.s3_errors);
    G("s4kv_compactions_total", "Compactions run by the loop.", "counter", "%" PRIu64,
      m.compactions);
    G("s4kv_compaction_failures_total", "Compactions that failed.", "counter", "%" PRIu64,
      m.compaction_failures);
    G("s4kv_compaction_pause_seconds", "Longest stall of a reader or writer in the last "
      "compaction (it runs online).", "gauge", "%.3f", (double)m.compact_pause_last_ms / 1e3);
    G("s4kv_compaction_pause_max_seconds", "Longest compaction stall seen.", "gauge", "%.3f",
      (double)m.compact_pause_max_ms / 1e3);
    G("s4kv_compaction_duration_seconds", "Duration of the last compaction.", "gauge", "%.3f",
      (double)m.compact_duration_last_ms / 1e3);
    if (have) {
        G("s4kv_keys", "Live keys.", "gauge", "%" PRIu64, st.keys);
        G("s4kv_segment_bytes", "Bytes in all segments.", "gauge", "%" PRIu64, st.segment_bytes);
        G("s4kv_garbage_bytes", "Segment bytes that are not live.", "gauge", "%" PRIu64,
          st.garbage_bytes);
        G("s4kv_garbage_ratio", "garbage_bytes / segment_bytes.", "gauge", "%.4f",
          st.segment_bytes ? (double)st.garbage_bytes / (double)st.segment_bytes : 0.0);
        G("s4kv_segments", "Segments.", "gauge", "%" PRIu64, st.segments);
        G("s4kv_next_seq", "Sequence number of the next write.", "counter", "%" PRIu64,
          st.next_seq);
    }
#undef G
}

/* ---- the loop */

static void start_job(s4kv_sync_loop *s, job_kind kind);

static void sample(s4kv_sync_loop *s, s4kv_stats *out)
{
    s4kv_stats st;
    uint64_t now = uv_now(&s->loop);
    if (s4kv_stats_get(s->db, &st) != 0)
        return;
    if (st.active_segment != s->active_no) {
        s->active_no = st.active_segment;
        s->active_since = 0;
    }
    if (st.next_seq != s->seen_seq) {
        /* The write happened after the previous sample: take that time (an
         * upper bound on the lag, never a lower one). */
        if (!s->active_since)
            s->active_since = s->last_sample_t;
        if (!s->dirty_since && st.next_seq != s->uploaded_seq)
            s->dirty_since = s->last_sample_t;
        s->seen_seq = st.next_seq;
    }
    s->last_sample_t = now;
    pthread_mutex_lock(&s->mu);
    s->m.garbage_bytes = st.garbage_bytes;
    s->m.segment_bytes = st.segment_bytes;
    s->m.lag_pending_ms = s->dirty_since ? now - s->dirty_since : 0;
    pthread_mutex_unlock(&s->mu);
    if (out)
        *out = st;
}

void sync_http_counts(s4kv_sync_loop *s, uint64_t requests, uint64_t connections)
{
    pthread_mutex_lock(&s->mu);
    s->m.http_requests = requests;
    s->m.http_connections = connections;
    pthread_mutex_unlock(&s->mu);
}

void sync_note_write(s4kv_sync_loop *s, uint64_t t_ms)
{
    if (!s->dirty_since)
        s->dirty_since = t_ms < s->last_sample_t ? t_ms : s->last_sample_t;
    if (!s->active_since)
        s->active_since = t_ms;
}

static void on_sample(uv_timer_t *t)
{
    sample(t->data, NULL);
}

static int want_compaction(s4kv_sync_loop *s, const s4kv_stats *st, uint64_t now)
{
    if (s->o.compact_ratio <= 0 || !st->segment_bytes || now < s->compact_not_before)
        return 0;
    /* More than the base, even with compact_min_garbage 0: compacting what
     * the last compaction could not reclaim would gain nothing, every tick. */
    if (st->garbage_bytes < s->o.compact_min_garbage || st->garbage_bytes <= s->garbage_base ||
        st->garbage_bytes < s->garbage_base + s->o.compact_min_garbage)
        return 0;
    return (double)st->garbage_bytes / (double)st->segment_bytes >= s->o.compact_ratio;
}

static void on_tick(uv_timer_t *t)
{
    s4kv_sync_loop *s = t->data;
    if (s->stopping)
        return;
    if (s->running) {
        /* Run it when the job ends: a write that just missed the running
         * upload then waits for that upload, not for it plus an interval. */
        s->missed_tick = 1;
        return;
    }
    s->missed_tick = 0;
    s4kv_stats st;
    memset(&st, 0, sizeof st);
    sample(s, &st);
    uint64_t now = uv_now(&s->loop);
    if (now < s->next_try_t)
        return;
    if (want_compaction(s, &st, now))
        start_job(s, JOB_COMPACT);
    else if (!s->have_uploaded || s->force_upload || st.next_seq != s->uploaded_seq)
        start_job(s, JOB_UPLOAD);
}

static uint64_t mono_ms(s4kv_sync_loop *s)
{
    (void)s;
    return uv_hrtime() / 1000000u;
}

/* The pool thread: seal, compact, upload. Touches only j and the handle. */
static void job_work(uv_work_t *w)
{
    job *j = w->data;
    s4kv_sync_loop *s = j->w.loop->data;
    uint64_t off = j->start_t - mono_ms(s); /* loop clock = mono + off (mod 2^64) */
    if (j->kind == JOB_COMPACT) {
        s4kv_stats st;
        uint64_t seq0 = s4kv_stats_get(s->db, &st) == 0 ? st.next_seq : 0;
        uint64_t t0 = mono_ms(s);
        j->compact_rc = s4kv_compact(s->db, j->compact_err, sizeof j->compact_err);
        j->compact_ms = mono_ms(s) - t0;
        uint64_t pause_us = 0;
        s4kv_compact_stats(s->db, NULL, &pause_us, NULL);
        j->compact_pause_ms = (pause_us + 999) / 1000;
        if (s4kv_stats_get(s->db, &st) == 0) {
            j->garbage_after = st.garbage_bytes;
            j->written_beside = st.next_seq != seq0;
        } else {
            j->written_beside = 1; /* unknown: do not raise the base */
        }
    }
    if (j->seal) {
        j->rc = s4kv_seal(s->db, &j->sealed, j->err, sizeof j->err);
        if (j->rc)
            return;
    }
    s4kv_stats st;
    j->rc = s4kv_stats_get(s->db, &st);
    if (j->rc) {
        snprintf(j->err, sizeof j->err, "%s", s4kv_strerror(j->rc));
        return;
    }
    j->covered_seq = st.next_seq;
    j->covered_t = mono_ms(s) + off;
    if (!s->remote)
        j->rc = replica_remote_open(&s->o.s3, s->s3loop, &s->remote, j->err, sizeof j->err);
    if (s->remote)
        j->rc = replica_upload_with(s->remote, s->db, &j->rep, j->err, sizeof j->err);
    if (s->remote) {
        s3_debug d;
        replica_remote_debug(s->remote, &d);
        pthread_mutex_lock(&s->mu);
        s->s3dbg = d;
        pthread_mutex_unlock(&s->mu);
    }
    if (j->rc && s->remote) {
        /* the next upload reads credentials and endpoint afresh */
        replica_remote_close(s->remote);
        s->remote = NULL;
    }
    j->end_t = mono_ms(s) + off;
}

static void maybe_finish(s4kv_sync_loop *s);

static void job_done(uv_work_t *w, int status)
{
    job *j = w->data;
    s4kv_sync_loop *s = w->loop->data;
    s->running = NULL;
    uv_update_time(&s->loop);
    uint64_t now = uv_now(&s->loop);
    if (!j->end_t)
        j->end_t = now;
    uint64_t dur = j->end_t - j->start_t;
    if (status == UV_ECANCELED) {
        j->rc = S4KV_EIO;
        snprintf(j->err, sizeof j->err, "cancelled");
    }
    if (j->kind == JOB_COMPACT) {
        pthread_mutex_lock(&s->mu);
        if (j->compact_rc == 0) {
            s->m.compactions++;
            s->m.compact_pause_last_ms = j->compact_pause_ms;
            s->m.compact_duration_last_ms = j->compact_ms;
            if (j->compact_pause_ms > s->m.compact_pause_max_ms)
                s->m.compact_pause_max_ms = j->compact_pause_ms;
        } else {
            s->m.compaction_failures++;
        }
        pthread_mutex_unlock(&s->mu);
        if (j->compact_rc == 0) {
            /* The base is the garbage no compaction can reclaim, so the next
             * one waits for compact_min_garbage more than that. s4kv_compact
             * seals the active segment and rewrites every sealed one, so a
             * compaction with no write beside it leaves only such garbage
             * (segment and batch headers). Writes beside it leave garbage the
             * next compaction reclaims (stale copies in its outputs,
             * overwritten records in the segments written since its seal):
             * counting that in the base would keep it until even more garbage
             * came, forever on an idle database. Such a compaction leaves the
             * base as it was. */
            if (!j->written_beside)
                s->garbage_base = j->garbage_after;
            s->force_upload = 1;
            sync_log(s, "info", "compaction done: pause_ms=%" PRIu64 " duration_ms=%" PRIu64
                     " garbage_after=%" PRIu64 "%s", j->compact_pause_ms, j->compact_ms,
                     j->garbage_after, j->written_beside ? " (writes beside it)" : "");
        } else {
            /* Do not retry it every tick: wait 10 intervals. */
            s->compact_not_before = now + 10ull * s->o.interval_ms;
            sync_log(s, "error", "compaction failed (next try in %.1f s): %s",
                     10.0 * s->o.interval_ms / 1e3, j->compact_err);
            set_error(s, j->compact_err);
        }
    }
    if (j->sealed) {
        pthread_mutex_lock(&s->mu);
        s->m.seals++;
        pthread_mutex_unlock(&s->mu);
        s->active_since = 0; /* the next sample sees the new active segment */
    }
    if (j->rc == 0) {
        /* The first write not in S3 was carried when it came before the
         * stats read that set covered_seq. */
        uint64_t lag = 0;
        if (s->dirty_since && s->dirty_since <= j->covered_t && j->covered_seq != s->uploaded_seq)
            lag = j->end_t - s->dirty_since;
        s->uploaded_seq = j->covered_seq;
        s->have_uploaded = 1;
        s->force_upload = 0;
        s->next_try_t = 0;
        /* Writes after the stats read may not be in this upload. */
        s4kv_stats st;
        if (s4kv_stats_get(s->db, &st) == 0 && st.next_seq != j->covered_seq) {
            if (!s->dirty_since || s->dirty_since <= j->covered_t)
                s->dirty_since = j->covered_t;
            if (j->sealed)
                s->active_since = j->covered_t;
        } else {
            s->dirty_since = 0;
        }
        if (lag) {
            s->lag_ring[s->lag_n++ % LAG_RING] = lag;
        }
        uint64_t p50, p99;
        lag_quantiles(s, &p50, &p99);
        pthread_mutex_lock(&s->mu);
        s->m.uploads++;
        s->m.consecutive_failures = 0;
        s->m.upload_objects += j->rep.objects_uploaded;
        s->m.upload_bytes += j->rep.bytes_uploaded;
        s->m.generation = j->rep.generation;
        s->m.uploaded_seq = j->covered_seq;
        s->m.last_upload_ms = dur;
        if (dur > s->m.max_upload_ms)
            s->m.max_upload_ms = dur;
        if (lag) {
            s->m.lag_last_ms = lag;
            if (lag > s->m.lag_max_ms)
                s->m.lag_max_ms = lag;
        }
        s->m.lag_p50_ms = p50;
        s->m.lag_p99_ms = p99;
        s->m.lag_pending_ms = s->dirty_since ? now - s->dirty_since : 0;
        s->m.s3_requests += j->rep.requests;
        s->m.s3_retries += j->rep.retries;
        pthread_mutex_unlock(&s->mu);
        sync_log(s, "info",
                 "upload done: objects=%" PRIu64 " bytes=%" PRIu64 " ms=%" PRIu64
                 " generation=%" PRIu64 " seq=%" PRIu64 " sealed=%d lag_ms=%" PRIu64
                 " requests=%" PRIu64 "%s",
                 j->rep.objects_uploaded, j->rep.bytes_uploaded, dur, j->rep.generation,
                 j->covered_seq, j->sealed, lag, j->rep.requests,
                 j->rep.published ? "" : " (nothing new)");
    } else {
        pthread_mutex_lock(&s->mu);
        s->m.upload_failures++;
        s->m.s3_errors++;
        s->m.s3_requests += j->rep.requests;
        s->m.s3_retries += j->rep.retries;
        uint64_t n = ++s->m.consecutive_failures;
        put_error(s, j->err);
        pthread_mutex_unlock(&s->mu);
        uint64_t delay = s->o.interval_ms;
        for (uint64_t i = 1; i < n && delay < s->o.retry_max_ms; i++)
            delay *= 2;
        if (delay > s->o.retry_max_ms)
            delay = s->o.retry_max_ms;
        s->next_try_t = now + delay;
        if (j->kind == JOB_FINAL) {
            s->final_rc = j->rc;
            snprintf(s->final_err, sizeof s->final_err, "%s", j->err);
            sync_log(s, "error", "final upload failed (the writes stay committed locally): %s",
                     j->err);
        } else {
            sync_log(s, "warn", "upload failed (attempt %" PRIu64 ", retry in %.1f s): %s", n,
                     (double)delay / 1e3, j->err);
        }
    }
    if (j->kind == JOB_FINAL)
        s->final_done = 1;
    free(j);
    if (s->stopping)
        maybe_finish(s);
    else if (s->missed_tick)
        on_tick(&s->tick);
}

static void start_job(s4kv_sync_loop *s, job_kind kind)
{
    job *j = calloc(1, sizeof *j);
    if (!j) {
        sync_log(s, "error", "out of memory starting an upload");
        return;
    }
    uint64_t now = uv_now(&s->loop);
    j->kind = kind;
    j->w.data = j;
    j->start_t = now;
    j->seal = kind == JOB_FINAL ||
              (s->active_since && now - s->active_since >= s->o.seal_age_ms);
    int rc = uv_queue_work(&s->loop, &j->w, job_work, job_done);
    if (rc) {
        sync_log(s, "error", "cannot queue an upload: %s", uv_strerror(rc));
        free(j);
        return;
    }
    s->running = j;
}

/* ---- stopping */

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void close_all(s4kv_sync_loop *s)
{
    if (s->closing)
        return;
    s->closing = 1;
    /* no job runs now: nothing of ours is posted to the S3 loop */
    replica_remote_close(s->remote);
    s->remote = NULL;
    s3_loop_close(s->s3loop);
    s->s3loop = NULL;
    uv_close((uv_handle_t *)&s->tick, on_closed);
    uv_close((uv_handle_t *)&s->sample, on_closed);
    uv_close((uv_handle_t *)&s->wake, on_closed);
}

/* Drives the stop sequence: HTTP drained -> no job running -> final upload
 * (only when something changed) -> close the handles (the loop then ends). */
static void maybe_finish(s4kv_sync_loop *s)
{
    if (!s->http_drained || s->running)
        return;
    if (!s->final_started) {
        s->final_started = 1;
        s4kv_stats st;
        memset(&st, 0, sizeof st);
        sample(s, &st);
        if (!s->have_uploaded || s->force_upload || st.next_seq != s->uploaded_seq) {
            start_job(s, JOB_FINAL);
            if (s->running)
                return;
            s->final_rc = S4KV_ENOMEM;
            snprintf(s->final_err, sizeof s->final_err, "could not start the final upload");
        }
        s->final_done = 1;
    }
    if (s->final_done)
        close_all(s);
}

static void on_http_drained(void *ctx)
{
    s4kv_sync_loop *s = ctx;
    s->http_drained = 1;
    maybe_finish(s);
}

static void on_wake(uv_async_t *a)
{
    s4kv_sync_loop *s = a->data;
    if (s->stopping)
        return;
    s->stopping = 1;
    uv_timer_stop(&s->tick);
    uv_timer_stop(&s->sample);
    sync_log(s, "info", "stopping: draining HTTP, then a final upload");
    if (s->http)
        http_drain(s->http, on_http_drained, s);
    else
        on_http_drained(s);
}

void sync_s3_debug(s4kv_sync_loop *s, s3_debug *d, uv_thread_t *loop_thread)
{
    pthread_mutex_lock(&s->mu);
    *d = s->s3dbg;
    pthread_mutex_unlock(&s->mu);
    *loop_thread = s->thread;
}

static void loop_main(void *arg)
{
    s4kv_sync_loop *s = arg;
    char err[256];
    if (s3_loop_new(&s->loop, &s->s3loop, err, sizeof err))
        sync_log(s, "warn", "%s; uploads drive their transfers on the pool thread", err);
    uv_run(&s->loop, UV_RUN_DEFAULT);
}

/* ---- start and stop */

void s4kv_sync_options_init(s4kv_sync_options *o)
{
    memset(o, 0, sizeof *o);
    s4kv_s3_options_init(&o->s3);
    o->interval_ms = 1000;
    o->compact_ratio = 0.5;
    o->compact_min_garbage = DEFAULT_MIN_GARBAGE;
    o->retry_max_ms = 30000;
    o->http_max_body = 64ull << 20;
    o->http_max_connections = 1024;
    o->http_idle_timeout_ms = 30000;
    o->http_request_timeout_ms = 60000;
}

static char *dup_opt(const char *p, int *oom)
{
    if (!p)
        return NULL;
    char *d = strdup(p);
    if (!d)
        *oom = 1;
    return d;
}

static void sync_free(s4kv_sync_loop *s)
{
    if (!s)
        return;
    if (s->http)
        http_free(s->http);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->log_mu);
    free(s->url);
    free(s->profile);
    free(s->endpoint);
    free(s->listen);
    free(s->token);
    free(s->addr_file);
    free(s);
}

/* Writes DIR/SYNC_ADDR atomically (temp file, rename). */
static int write_addr_file(s4kv_sync_loop *s, char *err, size_t errlen)
{
    size_t n = strlen(s->db->dir) + 32;
    s->addr_file = malloc(n);
    char *tmp = malloc(n + 8);
    if (!s->addr_file || !tmp) {
        free(tmp);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    snprintf(s->addr_file, n, "%s/SYNC_ADDR", s->db->dir);
    snprintf(tmp, n + 8, "%s.tmp", s->addr_file);
    char line[128];
    int len = snprintf(line, sizeof line, "%s\n", http_address(s->http));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int ok = fd >= 0 && write(fd, line, (size_t)len) == len;
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    if (ok && rename(tmp, s->addr_file) != 0)
        ok = 0;
    int e = errno;
    if (!ok) {
        unlink(tmp);
        seterr(err, errlen, S4KV_EIO, "writing %s: %s", s->addr_file, strerror(e));
        free(s->addr_file);
        s->addr_file = NULL;
    }
    free(tmp);
    return ok ? 0 : S4KV_EIO;
}

int s4kv_sync_options_check(const s4kv_sync_options *o, char *err, size_t errlen)
{
    if (!o)
        return seterr(err, errlen, S4KV_EINVAL, "NULL options");
    if (!o->s3.url || !*o->s3.url)
        return seterr(err, errlen, S4KV_EINVAL, "no S3 URL given (s3://bucket/prefix/)");
    if (o->interval_ms < 10 || o->interval_ms > 86400000u)
        return seterr(err, errlen, S4KV_EINVAL, "interval %u ms is out of range (10 ms to 1 day)",
                      o->interval_ms);
    if (!(o->compact_ratio >= 0 && o->compact_ratio <= 1))
        return seterr(err, errlen, S4KV_EINVAL, "compact ratio %g is not in [0, 1]",
                      o->compact_ratio);
    sync_addr addr;
    if (o->listen) {
        int rc = sync_addr_parse(o->listen, &addr, err, errlen);
        if (rc)
            return rc;
        if (!addr.loopback && !(o->token && *o->token) && !o->insecure)
            return seterr(err, errlen, S4KV_EINVAL,
                          "refusing to listen on %s without a token: it is not a loopback "
                          "address; give a token (--token) or allow it explicitly (--insecure)",
                          o->listen);
    }
    return 0;
}

int s4kv_sync_start(s4kv_db *db, const s4kv_sync_options *o, s4kv_sync_loop **out, char *err,
                    size_t errlen)
{
    if (out)
        *out = NULL;
    if (!db || !o || !out)
        return seterr(err, errlen, S4KV_EINVAL, "NULL argument");
    int rc = s4kv_sync_options_check(o, err, errlen);
    if (rc)
        return rc;
    if (db->read_only)
        return seterr(err, errlen, S4KV_EREADONLY, "%s is open read-only; the sync loop needs "
                      "the writer", db->dir);
    sync_addr addr;
    if (o->listen && (rc = sync_addr_parse(o->listen, &addr, err, errlen)) != 0)
        return rc;
    if (o->listen) {
        /* Writing to a socket whose peer left raises SIGPIPE (libuv writes
         * with write(2)); a server must not die of it. Only a default
         * disposition is changed. */
        struct sigaction sa;
        if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL &&
            !(sa.sa_flags & SA_SIGINFO))
            signal(SIGPIPE, SIG_IGN);
    }
    s4kv_sync_loop *s = calloc(1, sizeof *s);
    if (!s)
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->log_mu, NULL);
    s->db = db;
    s->o = *o;
    int oom = 0;
    s->url = dup_opt(o->s3.url, &oom);
    s->profile = dup_opt(o->s3.profile, &oom);
    s->endpoint = dup_opt(o->s3.endpoint, &oom);
    s->listen = dup_opt(o->listen, &oom);
    s->token = o->token && *o->token ? dup_opt(o->token, &oom) : NULL;
    if (oom) {
        sync_free(s);
        return seterr(err, errlen, S4KV_ENOMEM, "out of memory");
    }
    s->o.s3.url = s->url;
    s->o.s3.profile = s->profile;
    s->o.s3.endpoint = s->endpoint;
    s->o.listen = s->listen;
    s->o.token = s->token;
    s->o.s3.progress = NULL;
    if (!s->o.s3.log) {
        s->o.s3.log = s3_log_cb;
        s->o.s3.log_ctx = s;
    }
    if (!s->o.seal_age_ms)
        s->o.seal_age_ms = s->o.interval_ms;
    if (!s->o.retry_max_ms)
        s->o.retry_max_ms = s->o.interval_ms;
    if (!s->o.http_max_body)
        s->o.http_max_body = 64ull << 20;
    if (!s->o.http_max_connections)
        s->o.http_max_connections = 1024;
    if (!s->o.http_idle_timeout_ms)
        s->o.http_idle_timeout_ms = 30000;
    if (!s->o.http_request_timeout_ms)
        s->o.http_request_timeout_ms = 60000;
    s->poll_ms = s->o.interval_ms / 20;
    if (s->poll_ms < 5)
        s->poll_ms = 5;

    rc = uv_loop_init(&s->loop);
    if (rc) {
        sync_free(s);
        return seterr(err, errlen, S4KV_EIO, "uv_loop_init: %s", uv_strerror(rc));
    }
    s->loop.data = s;
    uv_async_init(&s->loop, &s->wake, on_wake);
    s->wake.data = s;
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_timer_init(&s->loop, &s->sample);
    s->sample.data = s;
    if (s->o.listen) {
        http_config hc = {
            .addr = &addr,
            .listen = s->o.listen,
            .token = s->o.token,
            .max_body = s->o.http_max_body,
            .max_connections = s->o.http_max_connections,
            .idle_timeout_ms = s->o.http_idle_timeout_ms,
            .request_timeout_ms = s->o.http_request_timeout_ms,
        };
        rc = http_start(&s->loop, db, s, &hc, &s->http, err, errlen);
        if (rc == 0)
            rc = write_addr_file(s, err, errlen);
        if (rc) {
            if (s->http)
                http_drain(s->http, NULL, NULL);
            close_all(s);
            uv_run(&s->loop, UV_RUN_DEFAULT);
            uv_loop_close(&s->loop);
            sync_free(s);
            return rc;
        }
    }
    uv_update_time(&s->loop);
    s4kv_stats st;
    if (s4kv_stats_get(db, &st) == 0) {
        s->seen_seq = st.next_seq;
        s->active_no = st.active_segment;
    }
    s->last_sample_t = uv_now(&s->loop);
    s->active_since = s->last_sample_t; /* unknown: assume the active segment holds data */
    uv_timer_start(&s->tick, on_tick, s->o.interval_ms, s->o.interval_ms);
    uv_timer_start(&s->sample, on_sample, s->poll_ms, s->poll_ms);
    rc = uv_thread_create(&s->thread, loop_main, s);
    if (rc) {
        if (s->addr_file)
            unlink(s->addr_file);
        if (s->http)
            http_drain(s->http, NULL, NULL);
        close_all(s);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        sync_free(s);
        return seterr(err, errlen, S4KV_EIO, "cannot start the sync thread: %s", uv_strerror(rc));
    }
    s->thread_started = 1;
    sync_log(s, "info", "sync loop started: s3=%s interval_ms=%u seal_age_ms=%u compact_ratio=%g"
             "%s%s", s->url, s->o.interval_ms, s->o.seal_age_ms, s->o.compact_ratio,
             s->http ? " listen=" : "", s->http ? http_address(s->http) : "");
    *out = s;
    return 0;
}

int s4kv_sync_stop(s4kv_sync_loop *s, char *err, size_t errlen)
{
    if (!s)
        return 0;
    uv_async_send(&s->wake);
    uv_thread_join(&s->thread);
    int rc = uv_loop_close(&s->loop);
    if (rc)
        sync_log(s, "warn", "uv_loop_close: %s", uv_strerror(rc));
    if (s->addr_file)
        unlink(s->addr_file);
    rc = s->final_rc;
    if (rc)
        seterr(err, errlen, rc, "final upload to %s failed: %s", s->url, s->final_err);
    else
        sync_log(s, "info", "sync loop stopped; S3 holds every write up to seq %" PRIu64,
                 s->uploaded_seq);
    sync_free(s);
    return rc;
}
