// Forward of fastrader::sparse_attn_fwd on Hopper (sm_90a): wgmma.mma_async
// with K/V tiles brought in by the tensor memory accelerator (TMA).
//
// One CTA = 9 warps = two consumer warpgroups (warps 0-3, 4-7) and one
// producer warp (warp 8), for a block of BM = 128 query rows of one
// (batch, head); each consumer warpgroup owns 64 of the rows.
//
//   producer  one thread issues cp.async.bulk.tensor loads (tensor maps built
//             on the host, 128-byte swizzle, rows past the sequence zero-filled)
//             of the Q block once, then of the K and V tiles of BN rows
//             through ST shared-memory stages; each load completes on a
//             "full" mbarrier (transaction bytes), each stage is handed back
//             by the consumers on an "empty" mbarrier (one arrival per
//             consumer warp), K and V separately so that the next K tile can
//             land while the current P V product still reads V.
//   consumers per key tile: S = Q K^T as m64nBNk16 wgmma with both operands
//             in shared memory (K-major descriptors), wait; mask (edge tiles
//             only), online softmax in base 2 (softmax.cuh, as the mma.sync
//             kernel), P packed to bf16/fp16 in registers; O += P V as
//             m64nDk16 wgmma with P as the register A operand and V from
//             shared memory through an MN-major (transposed) descriptor. The
//             P V product is committed and not waited for: it runs on the
//             tensor cores while the warpgroup issues the next tile's S
//             product (the wait after S covers both).
//
// Key tiles are those of mask.cuh's QueryBand (the window from the diagonal
// back to the oldest key the block needs), then the sink tiles; only tiles
// that are not entirely inside a warpgroup's band apply a mask. lse is stored
// in natural-log units, as fwd_mma.cu stores it and bwd_mma.cu reads it.
//
// Scope (wgmma_refusal says why a call is refused; the caller then runs the
// mma.sync kernel): float16/bfloat16, head dim 64 or 128, dilation 1 (after
// clamping to the sequence), a device of compute capability 9.0 and a build
// that has sm_90a code. Sinks are handled.
//
// FASTRADER_CUDA_FWD selects: unset/"auto" = this kernel when it accepts the
// call, "mma" = never, "wgmma" = always (an error with the refusal's reason
// when it cannot).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda.h>  // CUtensorMap and its enums (types only: the encoder comes through the runtime)
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "check.h"
#include "cuda/mask.cuh"
#include "cuda/mma.cuh"
#include "cuda/mma_launch.h"
#include "cuda/softmax.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FR_WGMMA_DEVICE 1
#endif

namespace fastrader {
namespace cuda {
namespace {

// ------------------------------------------------------------ PTX wrappers
// Only called from code compiled for sm_90a (the kernel body is guarded).

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}

__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// 3-d tiled bulk tensor load global -> shared, completing on mbarrier bar.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                            int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Ties the registers to this point of the instruction stream: nothing that
// reads or writes them moves across. Used right after a wgmma wait (so that
// the accumulators are not touched while a product is still in flight) and
// right before wgmma.fence (so that no ordinary instruction that defines an
// operand register lands between the fence and the products).
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R][4]) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}

template <int R>
__device__ __forceinline__ void fence_regs(uint32_t (&d)[R][4]) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(d[i][e])::"memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle (PTX ISA, "Matrix
// Descriptor Format"): start address, leading and stride byte offsets (all
// >> 4), swizzle mode 1 in bits 62-63, base offset 0 (every tile and panel
// here starts on a 1024-byte boundary).
//   K-major (Q, K: rows of 64 elements = 128 bytes): stride offset 1024 (the
//     next 8 rows), leading offset unused (the 16-element k slice sits inside
//     one swizzled row; the slice kk starts 32*kk bytes in).
//   MN-major (V read as B = V[key][d] for O = P V, with the transpose bit):
//     leading offset = the next 64 columns (the next panel), stride offset
//     1024 (the next 8 keys).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t lead, uint32_t stride) {
  return uint64_t((addr & 0x3FFFFu) >> 4) | (uint64_t((lead >> 4) & 0x3FFFu) << 16) |
         (uint64_t((stride >> 4) & 0x3FFFu) << 32) | (uint64_t(1) << 62);
}

// d (+)= A B, m64nNk16, A and B from shared memory (both K-major).
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db, int accumulate);
// d += A B, m64nNk16, A from registers (the m16n8k16 A fragment of the warp's
// 16 rows), B from shared memory MN-major (transpose bit set).
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t db);

#ifdef FR_WGMMA_DEVICE
template <>
__device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 64>(float (&d)[8][4], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(da), "l"(db), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 64>(float (&d)[8][4], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_ss<__half, 64>(float (&d)[8][4], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(da), "l"(db), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs<__half, 64>(float (&d)[8][4], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 128>(float (&d)[16][4], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "l"(da), "l"(db), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 128>(float (&d)[16][4], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_ss<__half, 128>(float (&d)[16][4], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "l"(da), "l"(db), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs<__half, 128>(float (&d)[16][4], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

#endif  // FR_WGMMA_DEVICE

// ------------------------------------------------------------------ kernel

template <int D, int BN, int ST>
struct WgCfg {
  static constexpr int BM = 128;               // query rows per CTA (two warpgroups of 64)
  static constexpr int NP = D / 64;            // 128-byte panels of a row (64 elements each)
  static constexpr int kThreads = 9 * 32;      // 2 consumer warpgroups + 1 producer warp
  static constexpr int kPanelQ = BM * 128;     // bytes of one panel of the Q block
  static constexpr int kPanelKV = BN * 128;    // bytes of one panel of a K or V tile
  static constexpr int kQBytes = NP * kPanelQ;
  static constexpr int kKVBytes = NP * kPanelKV;
  static constexpr int kOffK = kQBytes;
  static constexpr int kOffV = kOffK + ST * kKVBytes;
  static constexpr int kOffBar = kOffV + ST * kKVBytes;
  static constexpr int kBars = 1 + 4 * ST;     // full_q, full_k[ST], full_v[ST], empty_k[ST], empty_v[ST]
  static constexpr int kSmem = kOffBar + 8 * kBars + 1024;  // + room to align the base to 1024
  static constexpr int kConsumerWarps = 8;
};

// 168 registers a thread at most: the 9 warps sit on the SM's 4 quarters
// (16384 registers each) 3-2-2-2, so 3 warps must fit one quarter
// (3 * 32 * 168 = 16128). 224 (65536 / 288) built but failed at launch ("too
// many resources requested", H200). D = 64 takes 154 with no serialisation;
// D = 128 takes 160 and ptxas serialises its wgmma products (C7512: too few
// registers), which 3 warpgroups with setmaxnreg would lift.
template <typename T, int D, int BN, int ST>
__global__ void __maxnreg__(168)
    fwd_wgmma_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                     const __grid_constant__ CUtensorMap tv, T* __restrict__ o, float* __restrict__ lse, BandGeo g,
                     int tblocks) {
#ifdef FR_WGMMA_DEVICE
  using C = WgCfg<D, BN, ST>;
  constexpr int BM = C::BM;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = mma::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t sQ = base, sK = base + C::kOffK, sV = base + C::kOffV;
  const uint32_t bar = base + C::kOffBar;
  auto full_q = [&]() { return bar; };
  auto full_k = [&](int s) { return bar + 8u * (1 + s); };
  auto full_v = [&](int s) { return bar + 8u * (1 + ST + s); };
  auto empty_k = [&](int s) { return bar + 8u * (1 + 2 * ST + s); };
  auto empty_v = [&](int s) { return bar + 8u * (1 + 3 * ST + s); };

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int bh = int(blockIdx.x / unsigned(tblocks));
  const int t0 = int(blockIdx.x % unsigned(tblocks)) * BM;
  const int N = g.N;

  // The same tile list in every role: window tiles (diagonal first), then sinks.
  const QueryBand<BM, BN> band(t0, g.W);
  const int nwt = band.ntiles;
  int nst = 0;
  if (g.S > 0) {
    const int t_last = min(t0 + BM - 1, N - 1);
    if (!(t_last < g.W)) nst = (min(g.S, t_last + 1) + BN - 1) / BN;
  }
  const int ntot = nwt + nst;

  if (threadIdx.x == 0) {
    mbar_init(full_q(), 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(full_k(s), 1);
      mbar_init(full_v(s), 1);
      mbar_init(empty_k(s), C::kConsumerWarps);
      mbar_init(empty_v(s), C::kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warp == C::kConsumerWarps) {  // ---------------------------- producer
    if (lane == 0) {
      mbar_expect_tx(full_q(), C::kQBytes);
#pragma unroll
      for (int p = 0; p < C::NP; ++p) tma_load_3d(sQ + p * C::kPanelQ, &tq, full_q(), 64 * p, t0, bh);
      for (int kt = 0; kt < ntot; ++kt) {
        const int s = kt % ST;
        const int row = kt < nwt ? band.start(kt) : (kt - nwt) * BN;
        if (kt >= ST) mbar_wait(empty_k(s), uint32_t((kt / ST - 1) & 1));
        mbar_expect_tx(full_k(s), C::kKVBytes);
#pragma unroll
        for (int p = 0; p < C::NP; ++p)
          tma_load_3d(sK + s * C::kKVBytes + p * C::kPanelKV, &tk, full_k(s), 64 * p, row, bh);
        if (kt >= ST) mbar_wait(empty_v(s), uint32_t((kt / ST - 1) & 1));
        mbar_expect_tx(full_v(s), C::kKVBytes);
#pragma unroll
        for (int p = 0; p < C::NP; ++p)
          tma_load_3d(sV + s * C::kKVBytes + p * C::kPanelKV, &tv, full_v(s), 64 * p, row, bh);
      }
    }
    return;
  }

  // ---------------------------------------------------------------- consumers
  const int wg = warp >> 2, wi = warp & 3;
  const int tw = t0 + 64 * wg;  // the warpgroup's first row
  const int gq = lane >> 2, cq = lane & 3;
  const int row0 = tw + 16 * wi + gq;  // the thread's rows: row0 and row0 + 8

  float acc[D / 8][4];
  float sc[BN / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
  for (int n = 0; n < BN / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
  OnlineSoftmax sm;

  mbar_wait(full_q(), 0);
  const uint32_t qrows = sQ + uint32_t(64 * wg * 128);

  int kt = 0;
  do {  // ntot >= 1 (the diagonal tile): a do-while leaves no path around the products
    const int s = kt % ST;
    const uint32_t ph = uint32_t((kt / ST) & 1);
    const uint32_t kbase = sK + s * C::kKVBytes, vbase = sV + s * C::kKVBytes;

    mbar_wait(full_k(s), ph);
    fence_regs(sc);  // the softmax's last reads of sc stay before the product that overwrites it
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t koff = uint32_t((kk % 4) * 32);  // the k slice inside the 128-byte row
      const uint64_t da = sw128_desc(qrows + (kk / 4) * C::kPanelQ + koff, 16, 1024);
      const uint64_t db = sw128_desc(kbase + (kk / 4) * C::kPanelKV + koff, 16, 1024);
      wgmma_ss<T, BN>(sc, da, db, kk > 0 ? 1 : 0);
    }
    wg_commit();
    wg_wait<0>();  // S of this tile and P V of the previous one are done
    fence_regs(sc);
    fence_regs(acc);
    if (lane == 0) {
      mbar_arrive(empty_k(s));
      if (kt > 0) mbar_arrive(empty_v((kt - 1) % ST));
    }

    if (kt < nwt) {
      const int a = band.start(kt);
      if (a >= 0 && a + BN - 1 <= tw && tw + 63 - a < g.W) {
        scale_scores(sc, g.sl2);
      } else {
        const int a2 = a + 2 * cq;
        mask_scores(sc, g.sl2, [&](int h, int col) { return window_ok(row0 + 8 * h, a2 + col, g.W); });
      }
    } else {
      const int j0 = (kt - nwt) * BN + 2 * cq;
      mask_scores(sc, g.sl2, [&](int h, int col) { return sink_ok(row0 + 8 * h, j0 + col, g.S, g.W, 1); });
    }
    sm.update(sc, acc);

    uint32_t pf[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) mma::c_to_a<T>(pf[kk], sc, kk);

    mbar_wait(full_v(s), ph);
    fence_regs(acc);  // the rescale of acc and the packing of P happen before the product
    fence_regs(pf);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      wgmma_rs<T, D>(acc, pf[kk], sw128_desc(vbase + uint32_t(kk * 16 * 128), C::kPanelKV, 1024));
    wg_commit();
  } while (++kt < ntot);
  wg_wait<0>();
  fence_regs(acc);

  sm.finish();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = row0 + 8 * h;
    if (t >= N) continue;
    const int64_t row = int64_t(bh) * N + t;
    const float inv = 1.f / sm.l[h];
    T* orow = o + row * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(orow + n * 8 + 2 * cq) = mma::pack2<T>(acc[n][2 * h] * inv, acc[n][2 * h + 1] * inv);
    if (cq == 0) lse[row] = (sm.m[h] + log2f(sm.l[h])) * 0.69314718055994531f;
  }
#else
  __trap();  // built for another architecture; the host never launches this (wgmma_refusal)
#endif
}

// ---------------------------------------------------------------- host side

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    FR_CHECK(q == cudaDriverEntryPointSuccess && p != nullptr,
             "sparse_attn_fwd (CUDA): the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// (BH, N, D) rows of t as a 3-d tensor map: boxes of 64 columns x rows x 1,
// 128-byte swizzle, out-of-range rows read as zeros.
CUtensorMap make_rows_map(const at::Tensor& t, int64_t BH, int64_t N, int64_t D, int rows) {
  CUtensorMap m;
  std::memset(&m, 0, sizeof(m));
  const int64_t esz = 2;
  const cuuint64_t dims[3] = {cuuint64_t(D), cuuint64_t(N), cuuint64_t(BH)};
  const cuuint64_t strides[2] = {cuuint64_t(D * esz), cuuint64_t(N * D * esz)};
  const cuuint32_t box[3] = {64u, cuuint32_t(rows), 1u};
  const cuuint32_t estr[3] = {1u, 1u, 1u};
  const CUtensorMapDataType dt =
      t.scalar_type() == at::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = tensor_map_encoder()(&m, dt, 3, const_cast<void*>(t.const_data_ptr()), dims, strides, box, estr,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FR_CHECK(r == CUDA_SUCCESS, "sparse_attn_fwd (CUDA): cuTensorMapEncodeTiled failed (", int(r), ")");
  return m;
}

template <int D>
struct WgChoice;  // tile width and stages per head dim
template <>
struct WgChoice<64> {
  static constexpr int BN = 128, ST = 3;
};
template <>
struct WgChoice<128> {
  static constexpr int BN = 128, ST = 2;
};

template <typename T, int D>
void launch_wgmma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                  const BandGeo& g) {
  constexpr int BN = WgChoice<D>::BN, ST = WgChoice<D>::ST;
  using C = WgCfg<D, BN, ST>;
  const int tblocks = (g.N + C::BM - 1) / C::BM;
  const int64_t blocks = g.BH * int64_t(tblocks);
  FR_CHECK(blocks <= std::numeric_limits<int>::max(), "sparse_attn_fwd (CUDA): too many blocks (", blocks, ")");
  const CUtensorMap mq = make_rows_map(q, g.BH, g.N, D, C::BM);
  const CUtensorMap mk = make_rows_map(k, g.BH, g.N, D, BN);
  const CUtensorMap mv = make_rows_map(v, g.BH, g.N, D, BN);
  auto kernel = fwd_wgmma_kernel<T, D, BN, ST>;
  static const bool attr_set = [&] {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem));
    return true;
  }();
  (void)attr_set;
  kernel<<<unsigned(blocks), C::kThreads, C::kSmem, c10::cuda::getCurrentCUDAStream()>>>(
      mq, mk, mv, reinterpret_cast<T*>(out.mutable_data_ptr()), lse.mutable_data_ptr<float>(), g, tblocks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

enum class FwdPick { kAuto, kMma, kWgmma };

FwdPick fwd_pick() {
  const char* e = std::getenv("FASTRADER_CUDA_FWD");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0) return FwdPick::kAuto;
  if (std::strcmp(e, "mma") == 0) return FwdPick::kMma;
  if (std::strcmp(e, "wgmma") == 0) return FwdPick::kWgmma;
  FR_CHECK(false, "FASTRADER_CUDA_FWD must be auto, mma or wgmma, got '", std::string(e), "'");
  return FwdPick::kAuto;
}

// Whether auto picks the wgmma kernel when it accepts a call.
constexpr bool kWgmmaByDefault = true;

}  // namespace

std::string wgmma_refusal(const at::Tensor& q, int64_t window, int64_t dilation, int64_t sinks) {
  (void)window;
  (void)sinks;
  const auto st = q.scalar_type();
  if (st != at::kHalf && st != at::kBFloat16)
    return std::string("dtype ") + c10::toString(st) + " (needs float16 or bfloat16)";
  if (q.dim() != 4) return "q is not 4-d";
  const int64_t D = q.size(3);
  if (D != 64 && D != 128) return "head_dim " + std::to_string(D) + " (needs 64 or 128)";
  if (!mma_supported(q)) return "the tensor-core kernels are off or unsupported here (FASTRADER_CUDA_KERNEL=scalar?)";
#ifndef FASTRADER_SM90A
  (void)dilation;
  return "this build of fastrader._C has no sm_90a code (TORCH_CUDA_ARCH_LIST without 9.0)";
#else
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.device().index()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, q.device().index()));
  if (major != 9 || minor != 0)
    return "compute capability " + std::to_string(major) + "." + std::to_string(minor) + " (needs 9.0, sm_90a)";
  const int64_t N = q.size(2);
  if (std::min<int64_t>(dilation, N) != 1) return "dilation " + std::to_string(dilation) + " (needs 1)";
  const int64_t BH = q.size(0) * q.size(1);
  if (BH > std::numeric_limits<int>::max()) return "too many (batch, head) pairs for one launch";
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.device().index()));
  const int need = D == 64 ? WgCfg<64, WgChoice<64>::BN, WgChoice<64>::ST>::kSmem
                           : WgCfg<128, WgChoice<128>::BN, WgChoice<128>::ST>::kSmem;
  if (optin < need) return "shared memory per block " + std::to_string(optin) + " < " + std::to_string(need);
  return std::string();
#endif
}

bool wgmma_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
               int64_t window, int64_t dilation, int64_t sinks, double scale) {
  const FwdPick pick = fwd_pick();
  if (pick == FwdPick::kMma || (pick == FwdPick::kAuto && !kWgmmaByDefault)) return false;
  const std::string why = wgmma_refusal(q, window, dilation, sinks);
  if (!why.empty()) {
    FR_CHECK(pick != FwdPick::kWgmma, "sparse_attn_fwd: FASTRADER_CUDA_FWD=wgmma, but the wgmma kernel refuses this call: ",
             why);
    return false;
  }
#ifdef FASTRADER_SM90A
  const int64_t D = q.size(3);
  // contiguous and 16-byte aligned (tensor maps need both); no padding at D = 64/128
  const at::Tensor qp = mma_operand(q, D), kp = mma_operand(k, D), vp = mma_operand(v, D);
  const bool direct = out.is_contiguous() && reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
  at::Tensor op = direct ? out : at::empty(qp.sizes(), qp.options());
  const BandGeo g = make_band_geo(qp, window, dilation, sinks, scale);
  if (q.scalar_type() == at::kBFloat16) {
    if (D == 64)
      launch_wgmma<__nv_bfloat16, 64>(qp, kp, vp, op, lse, g);
    else
      launch_wgmma<__nv_bfloat16, 128>(qp, kp, vp, op, lse, g);
  } else {
    if (D == 64)
      launch_wgmma<__half, 64>(qp, kp, vp, op, lse, g);
    else
      launch_wgmma<__half, 128>(qp, kp, vp, op, lse, g);
  }
  if (!direct) out.copy_(op);
  return true;
#else
  return false;
#endif
}

}  // namespace cuda
}  // namespace fastrader
