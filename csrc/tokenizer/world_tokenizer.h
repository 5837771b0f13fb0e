/* RWKV World tokenizer, pure C core (no Python).
 *
 * Contract shared by the tokenizer binding (csrc/py_tokenizer.c) and the data-prep pipeline
 * (csrc/dataprep/). A wt_tokenizer is immutable after wt_load and may be used from any number
 * of threads at once.
 *
 * Vocab file format (docs/tokenizer.md, "Vocab files"): one token per line, `<id> <python literal>
 * <byte length>`, LF or CRLF; str literals with \\ \' \" \n \r \t \xHH \uHHHH escapes (code points,
 * UTF-8 encoded), bytes literals b'...' (raw bytes). Id 0 is not in the file: it is end-of-text.
 */
#ifndef RWKV5_WORLD_TOKENIZER_H
#define RWKV5_WORLD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct wt_tokenizer wt_tokenizer;

/* Parse a vocab file held in memory. On failure returns NULL and writes a message naming the
 * line and the problem into err (errlen bytes, NUL-terminated). */
/* The name of the PyCapsule through which the Python bindings share one loaded wt_tokenizer:
 * rwkv5.tokenizer's Core hands it out, rwkv5.dataprep's functions take it (both extensions are
 * built from this same source, so they agree on the struct). */
#define WT_CAPSULE_NAME "rwkv5.tokenizer.wt_tokenizer"

wt_tokenizer *wt_load(const char *data, size_t len, char *err, size_t errlen);
void wt_free(wt_tokenizer *tok);

/* One more than the largest id in the vocab (65530 for the World vocab; models have 65536 rows). */
uint32_t wt_n_vocab(const wt_tokenizer *tok);

/* Greedy leftmost-longest match over bytes. `out` must have room for n ids (every token
 * consumes at least one byte). Returns the number of ids written. Never fails: every single
 * byte is a token in a valid vocab (wt_load refuses a vocab without all 256 single bytes). */
size_t wt_encode(const wt_tokenizer *tok, const uint8_t *text, size_t n, uint32_t *out);
/* The same, writing uint16 ids (only valid when wt_n_vocab(tok) <= 65536). */
size_t wt_encode_u16(const wt_tokenizer *tok, const uint8_t *text, size_t n, uint16_t *out);

/* The bytes of one token, or NULL (and *len = 0) when the id has no entry (id 0, out of range). */
const uint8_t *wt_token_bytes(const wt_tokenizer *tok, uint32_t id, size_t *len);

/* ---- additions (rwkv5 tokenizer helper); the functions above keep their signatures ---- */

/* Number of entries in the vocab (65529 for the World vocab) and the longest token in bytes. */
uint32_t wt_n_tokens(const wt_tokenizer *tok);
uint32_t wt_max_token_len(const wt_tokenizer *tok);

/* Exact lookup: 1 and *id when `bytes` is a token, else 0. When a custom vocab lists the same
 * bytes twice, the later line is the one the encoder produces and the one returned here. */
int wt_token_to_id(const wt_tokenizer *tok, const uint8_t *bytes, size_t n, uint32_t *id);

/* Encode `count` independent texts with up to n_threads threads (the calling thread is one of
 * them; n_threads <= 1 runs on the calling thread only). Text i's ids are written to
 * out + out_off[i] (room for lens[i] ids) and their number to n_out[i]. The result does not
 * depend on n_threads. Never fails: if threads cannot be started the caller's thread does the work.
 * Returns the number of threads that took part. */
int wt_encode_batch(const wt_tokenizer *tok, size_t count, const uint8_t *const *texts,
                    const size_t *lens, uint32_t *out, const size_t *out_off, size_t *n_out,
                    int n_threads);

/* The same in the background: starts n_threads worker threads (the caller is not one of them)
 * and returns at once; wt_encode_batch_wait joins them, after which the outputs are complete.
 * Returns NULL when no thread could be started (then call wt_encode_batch). The caller must
 * keep every argument alive and unchanged until the wait. */
typedef struct wt_batch_run wt_batch_run;
wt_batch_run *wt_encode_batch_start(const wt_tokenizer *tok, size_t count,
                                    const uint8_t *const *texts, const size_t *lens, uint32_t *out,
                                    const size_t *out_off, size_t *n_out, int n_threads);
void wt_encode_batch_wait(wt_batch_run *run);

/* Encode one text with up to n_threads threads: the text is cut into pieces that are encoded
 * concurrently, then each piece is re-joined where its greedy token boundaries meet those of
 * the piece before it (greedy matching from a given position is deterministic, so once two
 * encodings share a token start they agree from there on). Output identical to wt_encode;
 * `out` needs room for n ids. Returns the number of ids, or (size_t)-1 when out of memory. */
size_t wt_encode_parallel(const wt_tokenizer *tok, const uint8_t *text, size_t n, uint32_t *out,
                          int n_threads);

#endif
