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

// `import fastrader._C` only has to run the static registrations above.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastrader torch ops", -1, nullptr};
  return PyModule_Create(&module);
}
