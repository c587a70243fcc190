// Register-blocked micro-GEMM used for every product in the attention kernels.
//
// One shape serves all five products (S = Q K^T, dP = dO V^T, O += P V,
// dQ += dS K, dK += dS^T Q, dV += P^T dO): A is addressed with two strides so
// that it can be read either row-major or transposed, B is row-major.
#pragma once

#include "simd.h"

namespace fastrader {
namespace cpu {
inline namespace FR_ISA {

// GCC otherwise folds the B loads into every FMA as a memory operand, i.e.
// reloads them MR times, which makes the loop load-bound.
template <typename V>
FR_INLINE void keep_in_register(V& v) {
#if FR_ISA_AVX2
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}

// C[r, n] (+)= sum_{k in [k0,k1)} A[r*ars + k*acs] * B[k*ldb + n]
// for r < MR and n in [n0, n1); n0 and n1 are multiples of the vector width.
// MR rows x 2 vectors of accumulators; see kMR.
template <typename T, int MR, bool ACC>
FR_INLINE void tile(const T* A, long ars, long acs, const T* B, long ldb, long k0, long k1, long n0,
                    long n1, T* C, long ldc) {
  using V = vec_t<T>;
  constexpr int VN = Simd<T>::N;
  long n = n0;
  for (; n + 2 * VN <= n1; n += 2 * VN) {
    V c0[MR], c1[MR];
    for (int r = 0; r < MR; ++r) {
      if (ACC) {
        c0[r] = vload(C + r * ldc + n);
        c1[r] = vload(C + r * ldc + n + VN);
      } else {
        c0[r] = V{};
        c1[r] = V{};
      }
    }
    for (long k = k0; k < k1; ++k) {
      V b0 = vload(B + k * ldb + n);
      V b1 = vload(B + k * ldb + n + VN);
      keep_in_register(b0);
      keep_in_register(b1);
      for (int r = 0; r < MR; ++r) {
        const V a = vsplat(A[r * ars + k * acs]);
        c0[r] += a * b0;
        c1[r] += a * b1;
      }
    }
    for (int r = 0; r < MR; ++r) {
      vstore(C + r * ldc + n, c0[r]);
      vstore(C + r * ldc + n + VN, c1[r]);
    }
  }
  if (n < n1) {  // one vector left
    V c0[MR];
    for (int r = 0; r < MR; ++r) c0[r] = ACC ? vload(C + r * ldc + n) : V{};
    for (long k = k0; k < k1; ++k) {
      V b0 = vload(B + k * ldb + n);
      keep_in_register(b0);
      for (int r = 0; r < MR; ++r) c0[r] += vsplat(A[r * ars + k * acs]) * b0;
    }
    for (int r = 0; r < MR; ++r) vstore(C + r * ldc + n, c0[r]);
  }
}

constexpr int kMR = 6;  // rows per register block: 12 accumulators + 2 B + 1 broadcast = 15 ymm

template <typename T, bool ACC>
FR_INLINE void tile_rows(int mr, const T* A, long ars, long acs, const T* B, long ldb, long k0,
                         long k1, long n0, long n1, T* C, long ldc) {
  switch (mr) {
    case 6: tile<T, 6, ACC>(A, ars, acs, B, ldb, k0, k1, n0, n1, C, ldc); break;
    case 5: tile<T, 5, ACC>(A, ars, acs, B, ldb, k0, k1, n0, n1, C, ldc); break;
    case 4: tile<T, 4, ACC>(A, ars, acs, B, ldb, k0, k1, n0, n1, C, ldc); break;
    case 3: tile<T, 3, ACC>(A, ars, acs, B, ldb, k0, k1, n0, n1, C, ldc); break;
    case 2: tile<T, 2, ACC>(A, ars, acs, B, ldb, k0, k1, n0, n1, C, ldc); break;
    case 1: tile<T, 1, ACC>(A, ars, acs, B, ldb, k0, k1, n0, n1, C, ldc); break;
    default: break;
  }
}

}  // namespace FR_ISA
}  // namespace cpu
}  // namespace fastrader
