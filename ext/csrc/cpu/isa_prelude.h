// Every library header the ISA builds of the kernels use, included BEFORE the
// `#pragma GCC target` region of kernels_<isa>.cpp: inline and template code of
// the standard library and ATen is then compiled for the baseline in every
// translation unit (a linker may keep any one copy of such code), and only
// our own internal-linkage kernel code gets the wider instruction set.
#pragma once

#include <ATen/Parallel.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/attention_plan.h"
#include "cpu/isa.h"
