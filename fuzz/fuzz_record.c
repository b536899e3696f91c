/*
 * fuzz_record.c - libFuzzer target for the record and batch decoders
 * (kv/record.c: rec_parse, batch_hdr_parse, seg_hdr_check).
 *
 * The input is read three ways: as a segment header, as one batch (header,
 * then `count` records inside the body), and as records back to back; once
 * as given and once with its checksums repaired (fixup.h). Every parsed view
 * must lie inside the input (checked here, so a decoder that returned a
 * pointer past the buffer aborts even where ASan would not notice).
 */
#include "fixup.h"

#include <stdlib.h>
#include <string.h>

static void check_view(const uint8_t *base, size_t n, const rec_view *r)
{
    const uint8_t *end = base + n;
    if (r->len < REC_HDR || r->len > n)
        abort();
    if (r->klen && (r->key < base || r->key + r->klen > end))
        abort();
    if (r->type == REC_PUT && r->slen && (r->val < base || r->val + r->slen > end))
        abort();
}

static void run(const uint8_t *buf, size_t size)
{
    const char *why = NULL;
    if (size >= SEG_HDR)
        (void)seg_hdr_check(buf, get_u32(buf + 12), &why);

    /* One batch: header then exactly count records in body bytes. */
    if (size >= BATCH_HDR) {
        uint32_t count;
        uint64_t body;
        if (batch_hdr_parse(buf, &count, &body) == 0 && body <= size - BATCH_HDR) {
            size_t off = BATCH_HDR, end = BATCH_HDR + (size_t)body;
            for (uint32_t i = 0; i < count && off < end; i++) {
                rec_view r;
                if (rec_parse(buf + off, end - off, &r, &why) != 0) {
                    if (!why)
                        abort();
                    break;
                }
                check_view(buf + off, end - off, &r);
                off += r.len;
            }
        }
    }

    /* Records back to back from offset 0. */
    size_t off = 0;
    while (off < size) {
        rec_view r;
        why = NULL;
        if (rec_parse(buf + off, size - off, &r, &why) != 0) {
            if (!why)
                abort(); /* a rejection must say why */
            break;
        }
        check_view(buf + off, size - off, &r);
        off += r.len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Exact-size heap copies so ASan sees any overread. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    run(buf, size);

    /* Repaired: records back to back, and the input as one batch. */
    size_t off = 0;
    while (off < size) {
        size_t n = fix_record(buf + off, size - off);
        if (!n)
            break;
        off += n;
    }
    run(buf, size);
    memcpy(buf, data, size);
    if (fix_batch(buf, size))
        run(buf, size);
    free(buf);
    return 0;
}
