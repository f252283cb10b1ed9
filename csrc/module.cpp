// The Python module fastgan._C and the one definition of the `fastgan`
// operator namespace.
//
// Importing fastgan._C loads this library, whose static initialisers
// register the ops: each op's file adds its schemas and kernels with
// TORCH_LIBRARY_FRAGMENT(fastgan, m) / TORCH_LIBRARY_IMPL(fastgan, CUDA, m),
// and they appear as torch.ops.fastgan.*.  The module itself is empty.  A JIT
// build (fastgan/_ext.py) loads the same sources as a plain library
// (torch.ops.load_library), where PyInit__C is simply unused.
#include <Python.h>

#include <torch/library.h>

// Exactly one TORCH_LIBRARY per namespace may exist: this one.  It holds no
// schemas; the fragments in the other files do.
TORCH_LIBRARY(fastgan, m) { (void)m; }

static struct PyModuleDef fastgan_c_module = {
    PyModuleDef_HEAD_INIT,
    "fastgan._C",                                                     // m_name
    "fastgan's CUDA kernels; the ops are registered as torch.ops.fastgan.*",  // m_doc
    -1,                                                               // m_size
    nullptr,                                                          // m_methods
    nullptr,                                                          // m_slots
    nullptr,                                                          // m_traverse
    nullptr,                                                          // m_clear
    nullptr,                                                          // m_free
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastgan_c_module); }
