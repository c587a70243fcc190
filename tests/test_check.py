"""``python -m fastrader.check``: built-in and plain strategies are clean; peeks and non-determinism are caught.

Small gapping candles (opens away from the last close, missing timestamps)
dated after the shipped model's training range, so every bar is traded out
of sample, and two cuts: each check is a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastrader.check import main
from fastrader.lookahead import cut_points, iso
from fastrader.registry import REPO_STRATEGIES
from fastrader.report.parallel import fork_is_safe
from fastrader.testing.candles import gapping_candles

HERE = Path(__file__).resolve().parent / "strategies_lookahead"
START_MS = 1_700_000_000_000  # 2023-11: after the shipped model's training range
BUILTIN = ["model", "model_long_only"] + sorted(p.stem for p in REPO_STRATEGIES.glob("*.py") if not p.stem.startswith("_"))


@pytest.fixture(scope="module")
def model_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("check") / "model_bars.csv"
    gapping_candles(1000, seed=3, start_ms=START_MS).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def plain_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("check") / "plain_bars.csv"
    df = gapping_candles(600, seed=4, start_ms=START_MS)
    df.to_csv(p, index=False)
    return p, df["timestamp"].to_numpy()


def run_check(argv, tmp_path, capsys, cuts=2):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "check.json"
    rc = main([*argv, "--cuts", str(cuts), "--no-progress", "--json", str(out)])
    cap = capsys.readouterr()
    return rc, (json.loads(out.read_text()) if out.exists() else None), cap.out, cap.err


def own(name):
    return f"{HERE / name}.py:Strategy"


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_strategies_show_no_lookahead(name, model_csv, tmp_path, capsys):
    rc, rep, out, err = run_check(["--data", str(model_csv), "--strategy", name, "--threshold", "0.2"], tmp_path, capsys)
    assert rc == 0, out + err
    assert rep["status"] == "clean" and "no lookahead" in out
    assert [c["result"] for c in rep["cuts"]] == ["same", "same"]
    # the comparison had something to compare: orders before each cut, every traded bar up to it
    assert rep["full_run_orders"] > 20 and all(c["orders_compared"] > 5 for c in rep["cuts"])
    assert [c["bars_compared"] for c in rep["cuts"]] == [c["cut"] - rep["start_bar"] for c in rep["cuts"]]


@pytest.mark.parametrize("params", [
    ["--param", "stop_loss=0.01", "--param", "take_profit=0.02"],  # bracket exits that stay open across a cut
    ["--param", "trail_stop=0.01"],
    ["--param", "sizing=vol_target", "--param", "vol_window=48"],
], ids=["bracket", "trailing-stop", "vol-target"])
def test_model_strategy_options_show_no_lookahead(params, model_csv, tmp_path, capsys):
    rc, rep, out, err = run_check(["--data", str(model_csv), "--threshold", "0.2", *params], tmp_path, capsys)
    assert rc == 0, out + err
    assert rep["status"] == "clean" and all(c["orders_compared"] > 5 for c in rep["cuts"])


def test_portfolio_and_coarse_feed_show_no_lookahead(tmp_path, capsys):
    """Two symbols cut at the same time; a strategy on a daily feed resampled from the hourly bars."""
    paths = []
    for sym, seed in (("BTCUSDT", 5), ("ETHUSDT", 6)):
        paths += ["--data", str(tmp_path / f"{sym}.csv")]
        gapping_candles(600, seed=seed, start_ms=START_MS).to_csv(paths[-1], index=False)
    rc, rep, out, err = run_check([*paths, "--threshold", "0.2"], tmp_path / "pf", capsys)
    assert rc == 0 and rep["full_run_orders"] > 20, out + err
    day = tmp_path / "day.csv"
    gapping_candles(800, seed=3, start_ms=START_MS).to_csv(day, index=False)
    rc, rep, out, err = run_check(["--data", str(day), "--strategy", own("daily_context")], tmp_path / "day", capsys)
    assert rc == 0 and rep["full_run_orders"] > 20, out + err
    # and a peek in a portfolio is still caught, at the first symbol's bar cut - 3
    rc, rep, out, err = run_check([*paths, "--strategy", own("forward_column")], tmp_path / "peek", capsys)
    assert rc == 1 and rep["first_difference"]["bar"] == rep["cuts"][0]["cut"] - 3, out + err


def test_plain_backtrader_sma_cross_shows_no_lookahead(plain_csv, tmp_path, capsys):
    rc, rep, out, err = run_check(["--data", str(plain_csv[0]), "--strategy", own("sma_cross")], tmp_path, capsys)
    assert rc == 0, out + err
    assert rep["status"] == "clean" and rep["full_run_orders"] > 5


def test_order_on_the_last_bar_before_the_cut_is_no_difference(plain_csv, tmp_path, capsys):
    """An order on every bar: the one created on the last bar before a cut fills only in the full run."""
    rc, rep, out, err = run_check(["--data", str(plain_csv[0]), "--strategy", own("every_bar")], tmp_path, capsys)
    assert rc == 0, out + err
    for c in rep["cuts"]:
        # orders created on bars 0 .. cut-2 are settled before the cut; the one of bar cut-1 is not compared
        assert c["orders_compared"] == c["cut"] - 1


def test_peeking_at_the_next_close_is_caught(plain_csv, tmp_path, capsys):
    path, ts = plain_csv
    rc, rep, out, err = run_check(["--data", str(path), "--strategy", own("peek_next")], tmp_path, capsys)
    assert rc == 1, out + err
    first_cut = rep["cuts"][0]
    d = rep["first_difference"]
    # data.close[1] raises on the truncated run's last bar, which the full run went past
    assert d["bar"] == first_cut["last_bar"] == first_cut["cut"] - 1
    assert d["time"] == iso(ts[d["bar"]]) and d["field"].startswith("exception")
    assert all(c["result"] == "raised" for c in rep["cuts"])
    assert "LOOKAHEAD" in out and f"at bar {d['bar']:,} ({d['time']})" in out and "IndexError" in out


def test_column_shifted_from_the_future_is_caught(plain_csv, tmp_path, capsys):
    path, ts = plain_csv
    rc, rep, out, err = run_check(["--data", str(path), "--strategy", own("forward_column")], tmp_path, capsys)
    assert rc == 1, out + err
    d = rep["first_difference"]
    # the 3-bar forward return first needs a bar past the cut at bar cut-3
    assert d["bar"] == rep["cuts"][0]["cut"] - 3 and d["time"] == iso(ts[d["bar"]])
    assert d["field"] == "order size" and d["full"] != d["other"]
    assert [c["result"] for c in rep["cuts"]] == ["differs", "differs"]
    assert rep["cuts"][1]["difference"]["bar"] == rep["cuts"][1]["cut"] - 3
    assert f"LOOKAHEAD: the run truncated after bar {rep['cuts'][0]['last_bar']:,}" in out
    assert f"at bar {d['bar']:,} ({d['time']}), field 'order size'" in out


def test_reading_the_future_in_init_is_caught(plain_csv, tmp_path, capsys):
    rc, rep, out, err = run_check(["--data", str(plain_csv[0]), "--strategy", own("init_index")], tmp_path, capsys)
    assert rc == 1, out + err
    assert [c["result"] for c in rep["cuts"]] == ["raised", "raised"]  # cuts at 200 and 400 bars: no bar 400
    assert rep["first_difference"]["bar"] is None and "__init__" in rep["first_difference"]["field"]
    assert "LOOKAHEAD" in out and "while the strategy was set up (__init__)" in out


def test_one_process_gives_the_same_verdict(plain_csv, tmp_path, capsys):
    path, _ = plain_csv
    a = run_check(["--data", str(path), "--strategy", own("forward_column"), "--jobs", "1"], tmp_path / "a", capsys)
    b = run_check(["--data", str(path), "--strategy", own("forward_column"), "--jobs", "2"], tmp_path / "b", capsys)
    # two processes unless this test process has used Ray before (then fork is unsafe: report.parallel)
    assert a[0] == b[0] == 1 and a[1]["jobs"] == 1 and b[1]["jobs"] == (2 if fork_is_safe() else 1)
    assert [c["difference"] for c in a[1]["cuts"]] == [c["difference"] for c in b[1]["cuts"]]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_nondeterministic_strategy_gets_a_clear_message(jobs, plain_csv, tmp_path, capsys):
    rc, rep, out, err = run_check(["--data", str(plain_csv[0]), "--strategy", own("coin_flip"), "--jobs", jobs],
                                  tmp_path, capsys)
    assert rc == 3, out + err
    assert rep["status"] == "nondeterministic" and rep["nondeterminism"]["bar"] is not None
    lines = [ln for ln in out.splitlines() if "NOT DETERMINISTIC" in ln]
    assert len(lines) == 1 and "two full runs" in lines[0] and f"bar {rep['nondeterminism']['bar']:,}" in lines[0]
    assert "LOOKAHEAD" not in out + err and rep["first_difference"] is None


def test_a_strategy_bug_is_not_called_lookahead(plain_csv, tmp_path, capsys):
    rc, rep, out, err = run_check(["--data", str(plain_csv[0]), "--strategy", own("crash_at_bar")], tmp_path, capsys)
    assert rc == 2 and rep["status"] == "failed"
    assert rep["failure"]["bar"] == 99 and "ValueError: bar 100 is cursed" in err
    assert err.startswith("error: ") and "not lookahead" in err and "LOOKAHEAD" not in out


def test_recompute_signals_checks_the_model_too(model_csv, tmp_path, capsys):
    rc, rep, out, err = run_check(["--data", str(model_csv), "--threshold", "0.2", "--recompute-signals"],
                                  tmp_path, capsys)
    assert rc == 0, out + err
    assert rep["recomputed_signals"] and all(c["model_difference"] is None for c in rep["cuts"])


@pytest.mark.parametrize("argv, words", [
    (["--cuts", "0"], "--cuts must be"),
    (["--jobs", "0"], "--jobs must be"),
    (["--recompute-signals"], "--recompute-signals has no model pass"),
    (["--model-atol", "-1"], "--model-atol must be"),
])
def test_bad_input_is_one_error_line(argv, words, plain_csv, tmp_path, capsys):
    cuts = argv[1] if argv[0] == "--cuts" else "2"
    rest = [a for a in argv if argv[0] != "--cuts"]
    rc = main(["--data", str(plain_csv[0]), "--strategy", own("sma_cross"), "--no-progress", "--cuts", cuts, *rest])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_run_options_are_shared(capsys):
    """check takes run's options (one parser), plus its own; --help shows both."""
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for opt in ("--strategy", "--data", "--commission", "--start", "--cuts", "--json", "--recompute-signals"):
        assert opt in text


def test_cut_points_spread_over_the_traded_bars():
    pts = cut_points(1000, 31_000, 8)
    assert len(pts) == 8 and pts == sorted(set(pts))
    assert pts[0] > 1000 and pts[-1] < 31_000
    np.testing.assert_allclose(np.diff(pts), 30_000 / 9, atol=1)
    assert cut_points(0, 4, 8) == [2, 3]  # only as many as fit
