// fastrader::decode_step_cuda: one whole bar of CausalTransformer inference
// (fastrader/model/decode.py) in ONE kernel launch on the GPU, for
// bar-by-bar streaming where a step of many small torch ops costs tens of
// launches. The same arithmetic as the CPU kernel decode_step
// (cpu/decode_kernels.h: input projection, causal depthwise conv, per layer
// LN -> qkv -> ring-buffer KV write -> attention over the visible slots ->
// proj -> LN -> MLP with exact GELU, then LN -> head), float32 throughout,
// on the same packed weights and the same cache layout.
//
// Unlike decode_step (CPU, `int pos`, returns a float), the state lives on
// the device so that a step is capturable in a CUDA graph and replays
// without the host: `pos` is a 1-element int64 tensor (this bar's position,
// sinks + bars), incremented by the kernel, and the score goes to the
// 1-element float32 tensor `out`.
//
// One CTA of kThreads threads. Vectors live in shared memory; the packed
// weights are copied into shared memory first when they fit (the default
// model's 72 KB do), else read from global memory (L2) in place. Products
// y = b + x Wt (Wt (in, out) row-major): thread t takes output t % out and
// every P-th input (P = kThreads / out parts), the parts summed in shared
// memory in a fixed order (deterministic).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>

#include "check.h"

namespace fastrader {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxLayers = 16;

struct StepDims {
  int F, C, H, D, dff, k, sinks, window, L;
  int dil[kMaxLayers];
  int nmax;          // most visible slots of a query: sinks + window
  int n_params;      // packed weights (floats)
  int params_off;    // where the weights start in shared memory (floats, a multiple of 4)
  bool smem_params;  // weights copied into shared memory
  bool params_vec4;  // params 16-byte aligned and a multiple of 4 floats
  bool cache_vec4;   // cache 16-byte aligned and head_dim a multiple of 4
};

enum class Epi { kStore, kAddTo, kGelu };

// y[o] (op) b[o] + sum_i x[i] * Wt[i * out + o]; x, y, red in shared memory.
// Ends with __syncthreads (y is complete for every thread).
template <Epi E>
__device__ __forceinline__ void affine(const float* x, int in, const float* Wt, const float* b, int out, float* y,
                                       float* red) {
  const int t = threadIdx.x;
  if (out >= kThreads / 2) {  // one part: every thread owns whole outputs
    for (int o = t; o < out; o += kThreads) {
      float s = 0.f;
#pragma unroll 8
      for (int i = 0; i < in; ++i) s = fmaf(x[i], Wt[i * out + o], s);
      s += b[o];
      if (E == Epi::kAddTo) y[o] += s;
      else if (E == Epi::kGelu) y[o] = 0.5f * s * (1.0f + erff(s * 0.70710678118654752f));
      else y[o] = s;
    }
    __syncthreads();
    return;
  }
  int P = kThreads / out;
  if (P > in) P = in;
  if (t < P * out) {
    const int o = t % out, p = t / out;
    float s = 0.f;
#pragma unroll 8
    for (int i = p; i < in; i += P) s = fmaf(x[i], Wt[i * out + o], s);
    red[t] = s;
  }
  __syncthreads();
  if (t < out) {
    float s = 0.f;
    for (int p = 0; p < P; ++p) s += red[p * out + t];
    s += b[t];
    if (E == Epi::kAddTo) y[t] += s;
    else if (E == Epi::kGelu) y[t] = 0.5f * s * (1.0f + erff(s * 0.70710678118654752f));
    else y[t] = s;
  }
  __syncthreads();
}

// y = LayerNorm(x) * w + b over C values (eps 1e-5, biased variance, as nn.LayerNorm).
// Warp 0 computes; ends with __syncthreads.
__device__ __forceinline__ void layer_norm(const float* x, int C, const float* w, const float* b, float* y) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float s = 0.f;
    for (int c = lane; c < C; c += 32) s += x[c];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const float mu = s / float(C);
    float v = 0.f;
    for (int c = lane; c < C; c += 32) v += (x[c] - mu) * (x[c] - mu);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const float r = rsqrtf(v / float(C) + 1e-5f);
    for (int c = lane; c < C; c += 32) y[c] = (x[c] - mu) * r * w[c] + b[c];
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads)
    decode_step_kernel(const float* __restrict__ xg, const float* __restrict__ params, float* cache, float* hist,
                       int64_t* pos_p, float* __restrict__ out, const __grid_constant__ StepDims g) {
  extern __shared__ float sm[];
  const int t = threadIdx.x;
  const int C = g.C, H = g.H, D = g.D;
  const int64_t pos = *pos_p;  // every thread reads it before the (synchronised) increment at the end

  float* h = sm;
  float* a = h + C;
  float* qkv = a + C;
  float* att = qkv + 3 * C;
  float* u = att + C;
  float* xs = u + g.dff;
  float* red = xs + g.F;
  float* sc = red + kThreads;  // H * nmax scores, then H inverse sums
  float* inv = sc + H * g.nmax;
  float* psm = sm + g.params_off;  // the weights, when they fit (16-byte aligned)

  const float* P = params;
  if (g.smem_params) {
    // One CTA pulls the whole weight block: keep kCopy 16-byte loads per thread in flight (a plain
    // strided loop would wait one L2 round trip per 4 KB).
    constexpr int kCopy = 8;
    if (g.params_vec4) {
      const float4* src = reinterpret_cast<const float4*>(params);
      float4* dst = reinterpret_cast<float4*>(psm);
      const int n4 = g.n_params / 4;
      for (int base = 0; base < n4; base += kCopy * kThreads) {
        float4 r[kCopy];
#pragma unroll
        for (int j = 0; j < kCopy; ++j) {
          const int i = base + j * kThreads + t;
          if (i < n4) r[j] = __ldg(src + i);
        }
#pragma unroll
        for (int j = 0; j < kCopy; ++j) {
          const int i = base + j * kThreads + t;
          if (i < n4) dst[i] = r[j];
        }
      }
    } else {
      for (int base = 0; base < g.n_params; base += kCopy * kThreads) {
        float r[kCopy];
#pragma unroll
        for (int j = 0; j < kCopy; ++j) {
          const int i = base + j * kThreads + t;
          if (i < g.n_params) r[j] = __ldg(params + i);
        }
#pragma unroll
        for (int j = 0; j < kCopy; ++j) {
          const int i = base + j * kThreads + t;
          if (i < g.n_params) psm[i] = r[j];
        }
      }
    }
    P = psm;
  }
  for (int i = t; i < g.F; i += kThreads) xs[i] = xg[i];
  if (pos < 0) {  // no such bar: leave the state alone (the host checks pos >= sinks where it can)
    if (t == 0) *out = __int_as_float(0x7fc00000);
    return;
  }
  __syncthreads();

  auto take = [&](int n) {
    const float* p = P;
    P += n;
    return p;
  };
  const float *inp_w = take(g.F * C), *inp_b = take(C), *conv_w = take(g.k * C), *conv_b = take(C);
  affine<Epi::kStore>(xs, g.F, inp_w, inp_b, C, h, red);
  // causal depthwise conv over the last k projections: column c is thread c's alone
  for (int c = t; c < C; c += kThreads) {
    float s = conv_b[c];
    for (int i = 0; i + 1 < g.k; ++i) {
      const float hv = hist[(i + 1) * C + c];
      hist[i * C + c] = hv;
      s = fmaf(conv_w[i * C + c], hv, s);
    }
    hist[(g.k - 1) * C + c] = h[c];
    s = fmaf(conv_w[(g.k - 1) * C + c], h[c], s);
    h[c] += s;
  }
  __syncthreads();

  const float scale2 = float((1.0 / sqrt(double(D))) * 1.4426950408889634);
  float* K = cache;
  for (int l = 0; l < g.L; ++l) {
    const float *ln1_w = take(C), *ln1_b = take(C), *qkv_w = take(3 * C * C), *qkv_b = take(3 * C);
    const float *proj_w = take(C * C), *proj_b = take(C), *ln2_w = take(C), *ln2_b = take(C);
    const float *fc1_w = take(C * g.dff), *fc1_b = take(g.dff), *fc2_w = take(g.dff * C), *fc2_b = take(C);
    const int dil = g.dil[l];
    const int64_t span = int64_t(g.window) * dil, S = g.sinks + span;
    float* Kl = K;
    float* Vl = K + int64_t(H) * S * D;
    K += 2 * int64_t(H) * S * D;

    layer_norm(h, C, ln1_w, ln1_b, a);
    affine<Epi::kStore>(a, C, qkv_w, qkv_b, 3 * C, qkv, red);
    const int64_t p0 = pos % span;
    const int64_t slot = g.sinks + p0;
    for (int i = t; i < C; i += kThreads) {  // this bar's key and value into its ring slot
      const int hd = i / D, d = i % D;
      Kl[(hd * S + slot) * D + d] = qkv[C + i];
      Vl[(hd * S + slot) * D + d] = qkv[2 * C + i];
    }
    __syncthreads();  // orders the cache writes before the reads below (same CTA, plain loads)

    // visible slots (cpu gather_slots): sinks 0..ns-1, then nw ring keys back from the newest by dil
    const int ns = int(pos + 1 < g.sinks ? pos + 1 : g.sinks);
    int nw = 0;
    if (pos >= g.sinks) {
      const int64_t nw_max = (pos - g.sinks) / dil + 1;
      nw = int(nw_max < g.window ? nw_max : g.window);
    }
    const int n = ns + nw;
    auto slot_of = [&](int i) -> int64_t {
      if (i < ns) return i;
      int64_t r = p0 - int64_t(i - ns) * dil;
      if (r < 0) r += span;
      return g.sinks + r;
    };
    if (g.cache_vec4) {
#pragma unroll 4
      for (int e = t; e < H * n; e += kThreads) {
        const int hd = e / n, i = e % n;
        const float4* kr = reinterpret_cast<const float4*>(Kl + (hd * S + slot_of(i)) * D);
        const float* qr = qkv + hd * D;
        float s = 0.f;
        for (int d4 = 0; d4 < D / 4; ++d4) {
          const float4 kv = kr[d4];
          s = fmaf(qr[4 * d4], kv.x, s);
          s = fmaf(qr[4 * d4 + 1], kv.y, s);
          s = fmaf(qr[4 * d4 + 2], kv.z, s);
          s = fmaf(qr[4 * d4 + 3], kv.w, s);
        }
        sc[hd * g.nmax + i] = s * scale2;
      }
    } else {
#pragma unroll 4
      for (int e = t; e < H * n; e += kThreads) {
        const int hd = e / n, i = e % n;
        const float* kr = Kl + (hd * S + slot_of(i)) * D;
        const float* qr = qkv + hd * D;
        float s = 0.f;
        for (int d = 0; d < D; ++d) s = fmaf(qr[d], kr[d], s);
        sc[hd * g.nmax + i] = s * scale2;
      }
    }
    __syncthreads();
    for (int hd = t / 32; hd < H; hd += kThreads / 32) {  // softmax, one warp per head
      const int lane = t % 32;
      float* r = sc + hd * g.nmax;
      float mx = -INFINITY;
      for (int i = lane; i < n; i += 32) mx = fmaxf(mx, r[i]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      float s = 0.f;
      for (int i = lane; i < n; i += 32) {
        const float e = exp2f(r[i] - mx);
        r[i] = e;
        s += e;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0) inv[hd] = 1.0f / s;
    }
    __syncthreads();
    {  // att[hd * D + d] = inv[hd] * sum_i p_i V[slot_i][d], the slots split in parts
      int Pp = kThreads / C;
      if (Pp < 1) Pp = 1;
      if (Pp > n) Pp = n > 0 ? n : 1;
      for (int e = t; e < Pp * C; e += kThreads) {
        const int o = e % C, p = e / C, hd = o / D, d = o % D;
        const float* r = sc + hd * g.nmax;
        float s = 0.f;
#pragma unroll 8
        for (int i = p; i < n; i += Pp) s = fmaf(r[i], Vl[(hd * S + slot_of(i)) * D + d], s);
        if (Pp * C <= kThreads) red[e] = s;
        else att[o] = s;  // Pp == 1 and C > kThreads: one part, stored directly
      }
      __syncthreads();
      if (Pp * C <= kThreads) {
        for (int o = t; o < C; o += kThreads) {
          float s = 0.f;
          for (int p = 0; p < Pp; ++p) s += red[p * C + o];
          att[o] = s * inv[o / D];
        }
      } else {
        for (int o = t; o < C; o += kThreads) att[o] *= inv[o / D];
      }
      __syncthreads();
    }
    affine<Epi::kAddTo>(att, C, proj_w, proj_b, C, h, red);
    layer_norm(h, C, ln2_w, ln2_b, a);
    affine<Epi::kGelu>(a, C, fc1_w, fc1_b, g.dff, u, red);
    affine<Epi::kAddTo>(u, g.dff, fc2_w, fc2_b, C, h, red);
  }
  const float *lnf_w = take(C), *lnf_b = take(C), *head_w = take(C), *head_b = take(1);
  layer_norm(h, C, lnf_w, lnf_b, a);
  if (t < 32) {
    float s = 0.f;
    for (int c = t; c < C; c += 32) s = fmaf(a[c], head_w[c], s);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (t == 0) {
      *out = s + head_b[0];
      *pos_p = pos + 1;  // after every thread's read of pos (the barriers above)
    }
  }
}

void decode_step_cuda(const at::Tensor& x, const at::Tensor& params, const at::Tensor& cache, const at::Tensor& conv,
                      const at::Tensor& pos, const at::Tensor& out, int64_t n_features, int64_t d_model,
                      int64_t n_heads, int64_t d_ff, int64_t conv_kernel, int64_t sinks, int64_t window,
                      at::IntArrayRef dilations) {
  const int64_t F = n_features, C = d_model, H = n_heads, k = conv_kernel, L = int64_t(dilations.size());
  FR_CHECK(C > 0 && H > 0 && C % H == 0 && F > 0 && d_ff > 0 && k >= 1 && L >= 1 && window >= 1 && sinks >= 0,
           "decode_step_cuda: bad model dimensions");
  FR_CHECK(L <= kMaxLayers, "decode_step_cuda: at most ", int64_t(kMaxLayers), " layers, got ", L);
  FR_CHECK(C <= 4096 && d_ff <= 16384 && F <= 4096 && k <= 64 && window <= (1 << 20) && sinks <= (1 << 20),
           "decode_step_cuda: dimensions out of range");
  for (int64_t d : dilations) FR_CHECK(d >= 1 && window * d <= (int64_t(1) << 30), "decode_step_cuda: bad dilation");
  const int64_t D = C / H;
  for (const at::Tensor* t : {&x, &params, &cache, &conv, &out})
    FR_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->is_cuda(),
             "decode_step_cuda: x, params, cache, conv, out must be contiguous float32 CUDA tensors");
  FR_CHECK(pos.scalar_type() == at::kLong && pos.numel() == 1 && pos.is_cuda(),
           "decode_step_cuda: pos must be a 1-element int64 CUDA tensor");
  for (const at::Tensor* t : {&params, &cache, &conv, &pos, &out})
    FR_CHECK(t->device() == x.device(), "decode_step_cuda: all tensors must be on one device");
  const int64_t per_layer = 4 * C + 3 * C * C + 3 * C + C * C + C + C * d_ff + d_ff + d_ff * C + C;
  const int64_t n_params = F * C + C + k * C + C + L * per_layer + 2 * C + C + 1;
  FR_CHECK(params.numel() == n_params, "decode_step_cuda: params has the wrong size for these dimensions");
  FR_CHECK(n_params < (int64_t(1) << 31), "decode_step_cuda: too many parameters");
  FR_CHECK(x.numel() == F && conv.numel() == k * C && out.numel() == 1,
           "decode_step_cuda: x, conv or out has the wrong size");
  int64_t n_cache = 0;
  for (int64_t l = 0; l < L; ++l) n_cache += 2 * H * (sinks + window * dilations[l]) * D;
  FR_CHECK(cache.numel() == n_cache, "decode_step_cuda: cache has the wrong size for these dimensions");

  StepDims g{};
  g.F = int(F);
  g.C = int(C);
  g.H = int(H);
  g.D = int(D);
  g.dff = int(d_ff);
  g.k = int(k);
  g.sinks = int(sinks);
  g.window = int(window);
  g.L = int(L);
  for (int64_t l = 0; l < L; ++l) g.dil[l] = int(dilations[l]);
  g.nmax = int(sinks + window);
  g.n_params = int(n_params);

  const c10::cuda::CUDAGuard guard(x.device());
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, x.device().index()));
  const int64_t vec_floats = 6 * C + d_ff + F + kThreads + H * (sinks + window) + H;
  const int64_t vec_bytes = vec_floats * int64_t(sizeof(float));
  const int64_t vec_aligned = (vec_floats + 3) / 4 * 4;  // the weights start 16-byte aligned (float4 copies)
  const int64_t all_bytes = (vec_aligned + n_params) * int64_t(sizeof(float));
  FR_CHECK(vec_bytes <= max_smem, "decode_step_cuda: the step's vectors (", vec_bytes,
           " bytes) exceed the shared memory of one block (", int64_t(max_smem), ")");
  g.smem_params = all_bytes <= max_smem;
  const int64_t smem = g.smem_params ? (vec_aligned + n_params) * int64_t(sizeof(float)) : vec_bytes;
  g.params_off = int(vec_aligned);
  g.params_vec4 = reinterpret_cast<uintptr_t>(params.const_data_ptr()) % 16 == 0 && n_params % 4 == 0;
  g.cache_vec4 = reinterpret_cast<uintptr_t>(cache.const_data_ptr()) % 16 == 0 && D % 4 == 0;
  auto kernel = decode_step_kernel;
  // Raise the kernel's shared-memory limit once per device, to the most it may ask for (not on every
  // call: a step is also launched while a CUDA graph is being captured).
  static std::atomic<bool> attr_set[64] = {};
  const int dev = x.device().index();
  FR_CHECK(dev >= 0 && dev < 64, "decode_step_cuda: device index out of range");
  if (!attr_set[dev].load(std::memory_order_acquire)) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem));
    attr_set[dev].store(true, std::memory_order_release);
  }
  kernel<<<1, kThreads, size_t(smem), c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<float>(), params.const_data_ptr<float>(), cache.mutable_data_ptr<float>(),
      conv.mutable_data_ptr<float>(), pos.mutable_data_ptr<int64_t>(), out.mutable_data_ptr<float>(), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrader, m) {
  // One bar of CausalTransformer inference, state on the device (capturable in a CUDA graph):
  // reads x (n_features), updates cache, conv and pos (+1) in place, writes the score to out (1).
  m.def(
      "decode_step_cuda(Tensor x, Tensor params, Tensor(a!) cache, Tensor(b!) conv, Tensor(c!) pos, "
      "Tensor(d!) out, int n_features, int d_model, int n_heads, int d_ff, int conv_kernel, int sinks, "
      "int window, int[] dilations) -> ()");
}

TORCH_LIBRARY_IMPL(fastrader, CUDA, m) { m.impl("decode_step_cuda", &decode_step_cuda); }

}  // namespace cuda
}  // namespace fastrader
