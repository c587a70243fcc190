// Portable 256-bit SIMD helpers for the CPU attention kernels.
//
// GCC/Clang vector extensions instead of raw intrinsics: in the avx2 and
// avx512 ISA builds (see isa.h) they compile to ymm FMA code (the kernels are
// tuned for 16 ymm registers; AVX-512VL adds 16 more for the compiler), and in
// the base build to pairs of SSE registers -- one source for all. Included
// inside one ISA region of cpu/isa_kernels.inc: everything lives in the
// namespace FR_ISA, and FR_ISA_AVX2 (not __AVX2__, which GCC does not define
// under `#pragma GCC target`) selects the intrinsic paths.
#pragma once

#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

// Outside the ISA builds (a kernel .cpp that includes this directly) the
// helpers live in their own namespace `plain`, compiled with the file's
// flags (baseline unless FASTRADER_NATIVE=1): distinct from every ISA copy,
// so the linker can never mix them up. The namespace is inline, so such a
// file still names them fastrader::cpu::vload etc.
#ifndef FR_ISA
#define FR_ISA plain
#if defined(__AVX2__) && defined(__FMA__)
#define FR_ISA_AVX2 1
#else
#define FR_ISA_AVX2 0
#endif
#endif

// Passing 32-byte vectors by value without AVX changes the ABI; every helper is
// force-inlined, so no vector ever crosses a real call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

#define FR_INLINE inline __attribute__((always_inline))

namespace fastrader {
namespace cpu {
inline namespace FR_ISA {

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

// 2^x for x <= 0. The kernels work in base 2 (log2(e) is folded into the
// query scale), which saves the range-reduction multiply of exp. Every caller
// passes score - running max or score - lse, so x <= 0 (up to rounding);
// x below the float underflow limit, -inf (our mask value) included, gives
// exactly 0 so masked keys drop out of every sum. x = n + f, |f| <= 1/2,
// 2^f from a degree-5 relative minimax fit (9e-8 relative error), 2^n built in
// the exponent bits. No clamping: the lanes whose exponent would wrap are
// exactly the dead ones, replaced by 0 at the end.
#define FR_EXP2_POLY(f)                                          \
  ((((((f) * 1.326472644915512e-3f + 9.671513074834562e-3f) * (f) + \
      5.5507337488555575e-2f) * (f) + 2.4022242077964223e-1f) * (f) + \
    6.931469775939149e-1f) * (f) + 1.0f)

#if FR_ISA_AVX2
FR_INLINE Simd<float>::V vexp2(Simd<float>::V xv) {
  // Clamping at -127 makes the biased exponent 0, i.e. a scale of +0.0, so
  // dead lanes come out as exactly 0 without a compare and mask. maxps
  // returns its second operand when one is NaN: NaN scores stay NaN.
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(-127.0f), (__m256)xv);
  const __m256i ni = _mm256_cvtps_epi32(x);  // round to nearest
  const __m256 f = _mm256_sub_ps(x, _mm256_cvtepi32_ps(ni));
  const __m256 p = FR_EXP2_POLY((Simd<float>::V)f);
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23);
  return (Simd<float>::V)_mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#else
FR_INLINE Simd<float>::V vexp2(Simd<float>::V x) {
  using V = Simd<float>::V;
  using I = Simd<float>::I;
  const I dead = x < vsplat(-126.0f);
  const V magic = vsplat(12582912.0f);  // 1.5*2^23: adds round to nearest
  const V n = (x + magic) - magic;
  const V f = x - n;
  const V p = FR_EXP2_POLY(f);
  I e = (__builtin_convertvector(n, I) + 127) << 23;
  V scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return dead ? V{} : p * scale;
}
#endif
#undef FR_EXP2_POLY

// float64 is only used for gradcheck-grade accuracy; plain libm per lane.
FR_INLINE Simd<double>::V vexp2(Simd<double>::V x) {
  Simd<double>::V y;
  for (int i = 0; i < Simd<double>::N; ++i) y[i] = std::exp2(x[i]);
  return y;
}

constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.6931471805599453094;

}  // namespace FR_ISA
}  // namespace cpu
}  // namespace fastrader
