"""Coarser candles from finer ones: ``--timeframe 4h`` on 1h (or 1m) candles, and coarse context feeds.

:func:`resample_candles` groups candles into buckets of the target timeframe,
aligned to the Unix epoch (so 4h buckets start at 00:00, 04:00, ... UTC and
days at midnight UTC; weeks start on Monday, as exchanges count them). A bar
is labelled by its open time: the bucket's start. Open is the first candle's
open, high the max, low the min, close the last candle's close, volume the
sum.

Only complete bars are kept: the first bucket when the data starts after its
start, and the last when the data ends before its end, are dropped, because
their open or close would not be the bar's. A bucket inside the data with a
candle missing is kept (the exchange had no candle there, and the bar's time
is over); a bucket with no candle at all is a gap, and stays one: nothing is
filled.

:func:`add_coarse_feed` gives a strategy the same symbol at a coarser
timeframe through Backtrader's own ``resampledata``. Backtrader reads a bar's
stamp as its end, so the fine candles are handed to it stamped just before
their close (open + one step - 1 ms): its buckets are then exactly the
open-time buckets above, and the coarse bar reaches the strategy at the first
fine bar that opens at or after the coarse bar's close, never earlier.
"""

from __future__ import annotations

import backtrader as bt
from backtrader.resamplerfilter import Resampler
import numpy as np
import pandas as pd

from fastrader.errors import ConfigError

_WEEK_MS = 604_800_000
_MONDAY_MS = 4 * 86_400_000  # 1970-01-01 was a Thursday; 1970-01-05 a Monday


def _origin(step_ms: int) -> int:
    return _MONDAY_MS if step_ms % _WEEK_MS == 0 else 0


def resample_candles(df: pd.DataFrame, timeframe: str, source_step_ms: int | None = None) -> pd.DataFrame:
    """Candles (ccxt layout, ascending) resampled to ``timeframe``; only complete bars (see the module)."""
    from fastrader.data.gaps import typical_step_ms
    from fastrader.data.timeframes import timeframe_ms

    if timeframe.endswith("M"):
        raise ConfigError("resampling to months is not supported (their length varies); use 1w or 1d")
    step = timeframe_ms(timeframe)
    ts = df["timestamp"].to_numpy(np.int64)
    if len(ts) == 0:
        return df.iloc[:0].copy()
    src = int(source_step_ms or (typical_step_ms(ts) if len(ts) > 1 else step))
    if step < src or step % src:
        raise ConfigError(f"cannot resample {_label(src)} candles to {timeframe}: the target must be a whole "
                          f"multiple of the candles' spacing")
    origin = _origin(step)
    bucket = (ts - origin) // step * step + origin
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(ts)]
    o = df["open"].to_numpy(np.float64)
    h = df["high"].to_numpy(np.float64)
    lo = df["low"].to_numpy(np.float64)
    c = df["close"].to_numpy(np.float64)
    v = df["volume"].to_numpy(np.float64)
    out = pd.DataFrame({
        "timestamp": bucket[starts],
        "open": o[starts],
        "high": np.maximum.reduceat(h, starts),
        "low": np.minimum.reduceat(lo, starts),
        "close": c[ends - 1],
        "volume": np.add.reduceat(v, starts),
    })
    keep = np.ones(len(out), dtype=bool)
    if ts[0] > bucket[0]:  # the data starts inside its first bucket: that bar's open is not in the data
        keep[0] = False
    if ts[-1] + src < bucket[-1] + step:  # the data ends inside its last bucket: the bar has not closed
        keep[-1] = False
    return out[keep].reset_index(drop=True)


def _label(ms: int) -> str:
    from fastrader.markets import timeframe_label

    return timeframe_label(ms)


def bt_timeframe(timeframe: str) -> tuple[int, int]:
    """'4h' -> (bt.TimeFrame.Minutes, 240), '1d' -> (Days, 1), '1w' -> (Weeks, 1)."""
    from fastrader.data.timeframes import timeframe_ms

    ms = timeframe_ms(timeframe)
    if ms % _WEEK_MS == 0:
        return bt.TimeFrame.Weeks, ms // _WEEK_MS
    if ms % 86_400_000 == 0:
        return bt.TimeFrame.Days, ms // 86_400_000
    if ms % 60_000 == 0:
        return bt.TimeFrame.Minutes, ms // 60_000
    return bt.TimeFrame.Seconds, ms // 1000


class ClosedOnly(Resampler):
    """Backtrader's Resampler, except that the bucket still open when the feed runs out is dropped
    unless ``last_closed`` says the data reached its end (Backtrader would deliver it, incomplete)."""

    params = (("last_closed", False),)

    def last(self, data):
        return super().last(data) if self.p.last_closed else False


def add_coarse_feed(cerebro: bt.Cerebro, frame: pd.DataFrame, timeframe: str, name: str):
    """Add ``name@timeframe``: ``frame``'s symbol resampled by Backtrader, for context (never traded).

    The returned data carries ``fr_context = True``; :class:`~fastrader.strategy.ModelStrategy`
    and the analyzers leave it alone.
    """
    from fastrader.data.feed import make_feed
    from fastrader.data.gaps import typical_step_ms
    from fastrader.data.timeframes import timeframe_ms

    ts = frame["timestamp"].to_numpy(np.int64)
    if len(ts) == 0:
        raise ConfigError(f"{name}: no candles for a {timeframe} context feed")
    step = int(typical_step_ms(ts)) if len(ts) > 1 else 0
    coarse = timeframe_ms(timeframe)
    origin = _origin(coarse)
    start = (ts - origin) // coarse * coarse + origin
    end = start + coarse
    # A first bucket that the data starts inside is left out (its open is not in the data), and a last
    # one that it ends inside is never flushed when the feed runs out (ClosedOnly), so only complete
    # bars are delivered, as in resample_candles.
    keep = start >= (start[0] if ts[0] == start[0] else start[0] + coarse)
    closed = frame.loc[keep, ["timestamp", "open", "high", "low", "close", "volume"]].copy()
    if len(closed) == 0:
        raise ConfigError(f"{name}: the data holds no complete {timeframe} bar, so its {timeframe} context "
                          "feed would stay empty")
    # Backtrader's resampler reads a bar's stamp as its end: stamp each candle 1 ms before its close (or
    # before its bucket's end, for candles not aligned to the coarse grid), so a day's last hour stays in
    # that day and a 4h bucket holds exactly the candles that open inside it.
    closed["timestamp"] = np.minimum(ts[keep] + step - 1, end[keep] - 1)
    base = make_feed(closed.reset_index(drop=True), name=f"{name}@close")
    tf, comp = bt_timeframe(timeframe)
    # cerebro.resampledata with a resampler that knows whether the data's last bucket closed
    base.addfilter(ClosedOnly, timeframe=tf, compression=comp, last_closed=bool(ts[-1] + step >= end[-1]))
    data = cerebro.adddata(base, name=f"{name}@{timeframe}")
    cerebro._doreplay = True  # what resampledata sets: the data is resampled, so Cerebro steps bar by bar
    data.fr_context = True
    return data
