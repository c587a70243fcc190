// CPU kernel of fastrader::sparse_attn_decode: one new query per sequence
// against a ring-buffer KV cache (bar-by-bar inference).
//
// The cache holds `sinks` fixed slots, then window*dilation ring slots; key
// position j >= sinks lives in slot sinks + (j mod window*dilation). The query
// at position p sees the sink keys j < min(sinks, p+1) and the window keys
// j = p - m*dilation (m < window) with j >= sinks -- the same set as row p of
// sparse_attn_fwd, a key that is both a sink and in the window counted once.
//
// Per (sequence, head): scores in base 2 (log2(e) folded into the scale),
// then max, exp2 and a weighted sum of the value rows. The work is
// O(window * head_dim): tiny next to the rest of a model step, so calls run
// on the calling thread unless there is a lot of it (a big batch).
//
// This file holds the op entries only (argument checks, dtype handling,
// allocation, registration), compiled for the baseline; the kernels are in
// cpu/decode_kernels.h, compiled per ISA and called through cpu::kernels()
// like the forward and backward (see isa.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "check.h"
#include "cpu/isa.h"

namespace fastrader {
namespace cpu {
namespace {

at::Tensor sparse_attn_decode_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& pos, int64_t window, int64_t dilation, int64_t sinks,
                                  double scale) {
  FR_CHECK(q.dim() == 3, "sparse_attn_decode: q must be (batch, heads, head_dim)");
  FR_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(),
           "sparse_attn_decode: k_cache and v_cache must be equal (batch, heads, slots, head_dim)");
  FR_CHECK(window >= 1 && dilation >= 1 && sinks >= 0, "sparse_attn_decode: bad window/dilation/sinks");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t span = window * dilation;
  FR_CHECK(k_cache.size(0) == B && k_cache.size(1) == H && k_cache.size(3) == D,
           "sparse_attn_decode: cache batch/heads/head_dim must match q");
  FR_CHECK(k_cache.size(2) == sinks + span, "sparse_attn_decode: cache must have sinks + window*dilation slots");
  FR_CHECK(pos.dim() == 1 && pos.size(0) == B && pos.scalar_type() == at::kLong,
           "sparse_attn_decode: pos must be an int64 (batch,) tensor");
  const auto ct = (q.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const at::Tensor qc = q.to(ct).contiguous(), kc = k_cache.to(ct).contiguous(),
                   vc = v_cache.to(ct).contiguous(), pc = pos.contiguous();
  at::Tensor out = at::empty({B, H, D}, qc.options());
  if (out.numel() == 0) return out.to(q.scalar_type());
  const int64_t* pp = pc.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) FR_CHECK(pp[b] >= 0, "sparse_attn_decode: pos must be >= 0");
  AT_DISPATCH_FLOATING_TYPES(ct, "sparse_attn_decode_cpu", [&] {
    run_decode(kernels(), qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
               out.mutable_data_ptr<scalar_t>(), pp, B, H, D, window, dilation, sinks, scale);
  });
  return out.to(q.scalar_type());
}

// ---- decode_step: one whole model step for one sequence ---------------------------------
//
// For bar-by-bar streaming of fastrader.model.CausalTransformer one Python call
// per bar has to do everything: the per-op overhead of numpy or torch on
// 64-wide vectors is far larger than the arithmetic. `params` is the model's
// weights flattened in the order fastrader/model/decode.py packs them
// (matrices transposed to (in, out) so every product is a run of contiguous
// axpys, which GCC vectorises without reassociating sums). `cache` holds, per
// layer, K then V of shape (heads, sinks + window*dilation, head_dim) with
// the ring layout of sparse_attn_decode; `conv` the last conv_kernel inputs
// of the causal convolution, oldest first. Both are updated in place.

double decode_step_cpu(const at::Tensor& x, const at::Tensor& params, const at::Tensor& cache, const at::Tensor& conv, int64_t pos,
                       int64_t n_features, int64_t d_model, int64_t n_heads, int64_t d_ff, int64_t conv_kernel,
                       int64_t sinks, int64_t window, at::IntArrayRef dilations) {
  const int64_t F = n_features, C = d_model, H = n_heads, k = conv_kernel, L = (int64_t)dilations.size();
  FR_CHECK(C % H == 0 && C > 0 && F > 0 && d_ff > 0 && k >= 1 && L >= 1 && window >= 1 && sinks >= 0 && pos >= sinks,
           "decode_step: bad model dimensions");
  const int64_t D = C / H;
  for (const at::Tensor* t : {&x, &params, &cache, &conv})
    FR_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
             "decode_step: tensors must be contiguous float32 on the CPU");
  const int64_t per_layer = 4 * C + 3 * C * C + 3 * C + C * C + C + C * d_ff + d_ff + d_ff * C + C;
  const int64_t n_params = F * C + C + k * C + C + L * per_layer + 2 * C + C + 1;
  FR_CHECK(params.numel() == n_params, "decode_step: params has the wrong size for these dimensions");
  FR_CHECK(x.numel() == F && conv.numel() == k * C, "decode_step: x or conv has the wrong size");
  int64_t n_cache = 0;
  for (int64_t l = 0; l < L; ++l) n_cache += 2 * H * (sinks + window * dilations[l]) * D;
  FR_CHECK(cache.numel() == n_cache, "decode_step: cache has the wrong size for these dimensions");

  return kernels().decode_step(x.const_data_ptr<float>(), params.const_data_ptr<float>(), cache.mutable_data_ptr<float>(),
                               conv.mutable_data_ptr<float>(), pos, F, C, H, d_ff, k, sinks, window, dilations.data(), L);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrader, m) {
  // One bar of CausalTransformer inference with KV caches; see decode_step_cpu.
  m.def(
      "decode_step(Tensor x, Tensor params, Tensor(a!) cache, Tensor(b!) conv, int pos, int n_features, "
      "int d_model, int n_heads, int d_ff, int conv_kernel, int sinks, int window, int[] dilations) -> float");
}

TORCH_LIBRARY_IMPL(fastrader, CPU, m) {
  m.impl("sparse_attn_decode", &sparse_attn_decode_cpu);
  m.impl("decode_step", &decode_step_cpu);
}

}  // namespace cpu
}  // namespace fastrader
