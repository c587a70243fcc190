// Runtime choice of the instruction set for the CPU kernels.
//
// Why: a build with -march=native crashes with an illegal instruction on an
// older CPU, and a plain x86-64 build runs the kernels ~6x slower. So the
// kernels are compiled three times into the one extension and the best copy
// the CPU (and OS) supports is picked on the first call:
//
//   base    x86-64 baseline (SSE2), the flags the rest of the extension has
//   avx2    x86-64-v3 core: AVX2 + FMA
//   avx512  x86-64-v4 core: AVX-512 F/CD/BW/DQ/VL (+ AVX2/FMA)
//
// How: kernels_<isa>.cpp includes every library header first (so inline
// library code is compiled for the baseline), then opens
// `#pragma GCC target(...)` and includes cpu/isa_kernels.inc, which pulls in
// the kernel headers inside namespace fastrader::cpu::<isa> with internal
// linkage. Nothing compiled for a wider ISA can then be picked by the linker
// for a narrower path; tests/test_extension_isa.py checks that with objdump.
// The per-ISA sources are ordinary .cpp files, so setup.py's glob of
// ext/csrc/cpu/*.cpp builds them in the same (ninja) compile as the rest.
//
// Adding a kernel to the dispatched paths (the decode kernels of
// cpu/decode_kernels.h went this way):
//   1. write its SIMD code as a header like cpu/attention_kernels.h
//      (namespace FR_ISA, anonymous inner namespace, raw pointers only: no
//      torch headers inside the ISA region);
//   2. include it from cpu/isa_kernels.inc and add its entry points to
//      KernelTable below and to the table at the end of isa_kernels.inc;
//   3. call it through cpu::kernels() from the op's .cpp (tensor checks,
//      allocation and registration stay there, compiled for the baseline).
// A kernel .cpp that skips this simply runs its baseline build everywhere
// (and tests/test_extension_isa.py checks that no vector code sits outside
// the dispatched namespaces).
//
// FASTRADER_CPU_ISA=base|avx2|avx512 caps the choice (tests run every path;
// a cap above what the CPU supports is lowered to what it supports).
// FASTRADER_NATIVE=1 builds compile everything with -march=native and leave
// the pragmas out (FASTRADER_NATIVE_BUILD), for the last few percent.
#pragma once

#include <cstdint>

#include "cpu/attention_plan.h"

namespace fastrader {
namespace cpu {

struct KernelTable {
  const char* isa;
  void (*fwd_f32)(const Geometry&, int64_t, const float*, const float*, const float*, float*, float*,
                  float);
  void (*fwd_f64)(const Geometry&, int64_t, const double*, const double*, const double*, double*,
                  double*, double);
  void (*bwd_f32)(const Geometry&, int64_t, const Head<float>&, float);
  void (*bwd_f64)(const Geometry&, int64_t, const Head<double>&, double);
  // sparse_attn_decode (cpu/decode_kernels.h): q, k_cache, v_cache, out, pos, B, H, D, window,
  // dilation, sinks, scale.
  void (*decode_f32)(const float*, const float*, const float*, float*, const int64_t*, int64_t, int64_t,
                     int64_t, int64_t, int64_t, int64_t, double);
  void (*decode_f64)(const double*, const double*, const double*, double*, const int64_t*, int64_t, int64_t,
                     int64_t, int64_t, int64_t, int64_t, double);
  // decode_step: x, params, cache, conv, pos, n_features, d_model, n_heads, d_ff, conv_kernel, sinks,
  // window, dilations, n_layers.
  float (*decode_step)(const float*, const float*, float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, const int64_t*, int64_t);
};

extern const KernelTable kernels_base;
extern const KernelTable kernels_avx2;
extern const KernelTable kernels_avx512;

// The table for this CPU (chosen once per process).
const KernelTable& kernels();

// Overloads so the templated op entries can call the table by element type.
inline void run_fwd(const KernelTable& t, const Geometry& g, int64_t BH, const float* q, const float* k,
                    const float* v, float* out, float* lse, float scale) {
  t.fwd_f32(g, BH, q, k, v, out, lse, scale);
}
inline void run_fwd(const KernelTable& t, const Geometry& g, int64_t BH, const double* q, const double* k,
                    const double* v, double* out, double* lse, double scale) {
  t.fwd_f64(g, BH, q, k, v, out, lse, scale);
}
inline void run_decode(const KernelTable& t, const float* q, const float* k, const float* v, float* out,
                       const int64_t* pos, int64_t B, int64_t H, int64_t D, int64_t window, int64_t dilation,
                       int64_t sinks, double scale) {
  t.decode_f32(q, k, v, out, pos, B, H, D, window, dilation, sinks, scale);
}
inline void run_decode(const KernelTable& t, const double* q, const double* k, const double* v, double* out,
                       const int64_t* pos, int64_t B, int64_t H, int64_t D, int64_t window, int64_t dilation,
                       int64_t sinks, double scale) {
  t.decode_f64(q, k, v, out, pos, B, H, D, window, dilation, sinks, scale);
}
inline void run_bwd(const KernelTable& t, const Geometry& g, int64_t BH, const Head<float>& h, float scale) {
  t.bwd_f32(g, BH, h, scale);
}
inline void run_bwd(const KernelTable& t, const Geometry& g, int64_t BH, const Head<double>& h,
                    double scale) {
  t.bwd_f64(g, BH, h, scale);
}

}  // namespace cpu
}  // namespace fastrader

// For fastrader._C.build_info(): the ISA paths compiled in and the chosen one.
extern "C" const char* fastrader_cpu_isa_compiled();
extern "C" const char* fastrader_cpu_isa_selected();
