/* AArch64 Advanced SIMD (NEON) kernels, called from the dispatch in matmul.c and kernels.c (internal
 * to csrc/model; declared on AArch64 only). Every function has the contract of its portable twin. */
#ifndef RWKV5_NEON_H
#define RWKV5_NEON_H

#if defined(__aarch64__)
#include <stddef.h>

#include "rwkv5_model.h"

/* A matrix x vector row kernel: out[m][o] = x[m] . W[o] (times the row scale) for o in [o0, o1). */
typedef void (*rwkv5_rows_fn)(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1);
/* The row kernel for `dtype` at ISA level `isa` (RWKV5_ISA_NEON or _NEON_DOTPROD; the caller checks
 * the CPU has it), NULL for an unknown dtype. */
rwkv5_rows_fn rwkv5_neon_rows(int isa, int dtype);

/* GEMM pieces (matmul.c's blocked GEMM): Bp (RWKV5_GEMM_NR, kc) = rows [o, o+NR) x inputs
 * [k0, k0+kc) widened to fp32 (and scaled for int8), rows past w->rows zero; k0 a multiple of 16. */
void rwkv5_neon_pack_w(float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc);
/* C[r][0..64) (rows ldc apart) (+)= sum_k B[r*ldb + k] * X[k][0..64) for r < RWKV5_GEMM_NR; X is
 * the packed x panel (rows 64 floats apart); acc_in: add to C, else overwrite. */
void rwkv5_neon_gemm_ukernel(float *C, size_t ldc, const float *X, const float *B, size_t ldb, int kc, int acc_in);

/* The WKV step and chunk (kernels.h has their math). */
void rwkv5_neon_wkv_step(float *y, float *S, const float *r, const float *k, const float *v, const float *w,
                         const float *u, int N);
void rwkv5_neon_wkv_chunk(float *y, float *S, const float *r, const float *k, const float *v, size_t ld,
                          const float *P, size_t ldp, const float *u, int n, int N);

/* Element-wise row operations of the forward pass with a vector exp (forward.c's row_ops). */
void rwkv5_neon_silu_gate(float *y, const float *g, size_t C);                  /* y *= g * sigmoid(g) */
void rwkv5_neon_add_gated(float *x, const float *a, const float *b, size_t C);  /* x += sigmoid(a) * b */
#endif

#endif
