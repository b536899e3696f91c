/*
 * test_replica.c - a database in S3, end to end against a real s3rver on
 * loopback: upload sends only what S3 lacks, download is verified and
 * resumable, a remote-only open serves each get with one ranged GET, the
 * commit order and retention keep every published manifest readable, bad
 * objects are caught by checksums, and SIGKILL at random moments of upload
 * and compaction never leaves S3 without a complete database.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "s3.h"
#include "s3util.h"
#include "util.h"

static char rlogbuf[65536];
static void rcap(void *ctx, const char *line)
{
    (void)ctx;
    size_t n = strlen(rlogbuf);
    snprintf(rlogbuf + n, sizeof rlogbuf - n, "%s\n", line);
}

static s4kv_options ropts(void)
{
    s4kv_options o;
    s4kv_options_init(&o);
    o.max_segment_bytes = 16384;
    o.sync_mode = S4KV_SYNC_NONE;
    o.log = rcap;
    return o;
}

static s4kv_s3_options s3opts(const char *url)
{
    s4kv_s3_options o;
    s4kv_s3_options_init(&o);
    o.url = url;
    o.log = rcap;
    return o;
}

static s4kv_db *ropen(const char *dir)
{
    s4kv_options o = ropts();
    s4kv_db *db = NULL;
    char err[512] = "";
    int rc = s4kv_open(dir, &o, &db, err, sizeof err);
    cr_assert_eq(rc, 0, "open %s: %s", dir, err);
    return db;
}

static void rfill(s4kv_db *db, int from, int to, const char *tag)
{
    char err[512];
    s4kv_batch *b = s4kv_batch_new();
    for (int i = from; i < to; i++) {
        char k[32], v[128];
        snprintf(k, sizeof k, "key%05d", i);
        int n = snprintf(v, sizeof v, "%s value of key %d, padded to make segments fill up", tag, i);
        s4kv_batch_put(b, k, strlen(k), v, (size_t)n);
        if (s4kv_batch_count(b) == 50) {
            cr_assert_eq(s4kv_write(db, b, err, sizeof err), 0, "%s", err);
            s4kv_batch_clear(b);
        }
    }
    if (s4kv_batch_count(b))
        cr_assert_eq(s4kv_write(db, b, err, sizeof err), 0, "%s", err);
    s4kv_batch_free(b);
}

static void rcheck(s4kv_db *db, int from, int to, const char *tag)
{
    char err[512];
    for (int i = from; i < to; i++) {
        char k[32], want[128];
        snprintf(k, sizeof k, "key%05d", i);
        int n = snprintf(want, sizeof want, "%s value of key %d, padded to make segments fill up",
                         tag, i);
        void *v;
        size_t vl;
        int rc = s4kv_get(db, k, strlen(k), &v, &vl, err, sizeof err);
        cr_assert_eq(rc, 0, "get %s: %s", k, err);
        cr_assert_eq(vl, (size_t)n, "%s", k);
        cr_assert(memcmp(v, want, vl) == 0, "%s: wrong bytes", k);
        s4kv_free(v);
    }
}

static s3_client *raw_client(const tu_s3 *s, s3_config *cfg)
{
    char err[512];
    cr_assert_eq(s3_config_from_env(cfg, NULL, s->endpoint, err, sizeof err), 0, "%s", err);
    s3_client *cl = s3_client_new(cfg, "bkt", err, sizeof err);
    cr_assert_not_null(cl, "%s", err);
    return cl;
}

Test(replica, upload_download_roundtrip_and_idempotence, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("rep-src");
    char *dl = tu_tmpdir("rep-dl");
    s4kv_db *db = ropen(dir);
    rfill(db, 0, 600, "v1");
    s4kv_s3_options o = s3opts("s3://bkt/db1/");
    s4kv_s3_report rep;
    char err[512] = "";
    cr_assert_eq(s4kv_upload(db, &o, &rep, err, sizeof err), 0, "%s", err);
    s4kv_stats st;
    s4kv_stats_get(db, &st);
    cr_assert_eq(rep.published, 1);
    cr_assert_eq(rep.generation, 1);
    /* every segment + checkpoint + MANIFEST */
    cr_assert_eq(rep.objects_uploaded, st.segments + 2, "uploaded %llu, segments %llu",
                 (unsigned long long)rep.objects_uploaded, (unsigned long long)st.segments);
    /* Nothing changed: nothing sent, no new generation. */
    cr_assert_eq(s4kv_upload(db, &o, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rep.published, 0);
    cr_assert_eq(rep.objects_uploaded, 0);
    cr_assert_eq(rep.objects_skipped, st.segments + 1);
    /* The active segment grows: only it (and a manifest) go up again. */
    rfill(db, 600, 610, "v1");
    cr_assert_eq(s4kv_upload(db, &o, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rep.published, 1);
    cr_assert_eq(rep.generation, 2);
    cr_assert_leq(rep.objects_uploaded, 3, "grown prefix + maybe a checkpoint + MANIFEST");
    s4kv_close(db);

    char path[4200];
    snprintf(path, sizeof path, "%s/copy", dl);
    cr_assert_eq(s4kv_download(path, &o, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_gt(rep.objects_downloaded, 2);
    cr_assert_eq(rep.generation, 2);
    uint64_t first = rep.objects_downloaded;
    /* Resumable: a second run fetches nothing. Damage one file: only it. */
    cr_assert_eq(s4kv_download(path, &o, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rep.objects_downloaded, 0);
    cr_assert_eq(rep.objects_skipped, first);
    char seg1[4300];
    snprintf(seg1, sizeof seg1, "%s/data_000001.s4kv", path);
    size_t l1;
    uint8_t *b1 = tu_read_file(seg1, &l1);
    b1[l1 / 2] ^= 0x10;
    tu_write_file(seg1, b1, l1);
    free(b1);
    cr_assert_eq(s4kv_download(path, &o, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rep.objects_downloaded, 1, "only the damaged segment is fetched again");

    db = ropen(path);
    rcheck(db, 0, 610, "v1");
    s4kv_verify_report vr;
    cr_assert_eq(s4kv_verify(db, &vr, err, sizeof err), 0, "%s", err);
    /* The downloaded copy is writable (a new active segment). */
    rfill(db, 610, 620, "v2");
    rcheck(db, 610, 620, "v2");
    /* ...but it is the same database: uploading it back to the same prefix is
     * allowed (same id); to another database's prefix it is refused. */
    s4kv_close(db);
    char *other = tu_tmpdir("rep-other");
    db = ropen(other);
    rfill(db, 0, 5, "x");
    cr_assert_eq(s4kv_upload(db, &o, &rep, err, sizeof err), S4KV_EEXIST);
    cr_assert(strstr(err, "different database"), "%s", err);
    s4kv_close(db);
    tu_rmtree_free(other);
    tu_rmtree_free(dir);
    tu_rmtree_free(dl);
    tu_s3_stop(&s);
}

Test(replica, remote_get_is_one_ranged_get_on_one_connection, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("rep-remote");
    s4kv_db *db = ropen(dir);
    rfill(db, 0, 400, "r");
    s4kv_s3_options o = s3opts("s3://bkt/remote/");
    char err[512] = "";
    cr_assert_eq(s4kv_upload(db, &o, NULL, err, sizeof err), 0, "%s", err);
    s4kv_close(db);

    s4kv_options ro = ropts();
    s4kv_db *rdb = NULL;
    cr_assert_eq(s4kv_open_s3(NULL, &ro, &o, &rdb, err, sizeof err), 0, "%s", err);
    s4kv_s3_report a, b;
    s4kv_s3_stats(rdb, &a);
    rcheck(rdb, 100, 150, "r");
    s4kv_s3_stats(rdb, &b);
    cr_assert_eq(b.requests - a.requests, 50, "50 gets = 50 requests, got %llu",
                 (unsigned long long)(b.requests - a.requests));
    cr_assert_eq(b.connections, 1, "one reused connection, got %llu",
                 (unsigned long long)b.connections);
    void *v;
    size_t vl;
    s4kv_s3_stats(rdb, &a);
    cr_assert_eq(s4kv_get(rdb, "absent", 6, &v, &vl, err, sizeof err), S4KV_ENOTFOUND);
    s4kv_s3_stats(rdb, &b);
    cr_assert_eq(b.requests, a.requests, "a missing key costs no request");
    /* keys/scan remotely: whole segments, not one GET per key. */
    s4kv_stats st;
    s4kv_stats_get(rdb, &st);
    s4kv_s3_stats(rdb, &a);
    s4kv_iter *it;
    cr_assert_eq(s4kv_iter_new(rdb, NULL, 0, S4KV_ITER_SORTED, &it, err, sizeof err), 0, "%s",
                 err);
    int n = 0;
    while (s4kv_iter_next(it, err, sizeof err) == 1)
        n++;
    s4kv_iter_free(it);
    s4kv_s3_stats(rdb, &b);
    cr_assert_eq(n, 400);
    cr_assert_leq(b.requests - a.requests, st.segments, "scan: %llu requests for %llu segments",
                  (unsigned long long)(b.requests - a.requests), (unsigned long long)st.segments);
    s4kv_verify_report vr;
    cr_assert_eq(s4kv_verify(rdb, &vr, err, sizeof err), 0, "remote verify: %s", err);
    cr_assert_eq(vr.keys, 400);
    s4kv_close(rdb);
    tu_rmtree_free(dir);
    tu_s3_stop(&s);
}

Test(replica, wrong_and_missing_objects_are_errors_never_data, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("rep-bad");
    s4kv_db *db = ropen(dir);
    rfill(db, 0, 300, "b");
    s4kv_s3_options o = s3opts("s3://bkt/bad/");
    char err[512] = "";
    cr_assert_eq(s4kv_upload(db, &o, NULL, err, sizeof err), 0, "%s", err);
    keydir_loc loc;
    cr_assert(keydir_get(db->kd, "key00007", 8, &loc));
    s4kv_close(db);

    /* Replace the segment holding key00007 with the same bytes, one flipped. */
    s3_config cfg;
    s3_client *cl = raw_client(&s, &cfg);
    char key[128], path[4300];
    snprintf(key, sizeof key, "bad/data_%06u.s4kv", loc.seg);
    snprintf(path, sizeof path, "%s/data_%06u.s4kv", dir, loc.seg);
    size_t len;
    uint8_t *buf = tu_read_file(path, &len);
    buf[loc.off + loc.len - 3] ^= 0x01;
    cr_assert_eq(s3_put(cl, key, buf, len, err, sizeof err), 0, "%s", err);
    free(buf);

    s4kv_options ro = ropts();
    s4kv_db *rdb = NULL;
    cr_assert_eq(s4kv_open_s3(NULL, &ro, &o, &rdb, err, sizeof err), 0, "%s", err);
    void *v;
    size_t vl;
    cr_assert_eq(s4kv_get(rdb, "key00007", 8, &v, &vl, err, sizeof err), S4KV_ECORRUPT);
    cr_assert(strstr(err, "key00007") && strstr(err, "offset"), "%s", err);
    rcheck(rdb, 8, 20, "b");
    s4kv_close(rdb);

    /* A download notices the damage and names the object. */
    char dl[4300];
    snprintf(dl, sizeof dl, "%s/dl", dir);
    cr_assert_eq(s4kv_download(dl, &o, NULL, err, sizeof err), S4KV_ECORRUPT);
    cr_assert(strstr(err, key), "names the object: %s", err);

    /* An object the manifest names is missing: a clear error, not data. */
    cr_assert_eq(s3_delete(cl, key, err, sizeof err), 0);
    cr_assert_eq(s4kv_open_s3(NULL, &ro, &o, &rdb, err, sizeof err), 0, "%s", err);
    cr_assert_lt(s4kv_get(rdb, "key00007", 8, &v, &vl, err, sizeof err), 0);
    cr_assert(strstr(err, "404") || strstr(err, "NoSuchKey"), "%s", err);
    s4kv_close(rdb);

    /* Missing prefix: no database; missing bucket: S3's error. */
    s4kv_s3_options none = s3opts("s3://bkt/nothing-here/");
    cr_assert_eq(s4kv_open_s3(NULL, &ro, &none, &rdb, err, sizeof err), S4KV_ENOENT);
    cr_assert(strstr(err, "no database"), "%s", err);
    s4kv_s3_options nob = s3opts("s3://no-such-bucket/x/");
    cr_assert_neq(s4kv_download(dl, &nob, NULL, err, sizeof err), 0);
    cr_assert(strstr(err, "NoSuchBucket") || strstr(err, "no database"), "%s", err);
    s4kv_s3_options badurl = s3opts("http://bkt/x");
    cr_assert_eq(s4kv_download(dl, &badurl, NULL, err, sizeof err), S4KV_EINVAL);
    s3_client_free(cl);
    s3_config_free(&cfg);
    tu_rmtree_free(dir);
    tu_s3_stop(&s);
}

/* Lists object names under prefix into a newline-joined string. */
static char *list_names(s3_client *cl, const char *prefix)
{
    s3_object *objs;
    size_t n;
    char err[512];
    cr_assert_eq(s3_list(cl, prefix, &objs, &n, err, sizeof err), 0, "%s", err);
    size_t cap = 16;
    for (size_t i = 0; i < n; i++)
        cap += strlen(objs[i].key) + 1;
    char *s = calloc(1, cap);
    for (size_t i = 0; i < n; i++) {
        strcat(s, objs[i].key);
        strcat(s, "\n");
    }
    s3_objects_free(objs, n);
    return s;
}

Test(replica, compaction_keeps_previous_generation_until_next_compaction, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *dir = tu_tmpdir("rep-compact");
    s4kv_db *db = ropen(dir);
    rfill(db, 0, 500, "old");
    rfill(db, 0, 250, "new");
    s4kv_s3_options o = s3opts("s3://bkt/c/");
    char err[512] = "";
    cr_assert_eq(s4kv_upload(db, &o, NULL, err, sizeof err), 0, "%s", err);
    /* A reader on generation 1. */
    s4kv_options ro = ropts();
    s4kv_db *reader = NULL;
    cr_assert_eq(s4kv_open_s3(NULL, &ro, &o, &reader, err, sizeof err), 0, "%s", err);

    cr_assert_eq(s4kv_compact(db, err, sizeof err), 0, "%s", err);
    s4kv_s3_report rep;
    cr_assert_eq(s4kv_upload(db, &o, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rep.objects_deleted, 0, "generation 1's objects stay after the first compaction");
    rlogbuf[0] = 0;
    /* The generation-1 reader still reads everything. */
    rcheck(reader, 0, 250, "new");
    rcheck(reader, 250, 500, "old");
    s4kv_close(reader);

    s3_config cfg;
    s3_client *cl = raw_client(&s, &cfg);
    char *before = list_names(cl, "c/");
    cr_assert(strstr(before, "c/data_000001.s4kv"), "%s", before);
    /* The next compaction's upload deletes what generation 2 dropped. */
    rfill(db, 0, 100, "newer");
    cr_assert_eq(s4kv_compact(db, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s4kv_upload(db, &o, &rep, err, sizeof err), 0, "%s", err);
    cr_assert_gt(rep.objects_deleted, 0, "nothing deleted; log: %s", rlogbuf);
    char *after = list_names(cl, "c/");
    cr_assert_null(strstr(after, "c/data_000001.s4kv"), "%s; log: %s", after, rlogbuf);
    /* ...and every object the newest manifest names exists. */
    s4kv_db *fresh = NULL;
    cr_assert_eq(s4kv_open_s3(NULL, &ro, &o, &fresh, err, sizeof err), 0, "%s", err);
    rcheck(fresh, 0, 100, "newer");
    rcheck(fresh, 100, 250, "new");
    rcheck(fresh, 250, 500, "old");
    s4kv_close(fresh);
    free(before);
    free(after);
    s4kv_close(db);
    s3_client_free(cl);
    s3_config_free(&cfg);
    tu_rmtree_free(dir);
    tu_s3_stop(&s);
}

/* Child: writes, compacts and uploads in a loop until killed; reports the
 * round it reached through the pipe after each successful upload. */
static void upload_loop(const char *dir, const char *url, int fd)
{
    s4kv_options o = ropts();
    s4kv_db *db = NULL;
    char err[512];
    if (s4kv_open(dir, &o, &db, err, sizeof err) != 0)
        _exit(2);
    s4kv_s3_options so;
    s4kv_s3_options_init(&so);
    so.url = url;
    so.log = rcap;
    for (int round = 0;; round++) {
        s4kv_batch *b = s4kv_batch_new();
        for (int i = 0; i < 200; i++) {
            char k[32], v[64];
            snprintf(k, sizeof k, "key%05d", (i * 7 + round * 13) % 400);
            int n = snprintf(v, sizeof v, "round %d item %d", round, i);
            s4kv_batch_put(b, k, strlen(k), v, (size_t)n);
        }
        s4kv_write(db, b, err, sizeof err);
        s4kv_batch_free(b);
        if (round % 3 == 2)
            s4kv_compact(db, err, sizeof err);
        if (s4kv_upload(db, &so, NULL, err, sizeof err) == 0) {
            if (write(fd, &round, sizeof round) < 0)
                _exit(3);
        }
    }
}

Test(replica, sigkill_during_upload_and_compaction_never_breaks_s3, .timeout = 300)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    /* S3 stores a PUT whole or not at all; s3rver stores whatever part of the
     * body arrived before the client died. The fault proxy without faults
     * reads each request body whole before forwarding it, which restores
     * S3's atomic PUT for this test (see faultproxy --help, atomic=1). */
    tu_proxy px;
    tu_proxy_start(&px, s.port, "rate=0");
    setenv("AWS_ENDPOINT_URL_S3", px.endpoint, 1);
    char *dir = tu_tmpdir("rep-kill");
    const char *url = "s3://bkt/kill/";
    s4kv_s3_options o = s3opts(url);
    uint64_t seed = 1234;
    int trials = 20, published = 0, torn_reads = 0;
    for (int t = 0; t < trials; t++) {
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            upload_loop(dir, url, p[1]);
        }
        close(p[1]);
        /* Let it run 100..900 ms, then SIGKILL. */
        struct timespec ts = {0, (long)(100 + tu_rand(&seed) % 800) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        /* s3rver also writes an object in place while a PUT streams in (a GET
         * meanwhile sees a partial body; S3 would show the old or the new
         * object): wait until the PUTs the dead child sent have landed. */
        for (int w = 0; w < 500 && tu_proxy_stat(&px, "inflight") > 0; w++)
            usleep(10000);
        int round;
        while (read(p[0], &round, sizeof round) == sizeof round)
            published++;
        close(p[0]);
        /* A fresh remote reader: the newest manifest's objects all exist and
         * every key it names reads back with a plausible value. */
        s4kv_options ro = ropts();
        s4kv_db *rdb = NULL;
        char err[512] = "";
        int rc = s4kv_open_s3(NULL, &ro, &o, &rdb, err, sizeof err);
        /* Even after its response, s3rver can still be writing the object a
         * PUT replaced, so a read may see a cut MANIFEST (S3 never shows one:
         * its PUT is atomic). The manifest checksum catches it; read again. */
        for (int a = 0; rc == S4KV_ECORRUPT && strstr(err, "remote MANIFEST") && a < 40; a++) {
            torn_reads++;
            usleep(50000);
            rc = s4kv_open_s3(NULL, &ro, &o, &rdb, err, sizeof err);
        }
        if (rc == S4KV_ENOENT)
            continue; /* killed before the first upload completed */
        cr_assert_eq(rc, 0, "trial %d: remote open: %s", t, err);
        s4kv_verify_report vr;
        cr_assert_eq(s4kv_verify(rdb, &vr, err, sizeof err), 0, "trial %d: %s", t, err);
        s4kv_iter *it;
        cr_assert_eq(s4kv_iter_new(rdb, NULL, 0, 0, &it, err, sizeof err), 0, "%s", err);
        int n = 0;
        while ((rc = s4kv_iter_next(it, err, sizeof err)) == 1) {
            size_t vl;
            const char *v = s4kv_iter_value(it, &vl);
            cr_assert(vl > 6 && memcmp(v, "round ", 6) == 0, "trial %d: bad value", t);
            n++;
        }
        cr_assert_eq(rc, 0, "trial %d: %s", t, err);
        cr_assert_gt(n, 0);
        s4kv_iter_free(it);
        s4kv_close(rdb);
    }
    cr_assert_gt(published, 0, "some uploads completed between the kills");
    /* A rerun converges: upload succeeds and a download verifies. */
    s4kv_db *db = ropen(dir);
    char err[512] = "";
    cr_assert_eq(s4kv_upload(db, &o, NULL, err, sizeof err), 0, "%s", err);
    s4kv_close(db);
    char dl[4300];
    snprintf(dl, sizeof dl, "%s-dl", dir);
    cr_assert_eq(s4kv_download(dl, &o, NULL, err, sizeof err), 0, "%s", err);
    db = ropen(dl);
    s4kv_verify_report vr;
    cr_assert_eq(s4kv_verify(db, &vr, err, sizeof err), 0, "%s", err);
    s4kv_close(db);
    char *dlcopy = strdup(dl);
    tu_rmtree_free(dlcopy);
    cr_log_info("kill loop: %d trials, %d uploads published between kills, %d cut MANIFEST "
                "reads from s3rver caught by the checksum and read again", trials, published,
                torn_reads);
    tu_rmtree_free(dir);
    tu_proxy_stop(&px);
    tu_s3_stop(&s);
}

Test(replica, one_writer_per_prefix_guards, .timeout = 120)
{
    tu_s3 s;
    tu_s3_start(&s, "bkt");
    char *a = tu_tmpdir("rep-a");
    char *b = tu_tmpdir("rep-b");
    s4kv_s3_options o = s3opts("s3://bkt/guard/");
    char err[512] = "";
    s4kv_db *db = ropen(a);
    rfill(db, 0, 100, "a");
    cr_assert_eq(s4kv_upload(db, &o, NULL, err, sizeof err), 0, "%s", err);
    s4kv_close(db);
    /* B downloads, writes and uploads: S3 moves ahead of A. */
    char bdir[4300];
    snprintf(bdir, sizeof bdir, "%s/db", b);
    cr_assert_eq(s4kv_download(bdir, &o, NULL, err, sizeof err), 0, "%s", err);
    db = ropen(bdir);
    rfill(db, 100, 200, "b");
    cr_assert_eq(s4kv_upload(db, &o, NULL, err, sizeof err), 0, "%s", err);
    rfill(db, 200, 210, "b");
    s4kv_close(db);
    /* A (older copy) must not overwrite B's generation... */
    db = ropen(a);
    rfill(db, 0, 10, "a2");
    cr_assert_eq(s4kv_upload(db, &o, NULL, err, sizeof err), S4KV_EEXIST);
    cr_assert(strstr(err, "ahead of this copy"), "%s", err);
    s4kv_close(db);
    /* ...and a download must not drop B's writes that were never uploaded. */
    cr_assert_eq(s4kv_download(bdir, &o, NULL, err, sizeof err), S4KV_EEXIST);
    cr_assert(strstr(err, "lacks"), "%s", err);
    /* A download over another database is refused too. */
    char *c = tu_tmpdir("rep-c");
    db = ropen(c);
    rfill(db, 0, 5, "c");
    s4kv_close(db);
    cr_assert_eq(s4kv_download(c, &o, NULL, err, sizeof err), S4KV_EEXIST);
    cr_assert(strstr(err, "different database"), "%s", err);
    /* Remote readers see B's uploaded generation. */
    s4kv_options ro = ropts();
    s4kv_db *rdb = NULL;
    cr_assert_eq(s4kv_open_s3(NULL, &ro, &o, &rdb, err, sizeof err), 0, "%s", err);
    rcheck(rdb, 100, 200, "b");
    s4kv_close(rdb);
    tu_rmtree_free(a);
    tu_rmtree_free(b);
    tu_rmtree_free(c);
    tu_s3_stop(&s);
}
