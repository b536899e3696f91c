/*
 * fuzz_segment.c - libFuzzer target for the segment checker
 * (seg_file_check: header, then whole checksum-valid batches to the end).
 *
 * The input is written to a temporary file (created once, rewritten for
 * every input) and checked as segment number N, where N is read from the
 * input's own header (bytes 12..15) so the fuzzer spends its time on the
 * batches rather than on the header.
 */
#include "fixup.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[256];
static int fd = -1;

static void cleanup(void)
{
    if (fd >= 0)
        unlink(path);
}

static void run(const uint8_t *data, size_t size)
{
    if (fd < 0) {
        const char *t = getenv("TMPDIR");
        snprintf(path, sizeof path, "%s/s4kv-fuzz-seg-XXXXXX", t && *t ? t : "/tmp");
        fd = mkstemp(path);
        if (fd < 0)
            abort();
        atexit(cleanup);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    uint32_t no = size >= 16 ? get_u32(data + 12) : 1;
    char err[512];
    uint64_t records = 0;
    int rc = seg_file_check(path, no, size, &records, err, sizeof err);
    if (rc != 0 && !err[0])
        abort(); /* an error must say why */
    /* The same file checked to a shorter length (a committed prefix). */
    if (size > SEG_HDR + 1)
        (void)seg_file_check(path, no, size / 2, &records, err, sizeof err);
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
