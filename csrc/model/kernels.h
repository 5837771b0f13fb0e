/* Kernels of the forward pass: small functions, output first, then inputs, then sizes. Pure C. */
#ifndef RWKV5_KERNELS_H
#define RWKV5_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rwkv5_model.h"

/* always-inline: the kernels are written once as such functions with constant arguments (storage
 * type, vector count) and compiled per target ISA (kernels.c, matmul.c, neon.c) */
#define INL static inline __attribute__((always_inline))

/* The factor a row's dot products are multiplied by: its scale for int8, else 1. */
static inline float rwkv5_row_scale(const rwkv5_mat *m, int r) {
    return m->scale ? m->scale[r] : 1.0f;
}

/* ---- matrix addressing (both layouts of rwkv5_mat) ---- */
/* columns rounded up to whole 64-byte lines (the blocked layout's row length) */
static inline size_t rwkv5_padded_cols(const rwkv5_mat *m) {
    size_t e = 64 / rwkv5_esz(m->dtype);
    return ((size_t)m->cols + e - 1) / e * e;
}
/* bytes from element (o, 0) to element (o, i): i*size row-major; whole lines are 4*64 bytes
 * apart when blocked. `cs` is the distance between lines of a row: 64 row-major, 256 blocked. */
#define RWKV5_LINE_STRIDE(m) ((m)->blocked ? (size_t)256 : (size_t)64)
#define RWKV5_COL_OFF(i, esz, cs)                                                                  \
    ((size_t)(i) / (64 / (esz)) * (cs) + (size_t)(i) % (64 / (esz)) * (esz))
/* address of element (o, 0) */
static inline const unsigned char *rwkv5_row_ptr(const rwkv5_mat *m, size_t o) {
    const unsigned char *p = (const unsigned char *)m->data;
    size_t esz = rwkv5_esz(m->dtype);
    if (!m->blocked) return p + o * rwkv5_row_bytes(m->dtype, (size_t)m->cols);
    return p + (o / 4) * 4 * rwkv5_padded_cols(m) * esz + (o % 4) * 64;
}

/* out[i] = float(row r of m)[i], i < m->cols */
void rwkv5_mat_row(float *out, const rwkv5_mat *m, size_t r);

/* ---- matrix product, threaded over output rows, ISA chosen at run time ----
 * out = x @ W^T:  out (M, w->rows), x (M, w->cols) fp32, W in its storage type. Returns RWKV5_OK,
 * or RWKV5_EINVAL (out not written) for a storage type outside rwkv5_dtypes. */
int rwkv5_matmul(float *out, const float *x, const rwkv5_mat *w, int M);
/* The same with a given ISA, single-threaded over rows [o0, o1), row-by-row dot products (the
 * matrix x vector kernels; for tests). Returns as rwkv5_matmul. */
int rwkv5_matmul_rows_isa(int isa, float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                          int o1);

/* Blocked GEMM for M >= RWKV5_GEMM_MIN_M rows (parallel mode): x is packed into panels of
 * RWKV5_GEMM_MR rows, weights are widened to fp32 once per panel of RWKV5_GEMM_NR output rows
 * and RWKV5_GEMM_KC inputs, and a register-blocked micro-kernel accumulates x^T-panel x W-panel
 * into out^T, transposed into out at the end. Needs a workspace of rwkv5_gemm_ws_floats floats. */
#define RWKV5_GEMM_MIN_M 16
#define RWKV5_GEMM_MR    64
#define RWKV5_GEMM_NR    6
#define RWKV5_GEMM_KC    256
size_t rwkv5_gemm_ws_floats(int M, int n, int d);

/* The matmul kernels of one ISA level (matmul.c's dispatch table holds one per level; neon.c
 * defines the AArch64 ones), per storage type:
 *  rows: the matrix x vector kernel: out[m][o] = scale[o] * x[m] . W[o] for o in [o0, o1),
 *        out (M, w->rows), x (M, w->cols); every output depends only on its x row and W row;
 *  pack: Bp (RWKV5_GEMM_NR, kc) = rows [o, o+NR) x inputs [k0, k0+kc) widened to fp32 (times the
 *        row scale), rows past w->rows zero; k0 a multiple of 16;
 *  gemm: the GEMM micro-kernel, C[r][0..64) (rows ldc apart) (+)= sum_k B[r*ldb + k] * X[k][0..64)
 *        for r < RWKV5_GEMM_NR (X: the packed x panel, rows 64 floats apart; acc_in: add to C, else
 *        overwrite); NULL at a level without a GEMM (scalar). */
typedef void (*rwkv5_rows_fn)(float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                              int o1);
typedef void (*rwkv5_pack_fn)(float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc);
typedef void (*rwkv5_gemm_fn)(float *C, size_t ldc, const float *X, const float *B, size_t ldb,
                              int kc, int acc_in);
typedef struct {
    rwkv5_rows_fn rows[RWKV5_N_DTYPES];
    rwkv5_pack_fn pack[RWKV5_N_DTYPES];
    rwkv5_gemm_fn gemm;
} rwkv5_isa_kernels;
/* The portable int4 (RWKV5_I4) kernels, also in the rows of levels without their own (NEON). */
void rwkv5_rows_i4_scalar(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1);
void rwkv5_pack_i4_scalar(float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc);
/* out = x @ W^T with the workspace ws (NULL or too small: the row kernels). isa < 0: the current
 * ISA; the GEMM runs for M >= RWKV5_GEMM_MIN_M (or force_gemm) on AVX2/AVX-512. Threaded.
 * Returns as rwkv5_matmul. */
int rwkv5_matmul_ws(int isa, int force_gemm, float *out, const float *x, const rwkv5_mat *w, int M,
                    float *ws, size_t ws_floats);

/* ---- position-wise ---- */

/* out = (x - mean) / sqrt(var + eps) * w + b over n channels (biased variance); out may be x. */
void rwkv5_layer_norm(float *out, const float *x, const float *w, const float *b, int n, float eps);
/* GroupNorm: layer_norm on each of the n_groups contiguous slices of x, affine w, b of length n. */
void rwkv5_group_norm(float *out, const float *x, const float *w, const float *b, int n,
                      int n_groups, float eps);

/* Element-wise row operations (the ISA chosen at run time); n channels. */
/* token shift (§4.2): out = cur * mu + prev * (1 - mu) */
void rwkv5_token_shift(float *out, const float *cur, const float *prev, const float *mu, size_t n);
/* the residual: x += a */
void rwkv5_add(float *x, const float *a, size_t n);
/* x = relu(x)^2 (§4.6) */
void rwkv5_relu_sq(float *x, size_t n);
/* the SiLU gate (§4.5): y *= g * sigmoid(g) */
void rwkv5_silu_gate(float *y, const float *g, size_t n);
/* the channel mix's output (§4.6): x += sigmoid(a) * b */
void rwkv5_add_gated(float *x, const float *a, const float *b, size_t n);

/* ---- WKV (docs/model.md §4.4, §6). S is one head's state (N, N) [key i][value j]. ---- */

/* One token: y[j] = sum_i r[i] (u[i] k[i] v[j] + S[i][j]);  S[i][j] = w[i] S[i][j] + k[i] v[j] */
void rwkv5_wkv_step(float *y, float *S, const float *r, const float *k, const float *v,
                    const float *w, const float *u, int N);
/* A chunk of n <= RWKV5_CHUNK tokens whose rows are `ld` floats apart (r, k, v, y).
 * P: the head's power table, rows d = 0..n with stride ldp: P[d*ldp + i] = w_i^d.
 *   y_t = (r_t * P[t]) @ S0 + sum_{s<=t} A[t][s] v_s,  A[t][s] = sum_i r_t[i] k_s[i] P[t-1-s][i]
 * (s<t), A[t][t] = sum_i r_t[i] u[i] k_t[i];   S <- P[n] * S0 + sum_s (k_s * P[n-1-s])^T v_s */
void rwkv5_wkv_chunk(float *y, float *S, const float *r, const float *k, const float *v, size_t ld,
                     const float *P, size_t ldp, const float *u, int n, int N);
/* n positions (any number) in chunks of RWKV5_CHUNK: rwkv5_wkv_chunk on each in turn. */
void rwkv5_wkv_chunks(float *y, float *S, const float *r, const float *k, const float *v, size_t ld,
                      const float *P, size_t ldp, const float *u, size_t n, int N);
/* T positions of H heads from the decay itself (rwkv5.ops.wkv5): r, k, v, y (T, H, N); w, u (H, N);
 * S (H, N, N) updated in place. mode RWKV5_RECURRENT: one rwkv5_wkv_step per position;
 * RWKV5_PARALLEL: rwkv5_wkv_chunks with the power table of ln w (w = 0 gives ln w = -inf: powers
 * 1, 0, 0, ...). Returns RWKV5_OK or RWKV5_ENOMEM. */
int rwkv5_wkv(float *y, float *S, const float *r, const float *k, const float *v, const float *w,
              const float *u, size_t T, int H, int N, int mode);
/* The same with a given ISA (0 scalar, 1 AVX2, 2 AVX-512; the caller checks the CPU has it). */
void rwkv5_wkv_step_isa(int isa, float *y, float *S, const float *r, const float *k, const float *v,
                        const float *w, const float *u, int N);
void rwkv5_wkv_chunk_isa(int isa, float *y, float *S, const float *r, const float *k,
                         const float *v, size_t ld, const float *P, size_t ldp, const float *u,
                         int n, int N);
/* P[d*n + i] = exp(d * logw[i]) in double, rounded to fp32, subnormals flushed to 0, d = 0..dmax.
 * logw = -inf gives P[0] = 1 and 0 after. */
void rwkv5_power_table(float *P, const double *logw, int n, int dmax);

#endif
