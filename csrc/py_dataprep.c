/* Python binding for the dataprep core: the only file of this extension that includes Python.h.
 *
 * Every function that reads files, tokenizes or compresses releases the GIL around the work;
 * the tokenizer capsule is immutable, so several Python threads may call run_task at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>
#include <zstd.h>

#include "dataprep/dataprep.h"
#include "tokenizer/world_tokenizer.h"

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o) {
    Py_INCREF(o);
    return o;
}
#endif

/* The tokenizer: the capsule of an rwkv5.tokenizer WorldTokenizer (its `capsule` attribute), which
 * keeps that tokenizer alive. Token ids are stored as uint16, hence the bound on n_vocab. */
static wt_tokenizer *get_tok(PyObject *cap) {
    wt_tokenizer *t = PyCapsule_GetPointer(cap, WT_CAPSULE_NAME);
    if (!t) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "tokenizer: expected WorldTokenizer.capsule, got %s",
                     Py_TYPE(cap)->tp_name);
        return NULL;
    }
    if (wt_n_vocab(t) > 65536) {
        PyErr_Format(PyExc_ValueError,
                     "vocab: ids must fit uint16 (n_vocab <= 65536), got n_vocab %u",
                     wt_n_vocab(t));
        return NULL;
    }
    return t;
}

/* The bytes the C code reads with the GIL released: `o` itself when it is bytes (immutable),
 * else a private copy of its buffer (a bytearray or a writable array could be changed by another
 * thread meanwhile). New reference, or NULL with TypeError naming `name`. */
static PyObject *bytes_arg(PyObject *o, const char *name) {
    if (PyBytes_Check(o)) return Py_NewRef(o);
    if (PyUnicode_Check(o) || !PyObject_CheckBuffer(o))
        return PyErr_Format(PyExc_TypeError, "%s: expected a bytes-like object, got %s", name,
                            Py_TYPE(o)->tp_name);
    return PyBytes_FromObject(o);
}

static size_t encode_cb(const void *ctx, const uint8_t *text, size_t n, uint16_t *out) {
    return wt_encode_u16((const wt_tokenizer *)ctx, text, n, out);
}

/* encode_batch_count(tok, texts: list[bytes], n_threads) -> total ids. The tokenizer's own
 * wt_encode_batch, exposed for the benchmark's reference throughput. */
static PyObject *py_encode_batch_count(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *list, *seq = NULL, *res = NULL;
    int n_threads;
    const uint8_t **texts = NULL;
    size_t *lens = NULL, *offs = NULL, *nout = NULL, total = 0;
    uint32_t *out = NULL;
    if (!PyArg_ParseTuple(args, "OOi:encode_batch_count", &cap, &list, &n_threads)) return NULL;
    wt_tokenizer *t = get_tok(cap);
    if (!t) return NULL;
    if (n_threads < 1 || n_threads > 1024)
        return PyErr_Format(PyExc_ValueError, "n_threads: expected 1..1024, got %d", n_threads);
    seq = PySequence_Tuple(list); /* holds a reference to every text while the GIL is released */
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    texts = PyMem_Calloc((size_t)n + 1, sizeof *texts);
    lens = PyMem_Calloc((size_t)n + 1, sizeof *lens);
    offs = PyMem_Calloc((size_t)n + 1, sizeof *offs);
    nout = PyMem_Calloc((size_t)n + 1, sizeof *nout);
    if (!texts || !lens || !offs || !nout) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(b)) {
            PyErr_Format(PyExc_TypeError, "texts[%zd]: expected bytes", i);
            goto done;
        }
        texts[i] = (const uint8_t *)PyBytes_AS_STRING(b);
        lens[i] = (size_t)PyBytes_GET_SIZE(b);
        offs[i] = total;
        total += lens[i];
    }
    out = PyMem_Malloc((total + 1) * sizeof *out);
    if (!out) {
        PyErr_NoMemory();
        goto done;
    }
    size_t count = 0;
    Py_BEGIN_ALLOW_THREADS wt_encode_batch(t, (size_t)n, texts, lens, out, offs, nout, n_threads);
    for (Py_ssize_t i = 0; i < n; i++) count += nout[i];
    Py_END_ALLOW_THREADS res = PyLong_FromSize_t(count);
done:
    PyMem_Free(texts);
    PyMem_Free(lens);
    PyMem_Free(offs);
    PyMem_Free(nout);
    PyMem_Free(out);
    Py_XDECREF(seq);
    return res;
}

static const char *kw_run_task[] = {
    "tokenizer",   "path",        "record_format", "start",     "end",      "text_field",
    "lang_field",  "repair_utf8", "fail_fast",     "n_threads", "tok_path", "meta_path",
    "batch_bytes", "fsync",       "cancel",        "codec",     "lang",     NULL};

/* The row of a table of named things (codecs, record formats) called `name`, or -1 with a
 * ValueError that lists the names. */
static int table_index(const char *arg, const char *name, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(name, names[i]) == 0) return i;
    char list[256] = "";
    size_t len = 0;
    for (int i = 0; i < n && len < sizeof list; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", names[i]);
    PyErr_Format(PyExc_ValueError, "%s: expected one of %s, got '%.100s'", arg, list, name);
    return -1;
}

static int codec_index(const char *name) {
    const char *names[DP_N_CODECS];
    for (int i = 0; i < DP_N_CODECS; i++) names[i] = dp_codecs[i].name;
    return table_index("codec", name, names, DP_N_CODECS);
}

static int record_format_index(const char *name) {
    const char *names[DP_N_RECORD_FORMATS];
    for (int i = 0; i < DP_N_RECORD_FORMATS; i++) names[i] = dp_record_formats[i].name;
    return table_index("record_format", name, names, DP_N_RECORD_FORMATS);
}

/* run_task(...) -> dict. Never raises for bad input data: a fail-fast stop or an I/O error is
 * returned as result["error"] (with result["fail_line"] / result["fail_status"] for a bad record)
 * so the caller can rewrite local line numbers into file line numbers. */
/* `cancel`: None, or a writable int-aligned buffer whose first int another thread may set to stop
 * the work. On success *have is 1 when `view` holds a buffer the caller must release. */
static int get_cancel(PyObject *cancel_o, Py_buffer *view, int *have) {
    if (cancel_o == Py_None) return 0;
    if (PyObject_GetBuffer(cancel_o, view, PyBUF_WRITABLE) < 0) return -1;
    *have = 1;
    if (view->len < (Py_ssize_t)sizeof(int) || ((uintptr_t)view->buf % sizeof(int))) {
        PyErr_SetString(PyExc_ValueError,
                        "cancel: expected a writable, int-aligned buffer of at least 4 bytes");
        return -1;
    }
    return 0;
}

static PyObject *py_run_task(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *cap, *path_o = NULL, *tokp_o = NULL, *metap_o = NULL, *out = NULL, *tmp = NULL;
    const char *text_field, *lang_field = NULL, *format_name, *codec_name = "plain", *lang = NULL;
    int record_format, codec, repair, fail_fast, n_threads;
    unsigned long long start, end;
    Py_ssize_t batch = 0;
    int do_fsync = 0;
    PyObject *cancel_o = Py_None;
    Py_buffer cancel_buf = {0};
    int have_cancel = 0;
    dp_task_opts o;
    dp_task_result res;
    int rc;
    memset(&res, 0, sizeof res);
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "OO&sKKszppiO&O&|npOsz:run_task", (char **)kw_run_task, &cap,
            PyUnicode_FSConverter, &path_o, &format_name, &start, &end, &text_field, &lang_field,
            &repair, &fail_fast, &n_threads, PyUnicode_FSConverter, &tokp_o, PyUnicode_FSConverter,
            &metap_o, &batch, &do_fsync, &cancel_o, &codec_name, &lang))
        goto fail;
    wt_tokenizer *t = get_tok(cap);
    if (!t) goto fail;
    if (n_threads < 1 || n_threads > 1024) {
        PyErr_Format(PyExc_ValueError, "n_threads: expected 1..1024, got %d", n_threads);
        goto fail;
    }
    if ((record_format = record_format_index(format_name)) < 0 ||
        (codec = codec_index(codec_name)) < 0)
        goto fail;
    if (lang && strlen(lang) > DP_LANG_MAX) {
        PyErr_Format(PyExc_ValueError, "lang: at most %d bytes of UTF-8, got %zu", DP_LANG_MAX,
                     strlen(lang));
        goto fail;
    }
    if (batch < 0) {
        PyErr_Format(PyExc_ValueError, "batch_bytes: expected >= 0, got %zd", batch);
        goto fail;
    }
    if (start > end) {
        PyErr_Format(PyExc_ValueError, "start (%llu) > end (%llu)", start, end);
        goto fail;
    }
    if (get_cancel(cancel_o, &cancel_buf, &have_cancel) < 0) goto fail;
    memset(&o, 0, sizeof o);
    o.cancel = have_cancel ? (volatile int *)cancel_buf.buf : NULL;
    o.path = PyBytes_AS_STRING(path_o);
    o.record_format = record_format;
    o.codec = codec;
    o.start = start;
    o.end = end;
    o.text_field = text_field;
    o.lang_field = lang_field && lang_field[0] ? lang_field : NULL;
    o.lang = lang && lang[0] ? lang : NULL;
    o.repair_utf8 = repair;
    o.fail_fast = fail_fast;
    o.n_threads = n_threads;
    o.batch_bytes = (size_t)batch;
    o.fsync = do_fsync;
    o.encode = encode_cb;
    o.encode_ctx = t;
    o.tok_path = PyBytes_AS_STRING(tokp_o);
    o.meta_path = PyBytes_AS_STRING(metap_o);
    Py_BEGIN_ALLOW_THREADS rc = dp_run_task(&o, &res);
    Py_END_ALLOW_THREADS

        out = PyDict_New();
    if (!out) goto fail;
#define SET(key, val)                                                                              \
    do {                                                                                           \
        tmp = (val);                                                                               \
        if (!tmp || PyDict_SetItemString(out, key, tmp)) goto fail;                                \
        Py_CLEAR(tmp);                                                                             \
    } while (0)
    SET("lines", PyLong_FromUnsignedLongLong(res.lines));
    SET("docs", PyLong_FromUnsignedLongLong(res.docs));
    SET("tokens", PyLong_FromUnsignedLongLong(res.tokens));
    SET("text_bytes", PyLong_FromUnsignedLongLong(res.text_bytes));
    SET("input_bytes", PyLong_FromUnsignedLongLong(res.input_bytes));
    SET("blank_lines", PyLong_FromUnsignedLongLong(res.blank_lines));
    SET("repaired_docs", PyLong_FromUnsignedLongLong(res.repaired_docs));
    SET("skipped", PyDict_New());
    {
        PyObject *sk = PyDict_GetItemString(out, "skipped"); /* borrowed */
        for (int i = 1; i < DP_N_STATUS; i++) {
            if (!res.skipped[i]) continue;
            tmp = PyLong_FromUnsignedLongLong(res.skipped[i]);
            if (!tmp || PyDict_SetItemString(sk, dp_status_names[i], tmp)) goto fail;
            Py_CLEAR(tmp);
        }
    }
    SET("listed", PyList_New(0));
    {
        PyObject *ls = PyDict_GetItemString(out, "listed");
        for (int i = 0; i < res.n_listed; i++) {
            tmp = Py_BuildValue("(Ks)", res.listed_line[i], dp_status_names[res.listed_status[i]]);
            if (!tmp || PyList_Append(ls, tmp)) goto fail;
            Py_CLEAR(tmp);
        }
    }
    SET("langs", PyList_New(0));
    {
        PyObject *ls = PyDict_GetItemString(out, "langs");
        for (int i = 0; i < res.n_langs; i++) {
            tmp = PyUnicode_DecodeUTF8(res.langs[i], (Py_ssize_t)strlen(res.langs[i]), "replace");
            if (!tmp || PyList_Append(ls, tmp)) goto fail;
            Py_CLEAR(tmp);
        }
    }
    if (rc)
        SET("error", PyUnicode_DecodeFSDefault(res.err));
    else
        SET("error", Py_NewRef(Py_None));
#undef SET
    if (have_cancel) PyBuffer_Release(&cancel_buf);
    dp_task_result_free(&res);
    Py_XDECREF(path_o);
    Py_XDECREF(tokp_o);
    Py_XDECREF(metap_o);
    return out;
fail:
    if (have_cancel) PyBuffer_Release(&cancel_buf);
    dp_task_result_free(&res);
    Py_XDECREF(tmp);
    Py_XDECREF(out);
    Py_XDECREF(path_o);
    Py_XDECREF(tokp_o);
    Py_XDECREF(metap_o);
    return NULL;
}

/* encode_texts(tokenizer, data, offsets, status, lang, repair_utf8, n_threads, tok_fd, meta_fd,
 * cancel=None)
 * -> dict (dp_encode_texts; GIL released). data: any bytes-like buffer (e.g. an Arrow string
 * column's data buffer; it must not change during the call), offsets: int64 array of n + 1,
 * status: writable uint8 array of n (DP_OK for the texts to tokenize; updated), lang: uint16 array
 * of n or None. */
static const char *kw_encode_texts[] = {"tokenizer", "data",        "offsets",   "status",
                                        "lang",      "repair_utf8", "n_threads", "tok_fd",
                                        "meta_fd",   "cancel",      NULL};

static PyObject *py_encode_texts(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *cap, *data_o, *off_o, *status_o, *lang_o, *cancel_o = Py_None, *out = NULL;
    int repair, n_threads, tok_fd, meta_fd, rc, have_data = 0, have_cancel = 0;
    Py_buffer data = {0}, cancel_buf = {0};
    PyArrayObject *off = NULL, *status = NULL, *lang = NULL;
    dp_texts_opts o;
    dp_texts_result res;
    char err[512] = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOpiii|O:encode_texts", (char **)kw_encode_texts,
                                     &cap, &data_o, &off_o, &status_o, &lang_o, &repair, &n_threads,
                                     &tok_fd, &meta_fd, &cancel_o))
        return NULL;
    wt_tokenizer *t = get_tok(cap);
    if (!t) return NULL;
    if (n_threads < 1 || n_threads > 1024)
        return PyErr_Format(PyExc_ValueError, "n_threads: expected 1..1024, got %d", n_threads);
    if (data_o != Py_None) {
        if (PyUnicode_Check(data_o))
            return PyErr_Format(PyExc_TypeError, "data: expected a bytes-like object, got str");
        if (PyObject_GetBuffer(data_o, &data, PyBUF_SIMPLE) < 0) return NULL;
        have_data = 1;
    }
    off = (PyArrayObject *)PyArray_FROM_OTF(off_o, NPY_INT64,
                                            NPY_ARRAY_IN_ARRAY | NPY_ARRAY_ENSURECOPY);
    if (!off) goto fail;
    if (!PyArray_Check(status_o) || PyArray_TYPE((PyArrayObject *)status_o) != NPY_UINT8 ||
        PyArray_NDIM((PyArrayObject *)status_o) != 1 ||
        !PyArray_ISCARRAY((PyArrayObject *)status_o)) {
        PyErr_SetString(PyExc_TypeError, "status: expected a writable, contiguous 1-D uint8 array");
        goto fail;
    }
    status = (PyArrayObject *)status_o;
    npy_intp n = PyArray_DIM(status, 0);
    if (PyArray_NDIM(off) != 1 || PyArray_DIM(off, 0) != n + 1) {
        PyErr_Format(PyExc_ValueError,
                     "offsets: expected %zd values (one more than status), got %zd",
                     (Py_ssize_t)(n + 1),
                     PyArray_NDIM(off) == 1 ? (Py_ssize_t)PyArray_DIM(off, 0) : (Py_ssize_t)-1);
        goto fail;
    }
    const int64_t *po = PyArray_DATA(off);
    if (po[0] < 0 || po[n] > (have_data ? (int64_t)data.len : 0)) {
        PyErr_Format(PyExc_ValueError, "offsets: [%lld, %lld] lie outside the %zd bytes of data",
                     (long long)po[0], (long long)po[n], have_data ? data.len : (Py_ssize_t)0);
        goto fail;
    }
    if (lang_o != Py_None) {
        lang = (PyArrayObject *)PyArray_FROM_OTF(lang_o, NPY_UINT16,
                                                 NPY_ARRAY_IN_ARRAY | NPY_ARRAY_ENSURECOPY);
        if (!lang) goto fail;
        if (PyArray_NDIM(lang) != 1 || PyArray_DIM(lang, 0) != n) {
            PyErr_Format(PyExc_ValueError, "lang: expected %zd values", (Py_ssize_t)n);
            goto fail;
        }
    }
    if (get_cancel(cancel_o, &cancel_buf, &have_cancel) < 0) goto fail;
    memset(&o, 0, sizeof o);
    o.data = have_data ? data.buf : (const uint8_t *)"";
    o.offsets = po;
    o.n = (size_t)n;
    o.lang = lang ? PyArray_DATA(lang) : NULL;
    o.repair_utf8 = repair;
    o.n_threads = n_threads;
    o.encode = encode_cb;
    o.encode_ctx = t;
    o.tok_fd = tok_fd;
    o.meta_fd = meta_fd;
    o.cancel = have_cancel ? (volatile int *)cancel_buf.buf : NULL;
    Py_BEGIN_ALLOW_THREADS rc = dp_encode_texts(&o, PyArray_DATA(status), &res, err, sizeof err);
    Py_END_ALLOW_THREADS if (rc) {
        PyErr_SetString(strcmp(err, "cancelled") == 0 ? PyExc_KeyboardInterrupt : PyExc_OSError,
                        err);
        goto fail;
    }
    out = Py_BuildValue("{sKsKsKsK}", "docs", (unsigned long long)res.docs, "tokens",
                        (unsigned long long)res.tokens, "text_bytes",
                        (unsigned long long)res.text_bytes, "repaired_docs",
                        (unsigned long long)res.repaired_docs);
fail:
    if (have_data) PyBuffer_Release(&data);
    if (have_cancel) PyBuffer_Release(&cancel_buf);
    Py_XDECREF(off);
    Py_XDECREF(lang);
    return out;
}

/* copy_ranges(out_fd, src_paths: list[str], ranges: int64 (k, 3)) -> None */
static PyObject *py_copy_ranges(PyObject *self, PyObject *args) {
    (void)self;
    int fd;
    PyObject *paths, *robj, *seq = NULL, *res = NULL;
    PyArrayObject *r = NULL;
    PyObject **enc = NULL;
    const char **cpaths = NULL;
    Py_ssize_t n = 0, i;
    char err[DP_ERR_LEN] = {0};
    int rc;
    if (!PyArg_ParseTuple(args, "iOO:copy_ranges", &fd, &paths, &robj)) return NULL;
    seq = PySequence_Fast(paths, "src_paths: expected a list of paths");
    if (!seq) return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    enc = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    cpaths = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!enc || !cpaths) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &enc[i])) goto done;
        cpaths[i] = PyBytes_AS_STRING(enc[i]);
    }
    r = (PyArrayObject *)PyArray_FROM_OTF(robj, NPY_INT64, NPY_ARRAY_IN_ARRAY);
    if (!r) goto done;
    if (PyArray_NDIM(r) != 2 || PyArray_DIM(r, 1) != 3) {
        PyErr_SetString(PyExc_ValueError, "ranges: expected an int64 array of shape (k, 3)");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS rc = dp_copy_ranges(fd, cpaths, (int)n, PyArray_DATA(r),
                                               (size_t)PyArray_DIM(r, 0), err, sizeof err);
    Py_END_ALLOW_THREADS if (rc) {
        PyErr_Format(PyExc_OSError, "copy_ranges: %s", err);
        goto done;
    }
    res = Py_NewRef(Py_None);
done:
    if (enc)
        for (i = 0; i < n; i++) Py_XDECREF(enc[i]);
    PyMem_Free(enc);
    PyMem_Free(cpaths);
    Py_XDECREF(r);
    Py_XDECREF(seq);
    return res;
}

/* zstd_compress(data, level) -> bytes: one frame with content size and XXH64 checksum flag. */
static PyObject *py_zstd_compress(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *arg, *data;
    int level;
    if (!PyArg_ParseTuple(args, "Oi:zstd_compress", &arg, &level) ||
        !(data = bytes_arg(arg, "data")))
        return NULL;
    const char *src = PyBytes_AS_STRING(data);
    size_t src_len = (size_t)PyBytes_GET_SIZE(data);
    size_t cap = ZSTD_compressBound(src_len);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
    if (!out) {
        Py_DECREF(data);
        return NULL;
    }
    size_t r;
    Py_BEGIN_ALLOW_THREADS ZSTD_CCtx *cc = ZSTD_createCCtx();
    if (!cc)
        r = (size_t)-1;
    else {
        ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level);
        ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
        ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 1);
        r = ZSTD_compress2(cc, PyBytes_AS_STRING(out), cap, src, src_len);
        ZSTD_freeCCtx(cc);
    }
    Py_END_ALLOW_THREADS Py_DECREF(data);
    if (r == (size_t)-1) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    if (ZSTD_isError(r)) {
        Py_DECREF(out);
        return PyErr_Format(PyExc_ValueError, "zstd: %s", ZSTD_getErrorName(r));
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)r)) return NULL;
    return out;
}

/* zstd_decompress(frame, size) -> bytes; the frame must decompress to exactly size bytes. */
static PyObject *py_zstd_decompress(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *arg, *data;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "On:zstd_decompress", &arg, &size)) return NULL;
    if (size < 0) return PyErr_Format(PyExc_ValueError, "size: expected >= 0, got %zd", size);
    if (!(data = bytes_arg(arg, "frame"))) return NULL;
    const char *src = PyBytes_AS_STRING(data);
    size_t src_len = (size_t)PyBytes_GET_SIZE(data);
    /* Check the size the frame header records before allocating: a hostile shard header could
     * otherwise make a tiny file allocate `size` bytes (the writer always records it). */
    unsigned long long fcs = ZSTD_getFrameContentSize(src, src_len);
    if (fcs != (unsigned long long)size) {
        Py_DECREF(data);
        if (fcs == ZSTD_CONTENTSIZE_ERROR)
            return PyErr_Format(PyExc_ValueError, "corrupt zstd frame: bad frame header");
        if (fcs == ZSTD_CONTENTSIZE_UNKNOWN)
            return PyErr_Format(PyExc_ValueError,
                                "zstd frame does not record its content size (expected %zd bytes)",
                                size);
        return PyErr_Format(PyExc_ValueError, "zstd frame decompresses to %llu bytes, expected %zd",
                            fcs, size);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (!out) {
        Py_DECREF(data);
        return NULL;
    }
    size_t r;
    Py_BEGIN_ALLOW_THREADS r = ZSTD_decompress(PyBytes_AS_STRING(out), (size_t)size, src, src_len);
    Py_END_ALLOW_THREADS Py_DECREF(data);
    if (ZSTD_isError(r)) {
        Py_DECREF(out);
        return PyErr_Format(PyExc_ValueError, "corrupt zstd frame: %s", ZSTD_getErrorName(r));
    }
    if ((Py_ssize_t)r != size) {
        Py_DECREF(out);
        return PyErr_Format(PyExc_ValueError, "zstd frame decompressed to %zu bytes, expected %zd",
                            r, size);
    }
    return out;
}

static PyObject *py_crc32c(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I:crc32c", &buf, &crc)) return NULL;
    uint32_t r;
    Py_BEGIN_ALLOW_THREADS r = dp_crc32c(crc, buf.buf, (size_t)buf.len);
    Py_END_ALLOW_THREADS PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLong(r);
}

/* json_extract(line, field, lang_field=None, repair=False) -> (status, text|None, lang, n_repaired)
 */
static PyObject *py_json_extract(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    const char *field, *lang_field = NULL;
    int repair = 0;
    if (!PyArg_ParseTuple(args, "y*s|zp:json_extract", &buf, &field, &lang_field, &repair))
        return NULL;
    uint8_t *out = PyMem_Malloc(3 * (size_t)buf.len + 1);
    if (!out) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    size_t len = 0;
    char lang[64];
    uint64_t nrep = 0;
    int st = dp_json_extract(buf.buf, (size_t)buf.len, field, lang_field, repair, out, &len, lang,
                             &nrep, NULL);
    PyBuffer_Release(&buf);
    PyObject *r;
    if (st == DP_OK)
        r = Py_BuildValue("(sy#sK)", dp_status_names[st], (const char *)out, (Py_ssize_t)len, lang,
                          nrep);
    else
        r = Py_BuildValue("(sOsK)", dp_status_names[st], Py_None, lang, nrep);
    PyMem_Free(out);
    return r;
}

/* utf8_copy(data, repair) -> bytes | None (None: invalid and repair off) */
static PyObject *py_utf8_copy(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    int repair;
    if (!PyArg_ParseTuple(args, "y*p:utf8_copy", &buf, &repair)) return NULL;
    uint8_t *out = PyMem_Malloc(3 * (size_t)buf.len + 1);
    if (!out) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    size_t n = dp_utf8_copy(out, buf.buf, (size_t)buf.len, repair, NULL);
    PyBuffer_Release(&buf);
    PyObject *r = n == (size_t)-1 ? Py_NewRef(Py_None)
                                  : PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)n);
    PyMem_Free(out);
    return r;
}

static PyObject *py_script_of(PyObject *self, PyObject *arg) {
    (void)self;
    unsigned long cp = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (cp > 0x10FFFF)
        return PyErr_Format(PyExc_ValueError, "code point: expected <= 0x10FFFF, got %lu", cp);
    return PyLong_FromLong(dp_script_of((uint32_t)cp));
}

/* dominant_script(text: str) -> int */
static PyObject *py_dominant_script(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n); /* strict UTF-8: lone surrogates raise */
    if (!s) return NULL;
    return PyLong_FromLong(dp_dominant_script((const uint8_t *)s, (size_t)n));
}

static PyObject *names_tuple(const char *const *names, int n) {
    PyObject *t = PyTuple_New(n);
    if (!t) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

/* detect_codec(head: bytes) -> the name of the codec whose magic begins head (a file's first
 * DP_CODEC_HEAD bytes), or None. */
static PyObject *py_detect_codec(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    int c = dp_codec_detect(b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    if (c < 0) Py_RETURN_NONE;
    return PyUnicode_FromString(dp_codecs[c].name);
}

static PyMethodDef methods[] = {
    {"encode_batch_count", py_encode_batch_count, METH_VARARGS,
     "encode_batch_count(tokenizer, texts: list[bytes], n_threads) -> total ids (wt_encode_batch; "
     "benchmarks)"},
    {"run_task", (PyCFunction)(void (*)(void))py_run_task, METH_VARARGS | METH_KEYWORDS,
     "run_task(tokenizer, path, record_format, start, end, text_field, lang_field, repair_utf8, "
     "fail_fast, "
     "n_threads, tok_path, meta_path, batch_bytes=0, fsync=False, cancel=None, codec='plain', "
     "lang=None) -> dict (GIL "
     "released; record_format / codec: a name from RECORD_FORMATS / CODECS; cancel: a writable "
     "int-aligned "
     "buffer, non-zero first int stops the task; lang: the language of every document, replacing "
     "lang_field's)"},
    {"encode_texts", (PyCFunction)(void (*)(void))py_encode_texts, METH_VARARGS | METH_KEYWORDS,
     "encode_texts(tokenizer, data, offsets int64[n+1], status uint8[n] (in/out), lang uint16[n] | "
     "None, repair_utf8, "
     "n_threads, tok_fd, meta_fd, cancel=None) -> dict (appends the parts; GIL released)"},
    {"detect_codec", py_detect_codec, METH_O,
     "detect_codec(head: bytes) -> the codec whose magic begins a file's first bytes (CODEC_HEAD "
     "of them), or None"},
    {"copy_ranges", py_copy_ranges, METH_VARARGS,
     "copy_ranges(out_fd, src_paths, ranges int64 (k,3))"},
    {"zstd_compress", py_zstd_compress, METH_VARARGS,
     "zstd_compress(data, level) -> one checksummed frame"},
    {"zstd_decompress", py_zstd_decompress, METH_VARARGS, "zstd_decompress(frame, size) -> bytes"},
    {"crc32c", py_crc32c, METH_VARARGS, "crc32c(data, crc=0) -> int"},
    {"json_extract", py_json_extract, METH_VARARGS,
     "json_extract(line, field, lang_field=None, repair=False)"},
    {"utf8_copy", py_utf8_copy, METH_VARARGS, "utf8_copy(data, repair) -> bytes | None"},
    {"script_of", py_script_of, METH_O, "script_of(code_point) -> script id"},
    {"dominant_script", py_dominant_script, METH_O, "dominant_script(text) -> script id"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "rwkv5.dataprep._dataprep",
    "rwkv5 dataprep core (C).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

/* CODECS: a tuple of {"name", "suffix", "magic"} dicts, one per row of dp_codecs (new reference).
 */
static PyObject *codecs_tuple(void) {
    PyObject *t = PyTuple_New(DP_N_CODECS);
    for (int i = 0; t && i < DP_N_CODECS; i++) {
        const dp_codec *c = &dp_codecs[i];
        PyObject *d = Py_BuildValue("{s:s,s:s,s:y#}", "name", c->name, "suffix", c->suffix, "magic",
                                    c->magic, (Py_ssize_t)c->magic_len);
        if (!d) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, d); /* steals d */
    }
    return t;
}

/* RECORD_FORMATS: a tuple of {"name", "json", "splittable"} dicts, one per row of
 * dp_record_formats (new reference). */
static PyObject *record_formats_tuple(void) {
    PyObject *t = PyTuple_New(DP_N_RECORD_FORMATS);
    for (int i = 0; t && i < DP_N_RECORD_FORMATS; i++) {
        const dp_record_format *f = &dp_record_formats[i];
        PyObject *d =
            Py_BuildValue("{s:s,s:O,s:O}", "name", f->name, "json", f->json ? Py_True : Py_False,
                          "splittable", f->splittable ? Py_True : Py_False);
        if (!d) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, d);
    }
    return t;
}

PyMODINIT_FUNC PyInit__dataprep(void) {
    import_array();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    PyObject *scripts = names_tuple(dp_script_names, DP_N_SCRIPTS);
    PyObject *statuses = names_tuple(dp_status_names, DP_N_STATUS);
    if (!scripts || PyModule_AddObject(m, "SCRIPT_NAMES", scripts)) {
        Py_XDECREF(scripts);
        Py_XDECREF(statuses);
        Py_DECREF(m);
        return NULL;
    }
    if (!statuses || PyModule_AddObject(m, "STATUS_NAMES", statuses)) {
        Py_XDECREF(statuses);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "META_RECORD_SIZE", (long)sizeof(dp_doc_meta))) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "CODEC_HEAD", DP_CODEC_HEAD)) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "LANG_MAX", DP_LANG_MAX)) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *codecs = codecs_tuple();
    if (!codecs || PyModule_AddObject(m, "CODECS", codecs)) {
        Py_XDECREF(codecs);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *formats = record_formats_tuple();
    if (!formats || PyModule_AddObject(m, "RECORD_FORMATS", formats)) {
        Py_XDECREF(formats);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
