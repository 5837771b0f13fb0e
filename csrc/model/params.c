/* The parameter table (rwkv5_model.h): every tensor of an RWKV-5 model, once, with the field it
 * fills and its shape. rwkv5_model_init checks a model against it; the Python binding parses its
 * name -> array mapping with it and exports it as rwkv5._model.PARAMS. */
#include <stdarg.h>
#include <stdio.h>

#include "rwkv5_model.h"

#define C RWKV5_DIM_C
#define A RWKV5_DIM_A
#define F RWKV5_DIM_F
#define V RWKV5_DIM_V
#define MATRIX(name, rows, cols, field)                                                            \
    { name, 0, RWKV5_PARAM_MATRIX, {rows, cols}, 0, offsetof(rwkv5_globals, field) }
#define VECTOR(name, n, field)                                                                     \
    { name, 0, RWKV5_PARAM_VECTOR, {n, RWKV5_DIM_NONE}, 0, offsetof(rwkv5_globals, field) }
#define L_MATRIX(name, rows, cols, field, gate)                                                    \
    { name, 1, RWKV5_PARAM_MATRIX, {rows, cols}, gate, offsetof(rwkv5_layer, field) }
#define L_VECTOR(name, kind, n, field, gate)                                                       \
    { name, 1, kind, {n, RWKV5_DIM_NONE}, gate, offsetof(rwkv5_layer, field) }
#define L_VEC(name, n, field) L_VECTOR(name, RWKV5_PARAM_VECTOR, n, field, 0)

const rwkv5_param rwkv5_params[] = {
    MATRIX("emb.weight", V, C, emb), /* §4.1 */
    VECTOR("blocks.0.ln0.weight", C, ln0_w),
    VECTOR("blocks.0.ln0.bias", C, ln0_b),
    VECTOR("ln_out.weight", C, ln_out_w), /* §4.7 */
    VECTOR("ln_out.bias", C, ln_out_b),
    MATRIX("head.weight", V, C, head),
    /* per layer */
    L_VEC("ln1.weight", C, ln1_w),
    L_VEC("ln1.bias", C, ln1_b),
    L_VEC("ln2.weight", C, ln2_w),
    L_VEC("ln2.bias", C, ln2_b),
    L_VEC("att.time_mix_k", C, att_mix_k), /* §4.2 */
    L_VEC("att.time_mix_v", C, att_mix_v),
    L_VEC("att.time_mix_r", C, att_mix_r),
    L_VECTOR("att.time_mix_g", RWKV5_PARAM_VECTOR, C, att_mix_g, 1),
    L_VECTOR("att.time_decay", RWKV5_PARAM_DECAY, A, decay_logw, 0), /* §4.3 */
    L_VECTOR("att.time_faaaa", RWKV5_PARAM_BONUS, A, bonus_u, 0),
    L_MATRIX("att.receptance.weight", A, C, att_r, 0),
    L_MATRIX("att.key.weight", A, C, att_k, 0),
    L_MATRIX("att.value.weight", A, C, att_v, 0),
    L_MATRIX("att.gate.weight", A, C, att_g, 1),
    L_MATRIX("att.output.weight", C, A, att_o, 0), /* §4.5 */
    L_VEC("att.ln_x.weight", A, lnx_w),
    L_VEC("att.ln_x.bias", A, lnx_b),
    L_VEC("ffn.time_mix_k", C, ffn_mix_k), /* §4.6 */
    L_VEC("ffn.time_mix_r", C, ffn_mix_r),
    L_MATRIX("ffn.key.weight", F, C, ffn_k, 0),
    L_MATRIX("ffn.receptance.weight", C, C, ffn_r, 0),
    L_MATRIX("ffn.value.weight", C, F, ffn_v, 0),
};
const int rwkv5_n_params = (int)(sizeof rwkv5_params / sizeof rwkv5_params[0]);

#undef C
#undef A
#undef F
#undef V

int rwkv5_dim_size(const rwkv5_config *c, int dim) {
    switch (dim) {
    case RWKV5_DIM_C:
        return c->n_embd;
    case RWKV5_DIM_A:
        return c->n_head * c->head_size;
    case RWKV5_DIM_F:
        return c->n_ffn;
    case RWKV5_DIM_V:
        return c->n_vocab;
    default:
        return 1;
    }
}

void *rwkv5_param_field(rwkv5_model *m, const rwkv5_param *p, int layer) {
    char *base = p->per_layer ? (char *)&m->layers[layer] : (char *)&m->g;
    return base + p->offset;
}

int rwkv5_param_name(char *buf, size_t len, const rwkv5_param *p, int layer) {
    int n = p->per_layer ? snprintf(buf, len, "blocks.%d.%s", layer, p->name)
                         : snprintf(buf, len, "%s", p->name);
    return n >= 0 && (size_t)n < len ? 0 : -1;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return RWKV5_EINVAL;
}

static int check_param(rwkv5_model *m, const rwkv5_param *p, int layer, char *err, size_t errlen) {
    char name[96];
    rwkv5_param_name(name, sizeof name, p, layer);
    void *field = rwkv5_param_field(m, p, layer);
    if (p->kind != RWKV5_PARAM_MATRIX) {
        if (!*(const void **)field) return fail(err, errlen, "%s: missing", name);
        return RWKV5_OK;
    }
    const rwkv5_mat *w = (const rwkv5_mat *)field;
    int rows = rwkv5_dim_size(&m->cfg, p->dims[0]), cols = rwkv5_dim_size(&m->cfg, p->dims[1]);
    if (!w->data || w->rows != rows || w->cols != cols)
        return fail(err, errlen, "%s: expected shape (%d, %d), got (%d, %d)%s", name, rows, cols,
                    w->rows, w->cols, w->data ? "" : " (missing)");
    if (!rwkv5_dtype_valid(w->dtype))
        return fail(err, errlen, "%s: storage type %d is not one of the %d of rwkv5_dtypes", name,
                    w->dtype, RWKV5_N_DTYPES);
    if (rwkv5_dtypes[w->dtype].row_scale != (w->scale != NULL))
        return fail(err, errlen, "%s: %s storage %s per-row scales", name,
                    rwkv5_dtypes[w->dtype].name,
                    rwkv5_dtypes[w->dtype].row_scale ? "needs" : "has no");
    return RWKV5_OK;
}

int rwkv5_check_params(rwkv5_model *m, char *err, size_t errlen) {
    int rc;
    for (int l = -1; l < m->cfg.n_layer; l++) /* the globals (l = -1), then each layer's */
        for (int i = 0; i < rwkv5_n_params; i++) {
            const rwkv5_param *p = &rwkv5_params[i];
            if (p->per_layer != (l >= 0) || (p->gate_only && !m->cfg.has_gate)) continue;
            if ((rc = check_param(m, p, l, err, errlen)) != RWKV5_OK) return rc;
        }
    return RWKV5_OK;
}
