// SOURCES: csrc/tokenizer/world_tokenizer.c csrc/tokenizer/wt_threads.c
/* Fuzz target: the tokenizer encoder on arbitrary text. The vocab is the World vocab when
 * $RWKV5_VOCAB (or ../shared/fixtures/rwkv_vocab_v20230424.txt) is readable, else a generated one
 * (all 256 bytes plus overlapping multi-byte tokens). Oracles: the ids decode back to the input
 * (wt_token_bytes), every id is a longest match at its position (greedy contract), and
 * wt_encode_u16 / wt_encode_parallel / wt_encode_batch give the same ids as wt_encode. */
#include "fuzz_common.h"
#include "tokenizer/world_tokenizer.h"

#include <stdint.h>
#include <string.h>

static wt_tokenizer *tok;

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, len = 0, got;
    do {
        if (len + 65536 > cap) {
            cap = cap ? 2 * cap : 1 << 20;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        got = fread(buf + len, 1, 65536, f);
        len += got;
    } while (got > 0);
    fclose(f);
    *n = len;
    return buf;
}

static char *generated_vocab(size_t *n) {
    /* 256 single bytes (as b'\xHH') and tokens made of the letters "ab" and the byte 0xE4 of
     * lengths 2..6 so that matches overlap and need backtracking-free longest-match care. */
    size_t cap = 1 << 16, len = 0;
    char *v = malloc(cap);
    int id = 1;
    for (int b = 0; b < 256; b++)
        len += (size_t)snprintf(v + len, cap - len, "%d b'\\x%02x' 1\n", id++, b);
    const char *alpha[] = {"a", "b", "\\xe4"};
    for (int L = 2; L <= 6; L++) {
        for (int m = 0; m < (1 << L) && m < 40; m++) {
            char lit[64] = "";
            for (int k = 0; k < L; k++)
                strcat(lit, alpha[((m >> k) & 1) + (k == L - 1 && (m & 4))]);
            len += (size_t)snprintf(v + len, cap - len, "%d b'%s' %d\n", id++, lit, L);
        }
    }
    *n = len;
    return v;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    size_t n = 0;
    const char *path = getenv("RWKV5_VOCAB");
    char *v = slurp(path ? path : "../shared/fixtures/rwkv_vocab_v20230424.txt", &n);
    if (!v) v = generated_vocab(&n);
    char err[256];
    tok = wt_load(v, n, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "vocab refused: %s\n", err);
        abort();
    }
    free(v);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint32_t *a = malloc((size + 1) * sizeof *a), *c = malloc((size + 1) * sizeof *c);
    uint16_t *b = malloc((size + 1) * sizeof *b);
    FUZZ_ASSERT(a && b && c);
    size_t na = wt_encode(tok, data, size, a);
    FUZZ_ASSERT(na <= size);
    /* decode + greedy longest match */
    size_t pos = 0;
    uint32_t maxlen = wt_max_token_len(tok);
    for (size_t i = 0; i < na; i++) {
        size_t len = 0;
        const uint8_t *p = wt_token_bytes(tok, a[i], &len);
        FUZZ_ASSERT(p && pos + len <= size && memcmp(p, data + pos, len) == 0);
        for (size_t L = len + 1; L <= maxlen && pos + L <= size; L++) {
            uint32_t id;
            FUZZ_ASSERT(!wt_token_to_id(tok, data + pos, L, &id)); /* no longer token here */
        }
        pos += len;
    }
    FUZZ_ASSERT(pos == size);
    if (wt_n_vocab(tok) <= 65536) {
        size_t nb = wt_encode_u16(tok, data, size, b);
        FUZZ_ASSERT(nb == na);
        for (size_t i = 0; i < na; i++) FUZZ_ASSERT(b[i] == a[i]);
    }
    size_t nc = wt_encode_parallel(tok, data, size, c, 2);
    FUZZ_ASSERT(nc == na && memcmp(a, c, na * sizeof *a) == 0);
    /* batch: the input cut in three texts at positions taken from its first bytes */
    size_t cut1 = size ? data[0] % (size + 1) : 0, cut2 = size > 1 ? data[1] % (size + 1) : 0;
    if (cut1 > cut2) {
        size_t t = cut1;
        cut1 = cut2;
        cut2 = t;
    }
    const uint8_t *texts[3] = {data, data + cut1, data + cut2};
    size_t lens[3] = {cut1, cut2 - cut1, size - cut2}, off[3] = {0, cut1, cut2}, nout[3];
    wt_encode_batch(tok, 3, texts, lens, c, off, nout, 2);
    for (int k = 0; k < 3; k++) {
        size_t nk = wt_encode(tok, texts[k], lens[k], a);
        FUZZ_ASSERT(nout[k] == nk && memcmp(a, c + off[k], nk * sizeof *a) == 0);
    }
    free(a);
    free(b);
    free(c);
    return 0;
}
