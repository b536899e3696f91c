/*
 * format.h - the import/export record codecs of the s4kv command line.
 *
 * Three text-ish formats carry (key, value) byte-string pairs; for each one
 * the reader and the writer are exact inverses: reading what fmt_write wrote
 * gives back the same bytes, and writing what the reader read gives back the
 * same text, byte for byte (for input in the canonical form fmt_write emits).
 *
 *  nul    KEY NUL VALUE NUL, repeated. Neither field may contain a NUL byte:
 *         fmt_write refuses such a record (FMT_EDATA, naming the key) rather
 *         than write ambiguous output. The reader rejects input whose final
 *         record is incomplete. Positions are "record N (byte B)".
 *  tsv    KEY TAB VALUE LF per line. In both fields the bytes backslash, TAB,
 *         LF, CR and NUL are written as the escapes \\ \t \n \r \0; every
 *         other byte is written raw. The reader rejects unknown escapes, a
 *         lone trailing backslash, a missing TAB, extra TABs, a raw CR (it
 *         almost always means CRLF line endings; write \r), and a last line
 *         without its LF (truncated input). A raw NUL byte is accepted as
 *         data. Positions are "line N".
 *  jsonl  one JSON object per line, exactly
 *             {"key": "K", "value": "V"}
 *         where K and V are JSON strings as jansson escapes them (", \ and
 *         control bytes escaped, \u0000 for NUL, other UTF-8 raw). A field
 *         whose bytes are not valid UTF-8 is written as "key_b64" / "value_b64"
 *         instead, holding standard base64 with padding (RFC 4648 section 4).
 *         The reader takes the members in any order with any JSON whitespace,
 *         requires exactly one of key/key_b64 and one of value/value_b64,
 *         rejects other members, duplicates, non-string values, invalid or
 *         non-canonical base64, and blank lines; the last line may lack its
 *         LF. Positions are "line N".
 *
 * Every reader rejects an empty key (s4kv keys are at least one byte).
 * Error messages are one line, without the "s4kv: " prefix, and start with
 * the position, e.g. "line 7: unknown escape '\q'".
 */
#ifndef S4KV_FORMAT_H
#define S4KV_FORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum fmt_format {
    FMT_JSONL = 0,
    FMT_TSV = 1,
    FMT_NUL = 2,
} fmt_format;

/* Return codes (all negative; 0 is success). */
enum {
    FMT_EDATA = -1,  /* malformed input, or a record the format cannot carry */
    FMT_EIO = -2,    /* reading or writing the FILE failed (errno names why) */
    FMT_ENOMEM = -3, /* allocation failed */
};

/* Parses a format name ("jsonl", "tsv", "nul"). Returns 0 and sets *out, or
 * FMT_EDATA for an unknown name. */
int fmt_parse_name(const char *name, fmt_format *out);

/* The name of a format ("jsonl", ...); a static string. */
const char *fmt_name(fmt_format f);

/* ---- Writer. */

/* Writes one record to out in format f. Returns 0; FMT_EDATA when the format
 * cannot represent the record (nul: a NUL byte in the key or value; the
 * message names the key); FMT_EIO when a write to out fails (errno is left as
 * the stdio call set it, e.g. EPIPE); FMT_ENOMEM. Nothing is written for a
 * FMT_EDATA record. err (may be NULL) gets a one-line message on failure. */
int fmt_write(FILE *out, fmt_format f, const void *key, size_t klen,
              const void *val, size_t vlen, char *err, size_t errlen);

/* Writes one field with the tsv escaping (no separator). Used by `s4kv keys`
 * and `s4kv scan`. Returns 0 or FMT_EIO. */
int fmt_write_tsv_field(FILE *out, const void *buf, size_t len);

/* ---- Reader. */

typedef struct fmt_reader fmt_reader;

/* Creates a streaming reader of format f over in (borrowed: the caller keeps
 * it open while the reader lives and closes it afterwards). Returns NULL when
 * out of memory. Free with fmt_reader_free. */
fmt_reader *fmt_reader_new(FILE *in, fmt_format f);

/* Reads the next record. Returns 1 with *key, *klen, *val, *vlen set, 0 at the
 * clean end of input, or FMT_EDATA (malformed input: err says where and why),
 * FMT_EIO (reading failed), FMT_ENOMEM. The key and value buffers belong to
 * the reader and stay valid until the next call to fmt_reader_next or
 * fmt_reader_free; each has a NUL byte past its end (not counted). After an
 * error the reader stays in the error state and returns the same code. */
int fmt_reader_next(fmt_reader *r, const uint8_t **key, size_t *klen,
                    const uint8_t **val, size_t *vlen, char *err,
                    size_t errlen);

/* Records returned so far. */
uint64_t fmt_reader_records(const fmt_reader *r);
/* Input bytes consumed so far. */
uint64_t fmt_reader_bytes(const fmt_reader *r);
/* Writes the position of the record last returned (or of the error) into buf,
 * e.g. "line 12" or "record 3 (byte 40)". */
void fmt_reader_where(const fmt_reader *r, char *buf, size_t len);

/* Frees the reader (not the FILE). NULL is a no-op. */
void fmt_reader_free(fmt_reader *r);

/* ---- Helpers. */

/* Writes a printable, quoted form of the bytes (for messages) into buf:
 * 'abc', with \\ \t \n \r \0 \' and \xHH escapes, cut to about 60 bytes of
 * input with "..." after the quote when longer. Always NUL-terminates. Returns
 * buf. */
char *fmt_quote(char *buf, size_t cap, const void *bytes, size_t len);

/* Standard base64 with padding. fmt_b64_encode returns a malloc'd
 * NUL-terminated string (free with free) and its length in *outlen, or NULL
 * when out of memory. fmt_b64_decode returns a malloc'd buffer (one NUL byte
 * past the end, not counted) and *outlen, or NULL with *bad = 1 when the
 * input is not canonical base64 (length not a multiple of 4, a byte outside
 * the alphabet, misplaced padding, non-zero padding bits), or NULL with
 * *bad = 0 when out of memory. */
char *fmt_b64_encode(const void *buf, size_t len, size_t *outlen);
uint8_t *fmt_b64_decode(const char *s, size_t len, size_t *outlen, int *bad);

/* 1 if the bytes are valid UTF-8 as JSON strings need it (no overlong forms,
 * no surrogates, nothing past U+10FFFF), else 0. */
int fmt_utf8_valid(const void *buf, size_t len);

#endif /* S4KV_FORMAT_H */
