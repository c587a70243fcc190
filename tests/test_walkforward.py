"""Walk-forward learns a planted edge, finds none in the plain sample, and never scores a bar it fit on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fastrader.model.presets import SEED_FEATURES
from fastrader.model.train import TrainConfig, make_targets
from fastrader.model.walkforward import WalkForwardConfig, make_folds, walk_forward, write_outputs
from fastrader.synthetic import MarketParams, generate, oracle_forecast

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_btcusdt_1h.csv"


def tiny_train(**kw) -> TrainConfig:
    base = dict(train_frac=0.8, val_frac=0.2, horizon=1, vol_window=48, seq_len=128, batch_size=8, steps=30,
                eval_every=10, patience=2, lr=5e-3, warmup=3,
                model=dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, window=8, dilations=[1], sinks=1))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("mode", ["rolling", "expanding"])
def test_folds_never_overlap_their_fit_window(mode):
    cfg = WalkForwardConfig(train_bars=300, step_bars=170, mode=mode, embargo=24, train=tiny_train())
    folds = make_folds(2000, cfg)
    assert folds[0].oos[0] == 324 and folds[-1].oos[1] == 2000
    for f, g in zip(folds, folds[1:]):
        assert f.oos[1] == g.oos[0]  # segments tile the OOS range
    for f in folds:
        assert f.fit[1] + 24 == f.oos[0]  # the embargo
        assert f.fit[0] == (f.fit[1] - 300 if mode == "rolling" else 0)
    assert len(make_folds(2000, WalkForwardConfig(train_bars=300, step_bars=170, folds=3, train=tiny_train()))) == 3


def test_walk_forward_recovers_a_planted_edge(tmp_path):
    """Acceptance: OOS IC >= 0.8 x the oracle IC on a market with a known planted edge."""
    df, planted = generate(MarketParams(bars=3700, plant_snr=0.16), seed=7, return_planted=True)
    cfg = WalkForwardConfig(train_bars=1500, step_bars=1000, workers=2, train=tiny_train())
    res = walk_forward(df, cfg, spec=SEED_FEATURES, progress=False)
    ts = df["timestamp"].to_numpy()
    idx = np.searchsorted(ts, res.signals["timestamp"].to_numpy())
    assert idx[0] == 1500 + 1 and np.array_equal(ts[idx], res.signals["timestamp"].to_numpy())
    y = make_targets(df["close"].to_numpy(), 1, 48)[idx]
    oracle = oracle_forecast(planted, 1, 1)[idx]
    ok = np.isfinite(y) & np.isfinite(oracle) & np.isfinite(res.signals["signal"].to_numpy())
    oracle_ic = np.corrcoef(oracle[ok], y[ok])[0, 1]
    ic = np.corrcoef(res.signals["signal"].to_numpy()[ok], y[ok])[0, 1]
    assert oracle_ic > 0.3  # the edge is really there
    assert ic >= 0.8 * oracle_ic, (ic, oracle_ic)
    assert res.overall["ic"] == pytest.approx(ic, abs=1e-9)
    paths = write_outputs(res, tmp_path / "wf")
    sig = pd.read_csv(paths["signals"])
    assert list(sig.columns) == ["timestamp", "signal"] and len(sig) == len(df) - 1501
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(paths["folds"])) == len(res.folds) == 3


def test_no_edge_in_the_plain_sample(tmp_path, capsys):
    """Acceptance: on the unplanted sample the stitched OOS IC stays within 0.05 of zero (CLI end to end)."""
    from fastrader.walkforward import main

    conf = tmp_path / "wf.toml"
    conf.write_text('horizon = 1\nvol-window = 48\nseq-len = 128\nbatch-size = 8\nsteps = 30\neval-every = 10\n'
                    'patience = 2\nlr = 0.005\nwarmup = 3\ntrain-bars = 1500\nstep-bars = 4000\nworkers = 2\n'
                    '[model]\nd_model = 16\nheads = 2\nlayers = 1\nd_ff = 32\nwindow = 8\n')
    out = tmp_path / "wf"
    assert main(["--config", str(conf), "--data", str(SAMPLE), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["rows"] > 15000
    assert abs(summary["overall"]["ic"]) <= 0.05, summary["overall"]
    sig = pd.read_csv(out / "signals.csv")
    bars = pd.read_csv(SAMPLE)
    assert set(sig["timestamp"]) <= set(bars["timestamp"]) and sig["timestamp"].iloc[0] == bars["timestamp"].iloc[1501]
    assert "all" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(SAMPLE), "--out", str(out), "--mode", "sideways"])
    assert exc.value.code == 2
    assert main(["--data", str(SAMPLE), "--out", str(out), "--train-bars", "100000", "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err
