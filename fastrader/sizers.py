"""Position sizing for :class:`fastrader.strategy.ModelStrategy`: from a target to a fraction of equity.

A strategy's :meth:`~fastrader.strategy.ModelStrategy.target` says where it
wants to be, in [-1, 1]; its ``size()`` hook turns that into the fraction of
the account's equity to hold, using these pieces (all selectable by params):

==================  ==========================================================================
``sizing``          fraction of equity held for a target ``t``
==================  ==========================================================================
``fixed``           ``t * stake``
``vol_target``      ``t * stake * vol_target / realised_vol``: realised volatility of the
                    symbol's log returns over the last ``vol_window`` bars (causal: bars up to
                    the decision bar), annualised by the bars per year of the data's spacing
``signal``          ``t * stake * min(1, |signal| / signal_full)``: the target's direction,
                    scaled by the signal's strength
==================  ==========================================================================

Then, in this order: the portfolio weight (``weighting``: ``equal`` = 1/N of
the traded symbols, ``risk`` = inverse realised volatility, normalised to sum
to 1), the per-position cap ``max_leverage`` on |fraction|, and the
portfolio's caps ``gross_cap`` on the sum of |fractions| and ``net_cap`` on
|sum of fractions| (both scale every position down by the same factor).
A cap of 0 (the default) is no cap; vol targeting wants ``max_leverage``,
since calm stretches ask for large positions.
"""

from __future__ import annotations

import math

SIZINGS = ("fixed", "vol_target", "signal")
WEIGHTINGS = ("equal", "risk")
YEAR_MS = 365 * 86_400_000


class RollingVol:
    """Realised volatility (root mean square of log returns) over the last ``window`` returns, O(1) per bar.

    Zero-mean on purpose: the mean of a few hundred hourly returns is noise,
    and the square of a return is what a position's variance is made of.
    NaN until ``window`` returns have been seen. The running sum is re-added
    exactly every ``window`` bars so float drift cannot build up.
    """

    __slots__ = ("window", "_buf", "_i", "_n", "_sum", "_last")

    def __init__(self, window: int):
        if int(window) < 2:
            raise ValueError(f"vol_window must be >= 2 bars, got {window}")
        self.window = int(window)
        self._buf = [0.0] * self.window
        self._i = 0
        self._n = 0
        self._sum = 0.0
        self._last = float("nan")

    def update(self, close: float) -> float:
        """Feed the bar's close; returns the per-bar volatility through this bar."""
        last, self._last = self._last, close
        if not (last > 0.0 and close > 0.0):  # first bar, or a bar with no price
            return self.value
        r = math.log(close / last)
        sq = r * r
        i = self._i
        self._sum += sq - self._buf[i]
        self._buf[i] = sq
        self._i = i + 1 if i + 1 < self.window else 0
        if self._n < self.window:
            self._n += 1
        if self._i == 0:
            self._sum = math.fsum(self._buf)
        return self.value

    @property
    def value(self) -> float:
        if self._n < self.window:
            return float("nan")
        return math.sqrt(max(self._sum, 0.0) / self.window)


def bars_per_year(step_ms: float) -> float:
    return YEAR_MS / float(step_ms)


def raw_fraction(target: float, signal: float, *, sizing: str, stake: float, vol: float, ann: float,
                 vol_target: float, signal_full: float) -> float:
    """The fraction of equity for one symbol before weights and caps (see the module's table).

    ``vol`` is the per-bar realised volatility, ``ann`` the square root of the
    bars per year. Vol targeting with no volatility yet (warm-up) holds nothing.
    """
    if target == 0.0:
        return 0.0
    if sizing == "fixed":
        return target * stake
    if sizing == "vol_target":
        if not vol > 0.0:
            return 0.0
        return target * stake * vol_target / (vol * ann)
    if sizing == "signal":
        return target * stake * min(1.0, abs(signal) / signal_full)
    raise ValueError(f"sizing must be one of {', '.join(SIZINGS)}, got {sizing!r}")


def risk_weights(vols: list[float]) -> list[float]:
    """Inverse-volatility weights summing to 1 over the symbols whose volatility is known (0 for the rest)."""
    inv = [1.0 / v if v > 0.0 and v == v else 0.0 for v in vols]
    total = sum(inv)
    return [x / total for x in inv] if total > 0 else [0.0] * len(vols)


def cap(fractions: list[float], *, max_leverage: float, gross_cap: float, net_cap: float) -> list[float]:
    """Clip each |fraction| at ``max_leverage``, then scale all so gross and net exposure stay within their caps.

    A cap of 0 means none.
    """
    out = fractions
    if max_leverage > 0:
        out = [max(-max_leverage, min(max_leverage, f)) for f in out]
    if gross_cap > 0:
        gross = sum(abs(f) for f in out)
        if gross > gross_cap:
            out = [f * (gross_cap / gross) for f in out]
    if net_cap > 0:
        net = abs(sum(out))
        if net > net_cap:
            out = [f * (net_cap / net) for f in out]
    return out


def check_params(p) -> None:
    """Raise ValueError on a sizing param outside its range (the pipeline turns it into one error line)."""
    if p.sizing not in SIZINGS:
        raise ValueError(f"param sizing must be one of {', '.join(SIZINGS)}, got {p.sizing!r}")
    if p.weighting not in WEIGHTINGS:
        raise ValueError(f"param weighting must be one of {', '.join(WEIGHTINGS)}, got {p.weighting!r}")
    for name in ("stake", "vol_target", "signal_full", "max_leverage", "gross_cap", "net_cap"):
        x = getattr(p, name)
        floor = 0 if name in ("max_leverage", "gross_cap", "net_cap") else 1e-300
        if isinstance(x, bool) or not (isinstance(x, (int, float)) and math.isfinite(x) and x >= floor):
            raise ValueError(f"param {name} must be a number {'>= 0 (0 = no cap)' if floor == 0 else '> 0'}, got {x!r}")
    if int(p.vol_window) < 2:
        raise ValueError(f"param vol_window must be >= 2 bars, got {p.vol_window!r}")
