/* Python binding for the dataprep core: the only file of this extension that includes Python.h. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "rwkv5.dataprep._dataprep", "rwkv5 dataprep core (C).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dataprep(void) { return PyModule_Create(&moduledef); }
