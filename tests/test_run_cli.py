"""`python -m fastrader.run` end to end on a tiny CSV, and every bad input it must reject."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fastrader.run import build_parser, main
from fastrader.testing.candles import random_candles

KEYS = ["total_return", "cagr", "sharpe", "sortino", "max_drawdown", "max_drawdown_daily", "n_trades", "bars",
        "bars_per_s", "in_sample_bars"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    csv = d / "tiny.csv"
    random_candles(1200, seed=11, start_ms=1_700_000_000_000 - 1_700_000_000_000 % 3_600_000).to_csv(csv, index=False)
    out = d / "out"
    # threshold 0 so the model trades often even on a short random walk
    rc = main(["--data", str(csv), "--out", str(out), "--no-progress", "--threshold", "0.0"])
    assert rc == 0
    return csv, out


def test_writes_the_five_files(tiny_run):
    _, out = tiny_run
    for name in ("tearsheet.html", "metrics.json", "trades.csv", "equity.csv", "signals.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def test_metrics_json_keys_and_types(tiny_run):
    m = json.loads((tiny_run[1] / "metrics.json").read_text())
    for k in KEYS:
        assert k in m
        assert isinstance(m[k], (int, float)) and not isinstance(m[k], bool), k
    assert m["n_trades"] > 0


def independent_metrics(equity_csv, cash, periods=365):
    """Recompute the headline numbers from equity.csv with plain pandas/numpy."""
    eq = pd.read_csv(equity_csv)
    s = pd.Series(eq["equity"].to_numpy(), index=pd.to_datetime(eq["timestamp"], unit="ms"))
    daily = s.groupby(s.index.floor("D")).last()
    values = np.concatenate([[cash], daily.to_numpy()])
    r = values[1:] / values[:-1] - 1
    total = values[-1] / cash - 1
    peak = np.maximum.accumulate(values)
    return {
        "total_return": total,
        "cagr": (1 + total) ** (periods / len(r)) - 1,
        "sharpe": r.mean() / r.std(ddof=1) * np.sqrt(periods),
        "sortino": r.mean() / np.sqrt(np.mean(np.minimum(r, 0) ** 2)) * np.sqrt(periods),
        "max_drawdown_daily": (values / peak - 1).min(),
        # what the trader lived through: every bar's equity against its running peak, the start included
        "max_drawdown": (np.r_[cash, eq["equity"]] / np.maximum.accumulate(np.r_[cash, eq["equity"]]) - 1).min(),
        "bars": len(eq),
    }


def test_metrics_match_independent_computation(tiny_run):
    _, out = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    ref = independent_metrics(out / "equity.csv", cash=10_000.0)
    for k in ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "max_drawdown_daily"):
        assert m[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k
    assert m["max_drawdown"] < m["max_drawdown_daily"]  # the intraday trough is deeper than the daily one
    assert m["bars"] == ref["bars"]


def test_metrics_match_empyrical(tiny_run):
    """sharpe, sortino, cagr and the daily drawdown against empyrical, an independent library."""
    import empyrical  # empyrical-reloaded, a dev dependency
    _, out = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    eq = pd.read_csv(out / "equity.csv")
    s = pd.Series(eq["equity"].to_numpy(), index=pd.to_datetime(eq["timestamp"], unit="ms"))
    daily = s.groupby(s.index.floor("D")).last()
    r = pd.Series(np.r_[daily.iloc[0] / 10_000.0, daily.to_numpy()[1:] / daily.to_numpy()[:-1]] - 1, index=daily.index)
    assert m["sharpe"] == pytest.approx(empyrical.sharpe_ratio(r, annualization=365), rel=1e-9)
    assert m["sortino"] == pytest.approx(empyrical.sortino_ratio(r, annualization=365), rel=1e-9)
    assert m["cagr"] == pytest.approx(empyrical.annual_return(r, annualization=365), rel=1e-9)
    assert m["max_drawdown_daily"] == pytest.approx(empyrical.max_drawdown(r), rel=1e-9)
    assert m["n_trades"] == len(pd.read_csv(out / "trades.csv"))


def _html_row(html, label):
    m = re.search(r"<tr><td>" + re.escape(label) + r"</td>((?:<td>[^<]*</td>)+)</tr>", html)
    assert m, f"no {label} row in the tearsheet"
    return re.findall(r"<td>([^<]*)</td>", m.group(1))


def test_tearsheet_has_rows_and_chart_matching_metrics(tiny_run):
    _, out = tiny_run
    html = (out / "tearsheet.html").read_text()
    m = json.loads((out / "metrics.json").read_text())
    # columns: benchmark, strategy
    assert float(_html_row(html, "Sharpe")[-1]) == pytest.approx(m["sharpe"], abs=0.006)
    assert float(_html_row(html, "Sortino")[-1]) == pytest.approx(m["sortino"], abs=0.006)
    mdd = float(_html_row(html, "Max Drawdown")[-1].rstrip("%")) / 100
    assert mdd == pytest.approx(m["max_drawdown_daily"], abs=6e-5)
    assert "<svg" in html  # charts are embedded, not linked


def test_signals_csv(tiny_run):
    csv, out = tiny_run
    sig = pd.read_csv(out / "signals.csv")
    assert list(sig.columns) == ["timestamp", "signal", "target_position"]
    data = pd.read_csv(csv)
    assert np.array_equal(sig["timestamp"].to_numpy(), data["timestamp"].to_numpy())
    assert set(np.unique(sig["target_position"])) <= {-1.0, 0.0, 1.0}
    assert sig["signal"].notna().sum() > 0.5 * len(sig)


def test_help_documents_every_option():
    text = build_parser().format_help()
    for opt in ["--data", "--exchange", "--symbol", "--timeframe", "--since", "--until", "--strategy", "--model",
                "--cash", "--commission", "--slippage-bps", "--device", "--attention", "--out", "--config", "--api-url"]:
        assert opt in text, opt
    r = subprocess.run([sys.executable, "-m", "fastrader.run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--slippage-bps" in r.stdout


def test_config_file_and_command_line_precedence(tmp_path, tiny_run):
    from fastrader.run import config_from_args

    toml = tmp_path / "run.toml"
    toml.write_text('data = "x.csv"\nthreshold = 0.8\nslippage-bps = 12\n')
    cfg = config_from_args(["--config", str(toml), "--threshold", "0.3"])
    assert (cfg.data, cfg.threshold, cfg.slippage_bps) == ("x.csv", 0.3, 12)
    toml.write_text("nonsense = 1\n")
    with pytest.raises(Exception, match="unknown option 'nonsense'"):
        config_from_args(["--config", str(toml)])


# ---- bad input: one clear line, exit code 2, no traceback --------------------------------------

def _run_err(capsys, argv):
    rc = main(argv + ["--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def _csv(tmp_path, text, name="bad.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


GOOD = "timestamp,open,high,low,close,volume\n"


def test_missing_file(capsys, tmp_path):
    assert "not found" in _run_err(capsys, ["--data", str(tmp_path / "nope.csv")])


def test_missing_columns(capsys, tmp_path):
    err = _run_err(capsys, ["--data", _csv(tmp_path, "timestamp,open,close\n1,2,3\n2,3,4\n")])
    assert "high" in err and "low" in err


def test_non_numeric_prices(capsys, tmp_path):
    df = random_candles(50, seed=2)
    df["close"] = df["close"].astype(object)
    df.loc[17, "close"] = "abc"
    p = tmp_path / "nn.csv"
    df.to_csv(p, index=False)
    err = _run_err(capsys, ["--data", str(p)])
    assert "close" in err and "abc" in err


def test_timestamps_out_of_order(capsys, tmp_path):
    df = random_candles(50, seed=3)
    df.loc[[10, 11], "timestamp"] = df.loc[[11, 10], "timestamp"].to_numpy()
    p = tmp_path / "ooo.csv"
    df.to_csv(p, index=False)
    assert "order" in _run_err(capsys, ["--data", str(p)])


def test_duplicated_timestamps(capsys, tmp_path):
    df = random_candles(50, seed=4)
    df.loc[20, "timestamp"] = df.loc[19, "timestamp"]
    p = tmp_path / "dup.csv"
    df.to_csv(p, index=False)
    assert "duplicate" in _run_err(capsys, ["--data", str(p)]).lower()


def test_checkpoint_mismatch(capsys, tmp_path, tiny_run):
    from safetensors.torch import save_file
    import torch

    p = tmp_path / "other.safetensors"
    save_file({"w": torch.randn(3)}, str(p))
    err = _run_err(capsys, ["--data", str(tiny_run[0]), "--model", str(p), "--out", str(tmp_path / "o")])
    assert "other.safetensors" in err


def test_unknown_strategy(capsys, tiny_run):
    err = _run_err(capsys, ["--data", str(tiny_run[0]), "--strategy", "no_such_thing"])
    assert "no_such_thing" in err and "available" in err


def test_failure_after_backtest_keeps_results(capsys, tmp_path, tiny_run, monkeypatch):
    import fastrader.report.tearsheet as tearsheet

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tearsheet, "layout_tearsheet", boom)
    out = tmp_path / "kept"
    err = _run_err(capsys, ["--data", str(tiny_run[0]), "--out", str(out)])
    assert "disk full" in err and str(out) in err
    for name in ("metrics.json", "trades.csv", "equity.csv", "signals.csv"):
        assert (out / name).is_file(), name


def test_strategy_that_never_trades_still_reports(tmp_path, tiny_run):
    out = tmp_path / "flat"
    assert main(["--data", str(tiny_run[0]), "--out", str(out), "--no-progress", "--threshold", "1000"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_trades"] == 0 and m["total_return"] == 0.0
    assert m["sharpe"] is None  # 0/0 is undefined, written as null rather than a made-up number
    assert "no trades" in (out / "tearsheet.html").read_text()
