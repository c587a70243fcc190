"""Sweeps on the process-pool backend: config errors, failures, resume after SIGKILL, held-out report, overfitting."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _sweep import results_only, write_inputs
from fastrader.sweep import load_spec, main, run_sweep, spec_from_dict
from fastrader.sweep.space import Dimension, grid_points, random_points
from fastrader.sweep.trial import resolve_options, trial_id

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    # one process pool for the module's sweeps: workers start (and import) once
    from fastrader.sweep.backends import LocalBackend

    b = LocalBackend(2, tmp_path_factory.mktemp("shared"))
    b.start(echo=lambda *a: None)
    yield b
    b.close()


def quiet(*a):
    pass


def spec_for(tmp, space, strategy="Coin", **sweep):
    data, strats = write_inputs(tmp / "in")
    raw = {"sweep": {"backend": "local", "workers": 2, "progress": False, "tearsheet": False,
                     "out": str(tmp / "out"), **sweep},
           "run": {"data": str(data), "strategy": f"{strats}:{strategy}"},
           "space": space}
    return spec_from_dict(raw)


def test_points_are_deterministic_and_typed():
    dims = [Dimension("threshold", values=(0.5, 1.0)), Dimension("params.stake", low=0.2, high=0.9, num=3)]
    assert grid_points(dims) == [{"threshold": 0.5, "params.stake": 0.2}, {"threshold": 0.5, "params.stake": 0.55},
                                 {"threshold": 0.5, "params.stake": 0.9}, {"threshold": 1.0, "params.stake": 0.2},
                                 {"threshold": 1.0, "params.stake": 0.55}, {"threshold": 1.0, "params.stake": 0.9}]
    r1 = random_points([Dimension("c", low=1e-4, high=1e-2, log=True), Dimension("k", low=2, high=9, integer=True)], 20, 7)
    assert r1 == random_points([Dimension("c", low=1e-4, high=1e-2, log=True),
                                Dimension("k", low=2, high=9, integer=True)], 20, 7)
    assert all(1e-4 <= p["c"] <= 1e-2 and 2 <= p["k"] <= 9 and isinstance(p["k"], int) for p in r1)
    # identity: the resolved options, so "2" for an int param and 2 are the same trial, 3 is not
    a = resolve_options({"strategy": "model"}, {"params.stake": "0.5"})
    b = resolve_options({"strategy": "model"}, {"params.stake": 0.5})
    c = resolve_options({"strategy": "model"}, {"params.stake": 0.6})
    assert a["params"]["stake"] == 0.5 and trial_id(a) == trial_id(b) != trial_id(c)


def _value(v):
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(v)


def _toml(d):
    lines = []
    for table, kv in d.items():
        lines.append(f"[{table}]")
        for k, v in kv.items():
            lines.append(f'"{k}" = {_value(v)}')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("raw,msg", [
    ({"space": {"nope": [1]}}, "unknown option 'nope'"),
    ({"space": {"params.nope": [1]}}, "unknown param 'nope'"),
    ({"space": {"cash": ["lots"]}}, "'cash' must be a number"),
    ({"sweep": {"search": "random"}}, "needs trials"),
    ({"sweep": {"backend": "spark"}}, "backend must be one of"),
    ({"space": {"threshold": {"low": 2, "high": 1}}}, "low must be below high"),
    ({"run": {"data": "/no/such.csv"}}, "data file not found"),
], ids=["option", "param", "type", "trials", "backend", "range", "data"])
def test_bad_config_exits_2(tmp_path, capsys, raw, msg):
    cfg = tmp_path / "s.toml"
    cfg.write_text(_toml({"sweep": {"backend": "local", "out": str(tmp_path / "o"), **raw.get("sweep", {})},
                          "run": raw.get("run", {"strategy": "model"}), "space": raw.get("space", {})}))
    assert main(["--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err


def test_failed_trial_is_recorded_and_sweep_goes_on(tmp_path, pool):
    spec = spec_for(tmp_path, {"params.explode": [False, True], "params.side": [1, -1]}, strategy="Side")
    res = run_sweep(spec, echo=quiet, backend=pool)
    t = res.table
    assert res.ran == 4 and res.failed == 2
    bad = t[t["status"] == "failed"]
    assert set(bad["params.explode"]) == {True}
    assert all("planted failure" in e for e in bad["error"])
    assert list(t["status"]) == ["ok", "ok", "failed", "failed"]  # failures rank last
    # a rerun skips every recorded trial, failed ones too unless asked
    again = run_sweep(spec, echo=quiet, backend=pool)
    assert again.ran == 0 and again.skipped == 4
    spec.retry_failed = True
    assert run_sweep(spec, echo=quiet, backend=pool).ran == 2


def test_kill_and_resume_runs_only_the_missing_trials(tmp_path, pool):
    data, strats = write_inputs(tmp_path / "in", n=1200)
    base = {"run": {"data": str(data), "strategy": f"{strats}:Coin"}, "space": {"params.seed": list(range(12))}}
    cfg = tmp_path / "s.toml"
    cfg.write_text(_toml({"sweep": {"backend": "local", "workers": 1, "tearsheet": False}, **base}))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fastrader.sweep", "--config", str(cfg), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    trials = out / "trials"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(trials.glob("*.json"))) < 4:
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its pool worker, mid-run
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json")}
    assert 4 <= len(before) < 12, len(before)

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"12 trials, {len(before)} already in" in again.stdout and f"{12 - len(before)} to run" in again.stdout
    after = {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json")}
    assert len(after) == 12 and all(after[k] == v for k, v in before.items())  # nothing done twice

    spec = spec_from_dict({"sweep": {"backend": "local", "workers": 2, "tearsheet": False, "progress": False,
                                     "out": str(tmp_path / "whole")}, **base})
    whole = run_sweep(spec, echo=quiet, backend=pool).table
    resumed = pd.read_parquet(out / "table.parquet")
    pd.testing.assert_frame_equal(results_only(resumed), results_only(whole), check_dtype=False)


def test_holdout_report_on_a_planted_trend(tmp_path, pool):
    # Candles that rise steadily, then fall: long wins in sample, short wins held out.
    n = 1200
    rng = np.random.default_rng(8)
    drift = np.where(np.arange(n) < 800, 0.002, -0.003)
    close = 100 * np.exp(np.cumsum(drift + rng.normal(0, 0.004, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.002, n))
    ts = 1_600_000_000_000 + 3_600_000 * np.arange(n, dtype=np.int64)
    df = pd.DataFrame({"timestamp": ts, "open": open_, "high": np.maximum(open_, close) * 1.002,
                       "low": np.minimum(open_, close) * 0.998, "close": close, "volume": rng.uniform(1, 9, n)})
    d = tmp_path / "in"
    write_inputs(d)
    df.to_csv(d / "trend.csv", index=False)
    spec = spec_from_dict({"sweep": {"backend": "local", "workers": 2, "progress": False, "tearsheet": False,
                                     "out": str(tmp_path / "out"), "holdout": str(int(ts[800])), "holdout_top": 2,
                                     "metric": "total_return"},
                           "run": {"data": str(d / "trend.csv"), "strategy": f"{d / 'strats.py'}:Side"},
                           "space": {"params.side": [1, -1]}})
    res = run_sweep(spec, echo=quiet, backend=pool)
    assert res.table.iloc[0]["params.side"] == 1 and res.table.iloc[0]["total_return"] > 0.5
    assert res.table["bars"].max() == 800  # in sample, no trial saw a held-out bar
    h = pd.read_csv(tmp_path / "out" / "holdout.csv")
    assert list(h["params.side"]) == [1, -1]
    assert h.loc[0, "total_return_held_out"] < 0 < h.loc[1, "total_return_held_out"]
    assert list(h["held_out_rank"]) == [2, 1]
    # independent check: the held-out numbers are those of a plain run over the held-out bars alone
    df.iloc[800:].to_csv(d / "late.csv", index=False)
    from fastrader.pipeline import RunConfig, backtest, prepare, run_metrics

    for side, got in zip((1, -1), h["total_return_held_out"]):
        prep = prepare(RunConfig(data=str(d / "late.csv"), strategy=f"{d / 'strats.py'}:Side", params={"side": side},
                                 progress=False))
        _, m = run_metrics(prep, backtest(prep))
        assert got == pytest.approx(m["total_return"], rel=1e-12)


def test_random_strategies_without_edge_are_flagged(tmp_path, pool):
    spec = spec_for(tmp_path, {"params.seed": list(range(24))}, strategy="Coin")
    res = run_sweep(spec, echo=quiet, backend=pool)
    s = res.summary
    assert res.failed == 0 and len(res.table) == 24
    assert s["pbo"]["pbo"] > 0.2, s["pbo"]
    assert s["deflated_sharpe"]["dsr"] < 0.95, s["deflated_sharpe"]
    assert any("not significant" in line for line in s["overfitting"])
    # the best trial's own report reproduces its row
    best = json.loads((tmp_path / "out" / "best" / "metrics.json").read_text())
    assert best["sharpe"] == pytest.approx(res.table.iloc[0]["sharpe"], rel=1e-12)


def test_heatmap_table_and_example_config(tmp_path, pool):
    spec = spec_for(tmp_path, {"params.seed": [0, 1, 2], "params.p_flip": [0.02, 0.1]}, strategy="Coin")
    spec.tearsheet = True
    res = run_sweep(spec, echo=quiet, backend=pool)
    assert res.files["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t = pd.read_csv(tmp_path / "out" / "table.csv")
    assert list(t["rank"]) == list(range(1, 7))
    assert t["sharpe"].is_monotonic_decreasing
    pd.testing.assert_frame_equal(t.fillna(-1), pd.read_parquet(tmp_path / "out" / "table.parquet").fillna(-1),
                                  check_dtype=False)
    best = pd.read_json(tmp_path / "out" / "best" / "metrics.json", typ="series")
    assert best["total_return"] == pytest.approx(t.loc[0, "total_return"], rel=1e-12)
    assert (tmp_path / "out" / "best" / "tearsheet.html").stat().st_size > 10_000
    ex = load_spec(ROOT / "examples" / "sweep.toml")
    assert len(grid_points(ex.space)) == 48


def test_optuna_search_and_resume_through_the_cli(tmp_path, capsys):
    pytest.importorskip("optuna", reason="the optuna extra is not installed")
    data, strats = write_inputs(tmp_path / "in", n=600)
    cfg = tmp_path / "s.toml"
    cfg.write_text(_toml({"sweep": {"backend": "local", "workers": 2, "search": "optuna", "trials": 6, "seed": 1,
                                    "tearsheet": False, "out": str(tmp_path / "o")},
                          "run": {"data": str(data), "strategy": f"{strats}:Coin"},
                          "space": {"params.seed": {"low": 0, "high": 1000, "int": True},
                                    "params.p_flip": {"low": 0.01, "high": 0.2, "log": True}}}))
    assert main(["--config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sweep" in out and "(6 ran, 0 already done, 0 failed)" in out and "best by sharpe (max):" in out
    t = pd.read_csv(tmp_path / "o" / "table.csv")
    assert len(t) == 6 and t["params.p_flip"].between(0.01, 0.2).all()
    assert main(["--config", str(cfg), "--no-progress"]) == 0  # resumed: the 6 recorded trials count
    assert "(0 ran, 6 already done, 0 failed)" in capsys.readouterr().out


def test_walkforward_trials(tmp_path, pool):
    # kind = "walkforward": each group trains its models fold by fold (fastrader.model.walkforward),
    # then every strategy param on top backtests the stitched out-of-sample signals of that group.
    data, _ = write_inputs(tmp_path / "in", n=1100)
    tiny = {"d_model": 16, "n_heads": 2, "n_layers": 1, "dilations": [1], "d_ff": 16, "window": 16}
    spec = spec_from_dict({
        "sweep": {"kind": "walkforward", "backend": "local", "progress": False, "tearsheet": False,
                  "out": str(tmp_path / "o")},
        "run": {"data": str(data), "strategy": "model"},
        "walkforward": {"train_bars": 400, "step_bars": 300, "folds": 2, "steps": 4, "eval_every": 2, "seq_len": 64,
                        "batch_size": 4, "horizon": 6, "vol_window": 24, "model": tiny},
        "space": {"walkforward.train_bars": [300, 400], "threshold": [0.5, 1.0]},
    })
    res = run_sweep(spec, echo=quiet, backend=pool)
    t = res.table
    assert res.failed == 0, t["error"].tolist()
    assert len(t) == 4 and t["n_trades"].sum() > 0
    recs = [json.loads(p.read_text()) for p in (tmp_path / "o" / "trials").glob("*.json")]
    assert all(r["metrics"]["wf_folds"] == 2 and -1 <= r["metrics"]["wf_oos_ic"] <= 1 for r in recs)
    by_window = {}
    for r in recs:  # one walk-forward per window, shared by both thresholds
        by_window.setdefault(r["options"]["walkforward"]["train_bars"], set()).add(r["group"])
    assert {k: len(v) for k, v in by_window.items()} == {300: 1, 400: 1}
    # the backtest starts where the out-of-sample signals start: after the first fit window + embargo
    assert sorted(set(t["bars"])) == [1100 - 400 - 6, 1100 - 300 - 6], sorted(set(t["bars"]))
