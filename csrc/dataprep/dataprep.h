/* Data-preparation core (pure C, no Python): corpus readers, JSON string-field extraction,
 * UTF-8 validation/repair, Unicode-script statistics, and the threaded task runner that turns
 * one input (or one byte range of one input) into a token part file and a per-document metadata
 * part file. The Python driver (dataprep/build.py) plans tasks, runs them, and merges parts.
 *
 * Thread contract: every function here is reentrant; dp_run_task starts and joins its own
 * pthreads and touches nothing global.
 */
#ifndef RWKV5_DATAPREP_H
#define RWKV5_DATAPREP_H

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- record status / skip reasons */
enum {
    DP_OK = 0,
    DP_MALFORMED_JSON, /* the line is not one JSON object (syntax, nesting > 512, trailing data) */
    DP_MISSING_FIELD,  /* the object has no top-level text field */
    DP_FIELD_NOT_STRING, /* the text field is a number/object/array/null/bool */
    DP_INVALID_UTF8,     /* the text has bytes that are not UTF-8 (and repair is off) */
    DP_LONE_SURROGATE,   /* a \uD800-\uDFFF escape without its pair (and repair is off) */
    DP_EMPTY,            /* the text is empty: skipped always (make_data would emit a bare 0) */
    DP_N_STATUS
};
extern const char *const dp_status_names[DP_N_STATUS];

/* ---------------------------------------------------------------- UTF-8 */
/* Copy src to dst, validating UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Invalid input:
 * with repair=0 stop and return (size_t)-1; with repair=1 write U+FFFD for each maximal invalid
 * subpart (the same substitution as Python's bytes.decode("utf-8", "replace")) and count it in
 * *n_bad. dst needs room for 3*n bytes when repairing, n otherwise. Returns bytes written. */
size_t dp_utf8_copy(uint8_t *dst, const uint8_t *src, size_t n, int repair, uint64_t *n_bad);
/* The sequence at s[0] (n > 0 bytes available): its length 1..4 when valid, else 0 with *sub =
 * the length of its maximal invalid subpart (what one U+FFFD replaces). */
int dp_utf8_seq(const uint8_t *s, size_t n, size_t *sub);

/* ---------------------------------------------------------------- scripts */
enum {
    DP_SCRIPT_COMMON = 0, /* no letters at all (digits, punctuation, symbols, emoji) */
    DP_SCRIPT_LATIN,
    DP_SCRIPT_GREEK,
    DP_SCRIPT_CYRILLIC,
    DP_SCRIPT_ARMENIAN,
    DP_SCRIPT_HEBREW,
    DP_SCRIPT_ARABIC,
    DP_SCRIPT_DEVANAGARI,
    DP_SCRIPT_BENGALI,
    DP_SCRIPT_TAMIL,
    DP_SCRIPT_THAI,
    DP_SCRIPT_GEORGIAN,
    DP_SCRIPT_HANGUL,
    DP_SCRIPT_KANA,
    DP_SCRIPT_HAN,
    DP_SCRIPT_OTHER, /* letters of any other script */
    DP_N_SCRIPTS
};
extern const char *const dp_script_names[DP_N_SCRIPTS];
/* Script of one code point (DP_SCRIPT_COMMON for non-letters). */
int dp_script_of(uint32_t cp);
/* Dominant script of valid UTF-8 text: the script with most letters (ties: lower id);
 * DP_SCRIPT_COMMON when there are no letters. */
int dp_dominant_script(const uint8_t *s, size_t n);
/* One pass over s: validate UTF-8 (as dp_utf8_copy) and find the dominant script.
 * Returns the script id, or -1 when s is not valid UTF-8. */
int dp_text_scan(const uint8_t *s, size_t n);

/* 128-bit non-cryptographic hash of a byte string (exact-duplicate detection). */
void dp_hash128(const uint8_t *s, size_t n, uint64_t out[2]);

/* CRC-32C (Castagnoli), software table. crc = dp_crc32c(0, buf, n) for a fresh checksum. */
uint32_t dp_crc32c(uint32_t crc, const uint8_t *buf, size_t n);

/* ---------------------------------------------------------------- JSON */
/* Longest language tag kept (bytes of UTF-8): longer --lang-field values are cut to this, at a
 * character boundary, so "a value of 300 bytes" and its first 63 bytes count as one language. */
#define DP_LANG_MAX 63

/* Extract the decoded top-level string member `field` (last occurrence wins, like Python's json)
 * of the JSON object in line[0..n). Text goes to out (room for 3*n bytes); *out_len receives its
 * length. If lang_field is not NULL its decoded string value goes to lang (NUL-terminated; "" when
 * absent or not a string), cut to at most DP_LANG_MAX bytes at a UTF-8 character boundary.
 * *n_repaired counts U+FFFD substitutions. The whole line is checked to be exactly one well-formed
 * JSON object; a syntax error anywhere wins over a missing/non-string field, which wins over bad
 * UTF-8 in the text. *script (if not NULL) receives the text's dominant script (dp_text_scan).
 * Returns DP_OK or one of the status codes above. */
int dp_json_extract(const uint8_t *line, size_t n, const char *field, const char *lang_field,
                    int repair, uint8_t *out, size_t *out_len, char lang[64], uint64_t *n_repaired,
                    int *script);

/* The top-level member names of the JSON object in line[0..n), as written (quoted, escapes
 * kept, each cut to 40 bytes), joined by ", " into out (NUL-terminated, at most cap bytes; ", ..."
 * marks names left out). Returns the number of members seen. For error messages. */
size_t dp_json_keys(const uint8_t *line, size_t n, char *out, size_t cap);

/* ---------------------------------------------------------------- inputs: codec x record format */
/* An input is a codec (how the file's bytes are stored: plain, zstd, ...) around a record format
 * (how documents are found in the decoded bytes: JSON lines, a text file, blank-line blocks).
 * Each is one small table; the Python driver reads both (the binding exports them as
 * _dataprep.CODECS and _dataprep.RECORD_FORMATS) instead of copying their names and numbers.
 * Adding one is a row and its functions. */

typedef struct dp_source dp_source; /* an open input file and its decoder state (dp_codec.c) */

typedef struct {
    const char *name;   /* "plain", "zstd", ... (what options and the manifest say) */
    const char *suffix; /* the file-name suffix, e.g. ".zst" ("" for plain) */
    const char *magic;  /* the first bytes of every file of this codec ("" for plain) */
    size_t magic_len;
    /* NULL, or a further check of a file's first bytes (n of them) that begin with the magic:
     * 1 when they are this codec's (for a magic that text may also begin with) */
    int (*sniff)(const uint8_t *head, size_t n);
    /* Set up the decoder of s (its file is open at offset 0). 0, or -1 with err. */
    int (*open)(dp_source *s, char *err, size_t errlen);
    /* Decode up to cap bytes to dst; *got = 0 at the end of the input. 0, or -1 with err
     * naming the file and the offset (in the compressed file) of the damage. */
    int (*read)(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err, size_t errlen);
    void (*close)(dp_source *s);
} dp_codec;

enum { DP_CODEC_PLAIN = 0, DP_CODEC_ZSTD, DP_CODEC_GZIP, DP_CODEC_BZIP2, DP_CODEC_XZ, DP_N_CODECS };
/* Bytes of a file's head that dp_codec_detect may look at. */
#define DP_CODEC_HEAD 16
extern const dp_codec dp_codecs[DP_N_CODECS];

/* The codec whose magic begins head[0..n) (the file's first min(size, DP_CODEC_HEAD) bytes), or
 * -1 (then the file is plain or of a kind we do not know). */
int dp_codec_detect(const uint8_t *head, size_t n);

/* Open path through codec `codec`. A plain file may be read as the byte range [start, end)
 * (end = UINT64_MAX: to EOF); a compressed one only whole (start = 0, end = UINT64_MAX).
 * Returns NULL with err set on failure. */
dp_source *dp_source_open(const char *path, int codec, uint64_t start, uint64_t end, char *err,
                          size_t errlen);
/* Read up to cap decoded bytes; *got = 0 means the end of the input. 0, or -1 with err. */
int dp_source_read(dp_source *s, uint8_t *dst, size_t cap, size_t *got, char *err, size_t errlen);
void dp_source_close(dp_source *s);

struct dp_task_opts;
typedef struct dp_records
    dp_records; /* the record being assembled and the batch it goes to (dp_task.c) */

typedef struct {
    const char *name; /* "jsonl", "txt-file", "txt-blank" */
    int json;         /* 1: records are JSON objects (text_field / lang_field apply) */
    int splittable;   /* 1: a plain file may be cut into byte ranges right after a '\n' */
    /* One input line (1-based number lineno, without its '\n'): add records to r. 0, or -1
     * (out of memory). */
    int (*line)(dp_records *r, const uint8_t *line, size_t n, uint64_t lineno);
    /* The end of the input (last_nl: the last line ended with '\n'): add what is left. */
    int (*end)(dp_records *r, int last_nl);
    /* The text of one record rec[0..n): *text and *text_len point at it (into rec, or into
     * scratch, which has room for 3n+1 bytes), lang (DP_LANG_MAX+1 bytes) gets its language, or
     * "" for none; *line_add: how many lines into the record the problem is (for a bad record).
     * Returns DP_OK or a status. */
    int (*text)(const struct dp_task_opts *opt, const uint8_t *rec, size_t n, uint8_t *scratch,
                const uint8_t **text, size_t *text_len, char *lang, uint64_t *n_repaired,
                int *script, uint64_t *line_add);
} dp_record_format;

enum { DP_REC_JSONL = 0, DP_REC_TXT_FILE, DP_REC_TXT_BLANK, DP_N_RECORD_FORMATS };
extern const dp_record_format dp_record_formats[DP_N_RECORD_FORMATS];

/* ---------------------------------------------------------------- task runner */

/* Tokenizer callback: write the ids of text[0..n) to out (room for n ids), return their count. */
typedef size_t (*dp_encode_fn)(const void *ctx, const uint8_t *text, size_t n, uint16_t *out);

/* One record of the metadata part file, 32 bytes, little-endian, one per kept document. */
typedef struct {
    uint64_t n_bytes;  /* UTF-8 bytes of the document text */
    uint64_t hash[2];  /* dp_hash128 of the text */
    uint32_t n_tokens; /* tokens written for it, including the trailing 0 */
    uint16_t lang;     /* index into the task's language table (0 = "" / none) */
    uint8_t script;    /* dominant script */
    uint8_t repaired;  /* 1 if U+FFFD substitutions were made */
} dp_doc_meta;

typedef struct dp_task_opts {
    const char *path;
    int codec;         /* index into dp_codecs */
    int record_format; /* index into dp_record_formats */
    uint64_t start,
        end; /* byte range of a plain file (lines starting in it); end = UINT64_MAX: to EOF */
    const char *text_field; /* JSONL only */
    const char *lang_field; /* JSONL only; NULL = none */
    const char *lang;       /* NULL, or the language of every document (e.g. from the file's path),
                             * at most DP_LANG_MAX bytes; it replaces lang_field's values */
    int repair_utf8;        /* 1: replace invalid UTF-8 / lone surrogates with U+FFFD and keep */
    int fail_fast;          /* 1: the first bad record ends the task with an error */
    int n_threads;          /* tokenizer worker threads, >= 1 */
    size_t batch_bytes;     /* input bytes per batch handed to a worker (0: 1 MiB) */
    dp_encode_fn encode;
    const void *encode_ctx;
    const char *tok_path;  /* uint16 tokens of kept documents, each followed by 0 */
    const char *meta_path; /* dp_doc_meta records */
    int fsync;             /* 1: fsync the parts before returning (not needed for resume: the
                            * driver re-checks part sizes and SHA-256 against the record) */
    volatile int *cancel;  /* optional: set non-zero from outside to stop early */
} dp_task_opts;

/* Room for an error message: a path of up to PATH_MAX (4096) bytes and the reason after it. */
#define DP_ERR_LEN 8192

#define DP_MAX_LISTED 100 /* = MAX_LISTED in build.py: the run lists the first 100 overall */
/* Distinct language names one task tells apart (ids are uint16 in dp_doc_meta); from the
 * 65,535th on, every new name gets the last id, named "(more languages)". */
#define DP_MAX_LANGS 65536

typedef struct {
    uint64_t lines;         /* input lines seen (JSONL/TXT) */
    uint64_t docs;          /* documents kept */
    uint64_t tokens;        /* tokens written, including the 0 per document */
    uint64_t text_bytes;    /* UTF-8 bytes of kept texts */
    uint64_t input_bytes;   /* bytes read (decompressed bytes for .zst) */
    uint64_t blank_lines;   /* whitespace-only JSONL lines (no record there) */
    uint64_t repaired_docs; /* documents kept with U+FFFD substitutions */
    uint64_t skipped[DP_N_STATUS];
    int n_listed; /* first skipped records: local 1-based line and status */
    uint64_t listed_line[DP_MAX_LISTED];
    int listed_status[DP_MAX_LISTED];
    int n_langs; /* language table, in order of first appearance; langs[0] = "" */
    char (*langs)[DP_LANG_MAX + 1];
    char err[DP_ERR_LEN]; /* message when dp_run_task returns non-zero */
} dp_task_result;

/* Run one task. Returns 0, or -1 with result->err set (I/O error, zstd error, bad record in
 * fail-fast mode, out of memory). Output files are written at the given paths (the caller
 * renames them into place); on error they may be partial and must be discarded. */
int dp_run_task(const dp_task_opts *opt, dp_task_result *result);
void dp_task_result_free(dp_task_result *result);

/* Append ranges of source files to the open file descriptor out_fd: ranges is (k, 3) int64
 * rows (source index, byte offset, byte length). Returns 0 or -1 with err set. */
int dp_copy_ranges(int out_fd, const char *const *src_paths, int n_src, const int64_t *ranges,
                   size_t k, char *err, size_t errlen);

/* ---------------------------------------------------------------- in-memory texts (dp_texts.c) */
typedef struct {
    const uint8_t *data; /* the texts' bytes */
    const int64_t
        *offsets; /* n + 1 non-decreasing offsets: text i is data[offsets[i], offsets[i+1]) */
    size_t n;
    const uint16_t *lang; /* per text: language id in the caller's table; NULL = all 0 */
    int repair_utf8;      /* as dp_task_opts */
    int n_threads;        /* 1..1024, the calling thread included */
    dp_encode_fn encode;
    const void *encode_ctx;
    int tok_fd, meta_fd;  /* the parts are appended here (tokens + 0 per document; dp_doc_meta) */
    volatile int *cancel; /* optional: non-zero stops the batch ("cancelled") */
} dp_texts_opts;

typedef struct {
    uint64_t docs, tokens, text_bytes, repaired_docs;
} dp_texts_result;

/* Tokenize the texts whose status[i] is DP_OK on entry (the caller marks the records it already
 * found bad) exactly as a plain-text record of dp_run_task: texts that are not UTF-8 get
 * DP_INVALID_UTF8 (unless repaired), empty ones DP_EMPTY; the others are appended to the parts in
 * index order. Returns 0, or -1 with err set (write error, out of memory, cancelled). */
int dp_encode_texts(const dp_texts_opts *o, uint8_t *status, dp_texts_result *res, char *err,
                    size_t errlen);

#endif
