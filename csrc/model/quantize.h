/* Building the storage the kernels read from float weights, with all threads (pure C):
 * per-row int8 quantisation and the 4-row blocked layout (rwkv5_mat, rwkv5_model.h). Both write
 * either layout; in the blocked one they write only the real elements, so the destination's
 * padding must be zero beforehand (a calloc'ed / np.zeros buffer). */
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

/* dst <- src (rows, cols) of `esz`-byte elements (row-major, any alignment) in the 4-row blocked
 * layout, E = 64 / esz elements per line (esz 1, 2 or 4). Runs on the thread pool. Returns 0,
 * or -2 when cancelled. */
int rwkv5_block_copy(void *dst, const void *src, int esz, int64_t rows, int64_t cols,
                     const volatile int *cancel);

#endif
