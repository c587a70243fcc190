"""Finding missing candles, and filling them only when asked.

Exchanges have real outages (the Binance BTC/USDT hourly history has ten), so
gaps are reported with where they are and never filled silently. Filling is an
explicit choice: flat candles at the previous close with zero volume, which is
what "no trading happened" looks like to a backtest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fastrader.data.candles import COLUMNS
from fastrader.data.timeframes import format_ms


@dataclass(frozen=True)
class Gap:
    start: int  # open time of the first missing candle (UTC ms)
    end: int  # open time of the next candle present (UTC ms)
    missing: int  # candles missing

    def __str__(self) -> str:
        # The first missing candle and how many follow; the next present one is ``end``.
        return f"{format_ms(self.start)} ({self.missing} missing)"


@dataclass(frozen=True)
class GapReport:
    gaps: tuple[Gap, ...]
    rows: int
    timeframe_ms: int

    @property
    def count(self) -> int:
        return len(self.gaps)

    @property
    def missing(self) -> int:
        return sum(g.missing for g in self.gaps)

    @property
    def largest(self) -> Gap | None:
        return max(self.gaps, key=lambda g: g.missing) if self.gaps else None

    def summary(self, show: int = 5) -> str:
        if not self.gaps:
            return "no gaps"
        text = f"{self.count} gaps, {self.missing} candles missing, largest {self.largest}"
        listed = "; ".join(str(g) for g in self.gaps[:show])
        more = f"; ... {self.count - show} more" if self.count > show else ""
        return f"{text}; at {listed}{more}"


def typical_step_ms(timestamps) -> int:
    """The most common spacing of the candles in ms (gaps do not change it); 0 for fewer than 2."""
    steps = np.diff(np.asarray(timestamps, dtype=np.int64))
    steps = steps[steps > 0]
    if len(steps) == 0:
        return 0
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


def find_gaps(timestamps, timeframe_ms: int) -> GapReport:
    """Gaps between consecutive candles further apart than one timeframe.

    Month candles vary in length, so for timeframes of four weeks or more a
    step counts as a gap only beyond 1.5 timeframes.
    """
    ts = np.asarray(timestamps, dtype=np.int64)
    if len(ts) < 2:
        return GapReport((), len(ts), timeframe_ms)
    steps = np.diff(ts)
    tolerance = timeframe_ms * 1.5 if timeframe_ms >= 28 * 86_400_000 else timeframe_ms
    where = np.flatnonzero(steps > tolerance)
    gaps = tuple(
        Gap(start=int(ts[i] + timeframe_ms), end=int(ts[i + 1]), missing=int(round(steps[i] / timeframe_ms)) - 1)
        for i in where
    )
    return GapReport(gaps, len(ts), timeframe_ms)


def fill_gaps(candles: pd.DataFrame, timeframe_ms: int) -> pd.DataFrame:
    """Insert the missing candles as flat bars at the previous close, volume 0."""
    ts = candles["timestamp"].to_numpy(dtype=np.int64)
    if len(ts) < 2:
        return candles.copy()
    full = np.arange(ts[0], ts[-1] + 1, timeframe_ms, dtype=np.int64)
    if len(full) == len(ts) and np.array_equal(full, ts):
        return candles.reset_index(drop=True).copy()
    if not np.isin(ts, full).all():
        raise ValueError("candles are not aligned to a regular timeframe grid; cannot fill")
    frame = candles.set_index("timestamp").reindex(full)
    close = frame["close"].ffill()
    for name in ("open", "high", "low", "close"):
        frame[name] = frame[name].fillna(close)
    frame["volume"] = frame["volume"].fillna(0.0)
    frame.index.name = "timestamp"
    return frame.reset_index()[list(COLUMNS)]
