/*
 * sigv4.h - AWS Signature Version 4 (header and presigned-query forms).
 *
 * Source: AWS General Reference, "Signature Version 4 signing process"
 * (create a canonical request, a string to sign, the signing key by HMAC
 * chain, the signature), and the S3 specifics of "Authenticating Requests
 * (AWS Signature Version 4)" in the Amazon S3 API Reference: no URI path
 * normalisation, every path segment URI-encoded once, and the
 * x-amz-content-sha256 header. Verified against the AWS signing test suite
 * (../shared/testdata/sigv4, from awslabs/aws-c-auth). HMAC-SHA256 and
 * SHA-256 come from OpenSSL.
 *
 * Pure functions: no I/O, no global state. All strings are NUL-terminated
 * UTF-8; every returned string is malloc'd and owned by the caller (free()).
 */
#ifndef S4KV_SIGV4_H
#define S4KV_SIGV4_H

#include <stddef.h>
#include <stdint.h>

typedef struct sigv4_header {
    const char *name;  /* as given; canonicalised (lower-cased, trimmed) by the signer */
    const char *value;
} sigv4_header;

typedef struct sigv4_request {
    const char *method;        /* "GET", "PUT", ... */
    const char *path;          /* raw path as sent, before encoding, e.g. "/bucket/my key.txt";
                                  with `encoded_path` set it is already URI-encoded; must
                                  start with '/' (NULL or "" means "/") */
    int encoded_path;          /* 1: `path` is already encoded as it goes on the wire; it is
                                  decoded segment by segment (so %2F stays inside its
                                  segment) and re-encoded canonically */
    const char *query;         /* raw query string without '?', e.g. "list-type=2&prefix=a%2Fb"
                                  or "uploads" (a valueless parameter) or NULL; parameters are
                                  decoded ('+' is a literal plus), re-encoded per SigV4 and
                                  sorted by the signer; a malformed %XX is an error */
    const sigv4_header *headers; /* must include Host; every header given is signed */
    size_t nheaders;
    const char *payload_sha256; /* lowercase hex SHA-256 of the body, or "UNSIGNED-PAYLOAD";
                                   NULL = SHA-256 of the empty string */
} sigv4_request;

typedef struct sigv4_credentials {
    const char *access_key_id;
    const char *secret_access_key;
    const char *session_token;  /* NULL when not using temporary credentials */
} sigv4_credentials;

typedef struct sigv4_params {
    const char *region;   /* "us-east-1" */
    const char *service;  /* "s3" */
    const char *amz_date; /* "20150830T123600Z" (ISO 8601 basic, UTC) */
    int normalize_path;   /* 0 for S3 (no dot-segment removal, no slash merging) */
    int sign_body;        /* header form: 1 adds x-amz-content-sha256 (= the payload hash)
                             to the signed headers (S3). The query form never adds it: its
                             payload hash is only in the canonical request (S3 presigned
                             URLs pass "UNSIGNED-PAYLOAD"), as the test suite has it */
    int omit_session_token; /* 1 leaves the session token out of the canonical request and
                               adds it after signing: query form, X-Amz-Security-Token after
                               X-Amz-Signature; header form, an unsigned extra header.
                               0 (what S3 wants) signs it in both forms */
    uint32_t expires;     /* query form only: X-Amz-Expires in seconds, 1..604800 */
} sigv4_params;

typedef struct sigv4_result {
    char *canonical_request;
    char *string_to_sign;
    char *signature;      /* 64 lowercase hex digits */
    /* Header form: the value of the Authorization header. Query form: the full
     * query string to send without '?': the canonical query string (original
     * parameters and X-Amz-*, encoded and sorted), then "&X-Amz-Signature=..."
     * (and "&X-Amz-Security-Token=..." with omit_session_token). */
    char *authorization;
    /* Header form: headers the caller must add, "X-Amz-Date: ..." and, when
     * applicable, "X-Amz-Security-Token: ..." and "x-amz-content-sha256: ...",
     * as "Name: value" strings (count in nextra), in that order. A header the
     * caller already passed with the same value is not repeated here; with a
     * different value signing fails. Query form: none. */
    char *extra[3];
    size_t nextra;
} sigv4_result;

/* Signs with the Authorization header. Returns 0, or -1 with errno ENOMEM or
 * EINVAL (a malformed request or parameter: the message names the field,
 * never a secret) and *res zeroed. */
int sigv4_sign_header(const sigv4_request *req, const sigv4_credentials *cred,
                      const sigv4_params *p, sigv4_result *res, char *err, size_t errlen);
/* Presigns in the query string (X-Amz-Algorithm ... X-Amz-Signature); the
 * query may not already hold any X-Amz-* presigning parameter. */
int sigv4_sign_query(const sigv4_request *req, const sigv4_credentials *cred,
                     const sigv4_params *p, sigv4_result *res, char *err, size_t errlen);
void sigv4_result_free(sigv4_result *res);

/* Lowercase hex SHA-256 of buf (65 bytes incl. NUL written to out). */
void sigv4_sha256_hex(const void *buf, size_t len, char out[65]);
/* URI-encodes per SigV4: unreserved A-Z a-z 0-9 - . _ ~ kept, every other
 * byte %XX (uppercase); '/' kept when keep_slash. Returns malloc'd string. */
char *sigv4_uri_encode(const char *s, size_t len, int keep_slash);
/* Formats t (Unix seconds, UTC) as "YYYYMMDDTHHMMSSZ" into out[17]; t is
 * clamped to years 1970..9999. */
void sigv4_amz_date(int64_t t, char out[17]);

#endif
