/* out = x @ W^T with W stored as fp32 / fp16 / bf16 and widened to fp32 in registers.
 * Threaded over blocks of output rows; scalar, AVX2+FMA+F16C and AVX-512 variants chosen at run time
 * (rwkv5_cpu_isa). Each output is one dot product of length n accumulated in fp32. */
#include <immintrin.h>

#include "common/cpu.h"
#include "common/threadpool.h"
#include "kernels.h"

/* ---------------- scalar ---------------- */

/* Weight rows are addressed in bytes (`const unsigned char *`): storage may be unaligned. */
#define SCALAR_KERNEL(NAME, T, LDE)                                                                \
    static void NAME(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) {    \
        size_t n = (size_t)w->cols, d = (size_t)w->rows;                                       \
        for (int o = o0; o < o1; o++) {                                                          \
            const unsigned char *wr = (const unsigned char *)w->data + (size_t)o * n * sizeof(T); \
            for (int m = 0; m < M; m++) {                                                        \
                const float *xm = x + (size_t)m * n;                                             \
                /* out[m][o] = sum_i x[m][i] * W[o][i] */                                        \
                float acc = 0.0f;                                                                \
                for (size_t i = 0; i < n; i++) acc += xm[i] * LDE(wr, i);                        \
                out[(size_t)m * d + o] = acc;                                                    \
            }                                                                                    \
        }                                                                                        \
    }

SCALAR_KERNEL(mm_scalar_f32, float, rwkv5_ld_f32)
SCALAR_KERNEL(mm_scalar_f16, uint16_t, rwkv5_ld_f16)
SCALAR_KERNEL(mm_scalar_bf16, uint16_t, rwkv5_ld_bf16)

/* ---------------- AVX-512: 16 lanes, 4 output rows at a time, masked tail ---------------- */
#if defined(__x86_64__)
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

/* unaligned loads (loadu) of 16 elements starting at element i of byte address p */
T512 static inline __m512 ld512_f32(const unsigned char *p, size_t i, __mmask16 k) {
    return _mm512_maskz_loadu_ps(k, p + 4 * i);
}
T512 static inline __m512 ld512_f16(const unsigned char *p, size_t i, __mmask16 k) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p + 2 * i));
}
T512 static inline __m512 ld512_bf16(const unsigned char *p, size_t i, __mmask16 k) {
    __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p + 2 * i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

#define AVX512_KERNEL(NAME, T, LD)                                                                 \
    T512 static void NAME(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) { \
        size_t n = (size_t)w->cols, d = (size_t)w->rows;                                         \
        size_t nfull = n & ~(size_t)15;                                                          \
        __mmask16 tail = (__mmask16)((1u << (n - nfull)) - 1u);                                  \
        const unsigned char *W = (const unsigned char *)w->data;                                 \
        size_t rb = n * sizeof(T); /* bytes per weight row */                                    \
        int o = o0;                                                                              \
        for (; o + 4 <= o1; o += 4) {                                                            \
            const unsigned char *w0 = W + (size_t)o * rb, *w1 = w0 + rb, *w2 = w1 + rb, *w3 = w2 + rb; \
            int m = 0;                                                                           \
            /* 4 input rows x 4 output rows: each weight vector is widened once for 4 FMAs */   \
            for (; m + 4 <= M; m += 4) {                                                         \
                const float *x0 = x + (size_t)m * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;  \
                __m512 acc[4][4];                                                                \
                for (int a = 0; a < 4; a++)                                                      \
                    for (int b = 0; b < 4; b++) acc[a][b] = _mm512_setzero_ps();                 \
                for (size_t i = 0; i < n; i += 16) {                                             \
                    __mmask16 k = i < nfull ? (__mmask16)0xffff : tail;                          \
                    __m512 wv[4] = {LD(w0, i, k), LD(w1, i, k), LD(w2, i, k), LD(w3, i, k)};    \
                    __m512 xv[4] = {_mm512_maskz_loadu_ps(k, x0 + i), _mm512_maskz_loadu_ps(k, x1 + i), \
                                    _mm512_maskz_loadu_ps(k, x2 + i), _mm512_maskz_loadu_ps(k, x3 + i)}; \
                    for (int a = 0; a < 4; a++)                                                  \
                        for (int b = 0; b < 4; b++) acc[a][b] = _mm512_fmadd_ps(xv[a], wv[b], acc[a][b]); \
                }                                                                                \
                for (int a = 0; a < 4; a++)                                                      \
                    for (int b = 0; b < 4; b++)                                                  \
                        out[(size_t)(m + a) * d + o + b] = _mm512_reduce_add_ps(acc[a][b]);      \
            }                                                                                    \
            for (; m < M; m++) {                                                                 \
                const float *xm = x + (size_t)m * n;                                             \
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                      \
                size_t i = 0;                                                                    \
                for (; i < nfull; i += 16) {                                                     \
                    __m512 xv = _mm512_loadu_ps(xm + i);                                         \
                    a0 = _mm512_fmadd_ps(xv, LD(w0, i, 0xffff), a0);                             \
                    a1 = _mm512_fmadd_ps(xv, LD(w1, i, 0xffff), a1);                             \
                    a2 = _mm512_fmadd_ps(xv, LD(w2, i, 0xffff), a2);                             \
                    a3 = _mm512_fmadd_ps(xv, LD(w3, i, 0xffff), a3);                             \
                }                                                                                \
                if (tail) {                                                                      \
                    __m512 xv = _mm512_maskz_loadu_ps(tail, xm + i);                             \
                    a0 = _mm512_fmadd_ps(xv, LD(w0, i, tail), a0);                               \
                    a1 = _mm512_fmadd_ps(xv, LD(w1, i, tail), a1);                               \
                    a2 = _mm512_fmadd_ps(xv, LD(w2, i, tail), a2);                               \
                    a3 = _mm512_fmadd_ps(xv, LD(w3, i, tail), a3);                               \
                }                                                                                \
                float *om = out + (size_t)m * d + o;                                             \
                om[0] = _mm512_reduce_add_ps(a0);                                                \
                om[1] = _mm512_reduce_add_ps(a1);                                                \
                om[2] = _mm512_reduce_add_ps(a2);                                                \
                om[3] = _mm512_reduce_add_ps(a3);                                                \
            }                                                                                    \
        }                                                                                        \
        for (; o < o1; o++) {                                                                    \
            const unsigned char *w0 = W + (size_t)o * rb;                                        \
            for (int m = 0; m < M; m++) {                                                        \
                const float *xm = x + (size_t)m * n;                                             \
                __m512 a0 = _mm512_setzero_ps();                                                 \
                size_t i = 0;                                                                    \
                for (; i < nfull; i += 16)                                                       \
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xm + i), LD(w0, i, 0xffff), a0);        \
                if (tail) a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, xm + i), LD(w0, i, tail), a0); \
                out[(size_t)m * d + o] = _mm512_reduce_add_ps(a0);                               \
            }                                                                                    \
        }                                                                                        \
    }

AVX512_KERNEL(mm_avx512_f32, float, ld512_f32)
AVX512_KERNEL(mm_avx512_f16, uint16_t, ld512_f16)
AVX512_KERNEL(mm_avx512_bf16, uint16_t, ld512_bf16)

/* ---------------- AVX2 + FMA + F16C: 8 lanes, 4 rows at a time, scalar tail ---------------- */
#define T256 __attribute__((target("avx2,fma,f16c")))

T256 static inline __m256 ld256_f32(const unsigned char *p, size_t i) { return _mm256_loadu_ps((const float *)(p + 4 * i)); }
T256 static inline __m256 ld256_f16(const unsigned char *p, size_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
}
T256 static inline __m256 ld256_bf16(const unsigned char *p, size_t i) {
    __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
T256 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define AVX2_KERNEL(NAME, T, LD, LDE)                                                             \
    T256 static void NAME(float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) { \
        size_t n = (size_t)w->cols, d = (size_t)w->rows;                                         \
        size_t nfull = n & ~(size_t)7;                                                           \
        const unsigned char *W = (const unsigned char *)w->data;                                 \
        size_t rb = n * sizeof(T); /* bytes per weight row */                                    \
        int o = o0;                                                                              \
        for (; o + 4 <= o1; o += 4) {                                                            \
            const unsigned char *w0 = W + (size_t)o * rb, *w1 = w0 + rb, *w2 = w1 + rb, *w3 = w2 + rb; \
            for (int m = 0; m < M; m++) {                                                        \
                const float *xm = x + (size_t)m * n;                                             \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                      \
                size_t i = 0;                                                                    \
                for (; i < nfull; i += 8) {                                                      \
                    __m256 xv = _mm256_loadu_ps(xm + i);                                         \
                    a0 = _mm256_fmadd_ps(xv, LD(w0, i), a0);                                     \
                    a1 = _mm256_fmadd_ps(xv, LD(w1, i), a1);                                     \
                    a2 = _mm256_fmadd_ps(xv, LD(w2, i), a2);                                     \
                    a3 = _mm256_fmadd_ps(xv, LD(w3, i), a3);                                     \
                }                                                                                \
                float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);    \
                for (; i < n; i++) {                                                             \
                    s0 += xm[i] * LDE(w0, i);                                                    \
                    s1 += xm[i] * LDE(w1, i);                                                    \
                    s2 += xm[i] * LDE(w2, i);                                                    \
                    s3 += xm[i] * LDE(w3, i);                                                    \
                }                                                                                \
                float *om = out + (size_t)m * d + o;                                             \
                om[0] = s0;                                                                      \
                om[1] = s1;                                                                      \
                om[2] = s2;                                                                      \
                om[3] = s3;                                                                      \
            }                                                                                    \
        }                                                                                        \
        for (; o < o1; o++) {                                                                    \
            const unsigned char *w0 = W + (size_t)o * rb;                                        \
            for (int m = 0; m < M; m++) {                                                        \
                const float *xm = x + (size_t)m * n;                                             \
                __m256 a0 = _mm256_setzero_ps();                                                 \
                size_t i = 0;                                                                    \
                for (; i < nfull; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + i), LD(w0, i), a0); \
                float s0 = hsum256(a0);                                                          \
                for (; i < n; i++) s0 += xm[i] * LDE(w0, i);                                     \
                out[(size_t)m * d + o] = s0;                                                     \
            }                                                                                    \
        }                                                                                        \
    }

AVX2_KERNEL(mm_avx2_f32, float, ld256_f32, rwkv5_ld_f32)
AVX2_KERNEL(mm_avx2_f16, uint16_t, ld256_f16, rwkv5_ld_f16)
AVX2_KERNEL(mm_avx2_bf16, uint16_t, ld256_bf16, rwkv5_ld_bf16)
#endif

/* ---------------- dispatch ---------------- */

typedef void (*mm_fn)(float *, const float *, const rwkv5_mat *, int, int, int);

/* int8 (per-row scales) is reserved: rwkv5_model_init refuses it until kernels exist. */
static mm_fn pick(int isa, int dtype) {
    static const mm_fn scalar[3] = {mm_scalar_f32, mm_scalar_f16, mm_scalar_bf16};
#if defined(__x86_64__)
    static const mm_fn avx2[3] = {mm_avx2_f32, mm_avx2_f16, mm_avx2_bf16};
    static const mm_fn avx512[3] = {mm_avx512_f32, mm_avx512_f16, mm_avx512_bf16};
    if (dtype < 0 || dtype > 2) return NULL;
    if (isa == RWKV5_ISA_AVX512) return avx512[dtype];
    if (isa == RWKV5_ISA_AVX2) return avx2[dtype];
#else
    if (dtype < 0 || dtype > 2) return NULL;
#endif
    return scalar[dtype];
}

void rwkv5_matmul_rows_isa(int isa, float *out, const float *x, const rwkv5_mat *w, int M, int o0, int o1) {
    mm_fn f = pick(isa, w->dtype);
    if (f) f(out, x, w, M, o0, o1);
}

typedef struct {
    mm_fn f;
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

void rwkv5_matmul(float *out, const float *x, const rwkv5_mat *w, int M, int n, int d) {
    (void)n;
    (void)d; /* n == w->cols and d == w->rows: checked once by rwkv5_model_init */
    mm_job j = {pick((int)rwkv5_cpu_isa(), w->dtype), out, x, w, M};
    if (!j.f || M <= 0) return;
    int64_t blocks = ((int64_t)w->rows + 3) / 4;
    /* at least ~64K multiply-adds per piece so that tiny products stay on one thread */
    int64_t per_block = 4 * (int64_t)w->cols * M;
    int64_t grain = per_block >= 65536 ? 1 : 65536 / (per_block > 0 ? per_block : 1);
    rwkv5_parallel_for(blocks, grain, mm_range, &j);
}
