"""Resampling: --timeframe on finer candles, against an independent pandas resample; coarse context feeds
never show a bar before it has closed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fastrader.data.resample import resample_candles
from fastrader.errors import ConfigError
from fastrader.testing.candles import gapping_candles

HOUR = 3_600_000
DAY = 86_400_000
MONDAY = pd.Timestamp("1970-01-05")


def pandas_reference(df, rule, src_ms, origin="epoch"):
    """pandas' own resample, open-time labels; then drop the buckets the data does not fully span."""
    s = df.set_index(pd.to_datetime(df["timestamp"], unit="ms"))
    r = s.resample(rule, label="left", closed="left", origin=origin)
    out = pd.DataFrame({"open": r["open"].first(), "high": r["high"].max(), "low": r["low"].min(),
                        "close": r["close"].last(), "volume": r["volume"].sum(), "n": r["open"].count()})
    out = out[out["n"] > 0].drop(columns="n")  # an empty bucket is a gap, never a bar
    step = pd.Timedelta(rule)
    first, last = s.index[0], s.index[-1] + pd.Timedelta(milliseconds=src_ms)
    out = out[(out.index >= first) & (out.index + step <= last)]
    out.insert(0, "timestamp", (out.index - pd.Timestamp(0)) // pd.Timedelta(milliseconds=1))
    return out.reset_index(drop=True)


@pytest.mark.parametrize("src,rule,origin", [
    (HOUR, "4h", "epoch"), (HOUR, "1D", "epoch"), (HOUR, "7D", MONDAY), (60_000, "15min", "epoch"),
    (60_000, "1h", "epoch"), (15 * 60_000, "2h", "epoch"),
])
def test_resample_matches_pandas(src, rule, origin):
    tf = {"4h": "4h", "1D": "1d", "7D": "1w", "15min": "15m", "1h": "1h", "2h": "2h"}[rule]
    n = 5000 if src == HOUR else 3000
    # starts and ends inside a bucket, and misses ~3% of its candles, some in runs
    df = gapping_candles(n, seed=hash(rule) % 1000, step_ms=src, missing=0.03, start_ms=1_700_000_000_000 + 7 * src)
    df = df.drop(index=df.index[1000:1000 + 300 * (src != HOUR) + 30]).reset_index(drop=True)  # a long gap too
    got = resample_candles(df, tf)
    ref = pandas_reference(df, rule, src, origin)
    assert len(got) > 10
    pd.testing.assert_frame_equal(got.drop(columns="volume"), ref.drop(columns="volume"), check_exact=True,
                                  check_dtype=False)
    # pandas sums with compensated summation; ours is a plain running sum: equal to the last bits
    np.testing.assert_allclose(got["volume"], ref["volume"], rtol=1e-13)
    # the partial first and last buckets are gone; an empty bucket inside stays a gap
    assert got["timestamp"].iloc[0] > df["timestamp"].iloc[0] and got["timestamp"].iloc[-1] < df["timestamp"].iloc[-1]


def test_resample_refuses_finer_or_uneven():
    df = gapping_candles(100, seed=1, missing=0.0)
    with pytest.raises(ConfigError, match="whole multiple"):
        resample_candles(df, "90m")
    with pytest.raises(ConfigError, match="whole multiple"):
        resample_candles(df, "30m")


def test_run_with_timeframe_resamples_the_file(tmp_path):
    from fastrader.run import main

    df = gapping_candles(6000, seed=4, missing=0.02, start_ms=1_700_000_000_000 + 3 * HOUR)
    p = tmp_path / "binance_ETHUSDT_1h.csv"
    df.to_csv(p, index=False, float_format="%.17g")
    out = tmp_path / "o"
    assert main(["--data", str(p), "--timeframe", "4h", "--threshold", "0.3", "--out", str(out), "--no-progress",
                 "--no-tearsheet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["symbol"] == "ETH/USDT" and m["run"]["timeframe"] == "4h"
    want = resample_candles(df, "4h")
    sig = pd.read_csv(out / "signals.csv")
    np.testing.assert_array_equal(sig["timestamp"], want["timestamp"].iloc[len(want) - len(sig):])
    assert m["bars"] == len(sig) and m["n_trades"] > 0


def test_exchange_source_timeframe_resamples_like_the_file(tmp_path):
    from fastrader.run import main
    from fastrader.testing.exchange_server import ExchangeServer

    df = gapping_candles(3000, seed=9, missing=0.02, start_ms=1_700_000_000_000 - 1_700_000_000_000 % HOUR)
    since, until = int(df["timestamp"].iat[0]), int(df["timestamp"].iat[-1]) + HOUR
    common = ["--timeframe", "4h", "--threshold", "0.3", "--no-progress", "--no-tearsheet"]
    with ExchangeServer(df, symbol="SOL/USDT") as server:
        served = server.candles("SOL/USDT")
        assert main(["--exchange", "binance", "--symbol", "SOL/USDT", "--source-timeframe", "1h", "--since", str(since),
                     "--until", str(until), "--api-url", server.url, "--cache-dir", str(tmp_path / "c"),
                     "--out", str(tmp_path / "ex"), *common]) == 0
    p = tmp_path / "sol_usdt_1h.csv"
    served.to_csv(p, index=False, float_format="%.17g")
    assert main(["--data", str(p), "--out", str(tmp_path / "f"), *common]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ex", "f"))
    assert a["run"]["timeframe"] == b["run"]["timeframe"] == "4h" and a["run"]["symbol"] == b["run"]["symbol"]
    for k in ("total_return", "n_trades", "bars", "sharpe"):
        assert a[k] == b[k], k


@pytest.mark.parametrize("n, seed, start_ms", [
    (2400, 12, 1_700_006_400_000 - 1_700_006_400_000 % DAY),  # starts on a day, ends inside one
    (900, 5, 1_700_000_000_000),  # starts and steps off the hour grid (22:13:20 UTC): was a crash at the end
    (24 * 40, 3, 1_700_006_400_000 - 1_700_006_400_000 % DAY),  # ends exactly at a day's close
])
def test_coarse_feed_bar_is_seen_only_after_it_closes(n, seed, start_ms):
    """A strategy's 4h and 1d feeds (Backtrader resampledata): at every 1h bar, the coarse bar it sees is the
    last one that has closed by that bar's open, with the pandas-resampled values."""
    df = gapping_candles(n, seed=seed, missing=0.02, start_ms=start_ms)
    strat_rows, res = watch(df)
    assert len(strat_rows) == len(df)
    ts = df["timestamp"].to_numpy()
    for k, (tf, step) in enumerate((("4h", 4 * HOUR), ("1d", DAY))):
        bars = resample_candles(df, tf)
        ends = bars["timestamp"].to_numpy() + step
        cols = slice(2 + 6 * k, 7 + 6 * k)
        seen_n = np.array([r[1 + 6 * k] for r in strat_rows])
        vals = np.array([r[cols] for r in strat_rows], dtype=float)
        # the last complete bucket whose close is at or before this 1h bar's open
        j = np.searchsorted(ends, ts, side="right") - 1
        has = j >= 0
        assert has.sum() > 100 and (seen_n[~has] == 0).all()  # nothing before the first bucket closed
        want = bars[["open", "high", "low", "close", "volume"]].to_numpy()[j[has]]
        np.testing.assert_allclose(vals[has], want, rtol=1e-12)
        assert (ends[j[has]] <= ts[has]).all()  # never a bucket still open at that bar
        # by the end, every complete bucket and no partial one was delivered (Backtrader would flush the
        # bucket still open when the feed runs out)
        assert watch.final_lens[k] == len(bars)
    assert len(res.trades) == 0 and res.bars == len(df)


def watch(df):
    """Run the CoarseWatcher fixture through fastrader's backtest; its records and the result."""
    from bt_samples import CoarseWatcher

    from fastrader.backtest import run_backtest

    seen = {}

    class Keep(CoarseWatcher):
        def stop(self):
            seen["rows"] = self.seen
            seen["final_lens"] = (len(self.data1), len(self.data2))

    res = run_backtest(df, Keep, context=Keep.coarse_feeds)
    watch.final_lens = seen["final_lens"]
    return seen["rows"], res
