// SOURCES: csrc/dataprep/dp_text.c csrc/dataprep/dp_json.c csrc/dataprep/dp_codec.c csrc/dataprep/dp_task.c
// LIBS: -lzstd -lz -lbz2 -llzma
/* Unit test of the data-prep core, no Python: JSON extraction, UTF-8 repair, CRC-32C, scripts,
 * and dp_run_task end to end with a byte-level tokenizer (id = byte + 1) on .jsonl, multi-frame
 * .jsonl.zst and .txt inputs: expected tokens, independence from the thread count, errors for
 * truncated zstd and for bad records in fail-fast mode; every codec (gzip, bzip2, xz, zstd; several
 * members/streams/frames cut mid-line) gives the plain file's tokens, and each codec's file cut or
 * with a byte changed at many offsets gives an error naming the file and an offset, or (a byte no
 * check covers) the same tokens. Run under ASan/LSan by `make test-c CSAN=1`.
 */
#include "dataprep/dataprep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bzlib.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include "tests/check.h"

static int extract(const char *line, const char *want_text, int want_status, int repair) {
    size_t n = strlen(line), len = 0;
    uint8_t *out = malloc(3 * n + 1);
    char lang[64];
    uint64_t rep = 0;
    int st = dp_json_extract((const uint8_t *)line, n, "text", "lang", repair, out, &len, lang,
                             &rep, NULL);
    int ok = st == want_status &&
             (st != DP_OK || (len == strlen(want_text) && memcmp(out, want_text, len) == 0));
    CHECK(ok, "json %s -> status %d (want %d), text '%.*s'", line, st, want_status, (int)len,
          (char *)out);
    free(out);
    return ok;
}

static void test_json(void) {
    extract("{\"text\": \"hello\"}", "hello", DP_OK, 0);
    extract(" {\"a\":[1,2,{\"b\":null}],\"text\":\"x\\ny\",\"c\":-0.5e+3}\r\n", "x\ny", DP_OK, 0);
    extract("{\"text\": \"\\u00e9\\ud83d\\ude00\"}", "\xc3\xa9\xf0\x9f\x98\x80", DP_OK, 0);
    extract("{\"text\": \"\\ud800\"}", "", DP_LONE_SURROGATE, 0);
    extract("{\"text\": \"\\ud800\"}", "\xef\xbf\xbd", DP_OK, 1);
    extract("{\"text\": \"a\xff\"}", "", DP_INVALID_UTF8, 0);
    extract("{\"text\": \"a\xff\"}", "a\xef\xbf\xbd", DP_OK, 1);
    extract("{\"text\": \"a\xff\", }", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": 5}", "", DP_FIELD_NOT_STRING, 0);
    extract("{\"txt\": \"5\"}", "", DP_MISSING_FIELD, 0);
    extract("{}", "", DP_MISSING_FIELD, 0);
    extract("", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": \"a\"", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": \"a\"}}", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": \"a\",}", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": 01}", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": \"\\x\"}", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": \"\\u12\"}", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": tru}", "", DP_MALFORMED_JSON, 0);
    extract("{\"text\": \"first\", \"text\": \"last\"}", "last", DP_OK, 0);
    /* lang */
    {
        const char *line = "{\"lang\": \"zh-Hant\", \"text\": \"t\"}";
        uint8_t out[128];
        size_t len;
        char lang[64];
        uint64_t rep;
        int st = dp_json_extract((const uint8_t *)line, strlen(line), "text", "lang", 0, out, &len,
                                 lang, &rep, NULL);
        CHECK(st == DP_OK && strcmp(lang, "zh-Hant") == 0, "lang '%s'", lang);
    }
    /* lang values longer than the buffers: the first DP_LANG_MAX bytes, cut at a character
     * boundary (a value of 200+ bytes in one plain run used to leave the buffer unfilled) */
    {
        /* JSON source of one unit, and its decoded UTF-8 */
        static const char *unit[] = {"x",        "\\u00e9", "\\u4e2d", "\\ud83d\\ude00",
                                     "\xc3\xa9", "ab\\\\"};
        static const char *dec[] = {"x",        "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80",
                                    "\xc3\xa9", "ab\\"};
        for (int u = 0; u < 6; u++)
            for (int reps = 1; reps <= 400; reps += 57) {
                static char line[8192], want[8192];
                static uint8_t out[3 * 8192 + 1];
                char lang[64];
                size_t n = (size_t)snprintf(line, sizeof line, "{\"text\": \"t\", \"lang\": \"");
                size_t wn = 0, len;
                uint64_t rep;
                for (int r = 0; r < reps; r++) {
                    n += (size_t)snprintf(line + n, sizeof line - n, "%s", unit[u]);
                    wn += (size_t)snprintf(want + wn, sizeof want - wn, "%s", dec[u]);
                }
                n += (size_t)snprintf(line + n, sizeof line - n, "\"}");
                size_t cut = wn < DP_LANG_MAX ? wn : DP_LANG_MAX;
                while (cut < wn && cut > 0 && ((uint8_t)want[cut] & 0xC0) == 0x80) cut--;
                want[cut] = 0;
                memset(lang, 0x10, sizeof lang);
                int st = dp_json_extract((const uint8_t *)line, n, "text", "lang", 0, out, &len,
                                         lang, &rep, NULL);
                CHECK(st == DP_OK && strcmp(lang, want) == 0,
                      "long lang unit %d x%d: '%s', want '%s'", u, reps, lang, want);
            }
    }
}

static void test_utf8_crc_scripts(void) {
    uint8_t out[64];
    uint64_t bad = 0;
    size_t n = dp_utf8_copy(out, (const uint8_t *)"a\xe2\x82z\xed\xa0\x80", 7, 1, &bad);
    /* Python: b"a\xe2\x82z\xed\xa0\x80".decode("utf-8","replace") == "a\ufffdz\ufffd\ufffd\ufffd"
     */
    CHECK(n == 1 + 3 + 1 + 9 && bad == 4, "utf8 repair n=%zu bad=%llu", n, (unsigned long long)bad);
    CHECK(dp_utf8_copy(out, (const uint8_t *)"ok\xc3\xa9", 4, 0, NULL) == 4, "valid utf8");
    CHECK(dp_utf8_copy(out, (const uint8_t *)"\xc0\xaf", 2, 0, NULL) == (size_t)-1,
          "overlong rejected");
    CHECK(dp_crc32c(0, (const uint8_t *)"123456789", 9) == 0xE3069283u, "crc32c check value");
    CHECK(dp_crc32c(dp_crc32c(0, (const uint8_t *)"1234", 4), (const uint8_t *)"56789", 5) ==
              0xE3069283u,
          "crc32c chaining");
    CHECK(dp_script_of('a') == DP_SCRIPT_LATIN && dp_script_of('1') == DP_SCRIPT_COMMON,
          "ascii scripts");
    CHECK(dp_script_of(0x0416) == DP_SCRIPT_CYRILLIC && dp_script_of(0x4E2D) == DP_SCRIPT_HAN &&
              dp_script_of(0x3042) == DP_SCRIPT_KANA && dp_script_of(0xD55C) == DP_SCRIPT_HANGUL &&
              dp_script_of(0x0E01) == DP_SCRIPT_THAI && dp_script_of(0x13A0) == DP_SCRIPT_OTHER &&
              dp_script_of(0x1F600) == DP_SCRIPT_COMMON,
          "scripts");
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) { /* every code point classifies without crashing */
        int s = dp_script_of(cp);
        if (s < 0 || s >= DP_N_SCRIPTS) {
            CHECK(0, "script of %x = %d", cp, s);
            break;
        }
    }
    uint64_t h1[2], h2[2];
    dp_hash128((const uint8_t *)"abc", 3, h1);
    dp_hash128((const uint8_t *)"abd", 3, h2);
    CHECK(h1[0] != h2[0] && h1[1] != h2[1], "hash differs");
}

/* ------------------------------------------------------------------ task runner */

static size_t byte_encode(const void *ctx, const uint8_t *t, size_t n, uint16_t *out) {
    (void)ctx;
    for (size_t i = 0; i < n; i++) out[i] = (uint16_t)(t[i] + 1);
    return n;
}

static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *n = 0;
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

static int run(const char *path, int format, int codec, int threads, size_t batch, int fail_fast,
               const char *tok, const char *meta, dp_task_result *res) {
    dp_task_opts o;
    memset(&o, 0, sizeof o);
    o.path = path;
    o.record_format = format;
    o.codec = codec;
    o.start = 0;
    o.end = UINT64_MAX;
    o.text_field = "text";
    o.lang_field = "lang";
    o.fail_fast = fail_fast;
    o.n_threads = threads;
    o.batch_bytes = batch;
    o.encode = byte_encode;
    o.tok_path = tok;
    o.meta_path = meta;
    return dp_run_task(&o, res);
}

static void test_task(const char *dir) {
    char jsonl[512], zst[512], txt[512], tok1[512], tok2[512], meta1[512], meta2[512];
    snprintf(jsonl, sizeof jsonl, "%s/in.jsonl", dir);
    snprintf(zst, sizeof zst, "%s/in.jsonl.zst", dir);
    snprintf(txt, sizeof txt, "%s/in.txt", dir);
    snprintf(tok1, sizeof tok1, "%s/a.tok", dir);
    snprintf(tok2, sizeof tok2, "%s/b.tok", dir);
    snprintf(meta1, sizeof meta1, "%s/a.meta", dir);
    snprintf(meta2, sizeof meta2, "%s/b.meta", dir);

    /* corpus: N records, every 7th malformed; expected tokens built alongside */
    const int N = 3000;
    size_t cap = 1 << 20, len = 0, ecap = 1 << 20, elen = 0;
    char *corpus = malloc(cap);
    uint16_t *expect = malloc(ecap * sizeof(uint16_t));
    int n_docs = 0, n_bad = 0;
    for (int i = 0; i < N; i++) {
        char text[128];
        snprintf(text, sizeof text, "doc %d %s", i,
                 (i % 3) ? "alpha" : "\xce\xb2\xce\xb7\xcf\x84\xce\xb1");
        if (i % 7 == 3) {
            len += (size_t)snprintf(corpus + len, cap - len, "{\"text\": oops}\n");
            n_bad++;
            continue;
        }
        len +=
            (size_t)snprintf(corpus + len, cap - len, "{\"text\": \"%s\", \"lang\": \"l%d\"}%s\n",
                             text, i % 3, (i % 5) ? "" : "\r");
        for (size_t k = 0; k < strlen(text); k++) expect[elen++] = (uint16_t)((uint8_t)text[k] + 1);
        expect[elen++] = 0;
        n_docs++;
    }
    write_file(jsonl, corpus, len);

    dp_task_result r1, r2;
    int rc = run(jsonl, DP_REC_JSONL, DP_CODEC_PLAIN, 1, 0, 0, tok1, meta1, &r1);
    CHECK(rc == 0, "run: %s", r1.err);
    CHECK(r1.docs == (uint64_t)n_docs && r1.skipped[DP_MALFORMED_JSON] == (uint64_t)n_bad &&
              r1.n_langs == 4,
          "docs %llu bad %llu langs %d", (unsigned long long)r1.docs,
          (unsigned long long)r1.skipped[DP_MALFORMED_JSON], r1.n_langs);
    CHECK(r1.n_listed > 0 && r1.listed_line[0] == 4 && r1.listed_status[0] == DP_MALFORMED_JSON,
          "first listed line");
    size_t n1, n2, m1, m2;
    uint8_t *b1 = read_file(tok1, &n1), *mm1 = read_file(meta1, &m1);
    CHECK(n1 == elen * 2 && memcmp(b1, expect, n1) == 0,
          "tokens differ from expectation (%zu vs %zu bytes)", n1, elen * 2);
    CHECK(m1 == (size_t)n_docs * sizeof(dp_doc_meta), "meta size");
    /* many threads, tiny batches: same bytes */
    rc = run(jsonl, DP_REC_JSONL, DP_CODEC_PLAIN, 3, 100, 0, tok2, meta2, &r2);
    CHECK(rc == 0, "run 3 threads: %s", r2.err);
    uint8_t *b2 = read_file(tok2, &n2), *mm2 = read_file(meta2, &m2);
    CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0, "3 threads: tokens differ");
    CHECK(m1 == m2 && memcmp(mm1, mm2, m1) == 0, "3 threads: meta differs");
    free(b2);
    free(mm2);
    dp_task_result_free(&r2);

    /* multi-frame zstd with frames cut mid-line: same bytes */
    size_t zcap = ZSTD_compressBound(len) + 1024, zlen = 0;
    uint8_t *z = malloc(zcap);
    size_t cuts[4] = {0, len / 3, len / 3 + 1, len};
    for (int k = 0; k < 3; k++)
        zlen += ZSTD_compress(z + zlen, zcap - zlen, corpus + cuts[k], cuts[k + 1] - cuts[k], 3);
    write_file(zst, z, zlen);
    rc = run(zst, DP_REC_JSONL, DP_CODEC_ZSTD, 2, 0, 0, tok2, meta2, &r2);
    CHECK(rc == 0, "zst run: %s", r2.err);
    b2 = read_file(tok2, &n2);
    CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0, "zst: tokens differ");
    free(b2);
    dp_task_result_free(&r2);
    /* truncated */
    write_file(zst, z, zlen - 5);
    rc = run(zst, DP_REC_JSONL, DP_CODEC_ZSTD, 2, 0, 0, tok2, meta2, &r2);
    CHECK(rc != 0 && strstr(r2.err, "truncated zstd frame starting at byte offset"),
          "truncated: rc %d '%s'", rc, r2.err);
    dp_task_result_free(&r2);
    /* trailing garbage */
    memcpy(z + zlen, "JUNKJUNK", 8);
    write_file(zst, z, zlen + 8);
    rc = run(zst, DP_REC_JSONL, DP_CODEC_ZSTD, 1, 0, 0, tok2, meta2, &r2);
    CHECK(rc != 0 && strstr(r2.err, "corrupt zstd data"), "garbage: rc %d '%s'", rc, r2.err);
    dp_task_result_free(&r2);

    /* a 0-byte file is not a zstd stream (zstd -t rejects it too) */
    write_file(zst, "", 0);
    rc = run(zst, DP_REC_JSONL, DP_CODEC_ZSTD, 1, 0, 0, tok2, meta2, &r2);
    CHECK(rc != 0 && strstr(r2.err, "0 bytes, not a zstd stream"), "empty zst: rc %d '%s'", rc,
          r2.err);
    dp_task_result_free(&r2);
    /* text in a zstd stream (any record format behind any codec) */
    {
        const char *doc = "first line\nsecond line\n";
        size_t dz = ZSTD_compress(z, zcap, doc, strlen(doc), 3);
        write_file(zst, z, dz);
        rc = run(zst, DP_REC_TXT_FILE, DP_CODEC_ZSTD, 1, 0, 0, tok2, meta2, &r2);
        b2 = read_file(tok2, &n2);
        int okz = rc == 0 && r2.docs == 1 && n2 == 2 * (strlen(doc) + 1);
        for (size_t c = 0; okz && c < strlen(doc); c++)
            okz = ((uint16_t *)b2)[c] == (uint8_t)doc[c] + 1;
        CHECK(okz, "txt in zstd: rc %d '%s' docs %llu", rc, r2.err, (unsigned long long)r2.docs);
        free(b2);
        dp_task_result_free(&r2);
    }
    /* text files: invalid UTF-8 is reported at its own line, not the document's first */
    {
        const char *bad_file = "a\nb\nc\xff\nd\n", *bad_block = "one\n\ntwo\nth\xffree\n\nfour\n";
        write_file(txt, bad_file, strlen(bad_file));
        rc = run(txt, DP_REC_TXT_FILE, DP_CODEC_PLAIN, 1, 0, 1, tok2, meta2, &r2);
        CHECK(rc != 0 && strstr(r2.err, "in.txt:3: invalid_utf8"), "txt bad line: '%s'", r2.err);
        dp_task_result_free(&r2);
        write_file(txt, bad_block, strlen(bad_block));
        rc = run(txt, DP_REC_TXT_BLANK, DP_CODEC_PLAIN, 1, 0, 1, tok2, meta2, &r2);
        CHECK(rc != 0 && strstr(r2.err, "in.txt:4: invalid_utf8"), "txt block bad line: '%s'",
              r2.err);
        dp_task_result_free(&r2);
        rc = run(txt, DP_REC_TXT_BLANK, DP_CODEC_PLAIN, 1, 0, 0, tok2, meta2, &r2);
        CHECK(rc == 0 && r2.n_listed == 1 && r2.listed_line[0] == 4, "txt block listed line %llu",
              (unsigned long long)(r2.n_listed ? r2.listed_line[0] : 0));
        dp_task_result_free(&r2);
    }
    /* more language names than the table holds: ids in order of appearance, then the last id */
    {
        const int NL = 70000;
        size_t lcap = (size_t)NL * 40, ll = 0;
        char *lc = malloc(lcap);
        for (int i = 0; i < NL; i++)
            ll += (size_t)snprintf(lc + ll, lcap - ll, "{\"text\": \"x\", \"lang\": \"n%d\"}\n", i);
        write_file(jsonl, lc, ll);
        rc = run(jsonl, DP_REC_JSONL, DP_CODEC_PLAIN, 2, 0, 0, tok2, meta2, &r2);
        uint8_t *mb = read_file(meta2, &n2);
        const dp_doc_meta *md = (const dp_doc_meta *)mb;
        int okl = rc == 0 && r2.n_langs == DP_MAX_LANGS && n2 == (size_t)NL * sizeof(dp_doc_meta) &&
                  strcmp(r2.langs[DP_MAX_LANGS - 1], "(more languages)") == 0 &&
                  strcmp(r2.langs[5001], "n5000") == 0;
        for (int i = 0; okl && i < NL; i++)
            okl = md[i].lang == (i < DP_MAX_LANGS - 2 ? i + 1 : DP_MAX_LANGS - 1);
        CHECK(okl, "many languages: rc %d n_langs %d", rc, r2.n_langs);
        free(mb);
        free(lc);
        dp_task_result_free(&r2);
        write_file(jsonl, corpus, len);
    }

    /* fail fast names the first bad line */
    rc = run(jsonl, DP_REC_JSONL, DP_CODEC_PLAIN, 2, 64, 1, tok2, meta2, &r2);
    CHECK(rc != 0 && strstr(r2.err, "in.jsonl:4: malformed_json"), "fail fast: '%s'", r2.err);
    dp_task_result_free(&r2);

    /* txt, blank-line blocks */
    const char *t = "\xef\xbb\xbfone\r\ntwo\n\n  \nthree\n";
    write_file(txt, t, strlen(t));
    rc = run(txt, DP_REC_TXT_BLANK, DP_CODEC_PLAIN, 2, 0, 0, tok2, meta2, &r2);
    b2 = read_file(tok2, &n2);
    const char *want[2] = {"one\ntwo", "three"};
    size_t pos = 0;
    int okt = rc == 0 && r2.docs == 2;
    for (int k = 0; k < 2 && okt; k++) {
        for (size_t c = 0; c < strlen(want[k]); c++)
            okt &= ((uint16_t *)b2)[pos++] == (uint8_t)want[k][c] + 1;
        okt &= ((uint16_t *)b2)[pos++] == 0;
    }
    CHECK(okt && pos * 2 == n2, "txt blocks");
    free(b2);
    dp_task_result_free(&r2);
    /* missing input */
    rc = run("/nonexistent/x.jsonl", DP_REC_JSONL, DP_CODEC_PLAIN, 1, 0, 0, tok2, meta2, &r2);
    CHECK(rc != 0 && strstr(r2.err, "cannot open"), "missing input: '%s'", r2.err);
    dp_task_result_free(&r2);
    /* unwritable output */
    rc = run(jsonl, DP_REC_JSONL, DP_CODEC_PLAIN, 1, 0, 0, "/nonexistent/t.tok", meta2, &r2);
    CHECK(rc != 0 && strstr(r2.err, "cannot create"), "bad output: '%s'", r2.err);
    dp_task_result_free(&r2);
    /* /dev/full: every write fails */
    if (access("/dev/full", W_OK) == 0) {
        rc = run(jsonl, DP_REC_JSONL, DP_CODEC_PLAIN, 2, 0, 0, "/dev/full", meta2, &r2);
        CHECK(rc != 0 && strstr(r2.err, "write failed"), "/dev/full: '%s'", r2.err);
        dp_task_result_free(&r2);
    }

    dp_task_result_free(&r1);
    free(b1);
    free(mm1);
    free(z);
    free(corpus);
    free(expect);
    remove(jsonl);
    remove(zst);
    remove(txt);
    remove(tok1);
    remove(tok2);
    remove(meta1);
    remove(meta2);
}

/* The codec and record-format tables: names unique and non-empty, every codec with a magic is
 * detected by it (and only plain has none), every row has all its functions. */
static void test_tables(void) {
    for (int i = 0; i < DP_N_CODECS; i++) {
        const dp_codec *c = &dp_codecs[i];
        CHECK(c->name && c->name[0] && c->suffix && c->open && c->read && c->close,
              "codec %d: incomplete row", i);
        CHECK((c->magic_len == 0) == (i == DP_CODEC_PLAIN),
              "codec %s: magic only for compressed codecs", c->name);
        if (c->magic_len && !c->sniff) /* the others: by real files in test_codecs */
            CHECK(dp_codec_detect((const uint8_t *)c->magic, c->magic_len) == i,
                  "codec %s: not detected by its magic", c->name);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(c->name, dp_codecs[j].name), "codec name %s twice", c->name);
    }
    CHECK(dp_codec_detect((const uint8_t *)"{\"text\"", 7) == -1 && dp_codec_detect(NULL, 0) == -1,
          "plain detected as a codec");
    for (int i = 0; i < DP_N_RECORD_FORMATS; i++) {
        const dp_record_format *f = &dp_record_formats[i];
        CHECK(f->name && f->name[0] && f->line && f->end && f->text,
              "record format %d: incomplete row", i);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(f->name, dp_record_formats[j].name), "record format %s twice", f->name);
    }
}

/* ------------------------------------------------------------------ codecs */

/* data compressed as one unit (frame, member, stream) of codec; malloc'd, *zn bytes */
static uint8_t *compress_unit(int codec, const uint8_t *src, size_t n, size_t *zn) {
    size_t cap = n + n / 2 + 4096;
    uint8_t *z = malloc(cap);
    *zn = 0;
    if (codec == DP_CODEC_ZSTD) {
        ZSTD_CCtx *c = ZSTD_createCCtx();
        ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
        *zn = ZSTD_compress2(c, z, cap, src, n);
        ZSTD_freeCCtx(c);
    } else if (codec == DP_CODEC_GZIP) {
        z_stream s;
        memset(&s, 0, sizeof s);
        deflateInit2(&s, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
        s.next_in = (uint8_t *)src;
        s.avail_in = (unsigned)n;
        s.next_out = z;
        s.avail_out = (unsigned)cap;
        deflate(&s, Z_FINISH);
        *zn = cap - s.avail_out;
        deflateEnd(&s);
    } else if (codec == DP_CODEC_BZIP2) {
        unsigned dl = (unsigned)cap;
        BZ2_bzBuffToBuffCompress((char *)z, &dl, (char *)src, (unsigned)n, 9, 0, 0);
        *zn = dl;
    } else if (codec == DP_CODEC_XZ) {
        lzma_easy_buffer_encode(1, LZMA_CHECK_CRC64, NULL, src, n, z, zn, cap);
    }
    return z;
}

static void test_codecs(const char *dir) {
    char plain[512], comp[512], tok[512], meta[512];
    snprintf(plain, sizeof plain, "%s/c.jsonl", dir);
    snprintf(comp, sizeof comp, "%s/c.jsonl.z", dir);
    snprintf(tok, sizeof tok, "%s/c.tok", dir);
    snprintf(meta, sizeof meta, "%s/c.meta", dir);
    size_t cap = 1 << 16, len = 0;
    char *corpus = malloc(cap);
    for (int i = 0; i < 300; i++)
        len += (size_t)snprintf(corpus + len, cap - len,
                                "{\"text\": \"doc %d \\u00e9t\u00e9 %d\"}\n", i, i * i);
    write_file(plain, corpus, len);
    dp_task_result r;
    int rc = run(plain, DP_REC_JSONL, DP_CODEC_PLAIN, 1, 0, 0, tok, meta, &r);
    size_t n_want;
    uint8_t *want = read_file(tok, &n_want);
    CHECK(rc == 0 && r.docs == 300, "plain: %s", r.err);
    dp_task_result_free(&r);
    for (int codec = DP_CODEC_ZSTD; codec < DP_N_CODECS; codec++) {
        const char *name = dp_codecs[codec].name;
        /* three units cut mid-line, one after another: the plain file's tokens */
        size_t cuts[4] = {0, len / 3, len / 3 + 1, len}, zlen = 0, k;
        uint8_t *all = malloc(2 * len + 3 * 4096);
        for (int u = 0; u < 3; u++) {
            uint8_t *z =
                compress_unit(codec, (const uint8_t *)corpus + cuts[u], cuts[u + 1] - cuts[u], &k);
            memcpy(all + zlen, z, k);
            zlen += k;
            free(z);
        }
        CHECK(dp_codec_detect(all, zlen) == codec, "%s: not detected from its magic", name);
        write_file(comp, all, zlen);
        rc = run(comp, DP_REC_JSONL, codec, 2, 0, 0, tok, meta, &r);
        size_t n_got;
        uint8_t *got = read_file(tok, &n_got);
        CHECK(rc == 0 && n_got == n_want && memcmp(got, want, n_want) == 0,
              "%s, 3 units: rc %d '%s'", name, rc, r.err);
        free(got);
        dp_task_result_free(&r);
        free(all);
        /* one unit, cut at many offsets: an error naming the file and an offset, never a crash or
         * a hang; a byte changed at many offsets: the same, or (a byte no check covers, such as a
         * gzip header's time stamp) the same tokens */
        uint8_t *z = compress_unit(codec, (const uint8_t *)corpus, len, &zlen);
        int n_cut = 0, n_flip = 0, n_same = 0;
        for (size_t off = 0; off < zlen; off += 1 + zlen / 41) {
            write_file(comp, z, off);
            rc = run(comp, DP_REC_JSONL, codec, 1, 0, 0, tok, meta, &r);
            CHECK(rc != 0 && strstr(r.err, comp) &&
                      (strstr(r.err, "truncated") || strstr(r.err, "0 bytes")) &&
                      strstr(r.err, "byte") && !strchr(r.err, '\n'),
                  "%s cut at %zu of %zu: rc %d '%s'", name, off, zlen, rc, r.err);
            dp_task_result_free(&r);
            n_cut++;
            uint8_t *bad = malloc(zlen);
            memcpy(bad, z, zlen);
            bad[off] ^= 0x5a;
            write_file(comp, bad, zlen);
            free(bad);
            rc = run(comp, DP_REC_JSONL, codec, 1, 0, 0, tok, meta, &r);
            if (rc == 0) {
                got = read_file(tok, &n_got);
                CHECK(n_got == n_want && memcmp(got, want, n_want) == 0,
                      "%s byte %zu changed: other tokens, no error", name, off);
                free(got);
                n_same++;
            } else {
                CHECK(strstr(r.err, comp) && strstr(r.err, "byte") && !strchr(r.err, '\n'),
                      "%s byte %zu changed: '%s'", name, off, r.err);
            }
            dp_task_result_free(&r);
            n_flip++;
        }
        CHECK(n_cut > 30 && n_same < n_flip / 4,
              "%s: %d cuts, %d changed bytes of which %d read the same", name, n_cut, n_flip,
              n_same);
        free(z);
    }
    /* gzip: zero bytes after the last member are padding (as gzip and Python read them) */
    {
        size_t zlen;
        uint8_t *z = compress_unit(DP_CODEC_GZIP, (const uint8_t *)corpus, len, &zlen);
        uint8_t *zz = calloc(zlen + 100, 1);
        memcpy(zz, z, zlen);
        write_file(comp, zz, zlen + 100);
        rc = run(comp, DP_REC_JSONL, DP_CODEC_GZIP, 1, 0, 0, tok, meta, &r);
        CHECK(rc == 0 && r.docs == 300, "gzip + zero padding: rc %d '%s'", rc, r.err);
        dp_task_result_free(&r);
        memcpy(zz + zlen + 50, "JUNK", 4); /* but other bytes are not */
        write_file(comp, zz, zlen + 100);
        rc = run(comp, DP_REC_JSONL, DP_CODEC_GZIP, 1, 0, 0, tok, meta, &r);
        CHECK(rc != 0 && strstr(r.err, "corrupt gzip data"), "gzip + junk: rc %d '%s'", rc, r.err);
        dp_task_result_free(&r);
        /* an empty file is not a stream of any codec */
        for (int codec = DP_CODEC_ZSTD; codec < DP_N_CODECS; codec++) {
            write_file(comp, "", 0);
            rc = run(comp, DP_REC_JSONL, codec, 1, 0, 0, tok, meta, &r);
            CHECK(rc != 0 && strstr(r.err, "0 bytes, not a"), "%s, empty file: rc %d '%s'",
                  dp_codecs[codec].name, rc, r.err);
            dp_task_result_free(&r);
        }
        free(zz);
        free(z);
    }
    /* bzip2 is detected by more than "BZh": a text beginning with it stays text */
    CHECK(dp_codec_detect((const uint8_t *)"BZh9 is a text line\n", 20) == -1,
          "text starting with BZh9");
    free(want);
    free(corpus);
    remove(plain);
    remove(comp);
    remove(tok);
    remove(meta);
}

int main(void) {
    char dir[] = "/tmp/rwkv5_test_dataprep_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_json();
    test_utf8_crc_scripts();
    test_tables();
    test_task(dir);
    test_codecs(dir);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_dataprep: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_dataprep: ok\n");
    return 0;
}
