/* Per-row int8 and group-wise int4 quantisation and blocked copies of float weights, over the
 * thread pool. See quantize.h. The AVX2 path does the same fp32 operations as the scalar one (a
 * division, not a multiplication by the reciprocal; round half to even), so both give identical
 * bits. */
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "quantize.h"

#include "common/cpu.h"
#include "common/threadpool.h"
#include "dtypes.h"

#include <math.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#define LINE 64 /* bytes per line of the blocked layout */

int rwkv5_src_bytes(int src_type) {
    switch (src_type) {
    case RWKV5_SRC_F32:
        return 4;
    case RWKV5_SRC_F16:
    case RWKV5_SRC_BF16:
        return 2;
    case RWKV5_SRC_F64:
        return 8;
    default:
        return 0;
    }
}

/* element i of a source row as fp32 (float64 rounds to nearest, as NumPy's astype(float32)) */
static inline float src_load(int t, const unsigned char *row, int64_t i) {
    if (t == RWKV5_SRC_F64) {
        double v;
        memcpy(&v, row + i * 8, 8);
        return (float)v;
    }
    return rwkv5_load(t, row + i * rwkv5_src_bytes(t));
}

/* where element (o, i) of an int8 matrix goes: row-major or 4-row blocked (64 elements a line) */
static inline int8_t *q_ptr(int8_t *q, int64_t o, int64_t i, int64_t cols, int blocked) {
    if (!blocked) return q + o * cols + i;
    int64_t lines = (cols + LINE - 1) / LINE;
    return q + ((o / 4) * lines + i / LINE) * 4 * LINE + (o % 4) * LINE + i % LINE;
}

static inline int8_t q_of(float w, float s) {
    /* q = clip(rint(w / s), -127, 127) */
    float v = nearbyintf(w / s);
    v = v < -127.0f ? -127.0f : v > 127.0f ? 127.0f : v;
    return (int8_t)v;
}

/* Elements [i, cols) of a row: each as fp32 into buf, *amax raised to the largest |w|; 1 if one is
 * not finite. The whole row of the portable path, the tail of the vector path. */
static inline int scan_row(const unsigned char *row, int t, int64_t i, int64_t cols, float *buf,
                           float *amax) {
    for (; i < cols; i++) {
        float w = src_load(t, row, i);
        if (!isfinite(w)) return 1;
        buf[i] = w;
        float a = fabsf(w);
        if (a > *amax) *amax = a;
    }
    return 0;
}

/* One row, portable: 1 if it holds a non-finite value. `buf` gets the row as fp32 (cols floats). */
static int quant_row_scalar(int8_t *q, float *scale, const unsigned char *row, int t, int64_t o,
                            int64_t cols, int blocked, float *buf) {
    float amax = 0.0f;
    if (scan_row(row, t, 0, cols, buf, &amax)) return 1;
    float s = amax / 127.0f;
    scale[o] = s;
    float safe = s > 0.0f ? s : 1.0f;
    if (!blocked) {
        for (int64_t i = 0; i < cols; i++) q[o * cols + i] = q_of(buf[i], safe);
    } else {
        for (int64_t i0 = 0; i0 < cols; i0 += LINE) {
            int8_t *d = q_ptr(q, o, i0, cols, 1);
            int64_t n = cols - i0 < LINE ? cols - i0 : LINE;
            for (int64_t i = 0; i < n; i++) d[i] = q_of(buf[i0 + i], safe);
        }
    }
    return 0;
}

/* One row to int4 blocks (RWKV5_I4, dtypes.h), portable: 0, 1 if it holds a non-finite value, 2 if
 * a group's scale overflows fp16. Per group of 32 (zeros past the row's end): m its first weight of
 * largest |w|, s = fp16(m / -8) (so m is q = -8), q = clamp(rint(w / s), -8, 7), or 0 where s is 0;
 * every operation in fp32 as the NumPy twin in the tests does them (the same bits). */
static int quant_row_i4(uint8_t *dst, const unsigned char *row, int t, int64_t cols, float *buf) {
    float amax = 0.0f;
    if (scan_row(row, t, 0, cols, buf, &amax)) return 1;
    const int64_t nb = (cols + RWKV5_I4_BLOCK - 1) / RWKV5_I4_BLOCK;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = dst + b * RWKV5_I4_BLOCK_BYTES;
        for (int h = 0; h < 2; h++) {
            const int64_t c0 = b * RWKV5_I4_BLOCK + h * 32;
            float g[32], m = 0.0f, am = 0.0f;
            for (int i = 0; i < 32; i++) {
                g[i] = c0 + i < cols ? buf[c0 + i] : 0.0f;
                if (i == 0 || fabsf(g[i]) > am) m = g[i], am = fabsf(g[i]);
            }
            uint16_t sh = rwkv5_f32_to_f16(m / -8.0f);
            if ((sh & 0x7fffu) == 0x7c00u) return 2;
            memcpy(blk + 2 * h, &sh, 2);
            const float s = rwkv5_f16_to_f32(sh), safe = s != 0.0f ? s : 1.0f;
            int q[32];
            for (int i = 0; i < 32; i++) {
                float v = nearbyintf(g[i] / safe);
                v = v < -8.0f ? -8.0f : v > 7.0f ? 7.0f : v;
                q[i] = s != 0.0f ? (int)v : 0;
            }
            for (int i = 0; i < 16; i++)
                blk[4 + 16 * h + i] = (uint8_t)((q[i] & 15) | (q[i + 16] & 15) << 4);
        }
    }
    return 0;
}

#if defined(__x86_64__)
#define T256 __attribute__((target("avx2,fma,f16c")))

/* 8 source elements from byte p as fp32 */
static inline T256 __m256 ld8(int t, const unsigned char *p) {
    switch (t) {
    case RWKV5_SRC_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    case RWKV5_SRC_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    case RWKV5_SRC_F64:
        return _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd((const double *)p + 4)),
                               _mm256_cvtpd_ps(_mm256_loadu_pd((const double *)p)));
    default:
        return _mm256_loadu_ps((const float *)p);
    }
}

static T256 int quant_row_avx2(int8_t *q, float *scale, const unsigned char *row, int t, int64_t o,
                               int64_t cols, int blocked, float *buf) {
    const int64_t esz = rwkv5_src_bytes(t), n8 = cols / 8 * 8;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)),
                 inf = _mm256_set1_ps(INFINITY);
    __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i < n8; i += 8) {
        __m256 w = ld8(t, row + i * esz), a = _mm256_and_ps(w, absmask);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ)); /* inf or NaN */
        vmax = _mm256_max_ps(vmax, a);
        _mm256_storeu_ps(buf + i, w);
    }
    if (_mm256_movemask_ps(bad)) return 1;
    float lanes[8], amax = 0.0f;
    _mm256_storeu_ps(lanes, vmax);
    for (int k = 0; k < 8; k++) amax = lanes[k] > amax ? lanes[k] : amax;
    if (scan_row(row, t, i, cols, buf, &amax)) return 1;
    float s = amax / 127.0f;
    scale[o] = s;
    const float safe = s > 0.0f ? s : 1.0f;
    const __m256 vs = _mm256_set1_ps(safe), lo = _mm256_set1_ps(-127.0f),
                 hi = _mm256_set1_ps(127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    /* 32 at a time: the 32 elements of a half line (blocked) or of a row-major run */
    int64_t i0 = 0;
    for (; i0 + 32 <= cols; i0 += 32) {
        __m256i v[4];
        for (int k = 0; k < 4; k++) {
            __m256 y = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(buf + i0 + 8 * k), vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v[k] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y, lo), hi));
        }
        __m256i p =
            _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)q_ptr(q, o, i0, cols, blocked),
                            _mm256_permutevar8x32_epi32(p, perm));
    }
    for (; i0 < cols; i0++) *q_ptr(q, o, i0, cols, blocked) = q_of(buf[i0], safe);
    return 0;
}
#endif

/* ---- over the thread pool ---- */

typedef struct {
    int dtype; /* RWKV5_I8 or RWKV5_I4 */
    void *q;   /* int8 q, or the int4 blocks */
    float *scale;
    const unsigned char *src;
    int t, blocked, avx2;
    int64_t cols;
    const volatile int *cancel;
    _Atomic int64_t bad; /* 2 * the lowest bad row found so far + (its reason - 1), -1 while none */
    _Atomic int cancelled, nomem;
} quant_job;

static void note_bad(quant_job *job, int64_t o, int why) {
    int64_t key = 2 * o + (why - 1), cur = atomic_load(&job->bad);
    while ((cur < 0 || key < cur) && !atomic_compare_exchange_weak(&job->bad, &cur, key)) {
    }
}

static void quant_range(void *ctx, int64_t r0, int64_t r1) {
    quant_job *job = (quant_job *)ctx;
    if (job->cancel && *job->cancel) {
        atomic_store(&job->cancelled, 1);
        return;
    }
    float *buf = malloc((size_t)(job->cols > 0 ? job->cols : 1) * sizeof(float));
    if (!buf) {
        atomic_store(&job->nomem, 1);
        return;
    }
    const size_t rb = (size_t)job->cols * (size_t)rwkv5_src_bytes(job->t);
    for (int64_t o = r0; o < r1; o++) {
        if (job->cancel &&
            *job->cancel) { /* per row: a piece may be the whole matrix (one thread) */
            atomic_store(&job->cancelled, 1);
            break;
        }
        const unsigned char *row = job->src + (size_t)o * rb;
        int bad;
        if (job->dtype == RWKV5_I4)
            bad = quant_row_i4((uint8_t *)job->q + (size_t)o * rwkv5_row_bytes(RWKV5_I4, job->cols),
                               row, job->t, job->cols, buf);
        else
#if defined(__x86_64__)
            if (job->avx2)
            bad = quant_row_avx2(job->q, job->scale, row, job->t, o, job->cols, job->blocked, buf);
        else
#endif
            bad =
                quant_row_scalar(job->q, job->scale, row, job->t, o, job->cols, job->blocked, buf);
        if (bad) {
            note_bad(job, o, bad);
            break;
        }
    }
    free(buf);
}

/* the threaded loop of both quantisers; returns as rwkv5_quantize_int4 */
static int64_t quantize_rows(quant_job *job, int64_t rows, int *why) {
#if defined(__x86_64__)
    job->avx2 = rwkv5_cpu_isa() >= RWKV5_ISA_AVX2;
#endif
    int64_t grain = job->cols > 0 ? (1 << 18) / job->cols : rows; /* pieces of >= 256K weights */
    rwkv5_parallel_for(rows, grain < 4 ? 4 : grain, quant_range, job);
    if (atomic_load(&job->cancelled)) return -2;
    if (atomic_load(&job->nomem)) return -3;
    int64_t key = atomic_load(&job->bad);
    if (why) *why = key < 0 ? 0 : (int)(key % 2) + 1;
    return key < 0 ? -1 : key / 2;
}

int64_t rwkv5_quantize_int8(int8_t *q, float *scale, const void *src, int src_type, int64_t rows,
                            int64_t cols, int blocked, const volatile int *cancel) {
    quant_job job = {
        RWKV5_I8, q, scale, (const unsigned char *)src, src_type, blocked != 0, 0, cols, cancel,
        -1,       0, 0};
    return quantize_rows(&job, rows, NULL);
}

int64_t rwkv5_quantize_int4(uint8_t *blocks, const void *src, int src_type, int64_t rows,
                            int64_t cols, int *why, const volatile int *cancel) {
    quant_job job = {
        RWKV5_I4, blocks, NULL, (const unsigned char *)src, src_type, 0, 0, cols, cancel, -1, 0, 0};
    return quantize_rows(&job, rows, why);
}

typedef struct {
    unsigned char *dst;
    const unsigned char *src;
    int64_t esz, cols;
    const volatile int *cancel;
    _Atomic int cancelled;
} block_job;

/* rows [4*g0, 4*g1): each row goes out in runs of one line (E elements) 4 lines apart */
static void block_range(void *ctx, int64_t g0, int64_t g1) {
    block_job *job = (block_job *)ctx;
    if (job->cancel && *job->cancel) {
        atomic_store(&job->cancelled, 1);
        return;
    }
    const int64_t rb = job->cols * job->esz, lines = (rb + LINE - 1) / LINE;
    for (int64_t o = 4 * g0; o < 4 * g1; o++) {
        if (o % 64 == 0 && job->cancel && *job->cancel) {
            atomic_store(&job->cancelled, 1);
            return;
        }
        const unsigned char *row = job->src + o * rb;
        unsigned char *d = job->dst + ((o / 4) * lines * 4 + o % 4) * LINE;
        for (int64_t b = 0; b < rb; b += LINE, d += 4 * LINE)
            memcpy(d, row + b, (size_t)(rb - b < LINE ? rb - b : LINE));
    }
}

int rwkv5_block_copy(void *dst, const void *src, int esz, int64_t rows, int64_t cols,
                     const volatile int *cancel) {
    block_job job = {(unsigned char *)dst, (const unsigned char *)src, esz, cols, cancel, 0};
    int64_t full = rows / 4, grain = cols > 0 ? (1 << 20) / (4 * cols * esz) : full;
    rwkv5_parallel_for(full, grain < 1 ? 1 : grain, block_range, &job);
    /* the last 1-3 rows of a ragged group */
    const int64_t rb = cols * esz, lines = (rb + LINE - 1) / LINE;
    for (int64_t o = 4 * full; o < rows; o++) {
        const unsigned char *row = (const unsigned char *)src + o * rb;
        unsigned char *d = (unsigned char *)dst + ((o / 4) * lines * 4 + o % 4) * LINE;
        for (int64_t b = 0; b < rb; b += LINE, d += 4 * LINE)
            memcpy(d, row + b, (size_t)(rb - b < LINE ? rb - b : LINE));
    }
    return atomic_load(&job.cancelled) ? -2 : 0;
}
