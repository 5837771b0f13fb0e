/* Position-wise kernels and the WKV recurrence / chunk (scalar C; the inner loops over the value
 * index j are independent and the compiler vectorises them). */
#include "kernels.h"

#include "common/cpu.h"

#include <float.h>
#include <math.h>

void rwkv5_mat_row(float *out, const rwkv5_mat *m, size_t r) {
    size_t n = (size_t)m->cols;
    switch (m->dtype) {
    case RWKV5_F16:
        for (size_t i = 0; i < n; i++) out[i] = rwkv5_ld_f16(m->data, r * n + i);
        break;
    case RWKV5_BF16:
        for (size_t i = 0; i < n; i++) out[i] = rwkv5_ld_bf16(m->data, r * n + i);
        break;
    case RWKV5_I8: {   /* reserved layout: one fp32 scale per row */
        const int8_t *p = (const int8_t *)m->data + r * n;
        for (size_t i = 0; i < n; i++) out[i] = (float)p[i] * m->scale[r];
        break;
    }
    default:
        memcpy(out, (const unsigned char *)m->data + r * n * 4, n * sizeof(float));
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
#define INL static inline __attribute__((always_inline))

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
#define TGT512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512")))
TGT2 static void wkv_step_avx2(STEP_ARGS) { wkv_step_body(y, S, r, k, v, w, u, N); }
TGT2 static void wkv_chunk_avx2(CHUNK_ARGS) { wkv_chunk_body(y, S, r, k, v, ld, P, ldp, u, n, N); }
TGT512 static void wkv_step_avx512(STEP_ARGS) { wkv_step_body(y, S, r, k, v, w, u, N); }
TGT512 static void wkv_chunk_avx512(CHUNK_ARGS) { wkv_chunk_body(y, S, r, k, v, ld, P, ldp, u, n, N); }
#endif

void rwkv5_wkv_step_isa(int isa, STEP_ARGS) {
#if defined(__x86_64__)
    if (isa == RWKV5_ISA_AVX512) wkv_step_avx512(y, S, r, k, v, w, u, N);
    else if (isa == RWKV5_ISA_AVX2) wkv_step_avx2(y, S, r, k, v, w, u, N);
    else
#endif
        wkv_step_scalar(y, S, r, k, v, w, u, N);
}

void rwkv5_wkv_chunk_isa(int isa, CHUNK_ARGS) {
#if defined(__x86_64__)
    if (isa == RWKV5_ISA_AVX512) wkv_chunk_avx512(y, S, r, k, v, ld, P, ldp, u, n, N);
    else if (isa == RWKV5_ISA_AVX2) wkv_chunk_avx2(y, S, r, k, v, ld, P, ldp, u, n, N);
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
