/* Kernels of the forward pass: small functions, output first, then inputs, then sizes. Pure C. */
#ifndef RWKV5_KERNELS_H
#define RWKV5_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rwkv5_model.h"

/* ---- storage types ---- */

static inline float rwkv5_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float rwkv5_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
    float f;
    if (e == 0) {                       /* zero or subnormal: mant * 2^-24, exact in fp32 */
        f = (float)mant * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    if (e == 31) u = sign | 0x7f800000u | (mant << 13);          /* inf / nan */
    else u = sign | ((e - 15 + 127) << 23) | (mant << 13);
    memcpy(&f, &u, 4);
    return f;
}

/* Element i of matrix storage at p. Matrices may be unaligned (views into a file such as an
 * rwkv.cpp .bin, whose tensors start at arbitrary byte offsets), so loads go through memcpy, which
 * compiles to a plain load. */
static inline float rwkv5_ld_f32(const void *p, size_t i) {
    float v;
    memcpy(&v, (const unsigned char *)p + i * 4, 4);
    return v;
}
static inline float rwkv5_ld_f16(const void *p, size_t i) {
    uint16_t h;
    memcpy(&h, (const unsigned char *)p + i * 2, 2);
    return rwkv5_f16_to_f32(h);
}
static inline float rwkv5_ld_bf16(const void *p, size_t i) {
    uint16_t h;
    memcpy(&h, (const unsigned char *)p + i * 2, 2);
    return rwkv5_bf16_to_f32(h);
}

static inline float rwkv5_ld_i8(const void *p, size_t i) { return (float)((const int8_t *)p)[i]; }
/* The factor a row's dot products are multiplied by: its scale for int8, else 1. */
static inline float rwkv5_row_scale(const rwkv5_mat *m, int r) { return m->scale ? m->scale[r] : 1.0f; }

/* ---- matrix addressing (both layouts of rwkv5_mat) ---- */
static inline size_t rwkv5_esz(int dtype) { return dtype == RWKV5_F32 ? 4 : dtype == RWKV5_I8 ? 1 : 2; }
/* columns rounded up to whole 64-byte lines (the blocked layout's row length) */
static inline size_t rwkv5_padded_cols(const rwkv5_mat *m) {
    size_t e = 64 / rwkv5_esz(m->dtype);
    return ((size_t)m->cols + e - 1) / e * e;
}
/* bytes from element (o, 0) to element (o, i): i*size row-major; whole lines are 4*64 bytes
 * apart when blocked. `cs` is the distance between lines of a row: 64 row-major, 256 blocked. */
#define RWKV5_LINE_STRIDE(m) ((m)->blocked ? (size_t)256 : (size_t)64)
#define RWKV5_COL_OFF(i, esz, cs) ((size_t)(i) / (64 / (esz)) * (cs) + (size_t)(i) % (64 / (esz)) * (esz))
/* address of element (o, 0) */
static inline const unsigned char *rwkv5_row_ptr(const rwkv5_mat *m, size_t o) {
    const unsigned char *p = (const unsigned char *)m->data;
    size_t esz = rwkv5_esz(m->dtype);
    if (!m->blocked) return p + o * (size_t)m->cols * esz;
    return p + (o / 4) * 4 * rwkv5_padded_cols(m) * esz + (o % 4) * 64;
}

/* out[i] = float(row r of m)[i], i < m->cols */
void rwkv5_mat_row(float *out, const rwkv5_mat *m, size_t r);

/* ---- matrix product, threaded over output rows, ISA chosen at run time ----
 * out = x @ W^T:  out (M, d), x (M, n) fp32, W (d, n) in its storage type. */
void rwkv5_matmul(float *out, const float *x, const rwkv5_mat *w, int M, int n, int d);
/* The same with a given ISA, single-threaded over rows [o0, o1), row-by-row dot products (the
 * matrix x vector kernels; for tests). */
void rwkv5_matmul_rows_isa(int isa, float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1);

/* Blocked GEMM for M >= RWKV5_GEMM_MIN_M rows (parallel mode): x is packed into panels of
 * RWKV5_GEMM_MR rows, weights are widened to fp32 once per panel of RWKV5_GEMM_NR output rows
 * and RWKV5_GEMM_KC inputs, and a register-blocked micro-kernel accumulates x^T-panel x W-panel
 * into out^T, transposed into out at the end. Needs a workspace of rwkv5_gemm_ws_floats floats. */
#define RWKV5_GEMM_MIN_M 16
#define RWKV5_GEMM_MR 64
#define RWKV5_GEMM_NR 6
#define RWKV5_GEMM_KC 256
size_t rwkv5_gemm_ws_floats(int M, int n, int d);
/* out = x @ W^T with the workspace ws (NULL or too small: the row kernels). isa < 0: the current
 * ISA; the GEMM runs for M >= RWKV5_GEMM_MIN_M (or force_gemm) on AVX2/AVX-512. Threaded. */
void rwkv5_matmul_ws(int isa, int force_gemm, float *out, const float *x, const rwkv5_mat *w, int M, float *ws,
                     size_t ws_floats);

/* ---- position-wise ---- */

/* out = (x - mean) / sqrt(var + eps) * w + b over n channels (biased variance); out may be x. */
void rwkv5_layer_norm(float *out, const float *x, const float *w, const float *b, int n, float eps);
/* GroupNorm: layer_norm on each of the n_groups contiguous slices of x, affine w, b of length n. */
void rwkv5_group_norm(float *out, const float *x, const float *w, const float *b, int n, int n_groups,
                      float eps);

/* ---- WKV (docs/model.md §4.4, §6). S is one head's state (N, N) [key i][value j]. ---- */

/* One token: y[j] = sum_i r[i] (u[i] k[i] v[j] + S[i][j]);  S[i][j] = w[i] S[i][j] + k[i] v[j] */
void rwkv5_wkv_step(float *y, float *S, const float *r, const float *k, const float *v,
                    const float *w, const float *u, int N);
/* A chunk of n <= RWKV5_CHUNK tokens whose rows are `ld` floats apart (r, k, v, y).
 * P: the head's power table, rows d = 0..n with stride ldp: P[d*ldp + i] = w_i^d.
 *   y_t = (r_t * P[t]) @ S0 + sum_{s<=t} A[t][s] v_s,  A[t][s] = sum_i r_t[i] k_s[i] P[t-1-s][i] (s<t),
 *   A[t][t] = sum_i r_t[i] u[i] k_t[i];   S <- P[n] * S0 + sum_s (k_s * P[n-1-s])^T v_s          */
void rwkv5_wkv_chunk(float *y, float *S, const float *r, const float *k, const float *v, size_t ld,
                     const float *P, size_t ldp, const float *u, int n, int N);
/* The same with a given ISA (0 scalar, 1 AVX2, 2 AVX-512; the caller checks the CPU has it). */
void rwkv5_wkv_step_isa(int isa, float *y, float *S, const float *r, const float *k, const float *v,
                        const float *w, const float *u, int N);
void rwkv5_wkv_chunk_isa(int isa, float *y, float *S, const float *r, const float *k, const float *v, size_t ld,
                         const float *P, size_t ldp, const float *u, int n, int N);
/* P[d*n + i] = exp(d * logw[i]) in double, rounded to fp32, subnormals flushed to 0, d = 0..dmax.
 * logw = -inf gives P[0] = 1 and 0 after. */
void rwkv5_power_table(float *P, const double *logw, int n, int dmax);

#endif
