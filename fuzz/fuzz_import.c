/*
 * fuzz_import.c - libFuzzer target for the import readers (tools/format.c:
 * jsonl, tsv, nul). The first input byte picks the format, the rest is the
 * stream. Every record read must be writable again in the same format, and
 * reading that output must give back the same records (format.h: the reader
 * and writer are inverses).
 */
#include "format.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    fmt_format f = (fmt_format)(data[0] % 3);
    /* fmemopen of a zero-length buffer fails: give it an exact-size copy. */
    size_t n = size - 1;
    char *in = malloc(n ? n : 1);
    if (!in)
        return 0;
    memcpy(in, data + 1, n);
    FILE *fin = n ? fmemopen(in, n, "r") : fopen("/dev/null", "r");
    if (!fin) {
        free(in);
        return 0;
    }
    char *obuf = NULL;
    size_t olen = 0;
    FILE *out = open_memstream(&obuf, &olen);
    fmt_reader *r = fmt_reader_new(fin, f);
    char err[512], where[64];
    size_t nrec = 0;
    if (r && out) {
        const uint8_t *k, *v;
        size_t kl, vl;
        int rc;
        while ((rc = fmt_reader_next(r, &k, &kl, &v, &vl, err, sizeof err)) == 1) {
            if (kl == 0 || k[kl] != 0 || v[vl] != 0)
                abort(); /* keys are never empty; buffers NUL-terminated */
            if (fmt_write(out, f, k, kl, v, vl, err, sizeof err) == 0)
                nrec++;
            else if (f != FMT_NUL)
                abort(); /* only nul refuses records (NUL bytes) */
        }
        fmt_reader_where(r, where, sizeof where);
        if (rc < 0 && fmt_reader_next(r, &k, &kl, &v, &vl, err, sizeof err) != rc)
            abort(); /* the error state sticks */
    }
    fmt_reader_free(r);
    fclose(fin);
    /* Read back what was written: the same number of records, no error. */
    if (out && fflush(out) == 0) {
        FILE *back = olen ? fmemopen(obuf, olen, "r") : NULL;
        if (back) {
            fmt_reader *r2 = fmt_reader_new(back, f);
            const uint8_t *k, *v;
            size_t kl, vl, m = 0;
            int rc = 0;
            while (r2 && (rc = fmt_reader_next(r2, &k, &kl, &v, &vl, err, sizeof err)) == 1)
                m++;
            if (r2 && (rc != 0 || m != nrec))
                abort();
            fmt_reader_free(r2);
            fclose(back);
        }
    }
    if (out)
        fclose(out);
    free(obuf);
    free(in);
    return 0;
}
