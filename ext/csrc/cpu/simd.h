// Portable 256-bit SIMD helpers for the CPU attention kernels.
//
// GCC/Clang vector extensions instead of raw intrinsics: with -march=native on
// an AVX2 machine they compile to ymm FMA code, on AVX-512 machines to the
// same width (the kernels are tuned for 16 ymm registers), and with
// FASTRADER_NATIVE=0 to pairs of SSE registers -- one source for all.
#pragma once

#include <cmath>
#include <cstring>
#include <limits>

// Passing 32-byte vectors by value without AVX changes the ABI; every helper is
// force-inlined, so no vector ever crosses a real call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

#define FR_INLINE inline __attribute__((always_inline))

namespace fastrader {
namespace cpu {

template <typename T>
struct Simd;

template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int I __attribute__((vector_size(32)));
  static constexpr int N = 8;
};

template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef long long I __attribute__((vector_size(32)));
  static constexpr int N = 4;
};

template <typename T>
using vec_t = typename Simd<T>::V;

// memcpy keeps loads/stores legal for any alignment; it compiles to vmovups.
template <typename T>
FR_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
FR_INLINE void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// Broadcast. Not `V{} + x`: without -ffast-math that is a real addition
// (0 + -0 != -0) and costs an extra instruction per splat in the hot loops.
FR_INLINE Simd<float>::V vsplat(float x) { return Simd<float>::V{x, x, x, x, x, x, x, x}; }
FR_INLINE Simd<double>::V vsplat(double x) { return Simd<double>::V{x, x, x, x}; }

template <typename T>
FR_INLINE T hsum(vec_t<T> v) {
  T s = 0;
  for (int i = 0; i < Simd<T>::N; ++i) s += v[i];
  return s;
}

template <typename T>
FR_INLINE T hmax(vec_t<T> v) {
  T m = v[0];
  for (int i = 1; i < Simd<T>::N; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

template <typename T>
FR_INLINE vec_t<T> vmax(vec_t<T> a, vec_t<T> b) {
  return a > b ? a : b;
}

// exp(x) for x <= 0 (all callers pass score - running max or score - lse);
// x below the float underflow limit, -inf (our mask value) included, gives
// exactly 0 so masked keys drop out of every sum. Cephes-style: x = n*ln2 + r,
// |r| <= ln2/2, degree-6 polynomial for e^r, 2^n built in the exponent bits.
// About 2 ulp, far inside the 1e-5 target. No clamping: lanes that would
// overflow the exponent are exactly the dead ones, replaced by 0 at the end.
FR_INLINE Simd<float>::V vexp(Simd<float>::V x) {
  using V = Simd<float>::V;
  using I = Simd<float>::I;
  const I dead = x < vsplat(-87.3365447f);
  // round-to-nearest via the 1.5*2^23 trick (|x*log2e| < 2^22 for live lanes)
  const V magic = vsplat(12582912.0f);
  const V n = (x * 1.44269504088896341f + magic) - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = vsplat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  V y = p * (r * r) + r + 1.0f;
  I e = (__builtin_convertvector(n, I) + 127) << 23;
  V scale;
  std::memcpy(&scale, &e, sizeof(scale));
  y = y * scale;
  return dead ? V{} : y;
}

// float64 is only used for gradcheck-grade accuracy; plain libm per lane.
FR_INLINE Simd<double>::V vexp(Simd<double>::V x) {
  Simd<double>::V y;
  for (int i = 0; i < Simd<double>::N; ++i) y[i] = std::exp(x[i]);
  return y;
}

}  // namespace cpu
}  // namespace fastrader
