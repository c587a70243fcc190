"""Issue 8 end to end: out of sample by time, stream = precompute on every --start,
warnings for refused orders, and one clear error line for each bad input.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fastrader.model.checkpoint import load as load_checkpoint
from fastrader.pipeline import SAMPLE_DATA, RunConfig, backtest, prepare
from fastrader.run import main
from fastrader.testing.candles import gapping_candles

TRAIN = load_checkpoint(None).train
EMBARGO_END = TRAIN["end_ms"] + TRAIN["config"]["horizon"] * 3_600_000


@pytest.fixture(scope="module")
def sample():
    return pd.read_csv(SAMPLE_DATA)


def _first_traded_ms(path, **kw):
    prep = prepare(RunConfig(data=str(path), progress=False, tearsheet=False, **kw))
    return int(prep.candles["timestamp"].iloc[prep.start]), prep


@pytest.mark.parametrize("variant", ["trimmed", "re-exported", "perturbed", "shifted-symbol"])
def test_auto_start_is_after_the_training_range_for_any_copy(tmp_path, sample, variant):
    df = sample.copy()
    if variant == "trimmed":  # the case that used to trade the model's own training bars
        df = df.iloc[720:]
    elif variant == "re-exported":  # another export: prices rounded to cents, volume in other units
        df[["open", "high", "low", "close"]] = df[["open", "high", "low", "close"]].round(2)
        df["volume"] = df["volume"] * 1000.0
    elif variant == "perturbed":  # one changed volume is enough to change a hash
        df.loc[5000, "volume"] *= 1.01
    else:  # the same hours of "another market": prices scaled, every bar different
        df[["open", "high", "low", "close"]] *= 0.07
    p = tmp_path / f"{variant}.csv"
    df.to_csv(p, index=False)
    first, prep = _first_traded_ms(p)
    assert first > EMBARGO_END
    assert prep.candles["timestamp"].iloc[prep.start - 1] <= EMBARGO_END  # the very first bar after it
    assert prep.in_sample_bars == 0
    assert any("after the model's training range" in n for n in prep.notes)


def test_data_entirely_after_the_training_range_starts_at_its_first_bar(tmp_path, sample):
    p = tmp_path / "late.csv"
    sample[sample["timestamp"] > EMBARGO_END + 86_400_000].to_csv(p, index=False)
    first, prep = _first_traded_ms(p)
    assert prep.start == 0 and prep.in_sample_bars == 0


def test_explicit_start_inside_the_training_range_warns_and_counts(tmp_path, capsys):
    out = tmp_path / "ins"
    rc = main(["--start", "2022-01-01", "--out", str(out), "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    ts = pd.read_csv(out / "equity.csv")["timestamp"].to_numpy()
    expected = int(((ts >= TRAIN["start_ms"]) & (ts <= EMBARGO_END)).sum())
    assert m["in_sample_bars"] == expected > 2000
    assert "IN-SAMPLE" in err and f"{expected:,}" in err
    html = (out / "tearsheet.html").read_text()
    assert "IN-SAMPLE" in html[: html.index("</title>")]


def test_out_of_sample_run_has_no_in_sample_bars(tmp_path):
    out = tmp_path / "oos"
    assert main(["--out", str(out), "--no-progress", "--no-tearsheet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["in_sample_bars"] == 0


def _compare_stream(path, start, n_bars=None):
    base = dict(data=str(path), start=start, progress=False, tearsheet=False)
    pre = prepare(RunConfig(**base))
    streamed = prepare(RunConfig(**base, stream=True))
    assert pre.start == streamed.start
    end = None if n_bars is None else pre.start + n_bars
    a, b = backtest(pre, end), backtest(streamed, end)
    sa, sb = a.signals["signal"].to_numpy(), b.signals["signal"].to_numpy()
    assert np.array_equal(np.isnan(sa), np.isnan(sb))
    assert np.nanmax(np.abs(sa - sb)) <= 1e-5
    np.testing.assert_array_equal(a.signals["target"].to_numpy(), b.signals["target"].to_numpy())
    pd.testing.assert_frame_equal(a.trades, b.trades)
    pd.testing.assert_frame_equal(a.orders, b.orders)
    np.testing.assert_array_equal(a.equity["equity"].to_numpy(), b.equity["equity"].to_numpy())
    return pre


@pytest.mark.parametrize("start", ["auto", "2021-06-01"])
def test_stream_equals_precompute_on_the_sample(start):
    # 600 traded bars after the start: enough for the strategy to trade, quick with the re-run stream
    pre = _compare_stream(SAMPLE_DATA, start, n_bars=600)
    assert pre.start > 0


@pytest.mark.parametrize("start", ["auto", "2021-03-01", "2023-06-15", "2025-01-01"])
def test_stream_equals_precompute_on_real_btc(real_data_path, start):
    _compare_stream(real_data_path, start)


OVERSIZED = '''
import backtrader as bt


class Quickstart(bt.Strategy):
    """Backtrader's quickstart shape: buy 10 units when the close is above its SMA."""

    params = dict(maperiod=15, stake=10)

    def __init__(self):
        self.sma = bt.indicators.SimpleMovingAverage(self.datas[0], period=self.p.maperiod)

    def next(self):
        if not self.position:
            if self.data.close[0] > self.sma[0]:
                self.buy(size=self.p.stake)
        elif self.data.close[0] < self.sma[0]:
            self.sell(size=self.p.stake)
'''


def test_oversized_plain_strategy_warns_and_counts(tmp_path):
    strat = tmp_path / "quick.py"
    strat.write_text(OVERSIZED)
    df = gapping_candles(1500, seed=21)
    df[["open", "high", "low", "close"]] *= 25.0  # ~2500 a unit: 10 units are 2.5x the cash
    data = tmp_path / "eth.csv"
    df.to_csv(data, index=False)
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "fastrader.run", "--data", str(data), "--strategy", f"{strat}:Quickstart",
                        "--out", str(out), "--no-progress", "--no-tearsheet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    o = m["orders"]
    assert o["rejected_margin"] > 20 and o["filled"] == 0 and o["submitted"] == o["rejected"]
    warn = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and f"{o['rejected']:,} of {o['submitted']:,} orders were refused" in warn[0]
    orders = pd.read_csv(out / "orders.csv")
    assert (orders["status"] == "margin").sum() == o["rejected_margin"]
    # with a stake it can afford, the same strategy fills and nothing is refused
    out2 = tmp_path / "o2"
    r = subprocess.run([sys.executable, "-m", "fastrader.run", "--data", str(data), "--strategy", f"{strat}:Quickstart",
                        "--param", "stake=2", "--out", str(out2), "--no-progress", "--no-tearsheet"],
                       capture_output=True, text=True)
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert r.returncode == 0 and m2["orders"]["rejected"] == 0 and m2["orders"]["filled"] > 10
    assert "warning:" not in r.stderr


# ---- bad input: one line, exit code 2 ------------------------------------------------------------

def _err(capsys, argv):
    rc = main(argv + ["--no-progress", "--no-tearsheet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert "np.float64" not in err
    return err


@pytest.fixture
def bad_bar_csv(tmp_path):
    df = gapping_candles(3000, seed=8)
    df.loc[1234, "open"] = 25969.88  # far above the bar's high
    p = tmp_path / "badbar.csv"
    df.to_csv(p, index=False)
    return p, df


def test_loader_rejects_open_outside_the_bar(capsys, bad_bar_csv):
    p, df = bad_bar_csv
    err = _err(capsys, ["--data", str(p)])
    assert str(p) in err and "line 1236" in err and "open=25969.88" in err and "outside [low, high]" in err


def test_on_bad_bars_drop_and_nan(tmp_path, bad_bar_csv):
    p, df = bad_bar_csv
    for policy, bars in (("drop", len(df) - 1), ("nan", len(df))):
        prep = prepare(RunConfig(data=str(p), on_bad_bars=policy, progress=False, start="2020-01-01"))
        assert len(prep.candles) == bars
        assert any("1 bad bars" in n for n in prep.notes)
        if policy == "nan":  # the bad bar's signal is blank, and the warm-up restarts after it
            assert np.isnan(prep.signal[1234])
            assert np.isnan(prep.signal[1240]) and np.isfinite(prep.signal[1234 + 400])


def test_gaps_in_a_data_file_are_reported(tmp_path):
    df = gapping_candles(2000, seed=4, missing=0.02)
    steps = np.diff(df["timestamp"].to_numpy()) // 3_600_000
    p = tmp_path / "gaps.csv"
    df.to_csv(p, index=False)
    prep = prepare(RunConfig(data=str(p), progress=False))
    note = next(n for n in prep.notes if "gaps" in n)
    assert f"{int((steps > 1).sum())} gaps ({int((steps - 1).sum())} candles missing)" in note
    assert f"largest" in note and f"({int(steps.max() - 1)} missing)" in note


@pytest.mark.parametrize(
    "args,words",
    [
        (["--cash", "-5"], "--cash must be > 0, got -5"),
        (["--cash", "0"], "--cash must be > 0"),
        (["--commission", "2"], "10% or more is refused"),
        (["--commission", "0.1"], "10% or more is refused"),
        (["--commission", "-0.001"], "--commission must be >= 0"),
        (["--slippage-bps", "-1"], "--slippage-bps must be >= 0"),
        (["--borrow-rate", "-0.1"], "--borrow-rate must be >= 0"),
        (["--cash", "nan"], "--cash must be a finite number"),
        (["--param", "nonsense=1"], "unknown param 'nonsense'"),
        (["--param", "threshold=abc"], "param threshold: 'abc' is not a valid float"),
        (["--param", "threshold"], "--param takes NAME=VALUE"),
    ],
)
def test_bad_broker_and_param_options(capsys, args, words):
    assert words in _err(capsys, args)


def test_high_commission_warns(tmp_path, capsys):
    assert main(["--commission", "0.02", "--out", str(tmp_path / "c"), "--no-progress", "--no-tearsheet"]) == 0
    err = capsys.readouterr().err
    assert "warning: --commission 0.02 is 2% per trade" in err


@pytest.mark.parametrize(
    "toml,words",
    [
        ('cash = "abc"\n', "option 'cash' must be a number, got 'abc'"),
        ("stream = 1\n", "option 'stream' must be a boolean, got 1"),
        ("data = 5\n", "option 'data' must be a string, got 5"),
        ("periods-per-year = 365.5\n", "option 'periods-per-year' must be an integer"),
        ("[params]\nthreshold = true\n", "param threshold: True is a bool, expected a float"),
        ("[params]\nstake_x = 1\n", "unknown param 'stake_x'"),
    ],
)
def test_config_values_are_checked_by_type(tmp_path, capsys, toml, words):
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    assert words in _err(capsys, ["--config", str(p)])


def test_params_from_toml_and_command_line(tmp_path):
    from fastrader.run import config_from_args
    from fastrader.pipeline import strategy_params
    from fastrader.strategy import ModelStrategy

    p = tmp_path / "p.toml"
    p.write_text("[params]\nthreshold = 1\nallow_short = false\n")
    cfg = config_from_args(["--config", str(p), "--param", "stake=0.5", "--param", "threshold=0.7"])
    got = strategy_params(ModelStrategy, cfg)
    assert got == {"threshold": 0.7, "allow_short": False, "stake": 0.5}
    assert isinstance(got["threshold"], float)
