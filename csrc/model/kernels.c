/* Position-wise kernels and the WKV recurrence / chunk: portable C compiled for three ISAs (the
 * inner loops over the value index j are independent and vectorise), plus a register-blocked
 * AVX-512 chunk for head size 64. */
#include "kernels.h"

#include "common/cpu.h"
#include "neon.h"

#include <float.h>
#include <math.h>

void rwkv5_mat_row(float *out, const rwkv5_mat *m, size_t r) {
    size_t n = (size_t)m->cols, esz = rwkv5_esz(m->dtype), cs = RWKV5_LINE_STRIDE(m);
    const unsigned char *p = rwkv5_row_ptr(m, r);
    if (m->dtype == RWKV5_F32 && !m->blocked) {
        memcpy(out, p, n * sizeof(float));
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
void rwkv5_layer_norm(float *out, const float *x, const float *w, const float *b, int n, float eps) {
    double mu, var;
    moments(x, n, &mu, &var);
    float m = (float)mu, inv = (float)(1.0 / sqrt(var + (double)eps));
    for (int i = 0; i < n; i++) out[i] = (x[i] - m) * inv * w[i] + b[i];
}

void rwkv5_group_norm(float *out, const float *x, const float *w, const float *b, int n, int n_groups,
                      float eps) {
    int g = n / n_groups;
    for (int h = 0; h < n_groups; h++) {
        double mu, var;
        moments(x + (size_t)h * g, g, &mu, &var);
        float m = (float)mu, inv = (float)(1.0 / sqrt(var + (double)eps));
        for (int i = h * g; i < (h + 1) * g; i++) out[i] = (x[i] - m) * inv * w[i] + b[i];
    }
}

/* The WKV bodies are written once as always-inline functions and compiled three times: for the
 * baseline ISA, for AVX2+FMA and for AVX-512 (the loops over the value index j are independent, so
 * the compiler vectorises them across j with the widest vectors the target allows, and contracts
 * a*b+c into FMAs). rwkv5_wkv_step / rwkv5_wkv_chunk pick the one for rwkv5_cpu_isa(). */

INL void wkv_step_body(float *restrict y, float *restrict S, const float *restrict r, const float *restrict k,
                       const float *restrict v, const float *restrict w, const float *restrict u, int N) {
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

INL void wkv_chunk_body(float *restrict y, float *restrict S, const float *restrict r, const float *restrict k,
                        const float *restrict v, size_t ld, const float *restrict P, size_t ldp,
                        const float *restrict u, int n, int N) {
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
        /* intra-chunk scores, only non-negative powers: A[t][s] = sum_i r_t[i] k_s[i] w_i^(t-1-s) */
        for (int s = 0; s < t; s++) a[s] = dot3(rt, k + (size_t)s * ld, P + (size_t)(t - 1 - s) * ldp, N);
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

#define STEP_ARGS float *restrict y, float *restrict S, const float *restrict r, const float *restrict k, \
                  const float *restrict v, const float *restrict w, const float *restrict u, int N
#define CHUNK_ARGS float *restrict y, float *restrict S, const float *restrict r, const float *restrict k, \
                   const float *restrict v, size_t ld, const float *restrict P, size_t ldp, \
                   const float *restrict u, int n, int N

static void wkv_step_scalar(STEP_ARGS) { wkv_step_body(y, S, r, k, v, w, u, N); }
static void wkv_chunk_scalar(CHUNK_ARGS) { wkv_chunk_body(y, S, r, k, v, ld, P, ldp, u, n, N); }
#if defined(__x86_64__)
#define TGT2 __attribute__((target("avx2,fma")))
#if defined(__clang__)   /* clang has no prefer-vector-width target attribute; it vectorises 512-bit here */
#define TGT512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))
#else
#define TGT512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512")))
#endif
TGT2 static void wkv_step_avx2(STEP_ARGS) { wkv_step_body(y, S, r, k, v, w, u, N); }
TGT2 static void wkv_chunk_avx2(CHUNK_ARGS) { wkv_chunk_body(y, S, r, k, v, ld, P, ldp, u, n, N); }
TGT512 static void wkv_step_avx512(STEP_ARGS) { wkv_step_body(y, S, r, k, v, w, u, N); }
#include <immintrin.h>

/* Head size 64 (every released RWKV-5), AVX-512: the chunk as three register-blocked products,
 * with rp[t] = r_t * P[t], kp[s] = k_s * P[n-1-s] and the score matrix a (lower triangle) made first:
 *   y[t]  = rp[t] @ S0 + sum_{s<=t} a[t][s] v_s        (4 rows t x 64 values in 16 registers)
 *   S[i]  = P[n][i] S0[i] + sum_s kp[s][i] v_s          (4 rows i x 64 values in 16 registers)
 * Rows past n are zero in the local buffers, so blocks of 4 never read garbage (only stores are cut). */
TGT512 static void wkv_chunk_avx512_n64(float *restrict y, float *restrict S, const float *restrict r,
                                        const float *restrict k, const float *restrict v, size_t ld,
                                        const float *restrict P, size_t ldp, const float *restrict u, int n) {
    enum { N = 64, RB = 4 };
    float rp[RWKV5_CHUNK + RB][N] __attribute__((aligned(64)));
    float kp[RWKV5_CHUNK][N] __attribute__((aligned(64)));
    float a[RWKV5_CHUNK + RB][RWKV5_CHUNK + RB] __attribute__((aligned(64)));
    int nb = (n + RB - 1) / RB * RB;
    for (int t = 0; t < nb; t++) {
        for (int q = 0; q < N; q += 16) {
            __m512 rv = t < n ? _mm512_mul_ps(_mm512_loadu_ps(r + (size_t)t * ld + q), _mm512_loadu_ps(P + (size_t)t * ldp + q))
                              : _mm512_setzero_ps();
            _mm512_store_ps(&rp[t][q], rv);
            if (t < n)
                _mm512_store_ps(&kp[t][q], _mm512_mul_ps(_mm512_loadu_ps(k + (size_t)t * ld + q),
                                                         _mm512_loadu_ps(P + (size_t)(n - 1 - t) * ldp + q)));
        }
        for (int s2 = 0; s2 < nb; s2++) {
            float acc = 0.0f;
            if (t < n && s2 < t) acc = dot3(r + (size_t)t * ld, k + (size_t)s2 * ld, P + (size_t)(t - 1 - s2) * ldp, N);
            else if (t < n && s2 == t) acc = dot3(r + (size_t)t * ld, u, k + (size_t)t * ld, N);
            a[t][s2] = acc;
        }
    }
    for (int t0 = 0; t0 < n; t0 += RB) {
        __m512 c[RB][4];
        for (int tt = 0; tt < RB; tt++)
            for (int q = 0; q < 4; q++) c[tt][q] = _mm512_setzero_ps();
        for (int i = 0; i < N; i++) {   /* inter-chunk: y_t += rp[t][i] S0[i] */
            const float *Si = S + (size_t)i * N;
            __m512 s0 = _mm512_loadu_ps(Si), s1 = _mm512_loadu_ps(Si + 16), s2 = _mm512_loadu_ps(Si + 32),
                   s3 = _mm512_loadu_ps(Si + 48);
            for (int tt = 0; tt < RB; tt++) {
                __m512 b = _mm512_set1_ps(rp[t0 + tt][i]);
                c[tt][0] = _mm512_fmadd_ps(b, s0, c[tt][0]);
                c[tt][1] = _mm512_fmadd_ps(b, s1, c[tt][1]);
                c[tt][2] = _mm512_fmadd_ps(b, s2, c[tt][2]);
                c[tt][3] = _mm512_fmadd_ps(b, s3, c[tt][3]);
            }
        }
        int smax = t0 + RB < n ? t0 + RB : n;
        for (int s2 = 0; s2 < smax; s2++) {   /* intra-chunk: y_t += a[t][s] v_s (a = 0 for s > t) */
            const float *vs = v + (size_t)s2 * ld;
            __m512 v0 = _mm512_loadu_ps(vs), v1 = _mm512_loadu_ps(vs + 16), v2 = _mm512_loadu_ps(vs + 32),
                   v3 = _mm512_loadu_ps(vs + 48);
            for (int tt = 0; tt < RB; tt++) {
                __m512 b = _mm512_set1_ps(a[t0 + tt][s2]);
                c[tt][0] = _mm512_fmadd_ps(b, v0, c[tt][0]);
                c[tt][1] = _mm512_fmadd_ps(b, v1, c[tt][1]);
                c[tt][2] = _mm512_fmadd_ps(b, v2, c[tt][2]);
                c[tt][3] = _mm512_fmadd_ps(b, v3, c[tt][3]);
            }
        }
        for (int tt = 0; tt < RB && t0 + tt < n; tt++)
            for (int q = 0; q < 4; q++) _mm512_storeu_ps(y + (size_t)(t0 + tt) * ld + 16 * q, c[tt][q]);
    }
    const float *Pn = P + (size_t)n * ldp;
    for (int i0 = 0; i0 < N; i0 += RB) {
        __m512 c[RB][4];
        for (int ii = 0; ii < RB; ii++) {
            __m512 p = _mm512_set1_ps(Pn[i0 + ii]);
            for (int q = 0; q < 4; q++) c[ii][q] = _mm512_mul_ps(p, _mm512_loadu_ps(S + (size_t)(i0 + ii) * N + 16 * q));
        }
        for (int s2 = 0; s2 < n; s2++) {
            const float *vs = v + (size_t)s2 * ld;
            __m512 v0 = _mm512_loadu_ps(vs), v1 = _mm512_loadu_ps(vs + 16), v2 = _mm512_loadu_ps(vs + 32),
                   v3 = _mm512_loadu_ps(vs + 48);
            for (int ii = 0; ii < RB; ii++) {
                __m512 b = _mm512_set1_ps(kp[s2][i0 + ii]);
                c[ii][0] = _mm512_fmadd_ps(b, v0, c[ii][0]);
                c[ii][1] = _mm512_fmadd_ps(b, v1, c[ii][1]);
                c[ii][2] = _mm512_fmadd_ps(b, v2, c[ii][2]);
                c[ii][3] = _mm512_fmadd_ps(b, v3, c[ii][3]);
            }
        }
        for (int ii = 0; ii < RB; ii++)
            for (int q = 0; q < 4; q++) _mm512_storeu_ps(S + (size_t)(i0 + ii) * N + 16 * q, c[ii][q]);
    }
}

TGT512 static void wkv_chunk_avx512(CHUNK_ARGS) {
    if (N == 64 && n >= 1 && n <= RWKV5_CHUNK) wkv_chunk_avx512_n64(y, S, r, k, v, ld, P, ldp, u, n);
    else wkv_chunk_body(y, S, r, k, v, ld, P, ldp, u, n, N);
}
#endif

void rwkv5_wkv_step_isa(int isa, STEP_ARGS) {
#if defined(__x86_64__)
    if (isa >= RWKV5_ISA_AVX512) wkv_step_avx512(y, S, r, k, v, w, u, N);
    else if (isa == RWKV5_ISA_AVX2) wkv_step_avx2(y, S, r, k, v, w, u, N);
    else
#elif defined(__aarch64__)
    if (isa >= RWKV5_ISA_NEON) rwkv5_neon_wkv_step(y, S, r, k, v, w, u, N);
    else
#endif
        wkv_step_scalar(y, S, r, k, v, w, u, N);
}

void rwkv5_wkv_chunk_isa(int isa, CHUNK_ARGS) {
#if defined(__x86_64__)
    if (isa >= RWKV5_ISA_AVX512) wkv_chunk_avx512(y, S, r, k, v, ld, P, ldp, u, n, N);
    else if (isa == RWKV5_ISA_AVX2) wkv_chunk_avx2(y, S, r, k, v, ld, P, ldp, u, n, N);
    else
#elif defined(__aarch64__)
    if (isa >= RWKV5_ISA_NEON) rwkv5_neon_wkv_chunk(y, S, r, k, v, ld, P, ldp, u, n, N);
    else
#endif
        wkv_chunk_scalar(y, S, r, k, v, ld, P, ldp, u, n, N);
}

void rwkv5_wkv_step(STEP_ARGS) { rwkv5_wkv_step_isa((int)rwkv5_cpu_isa(), y, S, r, k, v, w, u, N); }
void rwkv5_wkv_chunk(CHUNK_ARGS) { rwkv5_wkv_chunk_isa((int)rwkv5_cpu_isa(), y, S, r, k, v, ld, P, ldp, u, n, N); }

void rwkv5_power_table(float *P, const double *logw, int n, int dmax) {
    for (int d = 0; d <= dmax; d++)
        for (int i = 0; i < n; i++) {
            double p = d == 0 ? 1.0 : exp((double)d * logw[i]);
            /* w^d below FLT_MIN would be a subnormal fp32: slow on x86 and < 1e-38 in value */
            P[(size_t)d * n + i] = p < (double)FLT_MIN ? 0.0f : (float)p;
        }
}
