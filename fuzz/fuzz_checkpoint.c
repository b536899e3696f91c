/*
 * fuzz_checkpoint.c - libFuzzer target for the index checkpoint loader
 * (ckpt_decode, index/checkpoint.c), on the input as given and with its
 * header and trailer checksums repaired (fixup.h). A checkpoint that loads
 * must re-encode (ckpt_encode) to one that loads with the same entries. The
 * two-thread load (ckpt_par_load_min 1) must give the one-thread verdict,
 * the same reason word for word or the same number of keys, on inputs whose
 * size is a multiple of 8.
 */
#include "fixup.h"
#include "keydir.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ckpt_decode with the two-thread load from par_min entries. */
static int decode_par(size_t par_min, const uint8_t *buf, size_t size, ckpt_header *h,
                      keydir **kd, char *err, size_t errlen)
{
    size_t old = ckpt_par_load_min;
    ckpt_par_load_min = par_min;
    int rc = ckpt_decode(buf, size, NULL, h, kd, err, errlen);
    ckpt_par_load_min = old;
    return rc;
}

static void run(const uint8_t *buf, size_t size)
{
    ckpt_header h, hp;
    keydir *kd = NULL, *kdp = NULL;
    char err[512], errp[512];
    err[0] = errp[0] = 0;
    int rc = decode_par(SIZE_MAX, buf, size, &h, &kd, err, sizeof err);
    /* the two-thread load agrees: the same verdict, reason and keys (for
     * one input size in 8: starting its thread costs ten times the load) */
    if ((size & 7) == 0) {
        int rcp = decode_par(1, buf, size, &hp, &kdp, errp, sizeof errp);
        if (rc != rcp || (rc != 0 && strcmp(err, errp) != 0) ||
            (rc == 0 && keydir_count(kd) != keydir_count(kdp)))
            abort();
        keydir_free(kdp);
    }
    if (rc != 0) {
        if (!err[0] || kd)
            abort(); /* a rejection says why and leaves *out untouched */
        return;
    }
    uint8_t *out = NULL;
    size_t olen = 0;
    ckpt_header h2 = h;
    if (ckpt_encode(kd, &h2, &out, &olen) == 0) {
        keydir *kd2 = NULL;
        ckpt_header h3;
        if (ckpt_decode(out, olen, NULL, &h3, &kd2, err, sizeof err) != 0)
            abort(); /* what we wrote must load */
        if (keydir_count(kd2) != keydir_count(kd) || h3.count != keydir_count(kd))
            abort();
        keydir_free(kd2);
        free(out);
    }
    keydir_free(kd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    run(buf, size);
    fix_checkpoint(buf, size);
    run(buf, size);
    free(buf);
    return 0;
}
