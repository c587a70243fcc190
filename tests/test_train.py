"""Training: splits with embargo, train-only normalisation, targets, metrics, early stopping, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fastrader.features import Normalizer, compute_features, default_spec
from fastrader.model.checkpoint import load
from fastrader.model.train import (
    TrainConfig,
    make_splits,
    make_targets,
    score_metrics,
    target_loss,
    train,
)
from fastrader.testing.candles import random_candles

SMALL = dict(d_model=16, n_heads=2, n_layers=2, d_ff=32, window=16, dilations=[1, 2], sinks=1)


def small_cfg(**kw) -> TrainConfig:
    base = dict(horizon=6, vol_window=48, seq_len=128, batch_size=4, steps=12, eval_every=4, warmup=3,
                patience=0, lr=3e-3, model=dict(SMALL))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def bars():
    return random_candles(2400, seed=11)


def test_splits_are_chronological_with_an_embargo():
    sp = make_splits(1000, 0.6, 0.2, 24)
    assert sp.train == (0, 600) and sp.val == (624, 800) and sp.test == (824, 1000)
    # a label at row t uses the close at t + horizon: it stays inside its split
    for name in ("train", "val", "test"):
        lo, hi = sp.labels(name)
        assert hi - 1 + 24 < getattr(sp, name)[1]
    assert sp.labels("train")[1] + 24 <= sp.val[0]  # no training label reaches a validation bar


def test_normaliser_is_fitted_on_the_training_split_only(bars):
    cfg = small_cfg(steps=2, eval_every=2)
    ck, rep = train(bars, cfg, progress=False)
    raw = compute_features(default_spec(), *(bars[k].to_numpy() for k in ("open", "high", "low", "close", "volume")))
    a = rep["splits"]["train"][1]
    np.testing.assert_allclose(ck.normalizer["mean"], Normalizer.fit(raw[:a]).mean, rtol=1e-12)
    assert not np.allclose(ck.normalizer["mean"], Normalizer.fit(raw).mean, rtol=1e-6)
    ts = bars["timestamp"].to_numpy()
    t = ck.train
    assert t["start_ms"] == ts[0] and t["end_ms"] == ts[rep["splits"]["val"][1] - 1]  # fit or selected on
    assert t["horizon"] == 6 and t["timeframe_ms"] == 3_600_000 and len(t["data_digest"]) == 64


def test_score_metrics_against_pandas():
    rng = np.random.default_rng(0)
    y = rng.normal(size=500)
    p = 0.3 * y + rng.normal(size=500)
    m = score_metrics(p, y)
    s = pd.Series(p)
    assert m["ic"] == pytest.approx(s.corr(pd.Series(y)), abs=1e-12)
    assert m["rank_ic"] == pytest.approx(s.corr(pd.Series(y), method="spearman"), abs=1e-12)
    assert m["mse"] == pytest.approx(np.mean((p - y) ** 2)) and m["mae"] == pytest.approx(np.mean(np.abs(p - y)))
    assert m["r2"] == pytest.approx(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2))
    assert m["dir_acc"] == pytest.approx(np.mean(np.sign(p) == np.sign(y)))


def test_target_losses_against_numpy():
    g = torch.Generator().manual_seed(3)
    s, y = torch.randn(2, 50, generator=g), torch.randn(2, 50, generator=g) * 2
    m = torch.rand(2, 50, generator=g) > 0.3
    S, Y, Mk = s.double().numpy(), y.double().numpy(), m.numpy()
    d = np.abs(S - Y)
    huber = np.where(d < 1, 0.5 * d**2, d - 0.5)
    assert float(target_loss("return", s, y, m, 0)) == pytest.approx(huber[Mk].mean(), rel=1e-5)
    lab = (Y > 0).astype(float)
    bce = np.log1p(np.exp(-np.abs(S))) + np.maximum(S, 0) - S * lab
    assert float(target_loss("direction", s, y, m, 0)) == pytest.approx(bce[Mk].mean(), rel=1e-5)
    pos = np.tanh(S)
    turn = np.abs(np.diff(pos, axis=1, prepend=pos[:, :1]))
    reward = pos * Y - 0.2 * turn
    assert float(target_loss("position", s, y, m, 0.2)) == pytest.approx(-reward[Mk].mean(), rel=1e-5)


@pytest.mark.parametrize("target", ["direction", "position"])
def test_other_targets_train(bars, target):
    ck, rep = train(bars, small_cfg(target=target, steps=8), progress=False)
    assert all(np.isfinite(h["val_loss"]) for h in rep["history"])
    assert np.isfinite(rep["metrics"]["test"]["ic"]) and rep["metrics"]["test"]["rows"] > 200


def _weights(ck):
    return {k: v.clone() for k, v in ck.model.state_dict().items()}


def test_same_seed_same_checkpoint(bars, tmp_path):
    from fastrader.model.checkpoint import save

    a, _ = train(bars, small_cfg(), progress=False)
    b, _ = train(bars, small_cfg(), progress=False)
    pa, pb = save(a, tmp_path / "a.safetensors"), save(b, tmp_path / "b.safetensors")
    assert pa.read_bytes() == pb.read_bytes()
    c, _ = train(bars, small_cfg(seed=1), progress=False)
    assert not torch.equal(c.model.inp.weight, a.model.inp.weight)  # the seed matters (the test can fail)


def test_resume_equals_uninterrupted(bars, tmp_path):
    full, rep_full = train(bars, small_cfg(model=dict(SMALL, dropout=0.1)), progress=False)
    state = tmp_path / "run.state.safetensors"
    cfg = small_cfg(model=dict(SMALL, dropout=0.1))
    part, rep_part = train(bars, cfg, progress=False, state_out=state, stop_after=6)
    assert rep_part["steps_done"] == 6 and rep_part["stopped"] == "interrupted"
    done, rep_done = train(bars, cfg, progress=False, resume=state, state_out=state)
    assert rep_done["steps_done"] == 12
    for k, v in _weights(full).items():
        assert torch.equal(v, done.model.state_dict()[k]), k
    assert rep_done["metrics"] == rep_full["metrics"]
    assert [h["val_loss"] for h in rep_done["history"]] == [h["val_loss"] for h in rep_full["history"]]


def test_early_stopping_keeps_the_best(bars):
    ck, rep = train(bars, small_cfg(steps=400, eval_every=2, patience=2, lr=2e-2, warmup=1), progress=False)
    assert rep["stopped"] == "early" and rep["steps_done"] < 400
    vals = [h["val_loss"] for h in rep["history"]]
    best = int(np.argmin(vals))
    assert rep["best_step"] == rep["history"][best]["step"] and len(vals) - 1 - best == 2
    assert rep["best_val_loss"] == pytest.approx(min(vals))


def test_cli_config_metrics_and_errors(tmp_path, capsys):
    from fastrader.train import main

    data = tmp_path / "bars.csv"
    random_candles(2000, seed=5).to_csv(data, index=False)
    cfg = tmp_path / "train.toml"
    cfg.write_text('horizon = 6\nvol-window = 48\nseq-len = 128\nbatch-size = 4\nsteps = 4\neval-every = 2\n'
                   'target = "direction"\n[model]\nd_model = 16\nheads = 2\nwindow = 8\ndilations = [1, 3]\n')
    out = tmp_path / "m.safetensors"
    assert main(["--config", str(cfg), "--data", str(data), "--out", str(out), "--no-progress", "--steps", "3"]) == 0
    ck = load(out)
    assert ck.config.d_model == 16 and ck.config.dilations == [1, 3] and ck.config.window == 8
    assert ck.train["config"]["steps"] == 3 and ck.train["config"]["target"] == "direction"  # the flag wins
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert set(metrics["metrics"]) == {"train", "val", "test"}
    assert {"mse", "mae", "r2", "dir_acc", "ic", "rank_ic"} <= set(metrics["metrics"]["test"])
    assert (tmp_path / "m.state.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "rank IC" in printed and "test" in printed
    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 3\n")
    assert main(["--config", str(bad), "--data", str(data), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: config")
    assert main(["--data", str(data), "--out", str(out), "--heads", "3", "--d-model", "16"]) == 2
    assert "error: bad model options" in capsys.readouterr().err
    assert main(["--data", str(data), "--out", str(out), "--train-frac", "0.9", "--val-frac", "0.3"]) == 2


def test_shipped_checkpoint_still_loads():
    ck = load()
    assert ck.train["start_ms"] < ck.train["end_ms"] and "data_digest" in ck.train
    assert load_file(str(__import__("fastrader.model.checkpoint", fromlist=["x"]).DEFAULT_CHECKPOINT))


def test_compiled_training_equals_eager(bars, tmp_path, capsys):
    """``compile=True`` (``fastrader train --compile``) trains the same model: same loss history and
    weights as the plain module, to float32 reassociation error (Inductor fuses and reorders)."""
    cfg = dict(steps=4, eval_every=2, model=dict(SMALL, dropout=0.0))
    eager, rep_e = train(bars, small_cfg(**cfg), progress=False)
    comp, rep_c = train(bars, small_cfg(**cfg, compile=True), progress=False)
    assert rep_c["steps_done"] == 4 and comp.train["config"]["compile"] is True
    ve = [h["val_loss"] for h in rep_e["history"]]
    vc = [h["val_loss"] for h in rep_c["history"]]
    np.testing.assert_allclose(vc, ve, rtol=1e-4)
    moved = 0.0
    for k, v in _weights(eager).items():
        torch.testing.assert_close(comp.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved = max(moved, float((v - small_cfg_init(k)).abs().max()))
    assert moved > 1e-3  # the steps changed the weights, so agreeing is not trivial

    from fastrader.train import main

    data = tmp_path / "bars.csv"
    random_candles(600, seed=5).to_csv(data, index=False)
    bad = tmp_path / "bad.toml"
    bad.write_text('compile = "yes"\n')
    assert main(["--config", str(bad), "--data", str(data), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == "error: compile must be true or false, got 'yes'"


def small_cfg_init(name: str) -> torch.Tensor:
    """The weights ``train`` starts from (seed 0, before any step)."""
    from fastrader.model.transformer import CausalTransformer, ModelConfig

    torch.manual_seed(0)
    n = len(default_spec().names)
    return CausalTransformer(ModelConfig(n_features=n, **dict(SMALL, dropout=0.0))).state_dict()[name]
