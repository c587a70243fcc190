"""--signals with one column per symbol drives a portfolio; missing or extra rows are errors, never filled;
and the run names its real instruments."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fastrader.data.files import exact_float_kwargs
from fastrader.markets import instrument_from_filename
from fastrader.run import main
from fastrader.testing.candles import gapping_candles

HOUR = 3_600_000
T0 = 1_700_006_400_000 - 1_700_006_400_000 % HOUR


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = tmp_path_factory.mktemp("sig")
    a = gapping_candles(700, seed=1, missing=0.03, start_ms=T0)
    b = gapping_candles(700, seed=2, missing=0.03, start_ms=T0 + 3 * HOUR)
    pa, pb = d / "binance_BTCUSDT_1h.csv", d / "ETH-USDT-1h.csv"
    a.to_csv(pa, index=False)
    b.to_csv(pb, index=False)
    ts = np.union1d(a["timestamp"], b["timestamp"])
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"timestamp": ts})
    for name, f in (("BTC/USDT", a), ("ETHUSDT", b)):
        col = pd.Series(np.nan, index=ts)
        col[f["timestamp"].to_numpy()] = np.repeat(rng.uniform(-3, 3, len(f) // 20 + 1), 20)[:len(f)]
        table[name] = col.to_numpy()
    return d, a, b, pa, pb, table


def _run(d, pa, pb, table, name, extra=()):
    sig = d / f"{name}.csv"
    table.to_csv(sig, index=False)
    out = d / name
    rc = main(["--data", str(pa), "--data", str(pb), "--signals", str(sig), "--out", str(out), "--no-progress",
               "--no-tearsheet", "--threshold", "1.0", *extra])
    return rc, out


def test_signal_columns_reach_each_symbol(two):
    d, a, b, pa, pb, table = two
    rc, out = _run(d, pa, pb, table, "ok")
    assert rc == 0
    seen = pd.read_csv(out / "signals.csv", **exact_float_kwargs())  # pandas < 3.1 parses 1 ulp off otherwise
    for sym, f, col in (("BTC/USDT", a, "BTC/USDT"), ("ETH/USDT", b, "ETHUSDT")):
        s = seen[seen["symbol"] == sym]
        np.testing.assert_array_equal(s["timestamp"], f["timestamp"])
        want = table.set_index("timestamp")[col].reindex(f["timestamp"]).to_numpy()
        np.testing.assert_array_equal(s["signal"].to_numpy(), want)
        # the strategy's rule on exactly those values: +1 above 1.0, -1 below -1.0
        assert ((s["signal"] > 1.0) <= (s["target_position"] == 1.0)).all()
        assert ((s["signal"] < -1.0) <= (s["target_position"] == -1.0)).all()
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["symbols"] == ["BTC/USDT", "ETH/USDT"] and m["symbols"]["ETH/USDT"]["n_trades"] > 0


def _err(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_missing_extra_and_absent_columns_are_errors(two, capsys):
    d, a, b, pa, pb, table = two
    t = table.copy()
    # a value for ETH at a time ETH has no candle (BTC has one there)
    only_btc = np.setdiff1d(a["timestamp"], b["timestamp"])
    t.loc[t["timestamp"] == only_btc[5], "ETHUSDT"] = 1.0
    assert "no ETH/USDT candle" in _err(capsys, _run(d, pa, pb, t, "extra")[0])
    # an ETH candle inside its column's span with no row
    only_eth = np.setdiff1d(b["timestamp"], a["timestamp"])
    err = _err(capsys, _run(d, pa, pb, table[table["timestamp"] != only_eth[10]], "missing")[0])
    assert "1 ETH/USDT candles have no row" in err and "never filled" in err
    err = _err(capsys, _run(d, pa, pb, table.rename(columns={"ETHUSDT": "signal"}), "absent")[0])
    assert "no column for ETH/USDT" in err


@pytest.mark.parametrize("name,symbol,tf", [
    ("binance_ETHUSDT_1h.csv", "ETH/USDT", "1h"),
    ("ETH-USDT-4h.parquet", "ETH/USDT", "4h"),
    ("SOLUSDT-1m-2024-01.zip", "SOL/USDT", "1m"),
    ("eth_usdt_1d.csv", "ETH/USDT", "1d"),
    ("my_candles.csv", None, None),
    ("Bitstamp_BTCUSD_2021_minute.csv", "BTC/USD", None),
])
def test_instrument_from_file_name(name, symbol, tf):
    assert instrument_from_filename(name) == (symbol, tf)


def test_metrics_name_the_real_instrument(two, tmp_path):
    """metrics.json of an ETH file says ETH/USDT (it said BTC/USDT before), and the candles' timeframe."""
    _, a, b, pa, pb, _ = two
    out = tmp_path / "eth"
    assert main(["--data", str(pb), "--out", str(out), "--no-progress", "--no-tearsheet"]) == 0
    run = json.loads((out / "metrics.json").read_text())["run"]
    assert run["symbol"] == "ETH/USDT" and run["symbols"] == ["ETH/USDT"] and run["timeframe"] == "1h"
    assert run["config"]["symbol"] is None  # no made-up default recorded for a file run
    assert set(pd.read_csv(out / "trades.csv")["symbol"]) <= {"ETH/USDT"}
    out = tmp_path / "named"
    assert main(["--data", str(pb), "--symbol", "ETH/BTC", "--out", str(out), "--no-progress", "--no-tearsheet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["run"]["symbol"] == "ETH/BTC"
