// Forward of fastrader::sparse_attn_fwd on tensor cores (mma.sync m16n8k16,
// bf16/fp16 operands, fp32 accumulation), in the FlashAttention-2 manner.
//
// One CTA = 4 warps = one block of BM = 64 (128 at D = 64) query rows of one
// residue class (mask.cuh: dilation -> strided tiles) of one (batch, head).
// Each warp owns 16 (32) rows; Q stays in registers as A fragments for the whole CTA. Key/value
// tiles of BN = 64 rows stream through shared memory in two cp.async stages:
// the window tiles from the diagonal back to the oldest key the block needs,
// then the sink tiles. Only the first (diagonal) and last window tiles and
// the sink tiles apply a mask; the ones inside the band skip it.
// Scores are kept in base 2 (scale * log2(e) applied to the fp32
// accumulator, exp2 = ex2.approx); P goes from the score accumulators into the
// A fragments of P V without shared memory.
//
// Head dims are padded to DP in {16, 32, 64, 128} inside shared memory only
// (zero columns), global rows keep D (a multiple of 8; the host pads others).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "check.h"
#include "cuda/mask.cuh"
#include "cuda/mma.cuh"
#include "cuda/mma_launch.h"
#include "cuda/softmax.cuh"

namespace fastrader {
namespace cuda {
namespace {

template <typename T, int DP, int BM, int BN, int NW, int MT>
__global__ void __launch_bounds__(NW * 32)
    fwd_mma_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                   float* __restrict__ lse, BandGeo g, int tblocks) {
  static_assert(BM == NW * 16 * MT, "each warp owns MT groups of 16 query rows");
  constexpr int NT = NW * 32;
  constexpr int ST = mma::Tile<DP>::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * ST;      // two stages
  T* sV = sK + 2 * BN * ST;  // two stages

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t per_head = int64_t(tblocks) * g.dil;
  const int64_t bh = int64_t(blockIdx.x) / per_head;
  const int rem = int(int64_t(blockIdx.x) - bh * per_head);
  const int r = rem / tblocks, t0 = (rem % tblocks) * BM;
  const int Nr = residue_rows(g, r);
  if (t0 >= Nr) return;
  const int64_t hrow = bh * g.N;  // first row of this (batch, head)

  const QueryBand<BM, BN> band(t0, g.W);
  const int nwt = band.ntiles;
  int nst = 0;
  if (g.S > 0) {
    const int t_last = min(t0 + BM - 1, Nr - 1);
    const int i_max = r + g.dil * t_last;
    // With dilation 1 a query i < W has every earlier key in its window.
    if (!(g.dil == 1 && i_max < g.W)) nst = (min(g.S, i_max + 1) + BN - 1) / BN;
  }
  const int ntot = nwt + nst;

  auto load_tile = [&](int kt, int stage) {
    T* dk = sK + stage * BN * ST;
    T* dv = sV + stage * BN * ST;
    if (kt < nwt) {
      const int a = band.start(kt);
      mma::load_rows<BN, DP, NT>(dk, k, g.D, hrow + r, g.dil, a, 0, Nr);
      mma::load_rows<BN, DP, NT>(dv, v, g.D, hrow + r, g.dil, a, 0, Nr);
    } else {
      const int j0 = (kt - nwt) * BN;
      mma::load_rows<BN, DP, NT>(dk, k, g.D, hrow, 1, j0, 0, g.S);
      mma::load_rows<BN, DP, NT>(dv, v, g.D, hrow, 1, j0, 0, g.S);
    }
  };

  mma::load_rows<BM, DP, NT>(sQ, q, g.D, hrow + r, g.dil, t0, 0, Nr);
  load_tile(0, 0);
  mma::cp_async_commit();

  const int gq = lane >> 2, cq = lane & 3;
  // the thread's rows: row0[mt] and row0[mt] + 8
  const int wrow = t0 + warp * 16 * MT + gq;
  uint32_t qf[MT][DP / 16][4];
  float acc[MT][DP / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.f;
  OnlineSoftmax sm[MT];

  for (int kt = 0; kt < ntot; ++kt) {
    if (kt + 1 < ntot) {
      load_tile(kt + 1, (kt + 1) & 1);
      mma::cp_async_commit();
      mma::cp_async_wait<1>();
    } else {
      mma::cp_async_wait<0>();
    }
    __syncthreads();
    if (kt == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) mma::ld_a<DP>(qf[mt][kk], sQ, (warp * MT + mt) * 16, kk * 16, lane);
    }
    const T* cK = sK + (kt & 1) * BN * ST;
    const T* cV = sV + (kt & 1) * BN * ST;

    float s[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
      for (int nn = 0; nn < BN / 16; ++nn) {
        uint32_t b[4];
        mma::ld_b_nk<DP>(b, cK, nn * 16, kk * 16, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma::mma16816<T>(s[mt][2 * nn], qf[mt][kk], b[0], b[1]);
          mma::mma16816<T>(s[mt][2 * nn + 1], qf[mt][kk], b[2], b[3]);
        }
      }
    }

    const bool full = kt < nwt && band.full(kt, g.W);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row0 = wrow + mt * 16;
      if (full) {
        scale_scores(s[mt], g.sl2);
      } else if (kt < nwt) {
        const int a = band.start(kt) + 2 * cq;
        mask_scores(s[mt], g.sl2, [&](int h, int col) { return window_ok(row0 + 8 * h, a + col, g.W); });
      } else {
        const int j0 = (kt - nwt) * BN + 2 * cq;
        const int i0 = r + g.dil * row0;
        mask_scores(s[mt], g.sl2,
                    [&](int h, int col) { return sink_ok(i0 + 8 * h * g.dil, j0 + col, g.S, g.W, g.dil); });
      }
      sm[mt].update(s[mt], acc[mt]);
    }

#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma::c_to_a<T>(a[mt], s[mt], kk);
#pragma unroll
      for (int nd = 0; nd < DP / 16; ++nd) {
        uint32_t b[4];
        mma::ld_b_kn<DP>(b, cV, kk * 16, nd * 16, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma::mma16816<T>(acc[mt][2 * nd], a[mt], b[0], b[1]);
          mma::mma16816<T>(acc[mt][2 * nd + 1], a[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    sm[mt].finish();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = wrow + mt * 16 + 8 * h;
      if (t >= Nr) continue;
      const int64_t row = hrow + r + int64_t(g.dil) * t;
      const float inv = 1.f / sm[mt].l[h];
      T* orow = o + row * g.D;
#pragma unroll
      for (int n = 0; n < DP / 8; ++n) {
        const int col = n * 8 + 2 * cq;
        if (col < g.D)
          *reinterpret_cast<uint32_t*>(orow + col) =
              mma::pack2<T>(acc[mt][n][2 * h] * inv, acc[mt][n][2 * h + 1] * inv);
      }
      if (cq == 0) lse[row] = (sm[mt].m[h] + log2f(sm[mt].l[h])) * 0.69314718055994531f;
    }
  }
}

template <typename T, int DP, int MT>
void launch_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                const BandGeo& g) {
  constexpr int NW = 4, BM = 64 * MT, BN = 64;
  constexpr int ST = mma::Tile<DP>::kStride;
  const int tblocks = (g.Nr0 + BM - 1) / BM;
  const int64_t blocks = g.BH * tblocks * int64_t(g.dil);
  FR_CHECK(blocks <= std::numeric_limits<int>::max(), "sparse_attn_fwd (CUDA): too many blocks (", blocks, ")");
  const size_t smem = size_t(BM + 4 * BN) * ST * sizeof(T);
  auto kernel = fwd_mma_kernel<T, DP, BM, BN, NW, MT>;
  static const bool attr_set = [&] {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)attr_set;
  kernel<<<unsigned(blocks), NW * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const T*>(q.const_data_ptr()), reinterpret_cast<const T*>(k.const_data_ptr()),
      reinterpret_cast<const T*>(v.const_data_ptr()), reinterpret_cast<T*>(out.mutable_data_ptr()),
      lse.mutable_data_ptr<float>(), g, tblocks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void dispatch_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                  const BandGeo& g) {
  if (g.D <= 16) {
    launch_fwd<T, 16, 1>(q, k, v, out, lse, g);
  } else if (g.D <= 32) {
    launch_fwd<T, 32, 1>(q, k, v, out, lse, g);
  } else if (g.D <= 64) {
    // Two 16-row groups per warp (BM = 128) share every K/V fragment read:
    // 6% faster at W = 1024, 8% slower at W = 256 (fewer CTAs per SM at 251
    // registers), equal at W = 512 on the H200 (ext/NOTES.md v3).
    if (g.W >= 512)
      launch_fwd<T, 64, 2>(q, k, v, out, lse, g);
    else
      launch_fwd<T, 64, 1>(q, k, v, out, lse, g);
  } else {
    launch_fwd<T, 128, 1>(q, k, v, out, lse, g);
  }
}

}  // namespace

bool mma_supported(const at::Tensor& q) {
  const auto st = q.scalar_type();
  if (st != at::kHalf && st != at::kBFloat16) return false;
  if (q.dim() != 4 || q.size(3) < 1 || q.size(3) > 128) return false;
  static const bool forced_scalar = [] {
    const char* e = std::getenv("FASTRADER_CUDA_KERNEL");
    return e != nullptr && std::strcmp(e, "scalar") == 0;
  }();
  if (forced_scalar) return false;
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.device().index()));
  return major >= 8;
}

BandGeo make_band_geo(const at::Tensor& q, int64_t window, int64_t dilation, int64_t sinks, double scale) {
  const int64_t N = q.size(2);
  BandGeo g;
  g.BH = q.size(0) * q.size(1);
  g.N = static_cast<int>(N);
  g.D = static_cast<int>(q.size(3));
  g.W = static_cast<int>(std::min<int64_t>(window, N));
  g.dil = static_cast<int>(std::min<int64_t>(dilation, N));
  g.S = static_cast<int>(std::min<int64_t>(sinks, N));
  g.Nr0 = (g.N + g.dil - 1) / g.dil;
  g.sl2 = static_cast<float>(scale * 1.4426950408889634);
  return g;
}

// The kernels need rows of a multiple of 8 elements on 16-byte boundaries.
at::Tensor mma_operand(const at::Tensor& t, int64_t dpad) {
  at::Tensor c = t.contiguous();
  if (dpad != t.size(3)) c = at::constant_pad_nd(c, {0, dpad - t.size(3)});
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

void mma_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
             int64_t window, int64_t dilation, int64_t sinks, double scale) {
  const int64_t D = q.size(3), dpad = (D + 7) / 8 * 8;
  const at::Tensor qp = mma_operand(q, dpad), kp = mma_operand(k, dpad), vp = mma_operand(v, dpad);
  const bool direct = dpad == D && out.is_contiguous() && reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
  at::Tensor op = direct ? out : at::empty(qp.sizes(), qp.options());
  BandGeo g = make_band_geo(qp, window, dilation, sinks, scale);
  if (q.scalar_type() == at::kBFloat16) {
    dispatch_fwd<__nv_bfloat16>(qp, kp, vp, op, lse, g);
  } else {
    dispatch_fwd<__half>(qp, kp, vp, op, lse, g);
  }
  if (!direct) out.copy_(op.narrow(3, 0, D));
}

}  // namespace cuda
}  // namespace fastrader
