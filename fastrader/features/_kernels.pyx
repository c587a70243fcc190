# cython: language_level=3
"""Standalone indicator kernels over one float64 array (TA-Lib's indicators).

Each kernel makes one pass, writes NaN during warm-up, and treats a
non-finite input as a break: the output is NaN there and the indicator
warms up again from the next finite value (so leading NaNs behave as in
TA-Lib, which starts at the first non-NaN value).
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport sqrt

from fastrader.features._common cimport (
    NAN, finite, Roll, roll_init, roll_push1, roll_push2, roll_mean, roll_var_pop,
    roll_var_sample, Smooth, ema_init, wilder_init, smooth_reset, smooth_push, ema_ta_push,
    rsi_value, true_range,
)

cnp.import_array()


cdef void _sma(const double* x, long N, long n, double* out) noexcept nogil:
    cdef Roll r
    cdef long t
    roll_init(&r, n)
    for t in range(N):
        if roll_push1(&r, x, -1, t, x[t]):
            out[t] = r.s1 / n
        else:
            out[t] = NAN


cdef void _ema(const double* x, long N, long n, double* out) noexcept nogil:
    cdef Smooth m
    cdef long t
    cdef double v
    ema_init(&m, n)
    for t in range(N):
        v = x[t]
        if not finite(v):
            smooth_reset(&m)
            out[t] = NAN
        elif smooth_push(&m, v):
            out[t] = m.avg
        else:
            out[t] = NAN


cdef void _rsi(const double* x, long N, long n, double* out) noexcept nogil:
    cdef Smooth g, l
    cdef long t
    cdef double v, d, prev = NAN
    cdef bint ok
    wilder_init(&g, n)
    wilder_init(&l, n)
    for t in range(N):
        v = x[t]
        if not finite(v):
            smooth_reset(&g)
            smooth_reset(&l)
            prev = NAN
            out[t] = NAN
            continue
        if prev != prev:
            prev = v
            out[t] = NAN
            continue
        d = v - prev
        prev = v
        ok = smooth_push(&g, d if d > 0.0 else 0.0)
        smooth_push(&l, -d if d < 0.0 else 0.0)
        out[t] = rsi_value(g.avg, l.avg) if ok else NAN


cdef void _atr(const double* h, const double* lo, const double* c, long N, long n,
               double* out) noexcept nogil:
    cdef Smooth m
    cdef long t
    cdef double pc = NAN
    wilder_init(&m, n)
    for t in range(N):
        if not (finite(h[t]) and finite(lo[t]) and finite(c[t])):
            smooth_reset(&m)
            pc = NAN
            out[t] = NAN
            continue
        if pc != pc:
            pc = c[t]
            out[t] = NAN
            continue
        out[t] = m.avg if smooth_push(&m, true_range(h[t], lo[t], pc)) else NAN
        pc = c[t]


cdef void _macd(const double* x, long N, long fast, long slow, long sig,
                double* line, double* signal, double* hist) noexcept nogil:
    # TA-Lib's alignment: both EMAs produce their first value at bar slow-1, the
    # fast one seeded with the mean of the last `fast` closes there (not of the
    # first `fast` closes); the signal EMA is seeded with the mean of the first
    # `sig` MACD values.
    cdef Smooth f, s, g
    cdef long t, k = 0
    cdef double v, m
    ema_init(&f, fast)
    ema_init(&s, slow)
    ema_init(&g, sig)
    for t in range(N):
        v = x[t]
        if not finite(v):
            smooth_reset(&f)
            smooth_reset(&s)
            smooth_reset(&g)
            k = 0
            line[t] = NAN
            signal[t] = NAN
            hist[t] = NAN
            continue
        if k >= slow - fast:
            ema_ta_push(&f, v)
        k += 1
        if not ema_ta_push(&s, v):
            line[t] = NAN
            signal[t] = NAN
            hist[t] = NAN
            continue
        m = f.avg - s.avg
        line[t] = m
        if ema_ta_push(&g, m):
            signal[t] = g.avg
            hist[t] = m - g.avg
        else:
            signal[t] = NAN
            hist[t] = NAN


cdef void _bbands(const double* x, long N, long n, double k, double* up, double* mid,
                  double* lo) noexcept nogil:
    cdef Roll r
    cdef long t
    cdef double m, w
    roll_init(&r, n)
    for t in range(N):
        if roll_push2(&r, x, -1, t, x[t]):
            m = roll_mean(&r)
            w = k * sqrt(roll_var_pop(&r))
            up[t] = m + w
            mid[t] = m
            lo[t] = m - w
        else:
            up[t] = NAN
            mid[t] = NAN
            lo[t] = NAN


cdef void _stddev(const double* x, long N, long n, double nbdev, double* out) noexcept nogil:
    cdef Roll r
    cdef long t
    roll_init(&r, n)
    for t in range(N):
        if roll_push2(&r, x, -1, t, x[t]):
            out[t] = sqrt(roll_var_pop(&r)) * nbdev
        else:
            out[t] = NAN


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
        from fastrader.errors import DataError
        raise DataError(f"{what}: expected a 1-D array, got shape {a.shape}")
    return a


cdef long _period(n, long lo, str what) except -1:
    from fastrader.errors import ConfigError
    if isinstance(n, bool) or int(n) != n or int(n) < lo:
        raise ConfigError(f"{what}: period must be an integer >= {lo}, got {n!r}")
    return int(n)


def sma(x, n=30):
    """Simple moving average of the last n values (TA-Lib SMA)."""
    cdef long p = _period(n, 1, "sma")
    cdef const double[::1] a = _vec(x, "sma")
    cdef cnp.ndarray o = np.empty(a.shape[0])
    cdef double[::1] ov = o
    if a.shape[0]:
        with nogil:
            _sma(&a[0], a.shape[0], p, &ov[0])
    return o


def ema(x, n=30):
    """EMA with k = 2/(n+1), seeded with the mean of the first n values (TA-Lib EMA)."""
    cdef long p = _period(n, 1, "ema")
    cdef const double[::1] a = _vec(x, "ema")
    cdef cnp.ndarray o = np.empty(a.shape[0])
    cdef double[::1] ov = o
    if a.shape[0]:
        with nogil:
            _ema(&a[0], a.shape[0], p, &ov[0])
    return o


def rsi(x, n=14):
    """Wilder's RSI in [0, 100] (TA-Lib RSI); first value at index n; 50 when flat."""
    cdef long p = _period(n, 1, "rsi")
    cdef const double[::1] a = _vec(x, "rsi")
    cdef cnp.ndarray o = np.empty(a.shape[0])
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
        from fastrader.errors import DataError
        raise DataError(f"atr: high, low, close lengths differ ({h.shape[0]}, {l.shape[0]}, {c.shape[0]})")
    cdef cnp.ndarray o = np.empty(c.shape[0])
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
    from fastrader.errors import ConfigError
    cdef long f = _period(fast, 1, "macd fast"), s = _period(slow, 2, "macd slow")
    cdef long g = _period(signal, 1, "macd signal")
    if f >= s:
        raise ConfigError(f"macd: fast period ({f}) must be shorter than slow ({s})")
    cdef const double[::1] a = _vec(x, "macd")
    cdef long N = a.shape[0]
    cdef cnp.ndarray o1 = np.empty(N), o2 = np.empty(N), o3 = np.empty(N)
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
    cdef cnp.ndarray o1 = np.empty(N), o2 = np.empty(N), o3 = np.empty(N)
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
    cdef cnp.ndarray o = np.empty(a.shape[0])
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
        from fastrader.errors import DataError
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
