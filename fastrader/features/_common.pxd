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


cdef inline bint finite(double x) noexcept nogil:
    # False for NaN and +-inf, without a libm call
    return x - x == 0.0


# ---------------------------------------------------------------- rolling sums
cdef struct Roll:
    long n        # window length
    long run      # consecutive finite values pushed so far
    long left     # incremental updates left before the next exact recompute
    double K      # shift of the second-moment sums
    double s1     # sum of (x - K) over the window (K = 0 for roll_push1)
    double s2     # sum of (x - K)^2 over the window (roll_push2 only)
    double last   # previous value pushed
    long same     # how many of the last values equal it (exact constant-window check)


cdef inline void roll_init(Roll* r, long n) noexcept nogil:
    r.n = n
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
    if x == r.last:
        r.same += 1
    else:
        r.same = 1
        r.last = x
    return r.same >= r.n


cdef inline bint roll_push1(Roll* r, const double* buf, long mask, long t, double x) noexcept nogil:
    """Push x = buf[t & mask]; True once the last n values are finite, s1 = their sum.

    ``buf`` is a ring of capacity mask + 1 > n, or a whole array with mask = -1.
    A non-finite value restarts the window.
    """
    cdef long n = r.n, j
    cdef double s
    if not finite(x):
        roll_reset(r)
        return False
    r.run += 1
    if roll_same(r, x) and r.run >= n:
        if r.left == 0:
            r.left = n
        r.left -= 1
        r.s1 = x * n
        return True
    if r.run < n:
        return False
    if r.run == n or r.left == 0:
        s = 0.0
        for j in range(t - n + 1, t + 1):
            s += buf[j & mask]
        r.s1 = s
        r.left = n
    else:
        r.s1 += x - buf[(t - n) & mask]
    r.left -= 1
    return True


cdef inline bint roll_push2(Roll* r, const double* buf, long mask, long t, double x) noexcept nogil:
    """Like roll_push1, keeping s1 = sum(x - K) and s2 = sum((x - K)^2)."""
    cdef long n = r.n, j
    cdef double d, e, s1, s2, K
    if not finite(x):
        roll_reset(r)
        return False
    r.run += 1
    if roll_same(r, x) and r.run >= n:
        if r.left == 0:
            r.left = n
        r.left -= 1
        r.K = x
        r.s1 = 0.0
        r.s2 = 0.0
        return True
    if r.run < n:
        return False
    if r.run == n or r.left == 0:
        K = x
        s1 = 0.0
        s2 = 0.0
        for j in range(t - n + 1, t + 1):
            d = buf[j & mask] - K
            s1 += d
            s2 += d * d
        r.K = K
        r.s1 = s1
        r.s2 = s2
        r.left = n
    else:
        d = x - r.K
        e = buf[(t - n) & mask] - r.K
        r.s1 += d - e
        r.s2 += (d - e) * (d + e)
    r.left -= 1
    return True


cdef inline double roll_mean(const Roll* r) noexcept nogil:
    return r.K + r.s1 / r.n


cdef inline double roll_var_pop(const Roll* r) noexcept nogil:
    cdef double m = r.s1 / r.n
    cdef double v = r.s2 / r.n - m * m
    return v if v > 0.0 else 0.0


cdef inline double roll_var_sample(const Roll* r) noexcept nogil:
    cdef double v = (r.s2 - r.s1 * (r.s1 / r.n)) / (r.n - 1)
    return v if v > 0.0 else 0.0


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

    The recursion is written avg*a + x*b (one fused multiply-add on the
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
    m.avg = m.avg * m.a + x * m.b
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
    # max(high - low, |high - prev close|, |low - prev close|), as TA-Lib TRANGE
    cdef double tr = h - l
    cdef double a = h - pc
    cdef double b = l - pc
    if a < 0.0:
        a = -a
    if b < 0.0:
        b = -b
    if a > tr:
        tr = a
    if b > tr:
        tr = b
    return tr
