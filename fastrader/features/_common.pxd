# cython: language_level=3
"""Inline numeric building blocks shared by the standalone kernels and the
fused engine, so that both compute every value with the same arithmetic.

Rolling sums: a plain running sum (add the new value, subtract the one that
left the window) drifts, and sums of squares of price levels cancel
catastrophically in E[x^2] - E[x]^2. Here every window sum is recomputed
exactly once per window length, and second moments are taken of deviations
from a shift K (the newest value at the last recompute), which is of the
order of the window's spread rather than of the price level. The drift is then
bounded by one window of updates and the cancellation by the spread/level
ratio, which keeps results within ~1e-14 of a two-pass reference.
"""

cdef extern from "math.h" nogil:
    double NAN
    double fabs(double)

cdef extern from *:
    """
    /* One step of TA-Lib's EMA, avg + (x - avg) * k, rounded as TA-Lib rounds it.
       The TA-Lib library shipped with the talib wheel selects at load time a
       build that fuses this multiply-add (FMA) on CPUs that have FMA, and a
       plain one elsewhere; -march=native defines __FMA__ on exactly those
       CPUs, so both sides round the same way. The MACD line is a small
       difference of two large EMAs, where one ulp of price level is a visible
       relative error, hence the care. */
    static inline double fastrader_ta_ema(double avg, double x, double k) {
    #if defined(__FMA__) || defined(__FP_FAST_FMA)
        return __builtin_fma(x - avg, k, avg);
    #else
        volatile double p = (x - avg) * k;   /* keep the product unfused */
        return p + avg;
    #endif
    }
    """
    double ta_ema_step "fastrader_ta_ema" (double avg, double x, double k) noexcept nogil

cdef extern from *:
    """
    /* a*b + c with the product fused when the CPU has FMA. Written so that
       a recursion avg = madd(avg, w, x*v) has one FMA on its dependency chain
       (left to itself the compiler may fuse the other product and leave a
       multiply plus an FMA on the chain, nearly twice the latency). */
    static inline double fastrader_madd(double a, double b, double c) {
    #if defined(__FMA__) || defined(__FP_FAST_FMA)
        return __builtin_fma(a, b, c);
    #else
        return a * b + c;
    #endif
    }
    """
    double madd "fastrader_madd" (double a, double b, double c) noexcept nogil


cdef inline bint finite(double x) noexcept nogil:
    # False for NaN and +-inf, without a libm call
    return x - x == 0.0


# ---------------------------------------------------------------- rolling sums
cdef struct Roll:
    long n        # window length
    double inv_n  # 1 / n
    double inv_n1 # 1 / (n - 1)
    long run      # consecutive finite values pushed so far
    long left     # incremental updates left before the next exact recompute
    double K      # shift of the second-moment sums
    double s1     # sum of (x - K) over the window (K = 0 for roll_push1)
    double s2     # sum of (x - K)^2 over the window (roll_push2 only)
    double last   # previous value pushed
    long same     # how many of the last values equal it (exact constant-window check)


cdef inline void roll_init(Roll* r, long n) noexcept nogil:
    r.n = n
    r.inv_n = 1.0 / n
    r.inv_n1 = 1.0 / (n - 1) if n > 1 else NAN
    r.run = 0
    r.left = 0
    r.K = 0.0
    r.s1 = 0.0
    r.s2 = 0.0
    r.last = NAN
    r.same = 0


cdef inline void roll_reset(Roll* r) noexcept nogil:
    r.run = 0
    r.left = 0
    r.last = NAN
    r.same = 0


cdef inline bint roll_same(Roll* r, double x) noexcept nogil:
    # A window of n equal values (e.g. zero volume for hours) must give an
    # exact zero spread / exact sum, not the rounding residue that incremental
    # updates leave behind: downstream that decides NaN versus a number.
    # branch-free (a data-dependent branch here costs the rolling loops a lot):
    # same + 1 when x repeats the last value, else 1
    r.same = r.same * (x == r.last) + 1
    r.last = x
    return r.same >= r.n


cdef extern from *:
    """
    /* Exact restarts of the window sums, once per window length. Kept out of
       line (and returning by value, so no state's address escapes): inlined,
       their loops made the per-bar steps too big to inline at every call
       site, and a step that is not inlined keeps the rolling state in memory. */
    typedef struct { double s1, s2; } fastrader_sums;
    #if defined(__GNUC__)
    #define FASTRADER_NOINLINE __attribute__((noinline))
    #else
    #define FASTRADER_NOINLINE
    #endif
    /* sum of buf[t-n+1 .. t] (ring indices), four interleaved partial sums */
    static FASTRADER_NOINLINE double fastrader_window_sum(const double* buf, long mask, long t, long n) {
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
        long j = t - n + 1;
        for (; j + 3 <= t; j += 4) {
            a0 += buf[j & mask]; a1 += buf[(j + 1) & mask];
            a2 += buf[(j + 2) & mask]; a3 += buf[(j + 3) & mask];
        }
        for (; j <= t; j++) a0 += buf[j & mask];
        return (a0 + a1) + (a2 + a3);
    }
    /* sums of (x - K) and (x - K)^2 over buf[t-n+1 .. t], two interleaved each */
    static FASTRADER_NOINLINE fastrader_sums fastrader_window_sums2(const double* buf, long mask, long t,
                                                                  long n, double K) {
        double a0 = 0.0, a1 = 0.0, b0 = 0.0, b1 = 0.0, d, e;
        long j = t - n + 1;
        for (; j + 1 <= t; j += 2) {
            d = buf[j & mask] - K; e = buf[(j + 1) & mask] - K;
            a0 += d; b0 += d * d; a1 += e; b1 += e * e;
        }
        if (j <= t) { d = buf[j & mask] - K; a0 += d; b0 += d * d; }
        fastrader_sums r = { a0 + a1, b0 + b1 };
        return r;
    }
    """
    ctypedef struct fastrader_sums:
        double s1
        double s2
    double window_sum "fastrader_window_sum" (const double* buf, long mask, long t, long n) noexcept nogil
    fastrader_sums window_sums2_c "fastrader_window_sums2" (const double* buf, long mask, long t, long n, double K) noexcept nogil


cdef inline void window_sums2(Roll* r, const double* buf, long mask, long t, double K) noexcept nogil:
    """Exact restart of the shifted sums over buf[t-n+1 .. t] with shift K."""
    cdef fastrader_sums q = window_sums2_c(buf, mask, t, r.n, K)
    r.K = K
    r.s1 = q.s1
    r.s2 = q.s2


cdef inline void roll_step1(Roll* r, const double* buf, long mask, long t, double x) noexcept nogil:
    """Steady-state update of the window sum for a finite x once the window is full."""
    cdef long n = r.n
    if roll_same(r, x):
        if r.left == 0:
            r.left = n
        r.left -= 1
        r.s1 = x * n
        return
    if r.left == 0:
        r.s1 = window_sum(buf, mask, t, n)
        r.left = n
    else:
        r.s1 += x - buf[(t - n) & mask]
    r.left -= 1


cdef inline bint roll_push1(Roll* r, const double* buf, long mask, long t, double x) noexcept nogil:
    """Push x = buf[t & mask]; True once the last n values are finite, s1 = their sum.

    ``buf`` is a ring of capacity mask + 1 > n, or a whole array with mask = -1.
    A non-finite value restarts the window.
    """
    if not finite(x):
        roll_reset(r)
        return False
    r.run += 1
    if r.run < r.n:
        roll_same(r, x)
        return False
    if r.run == r.n:
        r.left = 0
    roll_step1(r, buf, mask, t, x)
    return True


cdef inline void roll_step2(Roll* r, const double* buf, long mask, long t, double x) noexcept nogil:
    """Steady-state update of the shifted first and second moment sums."""
    cdef long n = r.n
    cdef double d, e
    if roll_same(r, x):
        if r.left == 0:
            r.left = n
        r.left -= 1
        r.K = x
        r.s1 = 0.0
        r.s2 = 0.0
        return
    if r.left == 0:
        window_sums2(r, buf, mask, t, x)
        r.left = n
    else:
        d = x - r.K
        e = buf[(t - n) & mask] - r.K
        r.s1 += d - e
        r.s2 += (d - e) * (d + e)
    r.left -= 1


cdef inline bint roll_push2(Roll* r, const double* buf, long mask, long t, double x) noexcept nogil:
    """Like roll_push1, keeping s1 = sum(x - K) and s2 = sum((x - K)^2)."""
    if not finite(x):
        roll_reset(r)
        return False
    r.run += 1
    if r.run < r.n:
        roll_same(r, x)
        return False
    if r.run == r.n:
        r.left = 0
    roll_step2(r, buf, mask, t, x)
    return True


cdef inline double roll_mean(const Roll* r) noexcept nogil:
    return r.K + r.s1 * r.inv_n


cdef inline double var_pop(double s1, double s2, double inv_n) noexcept nogil:
    cdef double m = s1 * inv_n
    cdef double v = s2 * inv_n - m * m
    return v if v > 0.0 else 0.0


cdef inline double var_sample(double s1, double s2, double inv_n, double inv_n1) noexcept nogil:
    cdef double v = (s2 - s1 * (s1 * inv_n)) * inv_n1
    return v if v > 0.0 else 0.0


cdef inline double roll_var_pop(const Roll* r) noexcept nogil:
    return var_pop(r.s1, r.s2, r.inv_n)


cdef inline double roll_var_sample(const Roll* r) noexcept nogil:
    return var_sample(r.s1, r.s2, r.inv_n, r.inv_n1)


# --------------------------------------------------- SMA-seeded recursive means
cdef struct Smooth:
    long n        # period
    long cnt      # values seen since the last reset (saturates at n)
    double a      # weight of the previous average
    double b      # weight of the new value
    double total  # seed sum
    double avg


cdef inline void ema_init(Smooth* m, long n) noexcept nogil:
    # EMA: k = 2 / (n + 1); a = 1 - k written so that it is exact-ish
    m.n = n
    m.a = <double>(n - 1) / <double>(n + 1)
    m.b = 2.0 / <double>(n + 1)
    m.cnt = 0
    m.total = 0.0
    m.avg = NAN


cdef inline void wilder_init(Smooth* m, long n) noexcept nogil:
    # Wilder: avg = (avg * (n - 1) + x) / n
    m.n = n
    m.a = <double>(n - 1) / <double>n
    m.b = 1.0 / <double>n
    m.cnt = 0
    m.total = 0.0
    m.avg = NAN


cdef inline void smooth_reset(Smooth* m) noexcept nogil:
    m.cnt = 0
    m.total = 0.0
    m.avg = NAN


cdef inline bint smooth_push(Smooth* m, double x) noexcept nogil:
    """Seed with the mean of the first n values (TA-Lib's convention), then recurse.

    The recursion is written madd(avg, a, x*b) (one fused multiply-add on the
    dependency chain) instead of TA-Lib's (x - avg)*k + avg or
    (avg*(n-1) + x)/n; the difference is a few ulps and does not accumulate
    because the recursion is contractive.
    """
    if m.cnt < m.n:
        m.total += x
        m.cnt += 1
        if m.cnt < m.n:
            return False
        m.avg = m.total / m.n
        return True
    m.avg = madd(m.avg, m.a, x * m.b)
    return True


cdef inline bint ema_ta_push(Smooth* m, double x) noexcept nogil:
    """EMA (after ema_init) with TA-Lib's own rounding of avg + (x - avg) * k.

    Used for MACD, whose line is a small difference of two large EMAs: there
    one ulp of price level is a visible relative error, so we match TA-Lib's
    arithmetic exactly instead of only to a few ulps.
    """
    if m.cnt < m.n:
        m.total += x
        m.cnt += 1
        if m.cnt < m.n:
            return False
        m.avg = m.total / m.n
        return True
    m.avg = ta_ema_step(m.avg, x, m.b)
    return True


# ------------------------------------------------------------ small formulas
cdef inline double rsi_value(double g, double l) noexcept nogil:
    # No move at all over the smoothing: RSI is undefined; report the neutral 50
    # (TA-Lib reports 0 whenever g + l < 1e-8, a scale-dependent cut-off).
    cdef double s = g + l
    if s > 0.0:
        return 100.0 * (g / s)
    return 50.0


cdef inline double true_range(double h, double l, double pc) noexcept nogil:
    # max(high - low, |high - prev close|, |low - prev close|), as TA-Lib TRANGE;
    # fabs and the max pattern compile to branch-free andpd/maxsd (the signs
    # are random, a branch here would be mispredicted half the time)
    cdef double tr = h - l
    cdef double a = fabs(h - pc)
    cdef double b = fabs(l - pc)
    tr = a if a > tr else tr
    tr = b if b > tr else tr
    return tr
