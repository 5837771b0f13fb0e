// SOURCES: csrc/dataprep/dp_text.c csrc/dataprep/dp_texts.c
// LIBS: -lpthread
/* Unit test of dp_encode_texts (in-memory texts as one buffer + offsets, the path of Parquet,
 * Arrow and Python records), no Python: a byte-level tokenizer (id = byte + 1); statuses of
 * pre-marked, invalid-UTF-8 and empty texts; repair; language ids; the same bytes with 1 and 3
 * threads and with many pieces; a write error.
 */
#include "dataprep/dataprep.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"

static size_t byte_encode(const void *ctx, const uint8_t *text, size_t n, uint16_t *out) {
    (void)ctx;
    for (size_t i = 0; i < n; i++) out[i] = (uint16_t)(text[i] + 1);
    return n;
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *n = 0;
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(len > 0 ? (size_t)len : 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

/* Encode the texts into tok/meta files; returns rc. */
static int run(const char *dir, const char *data, const int64_t *off, size_t n, uint8_t *status,
               const uint16_t *lang, int repair, int threads, dp_texts_result *res, char *err,
               const char *tag) {
    char tok[512], meta[512];
    snprintf(tok, sizeof tok, "%s/%s.tok", dir, tag);
    snprintf(meta, sizeof meta, "%s/%s.meta", dir, tag);
    dp_texts_opts o;
    memset(&o, 0, sizeof o);
    o.data = (const uint8_t *)data;
    o.offsets = off;
    o.n = n;
    o.lang = lang;
    o.repair_utf8 = repair;
    o.n_threads = threads;
    o.encode = byte_encode;
    o.tok_fd = open(tok, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    o.meta_fd = open(meta, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = dp_encode_texts(&o, status, res, err, 256);
    close(o.tok_fd);
    close(o.meta_fd);
    return rc;
}

static void test_small(const char *dir) {
    /* texts: "ab", (marked bad by the caller), "", "c\xff", "\xc3\xa9" */
    const char data[] = "abXXc\xff\xc3\xa9";
    int64_t off[] = {0, 2, 4, 4, 6, 8};
    uint8_t status[5] = {DP_OK, DP_FIELD_NOT_STRING, DP_OK, DP_OK, DP_OK};
    uint16_t lang[5] = {1, 2, 3, 4, 5};
    dp_texts_result r;
    char err[256] = {0};
    int rc = run(dir, data, off, 5, status, lang, 0, 2, &r, err, "s");
    CHECK(rc == 0, "small: %s", err);
    CHECK(status[0] == DP_OK && status[1] == DP_FIELD_NOT_STRING && status[2] == DP_EMPTY &&
              status[3] == DP_INVALID_UTF8 && status[4] == DP_OK,
          "statuses %d %d %d %d %d", status[0], status[1], status[2], status[3], status[4]);
    CHECK(r.docs == 2 && r.tokens == 6 && r.text_bytes == 4 && r.repaired_docs == 0,
          "small counts");
    char p[512];
    size_t nt, nm;
    snprintf(p, sizeof p, "%s/s.tok", dir);
    uint8_t *t = slurp(p, &nt);
    snprintf(p, sizeof p, "%s/s.meta", dir);
    uint8_t *m = slurp(p, &nm);
    uint16_t want[6] = {'a' + 1, 'b' + 1, 0, 0xc3 + 1, 0xa9 + 1, 0};
    CHECK(nt == sizeof want && memcmp(t, want, sizeof want) == 0, "small tokens (%zu bytes)", nt);
    CHECK(nm == 2 * sizeof(dp_doc_meta), "small meta size %zu", nm);
    if (nm == 2 * sizeof(dp_doc_meta)) {
        const dp_doc_meta *md = (const dp_doc_meta *)m;
        CHECK(md[0].lang == 1 && md[1].lang == 5 && md[0].n_tokens == 3 && md[1].n_bytes == 2 &&
                  md[0].script == DP_SCRIPT_LATIN,
              "small meta fields");
    }
    free(t);
    free(m);
    /* repair: the invalid text is kept with U+FFFD */
    uint8_t st2[5] = {DP_OK, DP_FIELD_NOT_STRING, DP_OK, DP_OK, DP_OK};
    rc = run(dir, data, off, 5, st2, NULL, 1, 1, &r, err, "r");
    CHECK(rc == 0 && st2[3] == DP_OK && r.docs == 3 && r.repaired_docs == 1 &&
              r.text_bytes == 2 + 4 + 2,
          "repair: rc %d status %d docs %llu", rc, st2[3], (unsigned long long)r.docs);
}

static void test_threads(const char *dir) {
    /* many texts of varied lengths (several pieces): the same bytes with 1 and 3 threads */
    size_t n = 20000, cap = 0;
    int64_t *off = malloc((n + 1) * sizeof *off);
    for (size_t i = 0; i < n; i++) cap += 1 + (i * 37) % 300;
    char *data = malloc(cap);
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        off[i] = (int64_t)pos;
        size_t len = 1 + (i * 37) % 300;
        for (size_t k = 0; k < len; k++) data[pos++] = (char)('a' + (i + k) % 26);
    }
    off[n] = (int64_t)pos;
    uint8_t *s1 = calloc(n, 1), *s2 = calloc(n, 1);
    dp_texts_result r1, r2;
    char err[256] = {0};
    CHECK(run(dir, data, off, n, s1, NULL, 0, 1, &r1, err, "t1") == 0, "1 thread: %s", err);
    CHECK(run(dir, data, off, n, s2, NULL, 0, 3, &r2, err, "t3") == 0, "3 threads: %s", err);
    CHECK(r1.docs == n && r2.docs == n && r1.tokens == pos + n && r2.tokens == r1.tokens,
          "thread counts");
    char p[512];
    size_t a, b;
    snprintf(p, sizeof p, "%s/t1.tok", dir);
    uint8_t *x = slurp(p, &a);
    snprintf(p, sizeof p, "%s/t3.tok", dir);
    uint8_t *y = slurp(p, &b);
    CHECK(a == b && a == 2 * (pos + n) && memcmp(x, y, a) == 0, "1 vs 3 threads: tokens differ");
    free(x);
    free(y);
    /* a write error is reported, not ignored */
    int full = open("/dev/full", O_WRONLY);
    if (full >= 0) {
        dp_texts_opts o;
        memset(&o, 0, sizeof o);
        o.data = (const uint8_t *)data;
        o.offsets = off;
        o.n = n;
        o.n_threads = 2;
        o.encode = byte_encode;
        o.tok_fd = full;
        o.meta_fd = full;
        memset(s1, 0, n);
        int rc = dp_encode_texts(&o, s1, &r1, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "write failed"), "/dev/full: rc %d '%s'", rc, err);
        close(full);
    }
    /* offsets that decrease are refused */
    int64_t bad[3] = {0, 5, 2};
    uint8_t st[2] = {0, 0};
    CHECK(run(dir, data, bad, 2, st, NULL, 0, 1, &r1, err, "b") != 0 &&
              strstr(err, "offsets decrease"),
          "bad offsets");
    free(off);
    free(data);
    free(s1);
    free(s2);
}

int main(void) {
    char dir[] = "/tmp/rwkv5_test_dataprep_texts_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_small(dir);
    test_threads(dir);
    const char *names[] = {"s", "r", "t1", "t3", "b"};
    char p[512];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s.tok", dir, names[i]);
        remove(p);
        snprintf(p, sizeof p, "%s/%s.meta", dir, names[i]);
        remove(p);
    }
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_dataprep_texts: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_dataprep_texts: ok\n");
    return 0;
}
