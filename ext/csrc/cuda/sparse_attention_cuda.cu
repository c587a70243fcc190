// CUDA kernels of fastrader::sparse_attn_fwd / sparse_attn_bwd, and the
// dispatch between them: float16/bfloat16 with head dim <= 128 on a device of
// compute capability >= 8.0 go to the tensor-core kernels (fwd_mma.cu,
// bwd_mma.cu); float32/float64 and the rest run the kernels below.
//
// The kernels below are a deliberately simple implementation: every query row (forward, dQ)
// or key row (dK/dV) is owned by a group of TPR consecutive threads of one
// warp, each holding E consecutive elements of the head dimension in
// registers; dot products are reduced with butterfly shuffles inside the
// group. Only the keys a row may see are visited, so the work is
// O(N * (window + sinks) * D) and the memory O(N * D): nothing of size N^2.
//
//   forward   one group per query row, online softmax over its window keys
//             j = i - m*dilation (m < window) and then its sink keys
//             j < min(sinks, i+1) not already in the window.
//   backward  (1) one group per query row: Delta_i = dO_i.O_i - dlse_i and dQ;
//             (2) one group per non-sink key row j: dK_j, dV_j over the
//                 queries i = j + m*dilation (m < window, i < N);
//             (3) one block per sink key j (< sinks): every query i >= j sees
//                 it, so the block's groups split [j, N) and reduce in shared
//                 memory. Each output row has exactly one writer: no atomics.
//
// Conventions match the CPU kernels (cpu/sparse_attention_cpu.cpp): math in
// float32 for float16/bfloat16/float32 and float64 for float64; lse has that
// compute dtype; out/dq/dk/dv have q's dtype; lse, grad_lse of any floating
// dtype are converted to the compute dtype; the backward uses
// Delta_i = dO_i.O_i - grad_lse_i, i.e. dS = P * (dP - dO.O + grad_lse).
//
// float32 math keeps scores in base 2 (q pre-multiplied by scale*log2(e)) and
// uses exp2f/log2f, which --use_fast_math maps to ex2.approx/lg2.approx (about
// 2 ulp; ex2.approx(-inf) = +0, which the first online-softmax step relies on).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "check.h"
#include "cuda/mma_launch.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fastrader {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // threads per block, every kernel

// ------------------------------------------------------------ small helpers

template <typename A>
struct Base;

template <>
struct Base<float> {  // scores in base 2
  static constexpr double kToBase = 1.4426950408889634;    // log2(e)
  static constexpr float kFromBase = 0.69314718055994531f;  // ln(2)
  static __device__ __forceinline__ float exp(float x) { return exp2f(x); }
  static __device__ __forceinline__ float log(float x) { return log2f(x); }
};

template <>
struct Base<double> {  // natural base, full-precision libm
  static constexpr double kToBase = 1.0;
  static constexpr double kFromBase = 1.0;
  static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
  static __device__ __forceinline__ double log(double x) { return ::log(x); }
};

// Lanes of the calling thread's group of TPR threads (TPR divides 32, groups
// are aligned inside the warp).
template <int TPR>
__device__ __forceinline__ unsigned group_mask() {
  if constexpr (TPR == 32) {
    return 0xffffffffu;
  } else {
    const unsigned first = (threadIdx.x & 31u) & ~unsigned(TPR - 1);
    return ((1u << TPR) - 1u) << first;
  }
}

// Sum over the group; every lane gets the same (bitwise) value because each
// butterfly step adds the same two operands on both partners.
template <int TPR, typename A>
__device__ __forceinline__ A group_sum(A x, unsigned mask) {
#pragma unroll
  for (int off = TPR / 2; off > 0; off >>= 1) x += __shfl_xor_sync(mask, x, off, TPR);
  return x;
}

template <int TPR, typename A>
__device__ __forceinline__ void group_sum2(A& x, A& y, unsigned mask) {
#pragma unroll
  for (int off = TPR / 2; off > 0; off >>= 1) {
    const A xo = __shfl_xor_sync(mask, x, off, TPR);
    const A yo = __shfl_xor_sync(mask, y, off, TPR);
    x += xo;
    y += yo;
  }
}

// r[e] = mul * p[d0 + e] for the lane's E elements (0 past the head dim).
template <typename T, typename A, int E>
__device__ __forceinline__ void load_row(const T* __restrict__ p, int d0, int D, A (&r)[E], A mul) {
#pragma unroll
  for (int e = 0; e < E; ++e) r[e] = (d0 + e < D) ? static_cast<A>(p[d0 + e]) * mul : A(0);
}

// The lane's part of a . p.
template <typename T, typename A, int E>
__device__ __forceinline__ A dot_part(const A (&a)[E], const T* __restrict__ p, int d0, int D) {
  A s = A(0);
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (d0 + e < D) s += a[e] * static_cast<A>(p[d0 + e]);
  return s;
}

// acc[e] += w * p[d0 + e]
template <typename T, typename A, int E>
__device__ __forceinline__ void axpy(A (&acc)[E], A w, const T* __restrict__ p, int d0, int D) {
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (d0 + e < D) acc[e] += w * static_cast<A>(p[d0 + e]);
}

template <typename T, typename A, int E>
__device__ __forceinline__ void store_row(T* __restrict__ p, int d0, int D, const A (&r)[E], A mul) {
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (d0 + e < D) p[d0 + e] = static_cast<T>(r[e] * mul);
}

// Does query i reach key j (0 <= j <= i) through the window?
__device__ __forceinline__ bool in_window(int i, int j, int W, int dil) {
  const int d = i - j;
  return d % dil == 0 && d / dil < W;
}

// Calls f(j) once for every key j that query i attends: the window keys
// first (nearest first), then the sinks the window does not cover.
template <typename F>
__device__ __forceinline__ void for_each_key(int i, int W, int dil, int S, F&& f) {
  const int nw = min(W, i / dil + 1);
  for (int m = 0, j = i; m < nw; ++m, j -= dil) f(j);
  const int ns = min(S, i + 1);
  for (int j = 0; j < ns; ++j)
    if (!in_window(i, j, W, dil)) f(j);
}

// Geometry of one call; window, dilation and sinks clamped to N (which
// changes nothing: every distance is < N), so they fit in int.
struct Geo {
  int64_t rows;  // batch * heads * N
  int N, D, W, dil, S;
};

// ------------------------------------------------------------------ forward

template <typename T, typename A, int TPR, int E>
__global__ void __launch_bounds__(kThreads)
    fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
               T* __restrict__ out, A* __restrict__ lse, Geo g, A qmul) {
  const int64_t row = int64_t(blockIdx.x) * (kThreads / TPR) + threadIdx.x / TPR;
  if (row >= g.rows) return;  // whole groups leave together
  const unsigned mask = group_mask<TPR>();
  const int d0 = int(threadIdx.x % TPR) * E;
  const int64_t head = row / g.N;
  const int i = int(row - head * g.N);
  const int64_t hoff = head * g.N * int64_t(g.D);
  const T* kh = k + hoff;
  const T* vh = v + hoff;

  A qr[E], o[E];
  load_row<T, A, E>(q + hoff + int64_t(i) * g.D, d0, g.D, qr, qmul);
#pragma unroll
  for (int e = 0; e < E; ++e) o[e] = A(0);
  A m = static_cast<A>(-INFINITY);
  A l = A(0);

  for_each_key(i, g.W, g.dil, g.S, [&](int j) {
    const A s = group_sum<TPR>(dot_part<T, A, E>(qr, kh + int64_t(j) * g.D, d0, g.D), mask);
    const A m_new = s > m ? s : m;
    const A alpha = Base<A>::exp(m - m_new);  // 0 for the first key (m = -inf), 1 if m stays
    const A p = Base<A>::exp(s - m_new);
    m = m_new;
    l = l * alpha + p;
#pragma unroll
    for (int e = 0; e < E; ++e) o[e] *= alpha;
    axpy<T, A, E>(o, p, vh + int64_t(j) * g.D, d0, g.D);
  });

  // l >= 1: the row's maximum contributes exp(0).
  store_row<T, A, E>(out + hoff + int64_t(i) * g.D, d0, g.D, o, A(1) / l);
  if (d0 == 0) lse[row] = (m + Base<A>::log(l)) * static_cast<A>(Base<A>::kFromBase);
}

// ----------------------------------------------------------------- backward

// (1) Delta and dQ, one group per query row.
template <typename T, typename A, int TPR, int E>
__global__ void __launch_bounds__(kThreads)
    bwd_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  const T* __restrict__ out, const T* __restrict__ dout, const A* __restrict__ lse,
                  const A* __restrict__ glse, A* __restrict__ delta, T* __restrict__ dq, Geo g,
                  A qmul, A scale) {
  const int64_t row = int64_t(blockIdx.x) * (kThreads / TPR) + threadIdx.x / TPR;
  if (row >= g.rows) return;
  const unsigned mask = group_mask<TPR>();
  const int d0 = int(threadIdx.x % TPR) * E;
  const int64_t head = row / g.N;
  const int i = int(row - head * g.N);
  const int64_t hoff = head * g.N * int64_t(g.D);
  const int64_t roff = hoff + int64_t(i) * g.D;
  const T* kh = k + hoff;
  const T* vh = v + hoff;

  A qr[E], dor[E], acc[E];
  load_row<T, A, E>(q + roff, d0, g.D, qr, qmul);
  load_row<T, A, E>(dout + roff, d0, g.D, dor, A(1));
  A dlt = group_sum<TPR>(dot_part<T, A, E>(dor, out + roff, d0, g.D), mask);
  if (glse != nullptr) dlt -= glse[row];
  if (d0 == 0) delta[row] = dlt;
  const A lse_b = lse[row] * static_cast<A>(Base<A>::kToBase);
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = A(0);

  for_each_key(i, g.W, g.dil, g.S, [&](int j) {
    const T* kj = kh + int64_t(j) * g.D;
    A s = dot_part<T, A, E>(qr, kj, d0, g.D);
    A dp = dot_part<T, A, E>(dor, vh + int64_t(j) * g.D, d0, g.D);
    group_sum2<TPR>(s, dp, mask);
    const A p = Base<A>::exp(s - lse_b);
    axpy<T, A, E>(acc, p * (dp - dlt), kj, d0, g.D);
  });
  store_row<T, A, E>(dq + roff, d0, g.D, acc, scale);
}

// Contribution of query row i to key row j's dK (unscaled) and dV.
template <typename T, typename A, int TPR, int E>
__device__ __forceinline__ void key_step(const A (&kr)[E], const A (&vr)[E], A (&dk)[E], A (&dv)[E],
                                         const T* __restrict__ qi, const T* __restrict__ doi,
                                         A lse_b, A dlt, int d0, int D, unsigned mask) {
  A s = dot_part<T, A, E>(kr, qi, d0, D);
  A dp = dot_part<T, A, E>(vr, doi, d0, D);
  group_sum2<TPR>(s, dp, mask);
  const A p = Base<A>::exp(s - lse_b);
  axpy<T, A, E>(dv, p, doi, d0, D);
  axpy<T, A, E>(dk, p * (dp - dlt), qi, d0, D);
}

// (2) dK/dV of the keys j >= sinks, one group per key row; its queries are
// the window ones i = j + m*dil (m < W, i < N).
template <typename T, typename A, int TPR, int E>
__global__ void __launch_bounds__(kThreads)
    bwd_dkv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const T* __restrict__ dout, const A* __restrict__ lse,
                   const A* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv, Geo g,
                   A qmul, A scale) {
  const int64_t row = int64_t(blockIdx.x) * (kThreads / TPR) + threadIdx.x / TPR;
  if (row >= g.rows) return;
  const int64_t head = row / g.N;
  const int j = int(row - head * g.N);
  if (j < g.S) return;  // sink keys belong to bwd_sink_kernel
  const unsigned mask = group_mask<TPR>();
  const int d0 = int(threadIdx.x % TPR) * E;
  const int64_t hoff = head * g.N * int64_t(g.D);
  const int64_t roff = hoff + int64_t(j) * g.D;
  const T* qh = q + hoff;
  const T* doh = dout + hoff;
  const A* lh = lse + head * g.N;
  const A* dh = delta + head * g.N;

  A kr[E], vr[E], ak[E], av[E];
  load_row<T, A, E>(k + roff, d0, g.D, kr, qmul);
  load_row<T, A, E>(v + roff, d0, g.D, vr, A(1));
#pragma unroll
  for (int e = 0; e < E; ++e) ak[e] = av[e] = A(0);

  const int nq = min(g.W, (g.N - 1 - j) / g.dil + 1);
  for (int m = 0, i = j; m < nq; ++m, i += g.dil) {
    key_step<T, A, TPR, E>(kr, vr, ak, av, qh + int64_t(i) * g.D, doh + int64_t(i) * g.D,
                           lh[i] * static_cast<A>(Base<A>::kToBase), dh[i], d0, g.D, mask);
  }
  store_row<T, A, E>(dk + roff, d0, g.D, ak, scale);
  store_row<T, A, E>(dv + roff, d0, g.D, av, A(1));
}

// (3) dK/dV of the sink keys j < sinks, one block per (head, j): every query
// i >= j sees j; the block's groups take every G-th of them and the partial
// sums meet in shared memory.
template <typename T, typename A, int TPR, int E>
__global__ void __launch_bounds__(kThreads)
    bwd_sink_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const T* __restrict__ dout, const A* __restrict__ lse,
                    const A* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv, Geo g,
                    A qmul, A scale) {
  constexpr int G = kThreads / TPR;  // groups per block
  constexpr int W_ROW = TPR * E;     // padded head dim of one group
  __shared__ A red_k[G * W_ROW];
  __shared__ A red_v[G * W_ROW];

  const int64_t head = int64_t(blockIdx.x) / g.S;
  const int j = int(int64_t(blockIdx.x) - head * g.S);
  const unsigned mask = group_mask<TPR>();
  const int grp = threadIdx.x / TPR;
  const int d0 = int(threadIdx.x % TPR) * E;
  const int64_t hoff = head * g.N * int64_t(g.D);
  const int64_t roff = hoff + int64_t(j) * g.D;
  const T* qh = q + hoff;
  const T* doh = dout + hoff;
  const A* lh = lse + head * g.N;
  const A* dh = delta + head * g.N;

  A kr[E], vr[E], ak[E], av[E];
  load_row<T, A, E>(k + roff, d0, g.D, kr, qmul);
  load_row<T, A, E>(v + roff, d0, g.D, vr, A(1));
#pragma unroll
  for (int e = 0; e < E; ++e) ak[e] = av[e] = A(0);

  for (int i = j + grp; i < g.N; i += G) {
    key_step<T, A, TPR, E>(kr, vr, ak, av, qh + int64_t(i) * g.D, doh + int64_t(i) * g.D,
                           lh[i] * static_cast<A>(Base<A>::kToBase), dh[i], d0, g.D, mask);
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    red_k[grp * W_ROW + d0 + e] = ak[e];
    red_v[grp * W_ROW + d0 + e] = av[e];
  }
  __syncthreads();
  for (int d = threadIdx.x; d < g.D; d += kThreads) {
    A sk = A(0), sv = A(0);
    for (int r = 0; r < G; ++r) {
      sk += red_k[r * W_ROW + d];
      sv += red_v[r * W_ROW + d];
    }
    dk[roff + d] = static_cast<T>(sk * scale);
    dv[roff + d] = static_cast<T>(sv);
  }
}

// ------------------------------------------------------------- host side

// Calls f(TPR, E) as integral constants: the group width and the elements a
// lane holds, so that TPR * E >= D with few idle lanes.
template <typename F>
void with_config(int64_t D, F&& f) {
  using std::integral_constant;
  if (D <= 8) {
    f(integral_constant<int, 4>{}, integral_constant<int, 2>{});
  } else if (D <= 16) {
    f(integral_constant<int, 4>{}, integral_constant<int, 4>{});
  } else if (D <= 32) {
    f(integral_constant<int, 8>{}, integral_constant<int, 4>{});
  } else if (D <= 64) {
    f(integral_constant<int, 16>{}, integral_constant<int, 4>{});
  } else if (D <= 128) {
    f(integral_constant<int, 32>{}, integral_constant<int, 4>{});
  } else {
    f(integral_constant<int, 32>{}, integral_constant<int, 8>{});
  }
}

unsigned row_blocks(int64_t rows, int tpr) {
  const int64_t per = kThreads / tpr;
  const int64_t blocks = (rows + per - 1) / per;
  FR_CHECK(blocks <= std::numeric_limits<int>::max(), "sparse_attn (CUDA): too many rows (", rows,
              ") for one launch");
  return static_cast<unsigned>(blocks);
}

void check_common(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  int64_t window, int64_t dilation, int64_t sinks, double scale) {
  FR_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), op, ": q, k, v must be CUDA tensors");
  FR_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": q, k, v must be on one device, got ", q.device(), ", ", k.device(), ", ", v.device());
  FR_CHECK(q.dim() == 4, op, ": q must be (batch, heads, seq, head_dim), got ", q.sizes());
  FR_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op,
              ": q, k, v must have the same shape, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  FR_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must have the same dtype");
  const auto st = q.scalar_type();
  FR_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": dtype must be float32, float64, float16 or bfloat16, got ", st);
  FR_CHECK(q.size(3) >= 1 && q.size(3) <= 256, op, ": head_dim must be in [1, 256], got ", q.size(3));
  FR_CHECK(q.size(2) <= std::numeric_limits<int>::max(), op, ": seq too long (", q.size(2), ")");
  FR_CHECK(window >= 1 && dilation >= 1 && sinks >= 0, op,
              ": need window >= 1, dilation >= 1, sinks >= 0, got ", window, ", ", dilation, ", ", sinks);
  FR_CHECK(std::isfinite(scale), op, ": scale must be finite");
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& q) {
  FR_CHECK(t.device() == q.device(), op, ": ", name, " must be on ", q.device(), ", got ", t.device());
}

Geo make_geo(const at::Tensor& q, int64_t window, int64_t dilation, int64_t sinks) {
  const int64_t N = q.size(2);
  Geo g;
  g.rows = q.size(0) * q.size(1) * N;
  g.N = static_cast<int>(N);
  g.D = static_cast<int>(q.size(3));
  g.W = static_cast<int>(std::min<int64_t>(window, N));
  g.dil = static_cast<int>(std::min<int64_t>(dilation, N));
  g.S = static_cast<int>(std::min<int64_t>(sinks, N));
  return g;
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> sparse_attn_fwd_cuda(const at::Tensor& q_, const at::Tensor& k_,
                                                        const at::Tensor& v_, int64_t window,
                                                        int64_t dilation, int64_t sinks, double scale) {
  const char* op = "sparse_attn_fwd";
  check_common(op, q_, k_, v_, window, dilation, sinks, scale);
  const c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(compute_type(q.scalar_type())));
  if (q.numel() == 0) return {out, lse};
  if (wgmma_fwd(q, k, v, out, lse, window, dilation, sinks, scale)) return {out, lse};  // sm_90a (Hopper)
  if (mma_supported(q)) {
    mma_fwd(q, k, v, out, lse, window, dilation, sinks, scale);
    return {out, lse};
  }
  const Geo g = make_geo(q, window, dilation, sinks);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "sparse_attn_fwd_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const A qmul = static_cast<A>(scale * Base<A>::kToBase);
    with_config(g.D, [&](auto tpr, auto e) {
      constexpr int TPR = decltype(tpr)::value;
      constexpr int E = decltype(e)::value;
      fwd_kernel<T, A, TPR, E><<<row_blocks(g.rows, TPR), kThreads, 0, stream>>>(
          q.const_data_ptr<T>(), k.const_data_ptr<T>(), v.const_data_ptr<T>(), out.mutable_data_ptr<T>(),
          lse.mutable_data_ptr<A>(), g, qmul);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attn_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& out_, const at::Tensor& lse_, int64_t window, int64_t dilation, int64_t sinks,
    double scale, const std::optional<at::Tensor>& grad_lse) {
  const char* op = "sparse_attn_bwd";
  check_common(op, q_, k_, v_, window, dilation, sinks, scale);
  FR_CHECK(grad_out.sizes() == q_.sizes() && out_.sizes() == q_.sizes(), op,
              ": grad_out and out must have q's shape");
  const std::vector<int64_t> row_shape{q_.size(0), q_.size(1), q_.size(2)};
  FR_CHECK(lse_.sizes() == row_shape, op, ": lse must be (batch, heads, seq)");
  FR_CHECK(at::isFloatingType(grad_out.scalar_type()) && at::isFloatingType(out_.scalar_type()) &&
                  at::isFloatingType(lse_.scalar_type()),
              op, ": grad_out, out and lse must be floating point");
  check_same_device(op, "grad_out", grad_out, q_);
  check_same_device(op, "out", out_, q_);
  check_same_device(op, "lse", lse_, q_);
  const bool has_glse = grad_lse.has_value() && grad_lse->defined();
  if (has_glse) {
    FR_CHECK(grad_lse->sizes() == row_shape, op, ": grad_lse must be (batch, heads, seq)");
    FR_CHECK(at::isFloatingType(grad_lse->scalar_type()), op, ": grad_lse must be floating point");
    check_same_device(op, "grad_lse", *grad_lse, q_);
  }
  const c10::cuda::CUDAGuard guard(q_.device());
  const auto dt = q_.scalar_type();
  const auto ct = compute_type(dt);
  const at::Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const at::Tensor o = out_.to(dt).contiguous(), dout = grad_out.to(dt).contiguous();
  const at::Tensor lse = lse_.to(ct).contiguous();
  const at::Tensor glse = has_glse ? grad_lse->to(ct).contiguous() : at::Tensor();
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  if (q.numel() == 0) return {dq, dk, dv};
  if (mma_supported(q)) {
    mma_bwd(dout, q, k, v, o, lse, glse, dq, dk, dv, window, dilation, sinks, scale);
    return {dq, dk, dv};
  }
  const Geo g = make_geo(q, window, dilation, sinks);
  at::Tensor delta = at::empty(row_shape, q.options().dtype(ct));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "sparse_attn_bwd_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const A qmul = static_cast<A>(scale * Base<A>::kToBase);
    const A sc = static_cast<A>(scale);
    with_config(g.D, [&](auto tpr, auto e) {
      constexpr int TPR = decltype(tpr)::value;
      constexpr int E = decltype(e)::value;
      const T* qp = q.const_data_ptr<T>();
      const T* kp = k.const_data_ptr<T>();
      const T* vp = v.const_data_ptr<T>();
      const T* dop = dout.const_data_ptr<T>();
      const A* lp = lse.const_data_ptr<A>();
      A* dlp = delta.mutable_data_ptr<A>();
      bwd_dq_kernel<T, A, TPR, E><<<row_blocks(g.rows, TPR), kThreads, 0, stream>>>(
          qp, kp, vp, o.const_data_ptr<T>(), dop, lp, has_glse ? glse.const_data_ptr<A>() : nullptr, dlp,
          dq.mutable_data_ptr<T>(), g, qmul, sc);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bwd_dkv_kernel<T, A, TPR, E><<<row_blocks(g.rows, TPR), kThreads, 0, stream>>>(
          qp, kp, vp, dop, lp, dlp, dk.mutable_data_ptr<T>(), dv.mutable_data_ptr<T>(), g, qmul, sc);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (g.S > 0) {
        const int64_t blocks = (g.rows / g.N) * g.S;
        FR_CHECK(blocks <= std::numeric_limits<int>::max(), op, ": too many sink rows for one launch");
        bwd_sink_kernel<T, A, TPR, E><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            qp, kp, vp, dop, lp, dlp, dk.mutable_data_ptr<T>(), dv.mutable_data_ptr<T>(), g, qmul, sc);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrader, CUDA, m) {
  m.impl("sparse_attn_fwd", &sparse_attn_fwd_cuda);
  m.impl("sparse_attn_bwd", &sparse_attn_bwd_cuda);
}

}  // namespace cuda
}  // namespace fastrader
