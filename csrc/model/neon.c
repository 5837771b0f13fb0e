/* AArch64 Advanced SIMD (NEON) kernels: the matrix x vector row kernels (fp32 / fp16 / bf16 / int8,
 * int8 also by SDOT where the CPU has the dot-product extension), the GEMM's weight packing and
 * micro-kernel, the WKV step and chunk, and the sigmoid row operations. Kernels are always-inline
 * functions specialised by constant arguments (the storage type, the number of vectors), compiled
 * once for the base architecture and, for SDOT, once more with the dot-product extension enabled.
 *
 * Advanced SIMD has 32 registers of 4 fp32 lanes, FMA, and the fp16 -> fp32 conversion (FCVTL) in
 * the base AArch64 architecture: no run-time check is needed below the SDOT level. Loads are plain
 * unaligned loads of bytes (AArch64 allows them on normal memory); a 16-byte load starting at an
 * element index that is a multiple of its element count never crosses a 64-byte line of the 4-row
 * blocked layout (rwkv5_model.h), so every kernel reads both layouts with the same code. */
#if defined(__aarch64__)
#include "neon.h"

#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "common/cpu.h"
#include "kernels.h"

/* SDOT (Armv8.2 FEAT_DotProd, run-time checked by rwkv5_cpu_isa through HWCAP_ASIMDDP) for the
 * functions marked TDOT. acc + (4 lanes of) sum of 4 products of signed bytes a * b. GCC's
 * arm_neon.h offers vdotq_s32 inside such functions; clang's (14) only when the whole file is built
 * for it, so clang gets the one instruction as inline assembly. */
#if defined(__clang__)
#define TDOT __attribute__((target("dotprod")))
TDOT INL int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b) {
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}
#else
#define TDOT __attribute__((target("arch=armv8.2-a+dotprod")))
TDOT INL int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }
#endif

/* ---------------- storage types: 16 elements widened to 4 x 4 fp32 ---------------- */

/* v[0..3] = fp32 of the 16 elements stored from byte p (one load never spans a 64-byte line: p is
 * at a multiple of 16 elements) */
INL void ld16(int dt, const unsigned char *p, float32x4_t v[4]) {
    switch (dt) {
    case RWKV5_F16: { /* FCVTL: exact, subnormals included (FPCR.FZ16/AHP are 0 under Linux) */
        float16x8_t a = vreinterpretq_f16_u8(vld1q_u8(p)),
                    b = vreinterpretq_f16_u8(vld1q_u8(p + 16));
        v[0] = vcvt_f32_f16(vget_low_f16(a));
        v[1] = vcvt_high_f32_f16(a);
        v[2] = vcvt_f32_f16(vget_low_f16(b));
        v[3] = vcvt_high_f32_f16(b);
        break;
    }
    case RWKV5_BF16: { /* bf16 is the top half of an fp32: shift left by 16 while widening (SHLL) */
        uint16x8_t a = vreinterpretq_u16_u8(vld1q_u8(p)),
                   b = vreinterpretq_u16_u8(vld1q_u8(p + 16));
        v[0] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(a), 16));
        v[1] = vreinterpretq_f32_u32(vshll_high_n_u16(a, 16));
        v[2] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(b), 16));
        v[3] = vreinterpretq_f32_u32(vshll_high_n_u16(b, 16));
        break;
    }
    case RWKV5_I8: { /* sign-extend 8 -> 16 -> 32 bits, convert */
        int8x16_t a = vreinterpretq_s8_u8(vld1q_u8(p));
        int16x8_t lo = vmovl_s8(vget_low_s8(a)), hi = vmovl_high_s8(a);
        v[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
        v[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
        v[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
        v[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
        break;
    }
    default:
        for (int q = 0; q < 4; q++) v[q] = vreinterpretq_f32_u8(vld1q_u8(p + 16 * q));
    }
}

/* ---------------- matrix x vector: row kernels ----------------
 * out[m][o] = scale[o] * x[m] . W[o], 4 weight rows at a time so every x vector feeds 4 rows. Per
 * row, 16 inputs at a time into 2 accumulators (accumulator e takes inputs 16b + 4q + lane with
 * q % 2 = e), summed a0 + a1, across lanes, then the tail (n mod 16) in order. Rows missing from
 * the last group of 4 repeat the group's first row (computed, not stored). Each output thus depends
 * only on its x row and its weight row: the same bits alone or in a batch, for any split of the
 * rows between threads, and in either layout. */
/* acc[k][q % 2] += x[i + 4q + lane] * W[k][i + 4q + lane] for one block of 16 inputs, 4 rows: two
 * accumulators per row (8 FMA chains in flight) leave registers for the 16 widened weights, which
 * GCC loads ahead (with 4 per row it spilled accumulators to the stack in every iteration) */
INL void rows_block(int dt, float32x4_t acc[4][2], const float *xi,
                    const unsigned char *const wr[4], size_t off) {
    float32x4_t xv[4];
    for (int q = 0; q < 4; q++) xv[q] = vld1q_f32(xi + 4 * q);
    for (int k = 0; k < 4; k++) {
        float32x4_t wv[4];
        ld16(dt, wr[k] + off, wv);
        for (int q = 0; q < 4; q++) acc[k][q % 2] = vfmaq_f32(acc[k][q % 2], xv[q], wv[q]);
    }
}

INL void rows_body(int dt, float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows, nfull = n & ~(size_t)15;
    const size_t esz = rwkv5_esz(dt),
                 per_line = 64 / esz; /* elements per 64-byte line: 1, 2 or 4 blocks */
    size_t cs = RWKV5_LINE_STRIDE(w);
    for (int o = o0; o < o1; o += 4) {
        int nr = o1 - o < 4 ? o1 - o : 4;
        const unsigned char *wr[4];
        for (int k = 0; k < 4; k++) wr[k] = rwkv5_row_ptr(w, (size_t)(o + (k < nr ? k : 0)));
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * n;
            float32x4_t acc[4][2];
            for (int k = 0; k < 4; k++) acc[k][0] = acc[k][1] = vdupq_n_f32(0.0f);
            size_t i = 0, line = 0; /* byte offset of the line holding input i */
            for (; i + per_line <= nfull; i += per_line, line += cs) /* whole lines */
                for (size_t b = 0; b < per_line; b += 16)
                    rows_block(dt, acc, xm + i + b, wr, line + b * esz);
            for (; i < nfull; i += 16)
                rows_block(dt, acc, xm + i, wr, line + i % per_line * esz); /* rest of a line */
            float s[4]; /* constant indices only, so the accumulators stay in registers */
            for (int k = 0; k < 4; k++) s[k] = vaddvq_f32(vaddq_f32(acc[k][0], acc[k][1]));
            for (int k = 0; k < nr; k++) {
                for (size_t t = nfull; t < n; t++)
                    s[k] += xm[t] * rwkv5_load(dt, wr[k] + RWKV5_COL_OFF(t, esz, cs));
                out[(size_t)m * d + o + k] = s[k] * rwkv5_row_scale(w, o + k);
            }
        }
    }
}

#define ROWS_FN(NAME, DT)                                                                          \
    static void NAME(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) {      \
        rows_body(DT, out, x, w, M, o0, o1);                                                       \
    }
ROWS_FN(mm_neon_f32, RWKV5_F32)
ROWS_FN(mm_neon_f16, RWKV5_F16)
ROWS_FN(mm_neon_bf16, RWKV5_BF16)
ROWS_FN(mm_neon_i8, RWKV5_I8)

/* ---------------- int8 rows by SDOT ----------------
 * Widening each int8 weight to fp32 takes 2.5 instructions per weight before the FMA. SDOT
 * multiplies 16 signed bytes by 16 signed bytes into 4 int32 lanes in one instruction, so x is
 * turned once per call piece into bytes, as the AVX-512 VNNI kernel does (matmul.c): quantised per
 * input row to q = round-to-nearest-even(x / s), |q| <= XQ, s = max|x| / XQ, written as 3 balanced
 * base-256 digits q = 65536 d2 + 256 d1 + d0, each a signed byte. The dot products are exact
 * integers (|lane| <= n/4 * 128 * 128 < 2^31 for n <= XP_MAX); the result is
 * s * scale[o] * sum_p 256^p acc_p, the same expression, quantisation and rounding as the VNNI
 * kernel, so the two give the same bits. The only error is the quantisation of x, |error| <=
 * s/2 * sum|w| (24-bit x against 8-bit weights). Rows with inf/nan take the widening kernel (the
 * IEEE result). Per 16 weights and row: one load and 3 SDOT instead of a load, 10 widening steps
 * and 4 FMAs. */
#define XP_MAX 16384
#define XQ     8355711 /* 127 * (65536 + 256 + 1): the largest |q| with 3 balanced digits */

/* digits of 4 quantised values: lanes of d[0..2] (int32) */
INL void digits4(int32x4_t q, int32x4_t d[3]) {
    const int32x4_t c128 = vdupq_n_s32(128);
    for (int p = 0; p < 2; p++) {
        int32x4_t hi = vshrq_n_s32(vaddq_s32(q, c128), 8); /* (q + 128) >> 8, arithmetic */
        d[p] = vsubq_s32(q, vshlq_n_s32(hi, 8));           /* in [-128, 127] */
        q = hi;
    }
    d[2] = q;
}

TDOT static void mm_neon_dot_i8(float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                                int o1) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows;
    if (n > XP_MAX) {
        rows_body(RWKV5_I8, out, x, w, M, o0, o1);
        return;
    }
    int8_t xp[3][XP_MAX] __attribute__((aligned(16)));
    size_t np = (n + 15) & ~(size_t)15, cs = RWKV5_LINE_STRIDE(w);
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * n;
        /* max |x|; FMAX returns nan when a lane is nan, so amax is then nan */
        float32x4_t vmax = vdupq_n_f32(0.0f);
        size_t i = 0;
        for (; i + 4 <= n; i += 4) vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(xm + i)));
        float amax = vmaxvq_f32(vmax);
        for (; i < n; i++) amax = isnan(xm[i]) ? xm[i] : fmaxf(amax, fabsf(xm[i]));
        if (!isfinite(amax)) { /* inf/nan: the IEEE result of the widening kernel */
            rows_body(RWKV5_I8, out + (size_t)m * d, xm, w, 1, o0, o1);
            continue;
        }
        float s = amax > 0.0f ? amax / (float)XQ : 0.0f, inv = s > 0.0f ? 1.0f / s : 0.0f;
        const int32x4_t lim = vdupq_n_s32(XQ), nlim = vdupq_n_s32(-XQ);
        for (size_t b = 0; b < np;
             b += 16) { /* 16 values -> 16 bytes of each digit; zeros past n */
            float tmp[16] = {0};
            const float *src = xm + b;
            if (b + 16 > n) {
                memcpy(tmp, xm + b, (n - b) * sizeof(float));
                src = tmp;
            }
            int16x8_t h[3][2];
            for (int g = 0; g < 4; g++) {
                int32x4_t q = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(src + 4 * g), inv));
                int32x4_t dg[3];
                digits4(vmaxq_s32(vminq_s32(q, lim), nlim), dg);
                for (int p = 0; p < 3; p++) {
                    int16x4_t nrw = vmovn_s32(dg[p]);
                    h[p][g / 2] = g % 2 ? vcombine_s16(vget_low_s16(h[p][g / 2]), nrw)
                                        : vcombine_s16(nrw, nrw);
                }
            }
            for (int p = 0; p < 3; p++)
                vst1q_s8(xp[p] + b, vcombine_s8(vmovn_s16(h[p][0]), vmovn_s16(h[p][1])));
        }
        for (int o = o0; o < o1; o += 4) {
            int nr = o1 - o < 4 ? o1 - o : 4;
            const unsigned char *wr[4];
            for (int k = 0; k < 4; k++) wr[k] = rwkv5_row_ptr(w, (size_t)(o + (k < nr ? k : 0)));
            int32x4_t acc[4][3];
            for (int k = 0; k < 4; k++)
                for (int p = 0; p < 3; p++) acc[k][p] = vdupq_n_s32(0);
            for (i = 0; i + 16 <= n; i += 16) { /* a 16-byte load never spans a 64-byte line */
                size_t off = RWKV5_COL_OFF(i, 1, cs);
                int8x16_t x0 = vld1q_s8(xp[0] + i), x1 = vld1q_s8(xp[1] + i),
                          x2 = vld1q_s8(xp[2] + i);
                for (int k = 0; k < 4; k++) {
                    int8x16_t wv = vreinterpretq_s8_u8(vld1q_u8(wr[k] + off));
                    acc[k][0] = sdot(acc[k][0], wv, x0);
                    acc[k][1] = sdot(acc[k][1], wv, x1);
                    acc[k][2] = sdot(acc[k][2], wv, x2);
                }
            }
            if (i < n) { /* the last 1..15 bytes of each row, zero-padded (nothing past the row is
                            read) */
                int8x16_t x0 = vld1q_s8(xp[0] + i), x1 = vld1q_s8(xp[1] + i),
                          x2 = vld1q_s8(xp[2] + i);
                for (int k = 0; k < 4; k++) {
                    int8_t t[16] = {0};
                    memcpy(t, wr[k] + RWKV5_COL_OFF(i, 1, cs), n - i);
                    int8x16_t wv = vld1q_s8(t);
                    acc[k][0] = sdot(acc[k][0], wv, x0);
                    acc[k][1] = sdot(acc[k][1], wv, x1);
                    acc[k][2] = sdot(acc[k][2], wv, x2);
                }
            }
            int64_t dot[4]; /* constant indices only, so the accumulators stay in registers */
            for (int k = 0; k < 4; k++) {
                dot[k] = 0;
                for (int p = 2; p >= 0; p--) dot[k] = 256 * dot[k] + (int64_t)vaddvq_s32(acc[k][p]);
            }
            for (int k = 0; k < nr; k++)
                out[(size_t)m * d + o + k] =
                    (float)((double)dot[k] * (double)s) * rwkv5_row_scale(w, o + k);
        }
    }
}

/* ---------------- GEMM pieces ---------------- */

INL void pack_body(int dt, float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc) {
    size_t esz = rwkv5_esz(dt), cs = RWKV5_LINE_STRIDE(w);
    for (int r = 0; r < RWKV5_GEMM_NR; r++) {
        float *dst = Bp + (size_t)r * kc;
        if (o + r >= w->rows) {
            memset(dst, 0, sizeof(float) * (size_t)kc);
            continue;
        }
        const unsigned char *row = rwkv5_row_ptr(w, (size_t)(o + r));
        float s = rwkv5_row_scale(w, o + r);
        int i = 0;
        for (; i + 16 <= kc; i += 16) { /* k0 + i is a multiple of 16: inside one 64-byte line */
            float32x4_t v[4];
            ld16(dt, row + RWKV5_COL_OFF(k0 + (size_t)i, esz, cs), v);
            for (int q = 0; q < 4; q++)
                vst1q_f32(dst + i + 4 * q, w->scale ? vmulq_n_f32(v[q], s) : v[q]);
        }
        for (; i < kc; i++) {
            float v = rwkv5_load(dt, row + RWKV5_COL_OFF(k0 + (size_t)i, esz, cs));
            dst[i] = w->scale ? v * s : v;
        }
    }
}
#define PACK_FN(NAME, DT)                                                                          \
    static void NAME(float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc) {                    \
        pack_body(DT, Bp, w, o, k0, kc);                                                           \
    }
PACK_FN(pack_neon_f32, RWKV5_F32)
PACK_FN(pack_neon_f16, RWKV5_F16)
PACK_FN(pack_neon_bf16, RWKV5_BF16)
PACK_FN(pack_neon_i8, RWKV5_I8)

/* 6 weight rows x 16 columns of the 64-row panel per pass: 24 accumulators, 4 x vectors and a
 * broadcast weight in 32 registers. OT[o][m] += W[o][k] x[m][k] one k after the other, with FMA:
 * the order of the x86 micro-kernels, so the same bits. */
static void gemm_ukernel(float *C, size_t ldc, const float *X, const float *B, size_t ldb, int kc,
                         int acc_in) {
    enum { NR = RWKV5_GEMM_NR, MR = RWKV5_GEMM_MR };
    for (int q0 = 0; q0 < MR; q0 += 16) {
        float32x4_t c[NR][4];
        for (int r = 0; r < NR; r++)
            for (int q = 0; q < 4; q++)
                c[r][q] = acc_in ? vld1q_f32(C + r * ldc + q0 + 4 * q) : vdupq_n_f32(0.0f);
        for (int k = 0; k < kc; k++) {
            const float *xk = X + (size_t)k * MR + q0;
            float32x4_t x0 = vld1q_f32(xk), x1 = vld1q_f32(xk + 4), x2 = vld1q_f32(xk + 8),
                        x3 = vld1q_f32(xk + 12);
            for (int r = 0; r < NR; r++) {
                float b = B[r * ldb + k];
                c[r][0] = vfmaq_n_f32(c[r][0], x0, b);
                c[r][1] = vfmaq_n_f32(c[r][1], x1, b);
                c[r][2] = vfmaq_n_f32(c[r][2], x2, b);
                c[r][3] = vfmaq_n_f32(c[r][3], x3, b);
            }
        }
        for (int r = 0; r < NR; r++)
            for (int q = 0; q < 4; q++) vst1q_f32(C + r * ldc + q0 + 4 * q, c[r][q]);
    }
}

/* ---------------- the dispatch rows (kernels.h) ---------------- */

const rwkv5_isa_kernels rwkv5_neon_kernels = {
    .rows = {[RWKV5_F32] = mm_neon_f32,
             [RWKV5_F16] = mm_neon_f16,
             [RWKV5_BF16] = mm_neon_bf16,
             [RWKV5_I8] = mm_neon_i8,
             [RWKV5_I4] = rwkv5_rows_i4_scalar},
    .pack = {[RWKV5_F32] = pack_neon_f32,
             [RWKV5_F16] = pack_neon_f16,
             [RWKV5_BF16] = pack_neon_bf16,
             [RWKV5_I8] = pack_neon_i8,
             [RWKV5_I4] = rwkv5_pack_i4_scalar},
    .gemm = gemm_ukernel,
};
const rwkv5_isa_kernels rwkv5_neon_dotprod_kernels = {
    .rows = {[RWKV5_F32] = mm_neon_f32,
             [RWKV5_F16] = mm_neon_f16,
             [RWKV5_BF16] = mm_neon_bf16,
             [RWKV5_I8] = mm_neon_dot_i8,
             [RWKV5_I4] = rwkv5_rows_i4_scalar},
    .pack = {[RWKV5_F32] = pack_neon_f32,
             [RWKV5_F16] = pack_neon_f16,
             [RWKV5_BF16] = pack_neon_bf16,
             [RWKV5_I8] = pack_neon_i8,
             [RWKV5_I4] = rwkv5_pack_i4_scalar},
    .gemm = gemm_ukernel,
};

/* ---------------- WKV ----------------
 * The value index j is independent in every product: columns are taken in blocks of NV vectors
 * (16, then 4, then single columns), the block's partial results held in registers across the loop
 * over the key index i (or the positions s). */

/* One token, columns [j, j + 4 nv): y[j] = sum_i r[i] (u[i] k[i] v[j] + S[i][j]);
 * S[i][j] = w[i] S[i][j] + k[i] v[j] */
INL void step_cols(float *y, float *S, const float *r, const float *k, const float *v,
                   const float *w, const float *u, int N, int j, int nv) {
    float32x4_t yv[4], vv[4];
    for (int q = 0; q < nv; q++) yv[q] = vdupq_n_f32(0.0f), vv[q] = vld1q_f32(v + j + 4 * q);
    for (int i = 0; i < N; i++) {
        float ri = r[i], ki = k[i], wi = w[i], uki = u[i] * k[i];
        float *Si = S + (size_t)i * N + j;
        for (int q = 0; q < nv; q++) {
            float32x4_t s = vld1q_f32(Si + 4 * q);
            yv[q] = vfmaq_n_f32(yv[q], vfmaq_n_f32(s, vv[q], uki), ri);
            vst1q_f32(Si + 4 * q, vfmaq_n_f32(vmulq_n_f32(vv[q], ki), s, wi));
        }
    }
    for (int q = 0; q < nv; q++) vst1q_f32(y + j + 4 * q, yv[q]);
}

void rwkv5_neon_wkv_step(float *y, float *S, const float *r, const float *k, const float *v,
                         const float *w, const float *u, int N) {
    int j = 0;
    for (; j + 16 <= N; j += 16) step_cols(y, S, r, k, v, w, u, N, j, 4);
    for (; j + 4 <= N; j += 4) step_cols(y, S, r, k, v, w, u, N, j, 1);
    for (; j < N; j++) {
        float yj = 0.0f;
        for (int i = 0; i < N; i++) {
            float *Sij = S + (size_t)i * N + j;
            yj += r[i] * (u[i] * k[i] * v[j] + *Sij);
            *Sij = w[i] * *Sij + k[i] * v[j];
        }
        y[j] = yj;
    }
}

/* sum_i a[i] b[i] c[i] in 16 interleaved partial sums added pairwise: the order of kernels.c's dot3
 * (lane q of the 16 takes i = q mod 16), so the same bits */
INL float dot3(const float *a, const float *b, const float *c, int N) {
    float32x4_t p[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    int i = 0;
    for (; i + 16 <= N; i += 16)
        for (int q = 0; q < 4; q++)
            p[q] = vaddq_f32(
                p[q], vmulq_f32(vmulq_f32(vld1q_f32(a + i + 4 * q), vld1q_f32(b + i + 4 * q)),
                                vld1q_f32(c + i + 4 * q)));
    float t[16];
    for (int q = 0; q < 4; q++) vst1q_f32(t + 4 * q, p[q]);
    for (int q = 0; i < N; i++, q++) t[q] += a[i] * b[i] * c[i];
    for (int h = 8; h >= 1; h /= 2)
        for (int q = 0; q < h; q++) t[q] += t[q + h];
    return t[0];
}

/* y_t[j..] = sum_i (r_t[i] P[t][i]) S0[i][j..] + sum_{s<=t} a[s] v_s[j..] for one block of columns
 */
INL void chunk_y_cols(float *yt, const float *S, const float *rt, const float *Pt, const float *v,
                      size_t ld, const float *a, int t, int N, int j, int nv) {
    float32x4_t c[4];
    for (int q = 0; q < nv; q++) c[q] = vdupq_n_f32(0.0f);
    for (int i = 0; i < N; i++) {
        float ci = rt[i] * Pt[i];
        const float *Si = S + (size_t)i * N + j;
        for (int q = 0; q < nv; q++) c[q] = vfmaq_n_f32(c[q], vld1q_f32(Si + 4 * q), ci);
    }
    for (int s = 0; s <= t; s++) {
        const float *vs = v + (size_t)s * ld + j;
        for (int q = 0; q < nv; q++) c[q] = vfmaq_n_f32(c[q], vld1q_f32(vs + 4 * q), a[s]);
    }
    for (int q = 0; q < nv; q++) vst1q_f32(yt + j + 4 * q, c[q]);
}

/* S[i][j..] = P[n][i] S0[i][j..] + sum_s (k_s[i] P[n-1-s][i]) v_s[j..] for one block of columns */
INL void chunk_s_cols(float *Si, const float *k, const float *v, size_t ld, const float *P,
                      size_t ldp, int n, int i, int j, int nv) {
    float32x4_t c[4];
    float pn = P[(size_t)n * ldp + i];
    for (int q = 0; q < nv; q++) c[q] = vmulq_n_f32(vld1q_f32(Si + j + 4 * q), pn);
    for (int s = 0; s < n; s++) {
        float ks = k[(size_t)s * ld + i] * P[(size_t)(n - 1 - s) * ldp + i];
        const float *vs = v + (size_t)s * ld + j;
        for (int q = 0; q < nv; q++) c[q] = vfmaq_n_f32(c[q], vld1q_f32(vs + 4 * q), ks);
    }
    for (int q = 0; q < nv; q++) vst1q_f32(Si + j + 4 * q, c[q]);
}

void rwkv5_neon_wkv_chunk(float *y, float *S, const float *r, const float *k, const float *v,
                          size_t ld, const float *P, size_t ldp, const float *u, int n, int N) {
    float a[RWKV5_CHUNK];
    for (int t = 0; t < n; t++) {
        float *yt = y + (size_t)t * ld;
        const float *rt = r + (size_t)t * ld, *Pt = P + (size_t)t * ldp;
        /* intra-chunk scores, non-negative powers only: a[s] = sum_i r_t[i] k_s[i] w_i^(t-1-s) */
        for (int s = 0; s < t; s++)
            a[s] = dot3(rt, k + (size_t)s * ld, P + (size_t)(t - 1 - s) * ldp, N);
        a[t] = dot3(rt, u, k + (size_t)t * ld, N);
        int j = 0;
        for (; j + 16 <= N; j += 16) chunk_y_cols(yt, S, rt, Pt, v, ld, a, t, N, j, 4);
        for (; j + 4 <= N; j += 4) chunk_y_cols(yt, S, rt, Pt, v, ld, a, t, N, j, 1);
        for (; j < N; j++) {
            float c = 0.0f;
            for (int i = 0; i < N; i++) c += rt[i] * Pt[i] * S[(size_t)i * N + j];
            for (int s = 0; s <= t; s++) c += a[s] * v[(size_t)s * ld + j];
            yt[j] = c;
        }
    }
    for (int i = 0; i < N; i++) { /* after every y: the products above read S0 */
        float *Si = S + (size_t)i * N;
        int j = 0;
        for (; j + 16 <= N; j += 16) chunk_s_cols(Si, k, v, ld, P, ldp, n, i, j, 4);
        for (; j + 4 <= N; j += 4) chunk_s_cols(Si, k, v, ld, P, ldp, n, i, j, 1);
        for (; j < N; j++) {
            float c = Si[j] * P[(size_t)n * ldp + i];
            for (int s = 0; s < n; s++)
                c += k[(size_t)s * ld + i] * P[(size_t)(n - 1 - s) * ldp + i] *
                     v[(size_t)s * ld + j];
            Si[j] = c;
        }
    }
}

/* ---------------- sigmoid row operations ---------------- */

/* e^x on 4 lanes, the algorithm of kernels.c's AVX-512 exp: x clamped to [-100, 100] (nan passes:
 * FMIN/FMAX return it), x = n ln2 + r with ln2 split in two (Cody-Waite), e^r by its Taylor series
 * to r^7 on |r| <= ln2/2, times 2^n as two factors 2^(n/2) 2^(n - n/2) (each a normal fp32 for
 * |n| <= 145), so the product overflows to inf and underflows to 0 as expf does. */
INL float32x4_t exp4(float32x4_t x) {
    x = vmaxq_f32(vdupq_n_f32(-100.0f), vminq_f32(vdupq_n_f32(100.0f), x));
    float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_n_f32(x, n, 0.693359375f);
    r = vfmsq_n_f32(r, n, -2.12194440e-4f);
    float32x4_t p = vdupq_n_f32(1.0f / 5040.0f);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 720.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    int32x4_t ni = vcvtq_s32_f32(n), h = vshrq_n_s32(ni, 1);
    const int32x4_t bias = vdupq_n_s32(127);
    float32x4_t f1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(h, bias), 23));
    float32x4_t f2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vsubq_s32(ni, h), bias), 23));
    return vmulq_f32(vmulq_f32(p, f1), f2);
}
INL float32x4_t sigmoid4(float32x4_t z) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    return vdivq_f32(one, vaddq_f32(one, exp4(vnegq_f32(z))));
}

void rwkv5_neon_silu_gate(float *y, const float *g, size_t C) {
    size_t i = 0;
    for (; i + 4 <= C; i += 4) {
        float32x4_t gv = vld1q_f32(g + i);
        vst1q_f32(y + i, vmulq_f32(vld1q_f32(y + i), vmulq_f32(gv, sigmoid4(gv))));
    }
    if (i < C) { /* the last 1..3 through a zero-padded vector */
        float gt[4] = {0}, yt[4] = {0};
        memcpy(gt, g + i, (C - i) * sizeof(float));
        memcpy(yt, y + i, (C - i) * sizeof(float));
        float32x4_t gv = vld1q_f32(gt);
        vst1q_f32(yt, vmulq_f32(vld1q_f32(yt), vmulq_f32(gv, sigmoid4(gv))));
        memcpy(y + i, yt, (C - i) * sizeof(float));
    }
}

void rwkv5_neon_add_gated(float *x, const float *a, const float *b, size_t C) {
    size_t i = 0;
    for (; i + 4 <= C; i += 4)
        vst1q_f32(x + i, vfmaq_f32(vld1q_f32(x + i), sigmoid4(vld1q_f32(a + i)), vld1q_f32(b + i)));
    if (i < C) {
        float xt[4] = {0}, at[4] = {0}, bt[4] = {0};
        memcpy(xt, x + i, (C - i) * sizeof(float));
        memcpy(at, a + i, (C - i) * sizeof(float));
        memcpy(bt, b + i, (C - i) * sizeof(float));
        vst1q_f32(xt, vfmaq_f32(vld1q_f32(xt), sigmoid4(vld1q_f32(at)), vld1q_f32(bt)));
        memcpy(x + i, xt, (C - i) * sizeof(float));
    }
}
#else
typedef int rwkv5_neon_unused; /* ISO C wants a translation unit to declare something */
#endif
