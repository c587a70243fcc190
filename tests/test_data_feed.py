"""CandleFeed: every bar reaches Backtrader unchanged, in UTC, with the right timeframe."""

from __future__ import annotations

import datetime as dt

import backtrader as bt
import numpy as np
import pytest

from fastrader.data import add_feeds, infer_timeframe, make_feed
from fastrader.errors import DataError
from fastrader.testing import random_candles


class Recorder(bt.Strategy):
    def __init__(self):
        self.rows = {d._name: [] for d in self.datas}

    def next(self):
        for d in self.datas:
            if len(d) and d.datetime.datetime(0) == self.datas[0].datetime.datetime(0):
                self.rows[d._name].append(
                    (d.datetime.datetime(0), d.open[0], d.high[0], d.low[0], d.close[0], d.volume[0], d.signal[0])
                )


def _utc(ms):
    return dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=int(ms))


def test_every_bar_and_signal_reaches_the_strategy():
    df = random_candles(500, seed=11, step_ms=3_600_000)
    rng = np.random.default_rng(11)
    df["signal"] = rng.normal(size=len(df))
    df.loc[::7, "signal"] = np.nan
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(make_feed(df, name="BTC/USDT"))
    cerebro.addstrategy(Recorder)
    rows = cerebro.run()[0].rows["BTC/USDT"]
    assert len(rows) == len(df)
    for (when, o, h, l, c, v, s), ref in zip(rows, df.itertuples(index=False)):
        assert when == _utc(ref.timestamp)
        assert (o, h, l, c, v) == (ref.open, ref.high, ref.low, ref.close, ref.volume)
        assert (np.isnan(s) and np.isnan(ref.signal)) or s == ref.signal


def test_signal_defaults_to_nan():
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(make_feed(random_candles(30, seed=3)))
    cerebro.addstrategy(Recorder)
    rows = next(iter(cerebro.run()[0].rows.values()))
    assert len(rows) == 30 and all(np.isnan(r[-1]) for r in rows)


@pytest.mark.parametrize(
    "step_ms, expected",
    [
        (60_000, (bt.TimeFrame.Minutes, 1)),
        (15 * 60_000, (bt.TimeFrame.Minutes, 15)),
        (3_600_000, (bt.TimeFrame.Minutes, 60)),
        (4 * 3_600_000, (bt.TimeFrame.Minutes, 240)),
        (86_400_000, (bt.TimeFrame.Days, 1)),
        (7 * 86_400_000, (bt.TimeFrame.Weeks, 1)),
        (1000, (bt.TimeFrame.Seconds, 1)),
    ],
)
def test_timeframe_inferred_from_spacing_despite_gaps(step_ms, expected):
    ts = 1_600_000_000_000 + step_ms * np.arange(100)
    ts = np.delete(ts, [10, 11, 12, 50])  # gaps must not change the answer
    assert infer_timeframe(ts) == expected
    with pytest.raises(DataError):
        infer_timeframe(ts[:1])


def test_resampling_hourly_to_daily_matches_pandas():
    # Start at midnight UTC so each daily bar holds 24 hourly ones.
    df = random_candles(24 * 20, seed=5, start_ms=1_609_459_200_000)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.resampledata(make_feed(df, name="h"), timeframe=bt.TimeFrame.Days, compression=1, name="d")
    cerebro.addstrategy(Recorder)
    rows = cerebro.run()[0].rows["d"]
    ref = (
        df.assign(day=(df["timestamp"] // 86_400_000))
        .groupby("day")
        .agg(open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"), volume=("volume", "sum"))
    )
    assert len(rows) == len(ref) == 20
    for got, (_, r) in zip(rows, ref.iterrows()):
        assert got[1:5] == (r.open, r.high, r.low, r.close)
        assert got[5] == pytest.approx(r.volume, rel=1e-12)


def test_several_symbols_in_one_run():
    a = random_candles(100, seed=1)
    b = random_candles(100, seed=2)
    cerebro = bt.Cerebro(stdstats=False)
    feeds = add_feeds(cerebro, {"BTC/USDT": a, "ETH/USDT": b})
    assert [f._name for f in feeds] == ["BTC/USDT", "ETH/USDT"]
    cerebro.addstrategy(Recorder)
    rows = cerebro.run()[0].rows
    assert [r[4] for r in rows["BTC/USDT"]] == a["close"].tolist()
    assert [r[4] for r in rows["ETH/USDT"]] == b["close"].tolist()


def test_two_symbols_downloaded_and_fed_together(tmp_path):
    from fastrader.data import load_histories
    from fastrader.testing.exchange_server import ExchangeServer

    hour = 3_600_000
    start = 1_600_000_000_000 - 1_600_000_000_000 % hour
    market = {"BTC/USDT": random_candles(600, seed=61, start_ms=start), "ETH/USDT": random_candles(600, seed=62, start_ms=start)}
    with ExchangeServer(market) as server:
        frames = load_histories(
            "binance", "BTC/USDT,ETH/USDT", "1h", start, start + 600 * hour, cache_dir=tmp_path, api_url=server.url, progress=False
        )
        refs = {s: server.candles(s) for s in market}
    assert list(frames) == ["BTC/USDT", "ETH/USDT"]
    cerebro = bt.Cerebro(stdstats=False)
    add_feeds(cerebro, frames)
    cerebro.addstrategy(Recorder)
    rows = cerebro.run()[0].rows
    for symbol, ref in refs.items():
        assert [r[4] for r in rows[symbol]] == ref["close"].tolist()
        assert [r[0] for r in rows[symbol]] == [_utc(t) for t in ref["timestamp"]]


def test_bulk_preload_equals_bar_by_bar_loading(monkeypatch):
    """CandleFeed.preload fills all bars at once; Backtrader's own preload loads them one by one through
    _load. The lines a strategy reads, the ticks the broker fills at and the fills are the same bit for bit,
    and so is Backtrader's other mode (no preload, one bar at a time) except the last bar's ticks, which
    its preloaded mode never fills."""
    import backtrader as bt

    from fastrader.data import make_feed
    from fastrader.data.feed import CandleFeed
    from fastrader.testing.candles import gapping_candles

    df = gapping_candles(700, seed=21, missing=0.03)
    df["signal"] = np.random.default_rng(4).normal(0, 1, len(df))
    df.loc[df.index[::17], "signal"] = np.nan

    class Seen(bt.Strategy):
        def __init__(self):
            self.rows = []

        def next(self):
            d = self.data
            self.rows.append((d.datetime[0], d.open[0], d.high[0], d.low[0], d.close[0], d.volume[0], d.signal[0],
                              d.tick_open, d.tick_close, d.tick_last))
            if len(self) % 50 == 0:
                self.order_target_percent(target=0.5 if len(self) % 100 else -0.5)

    def run(preload):
        c = bt.Cerebro(stdstats=False, preload=preload, runonce=preload)
        c.adddata(make_feed(df, name="X"))
        c.addstrategy(Seen)
        strat = c.run()[0]
        return np.array(strat.rows, dtype=np.float64), c.broker.getvalue()

    ours, v_ours = run(True)
    unpreloaded, v_unpre = run(False)
    with monkeypatch.context() as m:
        m.setattr(CandleFeed, "preload", bt.feed.DataBase.preload)
        theirs, v_theirs = run(True)
    assert len(ours) == len(df) and np.isfinite(ours[:, 1:6]).all()
    assert np.array_equal(ours, theirs, equal_nan=True) and v_ours == v_theirs
    assert np.array_equal(ours[:-1], unpreloaded[:-1], equal_nan=True) and v_ours == v_unpre
