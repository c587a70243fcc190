// The CPU attention kernels for AVX2 + FMA (x86-64-v3 core). See isa.h.
#include "cpu/isa_prelude.h"

#if !defined(FASTRADER_NATIVE_BUILD) && (defined(__x86_64__) || defined(__i386__))
#define FR_ISA_PRAGMA 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FR_ISA_AVX2 1
#elif defined(__AVX2__)
#define FR_ISA_AVX2 1
#else
#define FR_ISA_AVX2 0
#endif

#define FR_ISA avx2
#include "cpu/isa_kernels.inc"

#if defined(FR_ISA_PRAGMA)
#pragma GCC pop_options
#endif
