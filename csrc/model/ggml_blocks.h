/* ggml's 32-weight quantised blocks, as rwkv.cpp files (version 101) store matrices: their exact
 * float32 values. Pure C. The layouts (packed, little-endian; d and m are IEEE half):
 *
 *   Q4_0  18 bytes: d, qs[16]                 w = d * (q - 8)    q: 4 bits
 *   Q4_1  20 bytes: d, m, qs[16]              w = d * q + m      q: 4 bits
 *   Q5_0  22 bytes: d, qh (u32), qs[16]       w = d * (q - 16)   q: 4 bits | fifth bit << 4
 *   Q5_1  24 bytes: d, m, qh (u32), qs[16]    w = d * q + m      q: 4 bits | fifth bit << 4
 *   Q8_0  34 bytes: d, qs[32] (int8)          w = d * q
 *
 * Weight j of a block (j < 16) is the low nibble of qs[j], weight j + 16 its high nibble; bit j of
 * qh is the fifth bit of weight j. d * q is exact in float32 (11 + 8 significant bits at most), so
 * only "+ m" rounds, once. */
#ifndef RWKV5_GGML_BLOCKS_H
#define RWKV5_GGML_BLOCKS_H

#include <stdint.h>

#define RWKV5_QK 32 /* weights per block */

/* rwkv.cpp's data type ids of the block formats */
enum { RWKV5_Q4_0 = 2, RWKV5_Q4_1 = 3, RWKV5_Q5_0 = 7, RWKV5_Q5_1 = 8, RWKV5_Q8_0 = 9 };

/* Bytes per block of `kind`, 0 for an unknown kind. */
int rwkv5_ggml_block_bytes(int kind);

/* out (nblocks * 32 floats) <- the weights of `nblocks` blocks of `kind` at `blocks` (any
 * alignment). Returns -1 when done; the index of the first block whose d or m is not finite
 * (inf/NaN; out is filled up to that block); -2 for an unknown kind. */
int64_t rwkv5_ggml_dequantize(float *out, const void *blocks, int64_t nblocks, int kind);

/* The same split over the thread pool (rwkv5_parallel_for); on a bad block, returns the first one
 * (other pieces may have been filled beyond it). */
int64_t rwkv5_ggml_dequantize_threads(float *out, const void *blocks, int64_t nblocks, int kind);

#endif
