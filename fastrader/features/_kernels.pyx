# cython: language_level=3
# distutils: extra_compile_args = -fno-math-errno -fno-trapping-math -ffp-contract=off
"""Standalone indicator kernels over one float64 array (TA-Lib's indicators).

Each kernel makes one pass, writes NaN during warm-up, and treats a
non-finite input as a break: the output is NaN there and the indicator
warms up again from the next finite value (so leading NaNs behave as in
TA-Lib, which starts at the first non-NaN value).
"""

import numpy as np
cimport numpy as cnp

from fastrader.errors import ConfigError, DataError
from libc.math cimport sqrt

from fastrader.features._common cimport (
    NAN, finite, Roll, roll_init, roll_push1, roll_push2, roll_mean, roll_var_pop,
    roll_var_sample, roll_step1, roll_step2, ta_ema_step, madd, window_sum, window_sums2_c, fastrader_sums, Smooth, ema_init, wilder_init, smooth_reset, smooth_push, ema_ta_push,
    rsi_value, true_range,
)

cnp.import_array()

cdef extern from *:
    """
    /* Per-chunk finishing passes over values the recursive loop left in the
       output arrays. They are plain element-wise loops so the compiler can use
       packed sqrt/div (sqrt is only vectorised without errno handling, and
       selects only without FP-exception semantics, hence -fno-math-errno
       -fno-trapping-math above: nothing here reads errno or FP flags, and
       neither option changes a computed value). */
    static void fastrader_sqrt_scale(double* x, long n, double s) {
        for (long i = 0; i < n; i++) x[i] = __builtin_sqrt(x[i]) * s;
    }
    /* in: up = variance, mid = mean; out: upper, middle, lower */
    static void fastrader_bands(double* __restrict up, const double* __restrict mid, double* __restrict lo, long n, double k) {
        for (long i = 0; i < n; i++) {
            double w = k * __builtin_sqrt(up[i]);
            up[i] = mid[i] + w;
            lo[i] = mid[i] - w;
        }
    }
    /* in: g = average gain, l = average loss (finite, >= 0); out: RSI, 50 when
       both are 0. The only NaN the division can make is 0/0, fixed after: a
       select inside the division loop would stop it from being vectorised. */
    static void fastrader_rsi_finish(double* __restrict g, const double* __restrict l, long n) {
        for (long i = 0; i < n; i++)
            g[i] = 100.0 * (g[i] / (g[i] + l[i]));
        for (long i = 0; i < n; i++)
            g[i] = g[i] == g[i] ? g[i] : 50.0;
    }
    /* Ask for the next chunk's inputs while this chunk's recursion runs, so
       that memory traffic overlaps the dependency chain. */
    static inline void fastrader_prefetch3(const double* a, const double* b, const double* c, long i) {
    #if defined(__GNUC__)
        if ((i & 7) == 0) {
            __builtin_prefetch(a + i); __builtin_prefetch(b + i); __builtin_prefetch(c + i);
        }
    #endif
    }
    /* True ranges of bars 1..n-1 of a chunk (bar 0 is done by the caller, its
       previous close lives in the previous chunk), TA-Lib's max order, plus
       0*prev_close so that a NaN/inf close is not swallowed by the max (the
       max itself already propagates a NaN/inf high or low). */
    static void fastrader_true_ranges(const double* __restrict h, const double* __restrict l,
                                      const double* __restrict c, double* __restrict out, long n) {
        for (long i = 1; i < n; i++) {
            double pc = c[i - 1];
            double tr = h[i] - l[i];
            double a = __builtin_fabs(h[i] - pc);
            double b = __builtin_fabs(l[i] - pc);
            tr = a > tr ? a : tr;
            tr = b > tr ? b : tr;
            out[i] = tr + 0.0 * pc;
        }
    }
    """
    void true_ranges "fastrader_true_ranges" (const double* h, const double* l, const double* c, double* out, long n) noexcept nogil
    void sqrt_scale "fastrader_sqrt_scale" (double* x, long n, double s) noexcept nogil
    void prefetch3 "fastrader_prefetch3" (const double* a, const double* b, const double* c, long i) noexcept nogil
    void bands "fastrader_bands" (double* up, const double* mid, double* lo, long n, double k) noexcept nogil
    void rsi_finish "fastrader_rsi_finish" (double* g, const double* l, long n) noexcept nogil


# Loops run in chunks. Once an indicator is past its warm-up, a chunk first
# takes a steady-state loop with no per-bar checks that also sums a sentinel
# which any NaN/inf input turns non-finite; if it trips, the state saved at
# the chunk start is restored and the chunk is redone by the careful per-bar
# loop. Both loops apply the same formulas, so the numbers do not depend on
# the path taken.
cdef enum:
    CH = 256


cdef inline long chunk_end(long t, long N) noexcept nogil:
    return t + CH if t + CH < N else N


cdef void _sma(const double* x, long N, long n, double* out) noexcept nogil:
    cdef Roll r
    cdef long t = 0, e, i
    cdef double chk, v, s
    roll_init(&r, n)
    while t < N:
        e = chunk_end(t, N)
        if r.run >= n:
            # Steady state: a plain running sum, re-summed exactly at every
            # chunk start (bounds the drift to one chunk, like TA-Lib's own
            # running sum but without its drift over the whole series).
            s = window_sum(x, -1, t - 1, n)
            chk = 0.0
            for i in range(t, e):
                v = x[i]
                chk += v
                s += v - x[i - n]
                out[i] = s * r.inv_n
            if finite(chk):
                r.run += e - t
                r.s1 = s
                r.left = 0
                r.last = NAN
                r.same = 0
                t = e
                continue
        for i in range(t, e):
            out[i] = r.s1 * r.inv_n if roll_push1(&r, x, -1, i, x[i]) else NAN
        t = e


cdef void _ema(const double* x, long N, long n, double* out) noexcept nogil:
    cdef Smooth m
    cdef long t = 0, e, i
    cdef double v, avg, a2, u
    ema_init(&m, n)
    while t < N:
        e = chunk_end(t, N)
        if m.cnt >= n:
            # a NaN/inf input makes the average itself non-finite
            # two bars per FMA on the dependency chain:
            # avg[i+1] = a^2 avg[i-1] + (a b x[i] + b x[i+1])
            avg = m.avg
            a2 = m.a * m.a
            i = t
            while i + 1 < e:
                u = x[i] * m.b
                out[i] = madd(avg, m.a, u)
                avg = madd(avg, a2, madd(m.a, u, x[i + 1] * m.b))
                out[i + 1] = avg
                i += 2
            if i < e:
                avg = madd(avg, m.a, x[i] * m.b)
                out[i] = avg
            if finite(avg):
                m.avg = avg
                t = e
                continue
        for i in range(t, e):
            v = x[i]
            if not finite(v):
                smooth_reset(&m)
                out[i] = NAN
            elif smooth_push(&m, v):
                out[i] = m.avg
            else:
                out[i] = NAN
        t = e


cdef void _rsi(const double* x, long N, long n, double* out) noexcept nogil:
    cdef Smooth g, l
    cdef long t = 0, e, i
    cdef double v, d, d2, ag, al, p, chk, a2, u, u2, w, w2, prev = NAN
    cdef double tmp[CH]
    cdef bint ok
    wilder_init(&g, n)
    wilder_init(&l, n)
    while t < N:
        e = chunk_end(t, N)
        if g.cnt >= n and prev == prev:
            # two bars per FMA on each chain, as in _ema; the loss averages go
            # to tmp and a packed pass turns (gain, loss) into RSI
            ag = g.avg
            al = l.avg
            a2 = g.a * g.a
            p = prev
            chk = 0.0
            i = t
            while i + 1 < e:
                # loss = gain - d is exactly max(-d, 0); written so because the
                # compiler turns `-d if d < 0 else 0` into a branch on a coin flip
                d = x[i] - p
                d2 = x[i + 1] - x[i]
                p = x[i + 1]
                chk += d + d2   # the max below would swallow a NaN
                u = d if d > 0.0 else 0.0
                u2 = d2 if d2 > 0.0 else 0.0
                w = (u - d) * g.b
                w2 = (u2 - d2) * g.b
                u = u * g.b
                u2 = u2 * g.b
                out[i] = madd(ag, g.a, u)
                tmp[i - t] = madd(al, g.a, w)
                ag = madd(ag, a2, madd(g.a, u, u2))
                al = madd(al, a2, madd(g.a, w, w2))
                out[i + 1] = ag
                tmp[i + 1 - t] = al
                i += 2
            if i < e:
                d = x[i] - p
                p = x[i]
                chk += d
                u = d if d > 0.0 else 0.0
                ag = madd(ag, g.a, u * g.b)
                al = madd(al, g.a, (u - d) * g.b)
                out[i] = ag
                tmp[i - t] = al
            rsi_finish(out + t, tmp, e - t)
            if finite(chk):
                g.avg = ag
                l.avg = al
                prev = p
                t = e
                continue
        for i in range(t, e):
            v = x[i]
            if not finite(v):
                smooth_reset(&g)
                smooth_reset(&l)
                prev = NAN
                out[i] = NAN
                continue
            if prev != prev:
                prev = v
                out[i] = NAN
                continue
            d = v - prev
            prev = v
            u = d if d > 0.0 else 0.0
            ok = smooth_push(&g, u)
            smooth_push(&l, u - d)
            out[i] = rsi_value(g.avg, l.avg) if ok else NAN
        t = e


cdef void _atr(const double* h, const double* lo, const double* c, long N, long n,
               double* out) noexcept nogil:
    cdef Smooth m
    cdef long t = 0, e, i
    cdef double pc = NAN, avg, a2, u, v
    cdef double tmp[CH]
    wilder_init(&m, n)
    while t < N:
        e = chunk_end(t, N)
        if m.cnt >= n and pc == pc:
            # packed pass: true ranges into tmp; then two bars per FMA on the
            # chain, as in _ema, in place. A non-finite input leaves a
            # non-finite true range, hence a non-finite average (the last
            # close of the chunk is checked on its own).
            tmp[0] = true_range(h[t], lo[t], pc) + 0.0 * pc
            true_ranges(h + t, lo + t, c + t, tmp, e - t)
            avg = m.avg
            a2 = m.a * m.a
            i = t
            while i + 1 < e:
                u = tmp[i - t] * m.b
                v = madd(avg, m.a, u)
                avg = madd(avg, a2, madd(m.a, u, tmp[i + 1 - t] * m.b))
                out[i] = v
                out[i + 1] = avg
                if i + CH < N:
                    prefetch3(h, lo, c, i + CH)
                i += 2
            if i < e:
                avg = madd(avg, m.a, tmp[i - t] * m.b)
                out[i] = avg
            if finite(avg) and finite(c[e - 1]):
                m.avg = avg
                pc = c[e - 1]
                t = e
                continue
        for i in range(t, e):
            if not (finite(h[i]) and finite(lo[i]) and finite(c[i])):
                smooth_reset(&m)
                pc = NAN
                out[i] = NAN
                continue
            if pc != pc:
                pc = c[i]
                out[i] = NAN
                continue
            out[i] = m.avg if smooth_push(&m, true_range(h[i], lo[i], pc)) else NAN
            pc = c[i]
        t = e


cdef void _macd(const double* x, long N, long fast, long slow, long sig,
                double* line, double* signal, double* hist) noexcept nogil:
    # TA-Lib's alignment: both EMAs produce their first value at bar slow-1, the
    # fast one seeded with the mean of the last `fast` closes there (not of the
    # first `fast` closes); the signal EMA is seeded with the mean of the first
    # `sig` MACD values.
    cdef Smooth f, s, g
    cdef long t = 0, e, i, k = 0
    cdef double v, m, m2, ef, es, eg, eg2
    ema_init(&f, fast)
    ema_init(&s, slow)
    ema_init(&g, sig)
    while t < N:
        e = chunk_end(t, N)
        if g.cnt >= sig:
            # a NaN/inf input makes the EMAs themselves non-finite
            ef = f.avg
            es = s.avg
            eg = g.avg
            for i in range(t, e):
                v = x[i]
                ef = ta_ema_step(ef, v, f.b)
                es = ta_ema_step(es, v, s.b)
                m = ef - es
                eg = ta_ema_step(eg, m, g.b)
                line[i] = m
                signal[i] = eg
                hist[i] = m - eg
            if finite(ef) and finite(es):
                f.avg = ef
                s.avg = es
                g.avg = eg
                t = e
                continue
        for i in range(t, e):
            v = x[i]
            if not finite(v):
                smooth_reset(&f)
                smooth_reset(&s)
                smooth_reset(&g)
                k = 0
                line[i] = NAN
                signal[i] = NAN
                hist[i] = NAN
                continue
            if k >= slow - fast:
                ema_ta_push(&f, v)
            k += 1
            if not ema_ta_push(&s, v):
                line[i] = NAN
                signal[i] = NAN
                hist[i] = NAN
                continue
            m = f.avg - s.avg
            line[i] = m
            if ema_ta_push(&g, m):
                signal[i] = g.avg
                hist[i] = m - g.avg
            else:
                signal[i] = NAN
                hist[i] = NAN
        t = e


cdef void _bbands(const double* x, long N, long n, double k, double* up, double* mid,
                  double* lo) noexcept nogil:
    cdef Roll r, r0
    cdef long t = 0, e, i
    cdef double m, w, v, chk
    roll_init(&r, n)
    while t < N:
        e = chunk_end(t, N)
        if r.run >= n:
            r0 = r
            chk = 0.0
            for i in range(t, e):
                v = x[i]
                chk += v
                roll_step2(&r, x, -1, i, v)
                mid[i] = roll_mean(&r)
                up[i] = roll_var_pop(&r)
            bands(up + t, mid + t, lo + t, e - t, k)
            if finite(chk):
                r.run += e - t
                t = e
                continue
            r = r0
        for i in range(t, e):
            if roll_push2(&r, x, -1, i, x[i]):
                m = roll_mean(&r)
                w = k * sqrt(roll_var_pop(&r))
                up[i] = m + w
                mid[i] = m
                lo[i] = m - w
            else:
                up[i] = NAN
                mid[i] = NAN
                lo[i] = NAN
        t = e


cdef void _stddev(const double* x, long N, long n, double nbdev, double* out) noexcept nogil:
    cdef Roll r
    cdef long t = 0, e, i, same
    cdef double v, chk, K, s1, s2, d, dd, m, var, last
    cdef fastrader_sums q
    roll_init(&r, n)
    while t < N:
        e = chunk_end(t, N)
        if r.run >= n:
            # Steady state: moment sums shifted by the last value before the
            # chunk, re-summed exactly once per chunk, updated incrementally
            # inside it. A window of n equal values is an exact zero spread.
            K = x[t - 1]
            q = window_sums2_c(x, -1, t - 1, n, K)
            s1 = q.s1
            s2 = q.s2
            same = r.same
            last = r.last
            chk = 0.0
            for i in range(t, e):
                v = x[i]
                chk += v
                same = same * (v == last) + 1
                last = v
                d = v - K
                dd = x[i - n] - K
                s1 += d - dd
                s2 += (d - dd) * (d + dd)
                m = s1 * r.inv_n
                var = s2 * r.inv_n - m * m
                out[i] = 0.0 if (same >= n or var < 0.0) else var
            sqrt_scale(out + t, e - t, nbdev)
            if finite(chk):
                r.run += e - t
                r.same = same
                r.last = last
                r.left = 0
                t = e
                continue
        for i in range(t, e):
            out[i] = sqrt(roll_var_pop(&r)) * nbdev if roll_push2(&r, x, -1, i, x[i]) else NAN
        t = e


cdef void _rolling_z(const double* x, long N, long n, double* out) noexcept nogil:
    cdef Roll r
    cdef long t
    cdef double sd
    roll_init(&r, n)
    for t in range(N):
        if roll_push2(&r, x, -1, t, x[t]):
            sd = sqrt(roll_var_sample(&r))
            out[t] = (x[t] - roll_mean(&r)) / sd if sd > 0.0 else NAN
        else:
            out[t] = NAN


# ------------------------------------------------------------ Python wrappers
cdef cnp.ndarray _vec(x, str what):
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise DataError(f"{what}: expected a 1-D array, got shape {a.shape}")
    return a


cdef list _outputs(const double[::1] src, int k):
    """k output arrays as long as src, cut from one block (one allocation and
    one huge-page advice instead of k: for 1M bars ~2 ms of page faults less),
    each starting 2944 bytes (mod 4096) after src.

    Why the offset: the steady loops load the input a few hundred bars ahead
    of the stores to the output; when a store address matches an upcoming
    load address in its low 12 bits (output 0-2 KB after the input, modulo
    4 KB) the CPU assumes a dependency and the loop stalls. Measured on SMA
    over 1M bars: 2.6-2.8 ms for those placements, 1.6-1.8 ms for outputs
    2.2-3.7 KB after the input; the allocator's choice is otherwise random.
    """
    cdef long N = src.shape[0], pad = 512, stride = N + pad, r, j
    cdef size_t want
    buf = np.empty(k * stride + pad)
    if N == 0:
        return [buf[:0] for _ in range(k)]
    want = (<size_t>&src[0]) + 2944
    outs = []
    for r in range(k):
        j = ((want - (<size_t>buf.ctypes.data + 8 * r * stride)) % 4096) // 8
        outs.append(buf[r * stride + j: r * stride + j + N])
    return outs


cdef long _period(n, long lo, str what) except -1:
    if isinstance(n, bool) or int(n) != n or int(n) < lo:
        raise ConfigError(f"{what}: period must be an integer >= {lo}, got {n!r}")
    return int(n)


def sma(x, n=30):
    """Simple moving average of the last n values (TA-Lib SMA)."""
    cdef long p = _period(n, 1, "sma")
    cdef const double[::1] a = _vec(x, "sma")
    cdef cnp.ndarray o = _outputs(a, 1)[0]
    cdef double[::1] ov = o
    if a.shape[0]:
        with nogil:
            _sma(&a[0], a.shape[0], p, &ov[0])
    return o


def ema(x, n=30):
    """EMA with k = 2/(n+1), seeded with the mean of the first n values (TA-Lib EMA)."""
    cdef long p = _period(n, 1, "ema")
    cdef const double[::1] a = _vec(x, "ema")
    cdef cnp.ndarray o = _outputs(a, 1)[0]
    cdef double[::1] ov = o
    if a.shape[0]:
        with nogil:
            _ema(&a[0], a.shape[0], p, &ov[0])
    return o


def rsi(x, n=14):
    """Wilder's RSI in [0, 100] (TA-Lib RSI); first value at index n; 50 when flat."""
    cdef long p = _period(n, 1, "rsi")
    cdef const double[::1] a = _vec(x, "rsi")
    cdef cnp.ndarray o = _outputs(a, 1)[0]
    cdef double[::1] ov = o
    if a.shape[0]:
        with nogil:
            _rsi(&a[0], a.shape[0], p, &ov[0])
    return o


def atr(high, low, close, n=14):
    """Wilder's average true range (TA-Lib ATR); first value at index n."""
    cdef long p = _period(n, 1, "atr")
    cdef const double[::1] h = _vec(high, "atr high")
    cdef const double[::1] l = _vec(low, "atr low")
    cdef const double[::1] c = _vec(close, "atr close")
    if not (h.shape[0] == l.shape[0] == c.shape[0]):
        raise DataError(f"atr: high, low, close lengths differ ({h.shape[0]}, {l.shape[0]}, {c.shape[0]})")
    cdef cnp.ndarray o = _outputs(c, 1)[0]
    cdef double[::1] ov = o
    if c.shape[0]:
        with nogil:
            _atr(&h[0], &l[0], &c[0], c.shape[0], p, &ov[0])
    return o


def macd(x, fast=12, slow=26, signal=9):
    """MACD line, signal and histogram with TA-Lib's seeding and alignment.

    The line is defined from index slow-1, signal and histogram from
    slow+signal-2 (TA-Lib reports all three from slow+signal-2).
    """
    cdef long f = _period(fast, 1, "macd fast"), s = _period(slow, 2, "macd slow")
    cdef long g = _period(signal, 1, "macd signal")
    if f >= s:
        raise ConfigError(f"macd: fast period ({f}) must be shorter than slow ({s})")
    cdef const double[::1] a = _vec(x, "macd")
    cdef long N = a.shape[0]
    o1, o2, o3 = _outputs(a, 3)
    cdef double[::1] v1 = o1, v2 = o2, v3 = o3
    if N:
        with nogil:
            _macd(&a[0], N, f, s, g, &v1[0], &v2[0], &v3[0])
    return o1, o2, o3


def bbands(x, n=20, k=2.0):
    """Bollinger bands (upper, middle, lower): SMA +- k population std (TA-Lib BBANDS, SMA)."""
    cdef long p = _period(n, 1, "bbands")
    cdef double kk = float(k)
    cdef const double[::1] a = _vec(x, "bbands")
    cdef long N = a.shape[0]
    o1, o2, o3 = _outputs(a, 3)
    cdef double[::1] v1 = o1, v2 = o2, v3 = o3
    if N:
        with nogil:
            _bbands(&a[0], N, p, kk, &v1[0], &v2[0], &v3[0])
    return o1, o2, o3


def stddev(x, n=5, nbdev=1.0):
    """Rolling population standard deviation times nbdev (TA-Lib STDDEV)."""
    cdef long p = _period(n, 1, "stddev")
    cdef double nb = float(nbdev)
    cdef const double[::1] a = _vec(x, "stddev")
    cdef cnp.ndarray o = _outputs(a, 1)[0]
    cdef double[::1] ov = o
    if a.shape[0]:
        with nogil:
            _stddev(&a[0], a.shape[0], p, nb, &ov[0])
    return o


def rolling_zscore(X, window):
    """Causal rolling z-score of each column: (x_t - mean) / std (ddof=1) over the
    last `window` rows including t. NaN until `window` finite values; NaN where
    the window is constant. Accepts a 1-D series or a 2-D (rows x columns) array.
    """
    cdef long w = _period(window, 2, "rolling_zscore")
    A = np.asarray(X, dtype=np.float64)
    if A.ndim not in (1, 2):
        raise DataError(f"rolling_zscore: expected a 1-D or 2-D array, got shape {A.shape}")
    A2 = A.reshape(A.shape[0], -1)
    cdef long N = A2.shape[0], F = A2.shape[1], j
    out = np.empty((F, N))
    cdef double[:, ::1] ov = out
    cdef const double[::1] col
    for j in range(F):
        col = np.ascontiguousarray(A2[:, j])
        if N:
            with nogil:
                _rolling_z(&col[0], N, w, &ov[j, 0])
    return out.T.copy().reshape(A.shape)
