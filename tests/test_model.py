"""The transformer is causal, its attention backends agree, checkpoints round-trip safely."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastrader.errors import CheckpointError
from fastrader.model import CausalTransformer, ModelConfig
from fastrader.model.attend import attend, resolve_backend
from fastrader.model.checkpoint import Checkpoint, load, save


def dense_reference(q, k, v, window, dilation, sinks):
    """Float64 attention with an explicitly built mask: the independent reference."""
    n = q.shape[-2]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    d = i - j
    allowed = (d >= 0) & (((d < window * dilation) & (d % dilation == 0)) | (j < sinks))
    s = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1) @ v.double()


@pytest.mark.parametrize("window,dilation,sinks", [(7, 1, 0), (5, 3, 2), (64, 1, 1), (1, 1, 0)])
def test_sdpa_backend_matches_reference(window, dilation, sinks):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 2100, 8, generator=g) for _ in range(3))
    out = attend(q, k, v, window=window, dilation=dilation, sinks=sinks, backend="sdpa")
    ref = dense_reference(q, k, v, window, dilation, sinks)
    assert torch.allclose(out.double(), ref, atol=2e-5, rtol=1e-4)


def _backends():
    out = ["sdpa"]
    if resolve_backend("auto") == "fastrader":
        out.append("fastrader")
    return out


@pytest.mark.parametrize("backend", _backends())
def test_model_is_causal(backend):
    """Scores at bars < t do not change when bars >= t are altered or removed."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_features=5, window=16, dilations=[1, 3])
    m = CausalTransformer(cfg).set_backend(backend).eval()
    x = torch.randn(1, 400, 5)
    with torch.no_grad():
        full = m(x)
        for t in (1, 37, 250, 399):
            cut = m(x[:, :t])
            assert torch.allclose(cut, full[:, :t], atol=1e-5), t
            x2 = x.clone()
            x2[:, t:] = torch.randn_like(x2[:, t:]) * 10
            assert torch.allclose(m(x2)[:, :t], full[:, :t], atol=1e-5), t
        # and the future does change later scores (the test can fail)
        assert not torch.allclose(m(x2)[:, t:], full[:, t:])


def test_receptive_field_is_exact():
    """The last score has a non-zero gradient on exactly the last receptive_field bars."""
    torch.manual_seed(1)
    cfg = ModelConfig(n_features=3, window=8, dilations=[1, 2], conv_kernel=3)
    m = CausalTransformer(cfg).set_backend("sdpa").eval()
    R = cfg.receptive_field
    x = torch.randn(1, 3 * R, 3, dtype=torch.float64, requires_grad=True)
    m.double()(x)[0, -1].backward()
    touched = (x.grad[0].abs().sum(-1) > 0).nonzero().flatten()
    assert touched.min().item() == 3 * R - R
    assert touched.max().item() == 3 * R - 1


def _ckpt():
    torch.manual_seed(2)
    m = CausalTransformer(ModelConfig(n_features=4))
    return Checkpoint(model=m, features={"names": ["a"]}, normalizer={"mean": [0.0]}, signal={"scale": 0.5}, train={"bars": 3})


def test_checkpoint_roundtrip(tmp_path):
    ck = _ckpt()
    p = save(ck, tmp_path / "m.safetensors")
    back = load(p)
    assert back.signal == {"scale": 0.5} and back.train == {"bars": 3}
    x = torch.randn(1, 50, 4)
    with torch.no_grad():
        assert torch.equal(ck.model.eval().set_backend("sdpa")(x), back.model.set_backend("sdpa")(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load(tmp_path / "junk.safetensors")
    save_file({"w": torch.randn(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="no fastrader header"):
        load(tmp_path / "foreign.safetensors")
    # weights that do not fit the config in the header
    ck = _ckpt()
    p = save(ck, tmp_path / "m.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(p))
    with safe_open(str(p), framework="pt") as fh:
        header = json.loads(fh.metadata()["fastrader"])
    header["model"]["d_model"] = 64
    header["model"]["n_heads"] = 4
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"fastrader": json.dumps(header)})
    with pytest.raises(CheckpointError, match="shape"):
        load(tmp_path / "bad.safetensors")
    del tensors["head.weight"]
    save_file(tensors, str(tmp_path / "miss.safetensors"), metadata={"fastrader": json.dumps(header)})
    with pytest.raises(CheckpointError, match="missing"):
        load(tmp_path / "miss.safetensors")
