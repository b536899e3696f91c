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

#endif
