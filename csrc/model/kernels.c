/* Position-wise kernels (norms, token shift, the element-wise row operations with their vector
 * sigmoid) and the WKV recurrence / chunk: portable C compiled for three ISAs (the inner loops over
 * the value index j are independent and vectorise), plus a register-blocked AVX-512 chunk for head
 * size 64. */
#include "kernels.h"

#include "common/cpu.h"
#include "neon.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

void rwkv5_mat_row(float *out, const rwkv5_mat *m, size_t r) {
    size_t n = (size_t)m->cols, esz = rwkv5_esz(m->dtype), cs = RWKV5_LINE_STRIDE(m);
    const unsigned char *p = rwkv5_row_ptr(m, r);
    if (m->dtype == RWKV5_F32 && !m->blocked) {
        memcpy(out, p, n * sizeof(float));
        return;
    }
    if (rwkv5_dtypes[m->dtype].block) { /* int4: q times its group's scale */
        for (size_t i = 0; i < n; i++) out[i] = (float)rwkv5_i4_q(p, i) * rwkv5_i4_scale(p, i / 32);
        return;
    }
    float s = m->scale ? m->scale[r] : 1.0f;
    for (size_t i = 0; i < n; i++) {
        float v = rwkv5_load(m->dtype, p + RWKV5_COL_OFF(i, esz, cs));
        out[i] = rwkv5_dtypes[m->dtype].row_scale ? v * s : v;
    }
}

/* mean and biased variance accumulated in double (cheap, and keeps LN exact to fp32 rounding) */
static void moments(const float *x, int n, double *mean, double *var) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += x[i];
    double mu = s / n;
    for (int i = 0; i < n; i++) {
        double d = x[i] - mu;
        q += d * d;
    }
    *mean = mu;
    *var = q / n;
}

/* out = (x - mean(x)) / sqrt(var(x) + eps) * w + b */
void rwkv5_layer_norm(float *out, const float *x, const float *w, const float *b, int n,
                      float eps) {
    double mu, var;
    moments(x, n, &mu, &var);
    float m = (float)mu, inv = (float)(1.0 / sqrt(var + (double)eps));
    for (int i = 0; i < n; i++) out[i] = (x[i] - m) * inv * w[i] + b[i];
}

void rwkv5_group_norm(float *out, const float *x, const float *w, const float *b, int n,
                      int n_groups, float eps) {
    int g = n / n_groups;
    for (int h = 0; h < n_groups; h++) {
        double mu, var;
        moments(x + (size_t)h * g, g, &mu, &var);
        float m = (float)mu, inv = (float)(1.0 / sqrt(var + (double)eps));
        for (int i = h * g; i < (h + 1) * g; i++) out[i] = (x[i] - m) * inv * w[i] + b[i];
    }
}

static inline float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

/* The element-wise row operations, written once (always inline) and compiled for the baseline ISA
 * and for AVX-512; the AVX-512 copy also has a vector sigmoid. The rwkv5_* entry points below pick
 * one by rwkv5_cpu_isa(). */

/* token shift: out = cur * mu + prev * (1 - mu), prev = the row before (or the carried row at t =
 * 0) */
INL void mix_body(float *out, const float *cur, const float *prev, const float *mu, size_t C) {
    for (size_t i = 0; i < C; i++) out[i] = cur[i] * mu[i] + prev[i] * (1.0f - mu[i]);
}
INL void add_body(float *x, const float *a, size_t C) {
    for (size_t i = 0; i < C; i++) x[i] += a[i];
}
INL void relu2_body(float *x, size_t C) {
    for (size_t i = 0; i < C; i++) {
        float z = x[i] > 0.0f ? x[i] : 0.0f;
        x[i] = z * z;
    }
}
static void silu_gate(float *y, const float *g, size_t C) { /* y *= g * sigmoid(g) */
    for (size_t i = 0; i < C; i++) y[i] *= g[i] * sigmoidf_(g[i]);
}
static void add_gated(float *x, const float *a, const float *b,
                      size_t C) { /* x += sigmoid(a) * b */
    for (size_t i = 0; i < C; i++) x[i] += sigmoidf_(a[i]) * b[i];
}
static void mix_generic(float *out, const float *cur, const float *prev, const float *mu,
                        size_t C) {
    mix_body(out, cur, prev, mu, C);
}
static void add_generic(float *x, const float *a, size_t C) { add_body(x, a, C); }
static void relu2_generic(float *x, size_t C) { relu2_body(x, C); }

typedef struct {
    void (*mix)(float *, const float *, const float *, const float *, size_t);
    void (*add)(float *, const float *, size_t);
    void (*relu2)(float *, size_t);
    void (*silu_gate)(float *, const float *, size_t);
    void (*add_gated)(float *, const float *, const float *, size_t);
} row_ops;

static const row_ops ops_generic = {mix_generic, add_generic, relu2_generic, silu_gate, add_gated};

#if defined(__x86_64__)
#include <immintrin.h>
#define T512F __attribute__((target("avx512f,avx512dq,fma")))

/* e^x on 16 lanes: x = n ln2 + r (Cody-Waite split of ln2), e^r by its Taylor series to r^7 on
 * |r| <= ln2/2 (truncation < 2e-8 relative), times 2^n by vscalefps, which overflows to inf and
 * underflows to 0 as expf does. Arguments are clamped to [-100, 100] first (nan passes through:
 * the constant is the first operand of min/max). Measured against expf: <= 2 ulp. */
T512F static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-100.0f), _mm512_min_ps(_mm512_set1_ps(100.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
T512F static inline __m512 sigmoid512(__m512 z) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), z))));
}
T512F static void silu_gate_512(float *y, const float *g, size_t C) {
    size_t i = 0;
    for (; i + 16 <= C; i += 16) {
        __m512 gv = _mm512_loadu_ps(g + i);
        _mm512_storeu_ps(y + i,
                         _mm512_mul_ps(_mm512_loadu_ps(y + i), _mm512_mul_ps(gv, sigmoid512(gv))));
    }
    if (i < C) {
        __mmask16 k = (__mmask16)((1u << (C - i)) - 1u);
        __m512 gv = _mm512_maskz_loadu_ps(k, g + i);
        _mm512_mask_storeu_ps(
            y + i, k,
            _mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + i), _mm512_mul_ps(gv, sigmoid512(gv))));
    }
}
T512F static void add_gated_512(float *x, const float *a, const float *b, size_t C) {
    size_t i = 0;
    for (; i + 16 <= C; i += 16)
        _mm512_storeu_ps(x + i, _mm512_fmadd_ps(sigmoid512(_mm512_loadu_ps(a + i)),
                                                _mm512_loadu_ps(b + i), _mm512_loadu_ps(x + i)));
    if (i < C) {
        __mmask16 k = (__mmask16)((1u << (C - i)) - 1u);
        _mm512_mask_storeu_ps(x + i, k,
                              _mm512_fmadd_ps(sigmoid512(_mm512_maskz_loadu_ps(k, a + i)),
                                              _mm512_maskz_loadu_ps(k, b + i),
                                              _mm512_maskz_loadu_ps(k, x + i)));
    }
}
T512F static void mix_512(float *out, const float *cur, const float *prev, const float *mu,
                          size_t C) {
    mix_body(out, cur, prev, mu, C);
}
T512F static void add_512(float *x, const float *a, size_t C) { add_body(x, a, C); }
T512F static void relu2_512(float *x, size_t C) { relu2_body(x, C); }

static const row_ops ops_avx512 = {mix_512, add_512, relu2_512, silu_gate_512, add_gated_512};
#endif

#if defined(__aarch64__)
/* the baseline build of mix/add/relu2 is vectorised with Advanced SIMD already (it is part of the
 * base architecture); the sigmoids get a vector exp (neon.c) */
static const row_ops ops_neon = {mix_generic, add_generic, relu2_generic, rwkv5_neon_silu_gate,
                                 rwkv5_neon_add_gated};
#endif

static const row_ops *pick_row_ops(void) {
#if defined(__x86_64__)
    if (rwkv5_cpu_isa() >= RWKV5_ISA_AVX512) return &ops_avx512;
#elif defined(__aarch64__)
    if (rwkv5_cpu_isa() >= RWKV5_ISA_NEON) return &ops_neon;
#endif
    return &ops_generic;
}

void rwkv5_token_shift(float *out, const float *cur, const float *prev, const float *mu, size_t n) {
    pick_row_ops()->mix(out, cur, prev, mu, n);
}
void rwkv5_add(float *x, const float *a, size_t n) { pick_row_ops()->add(x, a, n); }
void rwkv5_relu_sq(float *x, size_t n) { pick_row_ops()->relu2(x, n); }
void rwkv5_silu_gate(float *y, const float *g, size_t n) { pick_row_ops()->silu_gate(y, g, n); }
void rwkv5_add_gated(float *x, const float *a, const float *b, size_t n) {
    pick_row_ops()->add_gated(x, a, b, n);
}

/* The WKV bodies are written once as always-inline functions and compiled three times: for the
 * baseline ISA, for AVX2+FMA and for AVX-512 (the loops over the value index j are independent, so
 * the compiler vectorises them across j with the widest vectors the target allows, and contracts
 * a*b+c into FMAs). rwkv5_wkv_step / rwkv5_wkv_chunk pick the one for rwkv5_cpu_isa(). */

INL void wkv_step_body(float *restrict y, float *restrict S, const float *restrict r,
                       const float *restrict k, const float *restrict v, const float *restrict w,
                       const float *restrict u, int N) {
    for (int j = 0; j < N; j++) y[j] = 0.0f;
    for (int i = 0; i < N; i++) {
        float ri = r[i], ki = k[i], wi = w[i], uki = u[i] * k[i];
        float *Si = S + (size_t)i * N;
        /* y[j] += r[i] * (u[i] k[i] v[j] + S[i][j]);  S[i][j] = w[i] S[i][j] + k[i] v[j] */
        for (int j = 0; j < N; j++) {
            float kv = v[j];
            y[j] += ri * (uki * kv + Si[j]);
            Si[j] = wi * Si[j] + ki * kv;
        }
    }
}

/* sum_i a[i] b[i] c[i] in 16 interleaved partial sums (lane q takes i = q mod 16), added pairwise:
 * a fixed order the compiler can keep in one vector register. */
INL float dot3(const float *restrict a, const float *restrict b, const float *restrict c, int N) {
    float p[16] = {0};
    int i = 0;
    for (; i + 16 <= N; i += 16)
        for (int q = 0; q < 16; q++) p[q] += a[i + q] * b[i + q] * c[i + q];
    for (int q = 0; i < N; i++, q++) p[q] += a[i] * b[i] * c[i];
    for (int h = 8; h >= 1; h /= 2)
        for (int q = 0; q < h; q++) p[q] += p[q + h];
    return p[0];
}

INL void wkv_chunk_body(float *restrict y, float *restrict S, const float *restrict r,
                        const float *restrict k, const float *restrict v, size_t ld,
                        const float *restrict P, size_t ldp, const float *restrict u, int n,
                        int N) {
    float a[RWKV5_CHUNK];
    for (int t = 0; t < n; t++) {
        float *yt = y + (size_t)t * ld;
        const float *rt = r + (size_t)t * ld, *Pt = P + (size_t)t * ldp;
        /* inter-chunk: y_t = (r_t * P[t]) @ S0 */
        for (int j = 0; j < N; j++) yt[j] = 0.0f;
        for (int i = 0; i < N; i++) {
            float c = rt[i] * Pt[i];
            const float *Si = S + (size_t)i * N;
            for (int j = 0; j < N; j++) yt[j] += c * Si[j];
        }
        /* intra-chunk scores, only non-negative powers: A[t][s] = sum_i r_t[i] k_s[i] w_i^(t-1-s)
         */
        for (int s = 0; s < t; s++)
            a[s] = dot3(rt, k + (size_t)s * ld, P + (size_t)(t - 1 - s) * ldp, N);
        a[t] = dot3(rt, u, k + (size_t)t * ld, N);
        /* y_t += sum_{s<=t} A[t][s] v_s */
        for (int s = 0; s <= t; s++) {
            const float *vs = v + (size_t)s * ld;
            float c = a[s];
            for (int j = 0; j < N; j++) yt[j] += c * vs[j];
        }
    }
    /* state: S[i][j] = w_i^n S0[i][j] + sum_s k_s[i] w_i^(n-1-s) v_s[j] */
    const float *Pn = P + (size_t)n * ldp;
    for (int i = 0; i < N; i++) {
        float *Si = S + (size_t)i * N;
        float pn = Pn[i];
        for (int j = 0; j < N; j++) Si[j] *= pn;
        for (int s = 0; s < n; s++) {
            float c = k[(size_t)s * ld + i] * P[(size_t)(n - 1 - s) * ldp + i];
            const float *vs = v + (size_t)s * ld;
            for (int j = 0; j < N; j++) Si[j] += c * vs[j];
        }
    }
}

#define STEP_ARGS                                                                                  \
    float *restrict y, float *restrict S, const float *restrict r, const float *restrict k,        \
        const float *restrict v, const float *restrict w, const float *restrict u, int N
#define CHUNK_ARGS                                                                                 \
    float *restrict y, float *restrict S, const float *restrict r, const float *restrict k,        \
        const float *restrict v, size_t ld, const float *restrict P, size_t ldp,                   \
        const float *restrict u, int n, int N

static void wkv_step_scalar(STEP_ARGS) { wkv_step_body(y, S, r, k, v, w, u, N); }
static void wkv_chunk_scalar(CHUNK_ARGS) { wkv_chunk_body(y, S, r, k, v, ld, P, ldp, u, n, N); }
#if defined(__x86_64__)
#define TGT2 __attribute__((target("avx2,fma")))
#if defined(__clang__) /* clang has no prefer-vector-width target attribute; it vectorises 512-bit \
                          here */
#define TGT512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))
#else
#define TGT512                                                                                     \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512")))
#endif
TGT2 static void wkv_step_avx2(STEP_ARGS) { wkv_step_body(y, S, r, k, v, w, u, N); }
TGT2 static void wkv_chunk_avx2(CHUNK_ARGS) { wkv_chunk_body(y, S, r, k, v, ld, P, ldp, u, n, N); }
TGT512 static void wkv_step_avx512(STEP_ARGS) { wkv_step_body(y, S, r, k, v, w, u, N); }
#include <immintrin.h>

/* Head size 64 (every released RWKV-5), AVX-512: the chunk as three register-blocked products,
 * with rp[t] = r_t * P[t], kp[s] = k_s * P[n-1-s] and the score matrix a (lower triangle) made
 * first: y[t]  = rp[t] @ S0 + sum_{s<=t} a[t][s] v_s        (4 rows t x 64 values in 16 registers)
 *   S[i]  = P[n][i] S0[i] + sum_s kp[s][i] v_s          (4 rows i x 64 values in 16 registers)
 * Rows past n are zero in the local buffers, so blocks of 4 never read garbage (only stores are
 * cut). */
TGT512 static void wkv_chunk_avx512_n64(float *restrict y, float *restrict S,
                                        const float *restrict r, const float *restrict k,
                                        const float *restrict v, size_t ld, const float *restrict P,
                                        size_t ldp, const float *restrict u, int n) {
    enum { N = 64, RB = 4 };
    float rp[RWKV5_CHUNK + RB][N] __attribute__((aligned(64)));
    float kp[RWKV5_CHUNK][N] __attribute__((aligned(64)));
    float a[RWKV5_CHUNK + RB][RWKV5_CHUNK + RB] __attribute__((aligned(64)));
    int nb = (n + RB - 1) / RB * RB;
    for (int t = 0; t < nb; t++) {
        for (int q = 0; q < N; q += 16) {
            __m512 rv = t < n ? _mm512_mul_ps(_mm512_loadu_ps(r + (size_t)t * ld + q),
                                              _mm512_loadu_ps(P + (size_t)t * ldp + q))
                              : _mm512_setzero_ps();
            _mm512_store_ps(&rp[t][q], rv);
            if (t < n)
                _mm512_store_ps(&kp[t][q],
                                _mm512_mul_ps(_mm512_loadu_ps(k + (size_t)t * ld + q),
                                              _mm512_loadu_ps(P + (size_t)(n - 1 - t) * ldp + q)));
        }
        for (int s2 = 0; s2 < nb; s2++) {
            float acc = 0.0f;
            if (t < n && s2 < t)
                acc = dot3(r + (size_t)t * ld, k + (size_t)s2 * ld, P + (size_t)(t - 1 - s2) * ldp,
                           N);
            else if (t < n && s2 == t)
                acc = dot3(r + (size_t)t * ld, u, k + (size_t)t * ld, N);
            a[t][s2] = acc;
        }
    }
    for (int t0 = 0; t0 < n; t0 += RB) {
        __m512 c[RB][4];
        for (int tt = 0; tt < RB; tt++)
            for (int q = 0; q < 4; q++) c[tt][q] = _mm512_setzero_ps();
        for (int i = 0; i < N; i++) { /* inter-chunk: y_t += rp[t][i] S0[i] */
            const float *Si = S + (size_t)i * N;
            __m512 s0 = _mm512_loadu_ps(Si), s1 = _mm512_loadu_ps(Si + 16),
                   s2 = _mm512_loadu_ps(Si + 32), s3 = _mm512_loadu_ps(Si + 48);
            for (int tt = 0; tt < RB; tt++) {
                __m512 b = _mm512_set1_ps(rp[t0 + tt][i]);
                c[tt][0] = _mm512_fmadd_ps(b, s0, c[tt][0]);
                c[tt][1] = _mm512_fmadd_ps(b, s1, c[tt][1]);
                c[tt][2] = _mm512_fmadd_ps(b, s2, c[tt][2]);
                c[tt][3] = _mm512_fmadd_ps(b, s3, c[tt][3]);
            }
        }
        int smax = t0 + RB < n ? t0 + RB : n;
        for (int s2 = 0; s2 < smax; s2++) { /* intra-chunk: y_t += a[t][s] v_s (a = 0 for s > t) */
            const float *vs = v + (size_t)s2 * ld;
            __m512 v0 = _mm512_loadu_ps(vs), v1 = _mm512_loadu_ps(vs + 16),
                   v2 = _mm512_loadu_ps(vs + 32), v3 = _mm512_loadu_ps(vs + 48);
            for (int tt = 0; tt < RB; tt++) {
                __m512 b = _mm512_set1_ps(a[t0 + tt][s2]);
                c[tt][0] = _mm512_fmadd_ps(b, v0, c[tt][0]);
                c[tt][1] = _mm512_fmadd_ps(b, v1, c[tt][1]);
                c[tt][2] = _mm512_fmadd_ps(b, v2, c[tt][2]);
                c[tt][3] = _mm512_fmadd_ps(b, v3, c[tt][3]);
            }
        }
        for (int tt = 0; tt < RB && t0 + tt < n; tt++)
            for (int q = 0; q < 4; q++)
                _mm512_storeu_ps(y + (size_t)(t0 + tt) * ld + 16 * q, c[tt][q]);
    }
    const float *Pn = P + (size_t)n * ldp;
    for (int i0 = 0; i0 < N; i0 += RB) {
        __m512 c[RB][4];
        for (int ii = 0; ii < RB; ii++) {
            __m512 p = _mm512_set1_ps(Pn[i0 + ii]);
            for (int q = 0; q < 4; q++)
                c[ii][q] = _mm512_mul_ps(p, _mm512_loadu_ps(S + (size_t)(i0 + ii) * N + 16 * q));
        }
        for (int s2 = 0; s2 < n; s2++) {
            const float *vs = v + (size_t)s2 * ld;
            __m512 v0 = _mm512_loadu_ps(vs), v1 = _mm512_loadu_ps(vs + 16),
                   v2 = _mm512_loadu_ps(vs + 32), v3 = _mm512_loadu_ps(vs + 48);
            for (int ii = 0; ii < RB; ii++) {
                __m512 b = _mm512_set1_ps(kp[s2][i0 + ii]);
                c[ii][0] = _mm512_fmadd_ps(b, v0, c[ii][0]);
                c[ii][1] = _mm512_fmadd_ps(b, v1, c[ii][1]);
                c[ii][2] = _mm512_fmadd_ps(b, v2, c[ii][2]);
                c[ii][3] = _mm512_fmadd_ps(b, v3, c[ii][3]);
            }
        }
        for (int ii = 0; ii < RB; ii++)
            for (int q = 0; q < 4; q++)
                _mm512_storeu_ps(S + (size_t)(i0 + ii) * N + 16 * q, c[ii][q]);
    }
}

TGT512 static void wkv_chunk_avx512(CHUNK_ARGS) {
    if (N == 64 && n >= 1 && n <= RWKV5_CHUNK)
        wkv_chunk_avx512_n64(y, S, r, k, v, ld, P, ldp, u, n);
    else
        wkv_chunk_body(y, S, r, k, v, ld, P, ldp, u, n, N);
}
#endif

void rwkv5_wkv_step_isa(int isa, STEP_ARGS) {
#if defined(__x86_64__)
    if (isa >= RWKV5_ISA_AVX512)
        wkv_step_avx512(y, S, r, k, v, w, u, N);
    else if (isa == RWKV5_ISA_AVX2)
        wkv_step_avx2(y, S, r, k, v, w, u, N);
    else
#elif defined(__aarch64__)
    if (isa >= RWKV5_ISA_NEON)
        rwkv5_neon_wkv_step(y, S, r, k, v, w, u, N);
    else
#endif
        wkv_step_scalar(y, S, r, k, v, w, u, N);
}

void rwkv5_wkv_chunk_isa(int isa, CHUNK_ARGS) {
#if defined(__x86_64__)
    if (isa >= RWKV5_ISA_AVX512)
        wkv_chunk_avx512(y, S, r, k, v, ld, P, ldp, u, n, N);
    else if (isa == RWKV5_ISA_AVX2)
        wkv_chunk_avx2(y, S, r, k, v, ld, P, ldp, u, n, N);
    else
#elif defined(__aarch64__)
    if (isa >= RWKV5_ISA_NEON)
        rwkv5_neon_wkv_chunk(y, S, r, k, v, ld, P, ldp, u, n, N);
    else
#endif
        wkv_chunk_scalar(y, S, r, k, v, ld, P, ldp, u, n, N);
}

void rwkv5_wkv_step(STEP_ARGS) { rwkv5_wkv_step_isa((int)rwkv5_cpu_isa(), y, S, r, k, v, w, u, N); }
void rwkv5_wkv_chunk(CHUNK_ARGS) {
    rwkv5_wkv_chunk_isa((int)rwkv5_cpu_isa(), y, S, r, k, v, ld, P, ldp, u, n, N);
}

void rwkv5_wkv_chunks(float *y, float *S, const float *r, const float *k, const float *v, size_t ld,
                      const float *P, size_t ldp, const float *u, size_t n, int N) {
    for (size_t t0 = 0; t0 < n; t0 += RWKV5_CHUNK) {
        int nc = n - t0 < RWKV5_CHUNK ? (int)(n - t0) : RWKV5_CHUNK;
        size_t o = t0 * ld;
        rwkv5_wkv_chunk(y + o, S, r + o, k + o, v + o, ld, P, ldp, u, nc, N);
    }
}

int rwkv5_wkv(float *y, float *S, const float *r, const float *k, const float *v, const float *w,
              const float *u, size_t T, int H, int N, int mode) {
    size_t A = (size_t)H * N;
    if (mode == RWKV5_RECURRENT) {
        for (int h = 0; h < H; h++)
            for (size_t t = 0; t < T; t++) {
                size_t o = t * A + (size_t)h * N;
                rwkv5_wkv_step(y + o, S + (size_t)h * N * N, r + o, k + o, v + o, w + (size_t)h * N,
                               u + (size_t)h * N, N);
            }
        return RWKV5_OK;
    }
    float *P = (float *)malloc((RWKV5_CHUNK + 1) * A * sizeof(float));
    double *logw = (double *)malloc(A * sizeof(double));
    if (!P || !logw) {
        free(P);
        free(logw);
        return RWKV5_ENOMEM;
    }
    for (size_t i = 0; i < A; i++) logw[i] = log((double)w[i]);
    rwkv5_power_table(P, logw, (int)A, RWKV5_CHUNK);
    for (int h = 0; h < H; h++) {
        size_t o = (size_t)h * N;
        rwkv5_wkv_chunks(y + o, S + o * N, r + o, k + o, v + o, A, P + o, A, u + o, T, N);
    }
    free(P);
    free(logw);
    return RWKV5_OK;
}

void rwkv5_power_table(float *P, const double *logw, int n, int dmax) {
    for (int d = 0; d <= dmax; d++)
        for (int i = 0; i < n; i++) {
            double p = d == 0 ? 1.0 : exp((double)d * logw[i]);
            /* w^d below FLT_MIN would be a subnormal fp32: slow on x86 and < 1e-38 in value */
            P[(size_t)d * n + i] = p < (double)FLT_MIN ? 0.0f : (float)p;
        }
}
