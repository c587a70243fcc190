"""Acceptance: --param and a TOML [params] table reach a plain Backtrader strategy, typed; bad ones fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fastrader.run import main
from fastrader.testing.candles import gapping_candles

SAMPLES = Path(__file__).resolve().parent / "bt_samples.py"
STRATEGY = f"{SAMPLES}:QuickstartSMA"


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("params") / "eth_usdt_1h.csv"
    gapping_candles(600, seed=21, missing=0.0).to_csv(p, index=False)
    return p


def _run(tmp_path, csv, extra, name="o"):
    out = tmp_path / name
    assert main(["--data", str(csv), "--strategy", STRATEGY, "--out", str(out), "--no-progress", "--no-tearsheet",
                 *extra]) == 0
    return json.loads((out / "metrics.json").read_text()), pd.read_csv(out / "trades.csv")


def _first_fill_bar(csv, trades):
    ts = pd.read_csv(csv)["timestamp"].to_numpy()
    return int(np.searchsorted(ts, trades["open_time"].min()))


def test_param_reaches_quickstart_strategy_typed(tmp_path, csv):
    m, trades = _run(tmp_path, csv, ["--param", "maperiod=40", "--param", "stake=3"])
    assert m["run"]["params"] == {"maperiod": 40, "stake": 3.0}
    assert isinstance(m["run"]["params"]["maperiod"], int)
    assert len(trades) > 0 and np.allclose(trades["size"], 3.0)
    # SMA(40) has its first value at bar 39; an order placed then fills at bar 40 or later
    assert _first_fill_bar(csv, trades) >= 40
    m15, t15 = _run(tmp_path, csv, [], name="defaults")
    assert np.allclose(t15["size"], 10.0) and _first_fill_bar(csv, t15) < 40  # the defaults really were replaced


def test_toml_params_table_and_command_line_precedence(tmp_path, csv):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'strategy = "{STRATEGY}"\n\n[params]\nmaperiod = 30\nstake = 2\n')
    m, trades = _run(tmp_path, csv, ["--config", str(cfg)])
    assert m["run"]["params"] == {"maperiod": 30, "stake": 2.0}
    assert np.allclose(trades["size"], 2.0)
    m, _ = _run(tmp_path, csv, ["--config", str(cfg), "--param", "stake=5"], name="o2")
    assert m["run"]["params"] == {"maperiod": 30, "stake": 5.0}  # the command line wins, per name


def _err(capsys, argv):
    rc = main([*argv, "--no-progress", "--no-tearsheet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("bad,words", [
    (["--param", "ma_period=20"], ["unknown param 'ma_period'", "maperiod=15", "stake=10.0"]),
    (["--param", "maperiod=twenty"], ["maperiod", "'twenty'", "int"]),
    (["--param", "maperiod=2.5"], ["maperiod", "int"]),
    (["--param", "maperiod"], ["NAME=VALUE"]),
])
def test_bad_param_is_one_error_line(capsys, tmp_path, csv, bad, words):
    err = _err(capsys, ["--data", str(csv), "--strategy", STRATEGY, "--out", str(tmp_path / "x"), *bad])
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("table,words", [
    ("maperiod = 'x'\n", ["maperiod", "int"]),
    ("stake = true\n", ["stake", "float"]),
    ("nope = 1\n", ["unknown param 'nope'", "maperiod"]),
])
def test_bad_toml_param_is_one_error_line(capsys, tmp_path, csv, table, words):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'strategy = "{STRATEGY}"\n[params]\n{table}')
    err = _err(capsys, ["--config", str(cfg), "--data", str(csv), "--out", str(tmp_path / "y")])
    for w in words:
        assert w in err, (w, err)
