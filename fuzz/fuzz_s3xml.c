/*
 * fuzz_s3xml.c - libFuzzer target for the S3 response parsers
 * (sync/s3xml.c): Error documents, ListObjectsV2 pages (with and without
 * url encoding), InitiateMultipartUploadResult and DeleteResult. The body
 * is whatever a server (or anything between it and us) sent.
 */
#include "s3_internal.h"

#include <stdlib.h>
#include <string.h>

static void bounded(const char *s, size_t cap)
{
    if (strnlen(s, cap) >= cap)
        abort(); /* truncated, but always NUL-terminated */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    char code[64], msg[256], key[128], err[512];

    (void)s3xml_parse_error(buf, size, code, sizeof code, msg, sizeof msg);
    bounded(code, sizeof code);
    bounded(msg, sizeof msg);

    s3_object *objs = NULL;
    size_t n = 0, cap = 0;
    int truncated = 0;
    char *next = NULL;
    err[0] = 0;
    int rc = s3xml_parse_list(buf, size, &objs, &n, &cap, &truncated, &next, err, sizeof err);
    if (rc != 0 && !err[0])
        abort();
    for (size_t i = 0; i < n; i++)
        if (!objs[i].key)
            abort();
    s3_objects_free(objs, n);
    free(next);

    char *upload = NULL;
    if (s3xml_parse_upload_id(buf, size, &upload, err, sizeof err) == 0 && !upload)
        abort();
    free(upload);

    size_t nerr = 0;
    (void)s3xml_parse_delete_result(buf, size, &nerr, key, sizeof key, code, sizeof code, msg,
                                    sizeof msg, err, sizeof err);
    free(buf);
    return 0;
}
