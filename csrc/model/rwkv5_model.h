/* RWKV-5 forward pass in plain C (no Python): config, weights, state, and the entry points.
 *
 * Shapes use the notation of docs/model.md §1: L layers, C = n_embd, H heads of size N,
 * A = H*N, F = n_ffn, V = vocab, B sequences in a batch. Matrices are PyTorch-shaped (out, in),
 * row-major or 4-row blocked (rwkv5_mat), and computed as y = x @ W^T. Every weight pointer is
 * borrowed (the caller keeps the memory alive and unchanged for the model's life); only `pow_table`
 * and `layers` are owned. */
#ifndef RWKV5_MODEL_H
#define RWKV5_MODEL_H

#include <stddef.h>
#include <stdint.h>

/* Storage types of matrices (rwkv5_dtype, RWKV5_F32 ...) and their table rwkv5_dtypes. */
#include "dtypes.h"

/* Layout of a matrix's elements (`blocked`):
 *  0: row-major (rows, cols);
 *  1: 4-row blocked. Rows are taken in groups of 4 and columns in lines of E = 64 / element size
 *     elements (16 fp32, 32 fp16/bf16, 64 int8); the storage is the C array
 *     [ceil(rows/4)][ceil(cols/E)][4][E], padding zero. A group's 4 rows are then one sequential
 *     stream of 64-byte lines, which the matrix x vector kernels read at the memory bandwidth
 *     (4 separate short row streams reach ~0.7-0.8 of it). Element (o, i) is at byte
 *     ((o/4 * ceil(cols/E) + i/E) * 4 + o%4) * 64 + (i%E) * size. */
typedef struct {
    const void *data;   /* elements of `dtype` in the layout `blocked` */
    const float *scale; /* (rows) per-row scales for RWKV5_I8, else NULL */
    int dtype;
    int rows, cols;
    int blocked; /* 0 row-major, 1 4-row blocked (above) */
} rwkv5_mat;

typedef struct {
    int n_layer, n_embd, n_head, head_size, n_ffn, n_vocab;
    int has_gate; /* 5.1 and 5.2: SiLU gate after GroupNorm */
    float gn_eps; /* GroupNorm (ln_x) eps: 64e-5 RWKV-LM, 1e-5 rwkv.cpp */
} rwkv5_config;

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;                 /* (C) */
    const float *att_mix_k, *att_mix_v, *att_mix_r, *att_mix_g; /* (C); mix_g NULL without gate */
    const double
        *decay_logw;      /* (A) ln w = -exp(time_decay), per channel (per-head values repeated) */
    const float *bonus_u; /* (A) u = time_faaaa (or exp(time_first)), per channel */
    rwkv5_mat att_r, att_k, att_v, att_g; /* (A, C); att_g unused without gate */
    rwkv5_mat att_o;                      /* (C, A) */
    const float *lnx_w, *lnx_b;           /* (A) */
    const float *ffn_mix_k, *ffn_mix_r;   /* (C) */
    rwkv5_mat ffn_k;                      /* (F, C) */
    rwkv5_mat ffn_r;                      /* (C, C) */
    rwkv5_mat ffn_v;                      /* (C, F) */
} rwkv5_layer;

typedef struct {
    rwkv5_mat emb;                    /* (V, C); ln0 is applied at run time, emb is not copied */
    const float *ln0_w, *ln0_b;       /* (C) */
    const float *ln_out_w, *ln_out_b; /* (C) */
    rwkv5_mat head;                   /* (V, C) */
} rwkv5_globals;

/* ---- The parameter table: every tensor the model reads, listed once (model.c) ----
 * It drives the checks of rwkv5_model_init and the binding's parsing, and is exported to Python
 * (rwkv5._model.PARAMS) for the loaders. Names are RWKV-LM's (docs/model.md §3); a per-layer name
 * is the part after "blocks.{i}.". Order: the globals, then one layer's parameters in the order the
 * forward pass reads them. */
typedef enum {
    RWKV5_PARAM_MATRIX = 0, /* rwkv5_mat, any storage type; shape (dims[0], dims[1]) */
    RWKV5_PARAM_VECTOR = 1, /* const float * (dims[0]) */
    RWKV5_PARAM_DECAY =
        2, /* const double * (dims[0]): ln w = -exp(time_decay), per channel (§4.3) */
    RWKV5_PARAM_BONUS =
        3, /* const float * (dims[0]): u per channel, from time_faaaa or exp(time_first) */
} rwkv5_param_kind;

/* A dimension of a parameter's shape, in terms of the config (docs/model.md §1). */
typedef enum { RWKV5_DIM_NONE = 0, RWKV5_DIM_C, RWKV5_DIM_A, RWKV5_DIM_F, RWKV5_DIM_V } rwkv5_dim;

typedef struct {
    const char *name; /* "emb.weight", "att.key.weight", ... */
    int per_layer;    /* 1: a field of rwkv5_layer (one per layer), 0: of rwkv5_globals */
    int kind;         /* rwkv5_param_kind */
    int dims[2];      /* rwkv5_dim; dims[1] is RWKV5_DIM_NONE except for matrices */
    int gate_only;    /* present only in gated models (5.1, 5.2) */
    size_t offset;    /* offsetof the field in rwkv5_layer or rwkv5_globals */
} rwkv5_param;

extern const rwkv5_param rwkv5_params[];
extern const int rwkv5_n_params;

/* Positions per WKV chunk in parallel mode (the power table has RWKV5_CHUNK + 1 rows). */
#define RWKV5_CHUNK 64
/* Parallel mode runs the prompt in slices of whole chunks, up to this many rows (B x positions):
 * the M of the projection GEMMs. */
#define RWKV5_SLICE_ROWS 512

typedef struct {
    rwkv5_config cfg;
    rwkv5_globals g;
    rwkv5_layer *layers; /* (L), owned */
    float *pow_table;    /* (L, RWKV5_CHUNK+1, A), owned: P[l][d][i] = w_i^d = exp(d ln w_i) in
                            double, rounded to fp32; values below FLT_MIN flushed to 0 */
    struct rwkv5_scratch_cache *scratch; /* owned: activation buffers reused by rwkv5_forward
                                            calls (grown to the largest call shape) */
} rwkv5_model;

/* Caller-owned state of B sequences, updated in place by rwkv5_forward. */
typedef struct {
    float *att_x;               /* (B, L, C)  LN1 output of the previous token */
    float *att_kv;              /* (B, L, H, N, N)  wkv state S[h][key i][value j] */
    float *ffn_x;               /* (B, L, C)  LN2 output of the previous token */
    const volatile int *cancel; /* optional (NULL = never): nonzero makes rwkv5_forward stop between
                                   layers with RWKV5_ECANCELLED, leaving the state partly updated */
    /* Optional source state (all three or none): when set, the state is read from these instead of
     * the arrays above, which are then only written (they need not be initialised). Each layer's
     * part is copied just before the layer first uses it (the wkv part by the thread that then
     * runs that head, while it is in its cache), so the caller's state is left unchanged without a
     * separate copy pass. src_batched: 1 = (B, ...) like the arrays above, 0 = one sequence's
     * (L, ...) state used for every sequence. */
    const float *src_att_x, *src_att_kv, *src_ffn_x;
    int src_batched;
} rwkv5_state;

enum { RWKV5_OK = 0, RWKV5_EINVAL = 1, RWKV5_ENOMEM = 2, RWKV5_ECANCELLED = 3 };
enum { RWKV5_RECURRENT = 0, RWKV5_PARALLEL = 1 };

/* model->cfg, model->g and model->layers must be filled (layers allocated with
 * rwkv5_model_alloc_layers). Checks the config and matrix shapes/dtypes, builds the power table.
 * Returns RWKV5_OK or an error code with a message in err. */
int rwkv5_model_alloc_layers(rwkv5_model *m, int n_layer);
/* The size of dimension `dim` (rwkv5_dim) under config c; 1 for RWKV5_DIM_NONE. */
int rwkv5_dim_size(const rwkv5_config *c, int dim);
/* The field parameter p fills: in m->g, or in m->layers[layer] for a per-layer one. Points to an
 * rwkv5_mat for a matrix, else to the `const float *` / `const double *` pointer. */
void *rwkv5_param_field(rwkv5_model *m, const rwkv5_param *p, int layer);
/* The full name of parameter p ("blocks.{layer}." + p->name for a per-layer one) into buf;
 * -1 if it does not fit. */
int rwkv5_param_name(char *buf, size_t len, const rwkv5_param *p, int layer);
/* Every parameter the config needs is set, each matrix with its shape and a supported storage
 * type (part of rwkv5_model_init). */
int rwkv5_check_params(rwkv5_model *m, char *err, size_t errlen);
int rwkv5_model_init(rwkv5_model *m, char *err, size_t errlen);
void rwkv5_model_free(rwkv5_model *m);

/* Run T tokens of B sequences (tokens (B, T) int32, each in [0, V)) from `state`, updating it.
 * logits: (B, T, V) when full_output, else (B, V) for the last position; may be NULL for none.
 * hidden: the final hidden states LN(x; ln_out) that the head reads (embeddings), (B, T, C) when
 * full_output, else (B, C); may be NULL for none.
 * mode RWKV5_RECURRENT runs one position per step; RWKV5_PARALLEL runs slices of up to
 * RWKV5_SLICE_ROWS rows (whole chunks per sequence) through the GEMMs and the chunked WKV.
 * Thread-safe for concurrent calls on one model with different states. */
int rwkv5_forward(const rwkv5_model *m, const int32_t *tokens, int B, int T,
                  const rwkv5_state *state, int mode, int full_output, float *logits, float *hidden,
                  char *err, size_t errlen);

#endif
