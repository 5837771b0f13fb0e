/* out = x @ W^T with W stored in any of the storage types of rwkv5_dtypes (dtypes.h), widened to
 * fp32 in registers. Two families, at the ISA level chosen at run time (rwkv5_cpu_isa):
 *  - row kernels (recurrent mode, small M): each output is one dot product of length n, 4 weight
 *    rows at a time so every widened weight vector feeds up to 4x4 FMAs; threads take contiguous
 *    blocks of rows, so the weights stream from memory once per call. Every kernel reads both
 *    layouts of rwkv5_mat: element (o, i) at rwkv5_row_ptr(w, o) + RWKV5_COL_OFF(i) (row-major:
 *    rows apart, i*size; 4-row blocked: whole 64-byte lines 256 bytes apart); no vector load spans
 *    two lines of the blocked layout, since a load's elements start at a multiple of its own size;
 *  - a blocked GEMM (parallel mode) further down.
 * Each kernel is an always-inline body taking the storage type as a constant argument, compiled per
 * target (scalar, AVX2, AVX-512) and instantiated once per storage type; the table at the end
 * (one row of kernels per ISA level, indexed by storage type) is the whole dispatch. The one place
 * a storage type's bits are decoded per target: rwkv5_load (dtypes.h), ld256, ld512 (here) and
 * neon.c's ld16. */
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/cpu.h"
#include "common/threadpool.h"
#include "kernels.h"
#include "neon.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

#define NR RWKV5_GEMM_NR

/* ---------------- scalar ---------------- */

/* out[m][o] = scale[o] * sum_i x[m][i] W[o][i] for o in [o0, o1), one dot product at a time, in
 * input order. Weight rows are addressed in bytes (`const unsigned char *`): storage may be
 * unaligned. `dt` is a constant in every caller (the per-dtype functions below). */
INL void rows_scalar(int dt, float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                     int o1) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows, cs = RWKV5_LINE_STRIDE(w);
    const size_t esz = rwkv5_esz(dt);
    for (int o = o0; o < o1; o++) {
        const unsigned char *wr = rwkv5_row_ptr(w, (size_t)o);
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * n;
            /* out[m][o] = sum_i x[m][i] * W[o][i] */
            float acc = 0.0f;
            for (size_t i = 0; i < n; i++)
                acc += xm[i] * rwkv5_load(dt, wr + RWKV5_COL_OFF(i, esz, cs));
            out[(size_t)m * d + o] = acc * rwkv5_row_scale(w, o);
        }
    }
}

/* Bp (NR, kc) = rows [o, o+NR) x inputs [k0, k0+kc) widened to fp32 (times the row scale for a
 * dtype with one); rows past w->rows are 0. */
INL void pack_scalar(int dt, float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc) {
    size_t esz = rwkv5_esz(dt), cs = RWKV5_LINE_STRIDE(w);
    for (int r = 0; r < RWKV5_GEMM_NR; r++) {
        float *dst = Bp + (size_t)r * kc;
        if (o + r >= w->rows) {
            for (int i = 0; i < kc; i++) dst[i] = 0.0f;
            continue;
        }
        const unsigned char *row = rwkv5_row_ptr(w, (size_t)(o + r));
        float s = rwkv5_row_scale(w, o + r);
        if (rwkv5_dtypes[dt].row_scale)
            for (int i = 0; i < kc; i++)
                dst[i] = rwkv5_load(dt, row + RWKV5_COL_OFF(k0 + (size_t)i, esz, cs)) * s;
        else
            for (int i = 0; i < kc; i++)
                dst[i] = rwkv5_load(dt, row + RWKV5_COL_OFF(k0 + (size_t)i, esz, cs));
    }
}

/* The per-dtype instances that the dispatch table (end of file) holds: each calls an always-inline
 * body with a constant dtype, compiled for the target ATTR. */
#define ROWS_FN(NAME, ATTR, BODY, DT)                                                              \
    ATTR static void NAME(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) { \
        BODY(DT, out, x, w, M, o0, o1);                                                            \
    }
#define PACK_FN(NAME, ATTR, BODY, DT)                                                              \
    ATTR static void NAME(float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc) {               \
        BODY(DT, Bp, w, o, k0, kc);                                                                \
    }
#define NO_ATTR

ROWS_FN(mm_scalar_f32, NO_ATTR, rows_scalar, RWKV5_F32)
ROWS_FN(mm_scalar_f16, NO_ATTR, rows_scalar, RWKV5_F16)
ROWS_FN(mm_scalar_bf16, NO_ATTR, rows_scalar, RWKV5_BF16)
ROWS_FN(mm_scalar_i8, NO_ATTR, rows_scalar, RWKV5_I8)
PACK_FN(pack_scalar_f32, NO_ATTR, pack_scalar, RWKV5_F32)
PACK_FN(pack_scalar_f16, NO_ATTR, pack_scalar, RWKV5_F16)
PACK_FN(pack_scalar_bf16, NO_ATTR, pack_scalar, RWKV5_BF16)
PACK_FN(pack_scalar_i8, NO_ATTR, pack_scalar, RWKV5_I8)

/* int4 (RWKV5_I4, blocks of dtypes.h): per output, in input order, one fp32 sum per group of 32
 * times the group's scale:  out[m][o] = sum_g s[o][g] * (sum_{i in g} x[m][i] * q[o][i]).
 * The portable kernel of every ISA level without its own (and the fallback of the AVX2 one). */
void rwkv5_rows_i4_scalar(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows;
    for (int o = o0; o < o1; o++) {
        const unsigned char *wr = rwkv5_row_ptr(w, (size_t)o);
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * n;
            float acc = 0.0f;
            for (size_t g = 0; g * 32 < n; g++) {
                size_t e = g * 32 + 32 < n ? g * 32 + 32 : n;
                float a = 0.0f;
                for (size_t i = g * 32; i < e; i++) a += xm[i] * (float)rwkv5_i4_q(wr, i);
                acc += a * rwkv5_i4_scale(wr, g);
            }
            out[(size_t)m * d + o] = acc;
        }
    }
}

/* Bp (NR, kc) = rows [o, o+NR) x inputs [k0, k0+kc) as fp32 q * s; rows past w->rows are 0. */
void rwkv5_pack_i4_scalar(float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc) {
    for (int r = 0; r < RWKV5_GEMM_NR; r++) {
        float *dst = Bp + (size_t)r * kc;
        if (o + r >= w->rows) {
            for (int i = 0; i < kc; i++) dst[i] = 0.0f;
            continue;
        }
        const unsigned char *row = rwkv5_row_ptr(w, (size_t)(o + r));
        for (int i = 0; i < kc; i++) {
            size_t c = k0 + (size_t)i;
            dst[i] = (float)rwkv5_i4_q(row, c) * rwkv5_i4_scale(row, c / 32);
        }
    }
}

#if defined(__x86_64__)
/* ---------------- prefetching (the x86 row kernels) ---------------- */

/* the 4 cache lines from p. Always inline: GCC takes a function made only of prefetches for one
 * without effect and drops the calls. */
INL void prefetch_256(const void *p) {
    const char *c = (const char *)p;
    _mm_prefetch(c, _MM_HINT_T0);
    _mm_prefetch(c + 64, _MM_HINT_T0);
    _mm_prefetch(c + 128, _MM_HINT_T0);
    _mm_prefetch(c + 192, _MM_HINT_T0);
}
/* Software prefetch of the next block of 4 weight rows (row-major layout), spread over the current
 * block's loop: the 4 rows of a block are read as 4 interleaved streams, each only n*size bytes
 * long (2 KB for an int8 row of C=2048), so the hardware prefetcher re-trains at every block.
 * Touching the next block's bytes in order, 4 cache lines per 4 x 64 bytes consumed, keeps one
 * linear stream ahead (docs/performance.md has the measurements). The blocked layout is one
 * sequential stream already and needs none (next_block is NULL for it). */
INL void pf_next(const unsigned char *nx, size_t byte_off) {
    if (nx) prefetch_256(nx + 4 * byte_off);
}
/* pf_next at element i of a row of esz-byte elements: the loops consume 4 rows x i*esz bytes, so
 * the next block's bytes [4*i*esz, +256) are prefetched each time that offset reaches a multiple of
 * 256 */
INL void pf_next_at(const unsigned char *nx, size_t i, size_t esz) {
    if ((4 * i * esz) % 256 == 0) pf_next(nx, i * esz);
}
/* the start of the block after rows [o, o+4) when it is still inside this call piece */
static inline const unsigned char *next_block(const rwkv5_mat *w, int o, int o1) {
    return o + 8 <= o1 && !w->blocked ? rwkv5_row_ptr(w, (size_t)o + 4) : NULL;
}
/* The blocked layout is one linear stream: once per 4 lines consumed (one line of each of the 4
 * rows, starting at p), the 4 lines `dist` bytes further on are prefetched. The hardware
 * prefetcher alone keeps fewer misses in flight than one thread needs (4 KB ahead; 8 KB for int8:
 * docs/performance.md). */
#define PF_AHEAD_BYTES 4096
#define PF_AHEAD_I8    8192
INL void pf_ahead(const unsigned char *p, size_t dist) { prefetch_256(p + dist); }

/* ---------------- AVX-512: 16 lanes, 4 output rows at a time, masked tail ---------------- */
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

/* the (masked, unaligned) 16 elements stored from byte p as fp32 */
T512 INL __m512 ld512(int dt, const unsigned char *p, __mmask16 k) {
    switch (dt) {
    case RWKV5_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
    case RWKV5_BF16: {
        __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
    }
    case RWKV5_I8:
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, p)));
    default:
        return _mm512_maskz_loadu_ps(k, p);
    }
}

T512 INL void rows_avx512(int dt, float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                          int o1) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows;
    size_t nfull = n & ~(size_t)15;
    __mmask16 tail = (__mmask16)((1u << (n - nfull)) - 1u);
    size_t cs = RWKV5_LINE_STRIDE(w);
    const size_t esz = rwkv5_esz(dt);
#define OFF(i)  RWKV5_COL_OFF(i, esz, cs)
#define ROWP(o) rwkv5_row_ptr(w, (size_t)(o))
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        const unsigned char *w0 = ROWP(o), *w1 = ROWP(o + 1), *w2 = ROWP(o + 2), *w3 = ROWP(o + 3);
        int m = 0;
        /* 4 input rows x 4 output rows: each weight vector is widened once for 4 FMAs */
        for (; m + 4 <= M; m += 4) {
            const float *x0 = x + (size_t)m * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
            __m512 acc[4][4];
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++) acc[a][b] = _mm512_setzero_ps();
            for (size_t i = 0; i < n; i += 16) {
                __mmask16 k = i < nfull ? (__mmask16)0xffff : tail;
                __m512 wv[4] = {ld512(dt, w0 + OFF(i), k), ld512(dt, w1 + OFF(i), k),
                                ld512(dt, w2 + OFF(i), k), ld512(dt, w3 + OFF(i), k)};
                __m512 xv[4] = {_mm512_maskz_loadu_ps(k, x0 + i), _mm512_maskz_loadu_ps(k, x1 + i),
                                _mm512_maskz_loadu_ps(k, x2 + i), _mm512_maskz_loadu_ps(k, x3 + i)};
                for (int a = 0; a < 4; a++)
                    for (int b = 0; b < 4; b++)
                        acc[a][b] = _mm512_fmadd_ps(xv[a], wv[b], acc[a][b]);
            }
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++)
                    out[(size_t)(m + a) * d + o + b] =
                        _mm512_reduce_add_ps(acc[a][b]) * rwkv5_row_scale(w, o + b);
        }
        const unsigned char *nx = next_block(w, o, o1);
        for (; m < M; m++) {
            const float *xm = x + (size_t)m * n;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            size_t i = 0;
            for (; i < nfull; i += 16) {
                pf_next_at(nx, i, esz);
                if (w->blocked && i % (64 / esz) == 0) pf_ahead(w0 + OFF(i), PF_AHEAD_BYTES);
                __m512 xv = _mm512_loadu_ps(xm + i);
                a0 = _mm512_fmadd_ps(xv, ld512(dt, w0 + OFF(i), 0xffff), a0);
                a1 = _mm512_fmadd_ps(xv, ld512(dt, w1 + OFF(i), 0xffff), a1);
                a2 = _mm512_fmadd_ps(xv, ld512(dt, w2 + OFF(i), 0xffff), a2);
                a3 = _mm512_fmadd_ps(xv, ld512(dt, w3 + OFF(i), 0xffff), a3);
            }
            if (tail) {
                __m512 xv = _mm512_maskz_loadu_ps(tail, xm + i);
                a0 = _mm512_fmadd_ps(xv, ld512(dt, w0 + OFF(i), tail), a0);
                a1 = _mm512_fmadd_ps(xv, ld512(dt, w1 + OFF(i), tail), a1);
                a2 = _mm512_fmadd_ps(xv, ld512(dt, w2 + OFF(i), tail), a2);
                a3 = _mm512_fmadd_ps(xv, ld512(dt, w3 + OFF(i), tail), a3);
            }
            float *om = out + (size_t)m * d + o;
            om[0] = _mm512_reduce_add_ps(a0) * rwkv5_row_scale(w, o + 0);
            om[1] = _mm512_reduce_add_ps(a1) * rwkv5_row_scale(w, o + 1);
            om[2] = _mm512_reduce_add_ps(a2) * rwkv5_row_scale(w, o + 2);
            om[3] = _mm512_reduce_add_ps(a3) * rwkv5_row_scale(w, o + 3);
        }
    }
    for (; o < o1; o++) {
        const unsigned char *w0 = ROWP(o);
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * n;
            __m512 a0 = _mm512_setzero_ps();
            size_t i = 0;
            for (; i < nfull; i += 16)
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xm + i), ld512(dt, w0 + OFF(i), 0xffff), a0);
            if (tail)
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, xm + i),
                                     ld512(dt, w0 + OFF(i), tail), a0);
            out[(size_t)m * d + o] = _mm512_reduce_add_ps(a0) * rwkv5_row_scale(w, o);
        }
    }
#undef OFF
#undef ROWP
}

ROWS_FN(mm_avx512_f32, T512, rows_avx512, RWKV5_F32)
ROWS_FN(mm_avx512_f16, T512, rows_avx512, RWKV5_F16)
ROWS_FN(mm_avx512_bf16, T512, rows_avx512, RWKV5_BF16)
ROWS_FN(mm_avx512_i8, T512, rows_avx512, RWKV5_I8)

/* bf16 rows without lane-crossing widening. A 512-bit load holds 32 bf16 weights; a shift and a
 * mask inside each 32-bit lane give the fp32 values of the weights whose index is i = 2q + e
 * (e = 0, 1; q = 0..15) as E = 2 vectors (faster streaming than the vpmovzxwd kernel above; the
 * same idea for int8, 4 vectors by shifts, gave no gain). x is permuted the same way once per call
 * piece (xp[blk][e][q] = x[blk*16E + E*q + e]), so each vector pair multiplies matching elements.
 * Per output:
 *   out[m][o] = scale[o] * (sum over blocks and e of lanes of x_e * w_e, 4 rows at a time)
 *               + the tail (n mod 16E) in scalar order — the same order for every M and row, so a
 *               sequence gets the same bits alone or in a batch. Rows longer than XP_MAX use the
 *               plain kernel above. */
#define XP_MAX 16384

T512 INL void widen_bf16x32(const unsigned char *p, __m512 *w) {
    __m512i v = _mm512_loadu_si512((const void *)p);
    w[0] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); /* even i */
    w[1] =
        _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u))); /* odd i */
}

T512 static void mm_avx512p_bf16(float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                                 int o1) {
    enum { E = 2 };
    size_t n = (size_t)w->cols, d = (size_t)w->rows, blk = 16 * E;
    if (n > XP_MAX) {
        mm_avx512_bf16(out, x, w, M, o0, o1);
        return;
    }
    float xp[XP_MAX] __attribute__((aligned(64)));
    const int blocked = w->blocked;
    size_t nfull = n / blk * blk;
    size_t cs = RWKV5_LINE_STRIDE(w);
    const size_t esz = sizeof(uint16_t);
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * n;
        for (size_t b = 0; b < nfull; b += blk)
            for (int e = 0; e < E; e++)
                for (int q = 0; q < 16; q++) xp[b + 16 * e + q] = xm[b + E * q + e];
        int o = o0;
        for (; o < o1; o += 4) {
            int nr = o1 - o < 4 ? o1 - o : 4;
            const unsigned char *wr[4];
            for (int k = 0; k < 4; k++) wr[k] = rwkv5_row_ptr(w, (size_t)(o + (k < nr ? k : 0)));
            __m512 acc[4][E];
            for (int k = 0; k < 4; k++)
                for (int e = 0; e < E; e++) acc[k][e] = _mm512_setzero_ps();
            const unsigned char *nx = next_block(w, o, o1);
            for (size_t b = 0; b < nfull; b += blk) {
                pf_next(nx, b * esz);
                if (blocked) pf_ahead(wr[0] + RWKV5_COL_OFF(b, esz, cs), PF_AHEAD_BYTES);
                __m512 xv[E];
                for (int e = 0; e < E; e++) xv[e] = _mm512_load_ps(xp + b + 16 * e);
                for (int k = 0; k < 4; k++) {
                    __m512 wv[E];
                    widen_bf16x32(wr[k] + RWKV5_COL_OFF(b, esz, cs), wv);
                    for (int e = 0; e < E; e++)
                        acc[k][e] = _mm512_fmadd_ps(xv[e], wv[e], acc[k][e]);
                }
            }
            for (int k = 0; k < nr; k++) {
                __m512 a = acc[k][0];
                for (int e = 1; e < E; e++) a = _mm512_add_ps(a, acc[k][e]);
                float sum = _mm512_reduce_add_ps(a);
                for (size_t i = nfull; i < n; i++)
                    sum += xm[i] * rwkv5_ld_bf16(wr[k] + RWKV5_COL_OFF(i, esz, cs), 0);
                out[(size_t)m * d + o + k] = sum * rwkv5_row_scale(w, o + k);
            }
        }
    }
}
/* ---------------- AVX-512 VNNI: int8 rows by dot-product instructions, no widening
 * ---------------- Widening each weight to fp32 costs more instructions than the multiply itself
 * and bounds one thread below the memory bandwidth (docs/performance.md). Here x is turned once per
 * call piece into narrow integer parts that vpdpbusd multiplies with the stored weight bytes
 * directly: x is quantised per input row to integers q = round(x / s), |q| <= XQ (24 bits), s =
 * max|x| / XQ, written as XQ_PARTS = 3 balanced base-256 digits q = 65536*d2 + 256*d1 + d0, each a
 * signed byte. vpdpbusd multiplies unsigned by signed bytes, so the weight byte w is fed as the
 * unsigned byte w + 128 (one xor): sum (w+128)*d = sum w*d + 128*sum(d), and the second term is a
 * constant of the x row. All sums are exact integers (|partial| < 2^31 for n <= XP_MAX); the result
 * is s * scale[o] * sum_p 256^p (acc_p - 128*sum d_p). The only rounding is the quantisation of x,
 * |error| <= s/2 * sum|w|: a 24-bit x against 8-bit weights. Per 64 weights and row: an xor and 3
 * vpdpbusd instead of 12 (sign-extend, convert, FMA per 16). Measured: 16-bit x (two digits) ran
 * 11% faster but moved a test model's logits by 1.6e-3, above the 1e-4 the model is held to.
 * Tails (n not a multiple of 64) use masked weight loads and zero-padded x parts. Every result
 * depends only on its own x row and weight row: the same bits alone or in a batch. */
#define T512V    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))
#define XQ_PARTS 3 /* base-256 digits of the quantised x (the main loop is written out for 3) */
/* XQ = 127 * (65536 + 256 + 1): the largest |q| with XQ_PARTS balanced digits */
#define XQ 8355711

T512V static void mm_avx512v_i8(float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                                int o1) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows;
    if (n > XP_MAX) {
        mm_avx512_i8(out, x, w, M, o0, o1);
        return;
    }
    int8_t xp[XQ_PARTS][XP_MAX + 64] __attribute__((aligned(64)));
    size_t np = (n + 63) & ~(size_t)63;
    __mmask64 tail = (n & 63) ? (((__mmask64)1 << (n & 63)) - 1) : ~(__mmask64)0;
    size_t cs = RWKV5_LINE_STRIDE(w);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int blocked = w->blocked;
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * n;
        /* max |x|, and whether any lane is nan (max_ps may drop a nan) */
        __m512 vmax = _mm512_setzero_ps();
        __mmask16 nan = 0;
        for (size_t i = 0; i < n; i += 16) {
            __mmask16 k = i + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
            __m512 v = _mm512_maskz_loadu_ps(k, xm + i);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
        }
        float amax = _mm512_reduce_max_ps(vmax);
        if (nan ||
            !isfinite(amax)) { /* inf/nan: the IEEE result of the widening kernel, as elsewhere */
            mm_avx512_i8(out + (size_t)m * d, xm, w, 1, o0, o1);
            continue;
        }
        float s = amax > 0.0f ? amax / (float)XQ : 0.0f, inv = s > 0.0f ? 1.0f / s : 0.0f;
        /* q = round-to-nearest-even(x * inv), clamped; digits low first: hi = (q + 128) >> 8
         * (arithmetic), digit = q - 256 * hi, then q = hi. 16 values at a time. */
        const __m512 vinv = _mm512_set1_ps(inv);
        const __m512i lim = _mm512_set1_epi32(XQ), c128 = _mm512_set1_epi32(128);
        __m512i vsum[XQ_PARTS];
        for (int p = 0; p < XQ_PARTS; p++) vsum[p] = _mm512_setzero_si512();
        for (size_t i = 0; i < np; i += 16) {
            __mmask16 k = i + 16 <= n ? (__mmask16)0xffff
                          : i < n     ? (__mmask16)((1u << (n - i)) - 1u)
                                      : 0;
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, xm + i), vinv));
            q = _mm512_max_epi32(_mm512_min_epi32(q, lim),
                                 _mm512_sub_epi32(_mm512_setzero_si512(), lim));
            for (int p = 0; p < XQ_PARTS - 1; p++) {
                __m512i hi = _mm512_srai_epi32(_mm512_add_epi32(q, c128), 8);
                __m512i dg = _mm512_sub_epi32(q, _mm512_slli_epi32(hi, 8));
                _mm_store_si128((__m128i *)(xp[p] + i), _mm512_cvtepi32_epi8(dg));
                vsum[p] = _mm512_add_epi32(vsum[p], dg);
                q = hi;
            }
            _mm_store_si128((__m128i *)(xp[XQ_PARTS - 1] + i), _mm512_cvtepi32_epi8(q));
            vsum[XQ_PARTS - 1] = _mm512_add_epi32(vsum[XQ_PARTS - 1], q);
        }
        int64_t sum[XQ_PARTS];
        for (int p = 0; p < XQ_PARTS; p++) sum[p] = _mm512_reduce_add_epi32(vsum[p]);
        for (int o = o0; o < o1; o += 4) {
            int nr = o1 - o < 4 ? o1 - o : 4;
            const unsigned char *wr[4];
            for (int k = 0; k < 4; k++) wr[k] = rwkv5_row_ptr(w, (size_t)(o + (k < nr ? k : 0)));
            __m512i acc[4][XQ_PARTS];
            for (int k = 0; k < 4; k++)
                for (int p = 0; p < XQ_PARTS; p++) acc[k][p] = _mm512_setzero_si512();
            size_t i = 0;
            const unsigned char *nx = next_block(w, o, o1);
            { /* named accumulators: GCC copies registers around arrays of them (measured 25%
                 slower) */
                __m512i a00 = acc[0][0], a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
                __m512i a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
                for (; i + 64 <= n;
                     i += 64) { /* plain loads: masked ones are slower on some CPUs */
                    pf_next(nx, i);
                    size_t off = RWKV5_COL_OFF(i, 1, cs); /* one 64-byte line of each row */
                    if (blocked) pf_ahead(wr[0] + off, PF_AHEAD_I8);
                    __m512i x0 = _mm512_load_si512(xp[0] + i), x1 = _mm512_load_si512(xp[1] + i),
                            x2 = _mm512_load_si512(xp[2] + i);
                    __m512i w0 = _mm512_xor_si512(_mm512_loadu_si512(wr[0] + off), flip);
                    __m512i w1 = _mm512_xor_si512(_mm512_loadu_si512(wr[1] + off), flip);
                    __m512i w2 = _mm512_xor_si512(_mm512_loadu_si512(wr[2] + off), flip);
                    __m512i w3 = _mm512_xor_si512(_mm512_loadu_si512(wr[3] + off), flip);
                    a00 = _mm512_dpbusd_epi32(a00, w0, x0);
                    a01 = _mm512_dpbusd_epi32(a01, w0, x1);
                    a02 = _mm512_dpbusd_epi32(a02, w0, x2);
                    a10 = _mm512_dpbusd_epi32(a10, w1, x0);
                    a11 = _mm512_dpbusd_epi32(a11, w1, x1);
                    a12 = _mm512_dpbusd_epi32(a12, w1, x2);
                    a20 = _mm512_dpbusd_epi32(a20, w2, x0);
                    a21 = _mm512_dpbusd_epi32(a21, w2, x1);
                    a22 = _mm512_dpbusd_epi32(a22, w2, x2);
                    a30 = _mm512_dpbusd_epi32(a30, w3, x0);
                    a31 = _mm512_dpbusd_epi32(a31, w3, x1);
                    a32 = _mm512_dpbusd_epi32(a32, w3, x2);
                }
                acc[0][0] = a00;
                acc[0][1] = a01;
                acc[0][2] = a02;
                acc[1][0] = a10;
                acc[1][1] = a11;
                acc[1][2] = a12;
                acc[2][0] = a20;
                acc[2][1] = a21;
                acc[2][2] = a22;
                acc[3][0] = a30;
                acc[3][1] = a31;
                acc[3][2] = a32;
            }
            if (i < n) {
                __m512i xv[XQ_PARTS];
                for (int p = 0; p < XQ_PARTS; p++) xv[p] = _mm512_load_si512(xp[p] + i);
                for (int k = 0; k < 4; k++) {
                    __m512i wv = _mm512_xor_si512(
                        _mm512_maskz_loadu_epi8(tail, wr[k] + RWKV5_COL_OFF(i, 1, cs)), flip);
                    for (int p = 0; p < XQ_PARTS; p++)
                        acc[k][p] = _mm512_dpbusd_epi32(acc[k][p], wv, xv[p]);
                }
            }
            for (int k = 0; k < nr; k++) {
                int64_t dot = 0;
                for (int p = XQ_PARTS - 1; p >= 0; p--)
                    dot = 256 * dot + ((int64_t)_mm512_reduce_add_epi32(acc[k][p]) - 128 * sum[p]);
                out[(size_t)m * d + o + k] =
                    (float)((double)dot * (double)s) * rwkv5_row_scale(w, o + k);
            }
        }
    }
}

/* ---------------- AVX2 + FMA + F16C: 8 lanes, 4 rows at a time, scalar tail ---------------- */
#define T256 __attribute__((target("avx2,fma,f16c")))

/* the 8 elements stored (unaligned) from byte p as fp32 */
T256 INL __m256 ld256(int dt, const unsigned char *p) {
    switch (dt) {
    case RWKV5_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    case RWKV5_BF16: {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    }
    case RWKV5_I8:
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    default:
        return _mm256_loadu_ps((const float *)p);
    }
}
T256 INL float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- AVX2 row kernels for a batch: the same sums, register-tiled over the input rows ----
 * A recurrent step of B sequences multiplies every weight by B input rows. The one-row loop of
 * rows_avx2 widens each weight vector once per input row, so a step of B rows costs about B one-row
 * steps of widening work (the weights come from memory once, but the core is busy converting them).
 * Here a widened weight vector feeds TILE_M input rows: 2 weight rows x 6 input rows = 12
 * accumulators, 2 widenings and 6 x loads per 12 FMAs, the proportions of the GEMM micro-kernel.
 * Columns go in passes of TILE_KC, so a pass's x rows (TILE_ROWS x 1 KiB) and the block's weight
 * lines sit in L1 while the tiles sweep them; the accumulators are parked in memory between passes.
 * Each output still accumulates its products lane by lane in input order, then hsum256, then the
 * scalar tail, then the row scale: the one-row loop's exact operations, so a sequence gets the same
 * bits alone or in a batch of any size. */
#define TILE_M     6   /* input rows per register tile */
#define TILE_ROWS  24  /* input rows per sweep (a multiple of TILE_M): their pass of x is 24 KiB */
#define TILE_KC    256 /* columns per pass; a multiple of 64: whole lines of every storage type */
#define TILE_MIN_M 4   /* fewer input rows than this: the one-row loop (memory-bound anyway) */

/* acc[2r + b] += sum over 8-column steps i in [i0, i1) of x_r[i..i+8) * W_b[i..i+8) (lane-wise
 * FMAs) for the MB (<= TILE_M) input rows x_r = x + r*n and the 2 weight rows W_0 = wa, W_1 = wb;
 * i0 is a multiple of 64, so the loop runs over whole 64-byte lines of the weight rows (addressed
 * once per line) and then the steps of a last partial line. */
T256 INL void tile_pass_avx2(int dt, int MB, __m256 *acc, const float *x, size_t n,
                             const unsigned char *wa, const unsigned char *wb, size_t i0, size_t i1,
                             size_t cs) {
    const size_t esz = rwkv5_esz(dt), E = 64 / esz; /* elements per line */
    __m256 a[TILE_M][2];
    for (int r = 0; r < MB; r++) {
        a[r][0] = acc[2 * r];
        a[r][1] = acc[2 * r + 1];
    }
    size_t i = i0;
    for (; i + E <= i1; i += E) {
        const unsigned char *pa = wa + i / E * cs, *pb = wb + i / E * cs;
        for (size_t v = 0; v < E; v += 8) {
            __m256 v0 = ld256(dt, pa + v * esz), v1 = ld256(dt, pb + v * esz);
            for (int r = 0; r < MB; r++) {
                __m256 xv = _mm256_loadu_ps(x + (size_t)r * n + i + v);
                a[r][0] = _mm256_fmadd_ps(xv, v0, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(xv, v1, a[r][1]);
            }
        }
    }
    for (; i < i1; i += 8) {
        __m256 v0 = ld256(dt, wa + RWKV5_COL_OFF(i, esz, cs)),
               v1 = ld256(dt, wb + RWKV5_COL_OFF(i, esz, cs));
        for (int r = 0; r < MB; r++) {
            __m256 xv = _mm256_loadu_ps(x + (size_t)r * n + i);
            a[r][0] = _mm256_fmadd_ps(xv, v0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(xv, v1, a[r][1]);
        }
    }
    for (int r = 0; r < MB; r++) {
        acc[2 * r] = a[r][0];
        acc[2 * r + 1] = a[r][1];
    }
}

/* tile_pass_avx2 with the row count as a constant (each case compiles to its own register tile) */
T256 INL void tile_pass_any_avx2(int dt, int MB, __m256 *acc, const float *x, size_t n,
                                 const unsigned char *wa, const unsigned char *wb, size_t i0,
                                 size_t i1, size_t cs) {
    switch (MB) {
    case 1:
        tile_pass_avx2(dt, 1, acc, x, n, wa, wb, i0, i1, cs);
        break;
    case 2:
        tile_pass_avx2(dt, 2, acc, x, n, wa, wb, i0, i1, cs);
        break;
    case 3:
        tile_pass_avx2(dt, 3, acc, x, n, wa, wb, i0, i1, cs);
        break;
    case 4:
        tile_pass_avx2(dt, 4, acc, x, n, wa, wb, i0, i1, cs);
        break;
    case 5:
        tile_pass_avx2(dt, 5, acc, x, n, wa, wb, i0, i1, cs);
        break;
    default:
        tile_pass_avx2(dt, TILE_M, acc, x, n, wa, wb, i0, i1, cs);
        break;
    }
}

/* out rows [m0, m0 + mr) (mr <= TILE_ROWS) x the 4 weight rows w4[0..4) = outputs [o, o+4).
 * nx, pf_blocked: prefetch as the one-row loop does (the next block / the blocked stream ahead). */
T256 INL void tile_block_avx2(int dt, float *out, const float *x, const rwkv5_mat *w, int m0,
                              int mr, int o, const unsigned char *const w4[4],
                              const unsigned char *nx, int pf_blocked) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows, nfull = n & ~(size_t)7,
           cs = RWKV5_LINE_STRIDE(w);
    const size_t esz = rwkv5_esz(dt);
    /* acc[pair][row][2]: the accumulator of input row m0 + row and weight row 2*pair + b */
    __m256 acc[2][TILE_ROWS * 2];
    for (int p = 0; p < 2; p++)
        for (int r = 0; r < 2 * mr; r++) acc[p][r] = _mm256_setzero_ps();
    for (size_t i0 = 0; i0 < nfull; i0 += TILE_KC) {
        size_t i1 = i0 + TILE_KC < nfull ? i0 + TILE_KC : nfull;
        /* the prefetches of the one-row loop for these columns, ahead of the tiles */
        for (size_t i = i0; i < i1; i += 8) {
            pf_next_at(nx, i, esz);
            if (pf_blocked && i % (64 / esz) == 0)
                pf_ahead(w4[0] + RWKV5_COL_OFF(i, esz, cs), PF_AHEAD_BYTES);
        }
        for (int r0 = 0; r0 < mr; r0 += TILE_M) {
            int mb = mr - r0 < TILE_M ? mr - r0 : TILE_M;
            const float *xr = x + (size_t)(m0 + r0) * n;
            for (int p = 0; p < 2; p++)
                tile_pass_any_avx2(dt, mb, acc[p] + 2 * r0, xr, n, w4[2 * p], w4[2 * p + 1], i0, i1,
                                   cs);
        }
    }
    for (int r = 0; r < mr; r++) {
        const float *xm = x + (size_t)(m0 + r) * n;
        float *om = out + (size_t)(m0 + r) * d + o;
        for (int b = 0; b < 4; b++) {
            float s = hsum256(acc[b / 2][2 * r + b % 2]);
            for (size_t i = nfull; i < n; i++)
                s += xm[i] * rwkv5_load(dt, w4[b] + RWKV5_COL_OFF(i, esz, cs));
            om[b] = s * rwkv5_row_scale(w, o + b);
        }
    }
}

T256 INL void rows_avx2(int dt, float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                        int o1) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows;
    size_t nfull = n & ~(size_t)7;
    size_t cs = RWKV5_LINE_STRIDE(w);
    const size_t esz = rwkv5_esz(dt);
#define OFF(i)  RWKV5_COL_OFF(i, esz, cs)
#define ROWP(o) rwkv5_row_ptr(w, (size_t)(o))
    int o = o0;
    if (M >= TILE_MIN_M) { /* a batch: register tiles over the input rows (above), same bits */
        for (; o + 4 <= o1; o += 4) {
            const unsigned char *w4[4] = {ROWP(o), ROWP(o + 1), ROWP(o + 2), ROWP(o + 3)};
            const unsigned char *nx = next_block(w, o, o1);
            for (int m0 = 0; m0 < M; m0 += TILE_ROWS)
                tile_block_avx2(dt, out, x, w, m0, M - m0 < TILE_ROWS ? M - m0 : TILE_ROWS, o, w4,
                                m0 == 0 ? nx : NULL, m0 == 0 && w->blocked);
        }
    }
    for (; o + 4 <= o1; o += 4) {
        const unsigned char *w0 = ROWP(o), *w1 = ROWP(o + 1), *w2 = ROWP(o + 2), *w3 = ROWP(o + 3);
        const unsigned char *nx = next_block(w, o, o1);
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * n;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            size_t i = 0;
            for (; i < nfull; i += 8) {
                pf_next_at(nx, i, esz);
                if (w->blocked && i % (64 / esz) == 0) pf_ahead(w0 + OFF(i), PF_AHEAD_BYTES);
                __m256 xv = _mm256_loadu_ps(xm + i);
                a0 = _mm256_fmadd_ps(xv, ld256(dt, w0 + OFF(i)), a0);
                a1 = _mm256_fmadd_ps(xv, ld256(dt, w1 + OFF(i)), a1);
                a2 = _mm256_fmadd_ps(xv, ld256(dt, w2 + OFF(i)), a2);
                a3 = _mm256_fmadd_ps(xv, ld256(dt, w3 + OFF(i)), a3);
            }
            float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
            for (; i < n; i++) {
                s0 += xm[i] * rwkv5_load(dt, w0 + OFF(i));
                s1 += xm[i] * rwkv5_load(dt, w1 + OFF(i));
                s2 += xm[i] * rwkv5_load(dt, w2 + OFF(i));
                s3 += xm[i] * rwkv5_load(dt, w3 + OFF(i));
            }
            float *om = out + (size_t)m * d + o;
            om[0] = s0 * rwkv5_row_scale(w, o + 0);
            om[1] = s1 * rwkv5_row_scale(w, o + 1);
            om[2] = s2 * rwkv5_row_scale(w, o + 2);
            om[3] = s3 * rwkv5_row_scale(w, o + 3);
        }
    }
    for (; o < o1; o++) {
        const unsigned char *w0 = ROWP(o);
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * n;
            __m256 a0 = _mm256_setzero_ps();
            size_t i = 0;
            for (; i < nfull; i += 8)
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + i), ld256(dt, w0 + OFF(i)), a0);
            float s0 = hsum256(a0);
            for (; i < n; i++) s0 += xm[i] * rwkv5_load(dt, w0 + OFF(i));
            out[(size_t)m * d + o] = s0 * rwkv5_row_scale(w, o);
        }
    }
#undef OFF
#undef ROWP
}

/* ---------------- int4 on AVX2: integer products, no widening to fp32 ----------------
 * Per block of 64 weights (two groups of 32, dtypes.h) and row: one 32-byte load of the nibbles;
 * four shifts/masks put each of the 4 nibbles of every 16-bit lane at its top (4096 q, exact
 * int16), and vpmaddwd multiplies them with x quantised per group of 32 to 14-bit integers
 * xq = round(x / t), t = max|x of the group| / 8191, |xq| <= 8191, in the matching order (x is
 * permuted once per call piece, as xp below). The four products sum to exact int32 lanes
 * (|sum| <= 8 * 32768 * 8191 < 2^31), four lanes per group; then one conversion and
 *     acc += (lanes * t / 4096) * s        (s the group's weight scale).
 * The only rounding besides fp32 sums: x's, |x - t xq| <= t/2, so the error of one output is at
 * most sum_g t_g/2 * s_g * sum_{i in g} |q_i| plus fp32 rounding (tests/test_int4.py checks this
 * bound). Per 64 weights and row ~20 instructions, against ~32 for widening int8 to fp32.
 * Rows longer than XP_MAX, and x rows with inf/nan, use the portable kernel. Several x rows (a
 * batch) are taken in chunks that fit the buffers, so the weights stream from memory once per
 * chunk. Every output depends only on its own x row and weight row. */
#define I4_XQ 8191

/* x row m (n inputs, nb blocks) rounded per group for the int4 kernel: xp[b][V][h][j] (block b,
 * vector V = A, B, C, D, half h = group 2b + h, lane j) = xq of input 64b + 32h + off_V + 2j with
 * off = 0, 16, 1, 17 (the nibbles of 16-bit lane j: bits 0-3, 4-7, 8-11, 12-15), and ts[b][h*4 + l]
 * = t / 4096. Returns 0 when the row has inf/nan or a group whose largest |x| is below 2^-100
 * (8191 / max would overflow): those rows take the portable kernel. */
T256 static int i4_prepare_x(int16_t *xp, float *ts, const float *xm, size_t n, size_t nb) {
    static const int off[4] = {0, 16, 1, 17};
    float xg[32];
    for (size_t g = 0; g < 2 * nb; g++) {
        size_t c0 = g * 32;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) {
            xg[i] = c0 + (size_t)i < n ? xm[c0 + i] : 0.0f;
            float a = fabsf(xg[i]);
            if (!(a <= FLT_MAX)) return 0; /* inf or nan */
            if (a > amax) amax = a;
        }
        if (amax > 0.0f && amax < 0x1p-100f) return 0;
        float t = amax > 0.0f ? amax / (float)I4_XQ : 0.0f,
              inv = amax > 0.0f ? (float)I4_XQ / amax : 0.0f;
        size_t b = g / 2, h = g % 2;
        for (int l = 0; l < 4; l++) ts[b * 8 + h * 4 + (size_t)l] = t * (1.0f / 4096.0f);
        for (int v = 0; v < 4; v++)
            for (int j = 0; j < 8; j++) {
                float q = rintf(xg[off[v] + 2 * j] * inv);
                q = q > I4_XQ ? I4_XQ : q < -I4_XQ ? -I4_XQ : q;
                xp[b * 64 + (size_t)v * 16 + h * 8 + (size_t)j] = (int16_t)q;
            }
    }
    return 1;
}

T256 static void mm_avx2_i4(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) {
    size_t n = (size_t)w->cols, d = (size_t)w->rows, nb = (n + 63) / 64;
    if (n > XP_MAX || nb == 0) {
        rwkv5_rows_i4_scalar(out, x, w, M, o0, o1);
        return;
    }
    int16_t xp[XP_MAX + 64] __attribute__((aligned(32)));
    float ts[XP_MAX / 64 * 8 + 8] __attribute__((aligned(32)));
    const __m256i top = _mm256_set1_epi16((short)0xf000);
    const __m256i dup = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    /* x rows in chunks of as many as the buffers hold (weights stream once per chunk, from L1/L2
     * for the other rows of the chunk: each 4-row block is swept once per x row) */
    int mc = (int)((XP_MAX + 64) / (nb * 64));
    for (int m0 = 0; m0 < M; m0 += mc) {
        int me = m0 + mc < M ? m0 + mc : M;
        int ok[XP_MAX / 64 + 1];
        for (int m = m0; m < me; m++) {
            size_t r = (size_t)(m - m0);
            ok[r] = i4_prepare_x(xp + r * nb * 64, ts + r * nb * 8, x + (size_t)m * n, n, nb);
            if (!ok[r]) rwkv5_rows_i4_scalar(out + (size_t)m * d, x + (size_t)m * n, w, 1, o0, o1);
        }
        for (int o = o0; o < o1; o += 4) {
            int nr = o1 - o < 4 ? o1 - o : 4;
            const unsigned char *wr[4];
            for (int k = 0; k < 4; k++) wr[k] = rwkv5_row_ptr(w, (size_t)(o + (k < nr ? k : 0)));
            const unsigned char *nx = next_block(w, o, o1);
            for (int m = m0; m < me; m++) {
                size_t r = (size_t)(m - m0);
                if (!ok[r]) continue;
                const int16_t *xr = xp + r * nb * 64;
                const float *tr = ts + r * nb * 8;
                __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                                 _mm256_setzero_ps()};
                for (size_t b = 0; b < nb; b++) {
                    size_t boff = b * RWKV5_I4_BLOCK_BYTES;
                    if (m == m0 && boff / 64 != (boff + RWKV5_I4_BLOCK_BYTES) / 64)
                        pf_next(nx, boff & ~(size_t)63);
                    const __m256i *xb = (const __m256i *)(xr + b * 64);
                    __m256i xa = _mm256_load_si256(xb), xbv = _mm256_load_si256(xb + 1),
                            xc = _mm256_load_si256(xb + 2), xd = _mm256_load_si256(xb + 3);
                    __m256 tv = _mm256_load_ps(tr + b * 8);
                    for (int k = 0; k < 4; k++) {
                        const unsigned char *blk = wr[k] + boff;
                        __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 4));
                        __m256i pa = _mm256_slli_epi16(v, 12);
                        __m256i pb = _mm256_and_si256(_mm256_slli_epi16(v, 8), top);
                        __m256i pc = _mm256_and_si256(_mm256_slli_epi16(v, 4), top);
                        __m256i pd = _mm256_and_si256(v, top);
                        __m256i sum = _mm256_add_epi32(
                            _mm256_add_epi32(_mm256_madd_epi16(pa, xa), _mm256_madd_epi16(pb, xbv)),
                            _mm256_add_epi32(_mm256_madd_epi16(pc, xc), _mm256_madd_epi16(pd, xd)));
                        int32_t sc;
                        memcpy(&sc, blk, 4);
                        __m256 s = _mm256_permutevar8x32_ps(
                            _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(sc))), dup);
                        acc[k] =
                            _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sum), tv), s, acc[k]);
                    }
                }
                for (int k = 0; k < nr; k++) out[(size_t)m * d + o + k] = hsum256(acc[k]);
            }
        }
    }
}

ROWS_FN(mm_avx2_f32, T256, rows_avx2, RWKV5_F32)
ROWS_FN(mm_avx2_f16, T256, rows_avx2, RWKV5_F16)
ROWS_FN(mm_avx2_bf16, T256, rows_avx2, RWKV5_BF16)
ROWS_FN(mm_avx2_i8, T256, rows_avx2, RWKV5_I8)
#endif

/* ---------------- GEMM (parallel mode) ----------------
 * out (M, d) = x (M, n) @ W^T.  Workspace: XP, x packed into panels of MR = 64 rows, panel p
 * holding XP[p][k][r] = x[64p + r][k] (rows past M are 0), then OT = out^T, (ceil(d/NR)*NR, Mp).
 * Work is split over blocks of NR = 6 output rows (weight rows) in contiguous pieces claimed by
 * the threads, so every weight is read from memory once per call. Within a range the loop runs over
 * k-blocks of KC inputs outermost so that the k-block of XP (Mp x KC floats) stays in L2 for all
 * the weight panels; each weight panel (NR x KC, widened to fp32 and scaled for int8, or used in
 * place for aligned fp32) sits in L1 while the micro-kernel sweeps the 64-row panels: OT[o][m] +=
 * sum_{k in block} W[o][k] * x[m][k]   for 6 o's x 64 m's in registers. */
#define MR RWKV5_GEMM_MR
#define KC RWKV5_GEMM_KC

static size_t round_up(size_t a, size_t b) { return (a + b - 1) / b * b; }

/* Output rows per GEMM pass: OT holds at most this many rows (the head's 65536 would not fit). */
#define D_BLOCK 4096

size_t rwkv5_gemm_ws_floats(int M, int n, int d) {
    size_t Mp = round_up((size_t)M, MR), db = d < D_BLOCK ? (size_t)d : D_BLOCK;
    return Mp * (size_t)n + round_up(db, NR) * Mp + 16; /* +16: room to align to 64 bytes */
}

typedef struct {
    const rwkv5_isa_kernels *k;
    float *out;
    const float *x;
    const rwkv5_mat *w;
    int M, Mp, n, d; /* d: rows of w (a block of the matrix) */
    size_t ldo;      /* out row stride */
    float *XP, *OT;
} gemm_job;

/* XP[p][k][r] = x[64p + r][k] for the k in [k0, k1) (indices are blocks of 64 inputs) */
static void gemm_pack_x(void *ctx, int64_t b, int64_t e) {
    gemm_job *j = (gemm_job *)ctx;
    size_t n = (size_t)j->n;
    size_t k0 = (size_t)b * 64, k1 = (size_t)e * 64 < n ? (size_t)e * 64 : n;
    /* blocks of 16 inputs x 64 rows (a 4 KiB tile in L1): contiguous reads of x rows */
    for (int p = 0; p < j->Mp / MR; p++) {
        float *dst = j->XP + (size_t)p * MR * n;
        for (size_t kb = k0; kb < k1; kb += 16) {
            size_t ke = kb + 16 < k1 ? kb + 16 : k1;
            for (int r = 0; r < MR; r++) {
                int m = p * MR + r;
                if (m < j->M) {
                    const float *xr = j->x + (size_t)m * n;
                    for (size_t k = kb; k < ke; k++) dst[k * MR + r] = xr[k];
                } else {
                    for (size_t k = kb; k < ke; k++) dst[k * MR + r] = 0.0f;
                }
            }
        }
    }
}

#if defined(__x86_64__)
/* pack_scalar with AVX-512 conversions, masked tail */
T512 INL void pack_avx512(int dt, float *Bp, const rwkv5_mat *w, int o, size_t k0, int kc) {
    size_t esz = rwkv5_esz(dt), cs = RWKV5_LINE_STRIDE(w);
    for (int r = 0; r < NR; r++) {
        float *dst = Bp + (size_t)r * kc;
        if (o + r >= w->rows) {
            for (int i = 0; i < kc; i++) dst[i] = 0.0f;
            continue;
        }
        const unsigned char *row = rwkv5_row_ptr(w, (size_t)(o + r));
        __m512 s = _mm512_set1_ps(rwkv5_row_scale(w, o + r));
        for (int i = 0; i < kc;
             i += 16) { /* k0 and i are multiples of 16: inside one 64-byte line */
            __mmask16 k = kc - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (kc - i)) - 1u);
            const unsigned char *p = row + RWKV5_COL_OFF(k0 + (size_t)i, esz, cs);
            __m512 v = ld512(dt, p, k);
            if (rwkv5_dtypes[dt].row_scale) v = _mm512_mul_ps(v, s);
            _mm512_mask_storeu_ps(dst + i, k, v);
        }
    }
}
PACK_FN(pack_avx512_f32, T512, pack_avx512, RWKV5_F32)
PACK_FN(pack_avx512_f16, T512, pack_avx512, RWKV5_F16)
PACK_FN(pack_avx512_bf16, T512, pack_avx512, RWKV5_BF16)
PACK_FN(pack_avx512_i8, T512, pack_avx512, RWKV5_I8)

/* C[r][0..64) (rows ldc apart) (+)= sum_k B[r*ldb + k] * X[k][0..64), r < 6: 24 accumulators. */
T512 static void ukernel_avx512(float *C, size_t ldc, const float *X, const float *B, size_t ldb,
                                int kc, int acc_in) {
    __m512 c[NR][4];
    for (int r = 0; r < NR; r++)
        for (int q = 0; q < 4; q++)
            c[r][q] = acc_in ? _mm512_loadu_ps(C + r * ldc + 16 * q) : _mm512_setzero_ps();
    const float *B0 = B, *B1 = B + ldb, *B2 = B1 + ldb, *B3 = B2 + ldb, *B4 = B3 + ldb,
                *B5 = B4 + ldb;
    for (int k = 0; k < kc; k++) {
        const float *xk = X + (size_t)k * MR;
        __m512 x0 = _mm512_load_ps(xk), x1 = _mm512_load_ps(xk + 16), x2 = _mm512_load_ps(xk + 32),
               x3 = _mm512_load_ps(xk + 48);
#define ROW(r, Bp)                                                                                 \
    {                                                                                              \
        __m512 b = _mm512_set1_ps(Bp[k]);                                                          \
        c[r][0] = _mm512_fmadd_ps(x0, b, c[r][0]);                                                 \
        c[r][1] = _mm512_fmadd_ps(x1, b, c[r][1]);                                                 \
        c[r][2] = _mm512_fmadd_ps(x2, b, c[r][2]);                                                 \
        c[r][3] = _mm512_fmadd_ps(x3, b, c[r][3]);                                                 \
    }
        ROW(0, B0) ROW(1, B1) ROW(2, B2) ROW(3, B3) ROW(4, B4) ROW(5, B5)
#undef ROW
    }
    for (int r = 0; r < NR; r++)
        for (int q = 0; q < 4; q++) _mm512_storeu_ps(C + r * ldc + 16 * q, c[r][q]);
}

/* The same with 8 lanes: the 64 rows in 4 passes of 16 (12 accumulators). */
T256 static void ukernel_avx2(float *C, size_t ldc, const float *X, const float *B, size_t ldb,
                              int kc, int acc_in) {
    for (int q0 = 0; q0 < MR; q0 += 16) {
        __m256 c[NR][2];
        for (int r = 0; r < NR; r++)
            for (int q = 0; q < 2; q++)
                c[r][q] = acc_in ? _mm256_loadu_ps(C + r * ldc + q0 + 8 * q) : _mm256_setzero_ps();
        for (int k = 0; k < kc; k++) {
            const float *xk = X + (size_t)k * MR + q0;
            __m256 x0 = _mm256_load_ps(xk), x1 = _mm256_load_ps(xk + 8);
            for (int r = 0; r < NR; r++) {
                __m256 b = _mm256_set1_ps(B[r * ldb + k]);
                c[r][0] = _mm256_fmadd_ps(x0, b, c[r][0]);
                c[r][1] = _mm256_fmadd_ps(x1, b, c[r][1]);
            }
        }
        for (int r = 0; r < NR; r++)
            for (int q = 0; q < 2; q++) _mm256_storeu_ps(C + r * ldc + q0 + 8 * q, c[r][q]);
    }
}
#endif

/* indices: blocks of NR output rows; [b, e) is one contiguous piece */
static void gemm_range(void *ctx, int64_t b, int64_t e) {
    gemm_job *j = (gemm_job *)ctx;
    const rwkv5_mat *w = j->w;
    size_t n = (size_t)j->n, Mp = (size_t)j->Mp;
    float Bp[NR * KC] __attribute__((aligned(64)));
    int direct = w->dtype == RWKV5_F32 && !w->blocked && ((uintptr_t)w->data & 3) == 0;
    for (size_t k0 = 0; k0 < n; k0 += KC) {
        int kc = n - k0 < KC ? (int)(n - k0) : KC;
        for (int64_t ob = b; ob < e; ob++) {
            int o = (int)ob * NR;
            const float *B;
            size_t ldb;
            if (direct && o + NR <= w->rows) { /* aligned fp32: read the weights in place */
                B = (const float *)w->data + (size_t)o * n + k0;
                ldb = n;
            } else {
                j->k->pack[w->dtype](Bp, w, o, k0, kc);
                B = Bp;
                ldb = (size_t)kc;
            }
            for (size_t p = 0; p < Mp / MR; p++) {
                float *C = j->OT + (size_t)o * Mp + p * MR;
                const float *X = j->XP + p * MR * n + k0 * MR;
                j->k->gemm(C, Mp, X, B, ldb, kc, k0 > 0);
            }
        }
    }
    /* out[m][o] = OT[o][m] for this range's rows */
    int o0 = (int)b * NR, o1 = (int)e * NR < j->d ? (int)e * NR : j->d;
    for (int mb = 0; mb < j->M; mb += 16) /* tiles of 16 rows x 16 outputs */
        for (int ob = o0; ob < o1; ob += 16) {
            int me = mb + 16 < j->M ? mb + 16 : j->M, oe = ob + 16 < o1 ? ob + 16 : o1;
            for (int m = mb; m < me; m++) {
                float *om = j->out + (size_t)m * j->ldo;
                for (int o = ob; o < oe; o++) om[o] = j->OT[(size_t)o * Mp + m];
            }
        }
}

#undef MR
#undef KC

/* ---------------- dispatch: one row of kernels per ISA level, indexed by storage type
 * ---------------- */

static const rwkv5_isa_kernels scalar_kernels = {
    .rows = {[RWKV5_F32] = mm_scalar_f32,
             [RWKV5_F16] = mm_scalar_f16,
             [RWKV5_BF16] = mm_scalar_bf16,
             [RWKV5_I8] = mm_scalar_i8,
             [RWKV5_I4] = rwkv5_rows_i4_scalar},
    .pack = {[RWKV5_F32] = pack_scalar_f32,
             [RWKV5_F16] = pack_scalar_f16,
             [RWKV5_BF16] = pack_scalar_bf16,
             [RWKV5_I8] = pack_scalar_i8,
             [RWKV5_I4] = rwkv5_pack_i4_scalar},
    .gemm = NULL, /* no GEMM: the row kernels at any M */
};
#if defined(__x86_64__)
static const rwkv5_isa_kernels avx2_kernels = {
    .rows = {[RWKV5_F32] = mm_avx2_f32,
             [RWKV5_F16] = mm_avx2_f16,
             [RWKV5_BF16] = mm_avx2_bf16,
             [RWKV5_I8] = mm_avx2_i8,
             [RWKV5_I4] = mm_avx2_i4},
    .pack = {[RWKV5_F32] = pack_scalar_f32,
             [RWKV5_F16] = pack_scalar_f16,
             [RWKV5_BF16] = pack_scalar_bf16,
             [RWKV5_I8] = pack_scalar_i8,
             [RWKV5_I4] = rwkv5_pack_i4_scalar},
    .gemm = ukernel_avx2,
};
static const rwkv5_isa_kernels avx512_kernels = {
    .rows = {[RWKV5_F32] = mm_avx512_f32,
             [RWKV5_F16] = mm_avx512_f16,
             [RWKV5_BF16] = mm_avx512p_bf16,
             [RWKV5_I8] = mm_avx512_i8,
             [RWKV5_I4] = mm_avx2_i4},
    .pack = {[RWKV5_F32] = pack_avx512_f32,
             [RWKV5_F16] = pack_avx512_f16,
             [RWKV5_BF16] = pack_avx512_bf16,
             [RWKV5_I8] = pack_avx512_i8,
             [RWKV5_I4] = rwkv5_pack_i4_scalar},
    .gemm = ukernel_avx512,
};
/* bf16 stays on the widening kernel: x split into two bf16 for vdpbf16ps ran faster but moved a
 * test model's logits by 2.4e-4 (16-bit x), above the 1e-4 the model is held to */
static const rwkv5_isa_kernels avx512_vnni_kernels = {
    .rows = {[RWKV5_F32] = mm_avx512_f32,
             [RWKV5_F16] = mm_avx512_f16,
             [RWKV5_BF16] = mm_avx512p_bf16,
             [RWKV5_I8] = mm_avx512v_i8,
             [RWKV5_I4] = mm_avx2_i4},
    .pack = {[RWKV5_F32] = pack_avx512_f32,
             [RWKV5_F16] = pack_avx512_f16,
             [RWKV5_BF16] = pack_avx512_bf16,
             [RWKV5_I8] = pack_avx512_i8,
             [RWKV5_I4] = rwkv5_pack_i4_scalar},
    .gemm = ukernel_avx512,
};
static const rwkv5_isa_kernels *const LEVELS[] = {
    [RWKV5_ISA_SCALAR] = &scalar_kernels,
    [RWKV5_ISA_AVX2] = &avx2_kernels,
    [RWKV5_ISA_AVX512] = &avx512_kernels,
    [RWKV5_ISA_AVX512_VNNI] = &avx512_vnni_kernels,
};
#elif defined(__aarch64__)
static const rwkv5_isa_kernels *const LEVELS[] = {
    [RWKV5_ISA_SCALAR] = &scalar_kernels,
    [RWKV5_ISA_NEON] = &rwkv5_neon_kernels,
    [RWKV5_ISA_NEON_DOTPROD] = &rwkv5_neon_dotprod_kernels,
};
#else
static const rwkv5_isa_kernels *const LEVELS[] = {[RWKV5_ISA_SCALAR] = &scalar_kernels};
#endif

/* The kernels of ISA level isa (< 0: the current one; above this architecture's levels: the top).
 */
static const rwkv5_isa_kernels *kernels_of(int isa) {
    int n = (int)(sizeof LEVELS / sizeof LEVELS[0]);
    if (isa < 0) isa = (int)rwkv5_cpu_isa();
    return LEVELS[isa < n ? isa : n - 1];
}

/* a storage type of the table, in a layout it has (block types are row-major only) */
static int mat_valid(const rwkv5_mat *w) {
    return rwkv5_dtype_valid(w->dtype) && !(w->blocked && rwkv5_dtypes[w->dtype].block);
}

int rwkv5_matmul_rows_isa(int isa, float *out, const float *x, const rwkv5_mat *w, int M, int o0,
                          int o1) {
    if (!mat_valid(w)) return RWKV5_EINVAL;
    kernels_of(isa)->rows[w->dtype](out, x, w, M, o0, o1);
    return RWKV5_OK;
}

typedef struct {
    rwkv5_rows_fn f;
    float *out;
    const float *x;
    const rwkv5_mat *w;
    int M;
} mm_job;

/* indices are blocks of 4 output rows */
static void mm_range(void *ctx, int64_t b, int64_t e) {
    mm_job *j = (mm_job *)ctx;
    int o0 = (int)(b * 4), o1 = (int)(e * 4);
    if (o1 > j->w->rows) o1 = j->w->rows;
    j->f(j->out, j->x, j->w, j->M, o0, o1);
}

int rwkv5_matmul_ws(int isa, int force_gemm, float *out, const float *x, const rwkv5_mat *w, int M,
                    float *ws, size_t ws_floats) {
    if (!mat_valid(w)) return RWKV5_EINVAL;
    if (M <= 0) return RWKV5_OK;
    const rwkv5_isa_kernels *k = kernels_of(isa);
    int n = w->cols, d = w->rows, nt = rwkv5_get_num_threads();
    if (k->gemm && (M >= RWKV5_GEMM_MIN_M || force_gemm) && ws &&
        ws_floats >= rwkv5_gemm_ws_floats(M, n, d)) {
        int Mp = (int)round_up((size_t)M, RWKV5_GEMM_MR);
        float *XP = (float *)(((uintptr_t)ws + 63) & ~(uintptr_t)63); /* aligned panels */
        gemm_job g = {k, out, x, w, M, Mp, n, d, (size_t)d, XP, XP + (size_t)Mp * n};
        rwkv5_parallel_for(((int64_t)n + 63) / 64, 4, gemm_pack_x, &g);
        for (int o = 0; o < d;
             o += D_BLOCK) { /* a view of rows [o, o + db) of w (o: a multiple of 4) */
            int db = d - o < D_BLOCK ? d - o : D_BLOCK;
            rwkv5_mat sub = {rwkv5_row_ptr(w, (size_t)o),
                             w->scale ? w->scale + o : NULL,
                             w->dtype,
                             db,
                             n,
                             w->blocked};
            g.w = &sub;
            g.out = out + o;
            g.d = db;
            int64_t nob = ((int64_t)db + RWKV5_GEMM_NR - 1) / RWKV5_GEMM_NR;
            /* pieces of >= 16 panels (96 rows: the x k-block is reused from L2 across them), about
             * 4 per thread so that a thread slowed by other load does not hold up the call */
            int64_t grain = (nob + 4 * nt - 1) / (4 * nt);
            rwkv5_parallel_for(nob, grain < 16 ? 16 : grain, gemm_range, &g);
        }
        return RWKV5_OK;
    }
    /* matrix x vector: blocks of 4 rows, contiguous ranges, ~64K multiply-adds per piece at least,
     * and no more pieces than a few per thread */
    mm_job j = {k->rows[w->dtype], out, x, w, M};
    int64_t blocks = ((int64_t)d + 3) / 4;
    int64_t per_block = 4 * (int64_t)n * M;
    int64_t grain = per_block >= 65536 ? 1 : 65536 / (per_block > 0 ? per_block : 1);
    int64_t even = (blocks + 4 * nt - 1) / (4 * nt);
    if (grain < even) grain = even;
    rwkv5_parallel_for(blocks, grain, mm_range, &j);
    return RWKV5_OK;
}

int rwkv5_matmul(float *out, const float *x, const rwkv5_mat *w, int M) {
    if (!mat_valid(w)) return RWKV5_EINVAL;
    float *ws = NULL;
    size_t need = 0;
    if (M >= RWKV5_GEMM_MIN_M) { /* callers without a workspace (ops, tests): allocate one */
        need = rwkv5_gemm_ws_floats(M, w->cols, w->rows);
        ws = (float *)malloc(need * sizeof(float));
    }
    int rc = rwkv5_matmul_ws(-1, 0, out, x, w, M, ws, ws ? need : 0);
    free(ws);
    return rc;
}
