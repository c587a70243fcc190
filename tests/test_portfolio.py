"""Portfolios: several --data files (or --symbol A,B,C from an exchange), one Backtrader clock.

Checked independently: Backtrader's multi-data sample gives the same trades as
a hand-built Cerebro; portfolio equity is cash plus every position marked at
its symbol's last close (numpy); a symbol's signals are computed on its own
bars only, and nothing happens for it at a time it has no candle.
"""

from __future__ import annotations

import json
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from fastrader.backtest import bt_num_to_ms
from fastrader.errors import ConfigError
from fastrader.run import main
from fastrader.testing.candles import gapping_candles
from fastrader.testing.exchange_server import ExchangeServer

HOUR = 3_600_000
T0 = 1_700_006_400_000 - 1_700_006_400_000 % HOUR  # after the shipped model's training range
SAMPLES = Path(__file__).resolve().parent / "bt_samples.py"
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
COMMON = ["--no-progress", "--no-tearsheet", "--cash", "10000"]


def _market(i, n=900):
    # different gaps per symbol, different first bars (SOL starts 5 hours later)
    return gapping_candles(n, seed=31 + i, missing=0.03, start_ms=T0 + (5 * HOUR if i == 2 else 0))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pf")
    out = {}
    for i, sym in enumerate(SYMBOLS):
        p = d / f"binance_{sym.replace('/', '')}_1h.csv"
        _market(i).to_csv(p, index=False, float_format="%.8f")  # 8 decimals: what the test exchange serves
        out[sym] = p
    return d, out


@pytest.fixture(scope="module")
def file_run(files):
    d, paths = files
    out = d / "run"
    argv = [a for p in paths.values() for a in ("--data", str(p))]
    assert main([*argv, "--out", str(out), "--threshold", "0.3", "--no-progress", "--cash", "10000"]) == 0
    return out


def _last_close(frame, ts):
    """Each timestamp's mark: the symbol's last close at or before it (NaN before its first candle)."""
    t = frame["timestamp"].to_numpy()
    idx = np.searchsorted(t, ts, side="right") - 1
    return np.where(idx >= 0, frame["close"].to_numpy()[np.maximum(idx, 0)], np.nan)


def test_equity_is_cash_plus_positions_marked_to_market(files, file_run):
    _, paths = files
    eq = pd.read_csv(file_run / "equity.csv")
    assert list(eq.columns[:2]) == ["timestamp", "symbol"]
    ts = np.unique(eq["timestamp"].to_numpy())
    assert (eq.groupby("timestamp").size() == 3).all()
    wide = eq.pivot(index="timestamp", columns="symbol", values="position").loc[ts]
    cash = eq.groupby("timestamp")["cash"].first().loc[ts].to_numpy()
    equity = eq.groupby("timestamp")["equity"].first().loc[ts].to_numpy()
    marked = np.zeros(len(ts))
    for sym, p in paths.items():
        px = _last_close(pd.read_csv(p), ts)
        pos = wide[sym].to_numpy()
        assert not (np.isnan(px) & (pos != 0)).any()
        marked += np.where(pos != 0, pos * np.nan_to_num(px), 0.0)
    assert np.abs(wide.to_numpy()).sum() > 0  # it traded
    np.testing.assert_allclose(equity, cash + marked, rtol=1e-10, atol=1e-6)
    # the clock is the union of the symbols' bars: every bar of every file, nothing invented
    union = np.unique(np.concatenate([pd.read_csv(p)["timestamp"].to_numpy() for p in paths.values()]))
    np.testing.assert_array_equal(ts, union)


def test_each_symbol_signal_is_its_own_and_never_filled(files, file_run):
    from fastrader.model.checkpoint import load
    from fastrader.signals import SignalModel

    _, paths = files
    sig = pd.read_csv(file_run / "signals.csv")
    orders = pd.read_csv(file_run / "orders.csv")
    model = SignalModel(load(None))
    for sym, p in paths.items():
        f = pd.read_csv(p)
        s = sig[sig["symbol"] == sym]
        # one decision per candle of that symbol, none at another symbol's extra bars
        np.testing.assert_array_equal(s["timestamp"].to_numpy(), f["timestamp"].to_numpy())
        # the model over that file alone: the gaps of the others are not in it, nothing forward-filled
        np.testing.assert_allclose(s["signal"].to_numpy(), model.precompute(f), rtol=1e-9, atol=1e-12, equal_nan=True)
        filled = orders[(orders["status"] == "filled")]
        assert filled["final_time"].isin(np.unique(sig["timestamp"])).all()


def test_trades_and_metrics_per_symbol(files, file_run):
    m = json.loads((file_run / "metrics.json").read_text())
    trades = pd.read_csv(file_run / "trades.csv")
    assert trades.columns[0] == "symbol" and set(trades["symbol"]) == set(SYMBOLS)
    assert m["run"]["symbols"] == list(SYMBOLS) and m["run"]["timeframe"] == "1h"
    assert set(m["symbols"]) == set(SYMBOLS)
    for sym in SYMBOLS:
        t = trades[trades["symbol"] == sym]
        assert m["symbols"][sym]["n_trades"] == len(t)
        assert m["symbols"][sym]["pnl_net"] == pytest.approx(t["pnl_net"].sum(), rel=1e-9)
    assert m["n_trades"] == len(trades)
    # the net P&L of the closed trades plus the open positions' P&L is the equity's change
    assert sum(v["pnl_net"] for v in m["symbols"].values()) == pytest.approx(m["final_equity"] - 10_000, abs=400)
    html = (file_run / "tearsheet.html").read_text()
    assert "Equal-weight buy &amp; hold" in html or "Equal-weight buy & hold" in html
    assert 'id="fastrader-chart"' in html and (file_run / "chart.png").stat().st_size > 10_000


def test_equal_weight_benchmark_against_pandas(files):
    from fastrader.markets import equal_weight_benchmark

    _, paths = files
    frames = {s: pd.read_csv(p) for s, p in paths.items()}
    got = equal_weight_benchmark(frames)
    # reference: each third of the money grows with close / first open, marked at its last close
    idx = pd.to_datetime(np.unique(np.concatenate([f["timestamp"] for f in frames.values()])), unit="ms")
    parts = []
    for f in frames.values():
        s = pd.Series(f["close"].to_numpy() / f["open"].iloc[0], index=pd.to_datetime(f["timestamp"], unit="ms"))
        parts.append(s.reindex(idx).ffill().fillna(1.0) / 3)
    value = sum(parts)
    daily = value.groupby(value.index.floor("D")).last()
    ref = daily / daily.shift(1).fillna(1.0) - 1
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-12)


def test_portfolio_from_the_test_exchange_equals_the_files(files, file_run, tmp_path):
    d, paths = files
    frames = {s: pd.read_csv(p) for s, p in paths.items()}
    since = min(int(f["timestamp"].iat[0]) for f in frames.values())
    until = max(int(f["timestamp"].iat[-1]) for f in frames.values()) + HOUR
    out = tmp_path / "ex"
    with ExchangeServer(frames, extra_symbols=()) as server:
        rc = main(["--exchange", "binance", "--symbol", ",".join(SYMBOLS), "--since", str(since), "--until", str(until),
                   "--api-url", server.url, "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                   "--threshold", "0.3", "--no-progress", "--no-tearsheet", "--cash", "10000"])
        assert rc == 0
    a = json.loads((file_run / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for k in ("total_return", "sharpe", "max_drawdown", "n_trades", "bars", "final_equity"):
        assert a[k] == b[k], k
    assert a["symbols"] == b["symbols"]
    pd.testing.assert_frame_equal(pd.read_csv(file_run / "equity.csv"), pd.read_csv(out / "equity.csv"))


def _pandas_feed(f):
    df = f.set_index(pd.to_datetime(f["timestamp"], unit="ms"))[["open", "high", "low", "close", "volume"]]
    return bt.feeds.PandasData(dataname=df, openinterest=None)


def test_backtraders_multidata_sample_runs_unchanged(tmp_path):
    import bt_samples as mod  # tests/ is on the path (conftest)
    # two correlated markets with different missing bars
    a = gapping_candles(1200, seed=3, missing=0.02, start_ms=T0)
    b = a.copy()
    b[["open", "high", "low", "close"]] *= np.exp(np.random.default_rng(4).normal(0, 0.002, len(b)))[:, None]
    b["high"] = b[["open", "high", "close"]].max(axis=1)
    b["low"] = b[["open", "low", "close"]].min(axis=1)
    b = b.drop(index=b.index[5::97]).reset_index(drop=True)
    pa, pb = tmp_path / "aaa_usdt_1h.csv", tmp_path / "bbb_usdt_1h.csv"
    a.to_csv(pa, index=False, float_format="%.17g")
    b.to_csv(pb, index=False, float_format="%.17g")
    out = tmp_path / "run"
    assert main(["--data", str(pa), "--data", str(pb), "--strategy", f"{SAMPLES}:MultiDataSMACross", "--out", str(out),
                 "--commission", "0", "--slippage-bps", "0", "--borrow-rate", "0", "--no-progress",
                 "--no-tearsheet"]) == 0
    got = pd.read_csv(out / "trades.csv")

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(_pandas_feed(a), name="AAA/USDT")
    cerebro.adddata(_pandas_feed(b), name="BBB/USDT")
    cerebro.broker.setcash(10_000)
    cerebro.addstrategy(mod.MultiDataSMACross)
    fills = cerebro.run()[0].fills
    assert len(fills) >= 10
    assert {f[1] for f in fills} == {"AAA/USDT"}  # orders on data0 only
    buys, sells = fills[0::2], fills[1::2]
    assert all(f[2] > 0 for f in buys) and all(f[2] < 0 for f in sells)
    n = len(sells)
    assert len(got) == n and set(got["symbol"]) == {"AAA/USDT"}
    np.testing.assert_array_equal(got["open_time"], bt_num_to_ms([f[0] for f in buys[:n]]))
    np.testing.assert_array_equal(got["close_time"], bt_num_to_ms([f[0] for f in sells]))
    np.testing.assert_allclose(got["entry_price"], [f[3] for f in buys[:n]], rtol=1e-12)
    np.testing.assert_allclose(got["exit_price"], [f[3] for f in sells], rtol=1e-12)
    np.testing.assert_allclose(got["size"], 10.0)


def test_bad_portfolio_options(tmp_path, files, capsys):
    from fastrader.markets import data_paths, name_markets

    _, paths = files
    p = [str(x) for x in paths.values()]
    with pytest.raises(ConfigError, match="no file matches"):
        data_paths([str(tmp_path / "nothing_*.csv")])
    with pytest.raises(ConfigError, match="3 --data file"):
        name_markets(p, ["A/USDT", "B/USDT"])
    with pytest.raises(ConfigError, match="both BTC/USDT"):
        name_markets([p[0], str(tmp_path / "other_BTCUSDT_1h.csv")], [])
    rc = main(["--data", p[0], "--data", p[1], "--symbol", "X/USDT", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err
