/* The RWKV-5 forward pass over B sequences, in recurrent (one position per step) or parallel
 * (chunks of RWKV5_CHUNK positions) mode. Both modes run the same per-layer code on a block of
 * rows (row = b * n + t for sequence b, position t of the block); they differ only in the WKV. */
#include <string.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/cpu.h"
#include "common/threadpool.h"
#include "kernels.h"
#include "neon.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define LN_EPS 1e-5f   /* every LayerNorm (ln0, ln1, ln2, ln_out) */

static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* One scratch buffer per model, reused by successive forward calls so that generating token by
 * token allocates nothing. A call that finds it in use (another thread) allocates its own. */
struct rwkv5_scratch_cache {
    pthread_mutex_t lock;
    float *mem;
    size_t cap;   /* floats */
};

int rwkv5_model_alloc_layers(rwkv5_model *m, int n_layer) {
    m->layers = n_layer > 0 ? (rwkv5_layer *)calloc((size_t)n_layer, sizeof(rwkv5_layer)) : NULL;
    m->pow_table = NULL;
    m->scratch = NULL;
    return m->layers ? RWKV5_OK : RWKV5_ENOMEM;
}

void rwkv5_model_free(rwkv5_model *m) {
    free(m->layers);
    free(m->pow_table);
    if (m->scratch) {
        pthread_mutex_destroy(&m->scratch->lock);
        free(m->scratch->mem);
        free(m->scratch);
    }
    m->layers = NULL;
    m->pow_table = NULL;
    m->scratch = NULL;
}

int rwkv5_model_init(rwkv5_model *m, char *err, size_t errlen) {
    const rwkv5_config *c = &m->cfg;
    int C = c->n_embd, A = c->n_head * c->head_size, F = c->n_ffn, V = c->n_vocab, rc;
    if (c->n_layer <= 0 || C <= 0 || c->n_head <= 0 || c->head_size <= 0 || F <= 0 || V <= 0 || !m->layers)
        return fail(err, errlen, RWKV5_EINVAL, "bad config: n_layer=%d n_embd=%d n_head=%d head_size=%d n_ffn=%d vocab=%d",
                    c->n_layer, C, c->n_head, c->head_size, F, V);
    if (!(c->gn_eps > 0.0f) || !isfinite(c->gn_eps))
        return fail(err, errlen, RWKV5_EINVAL, "gn_eps must be a positive finite number, got %g", (double)c->gn_eps);
    if ((rc = rwkv5_check_params(m, err, errlen)) != RWKV5_OK) return rc;
    size_t per_layer = (size_t)(RWKV5_CHUNK + 1) * A;
    free(m->pow_table);
    m->pow_table = (float *)malloc((size_t)c->n_layer * per_layer * sizeof(float));
    if (!m->pow_table) return fail(err, errlen, RWKV5_ENOMEM, "out of memory for the decay power table");
    for (int l = 0; l < c->n_layer; l++)
        rwkv5_power_table(m->pow_table + l * per_layer, m->layers[l].decay_logw, A, RWKV5_CHUNK);
    if (!m->scratch) {
        m->scratch = (struct rwkv5_scratch_cache *)calloc(1, sizeof *m->scratch);
        if (!m->scratch) return fail(err, errlen, RWKV5_ENOMEM, "out of memory");
        pthread_mutex_init(&m->scratch->lock, NULL);
    }
    return RWKV5_OK;
}

/* ------------------------------------------------------------------------------------------ */

typedef struct {
    float *x;            /* (R, C) residual stream */
    float *xn;           /* (R, C) LayerNorm output of the current sub-block */
    float *xk, *xv, *xr, *xg;  /* (R, C) token-shift mixes */
    float *r, *k, *v, *g, *y;  /* (R, A) */
    float *fk;           /* (R, F) */
    float *fr, *fv;      /* (R, C) */
    float *last;         /* (B, C) final-LN rows of the last positions */
    float *ws;           /* GEMM workspace (parallel mode), ws_floats long, or NULL */
    size_t ws_floats;
    float *mem;          /* the one allocation all of the above are carved from */
} scratch_t;

/* Carve the buffers for R rows out of the model's cached buffer (taking its lock) or, when another
 * call holds it, out of a private allocation; the end of rwkv5_forward undoes either. */
static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static int scratch_acquire(scratch_t *s, const rwkv5_model *m, int R, int B, int gemm, int *cached) {
    const rwkv5_config *c = &m->cfg;
    size_t C = c->n_embd, A = (size_t)c->n_head * c->head_size, F = c->n_ffn;
    size_t ws = 0;
    if (gemm) {   /* the largest GEMM of a layer or the head, at R rows */
        int iC = (int)C, iA = (int)A, iF = (int)F;
        ws = max_sz(rwkv5_gemm_ws_floats(R, iC, iA), rwkv5_gemm_ws_floats(R, iA, iC));
        ws = max_sz(ws, max_sz(rwkv5_gemm_ws_floats(R, iC, iF), rwkv5_gemm_ws_floats(R, iF, iC)));
        ws = max_sz(ws, rwkv5_gemm_ws_floats(R, iC, c->n_vocab));
    }
    size_t total = R * (C * 8 + A * 5 + F) + (size_t)B * C + ws;
    struct rwkv5_scratch_cache *cache = m->scratch;
    float *p = NULL;
    *cached = 0;
    if (cache && pthread_mutex_trylock(&cache->lock) == 0) {
        if (cache->cap < total) {
            free(cache->mem);
            cache->mem = (float *)malloc(total * sizeof(float));
            cache->cap = cache->mem ? total : 0;
        }
        if (cache->mem) {
            p = cache->mem;
            *cached = 1;
        } else {
            pthread_mutex_unlock(&cache->lock);
        }
    }
    if (!p) p = (float *)malloc(total * sizeof(float));
    if (!p) return RWKV5_ENOMEM;
    s->mem = p;
    s->x = p; p += R * C;
    s->xn = p; p += R * C;
    s->xk = p; p += R * C;
    s->xv = p; p += R * C;
    s->xr = p; p += R * C;
    s->xg = p; p += R * C;
    s->fr = p; p += R * C;
    s->fv = p; p += R * C;
    s->last = p; p += (size_t)B * C;
    s->r = p; p += R * A;
    s->k = p; p += R * A;
    s->v = p; p += R * A;
    s->g = p; p += R * A;
    s->y = p; p += R * A;
    s->fk = p; p += R * F;
    s->ws = ws ? p : NULL;
    s->ws_floats = ws;
    return RWKV5_OK;
}

/* Position-wise work over the R rows of a block, split between the pool's threads by rows. */
enum { ROW_LN, ROW_MIX, ROW_GN_GATE, ROW_ADD, ROW_RELU2, ROW_ADD_GATED };

typedef struct {
    int op, C, n, l, L, nmix, H, has_gate;
    float eps;
    float *out, *x;                /* ROW_LN: out = LN(x); ROW_ADD*: x += ... */
    const float *a, *b;            /* operands of ROW_ADD (a) / ROW_ADD_GATED (sigmoid(a) * b) / gate */
    const float *w, *bias;         /* affine of LN / GN */
    float *const *outs;            /* ROW_MIX */
    const float *const *mus;
    const float *carried;          /* (B, L, C) rows for t = 0 */
} rows_job;

static inline float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

/* The element-wise row operations, written once (always inline) and compiled for the baseline ISA
 * and for AVX-512; the AVX-512 copy also has a vector sigmoid. rows_range picks by rwkv5_cpu_isa(). */
/* token shift: out = cur * mu + prev * (1 - mu), prev = the row before (or the carried row at t = 0) */
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
static void silu_gate(float *y, const float *g, size_t C) {   /* y *= g * sigmoid(g) */
    for (size_t i = 0; i < C; i++) y[i] *= g[i] * sigmoidf_(g[i]);
}
static void add_gated(float *x, const float *a, const float *b, size_t C) {   /* x += sigmoid(a) * b */
    for (size_t i = 0; i < C; i++) x[i] += sigmoidf_(a[i]) * b[i];
}
static void mix_generic(float *out, const float *cur, const float *prev, const float *mu, size_t C) {
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
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), _mm512_mul_ps(gv, sigmoid512(gv))));
    }
    if (i < C) {
        __mmask16 k = (__mmask16)((1u << (C - i)) - 1u);
        __m512 gv = _mm512_maskz_loadu_ps(k, g + i);
        _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + i), _mm512_mul_ps(gv, sigmoid512(gv))));
    }
}
T512F static void add_gated_512(float *x, const float *a, const float *b, size_t C) {
    size_t i = 0;
    for (; i + 16 <= C; i += 16)
        _mm512_storeu_ps(x + i, _mm512_fmadd_ps(sigmoid512(_mm512_loadu_ps(a + i)), _mm512_loadu_ps(b + i),
                                                _mm512_loadu_ps(x + i)));
    if (i < C) {
        __mmask16 k = (__mmask16)((1u << (C - i)) - 1u);
        _mm512_mask_storeu_ps(x + i, k, _mm512_fmadd_ps(sigmoid512(_mm512_maskz_loadu_ps(k, a + i)),
                                                        _mm512_maskz_loadu_ps(k, b + i), _mm512_maskz_loadu_ps(k, x + i)));
    }
}
T512F static void mix_512(float *out, const float *cur, const float *prev, const float *mu, size_t C) {
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

static void rows_range(void *ctx, int64_t r0, int64_t r1) {
    const rows_job *j = (const rows_job *)ctx;
    const row_ops *f = pick_row_ops();
    size_t C = (size_t)j->C;
    for (int64_t row = r0; row < r1; row++) {
        size_t o = (size_t)row * C;
        switch (j->op) {
        case ROW_LN:
            rwkv5_layer_norm(j->out + o, j->x + o, j->w, j->bias, j->C, j->eps);
            break;
        case ROW_MIX: {   /* token shift: outs[m] = xn * mu + prev * (1 - mu) */
            int b = (int)(row / j->n), t = (int)(row % j->n);
            const float *carried = j->carried + ((size_t)b * j->L + j->l) * C;
            const float *cur = j->x + o, *prev = t == 0 ? carried : cur - C;
            for (int m = 0; m < j->nmix; m++) f->mix(j->outs[m] + o, cur, prev, j->mus[m], C);
            break;
        }
        case ROW_GN_GATE: {   /* y = GN(y), then o = GN(y) * SiLU(g) */
            float *y = j->x + o;
            rwkv5_group_norm(y, y, j->w, j->bias, j->C, j->H, j->eps);
            if (j->has_gate) f->silu_gate(y, j->a + o, C);
            break;
        }
        case ROW_ADD:
            f->add(j->x + o, j->a + o, C);
            break;
        case ROW_RELU2:   /* relu(k)^2 */
            f->relu2(j->x + o, C);
            break;
        case ROW_ADD_GATED:   /* x += sigmoid(r) * v */
            f->add_gated(j->x + o, j->a + o, j->b + o, C);
            break;
        }
    }
}

/* Run rows_range over R rows of width j->C: pieces of at least ~16K elements, so a single row
 * (recurrent mode) stays on the calling thread. */
static void rows_parallel(rows_job *j, int R) {
    int64_t grain = 16384 / (j->C > 0 ? j->C : 1);
    rwkv5_parallel_for(R, grain < 1 ? 1 : grain, rows_range, j);
}

/* xn = LN(x) for each row; then for each mix j: outs[j] = xn * mus[j] + prev * (1 - mus[j]) with
 * prev the row before in the same sequence, or for t = 0 the carried row of `carried` (B, L, C) at
 * layer l; finally the carried row <- the sequence's last LN row. */
static void norm_shift_mix(scratch_t *s, const rwkv5_config *c, int l, float *carried, const float *ln_w,
                           const float *ln_b, float *const *outs, const float *const *mus, int nmix, int B, int n) {
    int C = c->n_embd;
    rows_job ln = {.op = ROW_LN, .C = C, .eps = LN_EPS, .out = s->xn, .x = s->x, .w = ln_w, .bias = ln_b};
    rows_parallel(&ln, B * n);
    rows_job mix = {.op = ROW_MIX, .C = C, .n = n, .l = l, .L = c->n_layer, .nmix = nmix, .x = s->xn,
                    .outs = outs, .mus = mus, .carried = carried};
    rows_parallel(&mix, B * n);
    for (int b = 0; b < B; b++) {
        float *prev0 = carried + ((size_t)b * c->n_layer + l) * C;
        memcpy(prev0, s->xn + ((size_t)b * n + n - 1) * C, C * sizeof(float));
    }
}

typedef struct {
    const rwkv5_model *m;
    const rwkv5_state *st;
    scratch_t *s;
    int l, n, mode;
    int from_src;   /* copy each head's state from st->src_att_kv first (the call's first slice) */
} wkv_job;

/* one task per (sequence b, head h) */
static void wkv_range(void *ctx, int64_t b0, int64_t e0) {
    wkv_job *j = (wkv_job *)ctx;
    const rwkv5_config *c = &j->m->cfg;
    int H = c->n_head, N = c->head_size, A = H * N, L = c->n_layer;
    const rwkv5_layer *Lw = &j->m->layers[j->l];
    const float *P = j->m->pow_table + (size_t)j->l * (RWKV5_CHUNK + 1) * A;
    for (int64_t task = b0; task < e0; task++) {
        int b = (int)(task / H), h = (int)(task % H);
        size_t row0 = (size_t)b * j->n, off = row0 * A + (size_t)h * N;
        size_t per_seq = (size_t)L * H * N * N, head = ((size_t)j->l * H + h) * N * N;
        float *S = j->st->att_kv + b * per_seq + head;
        if (j->from_src)
            memcpy(S, j->st->src_att_kv + (j->st->src_batched ? b : 0) * per_seq + head, sizeof(float) * N * N);
        if (j->mode == RWKV5_RECURRENT)  /* n == 1; w = P[1] */
            rwkv5_wkv_step(j->s->y + off, S, j->s->r + off, j->s->k + off, j->s->v + off, P + A + (size_t)h * N,
                           Lw->bonus_u + (size_t)h * N, N);
        else   /* the slice of n positions in chunks of RWKV5_CHUNK */
            for (int t0 = 0; t0 < j->n; t0 += RWKV5_CHUNK) {
                size_t o2 = off + (size_t)t0 * A;
                int nc = j->n - t0 < RWKV5_CHUNK ? j->n - t0 : RWKV5_CHUNK;
                rwkv5_wkv_chunk(j->s->y + o2, S, j->s->r + o2, j->s->k + o2, j->s->v + o2, (size_t)A,
                                P + (size_t)h * N, (size_t)A, Lw->bonus_u + (size_t)h * N, nc, N);
            }
    }
}

/* out = x @ W^T over R rows: the GEMM when the call has a workspace, else the row kernels.
 * Either way each output's sum runs in an order that does not depend on R or on where the row
 * sits in the block, so a sequence gives the same bits alone or in a batch. */
static void mm(scratch_t *s, float *out, const float *x, const rwkv5_mat *w, int R) {
    rwkv5_matmul_ws(-1, s->ws != NULL, out, x, w, R, s->ws, s->ws_floats);
}

/* dst[b][l] = src[b or 0][l] for the B sequences, `per` floats each (layer l of a (B, L, per) state) */
static void copy_layer_state(float *dst, const float *src, int batched, int B, int L, int l, size_t per) {
    for (int b = 0; b < B; b++)
        memcpy(dst + ((size_t)b * L + l) * per, src + ((size_t)(batched ? b : 0) * L + l) * per, sizeof(float) * per);
}

/* One layer over the block of R = B*n rows in s->x. first: the call's first slice, where a source
 * state (st->src_*) is copied in. */
static void layer_forward(const rwkv5_model *m, int l, const rwkv5_state *st, scratch_t *s, int B, int n, int mode,
                          int first) {
    const rwkv5_config *c = &m->cfg;
    const rwkv5_layer *L = &m->layers[l];
    int C = c->n_embd, H = c->n_head, A = H * c->head_size, F = c->n_ffn, R = B * n;
    int from_src = first && st->src_att_kv;
    if (from_src) {
        copy_layer_state(st->att_x, st->src_att_x, st->src_batched, B, c->n_layer, l, (size_t)C);
        copy_layer_state(st->ffn_x, st->src_ffn_x, st->src_batched, B, c->n_layer, l, (size_t)C);
    }

    /* ---- time mix: token shift over LN1 outputs ---- */
    {
        float *outs[4] = {s->xk, s->xv, s->xr, s->xg};
        const float *mus[4] = {L->att_mix_k, L->att_mix_v, L->att_mix_r, L->att_mix_g};
        norm_shift_mix(s, c, l, st->att_x, L->ln1_w, L->ln1_b, outs, mus, c->has_gate ? 4 : 3, B, n);
    }
    mm(s, s->r, s->xr, &L->att_r, R);   /* r = x_r @ W_r^T (no sigmoid in v5) */
    mm(s, s->k, s->xk, &L->att_k, R);
    mm(s, s->v, s->xv, &L->att_v, R);
    if (c->has_gate) mm(s, s->g, s->xg, &L->att_g, R);
    wkv_job wj = {m, st, s, l, n, mode, from_src};
    rwkv5_parallel_for((int64_t)B * H, 1, wkv_range, &wj);
    rows_job gn = {.op = ROW_GN_GATE, .C = A, .H = H, .has_gate = c->has_gate, .eps = c->gn_eps, .x = s->y,
                   .a = s->g, .w = L->lnx_w, .bias = L->lnx_b};
    rows_parallel(&gn, R);   /* o = GN(y) * SiLU(g) */
    mm(s, s->fv, s->y, &L->att_o, R);
    rows_job add = {.op = ROW_ADD, .C = C, .x = s->x, .a = s->fv};
    rows_parallel(&add, R);

    /* ---- channel mix: token shift over LN2 outputs ---- */
    {
        float *outs[2] = {s->xk, s->xr};
        const float *mus[2] = {L->ffn_mix_k, L->ffn_mix_r};
        norm_shift_mix(s, c, l, st->ffn_x, L->ln2_w, L->ln2_b, outs, mus, 2, B, n);
    }
    mm(s, s->fk, s->xk, &L->ffn_k, R);
    rows_job relu = {.op = ROW_RELU2, .C = F, .x = s->fk};
    rows_parallel(&relu, R);   /* relu(k)^2 */
    mm(s, s->fv, s->fk, &L->ffn_v, R);
    mm(s, s->fr, s->xr, &L->ffn_r, R);
    /* x += sigmoid(x_r @ W_rf^T) * (relu(x_k @ W_kf^T)^2 @ W_vf^T) */
    rows_job gated = {.op = ROW_ADD_GATED, .C = C, .x = s->x, .a = s->fr, .b = s->fv};
    rows_parallel(&gated, R);
}

int rwkv5_forward(const rwkv5_model *m, const int32_t *tokens, int B, int T, const rwkv5_state *st, int mode,
                  int full_output, float *logits, float *hidden, char *err, size_t errlen) {
    const rwkv5_config *c = &m->cfg;
    int C = c->n_embd, V = c->n_vocab;
    scratch_t s = {0};
    int cached = 0, rc;
    if (B <= 0 || T <= 0) return fail(err, errlen, RWKV5_EINVAL, "need B >= 1 and T >= 1, got B=%d T=%d", B, T);
    if (mode != RWKV5_RECURRENT && mode != RWKV5_PARALLEL)
        return fail(err, errlen, RWKV5_EINVAL, "mode must be 0 (recurrent) or 1 (parallel), got %d", mode);
    if (!st || !st->att_x || !st->att_kv || !st->ffn_x) return fail(err, errlen, RWKV5_EINVAL, "state is missing");
    if (!st->src_att_x != !st->src_att_kv || !st->src_att_x != !st->src_ffn_x)
        return fail(err, errlen, RWKV5_EINVAL, "source state: give all of att_x, att_kv, ffn_x or none");
    for (size_t i = 0; i < (size_t)B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return fail(err, errlen, RWKV5_EINVAL, "tokens[%zu] = %d is outside [0, %d)", i, (int)tokens[i], V);
    /* parallel mode: slices of whole WKV chunks, up to RWKV5_SLICE_ROWS rows over the batch, so the
     * position-wise GEMMs have a tall M while the scratch stays bounded whatever T is */
    int per_seq = RWKV5_SLICE_ROWS / (B * RWKV5_CHUNK) * RWKV5_CHUNK;
    if (per_seq < RWKV5_CHUNK) per_seq = RWKV5_CHUNK;
    int nmax = mode == RWKV5_PARALLEL ? (T < per_seq ? T : per_seq) : 1;
    /* the GEMM for every slice of a parallel call of T >= RWKV5_GEMM_MIN_M (decided by T, not by
     * the slice or the batch, so that results do not depend on either) */
    int gemm = mode == RWKV5_PARALLEL && T >= RWKV5_GEMM_MIN_M;
    if (scratch_acquire(&s, m, B * nmax, B, gemm, &cached) != RWKV5_OK)
        return fail(err, errlen, RWKV5_ENOMEM, "out of memory for scratch buffers (%d rows)", B * nmax);

    for (int c0 = 0; c0 < T; c0 += nmax) {
        int n = T - c0 < nmax ? T - c0 : nmax;
        /* x = LN(emb[token]; ln0), ln0 applied at run time so emb stays zero-copy */
        for (int b = 0; b < B; b++)
            for (int t = 0; t < n; t++)
                rwkv5_mat_row(s.x + ((size_t)b * n + t) * C, &m->g.emb, (size_t)tokens[(size_t)b * T + c0 + t]);
        rows_job ln0 = {.op = ROW_LN, .C = C, .eps = LN_EPS, .out = s.x, .x = s.x, .w = m->g.ln0_w, .bias = m->g.ln0_b};
        rows_parallel(&ln0, B * n);
        for (int l = 0; l < c->n_layer; l++) {
            if (st->cancel && *st->cancel) {
                rc = fail(err, errlen, RWKV5_ECANCELLED, "cancelled");
                goto out;
            }
            layer_forward(m, l, st, &s, B, n, mode, c0 == 0);
        }
        if (!logits && !hidden) continue;
        /* logits = LN(x; ln_out) @ head^T, only for the positions asked for */
        if (full_output) {
            rows_job lno = {.op = ROW_LN, .C = C, .eps = LN_EPS, .out = s.xn, .x = s.x, .w = m->g.ln_out_w,
                            .bias = m->g.ln_out_b};
            rows_parallel(&lno, B * n);
            for (int b = 0; b < B; b++) {
                if (logits) mm(&s, logits + ((size_t)b * T + c0) * V, s.xn + (size_t)b * n * C, &m->g.head, n);
                if (hidden) memcpy(hidden + ((size_t)b * T + c0) * C, s.xn + (size_t)b * n * C, sizeof(float) * n * C);
            }
        } else if (c0 + n == T) {
            for (int b = 0; b < B; b++)
                rwkv5_layer_norm(s.last + (size_t)b * C, s.x + ((size_t)b * n + n - 1) * C, m->g.ln_out_w,
                                 m->g.ln_out_b, C, LN_EPS);
            if (logits) rwkv5_matmul_ws(-1, 0, logits, s.last, &m->g.head, B, NULL, 0);   /* row kernels for any B */
            if (hidden) memcpy(hidden, s.last, sizeof(float) * B * C);
        }
    }
    rc = RWKV5_OK;
out:
    if (cached) pthread_mutex_unlock(&m->scratch->lock);
    else free(s.mem);
    return rc;
}
