// Backward of fastrader::sparse_attn_fwd on tensor cores (mma.sync m16n8k16,
// bf16/fp16 operands, fp32 accumulation). Default (fused) scheme: prep, then
// the dK/dV kernel that also adds dQ += dS K into a float32 buffer with
// atomics (5 products per tile pair, as FlashAttention-2), then one cast.
// The split scheme below (FASTRADER_CUDA_BWD=split) has three (four with
// sinks) launches, each output row written by exactly one CTA except the sink
// keys' partial sums:
//
//   1. prep    Delta_i = dO_i . O_i - grad_lse_i and lse_i in base 2, one
//              pass over O and dO.
//   2. dQ      one CTA per 64-query block (as in the forward): recomputes
//              S = Q K^T and dP = dO V^T tile by tile over the block's window
//              and sink key tiles, dS = P (dP - Delta), dQ += dS K.
//   3. dK, dV  one CTA per 64-key block of one residue class: streams the
//              query tiles that see the block (t in [u, u + W)), recomputes
//              S^T = K Q^T and dP^T = V dO^T, dV += P^T dO, dK += dS^T Q.
//   3s. sinks  (sinks > 0) the sink keys are seen by every later query, so
//              their reduction is split over the sequence: one CTA per (sink
//              key block, chunk of 128 queries) adds its partial dK, dV into
//              a float32 buffer with atomics; launch 3 adds that buffer to
//              the window part of those rows. No CTA loops over all of N.
//
// Recomputing S and dP in both 2 and 3 costs 7 matrix products per tile
// pair instead of FlashAttention-2's 5 (which accumulates dQ with atomics
// inside 3), in exchange for no atomics and deterministic dQ/dK/dV.
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

constexpr float kLog2e = 1.4426950408889634f;

template <typename T>
__device__ __forceinline__ float to_f(T x);
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_f<__half>(__half x) {
  return __half2float(x);
}

// ------------------------------------------------------------------ 1. prep
// 8 lanes per row, 16-byte loads.
template <typename T>
__global__ void __launch_bounds__(256)
    bwd_prep_kernel(const T* __restrict__ o, const T* __restrict__ dout, const float* __restrict__ lse,
                    const float* __restrict__ glse, float* __restrict__ delta, float* __restrict__ lse2,
                    float* __restrict__ dqa, int64_t rows, int D) {
  const int64_t row = int64_t(blockIdx.x) * 32 + threadIdx.x / 8;
  const int sub = threadIdx.x % 8;
  float acc = 0.f;
  if (row < rows) {
    const T* orow = o + row * D;
    const T* drow = dout + row * D;
    for (int c = sub * 8; c < D; c += 64) {
      const uint4 a = *reinterpret_cast<const uint4*>(orow + c);
      const uint4 b = *reinterpret_cast<const uint4*>(drow + c);
      const T* pa = reinterpret_cast<const T*>(&a);
      const T* pb = reinterpret_cast<const T*>(&b);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc += to_f(pa[e]) * to_f(pb[e]);
      if (dqa != nullptr) {  // the dQ accumulator of the fused backward starts at 0
        float4* z = reinterpret_cast<float4*>(dqa + row * D + c);
        z[0] = make_float4(0.f, 0.f, 0.f, 0.f);
        z[1] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  }
  acc += __shfl_xor_sync(0xffffffffu, acc, 1);
  acc += __shfl_xor_sync(0xffffffffu, acc, 2);
  acc += __shfl_xor_sync(0xffffffffu, acc, 4);
  if (row < rows && sub == 0) {
    delta[row] = acc - (glse != nullptr ? glse[row] : 0.f);
    lse2[row] = lse[row] * kLog2e;
  }
}

// -------------------------------------------------------------------- 2. dQ
template <typename T, int DP, int BM, int BN, int NW>
__global__ void __launch_bounds__(NW * 32)
    bwd_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  const T* __restrict__ dout, const float* __restrict__ lse2, const float* __restrict__ delta,
                  T* __restrict__ dq, BandGeo g, int tblocks, float scale) {
  static_assert(BM == NW * 16, "one warp per 16 query rows");
  constexpr int NT = NW * 32;
  constexpr int ST = mma::Tile<DP>::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sO = sQ + BM * ST;      // dO
  T* sK = sO + BM * ST;      // two stages
  T* sV = sK + 2 * BN * ST;  // two stages

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t per_head = int64_t(tblocks) * g.dil;
  const int64_t bh = int64_t(blockIdx.x) / per_head;
  const int rem = int(int64_t(blockIdx.x) - bh * per_head);
  const int r = rem / tblocks, t0 = (rem % tblocks) * BM;
  const int Nr = residue_rows(g, r);
  if (t0 >= Nr) return;
  const int64_t hrow = bh * g.N;

  const QueryBand<BM, BN> band(t0, g.W);
  const int nwt = band.ntiles;
  int nst = 0;
  if (g.S > 0) {
    const int i_max = r + g.dil * min(t0 + BM - 1, Nr - 1);
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
  mma::load_rows<BM, DP, NT>(sO, dout, g.D, hrow + r, g.dil, t0, 0, Nr);
  load_tile(0, 0);
  mma::cp_async_commit();

  const int gq = lane >> 2, cq = lane & 3;
  const int row0 = t0 + warp * 16 + gq;
  float rl[2], rd[2];  // lse (base 2) and Delta of the thread's two rows
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = row0 + 8 * h;
    const int64_t row = hrow + r + int64_t(g.dil) * t;
    rl[h] = t < Nr ? lse2[row] : 0.f;
    rd[h] = t < Nr ? delta[row] : 0.f;
  }
  uint32_t qf[DP / 16][4], of[DP / 16][4];
  float acc[DP / 8][4];
#pragma unroll
  for (int n = 0; n < DP / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

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
      for (int kk = 0; kk < DP / 16; ++kk) {
        mma::ld_a<DP>(qf[kk], sQ, warp * 16, kk * 16, lane);
        mma::ld_a<DP>(of[kk], sO, warp * 16, kk * 16, lane);
      }
    }
    const T* cK = sK + (kt & 1) * BN * ST;
    const T* cV = sV + (kt & 1) * BN * ST;

    float s[BN / 8][4], dp[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
      for (int nn = 0; nn < BN / 16; ++nn) {
        uint32_t b[4];
        mma::ld_b_nk<DP>(b, cK, nn * 16, kk * 16, lane);
        mma::mma16816<T>(s[2 * nn], qf[kk], b[0], b[1]);
        mma::mma16816<T>(s[2 * nn + 1], qf[kk], b[2], b[3]);
        mma::ld_b_nk<DP>(b, cV, nn * 16, kk * 16, lane);
        mma::mma16816<T>(dp[2 * nn], of[kk], b[0], b[1]);
        mma::mma16816<T>(dp[2 * nn + 1], of[kk], b[2], b[3]);
      }
    }

    if (kt < nwt && band.full(kt, g.W)) {
      scale_scores(s, g.sl2);
    } else if (kt < nwt) {
      const int a = band.start(kt) + 2 * cq;
      mask_scores(s, g.sl2, [&](int h, int col) { return window_ok(row0 + 8 * h, a + col, g.W); });
    } else {
      const int j0 = (kt - nwt) * BN + 2 * cq;
      const int i0 = r + g.dil * row0;
      mask_scores(s, g.sl2, [&](int h, int col) { return sink_ok(i0 + 8 * h * g.dil, j0 + col, g.S, g.W, g.dil); });
    }
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[n][e] - rl[e >> 1]);
        s[n][e] = p * (dp[n][e] - rd[e >> 1]);  // dS
      }

#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      mma::c_to_a<T>(a, s, kk);
#pragma unroll
      for (int nd = 0; nd < DP / 16; ++nd) {
        uint32_t b[4];
        mma::ld_b_kn<DP>(b, cK, kk * 16, nd * 16, lane);
        mma::mma16816<T>(acc[2 * nd], a, b[0], b[1]);
        mma::mma16816<T>(acc[2 * nd + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = row0 + 8 * h;
    if (t >= Nr) continue;
    T* out = dq + (hrow + r + int64_t(g.dil) * t) * g.D;
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) {
      const int col = n * 8 + 2 * cq;
      if (col < g.D)
        *reinterpret_cast<uint32_t*>(out + col) = mma::pack2<T>(acc[n][2 * h] * scale, acc[n][2 * h + 1] * scale);
    }
  }
}

// ---------------------------------------------------------------- 3. dK, dV
// SINK = false: key block u0.. of residue r, its window queries; writes dk,
// dv (adding the sink buffer for key rows < S).
// SINK = true: sink key block j0.. (positions), queries [i_lo, i_hi); adds
// into the float32 sink buffers dks, dvs ((BH, S, D)).
// FUSEDQ: also accumulate dQ += dS K into the float32 buffer dqa with
// atomics (FlashAttention-2's scheme): dS^T goes through shared memory to
// become the A operand of that product; the dQ kernel is then not launched.
template <typename T, int DP, int BN, int BQ, int NW, bool SINK, bool FUSEDQ>
__global__ void __launch_bounds__(NW * 32)
    bwd_dkv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const T* __restrict__ dout, const float* __restrict__ lse2, const float* __restrict__ delta,
                   T* __restrict__ dk, T* __restrict__ dv, float* __restrict__ dks, float* __restrict__ dvs,
                   float* __restrict__ dqa, BandGeo g, int kblocks, int qchunk, float scale) {
  static_assert(BN == NW * 16, "one warp per 16 key rows");
  constexpr int NT = NW * 32;
  constexpr int ST = mma::Tile<DP>::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BN * ST;
  T* sQ = sV + BN * ST;      // two stages
  T* sO = sQ + 2 * BQ * ST;  // dO, two stages
  float* sL = reinterpret_cast<float*>(sO + 2 * BQ * ST);  // lse2, two stages
  float* sD = sL + 2 * BQ;                                 // Delta, two stages
  T* sS = reinterpret_cast<T*>(sD + 2 * BQ);               // dS^T [BN][BQ + 8] (FUSEDQ)
  constexpr int SS = BQ + 8;
  constexpr int QG = BQ / 16, DSPLIT = NW / QG;  // dQ work split: query groups x column slices
  static_assert(QG * DSPLIT == NW && DP % (16 * DSPLIT) == 0, "dQ split");
  constexpr int DW = DP / DSPLIT;                // dQ columns per warp

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t bh;
  int r, u0, Nr, ntiles, q_lo, q_hi;
  int64_t qbase, qstep;
  if (!SINK) {
    const int64_t per_head = int64_t(kblocks) * g.dil;
    bh = int64_t(blockIdx.x) / per_head;
    const int rem = int(int64_t(blockIdx.x) - bh * per_head);
    r = rem / kblocks;
    u0 = (rem % kblocks) * BN;
    Nr = residue_rows(g, r);
    if (u0 >= Nr) return;
    const KeyBand<BN, BQ> kb(u0, g.W, Nr);
    ntiles = kb.ntiles;
    q_lo = u0;
    q_hi = Nr;
    qbase = bh * g.N + r;
    qstep = g.dil;
  } else {
    // blockIdx.x = (bh * kblocks + sink block) * nchunks + chunk
    const int nchunks = (g.N + qchunk - 1) / qchunk;
    const int chunk = blockIdx.x % nchunks;
    const int64_t kb = int64_t(blockIdx.x) / nchunks;
    bh = kb / kblocks;
    u0 = int(kb % kblocks) * BN;  // first sink key (position)
    r = 0;
    Nr = g.S;
    q_lo = max(chunk * qchunk, u0);
    q_hi = min((chunk + 1) * qchunk, g.N);
    if (q_lo >= q_hi) return;
    ntiles = (q_hi - q_lo + BQ - 1) / BQ;
    qbase = bh * g.N;
    qstep = 1;
  }
  const int64_t hrow = bh * g.N;
  const int64_t kbase = SINK ? hrow : hrow + r;
  const int64_t kstep = SINK ? 1 : g.dil;

  auto load_tile = [&](int kt, int stage) {
    const int a = q_lo + kt * BQ;
    mma::load_rows<BQ, DP, NT>(sQ + stage * BQ * ST, q, g.D, qbase, qstep, a, q_lo, q_hi);
    mma::load_rows<BQ, DP, NT>(sO + stage * BQ * ST, dout, g.D, qbase, qstep, a, q_lo, q_hi);
    for (int x = threadIdx.x; x < 2 * BQ; x += NT) {
      const int t = a + (x % BQ);
      const bool ok = t < q_hi;
      const int64_t row = ok ? qbase + qstep * t : 0;
      float* dst = (x < BQ ? sL : sD) + stage * BQ + (x % BQ);
      mma::cp_async4(mma::smem_addr(dst), (x < BQ ? lse2 : delta) + row, ok);
    }
  };

  mma::load_rows<BN, DP, NT>(sK, k, g.D, kbase, kstep, u0, 0, Nr);
  mma::load_rows<BN, DP, NT>(sV, v, g.D, kbase, kstep, u0, 0, Nr);
  if (ntiles > 0) load_tile(0, 0);
  mma::cp_async_commit();

  const int gq = lane >> 2, cq = lane & 3;
  const int krow0 = u0 + warp * 16 + gq;  // the thread's key rows: krow0, krow0 + 8
  float ak[DP / 8][4], av[DP / 8][4];
#pragma unroll
  for (int n = 0; n < DP / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) ak[n][e] = av[n][e] = 0.f;
  const KeyBand<BN, BQ> kband(u0, g.W, SINK ? 0 : Nr);

  for (int kt = 0; kt < ntiles; ++kt) {
    if (kt + 1 < ntiles) {
      load_tile(kt + 1, (kt + 1) & 1);
      mma::cp_async_commit();
      mma::cp_async_wait<1>();
    } else {
      mma::cp_async_wait<0>();
    }
    __syncthreads();
    const T* cQ = sQ + (kt & 1) * BQ * ST;
    const T* cO = sO + (kt & 1) * BQ * ST;
    const float* cL = sL + (kt & 1) * BQ;
    const float* cD = sD + (kt & 1) * BQ;

    float s[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
    for (int n = 0; n < BQ / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t kf[4], vf[4];
      mma::ld_a<DP>(kf, sK, warp * 16, kk * 16, lane);
      mma::ld_a<DP>(vf, sV, warp * 16, kk * 16, lane);
#pragma unroll
      for (int nn = 0; nn < BQ / 16; ++nn) {
        uint32_t b[4];
        mma::ld_b_nk<DP>(b, cQ, nn * 16, kk * 16, lane);
        mma::mma16816<T>(s[2 * nn], kf, b[0], b[1]);
        mma::mma16816<T>(s[2 * nn + 1], kf, b[2], b[3]);
        mma::ld_b_nk<DP>(b, cO, nn * 16, kk * 16, lane);
        mma::mma16816<T>(dp[2 * nn], vf, b[0], b[1]);
        mma::mma16816<T>(dp[2 * nn + 1], vf, b[2], b[3]);
      }
    }

    const int a = q_lo + kt * BQ;
    if (!SINK && kband.full(kt, g.W, Nr)) {
      scale_scores(s, g.sl2);
    } else {
      const int c0 = a + 2 * cq;
      mask_scores(s, g.sl2, [&](int h, int col) {
        const int t = c0 + col, u = krow0 + 8 * h;
        if (SINK) return t < q_hi && u < g.S && sink_ok(t, u, g.S, g.W, g.dil);
        return t < q_hi && window_ok(t, u, g.W);
      });
    }
    // P^T (into s) and dS^T (into dp)
#pragma unroll
    for (int n = 0; n < BQ / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n * 8 + 2 * cq + (e & 1);
        const float p = exp2f(s[n][e] - cL[col]);
        s[n][e] = p;
        dp[n][e] = p * (dp[n][e] - cD[col]);
      }

#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      uint32_t pa[4], da[4];
      mma::c_to_a<T>(pa, s, kk);
      mma::c_to_a<T>(da, dp, kk);
#pragma unroll
      for (int nd = 0; nd < DP / 16; ++nd) {
        uint32_t b[4];
        mma::ld_b_kn<DP>(b, cO, kk * 16, nd * 16, lane);
        mma::mma16816<T>(av[2 * nd], pa, b[0], b[1]);
        mma::mma16816<T>(av[2 * nd + 1], pa, b[2], b[3]);
        mma::ld_b_kn<DP>(b, cQ, kk * 16, nd * 16, lane);
        mma::mma16816<T>(ak[2 * nd], da, b[0], b[1]);
        mma::mma16816<T>(ak[2 * nd + 1], da, b[2], b[3]);
      }
    }
    if constexpr (FUSEDQ) {
      // dS^T (keys x queries) to shared memory, then dQ = dS K per warp slice.
#pragma unroll
      for (int n = 0; n < BQ / 8; ++n) {
        const int col = n * 8 + 2 * cq;
        const int kr = warp * 16 + gq;
        *reinterpret_cast<uint32_t*>(sS + kr * SS + col) = mma::pack2<T>(dp[n][0], dp[n][1]);
        *reinterpret_cast<uint32_t*>(sS + (kr + 8) * SS + col) = mma::pack2<T>(dp[n][2], dp[n][3]);
      }
      __syncthreads();
      const int qg = warp % QG, c0 = (warp / QG) * DW;
      float aq[DW / 8][4];
#pragma unroll
      for (int n = 0; n < DW / 8; ++n) aq[n][0] = aq[n][1] = aq[n][2] = aq[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t fa[4];
        {  // A = dS (queries x keys) read transposed from dS^T
          const int key = kk * 16 + (lane & 7) + (lane >> 4) * 8;
          const int qq = qg * 16 + ((lane >> 3) & 1) * 8;
          mma::ldsm_x4_t(fa, mma::smem_addr(sS + key * SS + qq));
        }
#pragma unroll
        for (int nd = 0; nd < DW / 16; ++nd) {
          uint32_t b[4];
          mma::ld_b_kn<DP>(b, sK, kk * 16, c0 + nd * 16, lane);
          mma::mma16816<T>(aq[2 * nd], fa, b[0], b[1]);
          mma::mma16816<T>(aq[2 * nd + 1], fa, b[2], b[3]);
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = a + qg * 16 + gq + 8 * h;
        if (t >= q_hi) continue;
        float* dst = dqa + (qbase + qstep * t) * g.D;
#pragma unroll
        for (int n = 0; n < DW / 8; ++n) {
          const int col = c0 + n * 8 + 2 * cq;
          if (col < g.D) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2*>(dst + col), make_float2(aq[n][2 * h] * scale, aq[n][2 * h + 1] * scale));
#else
            atomicAdd(dst + col, aq[n][2 * h] * scale);
            atomicAdd(dst + col + 1, aq[n][2 * h + 1] * scale);
#endif
          }
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int u = krow0 + 8 * h;
    if (u >= Nr) continue;
    const int j = SINK ? u : r + g.dil * u;  // key position in the sequence
    if (SINK) {
      float* bk = dks + (bh * g.S + j) * int64_t(g.D);
      float* bv = dvs + (bh * g.S + j) * int64_t(g.D);
#pragma unroll
      for (int n = 0; n < DP / 8; ++n) {
        const int col = n * 8 + 2 * cq;
        if (col < g.D) {
          atomicAdd(bk + col, ak[n][2 * h] * scale);
          atomicAdd(bk + col + 1, ak[n][2 * h + 1] * scale);
          atomicAdd(bv + col, av[n][2 * h]);
          atomicAdd(bv + col + 1, av[n][2 * h + 1]);
        }
      }
    } else {
      const int64_t row = hrow + j;
      const bool sink = j < g.S && dks != nullptr;
      const float* bk = sink ? dks + (bh * g.S + j) * int64_t(g.D) : nullptr;
      const float* bv = sink ? dvs + (bh * g.S + j) * int64_t(g.D) : nullptr;
#pragma unroll
      for (int n = 0; n < DP / 8; ++n) {
        const int col = n * 8 + 2 * cq;
        if (col < g.D) {
          float k0 = ak[n][2 * h] * scale, k1 = ak[n][2 * h + 1] * scale;
          float v0 = av[n][2 * h], v1 = av[n][2 * h + 1];
          if (sink) {
            k0 += bk[col];
            k1 += bk[col + 1];
            v0 += bv[col];
            v1 += bv[col + 1];
          }
          *reinterpret_cast<uint32_t*>(dk + row * g.D + col) = mma::pack2<T>(k0, k1);
          *reinterpret_cast<uint32_t*>(dv + row * g.D + col) = mma::pack2<T>(v0, v1);
        }
      }
    }
  }
}

template <typename K>
void allow_smem(K kernel, size_t smem) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
}

// Which dQ scheme: FASTRADER_CUDA_BWD=split (separate dQ kernel) or =fused
// (atomic dQ inside the dK/dV kernel, the default: it was as fast or faster
// at every benchmarked shape on the H200, 1.0-1.2x; ext/NOTES.md).
bool fused_dq(const BandGeo& g) {
  static const int forced = [] {
    const char* e = std::getenv("FASTRADER_CUDA_BWD");
    if (e != nullptr && std::strcmp(e, "split") == 0) return 0;
    if (e != nullptr && std::strcmp(e, "fused") == 0) return 1;
    return -1;
  }();
  if (forced >= 0) return forced == 1;
  (void)g;
  return true;
}

template <typename T, int DP>
void launch_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& lse2, const at::Tensor& delta, float* dqa, at::Tensor& dq, at::Tensor& dk,
                at::Tensor& dv, const BandGeo& g, float scale) {
  constexpr int NW = 4, BM = 64;
  constexpr int BNQ = DP >= 128 ? 32 : 64;  // key tile of the dQ kernel
  constexpr int BQ = DP >= 128 ? 32 : 64;   // query tile of the dK/dV kernel
  constexpr int BN = 64;
  constexpr int ST = mma::Tile<DP>::kStride;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* qp = reinterpret_cast<const T*>(q.const_data_ptr());
  const T* kp = reinterpret_cast<const T*>(k.const_data_ptr());
  const T* vp = reinterpret_cast<const T*>(v.const_data_ptr());
  const T* op = reinterpret_cast<const T*>(dout.const_data_ptr());
  const float* lp = lse2.const_data_ptr<float>();
  const float* dp = delta.const_data_ptr<float>();
  const bool fused = dqa != nullptr;

  if (!fused) {
    const int tblocks = (g.Nr0 + BM - 1) / BM;
    const int64_t blocks = g.BH * tblocks * int64_t(g.dil);
    FR_CHECK(blocks <= std::numeric_limits<int>::max(), "sparse_attn_bwd (CUDA): too many blocks");
    const size_t smem = size_t(2 * BM + 4 * BNQ) * ST * sizeof(T);
    auto kernel = bwd_dq_kernel<T, DP, BM, BNQ, NW>;
    static const bool once = (allow_smem(kernel, smem), true);
    (void)once;
    kernel<<<unsigned(blocks), NW * 32, smem, stream>>>(qp, kp, vp, op, lp, dp,
                                                         reinterpret_cast<T*>(dq.mutable_data_ptr()), g, tblocks,
                                                         scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const size_t smem_split = size_t(2 * BN + 4 * BQ) * ST * sizeof(T) + 4 * BQ * sizeof(float);
  const size_t smem_fused = smem_split + size_t(BN) * (BQ + 8) * sizeof(T);
  const size_t smem = fused ? smem_fused : smem_split;
  auto dkv = [&](auto sink, auto fq, unsigned blocks, float* dks, float* dvs, int kblocks, int chunk) {
    auto kernel = bwd_dkv_kernel<T, DP, BN, BQ, NW, decltype(sink)::value, decltype(fq)::value>;
    static const bool once = (allow_smem(kernel, decltype(fq)::value ? smem_fused : smem_split), true);
    (void)once;
    kernel<<<blocks, NW * 32, smem, stream>>>(qp, kp, vp, op, lp, dp, reinterpret_cast<T*>(dk.mutable_data_ptr()),
                                              reinterpret_cast<T*>(dv.mutable_data_ptr()), dks, dvs, dqa, g, kblocks,
                                              chunk, scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  using std::integral_constant;
  at::Tensor dks, dvs;
  if (g.S > 0) {
    dks = at::zeros({g.BH, g.S, g.D}, q.options().dtype(at::kFloat));
    dvs = at::zeros({g.BH, g.S, g.D}, q.options().dtype(at::kFloat));
    // 128 queries per CTA: with 1024 the few (BH x 3 at N = 2048) CTAs each ran 16 tiles in series and
    // the sink kernel took as long as the main one (ext/NOTES.md, training).
    constexpr int kChunk = 128;
    const int kblocks = (g.S + BN - 1) / BN;
    const int nchunks = (g.N + kChunk - 1) / kChunk;
    const int64_t blocks = g.BH * kblocks * int64_t(nchunks);
    FR_CHECK(blocks <= std::numeric_limits<int>::max(), "sparse_attn_bwd (CUDA): too many sink blocks");
    if (fused)
      dkv(integral_constant<bool, true>{}, integral_constant<bool, true>{}, unsigned(blocks),
          dks.mutable_data_ptr<float>(), dvs.mutable_data_ptr<float>(), kblocks, kChunk);
    else
      dkv(integral_constant<bool, true>{}, integral_constant<bool, false>{}, unsigned(blocks),
          dks.mutable_data_ptr<float>(), dvs.mutable_data_ptr<float>(), kblocks, kChunk);
  }
  {
    const int kblocks = (g.Nr0 + BN - 1) / BN;
    const int64_t blocks = g.BH * kblocks * int64_t(g.dil);
    FR_CHECK(blocks <= std::numeric_limits<int>::max(), "sparse_attn_bwd (CUDA): too many blocks");
    float* bk = g.S > 0 ? dks.mutable_data_ptr<float>() : nullptr;
    float* bv = g.S > 0 ? dvs.mutable_data_ptr<float>() : nullptr;
    if (fused)
      dkv(integral_constant<bool, false>{}, integral_constant<bool, true>{}, unsigned(blocks), bk, bv, kblocks, 0);
    else
      dkv(integral_constant<bool, false>{}, integral_constant<bool, false>{}, unsigned(blocks), bk, bv, kblocks, 0);
  }
}

template <typename T>
void dispatch_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& lse2, const at::Tensor& delta, float* dqa, at::Tensor& dq, at::Tensor& dk,
                  at::Tensor& dv, const BandGeo& g, float scale) {
  if (g.D <= 16) {
    launch_bwd<T, 16>(dout, q, k, v, lse2, delta, dqa, dq, dk, dv, g, scale);
  } else if (g.D <= 32) {
    launch_bwd<T, 32>(dout, q, k, v, lse2, delta, dqa, dq, dk, dv, g, scale);
  } else if (g.D <= 64) {
    launch_bwd<T, 64>(dout, q, k, v, lse2, delta, dqa, dq, dk, dv, g, scale);
  } else {
    launch_bwd<T, 128>(dout, q, k, v, lse2, delta, dqa, dq, dk, dv, g, scale);
  }
}

}  // namespace

void mma_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const at::Tensor& o, const at::Tensor& lse, const at::Tensor& glse, at::Tensor& dq, at::Tensor& dk,
             at::Tensor& dv, int64_t window, int64_t dilation, int64_t sinks, double scale) {
  const int64_t D = q.size(3), dpad = (D + 7) / 8 * 8;
  const at::Tensor qp = mma_operand(q, dpad), kp = mma_operand(k, dpad), vp = mma_operand(v, dpad);
  const at::Tensor op = mma_operand(o, dpad), dop = mma_operand(dout, dpad);
  const at::Tensor lse_c = lse.contiguous();
  const at::Tensor glse_c = glse.defined() ? glse.contiguous() : glse;
  auto direct = [&](const at::Tensor& t) {
    return dpad == D && t.is_contiguous() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  };
  at::Tensor dqp = direct(dq) ? dq : at::empty(qp.sizes(), qp.options());
  at::Tensor dkp = direct(dk) ? dk : at::empty(qp.sizes(), qp.options());
  at::Tensor dvp = direct(dv) ? dv : at::empty(qp.sizes(), qp.options());
  const int64_t rows = q.size(0) * q.size(1) * q.size(2);
  at::Tensor delta = at::empty({rows}, q.options().dtype(at::kFloat));
  at::Tensor lse2 = at::empty({rows}, q.options().dtype(at::kFloat));
  const BandGeo g = make_band_geo(qp, window, dilation, sinks, scale);
  const bool fused = fused_dq(g);
  at::Tensor dqa = fused ? at::empty(qp.sizes(), q.options().dtype(at::kFloat)) : at::Tensor();  // zeroed by prep
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t pblocks = (rows + 31) / 32;
  FR_CHECK(pblocks <= std::numeric_limits<int>::max(), "sparse_attn_bwd (CUDA): too many rows");
  auto run = [&](auto tag) {
    using T = decltype(tag);
    bwd_prep_kernel<T><<<unsigned(pblocks), 256, 0, stream>>>(
        reinterpret_cast<const T*>(op.const_data_ptr()), reinterpret_cast<const T*>(dop.const_data_ptr()),
        lse_c.const_data_ptr<float>(), glse_c.defined() ? glse_c.const_data_ptr<float>() : nullptr,
        delta.mutable_data_ptr<float>(), lse2.mutable_data_ptr<float>(),
        fused ? dqa.mutable_data_ptr<float>() : nullptr, rows, g.D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dispatch_bwd<T>(dop, qp, kp, vp, lse2, delta, fused ? dqa.mutable_data_ptr<float>() : nullptr, dqp, dkp, dvp, g,
                    static_cast<float>(scale));
  };
  if (q.scalar_type() == at::kBFloat16) {
    run(__nv_bfloat16{});
  } else {
    run(__half{});
  }
  if (fused) {
    dq.copy_(dqa.narrow(3, 0, D));
  } else if (!dqp.is_same(dq)) {
    dq.copy_(dqp.narrow(3, 0, D));
  }
  if (!dkp.is_same(dk)) dk.copy_(dkp.narrow(3, 0, D));
  if (!dvp.is_same(dv)) dv.copy_(dvp.narrow(3, 0, D));
}

}  // namespace cuda
}  // namespace fastrader
