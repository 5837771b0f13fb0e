/* Python binding for the tokenizer core: the only file of this extension that includes Python.h.
 *
 * One type, `Core`, owns a wt_tokenizer (immutable, shared by any number of threads) and a cache
 * of the Python ints 0..n_vocab-1 so that building a list of ids is an INCREF per id instead
 * of an allocation per id. The Python class rwkv5.tokenizer.WorldTokenizer wraps it.
 *
 * Every method follows the same shape: parse -> validate -> acquire buffers (holding references
 * to the objects that own them) -> release the GIL -> compute -> reacquire -> build the result
 * -> one cleanup label.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer/world_tokenizer.h"

#define INT_CACHE_MAX     (1u << 20)         /* cache Python ints for vocabs up to this many ids */
#define BATCH_CHUNK_BYTES ((size_t)4 << 20)  /* input bytes per round of encode_batch */
#define SMALL_ROUND_BYTES ((size_t)64 << 10) /* below this a round runs on the calling thread */
#define BIG_TEXT_BYTES    ((size_t)4 << 20)  /* texts this large are split across threads */

enum { ERR_STRICT = 0, ERR_REPLACE = 1, ERR_IGNORE = 2 };
static const uint8_t REPLACEMENT_UTF8[3] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */

typedef struct {
    PyObject_HEAD wt_tokenizer *tok; /* owned */
    PyObject **ints; /* owned refs to ints 0..n_vocab-1, or NULL (large custom vocab) */
    uint32_t n_ints;
} CoreObject;

/* ---- text arguments ---------------------------------------------------------------------- */

/* UTF-8 bytes of a str (PyUnicode_AsUTF8AndSize: no copy for ASCII/cached strings), or the bytes
 * of a bytes object, or a copy of the bytes of another bytes-like object (bytearray, memoryview,
 * mmap, a uint8 array: one-byte items). `owner` receives a new reference that keeps the bytes
 * alive. str and bytes cannot change; any other buffer could be written (or a bytearray resized)
 * by another thread while the GIL is released, so it is copied first. A buffer of wider items
 * (an int32 array of ids, say) is not text: TypeError. Lone surrogates in a str raise
 * UnicodeEncodeError naming the position (the reference tokenizer does the same:
 * str.encode("utf-8")). */
typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    PyObject *owner;
} text_ref;

static int not_text(PyObject *o, const char *what, Py_ssize_t index, const char *detail) {
    char where[64];
    if (index >= 0)
        snprintf(where, sizeof where, "%s[%zd]", what, index);
    else
        snprintf(where, sizeof where, "%s", what);
    PyErr_Format(PyExc_TypeError, "%s must be str or bytes-like, not %.100s%s", where,
                 Py_TYPE(o)->tp_name, detail);
    return -1;
}

static int text_get(PyObject *o, text_ref *t, const char *what, Py_ssize_t index) {
    memset(t, 0, sizeof *t);
    if (PyUnicode_Check(o)) {
        const char *s = PyUnicode_AsUTF8AndSize(o, &t->n);
        if (!s) return -1;
        t->p = (const uint8_t *)s;
        Py_INCREF(o);
        t->owner = o;
    } else if (PyBytes_Check(o)) {
        t->p = (const uint8_t *)PyBytes_AS_STRING(o);
        t->n = PyBytes_GET_SIZE(o);
        Py_INCREF(o);
        t->owner = o;
    } else if (PyObject_CheckBuffer(o)) {
        Py_buffer v;
        if (PyObject_GetBuffer(o, &v, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return -1;
        const char *f = v.format ? v.format : "B";
        if (*f == '@' || *f == '=' || *f == '<' || *f == '>' || *f == '!') f++;
        int bytes_like =
            v.itemsize == 1 && (strcmp(f, "B") == 0 || strcmp(f, "b") == 0 || strcmp(f, "c") == 0);
        if (!bytes_like) {
            char detail[64];
            snprintf(detail, sizeof detail,
                     " (items of format '%.20s'; token ids are decoded with decode())",
                     v.format ? v.format : "?");
            PyBuffer_Release(&v);
            return not_text(o, what, index, detail);
        }
        t->owner = PyBytes_FromStringAndSize(v.buf, v.len); /* a private copy: see above */
        PyBuffer_Release(&v);
        if (!t->owner) return -1;
        t->p = (const uint8_t *)PyBytes_AS_STRING(t->owner);
        t->n = PyBytes_GET_SIZE(t->owner);
    } else {
        return not_text(o, what, index, "");
    }
    return 0;
}

static void text_release(text_ref *t) { Py_CLEAR(t->owner); }

/* ---- ids -> Python ------------------------------------------------------------------------ */

static PyObject *ids_to_list(CoreObject *self, const uint32_t *ids, size_t n) {
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    if (self->ints) {
        for (size_t i = 0; i < n; i++) {
            PyObject *v = self->ints[ids[i]]; /* ids come from the vocab: < n_vocab */
            Py_INCREF(v);
            PyList_SET_ITEM(list, (Py_ssize_t)i, v);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            PyObject *v = PyLong_FromUnsignedLong(ids[i]);
            if (!v) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, (Py_ssize_t)i, v);
        }
    }
    return list;
}

/* The CPUs this process may run on (Linux: its affinity mask; elsewhere, e.g. macOS, which has no
 * sched_getaffinity: the CPUs online). */
static int default_threads(void) {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n >= 1) return n > 256 ? 256 : n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

static int parse_threads(PyObject *arg, int *out) {
    if (arg == NULL || arg == Py_None) {
        *out = default_threads();
        return 0;
    }
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "num_threads must be an int or None, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 1 || v > 256) {
        PyErr_Format(PyExc_ValueError, "num_threads must be between 1 and 256, got %ld", v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* ---- Core ---------------------------------------------------------------------------------- */

static void Core_dealloc(CoreObject *self) {
    if (self->ints) {
        for (uint32_t i = 0; i < self->n_ints; i++) Py_XDECREF(self->ints[i]);
        PyMem_Free(self->ints);
    }
    wt_free(self->tok);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", NULL};
    PyObject *arg, *data = NULL; /* data: bytes (new reference), parsed with the GIL released */
    CoreObject *self = NULL;
    char err[512] = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Core", kwlist, &arg)) return NULL;
    if (PyBytes_Check(arg)) {
        data = arg;
        Py_INCREF(data);
    } else if (PyObject_CheckBuffer(arg) && !PyUnicode_Check(arg)) {
        data = PyBytes_FromObject(arg); /* a copy: another thread cannot change it while we parse */
        if (!data) return NULL;
    } else {
        PyErr_Format(PyExc_TypeError, "Core() argument must be a bytes-like object, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    self = (CoreObject *)type->tp_alloc(type, 0);
    if (!self) goto fail;
    const char *buf = PyBytes_AS_STRING(data);
    size_t len = (size_t)PyBytes_GET_SIZE(data);
    Py_BEGIN_ALLOW_THREADS self->tok = wt_load(buf, len, err, sizeof err);
    Py_END_ALLOW_THREADS if (!self->tok) {
        if (strstr(err, "out of memory"))
            PyErr_NoMemory();
        else
            PyErr_SetString(PyExc_ValueError, err);
        goto fail;
    }
    uint32_t nv = wt_n_vocab(self->tok);
    if (nv <= INT_CACHE_MAX) {
        self->ints = PyMem_Calloc(nv, sizeof *self->ints);
        if (!self->ints) {
            PyErr_NoMemory();
            goto fail;
        }
        self->n_ints = nv;
        for (uint32_t i = 0; i < nv; i++)
            if (!(self->ints[i] = PyLong_FromUnsignedLong(i))) goto fail;
    }
    Py_DECREF(data);
    return (PyObject *)self;
fail:
    Py_XDECREF(data);
    Py_XDECREF(self);
    return NULL;
}

/* ---- per-thread scratch for ids ----------------------------------------------------------
 * Encoding writes up to one id per input byte before the result is built. A fresh malloc of
 * that size per call costs a page fault per 4 KiB (about 10% of the encode time for 1 MB of
 * text), so each OS thread keeps one buffer and reuses it; buffers above SCRATCH_KEEP are freed
 * after the call. A pthread key frees the buffer when its thread exits. Used with or without
 * the GIL: it is private to the calling thread. */
#define SCRATCH_KEEP ((BATCH_CHUNK_BYTES + 1) * 4) /* one batch round of uint32 ids */

typedef struct {
    void *p;
    size_t cap;
    int busy;
} scratch_buf;
static pthread_key_t scratch_key;
static int scratch_key_ok = 0;

static void scratch_destroy(void *v) {
    scratch_buf *b = v;
    if (b) {
        free(b->p);
        free(b);
    }
}

static void *scratch_get(size_t bytes) {
    scratch_buf *b = scratch_key_ok ? pthread_getspecific(scratch_key) : NULL;
    if (!b && scratch_key_ok) {
        b = calloc(1, sizeof *b);
        if (b && pthread_setspecific(scratch_key, b) != 0) {
            free(b);
            b = NULL;
        }
    }
    /* No key, or the buffer is in use by an outer call on this thread (building a list may run
     * a finalizer that encodes again): a plain allocation, freed by scratch_put. */
    if (!b || b->busy) return malloc(bytes ? bytes : 1);
    if (b->cap < bytes) {
        free(b->p);
        b->p = malloc(bytes);
        b->cap = b->p ? bytes : 0;
    }
    if (b->p) b->busy = 1;
    return b->p;
}

static void scratch_put(void *p) {
    scratch_buf *b = scratch_key_ok ? pthread_getspecific(scratch_key) : NULL;
    if (!b || b->p != p) {
        free(p);
        return;
    }
    b->busy = 0;
    if (b->cap > SCRATCH_KEEP) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

PyDoc_STRVAR(encode_doc,
             "encode(text) -> list[int]: greedy longest-match ids of str (as UTF-8) or bytes.");
static PyObject *Core_encode(CoreObject *self, PyObject *text) {
    text_ref t;
    void *ids = NULL;
    PyObject *res = NULL;
    size_t k = 0;
    int narrow = self->ints != NULL && wt_n_vocab(self->tok) <= 65536;
    if (text_get(text, &t, "text", -1) < 0) return NULL;
    ids = scratch_get(((size_t)t.n + 1) * (narrow ? 2 : 4));
    if (!ids) {
        PyErr_NoMemory();
        goto done;
    }
    if (t.n > 4096) {
        Py_BEGIN_ALLOW_THREADS k = narrow ? wt_encode_u16(self->tok, t.p, (size_t)t.n, ids)
                                          : wt_encode(self->tok, t.p, (size_t)t.n, ids);
        Py_END_ALLOW_THREADS
    } else {
        k = narrow ? wt_encode_u16(self->tok, t.p, (size_t)t.n, ids)
                   : wt_encode(self->tok, t.p, (size_t)t.n, ids);
    }
    if (narrow) { /* ids_to_list for uint16 ids (always < n_vocab <= 65536, all cached) */
        const uint16_t *v = ids;
        res = PyList_New((Py_ssize_t)k);
        if (res)
            for (size_t i = 0; i < k; i++) {
                PyObject *o = self->ints[v[i]];
                Py_INCREF(o);
                PyList_SET_ITEM(res, (Py_ssize_t)i, o);
            }
    } else {
        res = ids_to_list(self, ids, k);
    }
done:
    if (ids) scratch_put(ids);
    text_release(&t);
    return res;
}

PyDoc_STRVAR(
    encode_numpy_doc,
    "encode_numpy(text, num_threads=1) -> numpy array of ids (uint16 when n_vocab <= 65536, else "
    "uint32).\n"
    "With num_threads > 1 a long text is cut into pieces encoded concurrently and re-joined\n"
    "exactly (the result does not depend on num_threads).");
static PyObject *Core_encode_numpy(CoreObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"text", "num_threads", NULL};
    PyObject *text, *threads_arg = NULL, *arr = NULL;
    text_ref t = {0};
    void *buf = NULL;
    int nthreads;
    size_t k = 0;
    int narrow = wt_n_vocab(self->tok) <= 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:encode_numpy", kwlist, &text, &threads_arg))
        return NULL;
    if (threads_arg == NULL || threads_arg == Py_None)
        nthreads = 1;
    else if (parse_threads(threads_arg, &nthreads) < 0)
        return NULL;
    if (text_get(text, &t, "text", -1) < 0) return NULL;
    size_t n = (size_t)t.n;
    buf = scratch_get((n + 1) * (nthreads > 1 || !narrow ? 4 : 2));
    if (!buf) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS if (nthreads > 1) {
        k = wt_encode_parallel(self->tok, t.p, n, buf, nthreads);
        if (narrow && k != (size_t)-1) { /* in place: element i moves from byte 4i to byte 2i */
            const uint32_t *s32 = buf;
            uint16_t *d16 = buf;
            for (size_t i = 0; i < k; i++) d16[i] = (uint16_t)s32[i];
        }
    }
    else if (narrow) {
        k = wt_encode_u16(self->tok, t.p, n, buf);
    }
    else {
        k = wt_encode(self->tok, t.p, n, buf);
    }
    Py_END_ALLOW_THREADS if (k == (size_t)-1) {
        PyErr_NoMemory();
        goto done;
    }
    npy_intp dim = (npy_intp)k;
    arr = PyArray_SimpleNew(1, &dim, narrow ? NPY_UINT16 : NPY_UINT32);
    if (!arr) goto done;
    memcpy(PyArray_DATA((PyArrayObject *)arr), buf, k * (narrow ? 2 : 4));
done:
    if (buf) scratch_put(buf);
    text_release(&t);
    return arr;
}

PyDoc_STRVAR(encode_batch_doc, "encode_batch(texts, num_threads=None) -> list[list[int]]. The GIL "
                               "is released while C threads\n"
                               "encode; results do not depend on num_threads.");

/* encode_batch works in rounds of about BATCH_CHUNK_BYTES of input (bounded memory: 4 bytes of
 * ids per input byte), pipelined: while the worker threads encode round r, this thread (with
 * the GIL) turns round r-1's ids into lists. Two id buffers alternate. A text of
 * BIG_TEXT_BYTES or more is a round of its own, split across threads (wt_encode_parallel). */
typedef struct {
    Py_ssize_t i, j; /* texts i..j-1 */
    size_t total;    /* their bytes */
    int big;
} batch_round;

/* The texts of a batch: a new reference to the sequence in *seq and one text_ref per item (each
 * holding its own reference: the list may be changed by another thread while the GIL is
 * released, the texts stay alive), their pointers and lengths. On failure returns -1 with the
 * error set; whatever was acquired is released by batch_texts_release (*got counts the refs). */
typedef struct {
    PyObject *seq;
    Py_ssize_t count, got;
    text_ref *refs;
    const uint8_t **ptrs;
    size_t *lens, *offs, *nout;
    batch_round *rounds;
    Py_ssize_t n_rounds;
} batch_texts;

static int batch_texts_get(PyObject *texts_arg, batch_texts *b) {
    memset(b, 0, sizeof *b);
    if (PyUnicode_Check(texts_arg) || PyBytes_Check(texts_arg)) {
        PyErr_SetString(
            PyExc_TypeError,
            "texts must be a list of str or bytes, not a single str/bytes (use encode())");
        return -1;
    }
    b->seq = PySequence_Fast(texts_arg, "texts must be a list (or other iterable) of str or bytes");
    if (!b->seq) return -1;
    b->count = PySequence_Fast_GET_SIZE(b->seq);
    size_t cnt = (size_t)b->count ? (size_t)b->count : 1;
    b->refs = PyMem_Calloc(cnt, sizeof *b->refs);
    b->ptrs = PyMem_Malloc(cnt * sizeof *b->ptrs);
    b->lens = PyMem_Malloc(cnt * sizeof *b->lens);
    b->offs = PyMem_Malloc(cnt * sizeof *b->offs);
    b->nout = PyMem_Malloc(cnt * sizeof *b->nout);
    b->rounds = PyMem_Malloc(cnt * sizeof *b->rounds);
    if (!b->refs || !b->ptrs || !b->lens || !b->offs || !b->nout || !b->rounds) {
        PyErr_NoMemory();
        return -1;
    }
    for (b->got = 0; b->got < b->count; b->got++) {
        if (text_get(PySequence_Fast_GET_ITEM(b->seq, b->got), &b->refs[b->got], "texts", b->got) <
            0)
            return -1;
        b->ptrs[b->got] = b->refs[b->got].p;
        b->lens[b->got] = (size_t)b->refs[b->got].n;
    }
    /* plan the rounds; offs[] is relative to the round */
    for (Py_ssize_t i = 0; i < b->count;) {
        batch_round r = {i, i, 0, b->lens[i] >= BIG_TEXT_BYTES};
        if (r.big) {
            b->offs[i] = 0;
            r.total = b->lens[i];
            r.j = i + 1;
        } else {
            while (r.j < b->count && b->lens[r.j] < BIG_TEXT_BYTES &&
                   (r.j == i || r.total + b->lens[r.j] <= BATCH_CHUNK_BYTES)) {
                b->offs[r.j] = r.total;
                r.total += b->lens[r.j];
                r.j++;
            }
        }
        b->rounds[b->n_rounds++] = r;
        i = r.j;
    }
    return 0;
}

static void batch_texts_release(batch_texts *b) {
    for (Py_ssize_t i = 0; i < b->got; i++) text_release(&b->refs[i]);
    PyMem_Free(b->refs);
    PyMem_Free(b->ptrs);
    PyMem_Free(b->lens);
    PyMem_Free(b->offs);
    PyMem_Free(b->nout);
    PyMem_Free(b->rounds);
    Py_XDECREF(b->seq);
    memset(b, 0, sizeof *b);
}

static PyObject *Core_encode_batch(CoreObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"texts", "num_threads", NULL};
    PyObject *texts_arg, *threads_arg = NULL, *res = NULL;
    batch_texts bt;
    uint32_t *buf[2] = {NULL, NULL};
    size_t cap[2] = {0, 0};
    wt_batch_run *running = NULL; /* must be waited for before anything it reads is released */
    int nthreads;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:encode_batch", kwlist, &texts_arg,
                                     &threads_arg))
        return NULL;
    if (parse_threads(threads_arg, &nthreads) < 0) return NULL;
    if (batch_texts_get(texts_arg, &bt) < 0) goto done;
    const uint8_t **ptrs = bt.ptrs;
    const size_t *lens = bt.lens, *offs = bt.offs;
    size_t *nout = bt.nout;
    const batch_round *rounds = bt.rounds;
    Py_ssize_t n_rounds = bt.n_rounds;
    res = PyList_New(bt.count);
    if (!res) goto done;
    Py_ssize_t prev =
        -1; /* round whose ids are ready (or being made by `running`) but not yet listed */
    for (Py_ssize_t q = 0; q <= n_rounds; q++) {
        int b = (int)(q & 1);
        if (q < n_rounds && rounds[q].total + 1 > cap[b]) {
            if (buf[b]) scratch_put(buf[b]);
            cap[b] = rounds[q].total + 1;
            buf[b] = scratch_get(cap[b] * sizeof(uint32_t));
            if (!buf[b]) {
                cap[b] = 0;
                PyErr_NoMemory();
                goto fail_res;
            }
        }
        if (running) { /* round prev is being encoded: let it finish */
            Py_BEGIN_ALLOW_THREADS wt_encode_batch_wait(running);
            Py_END_ALLOW_THREADS running = NULL;
        }
        if (q < n_rounds) {
            const batch_round *r = &rounds[q];
            /* Start round q in the background; a big text, a small round (threads cost more than
             * they save) or no thread available: run it here and now. */
            if (!r->big && r->total >= SMALL_ROUND_BYTES)
                running =
                    wt_encode_batch_start(self->tok, (size_t)(r->j - r->i), ptrs + r->i,
                                          lens + r->i, buf[b], offs + r->i, nout + r->i, nthreads);
            if (!running) {
                size_t k_big = 0;
                int nt = r->total >= SMALL_ROUND_BYTES ? nthreads : 1;
                Py_BEGIN_ALLOW_THREADS if (r->big) k_big =
                    wt_encode_parallel(self->tok, ptrs[r->i], lens[r->i], buf[b], nt);
                else wt_encode_batch(self->tok, (size_t)(r->j - r->i), ptrs + r->i, lens + r->i,
                                     buf[b], offs + r->i, nout + r->i, nt);
                Py_END_ALLOW_THREADS if (r->big) {
                    if (k_big == (size_t)-1) {
                        PyErr_NoMemory();
                        goto fail_res;
                    }
                    nout[r->i] = k_big;
                }
            }
        }
        if (prev >= 0) { /* lists for round prev, while round q is encoded by the workers */
            const batch_round *r = &rounds[prev];
            const uint32_t *ids = buf[prev & 1];
            for (Py_ssize_t m = r->i; m < r->j; m++) {
                PyObject *l = ids_to_list(self, ids + offs[m], nout[m]);
                if (!l) goto fail_res;
                PyList_SET_ITEM(res, m, l);
            }
        }
        prev = q;
        /* Ctrl-C between rounds (each round is <= 16 MiB of input or one big text): a pending
         * KeyboardInterrupt ends the call now (the running round is waited for at `done`)
         * instead of after the whole batch. */
        if (q < n_rounds && PyErr_CheckSignals() < 0) goto fail_res;
    }
    goto done;
fail_res:
    Py_CLEAR(res);
done:
    if (running) {
        Py_BEGIN_ALLOW_THREADS wt_encode_batch_wait(running);
        Py_END_ALLOW_THREADS
    }
    batch_texts_release(&bt);
    if (buf[0]) scratch_put(buf[0]);
    if (buf[1]) scratch_put(buf[1]);
    return res;
}

PyDoc_STRVAR(
    encode_batch_numpy_doc,
    "encode_batch_numpy(texts, num_threads=None) -> (ids, offsets): the ids of every text joined "
    "in\n"
    "one array (uint16 when n_vocab <= 65536, else uint32) and int64 offsets of len(texts) + 1;\n"
    "text i's ids are ids[offsets[i]:offsets[i+1]]. Same ids as encode_batch, without a Python\n"
    "object per text or per id. The GIL is released while C threads encode.");

/* Rounds as in encode_batch, each encoded into a uint32 scratch buffer and then appended (narrowed
 * to uint16 when the vocab fits) to one growing output buffer, with the GIL released; only the two
 * result arrays are Python objects. */
static PyObject *Core_encode_batch_numpy(CoreObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"texts", "num_threads", NULL};
    PyObject *texts_arg, *threads_arg = NULL, *ids_arr = NULL, *offs_arr = NULL, *res = NULL;
    batch_texts bt;
    uint32_t *scratch = NULL;
    size_t scratch_cap = 0;
    uint8_t *out = NULL; /* owned (malloc): ids so far, `width` bytes each */
    size_t out_cap = 0, n_ids = 0;
    int64_t *doc_off = NULL; /* owned (PyMem): count + 1 */
    int nthreads, oom = 0;
    const int narrow = wt_n_vocab(self->tok) <= 65536;
    const size_t width = narrow ? 2 : 4;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:encode_batch_numpy", kwlist, &texts_arg,
                                     &threads_arg))
        return NULL;
    if (parse_threads(threads_arg, &nthreads) < 0) return NULL;
    if (batch_texts_get(texts_arg, &bt) < 0) goto done;
    doc_off = PyMem_Malloc(((size_t)bt.count + 1) * sizeof *doc_off);
    if (!doc_off) {
        PyErr_NoMemory();
        goto done;
    }
    doc_off[0] = 0;
    for (Py_ssize_t q = 0; q < bt.n_rounds; q++) {
        const batch_round *r = &bt.rounds[q];
        if (r->total + 1 > scratch_cap) {
            if (scratch) scratch_put(scratch);
            scratch_cap = r->total + 1;
            scratch = scratch_get(scratch_cap * sizeof(uint32_t));
            if (!scratch) {
                scratch_cap = 0;
                PyErr_NoMemory();
                goto done;
            }
        }
        Py_BEGIN_ALLOW_THREADS int nt = r->total >= SMALL_ROUND_BYTES ? nthreads : 1;
        size_t k_round = 0;
        if (r->big) {
            size_t k = wt_encode_parallel(self->tok, bt.ptrs[r->i], bt.lens[r->i], scratch, nt);
            if (k == (size_t)-1)
                oom = 1;
            else
                bt.nout[r->i] = k_round = k;
        } else {
            wt_encode_batch(self->tok, (size_t)(r->j - r->i), bt.ptrs + r->i, bt.lens + r->i,
                            scratch, bt.offs + r->i, bt.nout + r->i, nt);
            for (Py_ssize_t m = r->i; m < r->j; m++) k_round += bt.nout[m];
        }
        if (!oom && n_ids + k_round > out_cap) { /* grow by at least half: amortised O(total) */
            size_t want = n_ids + k_round, cap = out_cap + out_cap / 2;
            if (cap < want) cap = want;
            uint8_t *p = realloc(out, (cap ? cap : 1) * width);
            if (!p)
                oom = 1;
            else {
                out = p;
                out_cap = cap;
            }
        }
        if (!oom)
            for (Py_ssize_t m = r->i; m < r->j;
                 m++) { /* append text m's ids; offsets are prefix sums */
                const uint32_t *src = scratch + (r->big ? 0 : bt.offs[m]);
                size_t k = bt.nout[m];
                if (narrow) {
                    uint16_t *d = (uint16_t *)out + n_ids;
                    for (size_t t = 0; t < k; t++)
                        d[t] = (uint16_t)src[t]; /* ids < n_vocab <= 65536 */
                } else {
                    memcpy((uint32_t *)out + n_ids, src, k * sizeof(uint32_t));
                }
                n_ids += k;
                doc_off[m + 1] = (int64_t)n_ids;
            }
        Py_END_ALLOW_THREADS if (oom) {
            PyErr_NoMemory();
            goto done;
        }
        if (PyErr_CheckSignals() < 0) goto done; /* Ctrl-C between rounds */
    }
    npy_intp dim_ids = (npy_intp)n_ids, dim_offs = (npy_intp)bt.count + 1;
    ids_arr = PyArray_SimpleNew(1, &dim_ids, narrow ? NPY_UINT16 : NPY_UINT32);
    offs_arr = PyArray_SimpleNew(1, &dim_offs, NPY_INT64);
    if (!ids_arr || !offs_arr) goto done;
    if (n_ids) memcpy(PyArray_DATA((PyArrayObject *)ids_arr), out, n_ids * width);
    memcpy(PyArray_DATA((PyArrayObject *)offs_arr), doc_off, (size_t)dim_offs * sizeof *doc_off);
    res = PyTuple_Pack(2, ids_arr, offs_arr);
done:
    Py_XDECREF(ids_arr);
    Py_XDECREF(offs_arr);
    batch_texts_release(&bt);
    if (scratch) scratch_put(scratch);
    free(out);
    PyMem_Free(doc_off);
    return res;
}

/* ---- decoding ------------------------------------------------------------------------------ */

/* ids argument -> int64 array (PyMem_Malloc'd, *n entries). Ids beyond int64 become INT64_MAX
 * (out of range, handled by the errors policy); negative ids and non-integers raise. */
static int64_t *ids_get(PyObject *obj, Py_ssize_t *n_out) {
    int64_t *ids = NULL;
    PyObject *seq = NULL;
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || PyByteArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "ids must be a sequence of ints, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (PyObject_CheckBuffer(obj)) {
        Py_buffer v;
        if (PyObject_GetBuffer(obj, &v, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) == 0) {
            const char *f = v.format ? v.format : "B";
            /* '<' and '=' mean standard sizes, little-endian: the native layout on the targets we
             * build for */
            if (*f == '@' || *f == '=' || *f == '<')
                f++;
            else if (*f == '>' || *f == '!') {
                PyBuffer_Release(&v);
                PyErr_SetString(PyExc_TypeError, "ids array must be in native byte order");
                return NULL;
            }
            if (f[0] == 'O' && f[1] == 0) { /* an object array: its items one by one, as a list's */
                PyBuffer_Release(&v);
                goto as_sequence;
            }
            char c = f[0];
            int ok_fmt = f[1] == 0 && strchr("bBhHiIlLqQnN?", c) != NULL;
            int is_float = f[1] == 0 && strchr("efd", c) != NULL;
            if (!ok_fmt || v.ndim > 1) {
                PyBuffer_Release(&v);
                if (is_float)
                    PyErr_SetString(PyExc_TypeError,
                                    "ids must be integers, got an array of floats");
                else if (v.ndim > 1)
                    PyErr_Format(PyExc_ValueError, "ids must be one-dimensional, got %d dimensions",
                                 v.ndim);
                else
                    PyErr_Format(PyExc_TypeError,
                                 "ids must be integers, got an array of format '%s'",
                                 v.format ? v.format : "?");
                return NULL;
            }
            Py_ssize_t n = v.itemsize ? v.len / v.itemsize : 0;
            ids = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *ids);
            if (!ids) {
                PyBuffer_Release(&v);
                PyErr_NoMemory();
                return NULL;
            }
            const char *b = v.buf;
            int is_signed = strchr("bhilqn", c) != NULL;
            for (Py_ssize_t i = 0; i < n; i++) {
                const char *e = b + i * v.itemsize;
                int64_t x;
                switch (v.itemsize) {
                case 1:
                    x = is_signed ? (int64_t) * (const int8_t *)e : (int64_t) * (const uint8_t *)e;
                    break;
                case 2: {
                    int16_t s;
                    uint16_t u;
                    memcpy(&s, e, 2);
                    memcpy(&u, e, 2);
                    x = is_signed ? s : u;
                    break;
                }
                case 4: {
                    int32_t s;
                    uint32_t u;
                    memcpy(&s, e, 4);
                    memcpy(&u, e, 4);
                    x = is_signed ? s : (int64_t)u;
                    break;
                }
                default: {
                    int64_t s;
                    uint64_t u;
                    memcpy(&s, e, 8);
                    memcpy(&u, e, 8);
                    x = is_signed ? s : (u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)u);
                }
                }
                if (x < 0) {
                    PyBuffer_Release(&v);
                    PyMem_Free(ids);
                    PyErr_Format(PyExc_ValueError,
                                 "ids[%zd] = %lld is negative; ids are 0..n_vocab-1", i,
                                 (long long)x);
                    return NULL;
                }
                ids[i] = x;
            }
            PyBuffer_Release(&v);
            *n_out = n;
            return ids;
        }
        PyErr_Clear(); /* not a contiguous typed buffer: fall back to the sequence protocol */
    }
as_sequence:
    seq = PySequence_Fast(obj, "ids must be a sequence (list, tuple, array) of ints");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    ids = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *ids);
    if (!ids) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i), *idx = NULL;
        if (PyLong_Check(it)) {
            idx = it;
            Py_INCREF(idx);
        } else if (PyFloat_Check(it)) {
            PyErr_Format(PyExc_TypeError, "ids[%zd] is a float (%R); ids must be integers", i, it);
            goto fail;
        } else {
            idx = PyNumber_Index(it); /* numpy integer scalars */
            if (!idx) {
                PyErr_Format(PyExc_TypeError, "ids[%zd] must be an int, not %.100s", i,
                             Py_TYPE(it)->tp_name);
                goto fail;
            }
        }
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(idx, &overflow);
        Py_DECREF(idx);
        if (x == -1 && PyErr_Occurred()) goto fail;
        if (overflow > 0) x = INT64_MAX;
        if (overflow < 0 || x < 0) {
            PyErr_Format(PyExc_ValueError, "ids[%zd] = %R is negative; ids are 0..n_vocab-1", i,
                         it);
            goto fail;
        }
        ids[i] = x;
    }
    Py_DECREF(seq);
    *n_out = n;
    return ids;
fail:
    PyMem_Free(ids);
    Py_XDECREF(seq);
    return NULL;
}

static int errors_code(const char *errors, int *code) {
    if (!errors || strcmp(errors, "strict") == 0)
        *code = ERR_STRICT;
    else if (strcmp(errors, "replace") == 0)
        *code = ERR_REPLACE;
    else if (strcmp(errors, "ignore") == 0)
        *code = ERR_IGNORE;
    else {
        PyErr_Format(PyExc_ValueError, "errors must be 'strict', 'replace' or 'ignore', got '%s'",
                     errors);
        return -1;
    }
    return 0;
}

/* ValueError for ids[i], which is 2**63 or more (ids_get keeps INT64_MAX for it), with its value.
 */
static void out_of_range_big(PyObject *ids_arg, Py_ssize_t i, uint32_t nv) {
    PyObject *item = PySequence_Check(ids_arg) ? PySequence_GetItem(ids_arg, i) : NULL;
    PyObject *idx = item ? PyNumber_Index(item) : NULL;
    Py_XDECREF(item);
    PyErr_Clear();
    if (idx)
        PyErr_Format(PyExc_ValueError,
                     "ids[%zd] = %S is out of range, not in the vocab (n_vocab = %u)", i, idx, nv);
    else
        PyErr_Format(PyExc_ValueError,
                     "ids[%zd] is out of range (2**63 or more), not in the vocab (n_vocab = %u)", i,
                     nv);
    Py_XDECREF(idx);
}

/* Concatenated token bytes into a PyMem buffer. An id without an entry (0 = end-of-text, gaps,
 * >= n_vocab): strict raises ValueError naming it, replace writes U+FFFD (EF BF BD), ignore skips.
 */
static uint8_t *join_tokens(CoreObject *self, PyObject *ids_arg, int code, size_t *len_out) {
    Py_ssize_t n = 0;
    int64_t *ids = ids_get(ids_arg, &n);
    uint8_t *buf = NULL;
    if (!ids) return NULL;
    size_t total = 0;
    uint32_t nv = wt_n_vocab(self->tok);
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t len = 0;
        const uint8_t *b =
            ids[i] < (int64_t)nv ? wt_token_bytes(self->tok, (uint32_t)ids[i], &len) : NULL;
        if (b) {
            total += len;
            continue;
        }
        if (code == ERR_STRICT) {
            if (ids[i] == 0)
                PyErr_Format(PyExc_ValueError,
                             "ids[%zd] = 0 is the end-of-text token, which has no text "
                             "(use errors='replace' or 'ignore')",
                             i);
            else if (ids[i] == INT64_MAX) /* 2**63 or more: the value as given */
                out_of_range_big(ids_arg, i, nv);
            else
                PyErr_Format(PyExc_ValueError, "ids[%zd] = %lld is not in the vocab (n_vocab = %u)",
                             i, (long long)ids[i], nv);
            goto fail;
        }
        if (code == ERR_REPLACE) total += 3;
    }
    buf = PyMem_Malloc(total ? total : 1);
    if (!buf) {
        PyErr_NoMemory();
        goto fail;
    }
    size_t o = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t len = 0;
        const uint8_t *b =
            ids[i] < (int64_t)nv ? wt_token_bytes(self->tok, (uint32_t)ids[i], &len) : NULL;
        if (b) {
            memcpy(buf + o, b, len);
            o += len;
        } else if (code == ERR_REPLACE) {
            memcpy(buf + o, REPLACEMENT_UTF8, 3);
            o += 3;
        }
    }
    PyMem_Free(ids);
    *len_out = o;
    return buf;
fail:
    PyMem_Free(ids);
    return NULL;
}

PyDoc_STRVAR(decode_bytes_doc, "decode_bytes(ids, errors='strict') -> bytes");
static PyObject *Core_decode_bytes(CoreObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ids", "errors", NULL};
    PyObject *ids;
    const char *errors = "strict";
    int code;
    size_t n;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|s:decode_bytes", kwlist, &ids, &errors))
        return NULL;
    if (errors_code(errors, &code) < 0) return NULL;
    uint8_t *buf = join_tokens(self, ids, code, &n);
    if (!buf) return NULL;
    PyObject *res = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)n);
    PyMem_Free(buf);
    return res;
}

PyDoc_STRVAR(decode_doc,
             "decode(ids, errors='replace') -> str (UTF-8 with the same errors policy)");
static PyObject *Core_decode(CoreObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ids", "errors", NULL};
    PyObject *ids;
    const char *errors = "replace";
    int code;
    size_t n;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|s:decode", kwlist, &ids, &errors)) return NULL;
    if (errors_code(errors, &code) < 0) return NULL;
    uint8_t *buf = join_tokens(self, ids, code, &n);
    if (!buf) return NULL;
    PyObject *res = PyUnicode_DecodeUTF8((const char *)buf, (Py_ssize_t)n, errors);
    PyMem_Free(buf);
    return res;
}

PyDoc_STRVAR(token_bytes_doc, "token_bytes(id) -> bytes, or None when the id has no entry");
static PyObject *Core_token_bytes(CoreObject *self, PyObject *arg) {
    if (PyFloat_Check(arg) || !PyIndex_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "id must be an int, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    PyObject *idx = PyNumber_Index(arg);
    if (!idx) return NULL;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (x == -1 && PyErr_Occurred()) return NULL;
    if (overflow < 0 || (overflow == 0 && x < 0)) {
        PyErr_Format(PyExc_ValueError, "id %R is negative; ids are 0..n_vocab-1", arg);
        return NULL;
    }
    size_t len = 0;
    const uint8_t *b = (overflow == 0 && x < (long long)wt_n_vocab(self->tok))
                           ? wt_token_bytes(self->tok, (uint32_t)x, &len)
                           : NULL;
    if (!b) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)b, (Py_ssize_t)len);
}

PyDoc_STRVAR(token_to_id_doc,
             "token_to_id(token: str | bytes) -> int, or None when it is not a token");
static PyObject *Core_token_to_id(CoreObject *self, PyObject *arg) {
    text_ref t;
    if (text_get(arg, &t, "token", -1) < 0) return NULL;
    uint32_t id = 0;
    int found = wt_token_to_id(self->tok, t.p, (size_t)t.n, &id);
    text_release(&t);
    if (!found) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(id);
}

/* The capsule's context holds a reference to the Core that owns the wt_tokenizer. */
static void capsule_release(PyObject *cap) { Py_XDECREF((PyObject *)PyCapsule_GetContext(cap)); }

static PyObject *Core_get_capsule(CoreObject *self, void *c) {
    (void)c;
    PyObject *cap = PyCapsule_New(self->tok, WT_CAPSULE_NAME, capsule_release);
    if (!cap) return NULL;
    Py_INCREF(self);
    if (PyCapsule_SetContext(cap, self) < 0) { /* cannot fail for a valid capsule; kept honest */
        Py_DECREF(self);
        Py_DECREF(cap);
        return NULL;
    }
    return cap;
}

static PyObject *Core_get_n_vocab(CoreObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(wt_n_vocab(self->tok));
}
static PyObject *Core_get_n_tokens(CoreObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(wt_n_tokens(self->tok));
}
static PyObject *Core_get_max_len(CoreObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(wt_max_token_len(self->tok));
}

static PyMethodDef Core_methods[] = {
    {"encode", (PyCFunction)Core_encode, METH_O, encode_doc},
    {"encode_numpy", (PyCFunction)(void (*)(void))Core_encode_numpy, METH_VARARGS | METH_KEYWORDS,
     encode_numpy_doc},
    {"encode_batch", (PyCFunction)(void (*)(void))Core_encode_batch, METH_VARARGS | METH_KEYWORDS,
     encode_batch_doc},
    {"encode_batch_numpy", (PyCFunction)(void (*)(void))Core_encode_batch_numpy,
     METH_VARARGS | METH_KEYWORDS, encode_batch_numpy_doc},
    {"decode", (PyCFunction)(void (*)(void))Core_decode, METH_VARARGS | METH_KEYWORDS, decode_doc},
    {"decode_bytes", (PyCFunction)(void (*)(void))Core_decode_bytes, METH_VARARGS | METH_KEYWORDS,
     decode_bytes_doc},
    {"token_bytes", (PyCFunction)Core_token_bytes, METH_O, token_bytes_doc},
    {"token_to_id", (PyCFunction)Core_token_to_id, METH_O, token_to_id_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"n_vocab", (getter)Core_get_n_vocab, NULL, "max id + 1", NULL},
    {"n_tokens", (getter)Core_get_n_tokens, NULL, "number of vocab entries", NULL},
    {"max_token_len", (getter)Core_get_max_len, NULL, "longest token in bytes", NULL},
    {"capsule", (getter)Core_get_capsule, NULL,
     "the tokenizer as a PyCapsule named " WT_CAPSULE_NAME
     " (for rwkv5.dataprep); it keeps this Core alive",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rwkv5.tokenizer._tokenizer.Core",
    .tp_basicsize = sizeof(CoreObject),
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Core(vocab_bytes): the C World tokenizer (immutable, thread-safe).",
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_new = Core_new,
};

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "rwkv5.tokenizer._tokenizer",
    "rwkv5 tokenizer core (C).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__tokenizer(void) {
    import_array();
    if (!scratch_key_ok) scratch_key_ok = pthread_key_create(&scratch_key, scratch_destroy) == 0;
    if (PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
