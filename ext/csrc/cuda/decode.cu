// CUDA kernel of fastrader::sparse_attn_decode: one new query per sequence
// over a ring-buffer KV cache (schema and slot layout in
// ../sparse_attention.cpp), for bar-by-bar inference.
//
// Split-K ("flash decoding"): a single query per (batch, head) has too little
// work for one CTA to pull the window's keys at memory speed, so the W
// window keys are cut into nsplit chunks, one CTA each, plus one CTA for the
// sink keys the window does not cover. Each CTA writes its partial softmax
// state (max, sum, unnormalised output) and a second launch merges them.
// Both launches have fixed shapes and read pos on the device, so a step is
// capturable in a CUDA graph (no host sync, no data-dependent launch).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "check.h"

namespace fastrader {
namespace cuda {
namespace {

constexpr int kDecThreads = 128;

template <typename A>
struct DecBase;
template <>
struct DecBase<float> {  // scores in base 2
  static constexpr double kToBase = 1.4426950408889634;
  static __device__ __forceinline__ float exp(float x) { return exp2f(x); }
};
template <>
struct DecBase<double> {
  static constexpr double kToBase = 1.0;
  static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
};

struct DecGeo {
  int H, D, W, dil, S, L;  // L = cache slots = S + W * dil
  int nsplit, chunk, nparts;
  bool aligned;  // cache base pointers 16-byte aligned
};

template <typename T, typename A, int TPR, int E>
__global__ void __launch_bounds__(kDecThreads)
    decode_split_kernel(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                        const int64_t* __restrict__ pos, A* __restrict__ pm, A* __restrict__ pl,
                        A* __restrict__ po, DecGeo g, A qmul) {
  constexpr int G = kDecThreads / TPR;  // key groups per CTA
  constexpr int WR = TPR * E;
  __shared__ A s_m[G], s_l[G];
  __shared__ A s_o[G][WR];

  const int part = blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t b = bh / g.H;
  const int64_t p = pos[b];
  const int grp = threadIdx.x / TPR;
  const int d0 = int(threadIdx.x % TPR) * E;
  const unsigned first = (threadIdx.x & 31u) & ~unsigned(TPR - 1);
  const unsigned mask = TPR == 32 ? 0xffffffffu : (((1u << TPR) - 1u) << first);
  const T* kh = kc + bh * int64_t(g.L) * g.D;
  const T* vh = vc + bh * int64_t(g.L) * g.D;
  const int64_t span = int64_t(g.W) * g.dil;

  A qr[E], o[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    qr[e] = d0 + e < g.D ? static_cast<A>(q[bh * g.D + d0 + e]) * qmul : A(0);
    o[e] = A(0);
  }
  A m = static_cast<A>(-INFINITY), l = A(0);

  // 16-byte loads when a lane's E elements are 16 bytes and rows are aligned.
  const bool vec = E * sizeof(T) == 16 && g.D % E == 0 && g.aligned;
  auto load = [&](const T* row, A (&x)[E]) {
    if (vec) {
      if (d0 < g.D) {
        const uint4 u = *reinterpret_cast<const uint4*>(row + d0);
        const T* t = reinterpret_cast<const T*>(&u);
#pragma unroll
        for (int e = 0; e < E; ++e) x[e] = static_cast<A>(t[e]);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) x[e] = A(0);
      }
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) x[e] = d0 + e < g.D ? static_cast<A>(row[d0 + e]) : A(0);
    }
  };
  auto visit = [&](const A (&kr)[E], const A (&vr)[E]) {
    A s = A(0);
#pragma unroll
    for (int e = 0; e < E; ++e) s += qr[e] * kr[e];
#pragma unroll
    for (int off = TPR / 2; off > 0; off >>= 1) s += __shfl_xor_sync(mask, s, off, TPR);
    const A mn = s > m ? s : m;
    const A alpha = DecBase<A>::exp(m - mn);
    const A pr = DecBase<A>::exp(s - mn);
    m = mn;
    l = l * alpha + pr;
#pragma unroll
    for (int e = 0; e < E; ++e) o[e] = o[e] * alpha + pr * vr[e];
  };
  auto slot_of = [&](int64_t j) { return j < g.S ? j : g.S + j % span; };

  if (p >= 0) {
    if (part < g.nsplit) {
      // window keys m in [part*chunk, m_end), j = p - m*dil >= 0
      int64_t m_end = min((part + 1) * g.chunk, g.W);
      if (p / g.dil + 1 < m_end) m_end = p / g.dil + 1;
      int mi = part * g.chunk + grp;
      // two keys per step: both rows' loads are in flight before either is used
      for (; mi + G < m_end; mi += 2 * G) {
        A k0[E], v0[E], k1[E], v1[E];
        const int64_t s0 = slot_of(p - int64_t(mi) * g.dil), s1 = slot_of(p - int64_t(mi + G) * g.dil);
        load(kh + s0 * g.D, k0);
        load(vh + s0 * g.D, v0);
        load(kh + s1 * g.D, k1);
        load(vh + s1 * g.D, v1);
        visit(k0, v0);
        visit(k1, v1);
      }
      if (mi < m_end) {
        A k0[E], v0[E];
        const int64_t s0 = slot_of(p - int64_t(mi) * g.dil);
        load(kh + s0 * g.D, k0);
        load(vh + s0 * g.D, v0);
        visit(k0, v0);
      }
    } else {  // sinks not in the window
      const int64_t ns = p + 1 < g.S ? p + 1 : g.S;
      for (int64_t j = grp; j < ns; j += G) {
        const int64_t d = p - j;
        if (d % g.dil == 0 && d / g.dil < g.W) continue;
        A k0[E], v0[E];
        load(kh + j * g.D, k0);
        load(vh + j * g.D, v0);
        visit(k0, v0);
      }
    }
  }

  if (d0 == 0) {
    s_m[grp] = m;
    s_l[grp] = l;
  }
#pragma unroll
  for (int e = 0; e < E; ++e) s_o[grp][d0 + e] = o[e];
  __syncthreads();
  A M = static_cast<A>(-INFINITY);
#pragma unroll
  for (int x = 0; x < G; ++x) M = s_m[x] > M ? s_m[x] : M;
  const A Mu = M == static_cast<A>(-INFINITY) ? A(0) : M;
  const int64_t slot = bh * g.nparts + part;
  if (threadIdx.x == 0) {
    A Ls = A(0);
    for (int x = 0; x < G; ++x) Ls += s_l[x] * DecBase<A>::exp(s_m[x] - Mu);
    pm[slot] = M;
    pl[slot] = Ls;
  }
  for (int d = threadIdx.x; d < g.D; d += kDecThreads) {
    A acc = A(0);
    for (int x = 0; x < G; ++x) acc += s_o[x][d] * DecBase<A>::exp(s_m[x] - Mu);
    po[slot * g.D + d] = acc;
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kDecThreads)
    decode_merge_kernel(const A* __restrict__ pm, const A* __restrict__ pl, const A* __restrict__ po,
                        T* __restrict__ out, DecGeo g) {
  const int64_t bh = blockIdx.x;
  const A* m = pm + bh * g.nparts;
  const A* l = pl + bh * g.nparts;
  A M = static_cast<A>(-INFINITY);
  for (int x = 0; x < g.nparts; ++x) M = m[x] > M ? m[x] : M;
  const A Mu = M == static_cast<A>(-INFINITY) ? A(0) : M;
  A L = A(0);
  for (int x = 0; x < g.nparts; ++x) L += l[x] * DecBase<A>::exp(m[x] - Mu);
  const A inv = L > A(0) ? A(1) / L : A(0);  // no visible key (pos < 0): zeros
  for (int d = threadIdx.x; d < g.D; d += kDecThreads) {
    A acc = A(0);
    for (int x = 0; x < g.nparts; ++x) acc += po[(bh * g.nparts + x) * g.D + d] * DecBase<A>::exp(m[x] - Mu);
    out[bh * g.D + d] = static_cast<T>(acc * inv);
  }
}

template <typename F>
void dec_config(int64_t D, F&& f) {
  using std::integral_constant;
  if (D <= 16) {
    f(integral_constant<int, 4>{}, integral_constant<int, 4>{});
  } else if (D <= 32) {
    f(integral_constant<int, 8>{}, integral_constant<int, 4>{});
  } else if (D <= 64) {
    f(integral_constant<int, 8>{}, integral_constant<int, 8>{});
  } else if (D <= 128) {
    f(integral_constant<int, 16>{}, integral_constant<int, 8>{});
  } else {
    f(integral_constant<int, 32>{}, integral_constant<int, 8>{});
  }
}

at::Tensor sparse_attn_decode_cuda(const at::Tensor& q_, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                   const at::Tensor& pos_, int64_t window, int64_t dilation, int64_t sinks,
                                   double scale) {
  const char* op = "sparse_attn_decode";
  FR_CHECK(q_.is_cuda() && k_cache.is_cuda() && v_cache.is_cuda() && pos_.is_cuda(), op,
           ": q, k_cache, v_cache, pos must be CUDA tensors");
  FR_CHECK(k_cache.device() == q_.device() && v_cache.device() == q_.device() && pos_.device() == q_.device(), op,
           ": all tensors must be on one device");
  FR_CHECK(q_.dim() == 3, op, ": q must be (batch, heads, head_dim), got ", q_.sizes());
  FR_CHECK(window >= 1 && dilation >= 1 && sinks >= 0, op, ": need window >= 1, dilation >= 1, sinks >= 0, got ",
           window, ", ", dilation, ", ", sinks);
  FR_CHECK(window <= std::numeric_limits<int>::max() && dilation <= std::numeric_limits<int>::max() &&
               sinks <= std::numeric_limits<int>::max() / 2,
           op, ": window, dilation, sinks too large");
  const int64_t B = q_.size(0), H = q_.size(1), D = q_.size(2);
  const int64_t L = sinks + window * dilation;
  FR_CHECK(L <= std::numeric_limits<int>::max(), op, ": cache too long");
  const std::vector<int64_t> cshape{B, H, L, D};
  FR_CHECK(k_cache.sizes() == cshape && v_cache.sizes() == cshape, op,
           ": k_cache and v_cache must be (batch, heads, sinks + window*dilation, head_dim) = ", at::IntArrayRef(cshape),
           ", got ", k_cache.sizes(), ", ", v_cache.sizes());
  FR_CHECK(k_cache.scalar_type() == q_.scalar_type() && v_cache.scalar_type() == q_.scalar_type(), op,
           ": q, k_cache, v_cache must share one dtype");
  const auto st = q_.scalar_type();
  FR_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
           ": dtype must be float32, float64, float16 or bfloat16, got ", st);
  FR_CHECK(pos_.scalar_type() == at::kLong && pos_.dim() == 1 && pos_.size(0) == B, op,
           ": pos must be int64 of shape (batch,), got ", pos_.scalar_type(), " ", pos_.sizes());
  FR_CHECK(D >= 1 && D <= 256, op, ": head_dim must be in [1, 256], got ", D);
  FR_CHECK(B * H <= 65535, op, ": batch * heads must be <= 65535, got ", B * H);
  FR_CHECK(std::isfinite(scale), op, ": scale must be finite");

  const c10::cuda::CUDAGuard guard(q_.device());
  at::Tensor out = at::empty({B, H, D}, q_.options());
  if (B * H == 0 || D == 0) return out;
  const at::Tensor q = q_.contiguous(), kc = k_cache.contiguous(), vc = v_cache.contiguous();
  const at::Tensor pos = pos_.contiguous();

  int sms = 132;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index()));
  DecGeo g;
  g.H = int(H);
  g.D = int(D);
  g.W = int(window);
  g.dil = int(dilation);
  g.S = int(sinks);
  g.L = int(L);
  g.aligned = reinterpret_cast<uintptr_t>(kc.const_data_ptr()) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(vc.const_data_ptr()) % 16 == 0;
  // About two CTAs per SM over all (batch, head) pairs, at least 32 keys each.
  const int64_t want = std::max<int64_t>(1, (2 * sms + B * H - 1) / (B * H));
  g.nsplit = int(std::min<int64_t>(want, (window + 31) / 32));
  g.chunk = int((window + g.nsplit - 1) / g.nsplit);
  g.nsplit = int((window + g.chunk - 1) / g.chunk);
  g.nparts = g.nsplit + (sinks > 0 ? 1 : 0);

  const auto ct = st == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor pm = at::empty({B * H, g.nparts}, q.options().dtype(ct));
  at::Tensor pl = at::empty({B * H, g.nparts}, q.options().dtype(ct));
  at::Tensor po = at::empty({B * H, g.nparts, D}, q.options().dtype(ct));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "sparse_attn_decode_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const A qmul = static_cast<A>(scale * DecBase<A>::kToBase);
    dec_config(D, [&](auto tpr, auto e) {
      constexpr int TPR = decltype(tpr)::value;
      constexpr int E = decltype(e)::value;
      decode_split_kernel<T, A, TPR, E><<<dim3(g.nparts, unsigned(B * H)), kDecThreads, 0, stream>>>(
          q.const_data_ptr<T>(), kc.const_data_ptr<T>(), vc.const_data_ptr<T>(), pos.const_data_ptr<int64_t>(),
          pm.mutable_data_ptr<A>(), pl.mutable_data_ptr<A>(), po.mutable_data_ptr<A>(), g, qmul);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    decode_merge_kernel<T, A><<<unsigned(B * H), kDecThreads, 0, stream>>>(
        pm.const_data_ptr<A>(), pl.const_data_ptr<A>(), po.const_data_ptr<A>(), out.mutable_data_ptr<T>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrader, CUDA, m) { m.impl("sparse_attn_decode", &sparse_attn_decode_cuda); }

}  // namespace cuda
}  // namespace fastrader
