// Schema of the fastrader attention ops and the (empty) Python module that
// loading fastrader._C needs; kernels register per device in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(fastrader, m) {
  // Causal sliding-window + dilation + sink attention. Query i sees key j iff
  // j <= i and ((i-j) < window*dilation and (i-j) % dilation == 0, or j < sinks).
  // Returns the output and the row log-sum-exp of the scaled scores.
  m.def(
      "sparse_attn_fwd(Tensor q, Tensor k, Tensor v, int window, int dilation, int sinks, "
      "float scale) -> (Tensor, Tensor)");
  // Gradients of q, k, v, recomputed from lse; grad_lse (optional) is the
  // gradient flowing into the forward's lse output.
  m.def(
      "sparse_attn_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "int window, int dilation, int sinks, float scale, Tensor? grad_lse=None) "
      "-> (Tensor, Tensor, Tensor)");
  // One new query per sequence over a ring-buffer KV cache (bar-by-bar decode).
  // q: (B, H, D); k_cache, v_cache: (B, H, sinks + window*dilation, D); pos: (B,) int64,
  // the position of each query, whose own key is already in the cache. Slots
  // [0, sinks) hold the keys of positions 0..sinks-1; key position j >= sinks lives
  // in slot sinks + (j mod window*dilation). The query at pos sees exactly the keys
  // of sparse_attn_fwd's row pos (a key that is both a sink and in the window counts
  // once, from its sink slot). Returns the output (B, H, D).
  m.def(
      "sparse_attn_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor pos, int window, "
      "int dilation, int sinks, float scale) -> Tensor");
}

// What this binary is, for `fastrader doctor` / `--version`: the facts come
// from the build itself (setup.py writes fastrader_build_info.h) and from the
// CPU kernel dispatch, so they cannot drift from the loaded .so.
#include "fastrader_build_info.h"
#include "cpu/isa.h"

static PyObject* fr_build_info(PyObject*, PyObject*) {
#if defined(FASTRADER_WITH_CUDA)
  PyObject* cuda = Py_True;
#else
  PyObject* cuda = Py_False;
#endif
  return Py_BuildValue("{s:s,s:O,s:s,s:O,s:s,s:s,s:s}", "torch", FR_BUILD_TORCH, "cuda", cuda,
                       "cuda_archs", FR_BUILD_CUDA_ARCHS, "native", FR_BUILD_NATIVE ? Py_True : Py_False,
                       "compiler", __VERSION__, "cpu_isa_compiled", fastrader_cpu_isa_compiled(),
                       "cpu_isa", fastrader_cpu_isa_selected());
}

static PyMethodDef fr_methods[] = {
    {"build_info", fr_build_info, METH_NOARGS, "dict of build facts: torch, cpu_isa, cuda_archs, ..."},
    {nullptr, nullptr, 0, nullptr}};

// `import fastrader._C` runs the static registrations above; the module
// itself only carries build_info().
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastrader torch ops", -1, fr_methods};
  return PyModule_Create(&module);
}
