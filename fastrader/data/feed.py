"""Backtrader data feeds built from candle frames.

:class:`CandleFeed` reads straight from numpy arrays instead of going through
``PandasData``'s per-cell ``iloc`` (an order of magnitude slower on long
histories). Datetimes are naive UTC, as Backtrader expects when no ``tz`` is
given, and timeframe/compression come from the candle spacing so that
``cerebro.resampledata`` works without the user repeating them.
"""

from __future__ import annotations

import datetime as _dt

import backtrader as bt
import numpy as np
import pandas as pd

from fastrader.data.candles import COLUMNS, validate_candles
from fastrader.errors import DataError

_MINUTE_MS = 60_000
_DAY_MS = 86_400_000
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


def infer_timeframe(timestamps_ms) -> tuple[int, int]:
    """Return (bt.TimeFrame value, compression) from candle spacing in ms.

    Uses the most common spacing, so gaps in the data do not change the
    answer. Fewer than two candles carry no spacing: that is an error.
    """
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    if len(ts) < 2:
        raise DataError("cannot infer the timeframe from fewer than 2 candles; pass timeframe= and compression=")
    steps = np.diff(ts)
    steps = steps[steps > 0]
    if len(steps) == 0:
        raise DataError("cannot infer the timeframe: all timestamps are equal")
    values, counts = np.unique(steps, return_counts=True)
    step = int(values[np.argmax(counts)])
    if 28 * _DAY_MS <= step <= 31 * _DAY_MS:
        return bt.TimeFrame.Months, 1
    if step % (7 * _DAY_MS) == 0:
        return bt.TimeFrame.Weeks, step // (7 * _DAY_MS)
    if step % _DAY_MS == 0:
        return bt.TimeFrame.Days, step // _DAY_MS
    if step % _MINUTE_MS == 0:
        return bt.TimeFrame.Minutes, step // _MINUTE_MS
    if step % 1000 == 0:
        return bt.TimeFrame.Seconds, step // 1000
    return bt.TimeFrame.MicroSeconds, step * 1000


def ms_to_bt_num(ms: int) -> float:
    """UTC milliseconds to Backtrader's float day number, exactly as bt.date2num does."""
    days, rem = divmod(int(ms), _DAY_MS)
    dt = _dt.datetime.fromordinal(_EPOCH_ORDINAL + days) + _dt.timedelta(milliseconds=rem)
    return bt.date2num(dt)


def ms_to_bt_nums(ms) -> np.ndarray:
    """:func:`ms_to_bt_num` over an array, bit for bit.

    bt.date2num adds the day ordinal and the hour fraction (and smaller parts)
    with math.fsum, i.e. rounded once. For stamps on whole hours that is one
    float addition, which numpy rounds the same way; other stamps take the
    exact scalar path.
    """
    ms = np.asarray(ms, dtype=np.int64)
    days, rem = np.divmod(ms, _DAY_MS)
    out = (days + (_EPOCH_ORDINAL)).astype(np.float64) + (rem // 3_600_000) / 24.0
    odd = np.flatnonzero(rem % 3_600_000)
    for i in odd:
        out[i] = ms_to_bt_num(int(ms[i]))
    return out


class CandleFeed(bt.feed.DataBase):
    """A Backtrader feed over a candle frame (ccxt layout) plus a ``signal`` line.

    ``dataname`` is a DataFrame with the columns timestamp (UTC ms), open,
    high, low, close, volume and optionally ``signal`` (NaN where missing).
    ``timeframe``/``compression`` default to what the spacing implies.
    """

    lines = ("signal",)
    params = (
        ("timeframe", None),
        ("compression", None),
    )

    def __init__(self):
        frame = self.p.dataname
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"CandleFeed needs a pandas DataFrame, got {type(frame).__name__}")
        candles = validate_candles(frame, source=self.p.name or "feed data")
        if len(candles) == 0:
            raise DataError(f"{self.p.name or 'feed data'}: no candles to feed")
        if self.p.timeframe is None or self.p.compression is None:
            tf, comp = infer_timeframe(candles["timestamp"].to_numpy())
            if self.p.timeframe is None:
                self.p.timeframe = tf
            if self.p.compression is None:
                self.p.compression = comp
        self._arrays = {name: candles[name].to_numpy(dtype=np.float64) for name in COLUMNS[1:]}
        self._arrays["openinterest"] = np.zeros(len(candles))
        signal_col = next((c for c in frame.columns if str(c).lower() == "signal"), None)
        if signal_col is None:
            signal = np.full(len(candles), np.nan)
        else:
            signal = pd.to_numeric(frame[signal_col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        self._arrays["signal"] = signal
        self._dtnum = ms_to_bt_nums(candles["timestamp"].to_numpy())
        self._timestamps = candles["timestamp"].to_numpy()
        self._idx = -1

    def start(self):
        super().start()
        self._idx = -1
        # (attribute, line) for every line but datetime, for the tick_* copies below
        self._ticks = tuple(("tick_" + a, getattr(self.lines, a)) for a in self.getlinealiases() if a != "datetime")
        self._tick0 = "tick_" + self._getlinealias(0)  # Backtrader's "is this bar ticked yet" mark
        self._tick0_line = getattr(self.lines, self._getlinealias(0))
        self._tick_none = dict.fromkeys([name for name, _ in self._ticks] + ["tick_last"])

    def preload(self):
        """Backtrader's preload (``while self.load(): pass``), all bars at once.

        It fills each line's buffer with the same float64 values, in the same
        order, that :meth:`_load` would write one bar at a time. Anything that
        the per-bar path would treat specially (filters such as a resampler,
        an input timezone, from/to dates, a bounded buffer) takes that path.
        """
        lines = [self.lines.datetime, self.lines.open, self.lines.high, self.lines.low, self.lines.close,
                 self.lines.volume, self.lines.openinterest, self.lines.signal]
        plain = (not self._filters and not self._ffilters and not self._tzinput and not self._barstack
                 and not self._barstash and self.fromdate == float("-inf") and self.todate == float("inf")
                 and self._idx == -1 and self.lines.fullsize() == 8 and all(
                     getattr(ln, "mode", None) == ln.UnBounded and len(ln.array) == 0 for ln in lines))
        if not plain:
            return super().preload()
        n = len(self._dtnum)
        a = self._arrays
        for ln, values in zip(lines, (self._dtnum, a["open"], a["high"], a["low"], a["close"], a["volume"],
                                      a["openinterest"], a["signal"])):
            ln.array.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
            ln.idx += n  # what n forward() calls leave behind
            ln.lencount += n
        self._idx = n - 1
        self._last()
        self.home()

    # Backtrader calls these two on every bar of every feed; its own versions look each line up by name.
    # Neither Backtrader's line classes nor this one intercept attribute writes, so the tick_* values
    # go straight into the instance's dict.
    def _tick_nullify(self):
        self.__dict__.update(self._tick_none)

    def _tick_fill(self, force=False):
        d = self.__dict__
        if force or d.get(self._tick0) is None:
            for name, ln in self._ticks:
                d[name] = ln.array[ln.idx]
            ln = self._tick0_line
            d["tick_last"] = ln.array[ln.idx]

    def _load(self):
        self._idx += 1
        i = self._idx
        if i >= len(self._dtnum):
            return False
        lines = self.lines
        lines.datetime[0] = self._dtnum[i]
        lines.open[0] = self._arrays["open"][i]
        lines.high[0] = self._arrays["high"][i]
        lines.low[0] = self._arrays["low"][i]
        lines.close[0] = self._arrays["close"][i]
        lines.volume[0] = self._arrays["volume"][i]
        lines.openinterest[0] = 0.0
        lines.signal[0] = self._arrays["signal"][i]
        return True


def make_feed(df: pd.DataFrame, name: str | None = None, **kwargs) -> CandleFeed:
    """Build a :class:`CandleFeed` from a candle frame (uses ``df['signal']`` if present)."""
    feed = CandleFeed(dataname=df, name=name or "", **kwargs)
    return feed


def add_feeds(cerebro: bt.Cerebro, frames: dict[str, pd.DataFrame], **kwargs) -> list[CandleFeed]:
    """Add one feed per symbol (name -> frame) to ``cerebro``, in the dict's order."""
    feeds = []
    for name, frame in frames.items():
        feed = make_feed(frame, name=name, **kwargs)
        cerebro.adddata(feed, name=name)
        feeds.append(feed)
    return feeds


__all__ = ["CandleFeed", "make_feed", "add_feeds", "infer_timeframe", "ms_to_bt_num", "ms_to_bt_nums"]
