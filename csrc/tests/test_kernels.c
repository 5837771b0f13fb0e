// SOURCES: csrc/common/threadpool.c csrc/common/cpu.c csrc/common/polled.c csrc/model/kernels.c csrc/model/matmul.c csrc/model/forward.c csrc/model/params.c csrc/model/neon.c
/* Kernel tests without Python: every ISA's matmul against scalar on odd sizes and all storage
 * types, the chunked WKV against the one-token recurrence, the thread pool's coverage, and a small
 * random model run in both modes (recurrent vs parallel) including its error paths. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cpu.h"
#include "common/threadpool.h"
#include "model/kernels.h"
#include "model/rwkv5_model.h"
#include "common/polled.h"
#include "model/neon.h"

#include <time.h>

static int polled_count;
static void slow_work(void *arg) { /* ~50 ms */
    (void)arg;
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
}
static int count_polls(void *arg) {
    (void)arg;
    polled_count++;
    return 7;
}

#include "tests/check.h"

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float frand(void) { return (float)rnd() / 2147483648.0f - 1.0f; } /* [-1, 1) */

/* finite fp16 / bf16 values of moderate size (exponent near 0) */
static uint16_t rand_f16(void) {
    return (uint16_t)((rnd() & 1) << 15 | (12 + rnd() % 6) << 10 | (rnd() & 0x3ff));
}
static uint16_t rand_bf16(void) {
    return (uint16_t)((rnd() & 1) << 15 | (124 + rnd() % 6) << 7 | (rnd() & 0x7f));
}

/* A 4-row blocked copy of a row-major matrix (rwkv5_mat, blocked = 1), zero padded; free with
 * free(). */
static void *block_copy(const rwkv5_mat *m) {
    size_t esz = rwkv5_esz(m->dtype), e = 64 / esz, np = ((size_t)m->cols + e - 1) / e * e;
    size_t groups = ((size_t)m->rows + 3) / 4;
    unsigned char *b = calloc(groups * 4 * np * esz, 1);
    if (!b) return NULL;
    for (size_t o = 0; o < (size_t)m->rows; o++)
        for (size_t i = 0; i < (size_t)m->cols; i++)
            memcpy(b + ((o / 4 * (np / e) + i / e) * 4 + o % 4) * 64 + i % e * esz,
                   (const unsigned char *)m->data + (o * (size_t)m->cols + i) * esz, esz);
    return b;
}

/* The extra error of the x86 SIMD int4 row kernels (matmul.c), which round x per group of 32 to
 * xq = round(x / t), t = max|x of the group| / 8191: sum_g t_g / 2 * sum_{i in g} |w_i|,
 * headroom 2. (NEON runs the portable kernel, within the bound as well.) */
static float i4_x_bound(const float *x, const rwkv5_mat *w, int m, int o) {
    size_t n = (size_t)w->cols;
    const float *xm = x + (size_t)m * n;
    const unsigned char *row =
        (const unsigned char *)w->data + (size_t)o * rwkv5_row_bytes(w->dtype, n);
    double b = 0;
    for (size_t g = 0; g * 32 < n; g++) {
        double t = 0, sw = 0;
        for (size_t i = g * 32; i < n && i < g * 32 + 32; i++) {
            t = fmax(t, fabs(xm[i]));
            sw += fabs((double)rwkv5_i4_q(row, i) * rwkv5_i4_scale(row, g));
        }
        b += t / 8191 / 2 * sw;
    }
    return (float)(2 * b);
}

/* Every storage type (int8 with per-row scales) x every ISA, row kernels and the blocked GEMM,
 * against a double-precision product of the widened weights; odd sizes cover every tail (k not a
 * multiple of 16 or KC, rows not a multiple of 4 or NR, M not a multiple of the 64-row panel). */
static void test_matmul(void) {
    const int sizes[][3] = {{1, 1, 1},     {1, 15, 3},   {2, 16, 4},    {3, 17, 5},
                            {4, 33, 9},    {7, 100, 13}, {5, 257, 66},  {16, 7, 5},
                            {17, 300, 13}, {70, 65, 7},  {130, 513, 29}};
    int best = (int)rwkv5_cpu_isa_supported();
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int M = sizes[si][0], n = sizes[si][1], d = sizes[si][2];
        float *x = malloc(sizeof(float) * M * n), *ref = malloc(sizeof(float) * M * d),
              *out = malloc(sizeof(float) * M * d), *scale = malloc(sizeof(float) * d),
              *row = malloc(sizeof(float) * n);
        size_t wsn = rwkv5_gemm_ws_floats(M, n, d);
        float *ws = malloc(sizeof(float) * wsn);
        size_t wcap = sizeof(float) * d * n, i4b = (size_t)d * rwkv5_row_bytes(RWKV5_I4, (size_t)n);
        void *w = malloc(wcap > i4b ? wcap : i4b);
        for (int i = 0; i < M * n; i++) x[i] = frand();
        for (int o = 0; o < d; o++) scale[o] = (0.5f + (float)(rnd() % 100) / 100.0f) / 127.0f;
        for (int dt = 0; dt < RWKV5_N_DTYPES; dt++) {
            for (int i = 0; i < d * n; i++) {
                if (dt == RWKV5_F32)
                    ((float *)w)[i] = frand();
                else if (dt == RWKV5_I8)
                    ((int8_t *)w)[i] = (int8_t)(rnd() % 255 - 127);
                else if (dt != RWKV5_I4)
                    ((uint16_t *)w)[i] = dt == RWKV5_F16 ? rand_f16() : rand_bf16();
            }
            if (dt ==
                RWKV5_I4) { /* random nibbles, and each block's two fp16 scales in [1/32, 1/16) */
                for (size_t i = 0; i < i4b; i++) ((unsigned char *)w)[i] = (unsigned char)rnd();
                for (size_t b = 0; b < i4b; b += RWKV5_I4_BLOCK_BYTES)
                    for (int g = 0; g < 2; g++) {
                        uint16_t h = (uint16_t)((rnd() & 1) << 15 | 10 << 10 | (rnd() & 0x3ff));
                        memcpy((unsigned char *)w + b + 2 * g, &h, 2);
                    }
            }
            int block = rwkv5_dtypes[dt].block != 0;
            rwkv5_mat mat = {w, rwkv5_dtypes[dt].row_scale ? scale : NULL, dt, d, n, 0};
            /* double-precision truth */
            for (int o = 0; o < d; o++) {
                rwkv5_mat_row(row, &mat, (size_t)o);
                for (int m = 0; m < M; m++) {
                    double s = 0;
                    for (int i = 0; i < n; i++) s += (double)x[m * n + i] * row[i];
                    ref[m * d + o] = (float)s;
                }
            }
            /* the same storage one byte past an aligned address (as in rwkv.cpp files) */
            size_t wbytes = (size_t)d * rwkv5_row_bytes(dt, (size_t)n);
            unsigned char *odd = malloc(wbytes + 1);
            memcpy(odd + 1, w, wbytes);
            rwkv5_mat omat = {odd + 1, mat.scale, dt, d, n, 0};
            /* and in the 4-row blocked layout: the same values and the same bits from every kernel
             */
            void *blk = block ? NULL : block_copy(&mat);
            rwkv5_mat bmat = {blk, mat.scale, dt, d, n, 1};
            float *row_b = malloc(sizeof(float) * n);
            if (block) { /* a block type has only the row-major layout */
                bmat.data = w;
                CHECK(rwkv5_matmul_rows_isa(0, out, x, &bmat, M, 0, d) == RWKV5_EINVAL,
                      "blocked %s refused", rwkv5_dtypes[dt].name);
                CHECK(rwkv5_matmul(out, x, &bmat, M) == RWKV5_EINVAL, "blocked %s refused",
                      rwkv5_dtypes[dt].name);
            }
            for (int o = 0; o < d && !block; o++) {
                rwkv5_mat_row(row, &mat, (size_t)o);
                rwkv5_mat_row(row_b, &bmat, (size_t)o);
                CHECK(!memcmp(row, row_b, sizeof(float) * n), "blocked mat_row dtype=%d o=%d", dt,
                      o);
            }
            free(row_b);
            float *out2 = malloc(sizeof(float) * M * d);
            for (int isa = 0; isa <= best; isa++) {
                memset(out, 0xff, sizeof(float) * M * d); /* NaN: every output must be written */
                rwkv5_matmul_rows_isa(isa, out, x, &mat, M, 0, d);
                for (int i = 0; i < M * d; i++)
                    CHECK(fabsf(out[i] - ref[i]) <=
                              1e-5f * n +
                                  (dt == RWKV5_I4 && isa ? i4_x_bound(x, &mat, i / d, i % d) : 0),
                          "matmul isa=%d dtype=%d M=%d n=%d d=%d [%d]: %g vs %g", isa, dt, M, n, d,
                          i, out[i], ref[i]);
                rwkv5_matmul_rows_isa(isa, out2, x, &omat, M, 0, d);
                CHECK(!memcmp(out, out2, sizeof(float) * M * d),
                      "unaligned storage isa=%d dtype=%d", isa, dt);
                if (!block) {
                    rwkv5_matmul_rows_isa(isa, out2, x, &bmat, M, 0, d);
                    CHECK(!memcmp(out, out2, sizeof(float) * M * d),
                          "blocked storage isa=%d dtype=%d M=%d n=%d d=%d", isa, dt, M, n, d);
                }
                if (isa == 0) continue;
                /* the GEMM, forced even for small M (threaded); aligned and unaligned storage agree
                 */
                memset(out, 0xff, sizeof(float) * M * d);
                rwkv5_matmul_ws(isa, 1, out, x, &mat, M, ws, wsn);
                for (int i = 0; i < M * d; i++)
                    CHECK(fabsf(out[i] - ref[i]) <= 1e-5f * n,
                          "gemm isa=%d dtype=%d M=%d n=%d d=%d [%d]: %g vs %g", isa, dt, M, n, d, i,
                          out[i], ref[i]);
                rwkv5_matmul_ws(isa, 1, out2, x, &omat, M, ws, wsn);
                CHECK(!memcmp(out, out2, sizeof(float) * M * d),
                      "gemm unaligned storage isa=%d dtype=%d", isa, dt);
                if (!block) {
                    rwkv5_matmul_ws(isa, 1, out2, x, &bmat, M, ws, wsn);
                    CHECK(!memcmp(out, out2, sizeof(float) * M * d),
                          "gemm blocked storage isa=%d dtype=%d", isa, dt);
                }
                /* row m of a GEMM does not depend on the other rows (batch == alone) */
                if (M > 1) {
                    rwkv5_matmul_ws(isa, 1, out2, x + (size_t)(M - 1) * n, &mat, 1, ws, wsn);
                    CHECK(!memcmp(out + (size_t)(M - 1) * d, out2, sizeof(float) * d),
                          "gemm last row alone isa=%d", isa);
                }
            }
            free(odd);
            free(blk);
            free(out2);
            rwkv5_matmul(out, x, &mat, M); /* threaded, current ISA */
            for (int i = 0; i < M * d; i++)
                CHECK(fabsf(out[i] - ref[i]) <= 1e-5f * n, "threaded matmul [%d]", i);
        }
        free(x), free(ref), free(out), free(w), free(scale), free(row), free(ws);
    }
}

/* Every fp16 and bf16 bit pattern (subnormals, inf, nan included) widens to its exact fp32 value in
 * every ISA's row kernel and GEMM packing, at every position of a 16-element vector: row o of W
 * holds pattern o at column o % 16 and zeros elsewhere, x is all ones, so out[o] is the value (+
 * zeros). */
static void test_every_half_bit_pattern_widens_exactly(void) {
    enum { D = 65536, NC = 16 };
    uint16_t *w = calloc((size_t)D * NC, sizeof *w);
    float x[NC], *out = malloc(sizeof(float) * D), *row = malloc(sizeof(float) * NC);
    size_t wsn = rwkv5_gemm_ws_floats(1, NC, D);
    float *ws = malloc(sizeof(float) * wsn);
    for (int i = 0; i < NC; i++) x[i] = 1.0f;
    for (int o = 0; o < D; o++) w[(size_t)o * NC + o % NC] = (uint16_t)o;
    int best = (int)rwkv5_cpu_isa_supported();
    for (int dt = RWKV5_F16; dt <= RWKV5_BF16; dt++) {
        rwkv5_mat mat = {w, NULL, dt, D, NC, 0};
        for (int isa = 0; isa <= best; isa++)
            for (int gemm = 0; gemm <= (isa > 0); gemm++) {
                memset(out, 0, sizeof(float) * D);
                if (gemm)
                    rwkv5_matmul_ws(isa, 1, out, x, &mat, 1, ws, wsn);
                else
                    rwkv5_matmul_rows_isa(isa, out, x, &mat, 1, 0, D);
                int bad = 0;
                for (int o = 0; o < D && bad < 3; o++) {
                    rwkv5_mat_row(row, &mat, (size_t)o);
                    float want = row[o % NC];
                    int ok = isnan(want) ? isnan(out[o]) : out[o] == want;
                    if (!ok) bad++;
                    CHECK(ok, "dtype=%d isa=%d gemm=%d pattern 0x%04x: %g, want %g", dt, isa, gemm,
                          o, out[o], want);
                }
            }
    }
    free(w), free(out), free(row), free(ws);
}

/* The chunk form equals T steps of the recurrence, for head sizes 12 (generic loops) and 64 (the
 * register-blocked AVX-512 chunk), every ISA, chunk lengths 1..64; rows `ld` apart as in the model.
 */
static void wkv_chunk_case(int N, int isa) {
    enum { T = 64, NMAX = 64, LD = 2 * NMAX + 3 }; /* rows wider than a head, odd stride */
    static float r[T * LD], k[T * LD], v[T * LD], y1[T * LD], y2[T * LD],
        P[(RWKV5_CHUNK + 1) * NMAX];
    float u[NMAX] = {0}, w[NMAX] = {0}, S1[NMAX * NMAX], S2[NMAX * NMAX];
    double logw[NMAX] = {0};
    for (int i = 0; i < N; i++) {
        double d = -6.0 + 10.6 * i / (N - 1); /* up to 4.6: w underflows fp32 */
        logw[i] = -exp(d);
        u[i] = frand();
    }
    rwkv5_power_table(P, logw, N, RWKV5_CHUNK);
    for (int i = 0; i < N; i++) w[i] = P[N + i];
    CHECK(P[0] == 1.0f && P[(RWKV5_CHUNK)*N + N - 1] == 0.0f, "power table ends");
    const int lens[] = {1, 2, 5, 33, 63, 64};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int n = lens[li];
        for (int i = 0; i < n * LD; i++) r[i] = frand(), k[i] = frand(), v[i] = frand();
        for (int i = 0; i < N * N; i++) S1[i] = S2[i] = frand();
        for (int t = 0; t < n; t++)
            rwkv5_wkv_step_isa(0, y1 + t * LD, S1, r + t * LD, k + t * LD, v + t * LD, w, u, N);
        rwkv5_wkv_chunk_isa(isa, y2, S2, r, k, v, LD, P, N, u, n, N);
        for (int t = 0; t < n; t++)
            for (int j = 0; j < N; j++) {
                float a = y1[t * LD + j], b = y2[t * LD + j];
                CHECK(fabsf(a - b) <= 2e-5f * (1 + fabsf(a)),
                      "wkv y N=%d isa=%d n=%d t=%d j=%d: %g vs %g", N, isa, n, t, j, a, b);
            }
        for (int i = 0; i < N * N; i++)
            CHECK(fabsf(S1[i] - S2[i]) <= 2e-5f * (1 + fabsf(S1[i])), "wkv S N=%d isa=%d n=%d [%d]",
                  N, isa, n, i);
        /* the recurrent step of this ISA against the scalar one */
        for (int i = 0; i < N * N; i++) S2[i] = S1[i];
        float ys[NMAX], yi[NMAX];
        rwkv5_wkv_step_isa(0, ys, S1, r, k, v, w, u, N);
        rwkv5_wkv_step_isa(isa, yi, S2, r, k, v, w, u, N);
        for (int j = 0; j < N; j++)
            CHECK(fabsf(ys[j] - yi[j]) <= 1e-5f * (1 + fabsf(ys[j])), "wkv step isa=%d", isa);
    }
}

static void test_wkv_chunk_equals_steps(void) {
    int best = (int)rwkv5_cpu_isa_supported();
    for (int isa = 0; isa <= best; isa++) {
        wkv_chunk_case(12, isa);
        wkv_chunk_case(18, isa); /* a block of 16 columns and 2 single ones (NEON) */
        wkv_chunk_case(64, isa);
    }
}

#if defined(__aarch64__)
/* The NEON sigmoid rows (vector exp) against expf on odd lengths, large |z| (0 and inf from exp),
 * inf and nan: within 1e-6 relative (exp is within 2 ulp, then a division and two products round),
 * the same inf/nan. */
static void test_neon_sigmoid_rows(void) {
    enum { C = 203 };
    static float g[C], y[C], a[C], b[C], x[C], ys[C], xs[C];
    for (int i = 0; i < C; i++) {
        g[i] = a[i] = 12.0f * frand();
        y[i] = x[i] = frand();
        b[i] = frand();
    }
    const float special[] = {0.0f,  -0.0f,  88.0f,    -88.0f,    104.0f, -104.0f,
                             1e30f, -1e30f, INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        g[10 + i] = a[40 + i] = special[i];
    for (int len = 1; len <= C; len += len < 9 ? 1 : 97) {
        for (int i = 0; i < C; i++) ys[i] = y[i], xs[i] = x[i];
        rwkv5_neon_silu_gate(ys, g, (size_t)len);
        rwkv5_neon_add_gated(xs, a, b, (size_t)len);
        for (int i = 0; i < C; i++) {
            double sg = 1.0 / (1.0 + exp(-(double)g[i])), sa = 1.0 / (1.0 + exp(-(double)a[i]));
            float wy = i < len ? (float)((double)y[i] * g[i] * sg) : y[i];
            float wx = i < len ? (float)((double)x[i] + sa * b[i]) : x[i];
            CHECK(isnan(wy) ? isnan(ys[i])
                            : ys[i] == wy || fabsf(ys[i] - wy) <= 1e-6f * fabsf(wy) + 1e-37f,
                  "silu_gate len=%d [%d] g=%g: %g vs %g", len, i, g[i], ys[i], wy);
            CHECK(isnan(wx)
                      ? isnan(xs[i])
                      : xs[i] == wx || fabsf(xs[i] - wx) <= 1e-6f * (fabsf(x[i]) + fabsf(b[i])),
                  "add_gated len=%d [%d] a=%g: %g vs %g", len, i, a[i], xs[i], wx);
        }
    }
}
#endif

/* The row operations of kernels.c at every ISA level this CPU has, against their formulas in double
 * on odd lengths: token shift, residual add and relu^2 exactly (one rounding of the float
 * expression), the sigmoids within 1e-6 relative (an exp within 2 ulp, then a division and products
 * round); large |z|, inf and nan as expf gives them. */
static void test_row_ops(void) {
    enum { C = 203 };
    static float cur[C], prev[C], mu[C], g[C], y[C], a[C], b[C], x[C], out[C], ys[C], xs[C], xa[C],
        xr[C];
    for (int i = 0; i < C; i++) {
        cur[i] = frand(), prev[i] = frand(), mu[i] = 0.5f + 0.5f * frand();
        g[i] = a[i] = 12.0f * frand();
        y[i] = x[i] = frand();
        b[i] = frand();
    }
    const float special[] = {0.0f,  -0.0f,  88.0f,    -88.0f,    104.0f, -104.0f,
                             1e30f, -1e30f, INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        g[10 + i] = a[40 + i] = special[i];
    rwkv5_isa keep = rwkv5_cpu_isa();
    for (int isa = 0; isa <= (int)rwkv5_cpu_isa_supported(); isa++) {
        rwkv5_set_isa((rwkv5_isa)isa);
        for (int len = 1; len <= C; len += len < 17 ? 1 : 93) {
            for (int i = 0; i < C; i++)
                out[i] = -7.0f, ys[i] = y[i], xs[i] = x[i], xa[i] = x[i], xr[i] = x[i];
            rwkv5_token_shift(out, cur, prev, mu, (size_t)len);
            rwkv5_add(xa, b, (size_t)len);
            rwkv5_relu_sq(xr, (size_t)len);
            rwkv5_silu_gate(ys, g, (size_t)len);
            rwkv5_add_gated(xs, a, b, (size_t)len);
            for (int i = 0; i < C; i++) {
                int in = i < len;
                float ws = in ? cur[i] * mu[i] + prev[i] * (1.0f - mu[i]) : -7.0f;
                float wa = in ? x[i] + b[i] : x[i],
                      wr = in ? (x[i] > 0 ? x[i] * x[i] : 0.0f) : x[i];
                CHECK(fabsf(out[i] - ws) <= 1e-6f, "isa %d token_shift len=%d [%d]: %g vs %g", isa,
                      len, i, out[i], ws);
                CHECK(xa[i] == wa && xr[i] == wr, "isa %d add / relu_sq len=%d [%d]", isa, len, i);
                double sg = 1.0 / (1.0 + exp(-(double)g[i])), sa = 1.0 / (1.0 + exp(-(double)a[i]));
                float wy = in ? (float)((double)y[i] * g[i] * sg) : y[i];
                float wx = in ? (float)((double)x[i] + sa * b[i]) : x[i];
                CHECK(isnan(wy) ? isnan(ys[i])
                                : ys[i] == wy || fabsf(ys[i] - wy) <= 1e-6f * fabsf(wy) + 1e-37f,
                      "isa %d silu_gate len=%d [%d] g=%g: %g vs %g", isa, len, i, g[i], ys[i], wy);
                CHECK(isnan(wx)
                          ? isnan(xs[i])
                          : xs[i] == wx || fabsf(xs[i] - wx) <= 1e-6f * (fabsf(x[i]) + fabsf(b[i])),
                      "isa %d add_gated len=%d [%d] a=%g: %g vs %g", isa, len, i, a[i], xs[i], wx);
            }
        }
    }
    rwkv5_set_isa(keep);
}

/* rwkv5_wkv (rwkv5.ops.wkv5) over T = 150 positions of 3 heads: parallel mode is per head the chunk
 * kernel on chunks of RWKV5_CHUNK in turn (to the bit), recurrent mode one step per position, and
 * the two agree to float32 rounding. */
static void test_wkv_sequence(void) {
    enum { T = 150, H = 3, N = 8, A = H * N };
    static float r[T * A], k[T * A], v[T * A], w[A], u[A], y[2][T * A], S[2][H * N * N], y1[T * A],
        S1[H * N * N];
    static float P[(RWKV5_CHUNK + 1) * A];
    static double logw[A];
    for (int i = 0; i < T * A; i++) r[i] = frand(), k[i] = frand(), v[i] = frand();
    for (int i = 0; i < A; i++) w[i] = i == 5 ? 0.0f : 0.5f + 0.49f * frand(), u[i] = frand();
    for (int i = 0; i < H * N * N; i++) S[0][i] = S[1][i] = S1[i] = 0.1f * frand();
    CHECK(rwkv5_wkv(y[0], S[0], r, k, v, w, u, T, H, N, RWKV5_RECURRENT) == RWKV5_OK,
          "wkv recurrent");
    CHECK(rwkv5_wkv(y[1], S[1], r, k, v, w, u, T, H, N, RWKV5_PARALLEL) == RWKV5_OK,
          "wkv parallel");
    for (int i = 0; i < A; i++) logw[i] = log((double)w[i]);
    rwkv5_power_table(P, logw, A, RWKV5_CHUNK);
    for (int t0 = 0; t0 < T; t0 += RWKV5_CHUNK)
        for (int h = 0; h < H; h++) {
            int n = T - t0 < RWKV5_CHUNK ? T - t0 : RWKV5_CHUNK;
            size_t o = (size_t)t0 * A + (size_t)h * N;
            rwkv5_wkv_chunk(y1 + o, S1 + h * N * N, r + o, k + o, v + o, A, P + h * N, A, u + h * N,
                            n, N);
        }
    CHECK(!memcmp(y1, y[1], sizeof y1) && !memcmp(S1, S[1], sizeof S1),
          "parallel = the chunk kernel chunk by chunk");
    float dy = 0, ds = 0;
    for (int i = 0; i < T * A; i++) dy = fmaxf(dy, fabsf(y[0][i] - y[1][i]));
    for (int i = 0; i < H * N * N; i++) ds = fmaxf(ds, fabsf(S[0][i] - S[1][i]));
    CHECK(dy < 1e-4f && ds < 1e-4f, "recurrent vs parallel: |dy| %g, |dS| %g", dy, ds);
}

static atomic_int hits[1000];
static void count_range(void *ctx, int64_t b, int64_t e) {
    (void)ctx;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&hits[i], 1);
}

static void test_threadpool(void) {
    const int threads[] = {1, 3, 2};
    const int64_t ns[] = {1, 7, 999, 1000};
    for (int ti = 0; ti < 3; ti++) {
        CHECK(rwkv5_set_num_threads(threads[ti]) == 0, "set_num_threads");
        CHECK(rwkv5_get_num_threads() == threads[ti], "get_num_threads");
        for (int ni = 0; ni < 4; ni++)
            for (int64_t grain = 1; grain <= 64; grain *= 8) {
                for (int i = 0; i < 1000; i++) atomic_store(&hits[i], 0);
                rwkv5_parallel_for(ns[ni], grain, count_range, NULL);
                for (int64_t i = 0; i < 1000; i++)
                    CHECK(atomic_load(&hits[i]) == (i < ns[ni]),
                          "coverage n=%lld grain=%lld i=%lld", (long long)ns[ni], (long long)grain,
                          (long long)i);
            }
    }
    CHECK(rwkv5_available_cpus() >= 1, "cpus");
}

/* a small random 5.2 model: C = 24, H = 3, N = 8, F = 40, V = 50, L = 2 */
static void test_forward_modes(void) {
    enum { L = 2, C = 24, H = 3, N = 8, A = H * N, F = 40, V = 50, B = 2, T = 70 };
    static float big[100000];
    static double logw[L][A];
    size_t used = 0;
#define TAKE(cnt) (used += (cnt), big + used - (cnt))
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) big[i] = frand() * 0.5f;
    rwkv5_model m = {0};
    m.cfg = (rwkv5_config){L, C, H, N, F, V, 1, 64e-5f};
    CHECK(rwkv5_model_alloc_layers(&m, L) == RWKV5_OK, "alloc");
    m.g.emb = (rwkv5_mat){TAKE(V * C), NULL, RWKV5_F32, V, C, 0};
    m.g.head = (rwkv5_mat){TAKE(V * C), NULL, RWKV5_F32, V, C, 0};
    m.g.ln0_w = m.g.ln0_b = m.g.ln_out_w = m.g.ln_out_b = TAKE(C);
    for (int l = 0; l < L; l++) {
        rwkv5_layer *Lw = &m.layers[l];
        Lw->ln1_w = Lw->ln1_b = Lw->ln2_w = Lw->ln2_b = TAKE(C);
        Lw->att_mix_k = Lw->att_mix_v = Lw->att_mix_r = Lw->att_mix_g = Lw->ffn_mix_k =
            Lw->ffn_mix_r = TAKE(C);
        for (int i = 0; i < A; i++) logw[l][i] = -exp(-6.0 + 8.5 * (i % 7) / 6.0);
        Lw->decay_logw = logw[l];
        Lw->bonus_u = TAKE(A);
        Lw->att_r = (rwkv5_mat){TAKE(A * C), NULL, RWKV5_F32, A, C, 0};
        Lw->att_k = (rwkv5_mat){TAKE(A * C), NULL, RWKV5_F32, A, C, 0};
        Lw->att_v = (rwkv5_mat){TAKE(A * C), NULL, RWKV5_F32, A, C, 0};
        Lw->att_g = (rwkv5_mat){TAKE(A * C), NULL, RWKV5_F32, A, C, 0};
        Lw->att_o = (rwkv5_mat){TAKE(C * A), NULL, RWKV5_F32, C, A, 0};
        Lw->lnx_w = Lw->lnx_b = TAKE(A);
        Lw->ffn_k = (rwkv5_mat){TAKE(F * C), NULL, RWKV5_F32, F, C, 0};
        Lw->ffn_r = (rwkv5_mat){TAKE(C * C), NULL, RWKV5_F32, C, C, 0};
        Lw->ffn_v = (rwkv5_mat){TAKE(C * F), NULL, RWKV5_F32, C, F, 0};
    }
    CHECK(used <= sizeof big / sizeof big[0], "test buffer too small");
    char err[256];
    CHECK(rwkv5_model_init(&m, err, sizeof err) == RWKV5_OK, "init: %s", err);

    static int32_t tok[B * T];
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)(rnd() % V);
    static float st[2][B * L * C * 2 + B * L * H * N * N];
    static float logits[2][B * T * V];
    for (int mode = 0; mode < 2; mode++) {
        memset(st[mode], 0, sizeof st[mode]);
        rwkv5_state s = {.att_x = st[mode],
                         .att_kv = st[mode] + B * L * C,
                         .ffn_x = st[mode] + B * L * C + B * L * H * N * N};
        CHECK(rwkv5_forward(&m, tok, B, T, &s, mode, 1, logits[mode], NULL, err, sizeof err) ==
                  RWKV5_OK,
              "forward: %s", err);
    }
    float maxabs = 0, maxdiff = 0;
    for (int i = 0; i < B * T * V; i++) {
        maxabs = fmaxf(maxabs, fabsf(logits[0][i]));
        maxdiff = fmaxf(maxdiff, fabsf(logits[0][i] - logits[1][i]));
    }
    CHECK(maxabs > 0 && isfinite(maxabs) && maxdiff <= 1e-5f * maxabs,
          "recurrent vs parallel: %g of %g", maxdiff, maxabs);
    for (size_t i = 0; i < sizeof st[0] / sizeof(float); i++)
        CHECK(fabsf(st[0][i] - st[1][i]) <= 1e-4f * (1 + fabsf(st[0][i])), "state [%zu]", i);
    /* the ISA in use (RWKV5_ISA) against the portable kernels, both modes */
    rwkv5_isa in_use = rwkv5_cpu_isa();
    rwkv5_set_isa(RWKV5_ISA_SCALAR);
    for (int mode = 0; mode < 2; mode++) {
        static float st_s[sizeof st[0] / sizeof(float)], lg_s[B * T * V];
        memset(st_s, 0, sizeof st_s);
        rwkv5_state s = {.att_x = st_s,
                         .att_kv = st_s + B * L * C,
                         .ffn_x = st_s + B * L * C + B * L * H * N * N};
        CHECK(rwkv5_forward(&m, tok, B, T, &s, mode, 1, lg_s, NULL, err, sizeof err) == RWKV5_OK,
              "forward: %s", err);
        float dmax = 0;
        for (int i = 0; i < B * T * V; i++) dmax = fmaxf(dmax, fabsf(lg_s[i] - logits[mode][i]));
        CHECK(dmax <= 1e-5f * maxabs, "%s vs scalar, mode %d: %g of %g", rwkv5_isa_name(in_use),
              mode, dmax, maxabs);
    }
    rwkv5_set_isa(in_use);

    /* A source state (the final state above, nonzero) read while a garbage-filled destination is
     * written: the same logits and state as running in place on a copy; the source is unchanged;
     * a single-sequence source (src_batched = 0) serves every sequence */
    enum { NS = B * L * C * 2 + B * L * H * N * N };
    static float src[NS], orig[NS], dst[NS], inplace[NS], lg_src[B * T * V], lg_in[B * T * V];
    for (int shared = 0; shared < 2; shared++)
        for (int mode = 0; mode < 2; mode++) {
            memcpy(src, st[0], sizeof src);
            if (shared) { /* sequence 0's state in (L, ...) form, and in place: both sequences start
                             from it */
                for (int part = 0; part < 3; part++) {
                    size_t off = part == 0   ? 0
                                 : part == 1 ? (size_t)B * L * C
                                             : (size_t)B * L * C + (size_t)B * L * H * N * N;
                    size_t per = part == 1 ? (size_t)L * H * N * N : (size_t)L * C;
                    for (int b = 1; b < B; b++)
                        memcpy(src + off + b * per, src + off, sizeof(float) * per);
                }
            }
            memcpy(inplace, src, sizeof src);
            memcpy(orig, src, sizeof src);
            memset(dst, 0xff, sizeof dst); /* NaN: everything must be copied or written */
            rwkv5_state si = {.att_x = inplace,
                              .att_kv = inplace + B * L * C,
                              .ffn_x = inplace + B * L * C + B * L * H * N * N};
            rwkv5_state sd = {.att_x = dst,
                              .att_kv = dst + B * L * C,
                              .ffn_x = dst + B * L * C + B * L * H * N * N,
                              .src_att_x = src,
                              .src_att_kv = src + B * L * C,
                              .src_ffn_x = src + B * L * C + B * L * H * N * N,
                              .src_batched = !shared};
            CHECK(rwkv5_forward(&m, tok, B, T, &si, mode, 1, lg_in, NULL, err, sizeof err) ==
                      RWKV5_OK,
                  "%s", err);
            CHECK(rwkv5_forward(&m, tok, B, T, &sd, mode, 1, lg_src, NULL, err, sizeof err) ==
                      RWKV5_OK,
                  "%s", err);
            CHECK(!memcmp(lg_in, lg_src, sizeof lg_in), "source state: logits mode=%d shared=%d",
                  mode, shared);
            CHECK(!memcmp(inplace, dst, sizeof dst), "source state: new state mode=%d shared=%d",
                  mode, shared);
            CHECK(!memcmp(src, orig, sizeof src), "source state modified (mode=%d shared=%d)", mode,
                  shared);
            CHECK(memcmp(src, inplace, sizeof src) != 0,
                  "the in-place call left the state as it was (mode=%d)", mode);
        }
    memcpy(src, st[0], sizeof src);
    rwkv5_state half = {.att_x = dst,
                        .att_kv = dst + B * L * C,
                        .ffn_x = dst + B * L * C + B * L * H * N * N,
                        .src_att_x = src,
                        .src_ffn_x = src};
    CHECK(rwkv5_forward(&m, tok, B, T, &half, 0, 0, logits[0], NULL, err, sizeof err) ==
                  RWKV5_EINVAL &&
              strstr(err, "source state"),
          "a partial source state is refused: %s", err);

    /* errors: a bad token, a bad mode, an empty batch */
    rwkv5_state s = {.att_x = st[0],
                     .att_kv = st[0] + B * L * C,
                     .ffn_x = st[0] + B * L * C + B * L * H * N * N};
    tok[5] = V;
    CHECK(rwkv5_forward(&m, tok, B, T, &s, 0, 0, logits[0], NULL, err, sizeof err) ==
                  RWKV5_EINVAL &&
              strstr(err, "tokens[5]"),
          "bad token: %s", err);
    CHECK(rwkv5_forward(&m, tok, B, T, &s, 9, 0, logits[0], NULL, err, sizeof err) == RWKV5_EINVAL,
          "bad mode");
    CHECK(rwkv5_forward(&m, tok, 0, T, &s, 0, 0, logits[0], NULL, err, sizeof err) == RWKV5_EINVAL,
          "B = 0");
    /* a raised cancel flag stops the call before its first layer */
    tok[5] = 0;
    volatile int cancel = 1;
    s.cancel = &cancel;
    CHECK(rwkv5_forward(&m, tok, B, T, &s, 1, 0, logits[0], NULL, err, sizeof err) ==
              RWKV5_ECANCELLED,
          "cancelled forward: %s", err);
    s.cancel = NULL;
    /* rwkv5_run_polled: the poll is called while work runs, and its answer comes back */
    polled_count = 0;
    CHECK(rwkv5_run_polled(slow_work, NULL, count_polls, NULL, 1) == 7 && polled_count == 1,
          "run_polled returned the poll's answer after one poll (%d polls)", polled_count);
    m.layers[1].ffn_v.rows = 3;
    CHECK(rwkv5_model_init(&m, err, sizeof err) == RWKV5_EINVAL &&
              strstr(err, "blocks.1.ffn.value.weight: expected shape (24, 40), got (3, 40)"),
          "shape check: %s", err);
    m.layers[1].ffn_v.rows = C;
    m.layers[0].lnx_b = NULL;
    CHECK(rwkv5_model_init(&m, err, sizeof err) == RWKV5_EINVAL &&
              strstr(err, "blocks.0.att.ln_x.bias: missing"),
          "missing vector: %s", err);
    m.layers[0].lnx_b = m.layers[0].lnx_w;
    m.g.head.dtype = 7;
    CHECK(rwkv5_model_init(&m, err, sizeof err) == RWKV5_EINVAL && strstr(err, "head.weight"),
          "storage type check: %s", err);
    rwkv5_model_free(&m);
#undef TAKE
}

/* The parameter table fills every field of rwkv5_layer and rwkv5_globals, each exactly once. */
static void test_param_table(void) {
    unsigned char seen_l[sizeof(rwkv5_layer)] = {0}, seen_g[sizeof(rwkv5_globals)] = {0};
    for (int i = 0; i < rwkv5_n_params; i++) {
        const rwkv5_param *p = &rwkv5_params[i];
        size_t size = p->kind == RWKV5_PARAM_MATRIX ? sizeof(rwkv5_mat) : sizeof(void *);
        unsigned char *seen = p->per_layer ? seen_l : seen_g;
        size_t total = p->per_layer ? sizeof seen_l : sizeof seen_g;
        CHECK(p->offset + size <= total, "%s: field outside its struct", p->name);
        if (p->offset + size > total) continue;
        for (size_t b = 0; b < size; b++) {
            CHECK(!seen[p->offset + b], "%s overlaps another parameter's field", p->name);
            seen[p->offset + b] = 1;
        }
        CHECK((p->kind == RWKV5_PARAM_MATRIX) == (p->dims[1] != RWKV5_DIM_NONE) &&
                  p->dims[0] != RWKV5_DIM_NONE,
              "%s: a matrix has two dims, a vector one", p->name);
    }
    size_t gap_l = 0, gap_g = 0;
    while (gap_l < sizeof seen_l && seen_l[gap_l]) gap_l++;
    while (gap_g < sizeof seen_g && seen_g[gap_g]) gap_g++;
    CHECK(gap_l == sizeof seen_l, "byte %zu of rwkv5_layer is no parameter's", gap_l);
    CHECK(gap_g == sizeof seen_g, "byte %zu of rwkv5_globals is no parameter's", gap_g);
    char name[64];
    CHECK(rwkv5_param_name(name, sizeof name, &rwkv5_params[rwkv5_n_params - 1], 12) == 0 &&
              !strcmp(name, "blocks.12.ffn.value.weight"),
          "full name: %s", name);
    CHECK(rwkv5_param_name(name, 8, &rwkv5_params[rwkv5_n_params - 1], 12) == -1,
          "a name that does not fit");
}

int main(void) {
    printf("test_kernels: ISA %s (env may lower it)\n", rwkv5_isa_name(rwkv5_cpu_isa()));
    test_matmul();
    test_every_half_bit_pattern_widens_exactly();
#if defined(__aarch64__)
    test_neon_sigmoid_rows();
#endif
    test_wkv_chunk_equals_steps();
    test_row_ops();
    test_wkv_sequence();
    test_threadpool();
    test_param_table();
    test_forward_modes();
    rwkv5_set_num_threads(1); /* join the workers so LeakSanitizer sees a clean exit */
    if (failures) {
        fprintf(stderr, "test_kernels: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_kernels: all passed\n");
    return 0;
}
