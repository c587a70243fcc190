"""The ``flash`` attention backend: FlashAttention-4, else flash-attn 2, else PyTorch's bundled FA2.

On a GPU its signals equal ``--attention fastrader``'s within the error of a
PyTorch bf16 attention (the issue's bound: at most 2x that reference's error
against float32), for each FlashAttention that is installed. Everywhere, a
model it cannot run (dilation, sinks) or a CPU run is refused with one error.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fastrader.errors import ConfigError
from fastrader.model import flash, transformer
from fastrader.model.checkpoint import Checkpoint, load
from fastrader.model.transformer import CausalTransformer, ModelConfig
from fastrader.signals import SignalModel
from fastrader.testing.candles import random_candles
from fastrader.testing.models import randomize_

DEFAULT_MODEL = "fastrader/assets/default_model.safetensors"


def _checkpoint(dilations=(1, 1), sinks=0) -> Checkpoint:
    """The shipped model's features and normaliser, a window model it can run, O(1) random weights."""
    base = load(DEFAULT_MODEL)
    cfg = ModelConfig(n_features=base.config.n_features, d_model=32, n_heads=4, d_ff=64, window=48,
                      dilations=list(dilations), sinks=sinks)
    torch.manual_seed(3)
    model = randomize_(CausalTransformer(cfg))
    return Checkpoint(model=model, features=base.features, normalizer=base.normalizer, signal={"scale": 1.0},
                      train={})


def test_flash_refuses_dilation_and_sinks():
    for dil, sinks in (((1, 4), 0), ((1, 1), 1)):
        with pytest.raises(ConfigError, match="dilation 1 and no sink tokens"):
            _checkpoint(dil, sinks).model.set_backend("flash")
    _checkpoint().model.set_backend("flash")  # dilation 1, no sinks: accepted


def test_flash_on_cpu_tensors_is_one_clear_error():
    q = torch.randn(1, 2, 16, 8)
    with pytest.raises(ConfigError, match="runs on CUDA only"):
        flash.flash_attention(q, q, q, window=4)
    with pytest.raises(ConfigError, match="FASTRADER_FLASH must be one of"):
        flash.implementation("fa9")


def test_run_with_flash_on_cpu_is_one_error_line(tmp_path):
    """`fastrader run --attention flash` without a usable GPU path: one `error:` line, exit 2, no traceback."""
    pytest.importorskip("backtrader", reason="the backtest needs backtrader (the GPU machine's image lacks it)")
    r = subprocess.run([sys.executable, "-m", "fastrader.run", "--attention", "flash", "--device", "cpu",
                        "--out", str(tmp_path / "out"), "--no-tearsheet", "--no-progress"], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and "flash" in lines[0], r.stderr[-2000:]


def _available():
    out = []
    for name in flash.IMPLS:
        try:
            flash._load(name)
            ok = torch.cuda.is_available()
            why = "" if ok else "no CUDA device"
        except Exception as exc:  # noqa: BLE001
            ok, why = False, f"{type(exc).__name__}: {exc}"
        out.append(pytest.param(name, marks=pytest.mark.skipif(not ok, reason=f"{name} not usable here: {why}")))
    return out


@pytest.mark.parametrize("impl", _available())
def test_flash_signals_match_fastrader_on_gpu(impl, monkeypatch):
    ck = _checkpoint()
    df = random_candles(3000, seed=21)
    ours = SignalModel(ck, device="cuda", attention="fastrader").precompute(df)  # float32 CUDA kernels
    monkeypatch.setenv("FASTRADER_FLASH", impl)
    assert flash.implementation()[0] == impl
    got = SignalModel(ck, device="cuda", attention="flash").precompute(df)

    # the reference's own bf16 error: PyTorch SDPA on bf16-rounded q, k, v, same band
    orig = transformer.attend

    def bf16_sdpa(q, k, v, **kw):
        return orig(q.bfloat16(), k.bfloat16(), v.bfloat16(), **{**kw, "backend": "sdpa"}).float()

    monkeypatch.setattr(transformer, "attend", bf16_sdpa)
    ref16 = SignalModel(ck, device="cuda", attention="sdpa").precompute(df)
    ok = np.isfinite(ours)
    assert ok.sum() > 2500 and np.array_equal(ok, np.isfinite(got))
    ref_err = np.abs(ref16[ok] - ours[ok]).max()
    err = np.abs(got[ok] - ours[ok]).max()
    assert 0 < ref_err < 0.05 * np.abs(ours[ok]).max()  # bf16 is visible, and small
    assert err <= 2 * ref_err, (impl, err, ref_err)
