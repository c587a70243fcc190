// Tensor-core and async-copy primitives shared by the mma.sync kernels
// (fwd_mma.cu, bwd_mma.cu). Portable to sm_80 and sm_90: mma.sync m16n8k16
// with fp32 accumulation, ldmatrix and cp.async exist on both.
//
// Fragment layouts of m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"),
// lane = 4*g + c:
//   A 16x16 row-major: a0 (row g, cols 2c..2c+1), a1 (row g+8, same cols),
//                      a2 (row g, cols 2c+8..), a3 (row g+8, cols 2c+8..)
//   B 16x8  (k x n):   b0 (k 2c..2c+1, col g), b1 (k 2c+8.., col g)
//   C 16x8:            c0,c1 (row g, cols 2c, 2c+1), c2,c3 (row g+8, same cols)
// Two neighbouring C tiles (n 0..7 and 8..15) hold exactly the elements of one
// A fragment with k = those 16 columns, which is how P (and dS) go from one
// product straight into the next without shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fastrader {
namespace cuda {
namespace mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Two floats into one register of two 16-bit values (lo in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// c += a * b
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices; lane l gives the address of row l%8 of matrix l/8.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16 bytes global -> shared, zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

// 4 bytes global -> shared, zero-filled when !valid.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Shared-memory tile of R rows x DP columns of 16-bit values; rows padded by
// 16 bytes so that the 8 row addresses of one ldmatrix hit 8 distinct 16-byte
// bank groups for every DP used here (16, 32, 64, 128).
template <int DP>
struct Tile {
  static constexpr int kStride = DP + 8;  // elements per row
};

// Async load of R rows into a tile. Row r of the tile is global row
// base + step*(start + r) (in units of D elements) when lo <= start + r < hi,
// zeros otherwise; columns past D (D % 8 == 0) are zeros.
template <int R, int DP, int NT, typename T>
__device__ __forceinline__ void load_rows(T* s, const T* __restrict__ g, int D, int64_t base, int64_t step,
                                          int start, int lo, int hi) {
  constexpr int CH = DP / 8;
  const int dc = D / 8;
#pragma unroll
  for (int it = 0; it < (R * CH + NT - 1) / NT; ++it) {
    const int idx = it * NT + threadIdx.x;
    if ((R * CH) % NT != 0 && idx >= R * CH) break;
    const int row = idx / CH, ch = idx % CH;
    const int t = start + row;
    const bool ok = t >= lo && t < hi && ch < dc;
    const T* src = ok ? g + (base + step * t) * D + ch * 8 : g;
    cp_async16(smem_addr(s + row * Tile<DP>::kStride + ch * 8), src, ok);
  }
}

// A fragment (16x16 at rows r0, cols k0) of a row-major shared tile.
template <int DP, typename T>
__device__ __forceinline__ void ld_a(uint32_t (&a)[4], const T* s, int r0, int k0, int lane) {
  const int row = r0 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int col = k0 + (lane >> 4) * 8;
  ldsm_x4(a, smem_addr(s + row * Tile<DP>::kStride + col));
}

// B fragments of two n-tiles (n0..n0+7, n0+8..n0+15) for k = k0..k0+15 where
// the tile stores B transposed: row = n, col = k (e.g. K for S = Q K^T).
// b[0],b[1] belong to n-tile n0, b[2],b[3] to n0+8.
template <int DP, typename T>
__device__ __forceinline__ void ld_b_nk(uint32_t (&b)[4], const T* s, int n0, int k0, int lane) {
  const int row = n0 + (lane & 7) + (lane >> 4) * 8;
  const int col = k0 + ((lane >> 3) & 1) * 8;
  ldsm_x4(b, smem_addr(s + row * Tile<DP>::kStride + col));
}

// B fragments of two n-tiles where the tile stores B as is: row = k, col = n
// (e.g. V for O = P V).
template <int DP, typename T>
__device__ __forceinline__ void ld_b_kn(uint32_t (&b)[4], const T* s, int k0, int n0, int lane) {
  const int row = k0 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int col = n0 + (lane >> 4) * 8;
  ldsm_x4_t(b, smem_addr(s + row * Tile<DP>::kStride + col));
}

// The A fragment (k = 16 columns 16*kk..16*kk+15) made of C tiles 2kk, 2kk+1.
template <typename T, int NT8>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c)[NT8][4], int kk) {
  a[0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

}  // namespace mma
}  // namespace cuda
}  // namespace fastrader
