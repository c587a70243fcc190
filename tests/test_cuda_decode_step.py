"""fastrader::decode_step_cuda (ext/csrc/cuda/decode_step.cu): one whole model step per launch on the GPU.

Checks it against the full forward pass (float64, CPU) at every bar, the ring
buffers wrapping, against the CPU step kernel (scores and caches), inside a
CUDA graph, with the weights in shared memory (small models) and in global
memory (the seed model), and that bad arguments raise. Skips without a CUDA
device or when the extension was built without CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _op():
    try:
        from fastrader import _C  # noqa: F401  (registers the ops)
    except ImportError as exc:
        pytest.skip(f"extension not built: {exc}")
    if not hasattr(torch.ops.fastrader, "decode_step_cuda"):
        pytest.skip("extension built without CUDA kernels")
    return torch.ops.fastrader.decode_step_cuda


CONFIGS = {
    # the run's default model (weights in shared memory)
    "default": dict(n_features=16),
    # seed size: 4 layers of 64 (about 800 KB of weights: read from global memory)
    "seed": dict(n_features=5, d_model=64, n_heads=8, n_layers=4, d_ff=256, window=256, dilations=[1, 1, 1, 1]),
    # odd sizes: 3 heads of 8, two sinks, a window shorter than the conv, param count not a multiple of 4
    "odd": dict(n_features=5, d_model=24, n_heads=3, n_layers=3, d_ff=40, window=5, dilations=[1, 3, 2], sinks=2,
                conv_kernel=3),
    # head_dim 16, no sinks
    "nosink": dict(n_features=7, d_model=32, n_heads=2, n_layers=2, d_ff=48, window=20, dilations=[2, 1], sinks=0),
}


def _model(name):
    from fastrader.model.transformer import CausalTransformer, ModelConfig
    from fastrader.testing.models import randomize_

    cfg = ModelConfig(**CONFIGS[name])
    torch.manual_seed(0)
    model = CausalTransformer(cfg).eval()
    randomize_(model)
    return cfg, model.set_backend("fastrader")


class _Stream:
    """State for decode_step_cuda built from IncrementalModel (packed weights, sink keys)."""

    def __init__(self, model):
        from fastrader.model.decode import IncrementalModel

        cfg = model.cfg
        self.inc = IncrementalModel(model)
        dev = torch.device("cuda")
        self.params = torch.from_numpy(self.inc._pack()).to(dev)
        self.cache = torch.from_numpy(self.inc.cache.copy()).to(dev)
        self.hist = torch.zeros(cfg.conv_kernel, cfg.d_model, device=dev)
        self.pos = torch.full((1,), cfg.sinks, dtype=torch.int64, device=dev)
        self.x = torch.zeros(cfg.n_features, device=dev)
        self.out = torch.zeros(1, device=dev)
        self.dims = (cfg.n_features, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.conv_kernel, cfg.sinks, cfg.window,
                     list(cfg.dilations))

    def step(self):
        _op()(self.x, self.params, self.cache, self.hist, self.pos, self.out, *self.dims)


def _bars(cfg, n):
    return np.random.default_rng(1).standard_normal((n, cfg.n_features)).astype(np.float32)


def _n_bars(cfg):
    return 2 * max(cfg.window * d for d in cfg.dilations) + 7  # every ring wraps at least twice


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_full_forward_and_cpu_step(name):
    _op()
    cfg, model = _model(name)
    T = min(_n_bars(cfg), 600)
    z = _bars(cfg, T)
    with torch.inference_mode():
        ref = model.double()(torch.from_numpy(z).double()[None])[0].numpy()
    model.float()
    s = _Stream(model)
    got = np.empty(T)
    for t in range(T):
        s.x.copy_(torch.from_numpy(z[t]))
        s.step()
        got[t] = s.out.item()
    cpu = np.array([s.inc.step(z[t]) for t in range(T)])
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-5 * scale, np.abs(got - ref).max() / scale
    assert np.abs(got - cpu).max() <= 1e-5 * scale
    assert int(s.pos.item()) == cfg.sinks + T
    np.testing.assert_allclose(s.cache.cpu().numpy(), s.inc.cache, rtol=1e-5, atol=1e-5 * np.abs(s.inc.cache).max())
    np.testing.assert_allclose(s.hist.cpu().numpy(), s.inc.conv_hist, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["default", "seed"])
def test_in_cuda_graph(name):
    _op()
    cfg, model = _model(name)
    T = min(_n_bars(cfg), 300)
    z = _bars(cfg, T)
    plain = _Stream(model)
    want = np.empty(T)
    for t in range(T):
        plain.x.copy_(torch.from_numpy(z[t]))
        plain.step()
        want[t] = plain.out.item()

    s = _Stream(model)
    init_cache = s.cache.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        s.step()  # warm-up outside the capture (sets the kernel's shared-memory attribute)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        s.step()
    s.cache.copy_(init_cache)
    s.hist.zero_()
    s.pos.fill_(cfg.sinks)
    got = np.empty(T)
    for t in range(T):
        s.x.copy_(torch.from_numpy(z[t]))
        graph.replay()
        got[t] = s.out.item()
    np.testing.assert_array_equal(got, want)  # same kernel, same order of sums: bit-identical


def test_rejects_bad_input():
    op = _op()
    cfg, model = _model("default")
    s = _Stream(model)
    with pytest.raises(RuntimeError, match="params has the wrong size"):
        op(s.x, s.params[:-1], s.cache, s.hist, s.pos, s.out, *s.dims)
    with pytest.raises(RuntimeError, match="cache has the wrong size"):
        op(s.x, s.params, s.cache[:-1], s.hist, s.pos, s.out, *s.dims)
    with pytest.raises(RuntimeError, match="pos must be"):
        op(s.x, s.params, s.cache, s.hist, s.pos.cpu(), s.out, *s.dims)
    with pytest.raises(RuntimeError, match="pos must be"):
        op(s.x, s.params, s.cache, s.hist, s.pos.int(), s.out, *s.dims)
    with pytest.raises(RuntimeError, match="float32"):
        op(s.x.double(), s.params, s.cache, s.hist, s.pos, s.out, *s.dims)
    with pytest.raises(RuntimeError, match="bad model dimensions"):
        op(s.x, s.params, s.cache, s.hist, s.pos, s.out, cfg.n_features, cfg.d_model, 3, cfg.d_ff, cfg.conv_kernel,
           cfg.sinks, cfg.window, list(cfg.dilations))
    with pytest.raises(RuntimeError, match="x, conv or out"):
        op(s.x[:-1], s.params, s.cache, s.hist, s.pos, s.out, *s.dims)
    torch.cuda.synchronize()  # nothing was launched by the failing calls
    assert int(s.pos.item()) == cfg.sinks
