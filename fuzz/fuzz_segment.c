/*
 * fuzz_segment.c - libFuzzer target for the segment scanner (kv/scan.c
 * seg_scan, the code behind recovery, verify and seg_file_check: header,
 * then whole checksum-valid batches to the end, torn tails, salvage of the
 * records of a damaged batch in the middle).
 *
 * The input is the segment. It is read through an in-memory vfs (open,
 * pread and fsize over the input buffer), not a file: a temporary file
 * rewritten for every input ran at about 100 executions/s, the buffer at
 * thousands. The checks are seg_file_check's (header by seg_hdr_check with
 * the number from the input's own header, bytes 12..15, so the fuzzer spends
 * its time on the batches; then seg_scan to the end), done here over the vfs
 * because seg_file_check opens a path with the POSIX vfs. The scan runs on
 * the whole input and on its first half (a committed prefix), with and
 * without search_past_bad, on the input as given and with its checksums
 * repaired (fixup.h). Every record passed to the callback must lie inside
 * the scanned length, and an error must say why.
 */
#include "fixup.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MEM_FD 7

static const uint8_t *mem;
static size_t mem_len;

static int m_open(vfs *v, const char *path, int flags, int mode)
{
    (void)v, (void)path, (void)flags, (void)mode;
    return MEM_FD;
}

static int m_close(vfs *v, int fd)
{
    (void)v;
    return fd == MEM_FD ? 0 : -EBADF;
}

static ssize_t m_pread(vfs *v, int fd, void *buf, size_t n, uint64_t off)
{
    (void)v;
    if (fd != MEM_FD)
        return -EBADF;
    if (off >= mem_len)
        return 0;
    size_t k = mem_len - (size_t)off < n ? mem_len - (size_t)off : n;
    memcpy(buf, mem + off, k);
    return (ssize_t)k;
}

static int m_fsize(vfs *v, int fd, uint64_t *size)
{
    (void)v, (void)fd;
    *size = mem_len;
    return 0;
}

static vfs mem_vfs = {m_open, m_close, m_pread, NULL, NULL, NULL, m_fsize, NULL, NULL, NULL,
                      NULL, NULL};

typedef struct seen {
    uint64_t len; /* scanned length */
    uint64_t records;
} seen;

static int on_rec(void *ctx, const segment *s, uint64_t off, const rec_view *r)
{
    seen *x = ctx;
    (void)s;
    if (off < SEG_HDR || r->len < REC_HDR || off + r->len > x->len)
        abort(); /* a record outside the scanned bytes */
    x->records++;
    return 0;
}

static void quiet_log(void *ctx, const char *line)
{
    (void)ctx, (void)line;
}

static void scan(const uint8_t *data, size_t size, uint64_t len, int past_bad)
{
    mem = data;
    mem_len = size;
    uint32_t no = size >= 16 ? get_u32(data + 12) : 1;
    const char *why = NULL;
    if (len < SEG_HDR || seg_hdr_check(data, no, &why) != 0) {
        if (len >= SEG_HDR && !why)
            abort(); /* a refused header must say why */
        return;
    }
    s4kv_db db;
    memset(&db, 0, sizeof db);
    db.v = &mem_vfs;
    db.opt.log = quiet_log;
    segment s = {.no = no, .fd = MEM_FD, .sealed = 1, .size = len};
    seen x = {len, 0};
    scan_result res;
    char err[512] = "";
    int rc = seg_scan(&db, &s, SEG_HDR, past_bad, on_rec, &x, NULL, &res, err, sizeof err);
    if (rc != 0 && !err[0])
        abort(); /* an error must say why */
    if (rc == 0 && (res.end < SEG_HDR || res.end > len || res.records != x.records))
        abort();
}

static void run(const uint8_t *data, size_t size)
{
    scan(data, size, size, 1);
    scan(data, size, size, 0);
    if (size > SEG_HDR + 1)
        scan(data, size, size / 2, 1); /* a committed prefix */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size);
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    fix_segment(buf, size);
    run(buf, size);
    free(buf);
    return 0;
}
