// The CPU attention kernels for AVX-512 (x86-64-v4 core: F, CD, BW, DQ, VL).
// The kernels keep 32-byte vectors; AVX-512VL gives the compiler 32 ymm
// registers and EVEX encodings, which is what -march=native used here.
// See isa.h.
#include "cpu/isa_prelude.h"

#if !defined(FASTRADER_NATIVE_BUILD) && (defined(__x86_64__) || defined(__i386__))
#define FR_ISA_PRAGMA 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512cd,avx512bw,avx512dq,avx512vl")
#define FR_ISA_AVX2 1
#elif defined(__AVX2__)
#define FR_ISA_AVX2 1
#else
#define FR_ISA_AVX2 0
#endif

#define FR_ISA avx512
#include "cpu/isa_kernels.inc"

#if defined(FR_ISA_PRAGMA)
#pragma GCC pop_options
#endif
