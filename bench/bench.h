/*
 * bench.h - what the parts of s4kv-bench share: the configuration, the
 * deterministic key/value generator, timing helpers and the result records
 * a child process emits for the parent to aggregate.
 *
 * Files: bench.c (options, the parent that runs one child process per engine
 * and run, interleaved), workloads.c (the db_bench workloads on any engine,
 * through engine.h), s3.c (the S3 and s4db-shape workloads, s4kv only),
 * report.c (medians, the Markdown / JSON / PNG report, the targets), and one
 * engine_*.c per engine.
 */
#ifndef BENCH_BENCH_H
#define BENCH_BENCH_H

#include "engine.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define KEY_BYTES 16
#define VALUE_BYTES 100 /* the db_bench value; the s4db shapes use 256 */
#define MAX_VALUE_BYTES 256

typedef struct config {
    uint64_t num;        /* keys loaded by fillrandom */
    uint64_t reads;      /* readrandom gets */
    uint64_t missing;    /* readmissing gets */
    uint64_t overwrites; /* overwrite puts */
    uint64_t sync_ops1;  /* fillsync1 durable writes (one writer) */
    uint64_t sync_ops8;  /* fillsync8 durable writes per writer thread (8 writers) */
    uint64_t batch;      /* records per batch for fills and overwrite */
    uint64_t seed;
    uint64_t scale_num;  /* keys of the --scale run */
    int runs;            /* interleaved runs of every engine */
    int scale;           /* --scale: also the 10M-key run, once per engine */
    const char *dir, *only, *engines, *out;
    const char *engine;    /* child mode: the engine this process runs */
    const char *child_out; /* child mode: where its result lines go */
    const char *workload;  /* child mode: "main" (default) or "scale" or "s3" */
    const char *s3_url;    /* --s3-url: run the S3 workloads under this prefix */
    uint64_t remote_num;   /* keys uploaded for remoteget/curlget */
    uint64_t remote_reads; /* remoteget gets (and curlget ranged GETs) */
    uint64_t xfer_mib;     /* database size for upload/download, MiB */
} config;

extern config cfg;
extern char errbuf[1024];

/* ---- helpers (bench.c) */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void *xcalloc(size_t n, size_t size);
uint64_t now_ns(void);
uint64_t splitmix64(uint64_t *s);
uint64_t rand_below(uint64_t *s, uint64_t n);
long peak_rss_kib(void);
const engine *engine_by_name(const char *name);
int selected(const char *name);
void rm_tree(const char *path);

/* Key i: KEY_BYTES decimal digits. */
void make_key(uint64_t i, char out[KEY_BYTES]);
/* The value of key i at version ver, len bytes: the first half pseudo-random,
 * the second half one repeated byte (Snappy about halves it, as db_bench's
 * --compression_ratio=0.5). */
void make_value(uint64_t i, unsigned ver, char *out, size_t len);
/* Dies unless buf/vlen is the value of key i at version ver (len bytes). */
void check_value_len(uint64_t i, unsigned ver, const char *buf, size_t vlen, size_t len,
                     const char *what);

/* ---- results a child emits (one line each, tab separated, to cfg.child_out;
 * report.c parses them back). Latency samples are in ns and are sorted by
 * emit_result; p50/p99/p99.9 are nearest-rank percentiles. */
void emit_open(const char *engine_name);
void emit_result(const char *name, uint64_t ops, uint64_t ns, double *samples, size_t n,
                 int no_rate, const char *notes_fmt, ...) __attribute__((format(printf, 7, 8)));
void emit_metric(const char *name, double value, const char *notes_fmt, ...)
    __attribute__((format(printf, 3, 4)));
void emit_option(int sync, const char *text);
void emit_close(void);

/* ---- workloads */
void run_engine_main(const engine *e, const char *parent);  /* workloads.c */
void run_engine_scale(const engine *e, const char *parent); /* workloads.c */
void run_s3(const char *parent);                            /* s3.c */
const char *bench_s3_endpoint(void); /* s3.c: the custom endpoint, or NULL */

/* ---- report (report.c): reads the children's result files. */
void report_add_file(const char *path, const char *engine, int run, const char *kind);
void report_write(const char *out_prefix, const char *machine_dir);

#endif /* BENCH_BENCH_H */
