# cython: language_level=3
# distutils: extra_compile_args = -fno-math-errno -fno-trapping-math -ffp-contract=off --param=max-inline-insns-single=400 --param=large-function-growth=400
"""The fused feature engine: one pass over the bars, every feature per bar.

The inline-limit parameters in the distutils line let GCC inline the per-bar
rolling steps into every op loop (otherwise it stops at its growth limits and
the rolling state lives in memory; ~12% on the default set). They are GCC
options: a build with another compiler may have to drop them.

Compiled with -ffp-contract=off: the compiler may otherwise fuse a*b + c
into one FMA in one inlined copy of a helper and not in another, and the same
bar would round differently in a batch chunk and in a one-bar stream step.
FMAs are written out where wanted (``madd``, ``ta_ema_step``).

``compute_features`` and ``FeatureStream`` both drive the same ``eng_chunk``
on the same state (the stream with chunks of one bar), and every value is a
per-bar recursion that does not depend on how bars are grouped into chunks; so
the streaming row for a bar is bit-for-bit the batch row, and row t only ever
depends on bars <= t (causality by construction).

Within a chunk each op runs its own loop over the chunk's bars (the chunk is
small enough to stay in cache, so this is still one pass over the data, with
the dispatch cost paid per chunk, not per bar). Windows read trailing values
from power-of-two rings, so a bar costs O(features) (amortised: rolling sums
are recomputed exactly once per window).
A bad bar (see ``bar_flags``) yields a NaN row and restarts every feature's
warm-up, so features are always computed from the bars since the last bad bar.
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport sqrt, log
from libc.stdlib cimport malloc, calloc, free

from fastrader.features._common cimport (
    NAN, Roll, roll_init, roll_reset, roll_push1, roll_push2, roll_step1, roll_step2, roll_mean,
    roll_var_pop, roll_var_sample, Smooth, ema_init, wilder_init, smooth_reset,
    smooth_push, ema_ta_push, ta_ema_step, madd, true_range,
)

cnp.import_array()

# feature kinds (spec.py maps names to these)
cdef enum:
    K_LOGRET = 1
    K_VOL = 2
    K_SMA = 3
    K_EMA = 4
    K_CLOSE_SMA = 5
    K_CLOSE_EMA = 6
    K_RSI = 7
    K_ATR = 8
    K_ATR_PCT = 9
    K_MACD = 10
    K_MACD_NORM = 11
    K_BBANDS = 12
    K_BB_PCTB = 13
    K_BB_WIDTH = 14
    K_STDDEV = 15
    K_VOLUME_Z = 16
    K_VWAP = 17
    K_VWAP_DEV = 18
    K_HL_RANGE = 19
    K_INTRABAR = 20

KINDS = {
    "logret": K_LOGRET, "volatility": K_VOL, "sma": K_SMA, "ema": K_EMA,
    "close_sma": K_CLOSE_SMA, "close_ema": K_CLOSE_EMA, "rsi": K_RSI, "atr": K_ATR,
    "atr_pct": K_ATR_PCT, "macd": K_MACD, "macd_norm": K_MACD_NORM, "bbands": K_BBANDS,
    "bb_pctb": K_BB_PCTB, "bb_width": K_BB_WIDTH, "stddev": K_STDDEV,
    "volume_z": K_VOLUME_Z, "vwap": K_VWAP, "vwap_dev": K_VWAP_DEV,
    "hl_range": K_HL_RANGE, "intrabar": K_INTRABAR,
}

# bar flags (validate.py documents them)
cdef enum:
    F_NONFINITE = 1
    F_NONPOSITIVE = 2
    F_INCONSISTENT = 4
    F_NEG_VOLUME = 8
    F_ZERO_VOLUME = 16
    F_BAD = 15

FLAGS = {"nonfinite": F_NONFINITE, "nonpositive_price": F_NONPOSITIVE,
         "inconsistent": F_INCONSISTENT, "negative_volume": F_NEG_VOLUME,
         "zero_volume": F_ZERO_VOLUME, "bad": F_BAD}


cdef extern from *:
    """
    /* Flag bytes of n bars (bits as in FLAGS). Every test is evaluated for every
       bar (comparisons with NaN are simply false) and combined with bitwise
       ops, so the loop has no branches and the compiler can vectorise it
       (given -fno-trapping-math above, which changes no computed value). */
    static void fastrader_bar_flags(const double* __restrict o, const double* __restrict h,
                                    const double* __restrict l, const double* __restrict c,
                                    const double* __restrict v, unsigned char* __restrict f, long n) {
        for (long i = 0; i < n; i++) {
            double oo = o[i], hh = h[i], ll = l[i], cc = c[i], vv = v[i];
            int fin = (oo - oo == 0.0) & (hh - hh == 0.0) & (ll - ll == 0.0)
                    & (cc - cc == 0.0) & (vv - vv == 0.0);
            int nonpos = (oo <= 0.0) | (hh <= 0.0) | (ll <= 0.0) | (cc <= 0.0);
            int incons = (hh < ll) | (oo > hh) | (oo < ll) | (cc > hh) | (cc < ll);
            int r = (nonpos << 1) | (incons << 2) | ((vv < 0.0) << 3) | ((vv == 0.0) << 4);
            f[i] = (unsigned char)(fin ? r : 1);
        }
    }
    /* Copy n doubles to memory that is written once and not read back soon
       (the caller's output): non-temporal stores where SSE2 allows, so the
       destination's cache lines are not fetched first. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static void fastrader_stream_copy(double* dst, const double* src, long n) {
        long i = 0;
        if (((unsigned long)dst & 15) != 0 && n > 0) { dst[0] = src[0]; i = 1; }
        for (; i + 1 < n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
        if (i < n) dst[i] = src[i];
        _mm_sfence();
    }
    #else
    static void fastrader_stream_copy(double* dst, const double* src, long n) {
        for (long i = 0; i < n; i++) dst[i] = src[i];
    }
    #endif
    /* Element-wise finishing formulas over a chunk (contiguous inputs, NaN
       marks "not valid yet"): plain loops, so sqrt/div go packed. Written
       result to y; the caller scatters y into the rows. */
    static void fr_recip(double* __restrict y, const double* __restrict a, long n) {
        for (long i = 0; i < n; i++) y[i] = 1.0 / a[i];
    }
    static void fr_sqrt(double* __restrict y, const double* __restrict a, long n) {
        for (long i = 0; i < n; i++) y[i] = __builtin_sqrt(a[i]);
    }
    static void fr_rel(double* __restrict y, const double* __restrict c, const double* __restrict a, long n) {
        for (long i = 0; i < n; i++) y[i] = c[i] / a[i] - 1.0;
    }
    static void fr_rsi(double* __restrict y, const double* __restrict g, const double* __restrict l, long n) {
        for (long i = 0; i < n; i++) {
            double s = g[i] + l[i];
            double r = s > 0.0 ? 100.0 * (g[i] / s) : 50.0;
            y[i] = g[i] == g[i] ? r : g[i];
        }
    }
    static void fr_z(double* __restrict y, const double* __restrict d, const double* __restrict var, long n) {
        for (long i = 0; i < n; i++) {
            double sd = __builtin_sqrt(var[i]);
            y[i] = sd > 0.0 ? d[i] / sd : __builtin_nan("");
        }
    }
    static void fr_ratio_pos(double* __restrict y, const double* __restrict a, const double* __restrict b, long n) {
        /* a / b where b > 0, else NaN */
        for (long i = 0; i < n; i++) y[i] = b[i] > 0.0 ? a[i] / b[i] : __builtin_nan("");
    }
    static void fr_vwap_dev(double* __restrict y, const double* __restrict c, const double* __restrict pv,
                            const double* __restrict v, long n) {
        for (long i = 0; i < n; i++) y[i] = v[i] > 0.0 ? c[i] * v[i] / pv[i] - 1.0 : __builtin_nan("");
    }
    static void fr_intrabar(double* __restrict y, const double* __restrict h, const double* __restrict l,
                            const double* __restrict c, long n) {
        for (long i = 0; i < n; i++) y[i] = h[i] > l[i] ? (c[i] - l[i]) / (h[i] - l[i]) : 0.5;
    }
    static void fr_bb(double* __restrict y, int kind, const double* __restrict c, const double* __restrict mean,
                      const double* __restrict var, double k, long n) {
        /* kind 0: %b, 1: bandwidth, 2: std * k */
        for (long i = 0; i < n; i++) {
            double sd = __builtin_sqrt(var[i]);
            double w = k * sd, up = mean[i] + w, lo = mean[i] - w;
            double r;
            if (kind == 0) r = up > lo ? (c[i] - lo) / (up - lo) : __builtin_nan("");
            else if (kind == 1) r = (up - lo) / mean[i];
            else r = sd * k;
            y[i] = r;
        }
    }
    """
    void fr_recip(double* y, const double* a, long n) noexcept nogil
    void fr_sqrt(double* y, const double* a, long n) noexcept nogil
    void fr_rel(double* y, const double* c, const double* a, long n) noexcept nogil
    void fr_rsi(double* y, const double* g, const double* l, long n) noexcept nogil
    void fr_z(double* y, const double* d, const double* var, long n) noexcept nogil
    void fr_ratio_pos(double* y, const double* a, const double* b, long n) noexcept nogil
    void fr_vwap_dev(double* y, const double* c, const double* pv, const double* v, long n) noexcept nogil
    void fr_intrabar(double* y, const double* h, const double* l, const double* c, long n) noexcept nogil
    void fr_bb(double* y, int kind, const double* c, const double* mean, const double* var, double k, long n) noexcept nogil
    void stream_copy "fastrader_stream_copy" (double* dst, const double* src, long n) noexcept nogil
    void flags_block "fastrader_bar_flags" (const double* o, const double* h, const double* l,
                                            const double* c, const double* v, unsigned char* f,
                                            long n) noexcept nogil


cdef inline int bar_flags(double o, double h, double l, double c, double v) noexcept nogil:
    cdef unsigned char f
    flags_block(&o, &h, &l, &c, &v, &f, 1)
    return f


cdef struct Op:
    int kind
    int col
    long n1
    long n2
    long n3
    double p1
    Roll r1
    Roll r2
    Smooth m1
    Smooth m2
    Smooth m3
    int src       # Bollinger family: index of an earlier op on the same window, or -1
    double* mean  # Bollinger family: per-chunk mean and variance (NaN while warming up)
    double* var


cdef struct Eng:
    long t        # bars stepped so far (absolute index of the next bar)
    long run      # consecutive good bars ending at the last one
    long mask     # ring capacity - 1
    int nops
    int ncols
    long norm_w   # rolling z-score window, 0 for none
    bint need_r   # which derived series some op reads
    bint need_pv
    bint need_ic  # 1 / close, for the features scaled by the close
    Op* ops
    double* C     # rings: close, volume, typical price * volume, 1-bar log return
    double* V
    double* PV
    double* R
    double* X     # chunk scratch rows (CH x ncols): ops write here, then one copy out
    double* A     # per-op chunk scratch (3 x CH): recursion state, then finished values
    double* B
    double* Y
    Roll* nr      # per-column rolling moments of the normalisation
    double* NB    # per-column rings of raw feature values (ncols x capacity)


# Bars are processed in chunks of at most CH; the rings hold the largest
# window plus one chunk, so that every op can run over a whole chunk on its own.
cdef enum:
    CH = 128


cdef void eng_reset_ops(Eng* E) noexcept nogil:
    cdef int k
    cdef Op* op
    for k in range(E.nops):
        op = &E.ops[k]
        roll_reset(&op.r1)
        roll_reset(&op.r2)
        smooth_reset(&op.m1)
        smooth_reset(&op.m2)
        smooth_reset(&op.m3)


cdef inline void scatter(double* o, long F, const double* y, long m) noexcept nogil:
    cdef long k
    for k in range(m):
        o[k * F] = y[k]


cdef void op_logret1(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef double* o = out + op.col
    # the 1-bar log return is the R ring itself
    for k in range(m):
        o[k * F] = E.R[(t0 + k) & msk]


cdef void op_logret(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef long t
    cdef double* o = out + op.col
    cdef Roll r1
    cdef long n1 = op.n1
    r1 = op.r1
    # log(c_t / c_{t-n}) as the window sum of the n 1-bar log returns: a
    # rolling sum instead of a second log per bar (the difference from
    # the direct log is a few 1e-16, far below the returns' own size)
    if r1.run >= n1:
        # steady state (see K_VOL)
        for k in range(m):
            t = t0 + k
            roll_step1(&r1, E.R, msk, t, E.R[t & msk])
            o[k * F] = r1.s1
        r1.run += m
    else:
        for k in range(m):
            t = t0 + k
            o[k * F] = r1.s1 if roll_push1(&r1, E.R, msk, t, E.R[t & msk]) else NAN
    op.r1 = r1


cdef void op_vol(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef long t
    cdef double* o = out + op.col
    cdef double* A = E.A
    cdef double* Y = E.Y
    cdef Roll r1
    cdef long n1 = op.n1
    r1 = op.r1
    if r1.run >= n1:
        # steady state: the window is full and, the bars being good, every
        # value of this segment is finite (R is NaN only on a run's first bar)
        for k in range(m):
            t = t0 + k
            roll_step2(&r1, E.R, msk, t, E.R[t & msk])
            A[k] = roll_var_sample(&r1)
        r1.run += m
    else:
        for k in range(m):
            t = t0 + k
            A[k] = roll_var_sample(&r1) if roll_push2(&r1, E.R, msk, t, E.R[t & msk]) else NAN
    fr_sqrt(Y, A, m)
    scatter(o, F, Y, m)
    op.r1 = r1


cdef void op_sma(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef int kind = op.kind
    cdef double* o = out + op.col
    cdef double* A = E.A
    cdef double* Y = E.Y
    cdef Roll r1
    cdef long n1 = op.n1
    r1 = op.r1
    if r1.run >= n1:
        for k in range(m):
            roll_step1(&r1, E.C, msk, t0 + k, c[k])
            A[k] = r1.s1 * r1.inv_n
        r1.run += m
    else:
        for k in range(m):
            A[k] = r1.s1 * r1.inv_n if roll_push1(&r1, E.C, msk, t0 + k, c[k]) else NAN
    if kind == K_SMA:
        scatter(o, F, A, m)
    else:
        fr_rel(Y, c, A, m)
        scatter(o, F, Y, m)
    op.r1 = r1


cdef void op_ema(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long k
    cdef int kind = op.kind
    cdef double* o = out + op.col
    cdef double* A = E.A
    cdef double* Y = E.Y
    cdef Smooth m1
    m1 = op.m1
    if m1.cnt >= m1.n:
        # seeded: smooth_push's steady branch, without its test
        for k in range(m):
            m1.avg = madd(m1.avg, m1.a, c[k] * m1.b)
            A[k] = m1.avg
    else:
        for k in range(m):
            A[k] = m1.avg if smooth_push(&m1, c[k]) else NAN
    if kind == K_EMA:
        scatter(o, F, A, m)
    else:
        fr_rel(Y, c, A, m)
        scatter(o, F, Y, m)
    op.m1 = m1


cdef void op_rsi(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef long t
    cdef double x
    cdef double d
    cdef double* o = out + op.col
    cdef double* A = E.A
    cdef double* B = E.B
    cdef double* Y = E.Y
    cdef bint ok
    cdef Smooth m1
    cdef Smooth m2
    m1 = op.m1
    m2 = op.m2
    if m1.cnt >= m1.n:
        # seeded (so a previous close exists): the steady branch, no tests
        for k in range(m):
            t = t0 + k
            d = c[k] - E.C[(t - 1) & msk]
            x = d if d > 0.0 else 0.0
            m1.avg = madd(m1.avg, m1.a, x * m1.b)
            m2.avg = madd(m2.avg, m2.a, (x - d) * m2.b)
            A[k] = m1.avg
            B[k] = m2.avg
    else:
        for k in range(m):
            t = t0 + k
            ok = False
            if s0 + k >= 1:
                d = c[k] - E.C[(t - 1) & msk]
                # loss = gain - d == max(-d, 0) exactly, and branch-free
                x = d if d > 0.0 else 0.0
                ok = smooth_push(&m1, x)
                smooth_push(&m2, x - d)
            A[k] = m1.avg if ok else NAN
            B[k] = m2.avg if ok else NAN
    fr_rsi(Y, A, B, m)
    scatter(o, F, Y, m)
    op.m1 = m1
    op.m2 = m2


cdef void op_atr(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef long t
    cdef int kind = op.kind
    cdef double x
    cdef double* o = out + op.col
    cdef Smooth m1
    m1 = op.m1
    if m1.cnt >= m1.n:
        for k in range(m):
            t = t0 + k
            m1.avg = madd(m1.avg, m1.a, true_range(h[k], l[k], E.C[(t - 1) & msk]) * m1.b)
            o[k * F] = m1.avg if kind == K_ATR else m1.avg * ic[k]
    else:
        for k in range(m):
            t = t0 + k
            if s0 + k >= 1 and smooth_push(&m1, true_range(h[k], l[k], E.C[(t - 1) & msk])):
                x = m1.avg
                o[k * F] = x if kind == K_ATR else x * ic[k]
            else:
                o[k * F] = NAN
    op.m1 = m1


cdef void op_macd(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long k
    cdef int kind = op.kind
    cdef double x
    cdef double scale
    cdef double* o = out + op.col
    cdef Smooth m1
    cdef Smooth m2
    cdef Smooth m3
    cdef long n1 = op.n1
    cdef long n2 = op.n2
    m1 = op.m1
    m2 = op.m2
    m3 = op.m3
    # TA-Lib alignment, see _kernels._macd
    if m3.cnt >= m3.n:
        # all three EMAs seeded: ema_ta_push's steady branch, without tests
        for k in range(m):
            scale = 1.0 if kind == K_MACD else ic[k]
            m1.avg = ta_ema_step(m1.avg, c[k], m1.b)
            m2.avg = ta_ema_step(m2.avg, c[k], m2.b)
            x = m1.avg - m2.avg
            m3.avg = ta_ema_step(m3.avg, x, m3.b)
            o[k * F] = x * scale
            o[k * F + 1] = m3.avg * scale
            o[k * F + 2] = (x - m3.avg) * scale
    else:
        for k in range(m):
            if s0 + k >= n2 - n1:
                ema_ta_push(&m1, c[k])
            scale = 1.0 if kind == K_MACD else ic[k]
            if ema_ta_push(&m2, c[k]):
                x = m1.avg - m2.avg
                o[k * F] = x * scale
                if ema_ta_push(&m3, x):
                    o[k * F + 1] = m3.avg * scale
                    o[k * F + 2] = (x - m3.avg) * scale
                else:
                    o[k * F + 1] = NAN
                    o[k * F + 2] = NAN
            else:
                o[k * F] = NAN
                o[k * F + 1] = NAN
                o[k * F + 2] = NAN
    op.m1 = m1
    op.m2 = m2
    op.m3 = m3


cdef void op_bollinger(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef int kind = op.kind
    cdef double x
    cdef double w
    cdef double* o = out + op.col
    cdef double* Y = E.Y
    cdef double* mean
    cdef double* var
    cdef Roll r1
    cdef long n1 = op.n1
    cdef double p1 = op.p1
    r1 = op.r1
    # mean and population variance of the window: computed by the first op
    # of the family on this window, reused by the others (same numbers)
    if op.src < 0 and r1.run >= n1:
        # steady state (see K_VOL)
        for k in range(m):
            roll_step2(&r1, E.C, msk, t0 + k, c[k])
            op.mean[k] = roll_mean(&r1)
            op.var[k] = roll_var_pop(&r1)
        r1.run += m
    elif op.src < 0:
        for k in range(m):
            if roll_push2(&r1, E.C, msk, t0 + k, c[k]):
                op.mean[k] = roll_mean(&r1)
                op.var[k] = roll_var_pop(&r1)
            else:
                op.mean[k] = NAN
                op.var[k] = NAN
    if op.src < 0:
        mean = op.mean
        var = op.var
    else:
        mean = E.ops[op.src].mean
        var = E.ops[op.src].var
    if kind == K_BBANDS:
        for k in range(m):
            x = mean[k]
            w = p1 * sqrt(var[k])
            o[k * F] = x + w
            o[k * F + 1] = x
            o[k * F + 2] = x - w
    else:
        # %b: NaN when the band is flat (no width); stddev: std * nbdev
        fr_bb(Y, 0 if kind == K_BB_PCTB else (1 if kind == K_BB_WIDTH else 2), c, mean, var, p1, m)
        scatter(o, F, Y, m)
    op.r1 = r1


cdef void op_volume_z_steady(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef double* o = out + op.col
    cdef double* A = E.A
    cdef double* B = E.B
    cdef double* Y = E.Y
    cdef Roll r1
    r1 = op.r1
    for k in range(m):
        roll_step2(&r1, E.V, msk, t0 + k, v[k])
        A[k] = v[k] - roll_mean(&r1)
        B[k] = roll_var_sample(&r1)
    r1.run += m
    fr_z(Y, A, B, m)
    scatter(o, F, Y, m)
    op.r1 = r1


cdef void op_volume_z(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef double* o = out + op.col
    cdef double* A = E.A
    cdef double* B = E.B
    cdef double* Y = E.Y
    cdef Roll r1
    r1 = op.r1
    for k in range(m):
        if roll_push2(&r1, E.V, msk, t0 + k, v[k]):
            A[k] = v[k] - roll_mean(&r1)
            B[k] = roll_var_sample(&r1)
        else:
            A[k] = NAN
            B[k] = NAN
    # constant volume over the window (e.g. all zero): undefined, NaN
    fr_z(Y, A, B, m)
    scatter(o, F, Y, m)
    op.r1 = r1


cdef void op_vwap(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long msk = E.mask
    cdef long k
    cdef long t
    cdef int kind = op.kind
    cdef double up
    cdef double* o = out + op.col
    cdef double* A = E.A
    cdef double* B = E.B
    cdef double* Y = E.Y
    cdef bint ok
    cdef Roll r1
    cdef Roll r2
    cdef long n1 = op.n1
    r1 = op.r1
    r2 = op.r2
    if r1.run >= n1:
        # steady state (see K_VOL)
        for k in range(m):
            t = t0 + k
            roll_step1(&r1, E.PV, msk, t, E.PV[t & msk])
            roll_step1(&r2, E.V, msk, t, v[k])
            A[k] = r1.s1
            B[k] = r2.s1
        r1.run += m
        r2.run += m
    else:
        for k in range(m):
            t = t0 + k
            ok = roll_push1(&r1, E.PV, msk, t, E.PV[t & msk])
            roll_push1(&r2, E.V, msk, t, v[k])
            A[k] = r1.s1
            # NaN (not > 0) while warming up; 0 when no volume traded in the window
            B[k] = r2.s1 if ok else NAN
    if kind == K_VWAP:
        fr_ratio_pos(Y, A, B, m)
    else:
        fr_vwap_dev(Y, c, A, B, m)
    scatter(o, F, Y, m)
    op.r1 = r1
    op.r2 = r2


cdef void op_hl_range(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef long k
    cdef double* o = out + op.col
    for k in range(m):
        o[k * F] = (h[k] - l[k]) * ic[k]


cdef void op_intrabar(Eng* E, Op* op, long t0, long s0, long m, const double* h,
        const double* l, const double* c, const double* v, const double* ic,
        double* out) noexcept nogil:
    cdef long F = E.ncols
    cdef double* o = out + op.col
    cdef double* Y = E.Y
    # a bar with no range: the close is its only price, call it the middle
    fr_intrabar(Y, h, l, c, m)
    scatter(o, F, Y, m)


cdef void op_segment(Eng* E, Op* op, long t0, long s0, long m, const double* h,
                     const double* l, const double* c, const double* v,
                     const double* ic, double* out) noexcept nogil:
    """One op over m good bars: absolute indices t0.., s0 good bars before the first.

    Inputs are the segment's own arrays (c[k] is bar t0+k); trailing values
    come from the rings. Row k of the output starts at out + k * ncols.
    Recursions first leave their state per bar in the scratch arrays A, B
    (NaN while not valid); a packed element-wise pass then finishes the
    values (divisions and square roots) into Y, which is scattered into the
    rows.
    """
    # one small function per kind: in one big function the compiler stops
    # inlining the per-bar helpers, and the rolling state leaves registers
    cdef int kind = op.kind
    cdef long n1 = op.n1
    if kind == K_LOGRET and n1 == 1:
        op_logret1(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_LOGRET:
        op_logret(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_VOL:
        op_vol(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_SMA or kind == K_CLOSE_SMA:
        op_sma(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_EMA or kind == K_CLOSE_EMA:
        op_ema(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_RSI:
        op_rsi(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_ATR or kind == K_ATR_PCT:
        op_atr(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_MACD or kind == K_MACD_NORM:
        op_macd(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_BBANDS or kind == K_BB_PCTB or kind == K_BB_WIDTH or kind == K_STDDEV:
        op_bollinger(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_VOLUME_Z and op.r1.run >= n1:
        op_volume_z_steady(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_VOLUME_Z:
        op_volume_z(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_VWAP or kind == K_VWAP_DEV:
        op_vwap(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_HL_RANGE:
        op_hl_range(E, op, t0, s0, m, h, l, c, v, ic, out)
    elif kind == K_INTRABAR:
        op_intrabar(E, op, t0, s0, m, h, l, c, v, ic, out)


cdef void eng_segment(Eng* E, const double* h, const double* l, const double* c,
                      const double* v, long m, double* out) noexcept nogil:
    """m (<= CH) consecutive good bars."""
    cdef long t0 = E.t, s0 = E.run, msk = E.mask, k, t
    cdef double ic[CH]
    cdef int j
    for k in range(m):
        t = t0 + k
        E.C[t & msk] = c[k]
        E.V[t & msk] = v[k]
    if E.need_ic:
        fr_recip(ic, c, m)
    if E.need_pv:
        for k in range(m):
            E.PV[(t0 + k) & msk] = (h[k] + l[k] + c[k]) * (1.0 / 3.0) * v[k]
    if E.need_r:
        for k in range(m):
            t = t0 + k
            E.R[t & msk] = log(c[k] / E.C[(t - 1) & msk]) if s0 + k >= 1 else NAN
    for j in range(E.nops):
        op_segment(E, &E.ops[j], t0, s0, m, h, l, c, v, ic, out)
    E.t = t0 + m
    E.run = s0 + m


cdef void eng_bad(Eng* E, double* row) noexcept nogil:
    cdef long j
    eng_reset_ops(E)
    E.run = 0
    for j in range(E.ncols):
        row[j] = NAN
    E.t += 1


cdef void eng_normalize(Eng* E, long t0, long m, double* out) noexcept nogil:
    """Rolling z-scores of the rows of bars t0 .. t0+m-1, in place."""
    cdef long F = E.ncols, cap = E.mask + 1, msk = E.mask, k, t, j
    cdef double x, sd
    cdef double* ring
    for j in range(F):
        ring = E.NB + j * cap
        for k in range(m):
            t = t0 + k
            x = out[k * F + j]
            ring[t & msk] = x
            if roll_push2(&E.nr[j], ring, msk, t, x):
                sd = sqrt(roll_var_sample(&E.nr[j]))
                out[k * F + j] = (x - roll_mean(&E.nr[j])) / sd if sd > 0.0 else NAN
            else:
                out[k * F + j] = NAN


cdef void eng_chunk(Eng* E, const double* h, const double* l, const double* c,
                    const double* v, const unsigned char* flags, long m,
                    double* dst) noexcept nogil:
    """m (<= CH) bars with their flags: good stretches go to eng_segment.

    Rows are built in the cache-resident scratch and then streamed to dst:
    the ops' column-wise writes then never miss, and dst is written once,
    sequentially.
    """
    cdef long i = 0, j, F = E.ncols, t0 = E.t
    cdef double* out = E.X
    while i < m:
        if flags[i] & F_BAD:
            eng_bad(E, out + i * F)
            i += 1
            continue
        j = i + 1
        while j < m and not (flags[j] & F_BAD):
            j += 1
        eng_segment(E, h + i, l + i, c + i, v + i, j - i, out + i * F)
        i = j
    if E.norm_w:
        eng_normalize(E, t0, m, out)
    if m == 1:
        for j in range(F):
            dst[j] = out[j]
    else:
        stream_copy(dst, out, m * F)


cdef long eng_run(Eng* E, const double* o, const double* h, const double* l,
                  const double* c, const double* v, long N, double* out,
                  unsigned char* flags_out, bint stop_on_bad) noexcept nogil:
    """All N bars, chunk by chunk; returns the index of the first bad bar when
    stop_on_bad (nothing from its chunk on is computed), else -1."""
    cdef long t = 0, e, i
    cdef long F = E.ncols
    cdef unsigned char fl[CH]
    cdef unsigned char anybad
    while t < N:
        e = t + CH if t + CH < N else N
        flags_block(o + t, h + t, l + t, c + t, v + t, fl, e - t)
        anybad = 0
        for i in range(e - t):
            anybad |= fl[i]
        if flags_out != NULL:
            for i in range(t, e):
                flags_out[i] = fl[i - t]
        if stop_on_bad and (anybad & F_BAD):
            for i in range(t, e):
                if fl[i - t] & F_BAD:
                    return i
        eng_chunk(E, h + t, l + t, c + t, v + t, fl, e - t, out + t * F)
        t = e
    return -1


cdef class Engine:
    """Owns one engine state; built from the op program that spec.py compiles."""
    cdef Eng E
    cdef readonly int ncols

    def __cinit__(self, program, int ncols, long norm_window=0, long capacity=2):
        cdef long cap = 2
        cdef int k
        self.E.ops = NULL
        self.E.C = NULL
        self.E.V = NULL
        self.E.PV = NULL
        self.E.R = NULL
        self.E.X = NULL
        self.E.A = NULL
        self.E.nr = NULL
        self.E.NB = NULL
        while cap < capacity + CH:
            cap *= 2
        self.E.t = 0
        self.E.run = 0
        self.E.mask = cap - 1
        self.E.nops = len(program)
        self.E.ncols = ncols
        self.ncols = ncols
        self.E.norm_w = norm_window
        self.E.ops = <Op*>calloc(max(1, self.E.nops), sizeof(Op))
        self.E.C = <double*>calloc(cap, sizeof(double))
        self.E.V = <double*>calloc(cap, sizeof(double))
        self.E.PV = <double*>calloc(cap, sizeof(double))
        self.E.R = <double*>calloc(cap, sizeof(double))
        self.E.X = <double*>calloc(CH * max(1, ncols), sizeof(double))
        self.E.A = <double*>calloc(3 * CH, sizeof(double))
        self.E.B = self.E.A + CH if self.E.A != NULL else NULL
        self.E.Y = self.E.A + 2 * CH if self.E.A != NULL else NULL
        if norm_window:
            self.E.nr = <Roll*>calloc(max(1, ncols), sizeof(Roll))
            self.E.NB = <double*>calloc(max(1, ncols) * cap, sizeof(double))
        if (self.E.ops == NULL or self.E.C == NULL or self.E.V == NULL or self.E.PV == NULL
                or self.E.R == NULL or self.E.X == NULL or self.E.A == NULL or (norm_window and (self.E.nr == NULL or self.E.NB == NULL))):
            raise MemoryError("fastrader.features: cannot allocate the feature engine")
        self.E.need_r = any(p[0] in (K_VOL, K_LOGRET) for p in program)
        self.E.need_pv = any(p[0] in (K_VWAP, K_VWAP_DEV) for p in program)
        self.E.need_ic = any(p[0] in (K_ATR_PCT, K_MACD_NORM, K_HL_RANGE) for p in program)
        for k in range(ncols if norm_window else 0):
            roll_init(&self.E.nr[k], norm_window)
        bb_first = {}
        for k, (kind, col, n1, n2, n3, p1) in enumerate(program):
            op = &self.E.ops[k]
            op.kind = kind
            op.col = col
            op.n1 = n1
            op.n2 = n2
            op.n3 = n3
            op.p1 = p1
            roll_init(&op.r1, n1)
            roll_init(&op.r2, n1)
            op.src = -1
            op.mean = NULL
            op.var = NULL
            if kind in (K_BBANDS, K_BB_PCTB, K_BB_WIDTH, K_STDDEV):
                op.src = bb_first.setdefault(n1, k)
                if op.src == k:
                    op.src = -1
                    op.mean = <double*>malloc(2 * CH * sizeof(double))
                    if op.mean == NULL:
                        raise MemoryError("fastrader.features: cannot allocate the feature engine")
                    op.var = op.mean + CH
            if kind == K_EMA or kind == K_CLOSE_EMA:
                ema_init(&op.m1, n1)
            elif kind in (K_RSI, K_ATR, K_ATR_PCT):
                wilder_init(&op.m1, n1)
                wilder_init(&op.m2, n1)
            elif kind == K_MACD or kind == K_MACD_NORM:
                ema_init(&op.m1, n1)
                ema_init(&op.m2, n2)
                ema_init(&op.m3, n3)
            else:
                ema_init(&op.m1, 1)
                ema_init(&op.m2, 1)
            if kind not in (K_MACD, K_MACD_NORM):
                ema_init(&op.m3, 1)

    def __dealloc__(self):
        cdef int k
        if self.E.ops != NULL:
            for k in range(self.E.nops):
                free(self.E.ops[k].mean)
        free(self.E.ops)
        free(self.E.C)
        free(self.E.V)
        free(self.E.PV)
        free(self.E.R)
        free(self.E.X)
        free(self.E.A)
        free(self.E.nr)
        free(self.E.NB)

    @property
    def bars(self):
        """Bars stepped so far."""
        return self.E.t

    def run(self, o, h, l, c, v, bint stop_on_bad, want_flags, out=None):
        """Batch: returns (X, flags or None, index of the first bad bar or -1).

        With stop_on_bad the rows from the first bad bar on are left unwritten.
        ``out``: a checked (N, ncols) C-contiguous float64 array to fill.
        """
        cdef const double[::1] ov = o, hv = h, lv = l, cv = c, vv = v
        cdef long N = cv.shape[0]
        if out is None:
            out = np.empty((N, self.E.ncols))
        flags = np.empty(N, dtype=np.uint8) if want_flags else None
        cdef double[:, ::1] xv = out
        cdef unsigned char[::1] fv
        cdef unsigned char* fp = NULL
        cdef long bad = -1
        if want_flags and N:
            fv = flags
            fp = &fv[0]
        if N and self.E.ncols:
            with nogil:
                bad = eng_run(&self.E, &ov[0], &hv[0], &lv[0], &cv[0], &vv[0], N, &xv[0, 0],
                              fp, stop_on_bad)
        return out, flags, bad

    def update(self, double o, double h, double l, double c, double v, bint stop_on_bad):
        """Stream: (row, flags); with stop_on_bad a bad bar returns (None, flags), state untouched."""
        cdef int f = bar_flags(o, h, l, c, v)
        if stop_on_bad and (f & F_BAD):
            return None, f
        row = np.empty(self.E.ncols)
        cdef double[::1] rv = row
        cdef unsigned char fl = <unsigned char>f
        if self.E.ncols:
            eng_chunk(&self.E, &h, &l, &c, &v, &fl, 1, &rv[0])
        return row, f


def flags_of(o, h, l, c, v):
    """Per-bar flags (uint8) of OHLCV arrays, see validate.py."""
    cdef const double[::1] ov = o, hv = h, lv = l, cv = c, vv = v
    cdef long N = cv.shape[0], t
    flags = np.empty(N, dtype=np.uint8)
    cdef unsigned char[::1] fv = flags
    if N:
        with nogil:
            flags_block(&ov[0], &hv[0], &lv[0], &cv[0], &vv[0], &fv[0], N)
    return flags
