// The CPU attention kernels for the x86-64 baseline (any CPU). See isa.h.
#include "cpu/isa_prelude.h"

#define FR_ISA base
#define FR_ISA_AVX2 0
#include "cpu/isa_kernels.inc"
