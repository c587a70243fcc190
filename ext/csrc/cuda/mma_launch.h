// Host entry points of the tensor-core (mma.sync) kernels, called by the
// dispatching ops in sparse_attention_cuda.cu for float16/bfloat16 inputs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

#include "cuda/mask.cuh"

namespace fastrader {
namespace cuda {

// True when the mma kernels take this call (see can_run in
// fastrader/attention/ops.py, which mirrors it): float16/bfloat16, head dim
// 1..128, a device of compute capability >= 8.0, and FASTRADER_CUDA_KERNEL
// not set to "scalar".
bool mma_supported(const at::Tensor& q);

// Geometry of one call (mask.cuh); window, dilation, sinks clamped to N.
BandGeo make_band_geo(const at::Tensor& q, int64_t window, int64_t dilation, int64_t sinks, double scale);
// t as the kernels read it: contiguous, head dim zero-padded to dpad (a
// multiple of 8), 16-byte aligned.
at::Tensor mma_operand(const at::Tensor& t, int64_t dpad);

// q, k, v contiguous (B, H, N, D); out like q, lse float32 (B, H, N).
void mma_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
             int64_t window, int64_t dilation, int64_t sinks, double scale);

// Hopper forward (fwd_wgmma_sm90.cu). wgmma_refusal: empty when the wgmma
// kernel takes the call, else why not (dtype, head dim, arch, dilation, a
// build without sm_90a). wgmma_fwd: runs it and returns true when
// FASTRADER_CUDA_FWD (auto | mma | wgmma) and wgmma_refusal allow, returns
// false for the caller to run mma_fwd, and throws when FASTRADER_CUDA_FWD=wgmma
// and the call is refused.
std::string wgmma_refusal(const at::Tensor& q, int64_t window, int64_t dilation, int64_t sinks);
bool wgmma_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
               int64_t window, int64_t dilation, int64_t sinks, double scale);

// Fills dq, dk, dv (like q). o, dout like q; lse float32; glse float32 or undefined.
void mma_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const at::Tensor& o, const at::Tensor& lse, const at::Tensor& glse, at::Tensor& dq, at::Tensor& dk,
             at::Tensor& dv, int64_t window, int64_t dilation, int64_t sinks, double scale);

}  // namespace cuda
}  // namespace fastrader
