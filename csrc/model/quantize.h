/* Building the storage the kernels read from float weights, with all threads (pure C): per-row
 * int8 and group-wise int4 quantisation, and the 4-row blocked layout (rwkv5_mat, rwkv5_model.h).
 * The int8 quantiser and the blocked copy write either layout; in the blocked one they write only
 * the real elements, so the destination's padding must be zero beforehand (a calloc'ed / np.zeros
 * buffer). */
#ifndef RWKV5_QUANTIZE_H
#define RWKV5_QUANTIZE_H

#include <stdint.h>

/* Element types of a source matrix: the float storage types of rwkv5_dtypes (same values) and
 * float64 (checkpoints of the NumPy reference). */
enum { RWKV5_SRC_F32 = 0, RWKV5_SRC_F16 = 1, RWKV5_SRC_BF16 = 2, RWKV5_SRC_F64 = 4 };

/* Bytes per element of a source type, 0 for an unknown one. */
int rwkv5_src_bytes(int src_type);

/* Symmetric per-row int8: for each row o of src (rows, cols) (row-major, any alignment),
 *   scale[o] = max|W[o]| / 127 (fp32 division), q[o][i] = clamp(rint(W[o][i] / s), -127, 127)
 * with s = scale[o], or 1 where scale[o] is 0 — every operation in fp32 as rwkv5.model's NumPy
 * twin (quantize_int8_numpy) does them, so both give the same bits. q is row-major (rows, cols) or,
 * blocked != 0, the 4-row blocked layout (64 int8 per line). Runs on the thread pool; `cancel`
 * (may be NULL) is polled between pieces of rows.
 * Returns -1 when done, the first row (lowest index) holding a NaN or an infinity (q and scale
 * are then incomplete), -2 when cancelled, -3 when out of memory (a row's fp32 buffer). */
int64_t rwkv5_quantize_int8(int8_t *q, float *scale, const void *src, int src_type, int64_t rows,
                            int64_t cols, int blocked, const volatile int *cancel);

/* Symmetric int4 in groups of 32 (RWKV5_I4, dtypes.h): for each row o of src (rows, cols), its
 * ceil(cols / 64) blocks at blocks + o * rwkv5_row_bytes(RWKV5_I4, cols). Per group of 32 weights
 * (zeros past the row's end): m its first weight of largest |w| (sign kept), s = fp16(m / -8),
 * q = clamp(rint(w / s), -8, 7) (0 where s is 0), each operation in fp32. Runs on the thread pool;
 * `cancel` (may be NULL) is polled between rows. Returns -1 when done, -2 when cancelled, -3 when
 * out of memory, or the first row (lowest index) that cannot be quantised, with *why (may be NULL)
 * = 1 for a NaN or an infinity, 2 for a group scale beyond fp16 (|m| >= 524160); the blocks are
 * then incomplete. */
int64_t rwkv5_quantize_int4(uint8_t *blocks, const void *src, int src_type, int64_t rows,
                            int64_t cols, int *why, const volatile int *cancel);

/* dst <- src (rows, cols) of `esz`-byte elements (row-major, any alignment) in the 4-row blocked
 * layout, E = 64 / esz elements per line (esz 1, 2 or 4). Runs on the thread pool. Returns 0,
 * or -2 when cancelled. */
int rwkv5_block_copy(void *dst, const void *src, int esz, int64_t rows, int64_t cols,
                     const volatile int *cancel);

#endif
