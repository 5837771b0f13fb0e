// SOURCES: csrc/dataprep/dp_text.c
/* Fuzz target: UTF-8 validation/repair, sequence decoding and script statistics on arbitrary
 * bytes. Oracles: validation without repair accepts exactly what dp_text_scan accepts and copies
 * the input unchanged; repair always succeeds, never writes more than 3n bytes, produces valid
 * UTF-8, is the identity on valid input, and its U+FFFD count equals the number of invalid
 * subparts found by walking dp_utf8_seq; dp_dominant_script agrees with dp_text_scan. */
#include "fuzz_common.h"
#include "dataprep/dataprep.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    uint8_t *in = malloc(n ? n : 1);
    memcpy(in, data, n);
    uint8_t *dst = malloc(n ? n : 1), *rep = malloc(3 * n ? 3 * n : 1);
    uint64_t bad0 = 0, bad1 = 0;
    size_t w0 = dp_utf8_copy(dst, in, n, 0, &bad0);
    int scan = dp_text_scan(in, n);
    /* walk the sequences */
    uint64_t subparts = 0;
    size_t i = 0;
    while (i < n) {
        size_t sub = 0;
        int L = dp_utf8_seq(in + i, n - i, &sub);
        FUZZ_ASSERT(L >= 0 && L <= 4);
        if (L > 0) {
            FUZZ_ASSERT((size_t)L <= n - i);
            i += (size_t)L;
        } else {
            FUZZ_ASSERT(sub >= 1 && sub <= 3 && sub <= n - i);
            subparts++;
            i += sub;
        }
    }
    int valid = subparts == 0;
    if (valid) {
        FUZZ_ASSERT(w0 == n && memcmp(dst, in, n) == 0);
        FUZZ_ASSERT(scan >= 0 && scan < DP_N_SCRIPTS);
        FUZZ_ASSERT(dp_dominant_script(in, n) == scan);
    } else {
        FUZZ_ASSERT(w0 == (size_t)-1);
        FUZZ_ASSERT(scan == -1);
    }
    size_t w1 = dp_utf8_copy(rep, in, n, 1, &bad1);
    FUZZ_ASSERT(w1 != (size_t)-1 && w1 <= 3 * n);
    FUZZ_ASSERT(bad1 == subparts);
    FUZZ_ASSERT(dp_text_scan(rep, w1) >= 0);
    if (valid) FUZZ_ASSERT(w1 == n && memcmp(rep, in, n) == 0);
    for (uint32_t cp = data[0 % (n ? n : 1)] * 4352u; n && cp < data[0] * 4352u + 8; cp++) {
        int s = dp_script_of(cp);
        FUZZ_ASSERT(s >= 0 && s < DP_N_SCRIPTS);
    }
    uint64_t h1[2], h2[2];
    dp_hash128(in, n, h1);
    dp_hash128(data, n, h2);
    FUZZ_ASSERT(h1[0] == h2[0] && h1[1] == h2[1]);
    free(in);
    free(dst);
    free(rep);
    return 0;
}
