"""Performance metrics, computed the way the tearsheet computes them.

Bars are intraday, but Sharpe and friends are defined on daily returns:
the equity curve is sampled at each UTC day's last bar and compounded into
daily returns first. The first day's return is measured from the starting
cash. The QuantStats functions used here are the ones its HTML report uses,
with the same periods per year, so ``metrics.json`` and the tearsheet agree.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

METRIC_KEYS = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "max_drawdown_daily", "n_trades", "bars",
               "bars_per_s")


def max_drawdown(values, start_value: float) -> float:
    """Deepest fall of the bar-level equity from its running peak (the start included), as a fraction <= 0.

    This is what the trader lived through; the daily figure (``max_drawdown_daily``,
    the tearsheet's) only sees each day's last bar and misses intraday troughs.
    """
    v = np.concatenate([[float(start_value)], np.asarray(values, dtype=np.float64)])
    if len(v) == 1:
        return 0.0
    peak = np.maximum.accumulate(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, v / peak - 1.0, 0.0)
    return float(dd.min())


def _utc_naive_index(ts_ms) -> pd.DatetimeIndex:
    # QuantStats wants a tz-naive index; our timestamps are UTC, so naive == UTC.
    return pd.to_datetime(np.asarray(ts_ms, dtype=np.int64), unit="ms")


def daily_returns(timestamps_ms, values, start_value: float) -> pd.Series:
    """Compound a per-bar value series into daily returns (tz-naive UTC days)."""
    s = pd.Series(np.asarray(values, dtype=np.float64), index=_utc_naive_index(timestamps_ms))
    daily = s.resample("1D").last().dropna()
    prev = daily.shift(1)
    prev.iloc[0] = start_value
    r = daily / prev - 1.0
    r.name = "returns"
    return r


def benchmark_returns(candles: pd.DataFrame, start_ms: int | None = None) -> pd.Series:
    """Buy-and-hold of the asset, bought at the first bar's open."""
    c = candles if start_ms is None else candles[candles["timestamp"] >= start_ms]
    r = daily_returns(c["timestamp"], c["close"], float(c["open"].iloc[0]))
    r.name = "benchmark"
    return r


def compute_metrics(returns: pd.Series, *, n_trades: int, bars: int, seconds: float, periods: int = 365) -> dict:
    """Headline metrics as plain floats (ints for counts)."""
    import quantstats as qs

    def f(x) -> float:
        x = float(x)
        return x if np.isfinite(x) else float("nan")

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # A flat equity curve makes Sharpe/Sortino 0/0: report NaN (null in
        # JSON) instead of letting QuantStats print a RuntimeWarning.
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            "total_return": f(qs.stats.comp(returns)),
            "cagr": f(qs.stats.cagr(returns, periods=periods)),
            "sharpe": f(qs.stats.sharpe(returns, periods=periods)),
            "sortino": f(qs.stats.sortino(returns, periods=periods)),
            "max_drawdown_daily": f(qs.stats.max_drawdown(returns)),
            "n_trades": int(n_trades),
            "bars": int(bars),
            "bars_per_s": f(bars / seconds) if seconds > 0 else float("nan"),
            "periods_per_year": int(periods),
            "days": int(len(returns)),
        }
