// Geometry of the banded (sliding window + dilation + sinks) attention for
// the tiled kernels, and its masks.
//
// Dilation becomes strided key tiles: query i = r + dil*t (residue r = i mod
// dil) sees window keys j = i - m*dil, i.e. j = r + dil*u with t - W < u <= t.
// So each residue class is a plain causal sliding window of W over its own
// subsequence of Nr = ceil((N - r) / dil) rows, and a CTA works inside one
// class: its tiles are rows r + dil*t, loaded with a row stride of dil*D.
// A dilated window then does the same tile work as a dense one of W keys.
//
// Sink keys j < S (positions, not strided) come as extra key tiles after the
// window tiles; they are masked to the sinks the window does not already
// cover, so a key that is both counts once (from the window).
#pragma once

#include <cstdint>

namespace fastrader {
namespace cuda {

struct BandGeo {
  int64_t BH;  // batch * heads
  int N;       // sequence length
  int D;       // head dim of the buffers (a multiple of 8)
  int W;       // window (clamped to N)
  int dil;     // dilation (clamped to N)
  int S;       // sinks (clamped to N)
  int Nr0;     // rows of residue class 0: ceil(N / dil)
  float sl2;   // scale * log2(e): scores in base 2
};

__host__ __device__ __forceinline__ int residue_rows(const BandGeo& g, int r) {
  return (g.N - r + g.dil - 1) / g.dil;
}

// Key tiles of BN rows for a query block of BM rows starting at t0 (in one
// residue class): tile k covers u in [a, a+BN), a = t0 + BM - (k+1)*BN,
// diagonal first, until the lowest key any row needs (max(0, t0 - W + 1)).
template <int BM, int BN>
struct QueryBand {
  int t0, ntiles;
  __device__ __forceinline__ QueryBand(int t0_, int W) : t0(t0_) {
    const int lowest = t0 - W + 1 > 0 ? t0 - W + 1 : 0;
    ntiles = (t0 + BM - lowest + BN - 1) / BN;
  }
  __device__ __forceinline__ int start(int k) const { return t0 + BM - (k + 1) * BN; }
  // No element of tile k needs a mask: every key <= every query, every
  // distance < W, no key below 0. (Queries past Nr are never stored.)
  __device__ __forceinline__ bool full(int k, int W) const {
    const int a = start(k);
    return a >= 0 && a + BN - 1 <= t0 && t0 + BM - 1 - a < W;
  }
};

// Query tiles of BQ rows for a key block of BN rows starting at u0: tile k
// covers t in [u0 + k*BQ, u0 + (k+1)*BQ), up to the last query that sees a
// key of the block (u0 + BN - 1 + W - 1, and < Nr).
template <int BN, int BQ>
struct KeyBand {
  int u0, ntiles;
  __device__ __forceinline__ KeyBand(int u0_, int W, int Nr) : u0(u0_) {
    int last = u0 + BN - 1 + W - 1;
    if (last > Nr - 1) last = Nr - 1;
    ntiles = last >= u0 ? (last - u0) / BQ + 1 : 0;
  }
  __device__ __forceinline__ int start(int k) const { return u0 + k * BQ; }
  __device__ __forceinline__ bool full(int k, int W, int Nr) const {
    const int a = start(k);
    return a >= u0 + BN - 1 && a + BQ - 1 - u0 < W && a + BQ <= Nr;
  }
};

// Window mask in residue coordinates: query t sees key u.
__device__ __forceinline__ bool window_ok(int t, int u, int W) { return u >= 0 && u <= t && t - u < W; }

// Sink mask in positions: query i sees sink key j and the window does not.
__device__ __forceinline__ bool sink_ok(int i, int j, int S, int W, int dil) {
  if (j >= S || j > i) return false;
  const int d = i - j;
  return !(d % dil == 0 && d / dil < W);
}

}  // namespace cuda
}  // namespace fastrader
