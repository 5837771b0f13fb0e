/* Storage types of the large matrices ("weight dtypes"): the one table of their facts, and the
 * portable decoding of one element. Pure C. docs/adding-a-dtype.md says what else a new one needs
 * (a decode per SIMD target in matmul.c and neon.c, and the Python conversion in rwkv5/model.py).
 */
#ifndef RWKV5_DTYPES_H
#define RWKV5_DTYPES_H

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

/* Storage type of a matrix (rwkv5_mat.dtype). Kernels widen to fp32 on the fly. */
typedef enum {
    RWKV5_F32 = 0,
    RWKV5_F16 = 1,  /* IEEE half */
    RWKV5_BF16 = 2, /* top 16 bits of an fp32 */
    RWKV5_I8 = 3,   /* int8 q with one fp32 scale per row (`scale`): W[o][i] = q[o][i] * scale[o] */
    RWKV5_I4 = 4,   /* 4-bit q in blocks of 64 weights carrying their own scales (below):
                       W[o][i] = q * (scale of the group of 32 that i is in) */
    RWKV5_N_DTYPES  /* the number of storage types */
} rwkv5_dtype;

typedef struct {
    const char *name; /* the name Python uses (Model.from_state_dict(dtype=...), _model.DTYPES) */
    int elem_bytes;   /* bytes per element of the array holding it; divides 64 (a line of the
                         blocked layout holds 64 / elem_bytes elements). A block type: 1 (bytes) */
    int row_scale;    /* 1: each row has an fp32 scale (rwkv5_mat.scale) its dot products are
                         multiplied by; 0: scale is NULL */
    int block;        /* 0: an element type. > 0: a block type: each row is ceil(cols / block)
                         blocks of block_bytes bytes holding `block` weights and their scales
                         (row-major layout only; the row kernels and the GEMM packing are the
                         type's own functions) */
    int block_bytes;
} rwkv5_dtype_info;

/* int4 block: 64 weights in 36 bytes, two groups of 32 with one fp16 scale each:
 *   bytes 0-1, 2-3: scales s0, s1 (IEEE half) of weights 0-31 and 32-63;
 *   bytes 4-19: weights 0-31, bytes 20-35: weights 32-63: byte b of a group holds its weight b in
 *   the low nibble and weight b + 16 in the high one, each a 4-bit two's complement q in [-8, 7].
 * W = q * s. This is ggml's Q4_0 (there the nibble is q + 8 and one block is one group). Weights
 * past the row's end are 0. 0.5625 bytes per weight. */
#define RWKV5_I4_BLOCK       64
#define RWKV5_I4_BLOCK_BYTES 36

/* Indexed by rwkv5_dtype. `static` so that a lookup with a constant index folds to a constant in
 * the kernels (each is specialised per storage type). */
static const rwkv5_dtype_info rwkv5_dtypes[RWKV5_N_DTYPES] = {
    [RWKV5_F32] = {"fp32", 4, 0, 0, 0},
    [RWKV5_F16] = {"fp16", 2, 0, 0, 0},
    [RWKV5_BF16] = {"bf16", 2, 0, 0, 0},
    [RWKV5_I8] = {"int8", 1, 1, 0, 0},
    [RWKV5_I4] = {"int4", 1, 0, RWKV5_I4_BLOCK, RWKV5_I4_BLOCK_BYTES},
};

static inline int rwkv5_dtype_valid(int dtype) { return dtype >= 0 && dtype < RWKV5_N_DTYPES; }
/* bytes per element */
static inline size_t rwkv5_esz(int dtype) { return (size_t)rwkv5_dtypes[dtype].elem_bytes; }
/* bytes of one row of `cols` weights in the row-major layout */
static inline size_t rwkv5_row_bytes(int dtype, size_t cols) {
    const rwkv5_dtype_info *t = &rwkv5_dtypes[dtype];
    return t->block ? (cols + (size_t)t->block - 1) / (size_t)t->block * (size_t)t->block_bytes
                    : cols * (size_t)t->elem_bytes;
}

/* ---- decoding one element (the portable kernels, and the tails of the SIMD ones) ---- */

static inline float rwkv5_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float rwkv5_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
    float f;
    if (e == 0) { /* zero or subnormal: mant * 2^-24, exact in fp32 */
        f = (float)mant * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    if (e == 31)
        u = sign | 0x7f800000u | (mant << 13); /* inf / nan */
    else
        u = sign | ((e - 15 + 127) << 23) | (mant << 13);
    memcpy(&f, &u, 4);
    return f;
}

/* fp32 -> IEEE half, rounded to nearest even (as F16C's vcvtps2ph and NumPy's astype(float16)):
 * overflow to inf, subnormal halves included, NaN stays a (quiet) NaN. */
static inline uint16_t rwkv5_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* nan */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520: inf */
    if (a >= 0x38800000u) {                                  /* a normal half, >= 2^-14 */
        uint32_t r = a - 0x38000000u;                        /* exponent rebiased 127 -> 15 */
        r += 0xfffu + ((r >> 13) & 1u);                      /* round the 13 bits dropped */
        return (uint16_t)(sign | (r >> 13));
    }
    /* a subnormal half (or 0): units of 2^-24, rounded to even (the scaling is exact) */
    float m = fabsf(f) * 16777216.0f;
    return (uint16_t)(sign | (uint32_t)nearbyintf(m));
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

/* int4 (RWKV5_I4): q of weight i of a row starting at `row`, and the scale of its group g = i / 32
 */
static inline int rwkv5_i4_q(const void *row, size_t i) {
    const unsigned char *g =
        (const unsigned char *)row + i / 64 * RWKV5_I4_BLOCK_BYTES + 4 + i % 64 / 32 * 16;
    size_t k = i % 32;
    int v = k < 16 ? g[k] & 15 : g[k - 16] >> 4;
    return (v ^ 8) - 8;
}
static inline float rwkv5_i4_scale(const void *row, size_t g) {
    uint16_t h;
    memcpy(&h, (const unsigned char *)row + g / 2 * RWKV5_I4_BLOCK_BYTES + g % 2 * 2, 2);
    return rwkv5_f16_to_f32(h);
}

/* The stored value of the element at byte address p as fp32 (before the row scale). Called with a
 * constant dtype inside the kernels, where the switch disappears. */
static inline __attribute__((always_inline)) float rwkv5_load(int dtype, const void *p) {
    switch (dtype) {
    case RWKV5_F16:
        return rwkv5_ld_f16(p, 0);
    case RWKV5_BF16:
        return rwkv5_ld_bf16(p, 0);
    case RWKV5_I8:
        return rwkv5_ld_i8(p, 0);
    default:
        return rwkv5_ld_f32(p, 0);
    }
}

#endif
