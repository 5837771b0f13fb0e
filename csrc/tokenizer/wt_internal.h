/* Internal to the tokenizer core (shared by world_tokenizer.c and wt_threads.c). */
#ifndef RWKV5_WT_INTERNAL_H
#define RWKV5_WT_INTERNAL_H

#include "tokenizer/world_tokenizer.h"

/* Encode the tokens that start in [p0, stop) of text[0..n) (the last one may end after stop).
 * *p_end receives the end of the last token (>= stop unless p0 >= stop). Returns the count. */
size_t wt_encode_span(const wt_tokenizer *tok, const uint8_t *text, size_t n, size_t p0,
                      size_t stop, uint32_t *out, size_t *p_end);

/* Encode two independent texts, interleaving their walks on the calling thread. */
void wt_encode_pair(const wt_tokenizer *tok, const uint8_t *ta, size_t na, uint32_t *outa,
                    size_t *ka, const uint8_t *tb, size_t nb, uint32_t *outb, size_t *kb);

#endif
