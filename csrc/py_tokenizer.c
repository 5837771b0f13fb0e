/* Python binding for the tokenizer core: the only file of this extension that includes Python.h. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "rwkv5.tokenizer._tokenizer", "rwkv5 tokenizer core (C).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tokenizer(void) { return PyModule_Create(&moduledef); }
