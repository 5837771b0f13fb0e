// SOURCES: csrc/tokenizer/world_tokenizer.c csrc/tokenizer/wt_threads.c
/* Fuzz target: the vocab file parser (wt_load) on arbitrary bytes. When a vocab is accepted,
 * every query on it must be consistent: each listed id's bytes map back to an id with the same
 * bytes, and encoding the input file itself decodes back to the same bytes. */
#include "fuzz_common.h"
#include "tokenizer/world_tokenizer.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    err[0] = 1;
    wt_tokenizer *tok = wt_load((const char *)data, size, err, sizeof err);
    if (!tok) {
        FUZZ_ASSERT(memchr(err, 0, sizeof err) != NULL); /* message NUL-terminated in bounds */
        FUZZ_ASSERT(err[0] != 0);                        /* and not empty */
        return 0;
    }
    uint32_t nv = wt_n_vocab(tok);
    FUZZ_ASSERT(wt_n_tokens(tok) >= 256 && nv >= 257);
    uint32_t maxlen = wt_max_token_len(tok);
    for (uint32_t id = 0; id < nv + 2; id++) {
        size_t len = 7;
        const uint8_t *b = wt_token_bytes(tok, id, &len);
        if (!b) {
            FUZZ_ASSERT(len == 0);
            continue;
        }
        FUZZ_ASSERT(len >= 1 && len <= maxlen);
        uint32_t back = 0;
        FUZZ_ASSERT(wt_token_to_id(tok, b, len, &back) == 1);
        size_t blen = 0;
        const uint8_t *bb = wt_token_bytes(tok, back, &blen);
        FUZZ_ASSERT(bb && blen == len && memcmp(bb, b, len) == 0);
    }
    /* encode the file itself and decode it back */
    uint32_t *ids = malloc((size + 1) * sizeof *ids);
    FUZZ_ASSERT(ids);
    size_t n = wt_encode(tok, data, size, ids);
    FUZZ_ASSERT(n <= size);
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        const uint8_t *b = wt_token_bytes(tok, ids[i], &len);
        FUZZ_ASSERT(b && len >= 1 && pos + len <= size && memcmp(b, data + pos, len) == 0);
        pos += len;
    }
    FUZZ_ASSERT(pos == size);
    free(ids);
    wt_free(tok);
    return 0;
}
