# cython: language_level=3
# distutils: extra_compile_args = -fno-math-errno
"""The fused feature engine: one pass over the bars, every feature per bar.

``compute_features`` and ``FeatureStream`` both drive the same per-bar
``eng_step`` on the same state, so the streaming row for a bar is bit-for-bit
the batch row, and row t only ever depends on bars <= t (causality by
construction: the state is a function of the bars seen so far).

Windows read trailing values from small power-of-two rings, so a step costs
O(features) (amortised: rolling sums are recomputed exactly once per window).
A bad bar (see ``bar_flags``) yields a NaN row and restarts every feature's
warm-up, so features are always computed from the bars since the last bad bar.
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport sqrt, log
from libc.stdlib cimport malloc, calloc, free

from fastrader.features._common cimport (
    NAN, finite, Roll, roll_init, roll_reset, roll_push1, roll_push2, roll_mean,
    roll_var_pop, roll_var_sample, Smooth, ema_init, wilder_init, smooth_reset,
    smooth_push, ema_ta_push, rsi_value, true_range,
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


cdef inline int bar_flags(double o, double h, double l, double c, double v) noexcept nogil:
    cdef int f = 0
    if not (finite(o) and finite(h) and finite(l) and finite(c) and finite(v)):
        return F_NONFINITE
    if o <= 0.0 or h <= 0.0 or l <= 0.0 or c <= 0.0:
        f |= F_NONPOSITIVE
    if h < l or o > h or o < l or c > h or c < l:
        f |= F_INCONSISTENT
    if v < 0.0:
        f |= F_NEG_VOLUME
    elif v == 0.0:
        f |= F_ZERO_VOLUME
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


cdef struct Eng:
    long t        # bars stepped so far (absolute index of the next bar)
    long run      # consecutive good bars ending at the last one
    long mask     # ring capacity - 1
    int nops
    int ncols
    long norm_w   # rolling z-score window, 0 for none
    Op* ops
    double* C     # rings: close, volume, typical price * volume, 1-bar log return
    double* V
    double* PV
    double* R
    Roll* nr      # per-column rolling moments of the normalisation
    double* NB    # per-column rings of raw feature values (ncols x capacity)


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


cdef void eng_step(Eng* E, int flags, double o, double h, double l, double c, double v,
                   double* row) noexcept nogil:
    cdef long t = E.t, m = E.mask, i = t & m, s, j, cap = m + 1
    cdef int k, kind, col
    cdef Op* op
    cdef double pc, r1, x, y, sd, w, up, lo, scale, d
    cdef bint ok
    if flags & F_BAD:
        eng_reset_ops(E)
        E.run = 0
        for j in range(E.ncols):
            row[j] = NAN
    else:
        s = E.run          # bars of this good run before this one
        E.run += 1
        E.C[i] = c
        E.V[i] = v
        E.PV[i] = (h + l + c) / 3.0 * v
        pc = E.C[(t - 1) & m] if s >= 1 else NAN
        r1 = log(c / pc) if s >= 1 else NAN
        E.R[i] = r1
        for k in range(E.nops):
            op = &E.ops[k]
            kind = op.kind
            col = op.col
            if kind == K_LOGRET:
                row[col] = log(c / E.C[(t - op.n1) & m]) if s >= op.n1 else NAN
            elif kind == K_VOL:
                if roll_push2(&op.r1, E.R, m, t, r1):
                    row[col] = sqrt(roll_var_sample(&op.r1))
                else:
                    row[col] = NAN
            elif kind == K_SMA or kind == K_CLOSE_SMA:
                if roll_push1(&op.r1, E.C, m, t, c):
                    x = op.r1.s1 * op.r1.inv_n
                    row[col] = x if kind == K_SMA else c / x - 1.0
                else:
                    row[col] = NAN
            elif kind == K_EMA or kind == K_CLOSE_EMA:
                if smooth_push(&op.m1, c):
                    x = op.m1.avg
                    row[col] = x if kind == K_EMA else c / x - 1.0
                else:
                    row[col] = NAN
            elif kind == K_RSI:
                ok = False
                if s >= 1:
                    d = c - pc
                    # loss = gain - d == max(-d, 0) exactly, and branch-free
                    x = d if d > 0.0 else 0.0
                    ok = smooth_push(&op.m1, x)
                    smooth_push(&op.m2, x - d)
                row[col] = rsi_value(op.m1.avg, op.m2.avg) if ok else NAN
            elif kind == K_ATR or kind == K_ATR_PCT:
                if s >= 1 and smooth_push(&op.m1, true_range(h, l, pc)):
                    x = op.m1.avg
                    row[col] = x if kind == K_ATR else x / c
                else:
                    row[col] = NAN
            elif kind == K_MACD or kind == K_MACD_NORM:
                # TA-Lib alignment, see _kernels._macd
                if s >= op.n2 - op.n1:
                    ema_ta_push(&op.m1, c)
                scale = 1.0 if kind == K_MACD else 1.0 / c
                if ema_ta_push(&op.m2, c):
                    x = op.m1.avg - op.m2.avg
                    row[col] = x * scale
                    if ema_ta_push(&op.m3, x):
                        row[col + 1] = op.m3.avg * scale
                        row[col + 2] = (x - op.m3.avg) * scale
                    else:
                        row[col + 1] = NAN
                        row[col + 2] = NAN
                else:
                    row[col] = NAN
                    row[col + 1] = NAN
                    row[col + 2] = NAN
            elif kind == K_BBANDS or kind == K_BB_PCTB or kind == K_BB_WIDTH or kind == K_STDDEV:
                if roll_push2(&op.r1, E.C, m, t, c):
                    x = roll_mean(&op.r1)
                    sd = sqrt(roll_var_pop(&op.r1))
                    if kind == K_STDDEV:
                        row[col] = sd * op.p1
                    else:
                        w = op.p1 * sd
                        up = x + w
                        lo = x - w
                        if kind == K_BBANDS:
                            row[col] = up
                            row[col + 1] = x
                            row[col + 2] = lo
                        elif kind == K_BB_PCTB:
                            # flat window: the band has no width, %b is undefined
                            row[col] = (c - lo) / (up - lo) if up > lo else NAN
                        else:
                            row[col] = (up - lo) / x
                else:
                    row[col] = NAN
                    if kind == K_BBANDS:
                        row[col + 1] = NAN
                        row[col + 2] = NAN
            elif kind == K_VOLUME_Z:
                if roll_push2(&op.r1, E.V, m, t, v):
                    sd = sqrt(roll_var_sample(&op.r1))
                    # constant volume over the window (e.g. all zero): undefined
                    row[col] = (v - roll_mean(&op.r1)) / sd if sd > 0.0 else NAN
                else:
                    row[col] = NAN
            elif kind == K_VWAP or kind == K_VWAP_DEV:
                ok = roll_push1(&op.r1, E.PV, m, t, E.PV[i])
                roll_push1(&op.r2, E.V, m, t, v)
                if ok and op.r2.s1 > 0.0:
                    x = op.r1.s1 / op.r2.s1
                    row[col] = x if kind == K_VWAP else c / x - 1.0
                else:
                    # warm-up, or no volume traded in the whole window
                    row[col] = NAN
            elif kind == K_HL_RANGE:
                row[col] = (h - l) / c
            elif kind == K_INTRABAR:
                # a bar with no range: the close is its only price, call it the middle
                row[col] = (c - l) / (h - l) if h > l else 0.5
    if E.norm_w:
        for j in range(E.ncols):
            x = row[j]
            E.NB[j * cap + i] = x
            if roll_push2(&E.nr[j], E.NB + j * cap, m, t, x):
                sd = sqrt(roll_var_sample(&E.nr[j]))
                row[j] = (x - roll_mean(&E.nr[j])) / sd if sd > 0.0 else NAN
            else:
                row[j] = NAN
    E.t = t + 1


cdef long eng_run(Eng* E, const double* o, const double* h, const double* l,
                  const double* c, const double* v, long N, double* out,
                  unsigned char* flags_out, bint stop_on_bad) noexcept nogil:
    """Step over N bars; returns the index of the first bad bar when stop_on_bad, else -1."""
    cdef long t
    cdef int f
    cdef long F = E.ncols
    for t in range(N):
        f = bar_flags(o[t], h[t], l[t], c[t], v[t])
        if flags_out != NULL:
            flags_out[t] = <unsigned char>f
        if stop_on_bad and (f & F_BAD):
            return t
        eng_step(E, f, o[t], h[t], l[t], c[t], v[t], out + t * F)
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
        self.E.nr = NULL
        self.E.NB = NULL
        while cap < capacity:
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
        if norm_window:
            self.E.nr = <Roll*>calloc(max(1, ncols), sizeof(Roll))
            self.E.NB = <double*>calloc(max(1, ncols) * cap, sizeof(double))
        if (self.E.ops == NULL or self.E.C == NULL or self.E.V == NULL or self.E.PV == NULL
                or self.E.R == NULL or (norm_window and (self.E.nr == NULL or self.E.NB == NULL))):
            raise MemoryError("fastrader.features: cannot allocate the feature engine")
        for k in range(ncols if norm_window else 0):
            roll_init(&self.E.nr[k], norm_window)
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
        free(self.E.ops)
        free(self.E.C)
        free(self.E.V)
        free(self.E.PV)
        free(self.E.R)
        free(self.E.nr)
        free(self.E.NB)

    @property
    def bars(self):
        """Bars stepped so far."""
        return self.E.t

    def run(self, o, h, l, c, v, bint stop_on_bad, want_flags):
        """Batch: returns (X, flags or None, index of the first bad bar or -1).

        With stop_on_bad the rows from the first bad bar on are left unwritten.
        """
        cdef const double[::1] ov = o, hv = h, lv = l, cv = c, vv = v
        cdef long N = cv.shape[0]
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
        if self.E.ncols:
            eng_step(&self.E, f, o, h, l, c, v, &rv[0])
        return row, f


def flags_of(o, h, l, c, v):
    """Per-bar flags (uint8) of OHLCV arrays, see validate.py."""
    cdef const double[::1] ov = o, hv = h, lv = l, cv = c, vv = v
    cdef long N = cv.shape[0], t
    flags = np.empty(N, dtype=np.uint8)
    cdef unsigned char[::1] fv = flags
    with nogil:
        for t in range(N):
            fv[t] = <unsigned char>bar_flags(ov[t], hv[t], lv[t], cv[t], vv[t])
    return flags
