// SOURCES: csrc/tokenizer/world_tokenizer.c csrc/tokenizer/wt_threads.c
/* Unit test of the tokenizer core, no Python.
 *
 * Checks a generated vocab (all 256 bytes plus random multi-byte tokens) and the World vocab: the
 * file named by $RWKV5_VOCAB (`make test-c` passes the one the Python package reads), else
 * $RWKV5_FIXTURES or ../shared/fixtures/rwkv_vocab_v20230424.txt; it checks wt_encode against a
 * naive greedy longest match (binary search over the sorted token list, no trie) on random
 * bytes and on random concatenations of tokens; wt_encode_u16, wt_encode_batch and
 * wt_encode_parallel against wt_encode; the vocab parser's escapes and its error messages.
 */
#include "tokenizer/world_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* A vocab: the 256 single bytes (ids 1..256, as `b'\xHH'`) and `extra` random tokens of 2..12
 * bytes drawn from a small alphabet so that tokens share prefixes and nest. */
static char *generated_vocab(int extra, int max_extra_len, size_t *len) {
    size_t cap = 4 << 20, n = 0;
    char *s = malloc(cap);
    int id = 1;
    for (int b = 0; b < 256; b++) n += (size_t)sprintf(s + n, "%d b'\\x%02x' 1\n", id++, b);
    for (int k = 0; k < extra; k++) {
        int L = 2 + (int)(rng() % 11);
        if (max_extra_len > 12 && k % 50 == 0) L = 2 + (int)(rng() % (unsigned)(max_extra_len - 1));
        n += (size_t)sprintf(s + n, "%d b'", id++);
        for (int i = 0; i < L; i++)
            n += (size_t)sprintf(s + n, "\\x%02x",
                                 (unsigned)("abcde \xc3\xa9\xff"[rng() % 9]) & 0xFF);
        n += (size_t)sprintf(s + n, "' %d\n", L);
        if (n + 4 * (size_t)max_extra_len + 256 > cap) break;
    }
    *len = n;
    return s;
}

/* ---- the naive matcher: tokens sorted by bytes, longest prefix found by binary search ---- */
typedef struct {
    const uint8_t *b;
    size_t n;
    uint32_t id;
} tokref;
static tokref *refs;
static size_t n_refs, ref_max_len;

static int cmp_ref(const void *pa, const void *pb) {
    const tokref *a = pa, *b = pb;
    size_t n = a->n < b->n ? a->n : b->n;
    int c = memcmp(a->b, b->b, n);
    if (c) return c;
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* Equal bytes only compare equal in bsearch when ids are ignored. */
static int cmp_bytes(const void *pa, const void *pb) {
    const tokref *a = pa, *b = pb;
    size_t n = a->n < b->n ? a->n : b->n;
    int c = memcmp(a->b, b->b, n);
    return c ? c : (a->n > b->n) - (a->n < b->n);
}

static void naive_init(const wt_tokenizer *tok) {
    refs = malloc(wt_n_vocab(tok) * sizeof *refs);
    n_refs = 0;
    ref_max_len = 0;
    for (uint32_t id = 0; id < wt_n_vocab(tok); id++) {
        size_t n;
        const uint8_t *b = wt_token_bytes(tok, id, &n);
        if (!b) continue;
        refs[n_refs++] = (tokref){b, n, id};
        if (n > ref_max_len) ref_max_len = n;
    }
    qsort(refs, n_refs, sizeof *refs, cmp_ref);
    /* The same bytes listed twice (the generated vocab has such): the later line (here: the
     * larger id, ids follow file order) is the token, as in the reference tokenizer. */
    size_t w = 0;
    for (size_t i = 0; i < n_refs; i++) {
        if (w > 0 && cmp_bytes(&refs[w - 1], &refs[i]) == 0)
            refs[w - 1] = refs[i];
        else
            refs[w++] = refs[i];
    }
    n_refs = w;
}

static size_t naive_encode(const uint8_t *t, size_t n, uint32_t *out) {
    size_t k = 0, p = 0;
    while (p < n) {
        size_t L = n - p < ref_max_len ? n - p : ref_max_len;
        for (; L >= 1; L--) {
            tokref key = {t + p, L, 0};
            tokref *hit = bsearch(&key, refs, n_refs, sizeof *refs, cmp_bytes);
            if (hit) {
                out[k++] = hit->id;
                p += L;
                break;
            }
        }
        if (L == 0) return (size_t)-1; /* a byte without a token: impossible for a valid vocab */
    }
    return k;
}

static void check_encode(const wt_tokenizer *tok, const uint8_t *t, size_t n, const char *what) {
    uint32_t *a = malloc((n + 1) * sizeof *a), *b = malloc((n + 1) * sizeof *b);
    uint16_t *c = malloc((n + 1) * sizeof *c);
    size_t na = wt_encode(tok, t, n, a);
    size_t nb = naive_encode(t, n, b);
    CHECK(na == nb, "%s: %zu tokens vs naive %zu", what, na, nb);
    if (na == nb) {
        size_t i = 0;
        while (i < na && a[i] == b[i]) i++;
        CHECK(i == na, "%s: token %zu is %u, naive says %u", what, i, a[i], b[i]);
    }
    if (wt_n_vocab(tok) <= 65536) {
        size_t nc = wt_encode_u16(tok, t, n, c);
        int same = nc == na;
        for (size_t i = 0; same && i < na; i++) same = c[i] == a[i];
        CHECK(same, "%s: wt_encode_u16 differs from wt_encode", what);
    }
    free(a);
    free(b);
    free(c);
}

static void check_parallel(const wt_tokenizer *tok, const uint8_t *t, size_t n, const char *what) {
    uint32_t *a = malloc((n + 1) * sizeof *a), *b = malloc((n + 1) * sizeof *b);
    size_t na = wt_encode(tok, t, n, a);
    for (int th = 2; th <= 5; th++) {
        memset(b, 0xAB, (n + 1) * sizeof *b);
        size_t nb = wt_encode_parallel(tok, t, n, b, th);
        CHECK(nb == na && memcmp(a, b, na * sizeof *a) == 0,
              "%s: wt_encode_parallel(%d threads) differs (%zu vs %zu ids)", what, th, nb, na);
    }
    free(a);
    free(b);
}

static void check_batch(const wt_tokenizer *tok) {
    enum { K = 37 };
    const uint8_t *texts[K];
    size_t lens[K], off[K], nout[K], total = 0;
    uint8_t *bufs[K];
    for (int i = 0; i < K; i++) {
        lens[i] = (size_t)(rng() % 3000);
        bufs[i] = malloc(lens[i] + 1);
        for (size_t j = 0; j < lens[i]; j++)
            bufs[i][j] = (uint8_t)("hello world, \xe4\xb8\xad\xe6\x96\x87 \n\n"[rng() % 21]);
        texts[i] = bufs[i];
        off[i] = total;
        total += lens[i];
    }
    uint32_t *out = malloc((total + 1) * sizeof *out), *one = malloc(3001 * sizeof *one);
    for (int th = 1; th <= 4; th++) {
        memset(nout, 0, sizeof nout);
        wt_encode_batch(tok, K, texts, lens, out, off, nout, th);
        for (int i = 0; i < K; i++) {
            size_t n1 = wt_encode(tok, texts[i], lens[i], one);
            CHECK(n1 == nout[i] && memcmp(one, out + off[i], n1 * sizeof *one) == 0,
                  "batch(%d threads): text %d differs", th, i);
        }
    }
    for (int th = 1; th <= 3; th++) { /* in the background */
        memset(nout, 0, sizeof nout);
        wt_batch_run *run = wt_encode_batch_start(tok, K, texts, lens, out, off, nout, th);
        if (run)
            wt_encode_batch_wait(run);
        else
            wt_encode_batch(tok, K, texts, lens, out, off, nout, th);
        for (int i = 0; i < K; i++) {
            size_t n1 = wt_encode(tok, texts[i], lens[i], one);
            CHECK(n1 == nout[i] && memcmp(one, out + off[i], n1 * sizeof *one) == 0,
                  "batch start/wait(%d threads): text %d differs", th, i);
        }
    }
    for (int i = 0; i < K; i++) free(bufs[i]);
    free(out);
    free(one);
}

static void check_random(const wt_tokenizer *tok, const char *label) {
    char what[128];
    naive_init(tok);
    /* random bytes */
    for (int r = 0; r < 200; r++) {
        size_t n = (size_t)(rng() % 600);
        uint8_t *t = malloc(n + 1);
        for (size_t i = 0; i < n; i++) t[i] = (uint8_t)rng();
        snprintf(what, sizeof what, "%s random bytes #%d", label, r);
        check_encode(tok, t, n, what);
        free(t);
    }
    /* concatenations of random tokens (long matches, tokens that run into each other) */
    size_t big_n = 0, big_cap = 4 << 20;
    uint8_t *big = malloc(big_cap);
    for (int r = 0; r < 200; r++) {
        size_t n = 0;
        uint8_t t[4096];
        while (n < 3000) {
            const tokref *x = &refs[rng() % n_refs];
            if (n + x->n > sizeof t) break;
            memcpy(t + n, x->b, x->n);
            n += x->n;
        }
        snprintf(what, sizeof what, "%s token soup #%d", label, r);
        check_encode(tok, t, n, what);
        if (big_n + n <= big_cap) {
            memcpy(big + big_n, t, n);
            big_n += n;
        }
    }
    /* long texts: wt_encode cuts them in two streams re-joined at a shared token start */
    for (int r = 0; r < 6; r++) {
        size_t n = 9000 + (size_t)(rng() % 30000);
        uint8_t *t = malloc(n);
        size_t m = 0;
        while (m < n) {
            const tokref *x = &refs[rng() % n_refs];
            size_t c = x->n < n - m ? x->n : n - m;
            memcpy(t + m, x->b, c);
            m += c;
            if (r % 2 && m < n) t[m++] = (uint8_t)rng(); /* some noise between tokens */
        }
        snprintf(what, sizeof what, "%s long soup #%d", label, r);
        check_encode(tok, t, n, what);
        free(t);
    }
    while (big_n < big_cap) {
        big[big_n] = (uint8_t)(rng() % 7 == 0 ? rng() : ' ');
        big_n++;
    }
    snprintf(what, sizeof what, "%s 4 MiB", label);
    check_parallel(tok, big, big_n, what);
    /* a long run of one byte: every piece boundary falls inside a run of equal tokens */
    memset(big, ' ', big_cap);
    snprintf(what, sizeof what, "%s 4 MiB of spaces", label);
    check_parallel(tok, big, big_cap, what);
    free(big);
    check_batch(tok);
    free(refs);
}

static void expect_error(const char *vocab, const char *needle) {
    char err[256] = "";
    wt_tokenizer *t = wt_load(vocab, strlen(vocab), err, sizeof err);
    CHECK(t == NULL, "vocab %.40s... was accepted, expected an error containing '%s'", vocab,
          needle);
    CHECK(strstr(err, needle) != NULL, "error '%s' does not contain '%s'", err, needle);
    wt_free(t);
}

/* The 256 single bytes as a vocab prefix, so that small test vocabs are valid. */
static char *bytes_vocab(const char *extra) {
    char *s = malloc(256 * 24 + strlen(extra) + 1);
    size_t n = 0;
    for (int b = 0; b < 256; b++) n += (size_t)sprintf(s + n, "%d b'\\x%02x' 1\n", b + 1, b);
    strcpy(s + n, extra);
    return s;
}

static void check_parser(void) {
    char err[256];
    /* escapes: str literal \x and \u are code points (UTF-8 encoded), bytes \x are raw bytes */
    char *v = bytes_vocab(
        "300 '\\x80' 2\r\n301 '\\u2002a' 4\r\n302 \"it's\" 4\n303 '\\\\\\'\\\"\\n\\r\\t' 6\n"
        "304 '\xc3\xa9t\xc3\xa9' 5\n305 '  ' 2\n70000 b'\\xff\\xfe' 2\n");
    wt_tokenizer *t = wt_load(v, strlen(v), err, sizeof err);
    CHECK(t != NULL, "small vocab rejected: %s", err);
    if (t) {
        size_t n;
        const uint8_t *b;
        b = wt_token_bytes(t, 300, &n);
        CHECK(b && n == 2 && b[0] == 0xC2 && b[1] == 0x80, "'\\x80' is not C2 80");
        b = wt_token_bytes(t, 301, &n);
        CHECK(b && n == 4 &&
                  memcmp(b,
                         "\xe2\x80\x82"
                         "a",
                         4) == 0,
              "'\\u2002a' wrong");
        b = wt_token_bytes(t, 302, &n);
        CHECK(b && n == 4 && memcmp(b, "it's", 4) == 0, "\"it's\" wrong");
        b = wt_token_bytes(t, 303, &n);
        CHECK(b && n == 6 && memcmp(b, "\\'\"\n\r\t", 6) == 0, "simple escapes wrong");
        b = wt_token_bytes(t, 305, &n);
        CHECK(b && n == 2 && memcmp(b, "  ", 2) == 0, "spaces token wrong");
        b = wt_token_bytes(t, 70000, &n);
        CHECK(b && n == 2 && b[0] == 0xFF && b[1] == 0xFE, "bytes literal wrong");
        CHECK(wt_token_bytes(t, 0, &n) == NULL && n == 0, "id 0 has bytes");
        CHECK(wt_token_bytes(t, 299, &n) == NULL, "id 299 has bytes");
        CHECK(wt_token_bytes(t, 70001, &n) == NULL, "id past the end has bytes");
        CHECK(wt_n_vocab(t) == 70001, "n_vocab %u", wt_n_vocab(t));
        uint32_t id = 0;
        CHECK(wt_token_to_id(t, (const uint8_t *)"it's", 4, &id) && id == 302,
              "token_to_id(it's) = %u", id);
        CHECK(!wt_token_to_id(t, (const uint8_t *)"it", 2, &id), "token_to_id(it) found");
        uint32_t out[8];
        size_t k = wt_encode(t, (const uint8_t *)"it's  \xff\xfe!", 9, out);
        CHECK(k == 4 && out[0] == 302 && out[1] == 305 && out[2] == 70000 && out[3] == '!' + 1,
              "small encode wrong (%zu ids)", k);
        wt_free(t);
    }
    free(v);
    /* duplicate bytes: the later line wins for encoding */
    v = bytes_vocab("300 'ab' 2\n301 'ab' 2\n");
    t = wt_load(v, strlen(v), err, sizeof err);
    CHECK(t != NULL, "duplicate-bytes vocab rejected: %s", err);
    if (t) {
        uint32_t out[2];
        CHECK(wt_encode(t, (const uint8_t *)"ab", 2, out) == 1 && out[0] == 301,
              "duplicate bytes: got %u", out[0]);
        wt_free(t);
    }
    free(v);

    char *bad;
#define BAD(extra, needle)                                                                         \
    do {                                                                                           \
        bad = bytes_vocab(extra);                                                                  \
        expect_error(bad, needle);                                                                 \
        free(bad);                                                                                 \
    } while (0)
    BAD("300 'ab' 3\n", "line 257: token is 2 bytes but the length column says 3");
    BAD("300 'ab 2\n", "line 257: literal is not closed");
    BAD("300 ab 2\n", "line 257: expected a quoted");
    BAD("300 'a\\qb' 3\n", "line 257: unsupported escape");
    BAD("300 '\\x4' 1\n", "line 257: truncated");
    BAD("300 '\\xzz' 1\n", "line 257: bad hex digit");
    BAD("300 '\\ud800' 3\n", "line 257: surrogate");
    BAD("300 b'\xc3\xa9' 2\n", "line 257: non-ASCII character in a bytes literal");
    BAD("300 '\xc3' 1\n", "line 257: invalid UTF-8");
    BAD("x300 'ab' 2\n", "line 257: the id is not a decimal number");
    BAD("300 'ab' two\n", "line 257: the byte length");
    BAD("300\n", "line 257: expected '<id> <literal> <byte length>'");
    BAD("300 '' 0\n", "line 257: empty token");
    BAD("12 'ab' 2\n", "line 257: id 12 is already defined on line 12");
    BAD("99999999 'ab' 2\n", "line 257: id 99999999 is out of range");
    BAD("300 'a' 'b' 2\n", "line 257: unescaped quote");
    expect_error("1 'a' 1\n", "no token for the single byte 0x00");
    expect_error("", "empty");
#undef BAD
}

/* A vocab in which the two halves of a text never agree on a token start: with tokens "a" and
 * "aa", a run of 'a' is cut in pairs from wherever it starts, so a half starting at an odd offset
 * is always one byte off. The join must give up on the second half and still be exact. */
static void check_never_sync(void) {
    char err[256];
    char *v = bytes_vocab("300 'aa' 2\n");
    wt_tokenizer *t = wt_load(v, strlen(v), err, sizeof err);
    CHECK(t != NULL, "aa vocab rejected: %s", err);
    if (t) {
        naive_init(t);
        size_t sizes[] = {20002, 20003, 20006, 65538, 2000002};
        for (int i = 0; i < 5; i++) {
            size_t n = sizes[i];
            uint8_t *a = malloc(n);
            memset(a, 'a', n);
            char what[64];
            snprintf(what, sizeof what, "never-sync run of %zu 'a'", n);
            if (n < 100000) check_encode(t, a, n, what);
            check_parallel(t, a, n, what);
            uint32_t *out = malloc(n * sizeof *out);
            size_t k = wt_encode(t, a, n, out);
            int ok = k == (n + 1) / 2;
            for (size_t j = 0; ok && j < k; j++) ok = out[j] == (j < n / 2 ? 300u : 'a' + 1u);
            CHECK(ok, "%s: not (aa)* a?", what);
            free(out);
            free(a);
        }
        free(refs);
        wt_free(t);
    }
    free(v);
}

/* Random mutations of a small vocab (flipped, inserted, deleted bytes; cut files): wt_load must
 * either refuse with a message or give a tokenizer that encodes anything. Run under ASan
 * (`make test-c CSAN=1`) this is a small fuzzer for the parser. */
static void fuzz_parser(void) {
    char *base =
        bytes_vocab("300 'ab' 2\n301 '\\x80\\u2002' 5\n302 b'\\xff\\xfe' 2\n303 \"it's\" 4\n");
    size_t bn = strlen(base);
    char *m = malloc(bn + 64);
    char err[256];
    int loaded = 0;
    for (int r = 0; r < 3000; r++) {
        memcpy(m, base, bn);
        size_t n = bn;
        int edits = rng() % 2 ? 1 : 1 + (int)(rng() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(rng() % (n ? n : 1));
            if (rng() % 4 && n > 100)
                at = n - 100 + (size_t)(rng() % 100); /* mostly the non-byte lines */
            switch (rng() % 4) {
            case 0:
                m[at] = (char)rng();
                break;
            case 1: {
                static const char special[] = "'\"\\ \nbx0u\r";
                m[at] = special[rng() % (sizeof special - 1)];
                break;
            }
            case 2:
                if (n + 1 < bn + 64) {
                    memmove(m + at + 1, m + at, n - at);
                    m[at] = (char)rng();
                    n++;
                }
                break;
            default:
                if (n) {
                    memmove(m + at, m + at + 1, n - at - 1);
                    n--;
                }
                break;
            }
        }
        if (rng() % 8 == 0) n = (size_t)(rng() % (n + 1)); /* truncated file */
        err[0] = 0;
        wt_tokenizer *t = wt_load(m, n, err, sizeof err);
        if (!t) {
            CHECK(err[0] != 0, "mutation %d refused without a message", r);
            continue;
        }
        loaded++;
        uint8_t text[300];
        uint32_t out[300];
        for (size_t i = 0; i < sizeof text; i++) text[i] = (uint8_t)rng();
        size_t k = wt_encode(t, text, sizeof text, out);
        size_t total = 0;
        for (size_t i = 0; i < k; i++) {
            size_t len = 0;
            CHECK(wt_token_bytes(t, out[i], &len) != NULL, "mutation %d: id %u has no bytes", r,
                  out[i]);
            total += len;
        }
        CHECK(total == sizeof text, "mutation %d: ids cover %zu of %zu bytes", r, total,
              sizeof text);
        wt_free(t);
    }
    CHECK(loaded >= 20, "only %d mutated vocabs loaded: the fuzzer is not reaching the encoder",
          loaded);
    printf("test_tokenizer: parser fuzz: 3000 mutated vocabs, %d loaded and encoded\n", loaded);
    free(m);
    free(base);
}

int main(void) {
    check_parser();
    fuzz_parser();
    check_never_sync();

    size_t len;
    char err[256];
    char *data = generated_vocab(6000, 12, &len);
    wt_tokenizer *tok = wt_load(data, len, err, sizeof err);
    CHECK(tok != NULL, "generated vocab rejected: %s", err);
    if (tok) {
        check_random(tok, "generated vocab");
        wt_free(tok);
    }
    free(data);
    /* tokens longer than 255 bytes: the encoder uses its wide node layout */
    data = generated_vocab(3000, 400, &len);
    tok = wt_load(data, len, err, sizeof err);
    CHECK(tok != NULL, "generated long-token vocab rejected: %s", err);
    if (tok) {
        CHECK(wt_max_token_len(tok) > 255, "long-token vocab: max len %u", wt_max_token_len(tok));
        check_random(tok, "generated long-token vocab");
        wt_free(tok);
    }
    free(data);

    const char *vocab = getenv("RWKV5_VOCAB");
    const char *dir = getenv("RWKV5_FIXTURES");
    char path[1024];
    if (vocab && *vocab)
        snprintf(path, sizeof path, "%s", vocab);
    else
        snprintf(path, sizeof path, "%s/rwkv_vocab_v20230424.txt",
                 dir ? dir : "../shared/fixtures");
    data = read_file(path, &len);
    if (!data) {
        printf("test_tokenizer: %s absent, World vocab part skipped\n", path);
    } else {
        tok = wt_load(data, len, err, sizeof err);
        CHECK(tok != NULL, "World vocab rejected: %s", err);
        if (tok) {
            CHECK(wt_n_vocab(tok) == 65530 && wt_n_tokens(tok) == 65529 &&
                      wt_max_token_len(tok) == 128,
                  "World vocab: n_vocab %u, tokens %u, max len %u", wt_n_vocab(tok),
                  wt_n_tokens(tok), wt_max_token_len(tok));
            uint32_t out[16];
            size_t k = wt_encode(tok, (const uint8_t *)"Hello world", 11, out);
            CHECK(k == 2 && out[0] == 33155 && out[1] == 40213, "Hello world");
            k = wt_encode(tok, (const uint8_t *)"\n\nUser: hi", 10, out);
            CHECK(k == 4 && out[0] == 261 && out[1] == 24281 && out[2] == 59 && out[3] == 4571,
                  "\\n\\nUser: hi");
            k = wt_encode(tok, (const uint8_t *)"\xe6", 1, out);
            CHECK(k == 1 && out[0] == 231, "byte 0xE6");
            check_random(tok, "World vocab");
            printf("test_tokenizer: World vocab %s checked\n", path);
            wt_free(tok);
        }
        free(data);
    }
    if (failures) {
        fprintf(stderr, "test_tokenizer: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_tokenizer: ok\n");
    return 0;
}
