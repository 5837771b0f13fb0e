/* Storage types of the large matrices ("weight dtypes"): the one table of their facts, and the
 * portable decoding of one element. Pure C. docs/adding-a-dtype.md says what else a new one needs
 * (a decode per SIMD target in matmul.c and neon.c, and the Python conversion in rwkv5/model.py). */
#ifndef RWKV5_DTYPES_H
#define RWKV5_DTYPES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Storage type of a matrix (rwkv5_mat.dtype). Kernels widen to fp32 on the fly. */
typedef enum {
    RWKV5_F32 = 0,
    RWKV5_F16 = 1,   /* IEEE half */
    RWKV5_BF16 = 2,  /* top 16 bits of an fp32 */
    RWKV5_I8 = 3,    /* int8 q with one fp32 scale per row (`scale`): W[o][i] = q[o][i] * scale[o] */
    RWKV5_N_DTYPES   /* the number of storage types */
} rwkv5_dtype;

typedef struct {
    const char *name;  /* the name Python uses (Model.from_state_dict(dtype=...), _model.DTYPES) */
    int elem_bytes;    /* bytes per element; divides 64 (a line of the blocked layout holds
                          64 / elem_bytes elements) */
    int row_scale;     /* 1: each row has an fp32 scale (rwkv5_mat.scale) its dot products are
                          multiplied by; 0: scale is NULL */
} rwkv5_dtype_info;

/* Indexed by rwkv5_dtype. `static` so that a lookup with a constant index folds to a constant in
 * the kernels (each is specialised per storage type). */
static const rwkv5_dtype_info rwkv5_dtypes[RWKV5_N_DTYPES] = {
    [RWKV5_F32] = {"fp32", 4, 0},
    [RWKV5_F16] = {"fp16", 2, 0},
    [RWKV5_BF16] = {"bf16", 2, 0},
    [RWKV5_I8] = {"int8", 1, 1},
};

static inline int rwkv5_dtype_valid(int dtype) { return dtype >= 0 && dtype < RWKV5_N_DTYPES; }
/* bytes per element */
static inline size_t rwkv5_esz(int dtype) { return (size_t)rwkv5_dtypes[dtype].elem_bytes; }

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

/* The stored value of the element at byte address p as fp32 (before the row scale). Called with a
 * constant dtype inside the kernels, where the switch disappears. */
static inline __attribute__((always_inline)) float rwkv5_load(int dtype, const void *p) {
    switch (dtype) {
    case RWKV5_F16: return rwkv5_ld_f16(p, 0);
    case RWKV5_BF16: return rwkv5_ld_bf16(p, 0);
    case RWKV5_I8: return rwkv5_ld_i8(p, 0);
    default: return rwkv5_ld_f32(p, 0);
    }
}

#endif
