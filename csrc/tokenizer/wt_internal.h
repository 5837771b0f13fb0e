/* Internal to the tokenizer core (shared by world_tokenizer.c and wt_threads.c). */
#ifndef RWKV5_WT_INTERNAL_H
#define RWKV5_WT_INTERNAL_H

#include "tokenizer/world_tokenizer.h"

/* Encode the tokens that start in [p0, stop) of text[0..n) (the last one may end after stop).
 * *p_end receives the end of the last token (>= stop unless p0 >= stop). Returns the count. */
size_t wt_encode_span(const wt_tokenizer *tok, const uint8_t *text, size_t n, size_t p0, size_t stop,
                      uint32_t *out, size_t *p_end);

#endif
