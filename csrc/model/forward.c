/* The RWKV-5 forward pass over B sequences, in recurrent (one position per step) or parallel
 * (chunks of RWKV5_CHUNK positions) mode. Both modes run the same per-layer code on a block of
 * rows (row = b * n + t for sequence b, position t of the block); they differ only in the WKV.
 * layer_forward is the list of the model's steps (docs/model.md §4), each a named function that
 * splits the rows between the threads; the arithmetic of each step is in kernels.c. */
#include <string.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/cpu.h"
#include "common/threadpool.h"
#include "kernels.h"

#define LN_EPS 1e-5f /* every LayerNorm (ln0, ln1, ln2, ln_out) */

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
    size_t cap; /* floats */
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
    if (c->n_layer <= 0 || C <= 0 || c->n_head <= 0 || c->head_size <= 0 || F <= 0 || V <= 0 ||
        !m->layers)
        return fail(err, errlen, RWKV5_EINVAL,
                    "bad config: n_layer=%d n_embd=%d n_head=%d head_size=%d n_ffn=%d vocab=%d",
                    c->n_layer, C, c->n_head, c->head_size, F, V);
    if (!(c->gn_eps > 0.0f) || !isfinite(c->gn_eps))
        return fail(err, errlen, RWKV5_EINVAL, "gn_eps must be a positive finite number, got %g",
                    (double)c->gn_eps);
    if ((rc = rwkv5_check_params(m, err, errlen)) != RWKV5_OK) return rc;
    size_t per_layer = (size_t)(RWKV5_CHUNK + 1) * A;
    free(m->pow_table);
    m->pow_table = (float *)malloc((size_t)c->n_layer * per_layer * sizeof(float));
    if (!m->pow_table)
        return fail(err, errlen, RWKV5_ENOMEM, "out of memory for the decay power table");
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
    float *x;                 /* (R, C) residual stream */
    float *xn;                /* (R, C) LayerNorm output of the current sub-block */
    float *xk, *xv, *xr, *xg; /* (R, C) token-shift mixes */
    float *r, *k, *v, *g, *y; /* (R, A) */
    float *fk;                /* (R, F) */
    float *fr, *fv;           /* (R, C) */
    float *last;              /* (B, C) final-LN rows of the last positions */
    float *ws;                /* GEMM workspace (parallel mode), ws_floats long, or NULL */
    size_t ws_floats;
    float *mem; /* the one allocation all of the above are carved from */
} scratch_t;

/* Carve the buffers for R rows out of the model's cached buffer (taking its lock) or, when another
 * call holds it, out of a private allocation; the end of rwkv5_forward undoes either. */
static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static int scratch_acquire(scratch_t *s, const rwkv5_model *m, int R, int B, int gemm,
                           int *cached) {
    const rwkv5_config *c = &m->cfg;
    size_t C = c->n_embd, A = (size_t)c->n_head * c->head_size, F = c->n_ffn;
    size_t ws = 0;
    if (gemm) { /* the largest GEMM of a layer or the head, at R rows */
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
    s->x = p;
    p += R * C;
    s->xn = p;
    p += R * C;
    s->xk = p;
    p += R * C;
    s->xv = p;
    p += R * C;
    s->xr = p;
    p += R * C;
    s->xg = p;
    p += R * C;
    s->fr = p;
    p += R * C;
    s->fv = p;
    p += R * C;
    s->last = p;
    p += (size_t)B * C;
    s->r = p;
    p += R * A;
    s->k = p;
    p += R * A;
    s->v = p;
    p += R * A;
    s->g = p;
    p += R * A;
    s->y = p;
    p += R * A;
    s->fk = p;
    p += R * F;
    s->ws = ws ? p : NULL;
    s->ws_floats = ws;
    return RWKV5_OK;
}

/* ---- position-wise steps over the R rows of a block, split between the pool's threads by rows
 * ---- Each is one named function; its job struct holds its own arguments. Pieces are at least ~16K
 * elements, so a single row (recurrent mode) stays on the calling thread. */

static void parallel_rows(int R, int width, void (*range)(void *, int64_t, int64_t), void *job) {
    int64_t grain = 16384 / (width > 0 ? width : 1);
    rwkv5_parallel_for(R, grain < 1 ? 1 : grain, range, job);
}

typedef struct {
    float *out;
    const float *x, *w, *b;
    int n;
} layer_norm_job;

static void layer_norm_range(void *ctx, int64_t r0, int64_t r1) {
    const layer_norm_job *j = (const layer_norm_job *)ctx;
    for (int64_t r = r0; r < r1; r++)
        rwkv5_layer_norm(j->out + r * j->n, j->x + r * j->n, j->w, j->b, j->n, LN_EPS);
}

/* out = LN(x; w, b) for each of the R rows of n channels (out may be x) */
static void layer_norm_rows(float *out, const float *x, const float *w, const float *b, int R,
                            int n) {
    layer_norm_job j = {out, x, w, b, n};
    parallel_rows(R, n, layer_norm_range, &j);
}

typedef struct {
    float *const *outs;
    const float *const *mus;
    int nmix;
    const float *xn, *carried;
    int n, C, L, l;
} token_shift_job;

static void token_shift_range(void *ctx, int64_t r0, int64_t r1) {
    const token_shift_job *j = (const token_shift_job *)ctx;
    size_t C = (size_t)j->C;
    for (int64_t row = r0; row < r1; row++) {
        int b = (int)(row / j->n), t = (int)(row % j->n);
        const float *cur = j->xn + (size_t)row * C;
        const float *prev = t == 0 ? j->carried + ((size_t)b * j->L + j->l) * C : cur - C;
        for (int m = 0; m < j->nmix; m++)
            rwkv5_token_shift(j->outs[m] + (size_t)row * C, cur, prev, j->mus[m], C);
    }
}

/* Token shift (docs/model.md §4.2) of the LN rows xn of B sequences of n positions: for each mix m,
 * outs[m] = xn * mus[m] + prev * (1 - mus[m]), prev the row before in the same sequence or, at
 * t = 0, the row carried in the state (`carried` (B, L, C) at layer l); then the carried row <- the
 * sequence's last LN row. */
static void token_shift(float *const *outs, const float *const *mus, int nmix, const float *xn,
                        float *carried, const rwkv5_config *c, int l, int B, int n) {
    int C = c->n_embd;
    token_shift_job j = {outs, mus, nmix, xn, carried, n, C, c->n_layer, l};
    parallel_rows(B * n, C, token_shift_range, &j);
    for (int b = 0; b < B; b++)
        memcpy(carried + ((size_t)b * c->n_layer + l) * C, xn + ((size_t)b * n + n - 1) * C,
               C * sizeof(float));
}

typedef struct {
    float *y;
    const float *g, *w, *b;
    int A, H, has_gate;
    float eps;
} group_norm_gate_job;

static void group_norm_gate_range(void *ctx, int64_t r0, int64_t r1) {
    const group_norm_gate_job *j = (const group_norm_gate_job *)ctx;
    for (int64_t r = r0; r < r1; r++) {
        float *y = j->y + r * j->A;
        rwkv5_group_norm(y, y, j->w, j->b, j->A, j->H, j->eps);
        if (j->has_gate) rwkv5_silu_gate(y, j->g + r * j->A, (size_t)j->A);
    }
}

/* §4.5: y = GN(y; w, b) per head, then (5.1, 5.2) y *= SiLU(g), for each of the R rows of A
 * channels */
static void group_norm_gate_rows(float *y, const float *g, const float *w, const float *b, int R,
                                 const rwkv5_config *c) {
    group_norm_gate_job j = {y,         g,           w,        b, c->n_head * c->head_size,
                             c->n_head, c->has_gate, c->gn_eps};
    parallel_rows(R, j.A, group_norm_gate_range, &j);
}

typedef struct {
    float *x;
    const float *a;
    int n;
} add_job;

static void add_range(void *ctx, int64_t r0, int64_t r1) {
    const add_job *j = (const add_job *)ctx;
    for (int64_t r = r0; r < r1; r++) rwkv5_add(j->x + r * j->n, j->a + r * j->n, (size_t)j->n);
}

/* the residual: x += a over R rows of n channels */
static void add_rows(float *x, const float *a, int R, int n) {
    add_job j = {x, a, n};
    parallel_rows(R, n, add_range, &j);
}

typedef struct {
    float *x;
    int n;
} relu_sq_job;

static void relu_sq_range(void *ctx, int64_t r0, int64_t r1) {
    const relu_sq_job *j = (const relu_sq_job *)ctx;
    for (int64_t r = r0; r < r1; r++) rwkv5_relu_sq(j->x + r * j->n, (size_t)j->n);
}

/* x = relu(x)^2 over R rows of n channels */
static void relu_sq_rows(float *x, int R, int n) {
    relu_sq_job j = {x, n};
    parallel_rows(R, n, relu_sq_range, &j);
}

typedef struct {
    float *x;
    const float *a, *b;
    int n;
} add_gated_job;

static void add_gated_range(void *ctx, int64_t r0, int64_t r1) {
    const add_gated_job *j = (const add_gated_job *)ctx;
    for (int64_t r = r0; r < r1; r++)
        rwkv5_add_gated(j->x + r * j->n, j->a + r * j->n, j->b + r * j->n, (size_t)j->n);
}

/* x += sigmoid(a) * b over R rows of n channels */
static void add_gated_rows(float *x, const float *a, const float *b, int R, int n) {
    add_gated_job j = {x, a, b, n};
    parallel_rows(R, n, add_gated_range, &j);
}

/* ---- the WKV of every (sequence, head) of a block ---- */

typedef struct {
    const rwkv5_model *m;
    const rwkv5_state *st;
    scratch_t *s;
    int l, n, mode;
    int from_src; /* copy each head's state from st->src_att_kv first (the call's first slice) */
} wkv_job;

/* one task per (sequence b, head h) */
static void wkv_range(void *ctx, int64_t b0, int64_t e0) {
    wkv_job *j = (wkv_job *)ctx;
    const rwkv5_config *c = &j->m->cfg;
    int H = c->n_head, N = c->head_size, A = H * N, L = c->n_layer;
    const float *P = j->m->pow_table + (size_t)j->l * (RWKV5_CHUNK + 1) * A; /* P[d][i] = w_i^d */
    const float *u = j->m->layers[j->l].bonus_u;
    for (int64_t task = b0; task < e0; task++) {
        int b = (int)(task / H), h = (int)(task % H);
        size_t off = (size_t)b * j->n * A + (size_t)h * N;
        size_t per_seq = (size_t)L * H * N * N, head = ((size_t)j->l * H + h) * N * N;
        float *S = j->st->att_kv + b * per_seq + head;
        if (j->from_src)
            memcpy(S, j->st->src_att_kv + (j->st->src_batched ? b : 0) * per_seq + head,
                   sizeof(float) * N * N);
        const float *r = j->s->r + off, *k = j->s->k + off, *v = j->s->v + off;
        if (j->mode == RWKV5_RECURRENT) /* n == 1; w = P[1] */
            rwkv5_wkv_step(j->s->y + off, S, r, k, v, P + A + (size_t)h * N, u + (size_t)h * N, N);
        else
            rwkv5_wkv_chunks(j->s->y + off, S, r, k, v, (size_t)A, P + (size_t)h * N, (size_t)A,
                             u + (size_t)h * N, (size_t)j->n, N);
    }
}

/* §4.4 / §6: y = WKV(r, k, v) of each head of the B sequences of n positions, updating the state
 * (first copied from the source state when from_src) */
static void wkv(const rwkv5_model *m, int l, const rwkv5_state *st, scratch_t *s, int B, int n,
                int mode, int from_src) {
    wkv_job j = {m, st, s, l, n, mode, from_src};
    rwkv5_parallel_for((int64_t)B * m->cfg.n_head, 1, wkv_range, &j);
}

/* out = x @ W^T over R rows: the GEMM when the call has a workspace, else the row kernels.
 * Either way each output's sum runs in an order that does not depend on R or on where the row
 * sits in the block, so a sequence gives the same bits alone or in a batch. */
static void mm(scratch_t *s, float *out, const float *x, const rwkv5_mat *w, int R) {
    rwkv5_matmul_ws(-1, s->ws != NULL, out, x, w, R, s->ws, s->ws_floats);
}

/* dst[b][l] = src[b or 0][l] for the B sequences, `per` floats each (layer l of a (B, L, per)
 * state) */
static void copy_layer_state(float *dst, const float *src, int batched, int B, int L, int l,
                             size_t per) {
    for (int b = 0; b < B; b++)
        memcpy(dst + ((size_t)b * L + l) * per, src + ((size_t)(batched ? b : 0) * L + l) * per,
               sizeof(float) * per);
}

/* One layer (docs/model.md §4.2-§4.6) over the block of R = B*n rows in s->x. first: the call's
 * first slice, where a source state (st->src_*) is copied in. */
static void layer_forward(const rwkv5_model *m, int l, const rwkv5_state *st, scratch_t *s, int B,
                          int n, int mode, int first) {
    const rwkv5_config *c = &m->cfg;
    const rwkv5_layer *L = &m->layers[l];
    int C = c->n_embd, F = c->n_ffn, R = B * n;
    int from_src = first && st->src_att_kv;
    if (from_src) {
        copy_layer_state(st->att_x, st->src_att_x, st->src_batched, B, c->n_layer, l, (size_t)C);
        copy_layer_state(st->ffn_x, st->src_ffn_x, st->src_batched, B, c->n_layer, l, (size_t)C);
    }

    /* time mix (§4.2): token shift over the LN1 outputs, then the projections */
    layer_norm_rows(s->xn, s->x, L->ln1_w, L->ln1_b, R, C);
    {
        float *outs[4] = {s->xk, s->xv, s->xr, s->xg};
        const float *mus[4] = {L->att_mix_k, L->att_mix_v, L->att_mix_r, L->att_mix_g};
        token_shift(outs, mus, c->has_gate ? 4 : 3, s->xn, st->att_x, c, l, B, n);
    }
    mm(s, s->r, s->xr, &L->att_r, R);                  /* r = x_r @ W_r^T (no sigmoid in v5) */
    mm(s, s->k, s->xk, &L->att_k, R);                  /* k = x_k @ W_k^T */
    mm(s, s->v, s->xv, &L->att_v, R);                  /* v = x_v @ W_v^T */
    if (c->has_gate) mm(s, s->g, s->xg, &L->att_g, R); /* g = x_g @ W_g^T */
    wkv(m, l, st, s, B, n, mode, from_src);            /* y = WKV(r, k, v) per head (§4.4, §6) */
    group_norm_gate_rows(s->y, s->g, L->lnx_w, L->lnx_b, R, c); /* y = GN(y) * SiLU(g) (§4.5) */
    mm(s, s->fv, s->y, &L->att_o, R);                           /* x += y @ W_o^T */
    add_rows(s->x, s->fv, R, C);

    /* channel mix (§4.6): token shift over the LN2 outputs */
    layer_norm_rows(s->xn, s->x, L->ln2_w, L->ln2_b, R, C);
    {
        float *outs[2] = {s->xk, s->xr};
        const float *mus[2] = {L->ffn_mix_k, L->ffn_mix_r};
        token_shift(outs, mus, 2, s->xn, st->ffn_x, c, l, B, n);
    }
    mm(s, s->fk, s->xk, &L->ffn_k, R); /* k = relu(x_k @ K_f^T)^2 */
    relu_sq_rows(s->fk, R, F);
    mm(s, s->fv, s->fk, &L->ffn_v, R);        /* v = k @ V_f^T */
    mm(s, s->fr, s->xr, &L->ffn_r, R);        /* r = x_r @ R_f^T */
    add_gated_rows(s->x, s->fr, s->fv, R, C); /* x += sigmoid(r) * v */
}

int rwkv5_forward(const rwkv5_model *m, const int32_t *tokens, int B, int T, const rwkv5_state *st,
                  int mode, int full_output, float *logits, float *hidden, char *err,
                  size_t errlen) {
    const rwkv5_config *c = &m->cfg;
    int C = c->n_embd, V = c->n_vocab;
    scratch_t s = {0};
    int cached = 0, rc;
    if (B <= 0 || T <= 0)
        return fail(err, errlen, RWKV5_EINVAL, "need B >= 1 and T >= 1, got B=%d T=%d", B, T);
    if (mode != RWKV5_RECURRENT && mode != RWKV5_PARALLEL)
        return fail(err, errlen, RWKV5_EINVAL, "mode must be 0 (recurrent) or 1 (parallel), got %d",
                    mode);
    if (!st || !st->att_x || !st->att_kv || !st->ffn_x)
        return fail(err, errlen, RWKV5_EINVAL, "state is missing");
    if (!st->src_att_x != !st->src_att_kv || !st->src_att_x != !st->src_ffn_x)
        return fail(err, errlen, RWKV5_EINVAL,
                    "source state: give all of att_x, att_kv, ffn_x or none");
    for (size_t i = 0; i < (size_t)B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return fail(err, errlen, RWKV5_EINVAL, "tokens[%zu] = %d is outside [0, %d)", i,
                        (int)tokens[i], V);
    /* parallel mode: slices of whole WKV chunks, up to RWKV5_SLICE_ROWS rows over the batch, so the
     * position-wise GEMMs have a tall M while the scratch stays bounded whatever T is */
    int per_seq = RWKV5_SLICE_ROWS / (B * RWKV5_CHUNK) * RWKV5_CHUNK;
    if (per_seq < RWKV5_CHUNK) per_seq = RWKV5_CHUNK;
    int nmax = mode == RWKV5_PARALLEL ? (T < per_seq ? T : per_seq) : 1;
    /* the GEMM for every slice of a parallel call of T >= RWKV5_GEMM_MIN_M (decided by T, not by
     * the slice or the batch, so that results do not depend on either) */
    int gemm = mode == RWKV5_PARALLEL && T >= RWKV5_GEMM_MIN_M;
    if (scratch_acquire(&s, m, B * nmax, B, gemm, &cached) != RWKV5_OK)
        return fail(err, errlen, RWKV5_ENOMEM, "out of memory for scratch buffers (%d rows)",
                    B * nmax);

    for (int c0 = 0; c0 < T; c0 += nmax) {
        int n = T - c0 < nmax ? T - c0 : nmax;
        /* x = LN(emb[token]; ln0), ln0 applied at run time so emb stays zero-copy */
        for (int b = 0; b < B; b++)
            for (int t = 0; t < n; t++)
                rwkv5_mat_row(s.x + ((size_t)b * n + t) * C, &m->g.emb,
                              (size_t)tokens[(size_t)b * T + c0 + t]);
        layer_norm_rows(s.x, s.x, m->g.ln0_w, m->g.ln0_b, B * n, C);
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
            layer_norm_rows(s.xn, s.x, m->g.ln_out_w, m->g.ln_out_b, B * n, C);
            for (int b = 0; b < B; b++) {
                if (logits)
                    mm(&s, logits + ((size_t)b * T + c0) * V, s.xn + (size_t)b * n * C, &m->g.head,
                       n);
                if (hidden)
                    memcpy(hidden + ((size_t)b * T + c0) * C, s.xn + (size_t)b * n * C,
                           sizeof(float) * n * C);
            }
        } else if (c0 + n == T) {
            for (int b = 0; b < B; b++)
                rwkv5_layer_norm(s.last + (size_t)b * C, s.x + ((size_t)b * n + n - 1) * C,
                                 m->g.ln_out_w, m->g.ln_out_b, C, LN_EPS);
            if (logits)
                rwkv5_matmul_ws(-1, 0, logits, s.last, &m->g.head, B, NULL,
                                0); /* row kernels for any B */
            if (hidden) memcpy(hidden, s.last, sizeof(float) * B * C);
        }
    }
    rc = RWKV5_OK;
out:
    if (cached)
        pthread_mutex_unlock(&m->scratch->lock);
    else
        free(s.mem);
    return rc;
}
