/*
 * s3util.h - a real S3 server for tests: s3rver (npm, pinned in
 * tests/package.json) started on a free loopback port with a temporary
 * directory, and stopped afterwards; plus the loopback fault proxy
 * (tests/faultproxy.c, built as build/faultproxy).
 *
 * s3rver quirks (see DESIGN.md): it accepts any signature, ignores
 * conditional-write headers and returns a plain MD5 as a multipart ETag;
 * tests must not lean on those. Node 20 needs
 * NODE_OPTIONS=--openssl-legacy-provider for paginated ListObjectsV2.
 */
#ifndef S4KV_TEST_S3UTIL_H
#define S4KV_TEST_S3UTIL_H

typedef struct tu_s3 {
    int pid;           /* s3rver (node) process */
    int port;
    char endpoint[64]; /* "http://127.0.0.1:PORT" */
    char *dir;         /* s3rver's storage directory (removed on stop) */
} tu_s3;

/* Starts s3rver with bucket `bucket` pre-created (NULL = none) and waits until
 * it answers (up to 20 s). Finds node_modules under tests/ (S4KV_TESTS_DIR
 * overrides the tests directory). Fails the test (cr_assert_fail) with a
 * clear message if s3rver is not installed ("run: make test-deps") or does
 * not start. Also exports AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID=S3RVER,
 * AWS_SECRET_ACCESS_KEY=S3RVER and AWS_REGION=us-east-1 into the
 * environment of the test process, so child processes (the CLI) find it. */
void tu_s3_start(tu_s3 *s, const char *bucket);
/* Stops it (SIGTERM, then SIGKILL after 5 s) and removes its directory. */
void tu_s3_stop(tu_s3 *s);

typedef struct tu_proxy {
    int pid;
    int port;
    char endpoint[64];
} tu_proxy;

/* Starts build/faultproxy (S4KV_FAULTPROXY overrides the path) in front of
 * upstream_port. spec is the fault specification passed as --faults, e.g.
 * "rate=0.3,kinds=500+503+reset+truncate,seed=7" (see faultproxy --help). */
void tu_proxy_start(tu_proxy *p, int upstream_port, const char *spec);
void tu_proxy_stop(tu_proxy *p);
/* A counter from the proxy's statistics (GET /__faultproxy/stats, which the
 * proxy neither counts nor faults): "requests", "faults", "inflight" (requests
 * forwarded whose response is not read yet), ... Fails the test if absent. */
long tu_proxy_stat(const tu_proxy *p, const char *name);

/* A fresh remote-only reader (s4kv_open_s3 with no directory) of url through
 * endpoint, logging to log (NULL: stderr). Fails the test if it cannot open;
 * the caller closes it with s4kv_close. */
struct s4kv_db;
struct s4kv_db *tu_remote_reader(const char *url, const char *endpoint,
                                 void (*log)(void *ctx, const char *line));

#endif
