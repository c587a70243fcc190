"""Acceptance: a backtest over candles downloaded through ccxt (from the fake Binance,
via --api-url) gives the same metrics as the same run over the equivalent CSV."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fastrader.testing import random_candles
from fastrader.testing.exchange_server import ExchangeServer

HOUR = 3_600_000


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    from fastrader.train import main as train_main

    d = tmp_path_factory.mktemp("accept")
    frame = random_candles(2_400, seed=41, start_ms=1_700_000_000_000 - 1_700_000_000_000 % HOUR)
    frame = frame.drop(index=[700, 1500, 1501]).reset_index(drop=True)  # real histories have gaps
    csv = d / "same.csv"
    frame.to_csv(csv, index=False, float_format="%.17g")
    model = d / "m.safetensors"
    # A few optimiser steps are enough: the test compares two runs, not model quality.
    assert train_main(["--data", str(csv), "--out", str(model), "--steps", "3", "--seq-len", "128", "--batch-size", "4", "--no-progress"]) == 0
    return d, frame, csv, model


def test_run_over_exchange_download_equals_run_over_csv(model_and_data, capsys):
    from fastrader.run import main as run_main

    d, frame, csv, model = model_and_data
    common = ["--model", str(model), "--no-progress", "--no-tearsheet", "--cash", "10000"]
    since, until = int(frame["timestamp"].iat[0]), int(frame["timestamp"].iat[-1]) + HOUR
    with ExchangeServer(frame) as server:
        served = server.candles()
        rc = run_main(
            ["--exchange", "binance", "--symbol", "BTC/USDT", "--timeframe", "1h", "--since", str(since), "--until", str(until),
             "--api-url", server.url, "--cache-dir", str(d / "cache"), "--out", str(d / "via_exchange"), *common]
        )
        assert rc == 0, capsys.readouterr().err
        assert server.kline_requests == 3  # 2397 candles: three 1000-candle pages
    # The CSV the second run reads holds exactly what the exchange served (Binance's 8 decimals).
    served.to_csv(d / "served.csv", index=False, float_format="%.17g")
    # Named as the same instrument, so the symbol columns of the two runs agree as well.
    assert run_main(["--data", str(d / "served.csv"), "--symbol", "BTC/USDT", "--out", str(d / "via_csv"), *common]) == 0

    via_exchange = json.loads((d / "via_exchange" / "metrics.json").read_text())
    via_csv = json.loads((d / "via_csv" / "metrics.json").read_text())
    assert via_exchange.keys() == via_csv.keys()
    # Every performance number must match exactly; speeds and the run's provenance differ by nature.
    compared = [k for k, v in via_csv.items() if isinstance(v, (int, float)) and not k.endswith("_per_s")]
    assert {"total_return", "cagr", "sharpe", "sortino", "max_drawdown", "n_trades", "bars"} <= set(compared)
    for key in compared:
        assert via_exchange[key] == via_csv[key], key
    assert via_exchange["run"]["first_bar_ms"] == via_csv["run"]["first_bar_ms"]
    assert via_exchange["run"]["last_bar_ms"] == via_csv["run"]["last_bar_ms"]
    assert via_exchange["bars"] > 0 and via_exchange["n_trades"] > 0
    for name in ("equity.csv", "trades.csv", "signals.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(d / "via_exchange" / name), pd.read_csv(d / "via_csv" / name), check_exact=True)
