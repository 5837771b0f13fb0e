/* Python binding of the model core (the only file of rwkv5._model that includes Python.h).
 *
 * Every function has the same shape: parse -> validate -> acquire buffers -> release the GIL ->
 * compute -> reacquire -> build the result -> one cleanup label. Arrays are never converted here:
 * rwkv5/model.py and rwkv5/ops.py prepare exactly the dtype/layout needed, and this file checks it
 * strictly (a wrong array is a TypeError/ValueError naming it, never a crash).
 *
 * Ownership: a CModel holds borrowed C pointers into NumPy arrays and keeps one tuple referencing
 * all of those arrays (`owner`), so the memory (possibly an np.memmap of a file) outlives the
 * model. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef NPY_NO_DEPRECATED_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#endif
#include <numpy/arrayobject.h>

#include <signal.h>
#include <time.h>

#include "common/cpu.h"
#include "common/threadpool.h"
#include "model/ggml_blocks.h"
#include "model/kernels.h"
#include "model/quantize.h"
#include "common/polled.h"
#include "model/rwkv5_model.h"

/* ---------------------------------------------------------------------------------------------
 * Array checks. Return a borrowed PyArrayObject* or NULL with an exception set. */

static const char *type_name(int t) {
    switch (t) {
    case NPY_FLOAT32:
        return "float32";
    case NPY_FLOAT64:
        return "float64";
    case NPY_FLOAT16:
        return "float16";
    case NPY_UINT16:
        return "uint16 (bfloat16 bits)";
    case NPY_INT32:
        return "int32";
    case NPY_INT8:
        return "int8";
    default:
        return "?";
    }
}

static void shape_str(char *buf, size_t len, int nd, const npy_intp *dims) {
    size_t o = 0;
    o += snprintf(buf + o, len - o, "(");
    for (int i = 0; i < nd && o < len; i++)
        o += snprintf(buf + o, len - o, i ? ", %ld" : "%ld", (long)dims[i]);
    if (o < len) snprintf(buf + o, len - o, nd == 1 ? ",)" : ")");
}

/* dims[i] < 0 means "any size". flags: WRITE (the kernel writes into it), UNALIGNED_OK (matrix
 * storage, read with unaligned loads: views into files need not be aligned). */
enum {
    WRITE = 1,
    UNALIGNED_OK = 2,
    ANY_LAYOUT = 4
}; /* ANY_LAYOUT: any strides (the caller copies it) */
static PyArrayObject *check_array(PyObject *obj, const char *name, int type, int nd,
                                  const npy_intp *dims, int flags) {
    char want[128], got[128];
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != type) {
        PyErr_Format(PyExc_TypeError, "%s: expected dtype %s, got %s", name, type_name(type),
                     PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    int bad = PyArray_NDIM(a) != nd;
    for (int i = 0; !bad && i < nd; i++) bad = dims[i] >= 0 && PyArray_DIM(a, i) != dims[i];
    if (bad) {
        shape_str(want, sizeof want, nd, dims);
        shape_str(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
        PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", name, want, got);
        return NULL;
    }
    if (!(flags & ANY_LAYOUT) &&
        (!PyArray_IS_C_CONTIGUOUS(a) || (!(flags & UNALIGNED_OK) && !PyArray_ISALIGNED(a)))) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous%s array", name,
                     flags & UNALIGNED_OK ? "" : " aligned");
        return NULL;
    }
    if ((flags & WRITE) && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s: array must be writeable", name);
        return NULL;
    }
    return a;
}

static PyObject *raise_core(int rc, const char *msg) {
    if (rc == RWKV5_ECANCELLED && PyErr_Occurred()) return NULL; /* KeyboardInterrupt already set */
    PyErr_SetString(rc == RWKV5_ENOMEM ? PyExc_MemoryError : PyExc_ValueError, msg);
    return NULL;
}

/* A forward call run on a helper thread (common/polled.h) so that Ctrl-C reaches it: every
 * POLL_MS the calling thread takes the GIL, runs the signal handlers, and on an exception raises
 * the cancel flag that rwkv5_forward checks between layers. */
#define POLL_MS 50
#define MAX_POSITIONS                                                                              \
    ((long)(INT32_MAX / 2)) /* B * T of one call (2**30 - 1): int row counts stay safe */
typedef struct {
    const rwkv5_model *m;
    const int32_t *tokens;
    int B, T, mode, full;
    rwkv5_state *st;
    float *logits, *hidden;
    char *err;
    size_t errlen;
    int rc;
    volatile int cancel;
    int polls; /* polls done so far (atomic: read by the worker for the test hook) */
} forward_call;

/* Test hook (_model._test_signal_after_forward): the worker sends SIGINT to the process after the
 * forward has finished (past its last cancel check) and waits until the calling thread has polled
 * once more, so that the poll's KeyboardInterrupt meets a successful forward every time. */
static int test_signal_after_forward = 0;

static void forward_work(void *p) {
    forward_call *f = p;
    f->rc = rwkv5_forward(f->m, f->tokens, f->B, f->T, f->st, f->mode, f->full, f->logits,
                          f->hidden, f->err, f->errlen);
    if (test_signal_after_forward) {
        int seen = __atomic_load_n(&f->polls, __ATOMIC_SEQ_CST);
        raise(SIGINT);
        for (int i = 0; i < 5000 && __atomic_load_n(&f->polls, __ATOMIC_SEQ_CST) == seen; i++) {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
}

static int forward_poll(void *p) {
    forward_call *f = p;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() < 0; /* leaves the exception (e.g. KeyboardInterrupt) set */
    PyGILState_Release(g);
    if (stop) f->cancel = 1;
    __atomic_add_fetch(&f->polls, 1, __ATOMIC_SEQ_CST);
    return stop;
}

/* Calls this short are run directly: a helper thread would cost more than it could save. */
static int forward_is_long(const rwkv5_config *c, npy_intp B, npy_intp T) {
    double per_token = (double)c->n_layer * c->n_embd * (5.0 * c->n_embd + 3.0 * c->n_ffn);
    return (double)B * (double)T * per_token > 2e8;
}

/* ---------------------------------------------------------------------------------------------
 * CModel */

typedef struct {
    PyObject_HEAD rwkv5_model m;
    PyObject *owner; /* tuple of every array the C pointers point into (new reference) */
    int ready;
} CModelObject;

/* Appends obj to the owner list (as a new reference) and returns its data pointer. */
static const void *take_flags(PyObject *owner, PyObject *obj, const char *name, int type, int nd,
                              const npy_intp *dims, int flags) {
    PyArrayObject *a = check_array(obj, name, type, nd, dims, flags);
    if (!a || PyList_Append(owner, obj) < 0) return NULL;
    return PyArray_DATA(a);
}

static const void *take(PyObject *owner, PyObject *obj, const char *name, int type, int nd,
                        const npy_intp *dims) {
    return take_flags(owner, obj, name, type, nd, dims, 0);
}

/* A matrix: the tuple (dtype, data) or (dtype, data, scale). dtype is the name of a storage type
 * (a row of rwkv5_dtypes, exported as _model.DTYPES): the binding reads data's bytes as that type,
 * it does not guess it from the NumPy dtype. data is an array of that type's element size, in
 * either layout of rwkv5_mat:
 *  - row-major: (rows, cols);
 *  - 4-row blocked: 4-d (ceil(rows/4), ceil(cols/E), 4, E), E = 64 / element size
 *    (rwkv5.model.block_matrix makes one);
 *  - a block type (int4): uint8 (rows, ceil(cols / block) * block_bytes), row-major only.
 * scale: float32 (rows,), present exactly for a type with row scales (int8: W[o][i] = q[o][i] *
 * scale[o]). */
static int take_mat(PyObject *owner, PyObject *obj, const char *name, int rows, int cols,
                    rwkv5_mat *out) {
    npy_intp dr[1] = {rows};
    memset(out, 0, sizeof *out);
    Py_ssize_t items = PyTuple_Check(obj) ? PyTuple_GET_SIZE(obj) : 0;
    if (items != 2 && items != 3) {
        PyErr_Format(PyExc_TypeError,
                     "%s: expected a tuple (dtype, array) or (dtype, array, scale), got %s", name,
                     PyTuple_Check(obj) ? "a tuple of another length" : Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *tag = PyTuple_GET_ITEM(obj, 0), *data = PyTuple_GET_ITEM(obj, 1);
    PyObject *scale = items == 3 ? PyTuple_GET_ITEM(obj, 2) : NULL;
    const char *tname = PyUnicode_Check(tag) ? PyUnicode_AsUTF8(tag) : NULL;
    if (!tname && PyErr_Occurred()) return -1;
    int dt = -1;
    for (int t = 0; tname && t < RWKV5_N_DTYPES; t++)
        if (strcmp(tname, rwkv5_dtypes[t].name) == 0) dt = t;
    if (dt < 0) {
        char known[128] = "";
        for (int t = 0; t < RWKV5_N_DTYPES; t++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", t ? ", " : "",
                     rwkv5_dtypes[t].name);
        PyErr_Format(PyExc_ValueError, "%s: unknown storage type %R (one of %s)", name, tag, known);
        return -1;
    }
    const rwkv5_dtype_info *info = &rwkv5_dtypes[dt];
    if ((scale != NULL) != info->row_scale) {
        PyErr_Format(PyExc_ValueError, "%s: a %s matrix is a tuple (dtype, array%s)", name,
                     info->name, info->row_scale ? ", scale" : "");
        return -1;
    }
    if (!PyArray_Check(data)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", name,
                     Py_TYPE(data)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)data;
    if (!PyArray_ISNUMBER(a) || PyArray_ITEMSIZE(a) != info->elem_bytes) {
        PyErr_Format(PyExc_TypeError, "%s: a %s matrix has %d-byte numeric elements, got dtype %s",
                     name, info->name, info->elem_bytes, PyArray_DESCR(a)->typeobj->tp_name);
        return -1;
    }
    int t = PyArray_TYPE(a);
    out->dtype = dt;
    out->rows = rows;
    out->cols = cols;
    out->blocked = PyArray_NDIM(a) == 4;
    if (out->blocked && info->block) {
        PyErr_Format(PyExc_ValueError,
                     "%s: a %s matrix has only the row-major layout (a 2-d array of its blocks)",
                     name, info->name);
        return -1;
    }
    if (out->blocked) {
        npy_intp e = 64 / (npy_intp)rwkv5_esz(dt);
        npy_intp d4[4] = {((npy_intp)rows + 3) / 4, ((npy_intp)cols + e - 1) / e, 4, e};
        out->data = take_flags(owner, data, name, t, 4, d4, UNALIGNED_OK);
    } else {
        /* a block type: (rows, bytes per row) */
        npy_intp d[2] = {rows, info->block ? (npy_intp)rwkv5_row_bytes(dt, (size_t)cols) : cols};
        out->data = take_flags(owner, data, name, t, 2, d, UNALIGNED_OK);
    }
    if (!out->data) return -1;
    if (scale) {
        char sname[160];
        snprintf(sname, sizeof sname, "%s scale", name);
        out->scale = take(owner, scale, sname, NPY_FLOAT32, 1, dr);
        if (!out->scale) return -1;
    }
    return 0;
}

/* One parameter of the table (rwkv5_params) from the mapping: a matrix as take_mat; a vector of
 * dims[0] float32 (a decay: float64). */
static int take_param(PyObject *owner, PyObject *obj, const char *name, const rwkv5_param *p,
                      rwkv5_model *m, int layer) {
    void *field = rwkv5_param_field(m, p, layer);
    int n = rwkv5_dim_size(&m->cfg, p->dims[0]);
    if (p->kind == RWKV5_PARAM_MATRIX)
        return take_mat(owner, obj, name, n, rwkv5_dim_size(&m->cfg, p->dims[1]),
                        (rwkv5_mat *)field);
    npy_intp d[1] = {n};
    const void *data =
        take(owner, obj, name, p->kind == RWKV5_PARAM_DECAY ? NPY_FLOAT64 : NPY_FLOAT32, 1, d);
    if (!data) return -1;
    *(const void **)field = data;
    return 0;
}

/* Every parameter of the table that the config needs, from the dict `params` (full name -> array);
 * a missing or unexpected name is a ValueError naming it. */
static int take_params(PyObject *owner, PyObject *params, rwkv5_model *m) {
    char name[128];
    Py_ssize_t taken = 0;
    for (int l = -1; l < m->cfg.n_layer; l++) /* the globals (l = -1), then each layer's */
        for (int i = 0; i < rwkv5_n_params; i++) {
            const rwkv5_param *p = &rwkv5_params[i];
            if (p->per_layer != (l >= 0) || (p->gate_only && !m->cfg.has_gate)) continue;
            rwkv5_param_name(name, sizeof name, p, l);
            PyObject *obj = PyDict_GetItemString(params, name); /* borrowed */
            if (!obj) {
                PyErr_Format(PyExc_ValueError, "params: missing %s", name);
                return -1;
            }
            if (take_param(owner, obj, name, p, m, l) < 0) return -1;
            taken++;
        }
    if (PyDict_Size(params) != taken) { /* a name the model has no field for */
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(params, &pos, &key, &value)) {
            int known = 0;
            for (int l = -1; !known && l < m->cfg.n_layer; l++)
                for (int i = 0; !known && i < rwkv5_n_params; i++) {
                    const rwkv5_param *p = &rwkv5_params[i];
                    if (p->per_layer != (l >= 0) || (p->gate_only && !m->cfg.has_gate)) continue;
                    rwkv5_param_name(name, sizeof name, p, l);
                    known =
                        PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, name) == 0;
                }
            if (!known) {
                PyErr_Format(PyExc_ValueError,
                             "params: unexpected %R (not a parameter of this config)", key);
                return -1;
            }
        }
    }
    return 0;
}

static int CModel_init(CModelObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config", "params", NULL};
    PyObject *cfg, *params, *owner = NULL;
    int n_layer, C, H, N, F, V, gate, rc = -1;
    double gn_eps;
    char err[256] = "";
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "CModel is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!", kwlist, &PyTuple_Type, &cfg, &PyDict_Type,
                                     &params))
        return -1;
    if (!PyArg_ParseTuple(cfg,
                          "iiiiiiid;config must be (n_layer, n_embd, n_head, head_size, n_ffn, "
                          "vocab, has_gate, gn_eps)",
                          &n_layer, &C, &H, &N, &F, &V, &gate, &gn_eps))
        return -1;
    if (n_layer <= 0 || C <= 0 || H <= 0 || N <= 0 || F <= 0 || V <= 0 ||
        (long long)H * N > 1 << 24) {
        PyErr_Format(PyExc_ValueError,
                     "bad config n_layer=%d n_embd=%d n_head=%d head_size=%d n_ffn=%d vocab=%d",
                     n_layer, C, H, N, F, V);
        return -1;
    }
    rwkv5_model *m = &self->m;
    m->cfg = (rwkv5_config){n_layer, C, H, N, F, V, gate != 0, (float)gn_eps};
    if (rwkv5_model_alloc_layers(m, n_layer) != RWKV5_OK) {
        PyErr_NoMemory();
        return -1;
    }
    owner = PyList_New(0);
    if (!owner || take_params(owner, params, m) < 0) goto done;
    int crc;
    Py_BEGIN_ALLOW_THREADS crc = rwkv5_model_init(m, err, sizeof err);
    Py_END_ALLOW_THREADS if (crc != RWKV5_OK) {
        raise_core(crc, err);
        goto done;
    }
    self->owner = PyList_AsTuple(owner);
    if (!self->owner) goto done;
    self->ready = 1;
    rc = 0;
done:
    Py_XDECREF(owner);
    if (rc < 0) rwkv5_model_free(m);
    return rc;
}

static void CModel_dealloc(CModelObject *self) {
    rwkv5_model_free(&self->m);
    Py_XDECREF(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(
    CModel_forward_doc,
    "forward(tokens, att_x, att_kv, ffn_x, mode, full_output, hidden=False, src=None) -> logits\n\n"
    "tokens (B, T) int32, any layout (copied and checked against the vocabulary: B * T <= 2**30 - "
    "1);\n"
    "att_x, ffn_x (B, L, C) and att_kv (B, L, H, N, N) float32, updated in place;\n"
    "or, with src = (att_x, att_kv, ffn_x) C-contiguous float32 of the same shapes or without the "
    "B\n"
    "axis (one state for every sequence), read from src and written to the arrays, which need no\n"
    "initial values (src is not modified);\n"
    "mode 0 recurrent / 1 parallel. Returns float32 logits (B, T, V) or (B, V); with hidden=True\n"
    "the final hidden states LN(x; ln_out) instead, (B, T, C) or (B, C). Releases the GIL.");

static PyObject *CModel_forward(CModelObject *self, PyObject *args) {
    PyObject *otok, *oax, *okv, *ofx, *osrc = Py_None, *result = NULL;
    PyArrayObject *logits = NULL;   /* owned until returned */
    PyArrayObject *ids_copy = NULL; /* owned: the private copy of the tokens the C code reads */
    int mode, full, want_hidden = 0;
    char err[256] = "";
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "CModel is not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOip|pO", &otok, &oax, &okv, &ofx, &mode, &full, &want_hidden,
                          &osrc))
        return NULL;
    const rwkv5_config *c = &self->m.cfg;
    npy_intp dt[2] = {-1, -1};
    PyArrayObject *tok = check_array(otok, "tokens", NPY_INT32, 2, dt, ANY_LAYOUT);
    if (!tok) return NULL;
    npy_intp B = PyArray_DIM(tok, 0), T = PyArray_DIM(tok, 1);
    if (B < 1 || T < 1) {
        PyErr_Format(PyExc_ValueError, "tokens: need shape (B, T) with B, T >= 1, got (%ld, %ld)",
                     (long)B, (long)T);
        return NULL;
    }
    if (B > MAX_POSITIONS / T) {
        PyErr_Format(PyExc_ValueError,
                     "tokens: shape (%ld, %ld) has %lld positions, more than the %ld (2**30 - 1) "
                     "one call can take (split the batch or the sequence)",
                     (long)B, (long)T, (long long)B * T, (long)MAX_POSITIONS);
        return NULL;
    }
    npy_intp dx[3] = {B, c->n_layer, c->n_embd};
    npy_intp dkv[5] = {B, c->n_layer, c->n_head, c->head_size, c->head_size};
    PyArrayObject *ax = check_array(oax, "new state.att_x", NPY_FLOAT32, 3, dx, WRITE);
    PyArrayObject *kv =
        ax ? check_array(okv, "new state.att_kv", NPY_FLOAT32, 5, dkv, WRITE) : NULL;
    PyArrayObject *fx = kv ? check_array(ofx, "new state.ffn_x", NPY_FLOAT32, 3, dx, WRITE) : NULL;
    if (!fx) return NULL;
    rwkv5_state st = {.att_x = (float *)PyArray_DATA(ax),
                      .att_kv = (float *)PyArray_DATA(kv),
                      .ffn_x = (float *)PyArray_DATA(fx)};
    if (osrc != Py_None) { /* the caller's state: batched (B, ...) or one sequence's (...) */
        if (!PyTuple_Check(osrc) || PyTuple_GET_SIZE(osrc) != 3) {
            PyErr_SetString(PyExc_TypeError,
                            "src: expected a tuple (att_x, att_kv, ffn_x) or None");
            return NULL;
        }
        PyObject *o0 = PyTuple_GET_ITEM(osrc, 0);
        st.src_batched = PyArray_Check(o0) && PyArray_NDIM((PyArrayObject *)o0) == 3;
        int k = st.src_batched ? 0 : 1; /* without the leading B axis */
        PyArrayObject *sx = check_array(o0, "state.att_x", NPY_FLOAT32, 3 - k, dx + k, 0);
        PyArrayObject *skv = sx ? check_array(PyTuple_GET_ITEM(osrc, 1), "state.att_kv",
                                              NPY_FLOAT32, 5 - k, dkv + k, 0)
                                : NULL;
        PyArrayObject *sfx = skv ? check_array(PyTuple_GET_ITEM(osrc, 2), "state.ffn_x",
                                               NPY_FLOAT32, 3 - k, dx + k, 0)
                                 : NULL;
        if (!sfx) return NULL;
        /* Read in place with the GIL released: another thread writing to these arrays meanwhile
         * changes float values only (a wrong but defined result); the tuple, held by the caller,
         * keeps them alive. */
        st.src_att_x = PyArray_DATA(sx);
        st.src_att_kv = PyArray_DATA(skv);
        st.src_ffn_x = PyArray_DATA(sfx);
    }
    /* The ids index the embedding, so they are copied and checked here, with the GIL held: the C
     * code reads only this copy, which no other thread can change between the check and the read.
     */
    size_t n_ids = (size_t)B * (size_t)T;
    ids_copy = (PyArrayObject *)PyArray_NewCopy(
        tok, NPY_CORDER); /* C-contiguous, aligned, any input layout */
    if (!ids_copy) goto done;
    const int32_t *ids = PyArray_DATA(ids_copy);
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= c->n_vocab) {
            PyErr_Format(PyExc_ValueError,
                         "tokens[%ld, %ld] = %d is outside the vocabulary [0, %d)", (long)(i / T),
                         (long)(i % T), (int)ids[i], c->n_vocab);
            goto done;
        }
    npy_intp width = want_hidden ? c->n_embd : c->n_vocab;
    npy_intp dl3[3] = {B, T, width}, dl2[2] = {B, width};
    logits = (PyArrayObject *)(full ? PyArray_SimpleNew(3, dl3, NPY_FLOAT32)
                                    : PyArray_SimpleNew(2, dl2, NPY_FLOAT32));
    if (!logits) goto done;
    float *out = (float *)PyArray_DATA(logits);
    forward_call call = {&self->m,
                         ids,
                         (int)B,
                         (int)T,
                         mode,
                         full,
                         &st,
                         want_hidden ? NULL : out,
                         want_hidden ? out : NULL,
                         err,
                         sizeof err,
                         0,
                         0,
                         0};
    st.cancel = &call.cancel;
    if (forward_is_long(c, B, T) || test_signal_after_forward) {
        Py_BEGIN_ALLOW_THREADS rwkv5_run_polled(forward_work, &call, forward_poll, &call, POLL_MS);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS forward_work(&call);
        Py_END_ALLOW_THREADS
    }
    /* A poll that ran a signal handler which raised (KeyboardInterrupt) decides the outcome, even
     * when the forward had passed its last cancel check and finished: that exception is raised and
     * the result dropped (returning one with an exception set is a SystemError). */
    if (PyErr_Occurred()) goto done;
    if (call.rc != RWKV5_OK) {
        raise_core(call.rc, err);
        goto done;
    }
    result = (PyObject *)logits;
    logits = NULL;
done:
    Py_XDECREF(logits);
    Py_XDECREF(ids_copy);
    return result;
}

static PyObject *CModel_nbytes(CModelObject *self, PyObject *Py_UNUSED(ignored)) {
    /* bytes of the owned power table (the weights are borrowed) */
    if (!self->ready) return PyLong_FromLong(0);
    const rwkv5_config *c = &self->m.cfg;
    return PyLong_FromSize_t((size_t)c->n_layer * (RWKV5_CHUNK + 1) * c->n_head * c->head_size *
                             sizeof(float));
}

static PyMethodDef CModel_methods[] = {
    {"forward", (PyCFunction)CModel_forward, METH_VARARGS, CModel_forward_doc},
    {"owned_nbytes", (PyCFunction)CModel_nbytes, METH_NOARGS,
     "Bytes owned by the C model (power table)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rwkv5._model.CModel",
    .tp_basicsize = sizeof(CModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CModel(config, params): the C forward pass over borrowed NumPy weights.\n\n"
              "config = (n_layer, n_embd, n_head, head_size, n_ffn, vocab, has_gate, gn_eps); "
              "params: dict of\n"
              "full name -> array for every row of PARAMS the config needs (see rwkv5/model.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CModel_init,
    .tp_dealloc = (destructor)CModel_dealloc,
    .tp_methods = CModel_methods,
};

/* ---------------------------------------------------------------------------------------------
 * Kernels as functions (rwkv5.ops wraps these; inputs already float32 C-contiguous). */

static PyObject *py_layer_norm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *ow, *ob, *result = NULL;
    double eps;
    int group = 0; /* n_groups; 0 = LayerNorm */
    if (!PyArg_ParseTuple(args, "OOOd|i", &ox, &ow, &ob, &eps, &group)) return NULL;
    npy_intp any2[2] = {-1, -1};
    PyArrayObject *x = check_array(ox, "x", NPY_FLOAT32, 2, any2, 0);
    if (!x) return NULL;
    npy_intp rows = PyArray_DIM(x, 0), n = PyArray_DIM(x, 1);
    npy_intp dn[1] = {n};
    PyArrayObject *w = check_array(ow, "weight", NPY_FLOAT32, 1, dn, 0);
    PyArrayObject *b = w ? check_array(ob, "bias", NPY_FLOAT32, 1, dn, 0) : NULL;
    if (!b) return NULL;
    if (n < 1 || n > INT32_MAX || (group && (group < 1 || n % group))) {
        PyErr_Format(PyExc_ValueError, "x: last axis %ld must be >= 1 and divisible by n_groups=%d",
                     (long)n, group);
        return NULL;
    }
    if (!(eps > 0)) {
        PyErr_Format(PyExc_ValueError, "eps must be > 0, got %g", eps);
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(x), NPY_FLOAT32);
    if (!out) return NULL;
    const float *px = PyArray_DATA(x), *pw = PyArray_DATA(w), *pb = PyArray_DATA(b);
    float *po = PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS for (npy_intp r = 0; r < rows; r++) {
        if (group)
            rwkv5_group_norm(po + r * n, px + r * n, pw, pb, (int)n, group, (float)eps);
        else
            rwkv5_layer_norm(po + r * n, px + r * n, pw, pb, (int)n, (float)eps);
    }
    Py_END_ALLOW_THREADS result = (PyObject *)out;
    return result;
}

static PyObject *py_wkv5(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *or_, *ok, *ov, *ow, *ou, *os;
    PyArrayObject *y = NULL, *S = NULL;
    PyObject *result = NULL;
    int mode, rc;
    if (!PyArg_ParseTuple(args, "OOOOOOi", &or_, &ok, &ov, &ow, &ou, &os, &mode)) return NULL;
    npy_intp any3[3] = {-1, -1, -1};
    PyArrayObject *r = check_array(or_, "r", NPY_FLOAT32, 3, any3, 0);
    if (!r) return NULL;
    npy_intp T = PyArray_DIM(r, 0), H = PyArray_DIM(r, 1), N = PyArray_DIM(r, 2);
    npy_intp d3[3] = {T, H, N}, dhn[2] = {H, N}, ds[3] = {H, N, N};
    PyArrayObject *k = check_array(ok, "k", NPY_FLOAT32, 3, d3, 0);
    PyArrayObject *v = k ? check_array(ov, "v", NPY_FLOAT32, 3, d3, 0) : NULL;
    PyArrayObject *w = v ? check_array(ow, "w", NPY_FLOAT32, 2, dhn, 0) : NULL;
    PyArrayObject *u = w ? check_array(ou, "u", NPY_FLOAT32, 2, dhn, 0) : NULL;
    PyArrayObject *s0 = u ? check_array(os, "state", NPY_FLOAT32, 3, ds, 0) : NULL;
    if (!s0) return NULL;
    if (T < 1 || H < 1 || N < 1 || H * N > INT32_MAX / (RWKV5_CHUNK + 1)) {
        PyErr_Format(PyExc_ValueError, "r: need T, H, N >= 1, got (%ld, %ld, %ld)", (long)T,
                     (long)H, (long)N);
        return NULL;
    }
    y = (PyArrayObject *)PyArray_SimpleNew(3, d3, NPY_FLOAT32);
    S = (PyArrayObject *)PyArray_NewCopy(s0, NPY_CORDER);
    if (!y || !S) goto done;
    const float *pr = PyArray_DATA(r), *pk = PyArray_DATA(k), *pv = PyArray_DATA(v),
                *pw = PyArray_DATA(w), *pu = PyArray_DATA(u);
    float *py = PyArray_DATA(y), *pS = PyArray_DATA(S);
    Py_BEGIN_ALLOW_THREADS rc =
        rwkv5_wkv(py, pS, pr, pk, pv, pw, pu, (size_t)T, (int)H, (int)N,
                  mode == RWKV5_PARALLEL ? RWKV5_PARALLEL : RWKV5_RECURRENT);
    Py_END_ALLOW_THREADS if (rc != RWKV5_OK) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_BuildValue("(OO)", y, S);
done:
    Py_XDECREF(y);
    Py_XDECREF(S);
    return result;
}

/* _matmul(x (M, n) float32, w, isa, gemm=0, rows=-1) -> x @ w.T; w a matrix as take_mat takes it,
 * (dtype, data[, scale]); when data is blocked (4-d) its number of rows is given as rows.
 * isa -1 = the current ISA, threaded; 0..3 = that ISA (clamped to the CPU):
 * with gemm=0 the single-threaded row kernels, with gemm=1 the blocked GEMM (threaded; scalar ISA
 * has none and uses the row kernels). For the kernel tests. */
static PyObject *py_matmul(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ox, *ow, *owner = NULL, *result = NULL;
    int isa, gemm = 0, rows_given = -1, rc = RWKV5_OK;
    float *ws = NULL;
    if (!PyArg_ParseTuple(args, "OOi|pi", &ox, &ow, &isa, &gemm, &rows_given)) return NULL;
    npy_intp any2[2] = {-1, -1};
    PyArrayObject *x = check_array(ox, "x", NPY_FLOAT32, 2, any2, 0);
    if (!x) return NULL;
    PyObject *oq = PyTuple_Check(ow) && PyTuple_GET_SIZE(ow) >= 2 ? PyTuple_GET_ITEM(ow, 1) : NULL;
    if (!oq || !PyArray_Check(oq))
        return PyErr_Format(PyExc_TypeError,
                            "w: expected a tuple (dtype, array) or (dtype, array, scale)");
    npy_intp M = PyArray_DIM(x, 0), n = PyArray_DIM(x, 1),
             d = PyArray_NDIM((PyArrayObject *)oq) == 2 ? PyArray_DIM((PyArrayObject *)oq, 0) : -1;
    if (PyArray_NDIM((PyArrayObject *)oq) == 4) { /* blocked: the number of rows is given */
        if (rows_given < 0)
            return PyErr_Format(PyExc_ValueError, "w: a blocked matrix needs rows=");
        d = rows_given;
    }
    if (M > INT32_MAX || n > INT32_MAX || d > INT32_MAX)
        return PyErr_Format(PyExc_ValueError, "too large");
    if (d < 0)
        return PyErr_Format(PyExc_ValueError, "w: expected a 2-d array (or a 4-d blocked one)");
    rwkv5_mat mat;
    if (!(owner = PyList_New(0))) return NULL;
    if (take_mat(owner, ow, "w", (int)d, (int)n, &mat) < 0) goto done;
    npy_intp dout[2] = {M, d};
    PyArrayObject *out = (PyArrayObject *)PyArray_ZEROS(2, dout, NPY_FLOAT32, 0);
    if (!out) goto done;
    size_t need = gemm ? rwkv5_gemm_ws_floats((int)M, (int)n, (int)d) : 0;
    if (need && !(ws = (float *)malloc(need * sizeof(float)))) {
        Py_DECREF(out);
        PyErr_NoMemory();
        goto done;
    }
    float *po = PyArray_DATA(out);
    const float *px = PyArray_DATA(x);
    Py_BEGIN_ALLOW_THREADS if (isa < 0) rc = rwkv5_matmul(po, px, &mat, (int)M);
    else {
        rwkv5_isa keep = rwkv5_cpu_isa();
        int use = rwkv5_set_isa((rwkv5_isa)isa);
        rwkv5_set_isa(keep);
        if (n > 0 && M > 0) {
            if (gemm)
                rc = rwkv5_matmul_ws(use, 1, po, px, &mat, (int)M, ws, need);
            else
                rc = rwkv5_matmul_rows_isa(use, po, px, &mat, (int)M, 0, (int)d);
        }
    }
    Py_END_ALLOW_THREADS if (rc !=
                             RWKV5_OK) { /* take_mat only makes known storage types: not reached */
        Py_DECREF(out);
        PyErr_Format(PyExc_ValueError, "w: storage type %d is not supported", mat.dtype);
        goto done;
    }
    result = (PyObject *)out;
done:
    free(ws);
    Py_XDECREF(owner);
    return result;
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 256)
        return PyErr_Format(PyExc_ValueError, "n must be in [1, 256], got %ld", n);
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = rwkv5_set_num_threads((int)n);
    Py_END_ALLOW_THREADS if (rc != 0) return PyErr_Format(PyExc_OSError,
                                                          "could not start %ld threads", n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    (void)self;
    int n;
    Py_BEGIN_ALLOW_THREADS n = rwkv5_get_num_threads();
    Py_END_ALLOW_THREADS return PyLong_FromLong(n);
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) return NULL;
    if (v < 0 || v > 3)
        return PyErr_Format(PyExc_ValueError,
                            "isa must be 0 (scalar), 1 (avx2), 2 (avx512) or 3 (avx512_vnni)");
    return PyUnicode_FromString(rwkv5_isa_name(rwkv5_set_isa((rwkv5_isa)v)));
}

static PyObject *py_get_isa(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    (void)self;
    return Py_BuildValue("(ss)", rwkv5_isa_name(rwkv5_cpu_isa()),
                         rwkv5_isa_name(rwkv5_cpu_isa_supported()));
}

/* dequantize_ggml(blocks uint8 (nblocks * block bytes,), kind, out float32 (nblocks * 32,)) -> -1,
 * or the index of the first block with a non-finite d or m (rwkv5/formats/rwkvcpp.py names it). */
static PyObject *py_dequantize_ggml(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ob, *oo;
    int kind;
    if (!PyArg_ParseTuple(args, "OiO", &ob, &kind, &oo)) return NULL;
    const int bytes = rwkv5_ggml_block_bytes(kind);
    if (!bytes) return PyErr_Format(PyExc_ValueError, "kind: unknown ggml block format %d", kind);
    npy_intp any1[1] = {-1};
    PyArrayObject *blocks = check_array(ob, "blocks", NPY_UINT8, 1, any1, UNALIGNED_OK);
    if (!blocks) return NULL;
    const npy_intp n = PyArray_DIM(blocks, 0) / bytes;
    if (PyArray_DIM(blocks, 0) != n * bytes)
        return PyErr_Format(PyExc_ValueError,
                            "blocks: %ld bytes are not a whole number of %d-byte blocks",
                            (long)PyArray_DIM(blocks, 0), bytes);
    npy_intp want[1] = {n * RWKV5_QK};
    PyArrayObject *out = check_array(oo, "out", NPY_FLOAT32, 1, want, WRITE);
    if (!out) return NULL;
    const void *pb = PyArray_DATA(blocks);
    float *po = (float *)PyArray_DATA(out);
    int64_t bad;
    Py_BEGIN_ALLOW_THREADS bad = rwkv5_ggml_dequantize_threads(po, pb, (int64_t)n, kind);
    Py_END_ALLOW_THREADS return PyLong_FromLongLong((long long)bad);
}

/* quantize_int8 / block_copy: a conversion of one matrix run on the thread pool, from a helper
 * thread polled for Ctrl-C (common/polled.h) when it is large. */
typedef struct {
    int kind; /* 0: quantize_int8, 1: block_copy, 2: quantize_int4 */
    void *dst;
    float *scale;
    const void *src;
    int src_type, esz, blocked;
    int64_t rows, cols, rc;
    volatile int cancel;
    int why; /* quantize_int4: why row rc could not be quantised */
} convert_call;

static void convert_work(void *p) {
    convert_call *c = p;
    c->rc = c->kind == 0   ? rwkv5_quantize_int8(c->dst, c->scale, c->src, c->src_type, c->rows,
                                                 c->cols, c->blocked, &c->cancel)
            : c->kind == 2 ? rwkv5_quantize_int4(c->dst, c->src, c->src_type, c->rows, c->cols,
                                                 &c->why, &c->cancel)
                           : rwkv5_block_copy(c->dst, c->src, c->esz, c->rows, c->cols, &c->cancel);
}

static int convert_poll(void *p) {
    convert_call *c = p;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() < 0; /* leaves the exception (e.g. KeyboardInterrupt) set */
    PyGILState_Release(g);
    if (stop) c->cancel = 1;
    return stop;
}

static void convert_run(convert_call *c) {
    Py_BEGIN_ALLOW_THREADS if ((double)c->rows * (double)c->cols > (double)(1 << 22))
        rwkv5_run_polled(convert_work, c, convert_poll, c, POLL_MS);
    else convert_work(c);
    Py_END_ALLOW_THREADS
}

/* The source matrix of a conversion: a C-contiguous 2-d array (any alignment); its float type. */
static PyArrayObject *check_source(PyObject *obj, int *src_type) {
    npy_intp any2[2] = {-1, -1};
    if (!PyArray_Check(obj))
        return (PyArrayObject *)PyErr_Format(
            PyExc_TypeError, "src: expected a numpy.ndarray, got %s", Py_TYPE(obj)->tp_name);
    int t = PyArray_TYPE((PyArrayObject *)obj);
    *src_type = t == NPY_FLOAT32   ? RWKV5_SRC_F32
                : t == NPY_FLOAT16 ? RWKV5_SRC_F16
                : t == NPY_UINT16  ? RWKV5_SRC_BF16
                : t == NPY_FLOAT64 ? RWKV5_SRC_F64
                                   : -1;
    if (*src_type < 0)
        return (PyArrayObject *)PyErr_Format(PyExc_TypeError,
                                             "src: expected float32, float16, float64 or uint16 "
                                             "(bfloat16 bits), got %s",
                                             PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name);
    return check_array(obj, "src", t, 2, any2, UNALIGNED_OK);
}

/* The shape of the 4-row blocked layout of a (rows, cols) matrix of esz-byte elements. */
static void blocked_dims(npy_intp *d4, npy_intp rows, npy_intp cols, int esz) {
    npy_intp e = 64 / esz;
    d4[0] = (rows + 3) / 4, d4[1] = (cols + e - 1) / e, d4[2] = 4, d4[3] = e;
}

/* quantize_int8(src (rows, cols) float, q int8 (rows, cols) or blocked, scale float32 (rows,)) ->
 * -1, or the first row with a non-finite value. */
static PyObject *py_quantize_int8(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *os, *oq, *osc;
    if (!PyArg_ParseTuple(args, "OOO", &os, &oq, &osc)) return NULL;
    int st;
    PyArrayObject *src = check_source(os, &st);
    if (!src) return NULL;
    npy_intp rows = PyArray_DIM(src, 0), cols = PyArray_DIM(src, 1), d2[2] = {rows, cols}, d4[4],
             dr[1] = {rows};
    int blocked = PyArray_Check(oq) && PyArray_NDIM((PyArrayObject *)oq) == 4;
    blocked_dims(d4, rows, cols, 1);
    PyArrayObject *q = check_array(oq, "q", NPY_INT8, blocked ? 4 : 2, blocked ? d4 : d2, WRITE);
    PyArrayObject *sc = q ? check_array(osc, "scale", NPY_FLOAT32, 1, dr, WRITE) : NULL;
    if (!sc) return NULL;
    convert_call c = {
        0, PyArray_DATA(q), PyArray_DATA(sc), PyArray_DATA(src), st, 1, blocked, rows, cols, -1, 0,
        0};
    convert_run(&c);
    if (PyErr_Occurred()) return NULL; /* KeyboardInterrupt from the poll */
    if (c.rc == -3) return PyErr_NoMemory();
    if (c.rc == -2) return PyErr_Format(PyExc_RuntimeError, "quantize_int8: cancelled");
    return PyLong_FromLongLong((long long)c.rc);
}

/* quantize_int4(src (rows, cols) float, blocks uint8 (rows, ceil(cols/64) * 36)) -> (-1, 0) when
 * done, or (the first row that could not be quantised, 1: a non-finite value / 2: a group scale
 * beyond fp16). */
static PyObject *py_quantize_int4(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *os, *ob;
    if (!PyArg_ParseTuple(args, "OO", &os, &ob)) return NULL;
    int st;
    PyArrayObject *src = check_source(os, &st);
    if (!src) return NULL;
    npy_intp rows = PyArray_DIM(src, 0), cols = PyArray_DIM(src, 1),
             d2[2] = {rows, (npy_intp)rwkv5_row_bytes(RWKV5_I4, (size_t)cols)};
    PyArrayObject *b = check_array(ob, "blocks", NPY_UINT8, 2, d2, WRITE);
    if (!b) return NULL;
    convert_call c = {2, PyArray_DATA(b), NULL, PyArray_DATA(src), st, 1, 0, rows, cols, -1, 0, 0};
    convert_run(&c);
    if (PyErr_Occurred()) return NULL;
    if (c.rc == -3) return PyErr_NoMemory();
    if (c.rc == -2) return PyErr_Format(PyExc_RuntimeError, "quantize_int4: cancelled");
    return Py_BuildValue("(Li)", (long long)c.rc, c.why);
}

/* block_copy(src (rows, cols), out (ceil(rows/4), ceil(cols/E), 4, E) of the same dtype, zeroed) ->
 * None */
static PyObject *py_block_copy(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *os, *oo;
    npy_intp any2[2] = {-1, -1}, d4[4];
    if (!PyArg_ParseTuple(args, "OO", &os, &oo)) return NULL;
    if (!PyArray_Check(os))
        return PyErr_Format(PyExc_TypeError, "src: expected a numpy.ndarray, got %s",
                            Py_TYPE(os)->tp_name);
    int t = PyArray_TYPE((PyArrayObject *)os), esz = (int)PyArray_ITEMSIZE((PyArrayObject *)os);
    if (!PyArray_ISNUMBER((PyArrayObject *)os) || (esz != 1 && esz != 2 && esz != 4))
        return PyErr_Format(PyExc_TypeError,
                            "src: expected numeric elements of 1, 2 or 4 bytes, got %s",
                            PyArray_DESCR((PyArrayObject *)os)->typeobj->tp_name);
    PyArrayObject *src = check_array(os, "src", t, 2, any2, UNALIGNED_OK);
    if (!src) return NULL;
    blocked_dims(d4, PyArray_DIM(src, 0), PyArray_DIM(src, 1), esz);
    PyArrayObject *out = check_array(oo, "out", t, 4, d4, WRITE);
    if (!out) return NULL;
    convert_call c = {1,
                      PyArray_DATA(out),
                      NULL,
                      PyArray_DATA(src),
                      0,
                      esz,
                      1,
                      PyArray_DIM(src, 0),
                      PyArray_DIM(src, 1),
                      0,
                      0,
                      0};
    convert_run(&c);
    if (PyErr_Occurred()) return NULL;
    if (c.rc == -2) return PyErr_Format(PyExc_RuntimeError, "block_copy: cancelled");
    Py_RETURN_NONE;
}

static PyObject *py_test_signal_after_forward(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    test_signal_after_forward = on;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"dequantize_ggml", py_dequantize_ggml, METH_VARARGS,
     "dequantize_ggml(blocks uint8, kind, out float32) -> -1, or the first block with a non-finite "
     "scale"},
    {"quantize_int8", py_quantize_int8, METH_VARARGS,
     "quantize_int8(src (rows, cols) float, q int8 (rows, cols) or blocked, scale float32 (rows,)) "
     "-> -1, or the "
     "first row with a non-finite value (all threads, GIL released)"},
    {"quantize_int4", py_quantize_int4, METH_VARARGS,
     "quantize_int4(src (rows, cols) float, blocks uint8 (rows, ceil(cols/64) * 36)) -> (-1, 0), "
     "or "
     "(the first row that could not be quantised, 1: non-finite / 2: scale beyond fp16) (all "
     "threads, GIL released)"},
    {"block_copy", py_block_copy, METH_VARARGS,
     "block_copy(src (rows, cols), out zeroed 4-row blocked array of its dtype): the blocked "
     "layout (all threads)"},
    {"layer_norm", py_layer_norm, METH_VARARGS,
     "layer_norm(x (R, n) f32, weight (n,), bias (n,), eps[, n_groups]) -> LayerNorm or GroupNorm "
     "rows"},
    {"wkv5", py_wkv5, METH_VARARGS,
     "wkv5(r, k, v (T,H,N), w, u (H,N), state (H,N,N), mode) -> (y, new_state)"},
    {"_matmul", py_matmul, METH_VARARGS,
     "_matmul(x, w, isa, gemm=False, rows=-1) -> x @ w.T (tests)"},
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n): size of the C thread pool"},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"_set_isa", py_set_isa, METH_O,
     "_set_isa(0|1|2|3) -> name of the ISA now used by the kernels (tests)"},
    {"_test_signal_after_forward", py_test_signal_after_forward, METH_O,
     "_test_signal_after_forward(on): every forward call polls for signals and sends SIGINT after "
     "its last "
     "cancel check (tests)"},
    {"get_isa", py_get_isa, METH_NOARGS, "get_isa() -> (ISA in use, best ISA of this CPU)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "rwkv5._model",
    "rwkv5 model core (C).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

/* PARAMS: the parameter table as a tuple of (name, per_layer, kind, shape, gate_only), kind one of
 * "matrix", "vector", "decay", "bonus" and shape a tuple of "C", "A", "F", "V" (new reference). */
static PyObject *params_table(void) {
    static const char *kinds[] = {"matrix", "vector", "decay", "bonus"};
    static const char *dims[] = {"", "C", "A", "F", "V"};
    PyObject *out = PyTuple_New(rwkv5_n_params);
    for (int i = 0; out && i < rwkv5_n_params; i++) {
        const rwkv5_param *p = &rwkv5_params[i];
        PyObject *row =
            p->kind == RWKV5_PARAM_MATRIX
                ? Py_BuildValue("(sNs(ss)N)", p->name, PyBool_FromLong(p->per_layer),
                                kinds[p->kind], dims[p->dims[0]], dims[p->dims[1]],
                                PyBool_FromLong(p->gate_only))
                : Py_BuildValue("(sNs(s)N)", p->name, PyBool_FromLong(p->per_layer), kinds[p->kind],
                                dims[p->dims[0]], PyBool_FromLong(p->gate_only));
        if (!row)
            Py_CLEAR(out);
        else
            PyTuple_SET_ITEM(out, i, row); /* steals row */
    }
    return out;
}

/* _model.DTYPES: the storage types of matrices, rwkv5_dtypes in order, as (name, element bytes,
 * has row scales) tuples; a matrix handed to CModel or _matmul is tagged with one of the names. */
static int add_dtypes(PyObject *mod) {
    PyObject *t = PyTuple_New(RWKV5_N_DTYPES);
    if (!t) return -1;
    for (int i = 0; i < RWKV5_N_DTYPES; i++) {
        PyObject *row = Py_BuildValue("(siO)", rwkv5_dtypes[i].name, rwkv5_dtypes[i].elem_bytes,
                                      rwkv5_dtypes[i].row_scale ? Py_True : Py_False);
        if (!row) {
            Py_DECREF(t);
            return -1;
        }
        PyTuple_SET_ITEM(t, i, row);
    }
    if (PyModule_AddObject(mod, "DTYPES", t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__model(void) {
    import_array();
    if (PyType_Ready(&CModelType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&moduledef);
    if (!mod) return NULL;
    PyObject *params = params_table();
    if (!params || PyModule_AddObject(mod, "PARAMS", params) < 0) { /* steals params on success */
        Py_XDECREF(params);
        Py_DECREF(mod);
        return NULL;
    }
    Py_INCREF(&CModelType);
    if (PyModule_AddObject(mod, "CModel", (PyObject *)&CModelType) < 0 ||
        PyModule_AddIntConstant(mod, "CHUNK", RWKV5_CHUNK) < 0 || add_dtypes(mod) < 0) {
        Py_DECREF(&CModelType);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
