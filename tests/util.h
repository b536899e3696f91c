/*
 * util.h - helpers shared by the Criterion tests: temporary directories,
 * whole-file reads and writes, running the s4kv binary.
 */
#ifndef S4KV_TEST_UTIL_H
#define S4KV_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Creates a fresh directory under $TMPDIR (or /tmp) and returns its path
 * (malloc'd; free with tu_rmtree_free). Aborts the test on failure. */
char *tu_tmpdir(const char *tag);
/* rm -rf path, then free(path). */
void tu_rmtree_free(char *path);
/* Reads a whole file; returns malloc'd bytes (+1 NUL) and *len, or NULL. */
uint8_t *tu_read_file(const char *path, size_t *len);
/* Writes len bytes to path (truncating); returns 0 or -1. */
int tu_write_file(const char *path, const void *buf, size_t len);
/* Path of the s4kv binary under test ($S4KV_BIN, else build/s4kv). */
const char *tu_s4kv_bin(void);
/* Runs argv (argv[0] is the program path) with stdin fed from in/inlen, and
 * collects stdout and stderr (malloc'd, NUL-terminated; free them). Returns
 * the exit status (0..255), or -1 if the program did not exit normally. */
int tu_run(char *const argv[], const void *in, size_t inlen, char **out,
           size_t *outlen, char **errout);
/* Deterministic PRNG (splitmix64) for randomised tests. */
uint64_t tu_rand(uint64_t *state);

/* Monotonic milliseconds; sleeping that survives signals. */
long long tu_now_ms(void);
void tu_sleep_ms(int ms);

/* ---- Running the CLI */
typedef struct tu_res {
    int rc;            /* exit status, or -1 */
    char *out, *err;   /* stdout and stderr, NUL-terminated (free with tu_res_free) */
    size_t outlen;
} tu_res;
void tu_res_free(tu_res *r);
/* Runs s4kv [-d dir] ARGS... (NULL-terminated) with stdin from in/inlen; a
 * NULL dir passes no -d. */
tu_res tu_run_cli(const char *dir, const void *in, size_t inlen, ...);
#define RUN(dir, ...) tu_run_cli(dir, NULL, 0, __VA_ARGS__, (char *)NULL)
#define RUNI(dir, in, inlen, ...) tu_run_cli(dir, in, inlen, __VA_ARGS__, (char *)NULL)
/* Asserts the exit status and (when want != NULL) exactly that stdout. */
void tu_expect(tu_res *r, int rc, const char *want, size_t wantlen, const char *what);

/* ---- A minimal HTTP/1.1 client on loopback (one request per connection) */
/* Connected socket with a 20 s receive timeout, or -1. */
int tu_tcp_connect(int port);
void tu_send_all(int fd, const void *p, size_t n);
typedef struct tu_resp {
    int status;
    char head[4096];
    char *body;        /* malloc'd, NUL-terminated; free() it */
    size_t blen;
    int chunks;        /* chunks of a chunked body (0: Content-Length) */
} tu_resp;
/* Reads one response from fd, framed by Content-Length or chunked. */
void tu_read_resp(int fd, tu_resp *r);
/* One request on a new connection; extra is more header lines ("K: v\r\n"),
 * or NULL. */
tu_resp tu_http(int port, const char *method, const char *path, const void *body, size_t blen,
                const char *extra);

#endif
