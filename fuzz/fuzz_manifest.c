/*
 * fuzz_manifest.c - libFuzzer target for the manifest parser
 * (manifest_parse, kv/manifest.c), on the input as given and with its
 * checksum line repaired (fixup.h). A manifest that parses must format
 * (manifest_format) to text that parses to the same fields.
 */
#include "fixup.h"

#include <stdlib.h>
#include <string.h>

static void same(const manifest *a, const manifest *b)
{
    if (a->id != b->id || a->generation != b->generation ||
        a->next_segment != b->next_segment || a->nseg != b->nseg ||
        a->nretired != b->nretired || !a->checkpoint != !b->checkpoint ||
        (a->checkpoint && strcmp(a->checkpoint, b->checkpoint) != 0))
        abort();
    for (size_t i = 0; i < a->nseg; i++)
        if (a->segno[i] != b->segno[i] || a->sealed_len[i] != b->sealed_len[i])
            abort();
    for (size_t i = 0; i < a->nretired; i++)
        if (strcmp(a->retired[i].name, b->retired[i].name) != 0 ||
            a->retired[i].generation != b->retired[i].generation ||
            a->retired[i].time != b->retired[i].time)
            abort();
}

static void run(const uint8_t *buf, size_t size)
{
    manifest m;
    memset(&m, 0, sizeof m);
    char err[512];
    err[0] = 0;
    int rc = manifest_parse((const char *)buf, size, "MANIFEST", &m, err, sizeof err);
    if (rc != 0) {
        if (!err[0])
            abort();
        return;
    }
    char *text = NULL;
    size_t tlen = 0;
    if (manifest_format(&m, &text, &tlen) == 0) {
        manifest m2;
        memset(&m2, 0, sizeof m2);
        if (manifest_parse(text, tlen, "MANIFEST", &m2, err, sizeof err) != 0)
            abort(); /* what we wrote must parse */
        same(&m, &m2);
        manifest_free(&m2);
        free(text);
    }
    manifest_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    run(buf, size);
    fix_manifest(buf, size);
    run(buf, size);
    free(buf);
    return 0;
}
