# cython: language_level=3
"""What this CPU (and OS) can run, asked the way the compiled code is built.

libgcc's ``__builtin_cpu_supports`` checks CPUID and the OS's saved vector
state (xgetbv), the same test the attention extension uses for its dispatch.
Compiled for the x86-64 baseline, so it loads everywhere.
"""

cdef extern from *:
    """
    static int fr_cpu_has(int level) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        if (level == 1) return avx2;
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512vl");
    #else
        (void)level;
        return 0;
    #endif
    }
    """
    int fr_cpu_has(int level) nogil


def has_avx2_fma():
    """True when the CPU and OS run AVX2 and FMA code (x86-64-v3 core)."""
    return bool(fr_cpu_has(1))


def has_avx512():
    """True when the CPU and OS run AVX-512 F/CD/BW/DQ/VL (x86-64-v4 core)."""
    return bool(fr_cpu_has(2))
