// Score-tile helpers of the mma kernels: scaling into base 2, masking, and
// the online softmax over a warp's 16 rows (each thread holds rows g and
// g+8 of every 16x8 C tile: elements 0,1 -> row g, 2,3 -> row g+8).
#pragma once

#include <cmath>

namespace fastrader {
namespace cuda {

template <int NT8>
__device__ __forceinline__ void scale_scores(float (&s)[NT8][4], float sl2) {
#pragma unroll
  for (int n = 0; n < NT8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] *= sl2;
}

// ok(h, col): row g + 8h of the warp tile sees column col (n*8 + e%2, the
// caller adds 2c and the tile's first column). Masked scores become -inf.
template <int NT8, typename F>
__device__ __forceinline__ void mask_scores(float (&s)[NT8][4], float sl2, F&& ok) {
#pragma unroll
  for (int n = 0; n < NT8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = ok(e >> 1, n * 8 + (e & 1)) ? s[n][e] * sl2 : -INFINITY;
}

// Running max m (base 2) and the thread's partial row sums l of the two rows.
struct OnlineSoftmax {
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};

  // s: base-2 scores of one key tile (-inf where masked); becomes P.
  // acc: the output accumulators, rescaled to the new maximum.
  template <int NT8, int NO8>
  __device__ __forceinline__ void update(float (&s)[NT8][4], float (&acc)[NO8][4]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = m[h];
#pragma unroll
      for (int n = 0; n < NT8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row that has seen no key yet keeps m = -inf; subtract 0 then, so
      // that exp2(-inf - -inf) never makes a NaN.
      const float mu = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m[h] - mu);
      m[h] = mx;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < NT8; ++n) {
        s[n][2 * h] = exp2f(s[n][2 * h] - mu);
        s[n][2 * h + 1] = exp2f(s[n][2 * h + 1] - mu);
        sum += s[n][2 * h] + s[n][2 * h + 1];
      }
      l[h] = l[h] * alpha + sum;
#pragma unroll
      for (int n = 0; n < NO8; ++n) {
        acc[n][2 * h] *= alpha;
        acc[n][2 * h + 1] *= alpha;
      }
    }
  }

  // Full row sums across the 4 threads of a row.
  __device__ __forceinline__ void finish() {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
  }
};

}  // namespace cuda
}  // namespace fastrader
