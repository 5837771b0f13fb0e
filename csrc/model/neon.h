/* AArch64 Advanced SIMD (NEON) kernels, called from the dispatch in matmul.c and kernels.c
 * (internal to csrc/model; declared on AArch64 only). Every function has the contract of its
 * portable twin. */
#ifndef RWKV5_NEON_H
#define RWKV5_NEON_H

#if defined(__aarch64__)
#include <stddef.h>

#include "kernels.h"

/* The matmul kernels (kernels.h) of the levels RWKV5_ISA_NEON and RWKV5_ISA_NEON_DOTPROD (int8
 * rows by SDOT; the caller checks the CPU has it), rows of matmul.c's dispatch table. */
extern const rwkv5_isa_kernels rwkv5_neon_kernels, rwkv5_neon_dotprod_kernels;

/* The WKV step and chunk (kernels.h has their math). */
void rwkv5_neon_wkv_step(float *y, float *S, const float *r, const float *k, const float *v,
                         const float *w, const float *u, int N);
void rwkv5_neon_wkv_chunk(float *y, float *S, const float *r, const float *k, const float *v,
                          size_t ld, const float *P, size_t ldp, const float *u, int n, int N);

/* Element-wise row operations with a vector exp (kernels.c's row_ops). */
void rwkv5_neon_silu_gate(float *y, const float *g, size_t C); /* y *= g * sigmoid(g) */
void rwkv5_neon_add_gated(float *x, const float *a, const float *b,
                          size_t C); /* x += sigmoid(a) * b */
#endif

#endif
