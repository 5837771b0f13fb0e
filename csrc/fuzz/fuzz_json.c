// SOURCES: csrc/dataprep/dp_text.c csrc/dataprep/dp_json.c
/* Fuzz target: the JSON string-field extractor (dp_json_extract) on an arbitrary line. The first
 * input byte picks the options (repair on/off, lang field on/off, field name); the rest is the
 * line. Oracles: the status is a known one; on DP_OK the text fits in 3n bytes, is valid UTF-8
 * (dp_text_scan accepts it), the script equals dp_text_scan's, and without repair nothing was
 * repaired; lang is NUL-terminated within 64 bytes. */
#include "fuzz_common.h"
#include "dataprep/dataprep.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t opt = data[0];
    const uint8_t *line = data + 1;
    size_t n = size - 1;
    int repair = opt & 1;
    const char *lang_field = (opt & 2) ? "lang" : NULL;
    const char *field = (opt & 4) ? "content" : "text";
    /* exact-size heap copy so ASan sees any read past the line */
    uint8_t *in = malloc(n ? n : 1);
    memcpy(in, line, n);
    size_t cap = 3 * n;
    uint8_t *out = malloc(cap ? cap : 1);
    size_t out_len = (size_t)-1;
    char lang[64];
    memset(lang, 'x', sizeof lang);
    uint64_t n_rep = 0;
    int script = -7;
    int st =
        dp_json_extract(in, n, field, lang_field, repair, out, &out_len, lang, &n_rep, &script);
    FUZZ_ASSERT(st >= 0 && st < DP_N_STATUS);
    if (st == DP_OK) {
        FUZZ_ASSERT(out_len <= cap); /* 0 is DP_OK here: the task runner makes it DP_EMPTY */
        int sc = dp_text_scan(out, out_len);
        FUZZ_ASSERT(sc >= 0 && sc < DP_N_SCRIPTS);
        FUZZ_ASSERT(script == sc);
        if (!repair) FUZZ_ASSERT(n_rep == 0);
        if (lang_field) FUZZ_ASSERT(memchr(lang, 0, sizeof lang) != NULL);
    } else {
        FUZZ_ASSERT(st != DP_OK);
        if (repair) FUZZ_ASSERT(st != DP_INVALID_UTF8 && st != DP_LONE_SURROGATE);
    }
    free(in);
    free(out);
    return 0;
}
