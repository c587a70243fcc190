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
// Scores are kept in base 2: the row maximum is taken on the raw scores and
// exp2(s * scale * log2(e) - m) is one FMA and one ex2.approx per score. P
// goes from the score accumulators into the A fragments of P V without
// shared memory. Each warp computes only the 16-key groups of a tile that one
// of its rows sees, and masks only those some row sees in part.
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
#include <type_traits>

#include "check.h"
#include "cuda/mask.cuh"
#include "cuda/mma.cuh"
#include "cuda/mma_launch.h"
#include "cuda/softmax.cuh"

namespace fastrader {
namespace cuda {
namespace {

#ifndef FR_FWD_MINB
#define FR_FWD_MINB (DP == 16 && ONES && MT == 1 ? 6 : DP == 64 && MT == 1 ? 4 : 0)
#endif

// ONES (D == DP - 8, e.g. D = 8): V's first padding column holds 1.0, so
// the P V product also accumulates each row's sum of P (as the bf16/fp16 P
// it multiplies) in accumulator column D, and the softmax skips its per-score
// row-sum adds. K8 (DP = 16 with D = 8): Q K^T by m16n8k8, the half of the
// k = 16 product that is not padding.
template <typename T, int DP, int BM, int BN, int NW, int MT, bool ONES, int STG>
__global__ void __launch_bounds__(NW * 32, FR_FWD_MINB)
    fwd_mma_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                   float* __restrict__ lse, BandGeo g, int tblocks) {
  static_assert(BM == NW * 16 * MT, "each warp owns MT groups of 16 query rows");
  static_assert(BN % 16 == 0, "key tiles are whole 16-key groups");
  constexpr bool K8 = ONES && DP == 16;
  constexpr int NT = NW * 32;
  constexpr int ST = mma::Tile<DP>::kStride;
  constexpr int NG = BN / 16;  // 16-key groups per key tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * ST;      // two stages
  T* sV = sK + STG * BN * ST;  // STG stages

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

  // The padding columns (past D) are written once, for both stages: zeros in
  // Q and K, and in V zeros but for the ones column. The loads below copy
  // only the D data columns of each row (zeros for rows out of range).
  const int dc = g.D / 8;
  if (dc < DP / 8) {
    constexpr int CH = DP / 8;
    for (int idx = threadIdx.x; idx < (BM + 2 * STG * BN) * CH; idx += NT) {
      const int row = idx / CH, ch = idx % CH;
      if (ch < dc) continue;
      uint4 z = make_uint4(0u, 0u, 0u, 0u);
      // the ones column: element 0 of padding chunk dc of a V row (rows BM + STG BN onwards)
      if (ONES && ch == dc && row >= BM + STG * BN) z.x = mma::pack2<T>(1.f, 0.f);
      *reinterpret_cast<uint4*>(sQ + row * ST + ch * 8) = z;
    }
  }

  auto load_data = [&](T* dst, const T* __restrict__ src, int64_t base, int64_t step, int start, int lo, int hi,
                       auto rows) {
    constexpr int R = decltype(rows)::value, CH = DP / 8;
#pragma unroll
    for (int it = 0; it < (R * CH + NT - 1) / NT; ++it) {
      const int idx = it * NT + threadIdx.x;
      if ((R * CH) % NT != 0 && idx >= R * CH) break;
      const int row = idx / CH, ch = idx % CH;
      if (ch >= dc) continue;
      const int t = start + row;
      const bool ok = t >= lo && t < hi;
      const T* p = ok ? src + (base + step * t) * g.D + ch * 8 : src;
      mma::cp_async16(mma::smem_addr(dst + row * ST + ch * 8), p, ok);
    }
  };
  using RowsBN = std::integral_constant<int, BN>;
  // Window tiles step down the residue class by BN rows each: with at most
  // two 16-byte chunks per thread (DP <= 32) each thread keeps its chunks'
  // element offsets and key positions and moves them by one tile per load.
  constexpr int CHK = DP / 8, ITS = (BN * CHK + NT - 1) / NT;
  constexpr bool STEP = ITS <= 2 && (BN * CHK) % NT == 0;
  int64_t w_off[STEP ? ITS : 1];
  int w_t[STEP ? ITS : 1];
  uint32_t w_dst[STEP ? ITS : 1];
  if constexpr (STEP) {
#pragma unroll
    for (int it = 0; it < ITS; ++it) {
      const int idx = it * NT + threadIdx.x, row = idx / CHK, ch = idx % CHK;
      w_t[it] = ch < dc ? band.start(0) + row : -(1 << 30);  // padding chunks never load
      w_off[it] = (hrow + r + int64_t(g.dil) * w_t[it]) * g.D + ch * 8;
      w_dst[it] = mma::smem_addr(sK + row * ST + ch * 8);
    }
  }
  const int64_t w_step = int64_t(g.dil) * BN * g.D;
  constexpr uint32_t kStageBytes = BN * ST * sizeof(T), kVBytes = STG * kStageBytes;
  auto load_tile = [&](int kt, int stage) {
    T* dk = sK + stage * BN * ST;
    T* dv = sV + stage * BN * ST;
    if (kt < nwt) {
      if constexpr (STEP) {
        // tile kt: positions band.start(kt) + row, one tile below the last load
#pragma unroll
        for (int it = 0; it < ITS; ++it) {
          const int t = w_t[it] - kt * BN;
          if (t < -BN) continue;  // a padding chunk
          const bool ok = t >= 0 && t < Nr;
          const int64_t off = ok ? w_off[it] - kt * w_step : 0;
          const uint32_t d = w_dst[it] + stage * kStageBytes;
          mma::cp_async16(d, k + off, ok);
          mma::cp_async16(d + kVBytes, v + off, ok);
        }
      } else {
        const int a = band.start(kt);
        load_data(dk, k, hrow + r, g.dil, a, 0, Nr, RowsBN{});
        load_data(dv, v, hrow + r, g.dil, a, 0, Nr, RowsBN{});
      }
    } else {
      const int j0 = (kt - nwt) * BN;
      load_data(dk, k, hrow, 1, j0, 0, g.S, RowsBN{});
      load_data(dv, v, hrow, 1, j0, 0, g.S, RowsBN{});
    }
  };

  load_data(sQ, q, hrow + r, g.dil, t0, 0, Nr, std::integral_constant<int, BM>{});
  load_tile(0, 0);
  mma::cp_async_commit();

  const int gq = lane >> 2, cq = lane & 3;
  // the warp's rows: tw .. tw + 16 MT - 1; the thread's: row0[mt] and row0[mt] + 8
  const int tw = t0 + warp * 16 * MT;
  const int wrow = tw + gq;
  uint32_t qf[MT][DP / 16][4];
  float acc[MT][DP / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.f;
  RawOnlineSoftmax<!ONES> sm[MT];

  // STG = 3: two tiles in flight and one barrier per tile (the stage a load
  // refills was last read one iteration earlier, before this barrier).
  if (STG == 3) {
    if (ntot > 1) load_tile(1, 1);
    mma::cp_async_commit();
  }
  int stage = 0;
  for (int kt = 0; kt < ntot; ++kt) {
    if (STG == 3) {
      mma::cp_async_wait<1>();  // tile kt has landed (groups are committed every iteration, some empty)
      __syncthreads();
      if (kt + 2 < ntot) load_tile(kt + 2, stage == 0 ? 2 : stage - 1);
      mma::cp_async_commit();
    } else {
      if (kt + 1 < ntot) {
        load_tile(kt + 1, stage ^ 1);
        mma::cp_async_commit();
        mma::cp_async_wait<1>();
      } else {
        mma::cp_async_wait<0>();
      }
      __syncthreads();
    }
    if (kt == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) mma::ld_a<DP>(qf[mt][kk], sQ, (warp * MT + mt) * 16, kk * 16, lane);
    }
    const T* cK = sK + stage * BN * ST;
    const T* cV = sV + stage * BN * ST;

    // The 16-key groups [g_lo, g_hi] of this tile that some row of the warp
    // sees (window tiles: the band's edge tiles are half outside it for each
    // warp), and the columns [m_lo, m_hi] that every row of the warp sees:
    // groups inside it need no mask.
    int g_lo = 0, g_hi = NG - 1, m_lo = 0, m_hi = BN - 1, a = 0;
    const bool win = kt < nwt;
    if (win) {
      a = band.start(kt);
      const int lo = max(-a, tw - g.W + 1 - a), hi = min(BN - 1, tw + 16 * MT - 1 - a);
      g_lo = max(lo, 0) >> 4;
      g_hi = hi >> 4;  // < g_lo when the warp sees nothing of the tile
      m_lo = max(-a, tw + 16 * MT - g.W - a);
      m_hi = tw - a;
    } else {
      m_lo = BN;  // sink tiles: every group is masked
    }
    // Interior tiles (every row of the warp sees every key) run without a
    // single branch or mask; edge tiles check each group.
    auto tile = [&](auto edge) {
      constexpr bool E = decltype(edge)::value;
      auto on = [&](int j) { return !E || (j >= g_lo && j <= g_hi); };

      float s[MT][BN / 8][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
      if constexpr (K8) {
#pragma unroll
        for (int j = 0; j < NG; j += 2) {
          if (!on(j) && !on(j + 1)) continue;
          uint32_t b[4];  // key rows 16j .. 16j + 31, columns 0..7: one n-tile each
          mma::ldsm_x4(b, mma::smem_addr(cK + (16 * j + (lane & 7) + (lane >> 3) * 8) * ST));
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int x = 0; x < 4; ++x) mma::mma1688<T>(s[mt][2 * j + x], qf[mt][0], b[x]);
        }
      } else {
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
          for (int j = 0; j < NG; ++j) {
            if (!on(j)) continue;
            uint32_t b[4];
            mma::ld_b_nk<DP>(b, cK, j * 16, kk * 16, lane);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              mma::mma16816<T>(s[mt][2 * j], qf[mt][kk], b[0], b[1]);
              mma::mma16816<T>(s[mt][2 * j + 1], qf[mt][kk], b[2], b[3]);
            }
          }
        }
      }

#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row0 = wrow + mt * 16;
#pragma unroll
        for (int j = 0; j < NG; ++j) {
          if (!E || !on(j) || (16 * j >= m_lo && 16 * j + 15 <= m_hi)) continue;
          if (win) {
            // row t sees columns c with max(-a, t - W + 1 - a) <= c <= t - a
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int t = row0 + 8 * h;
              const int lo = max(-a, t - g.W + 1 - a) - 2 * cq - 16 * j, hi = t - a - 2 * cq - 16 * j;
#pragma unroll
              for (int x = 0; x < 2; ++x)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const int c = 8 * x + e;
                  if (c < lo || c > hi) s[mt][2 * j + x][2 * h + e] = -INFINITY;
                }
            }
          } else {
            const int j0 = (kt - nwt) * BN + 16 * j + 2 * cq;
            const int i0 = r + g.dil * row0;
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int x = 0; x < 2; ++x)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                  if (!sink_ok(i0 + 8 * h * g.dil, j0 + 8 * x + e, g.S, g.W, g.dil))
                    s[mt][2 * j + x][2 * h + e] = -INFINITY;
          }
        }
        sm[mt].update(s[mt], acc[mt], g.sl2, on);
      }

#pragma unroll
      for (int kk = 0; kk < NG; ++kk) {
        if (!on(kk)) continue;
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) mma::c_to_a<T>(pa[mt], s[mt], kk);
#pragma unroll
        for (int nd = 0; nd < DP / 16; ++nd) {
          uint32_t b[4];
          mma::ld_b_kn<DP>(b, cV, kk * 16, nd * 16, lane);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma::mma16816<T>(acc[mt][2 * nd], pa[mt], b[0], b[1]);
            mma::mma16816<T>(acc[mt][2 * nd + 1], pa[mt], b[2], b[3]);
          }
        }
      }
    };
    if (win && g_lo == 0 && g_hi == NG - 1 && m_lo <= 0 && m_hi >= BN - 1)
      tile(std::false_type{});
    else if (g_lo <= g_hi)
      tile(std::true_type{});
    if (STG == 2) __syncthreads();  // every warp is done with this stage before it is refilled
    stage = stage + 1 == STG ? 0 : stage + 1;
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    if constexpr (ONES) {
      // row sums from accumulator column D (= DP - 8), held by the quad's thread 0
#pragma unroll
      for (int h = 0; h < 2; ++h) sm[mt].l[h] = __shfl_sync(0xffffffffu, acc[mt][DP / 8 - 1][2 * h], lane & ~3);
    } else {
      sm[mt].finish();
    }
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

template <typename T, int DP, int MT, bool ONES = false, int STG = 2>
void launch_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                const BandGeo& g) {
  constexpr int NW = 4, BM = 64 * MT, BN = 64;
  constexpr int ST = mma::Tile<DP>::kStride;
  const int tblocks = (g.Nr0 + BM - 1) / BM;
  const int64_t blocks = g.BH * tblocks * int64_t(g.dil);
  FR_CHECK(blocks <= std::numeric_limits<int>::max(), "sparse_attn_fwd (CUDA): too many blocks (", blocks, ")");
  const size_t smem = size_t(BM + 2 * STG * BN) * ST * sizeof(T);
  auto kernel = fwd_mma_kernel<T, DP, BM, BN, NW, MT, ONES, STG>;
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

// Key/value stages at the small head dims: FASTRADER_FWD_STAGES = 2 or 3
// (read per call, for A/B runs in one process).
int small_stages() {
  const char* e = std::getenv("FASTRADER_FWD_STAGES");
  return e != nullptr && std::strcmp(e, "3") == 0 ? 3 : 2;
}

template <typename T>
void dispatch_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                  const BandGeo& g) {
  // D = 8 and D = 24 leave one padding column of 8 for the row sums (ONES).
  const bool s3 = g.D <= 32 && small_stages() == 3;
  if (g.D == 8) {
    s3 ? launch_fwd<T, 16, 1, true, 3>(q, k, v, out, lse, g) : launch_fwd<T, 16, 1, true>(q, k, v, out, lse, g);
  } else if (g.D <= 16) {
    s3 ? launch_fwd<T, 16, 1, false, 3>(q, k, v, out, lse, g) : launch_fwd<T, 16, 1>(q, k, v, out, lse, g);
  } else if (g.D == 24) {
    launch_fwd<T, 32, 1, true>(q, k, v, out, lse, g);
  } else if (g.D <= 32) {
    s3 ? launch_fwd<T, 32, 1, false, 3>(q, k, v, out, lse, g) : launch_fwd<T, 32, 1>(q, k, v, out, lse, g);
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
  at::Tensor qp = mma_operand(q, dpad);
  const at::Tensor kp = mma_operand(k, dpad), vp = mma_operand(v, dpad);
  // The kernel takes each tile's row maximum on the unscaled scores and folds
  // the scale into the exponent's FMA, which needs scale > 0. Other scales
  // become one exactly: scale < 0 is -q with -scale (negating a 16-bit
  // float is exact), scale = 0 makes every score 0, as q = 0 does.
  if (scale < 0) {
    qp = qp.neg();
    scale = -scale;
  } else if (scale == 0) {
    qp = at::zeros_like(qp);
    scale = 1.0;
  }
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
