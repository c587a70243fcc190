"""Bar-by-bar inference of :class:`CausalTransformer` with per-layer KV caches.

A step takes one normalised feature row and returns that bar's score, equal
to what the batch forward gives at the same bar. It keeps, per layer, a ring
buffer of keys and values: ``sinks`` fixed slots (the learned sink tokens,
whose keys never change), then ``window * dilation`` ring slots where the key
of bar position j lives in slot ``sinks + j mod (window * dilation)``. It also
keeps the last ``conv_kernel - 1`` inputs of the causal convolution. So the
work of a step is O(layers * window), whatever the length of the history.

A step is one call of ``fastrader::decode_step`` (our extension): the
whole model for one row in C++, its attention the kernel of
``fastrader::sparse_attn_decode`` (whose ring semantics these are), on
weights packed once and caches updated in place. Per-op overhead of numpy or
torch on 32- to 64-wide vectors would otherwise be most of the cost. Without
that kernel the same step runs in numpy float32, attention through
:func:`~fastrader.attention.ops.sparse_attention_decode`, sharing the caches.

Positions: sink tokens are positions 0..sinks-1 and bar g (counted from the
first bar the stream, or the batch pass it replaces, ever saw) is position
sinks + g, exactly as in the batch forward, so the window and sink rules pick
the same keys.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..attention.ops import _DECODE_DEVICES, check_decode_inputs, sparse_attention_decode
from .transformer import CausalTransformer

_EPS = 1e-5  # nn.LayerNorm's default, which the model uses
_RSQRT2 = np.float32(1.0 / math.sqrt(2.0))


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def _layer_norm(x, w, b):
    mu = x.mean()
    d = x - mu
    return d * (1.0 / math.sqrt(float(np.dot(d, d)) / d.shape[0] + _EPS)) * w + b


class _Layer:
    def __init__(self, blk, n_heads: int, sinks: int, kv: np.ndarray):
        a = blk.attn
        self.ln1_w, self.ln1_b = _np(blk.ln1.weight), _np(blk.ln1.bias)
        self.qkv_wt, self.qkv_b = _np(a.qkv.weight).T.copy(), _np(a.qkv.bias)
        self.proj_wt, self.proj_b = _np(a.proj.weight).T.copy(), _np(a.proj.bias)
        self.ln2_w, self.ln2_b = _np(blk.ln2.weight), _np(blk.ln2.bias)
        self.fc1_wt, self.fc1_b = _np(blk.mlp[0].weight).T.copy(), _np(blk.mlp[0].bias)
        self.fc2_wt, self.fc2_b = _np(blk.mlp[2].weight).T.copy(), _np(blk.mlp[2].bias)
        self.window, self.dilation, self.sinks = a.window, a.dilation, sinks
        self.span = a.window * a.dilation
        C = self.ln1_w.shape[0]
        self.H, self.D = n_heads, C // n_heads
        self.C = C
        S = sinks + self.span
        # Caches and the query live in numpy; the tensors view the same memory.
        # kv is this layer's part of the model's one flat cache: K then V.
        self.k = kv[: self.H * S * self.D].reshape(1, self.H, S, self.D)
        self.v = kv[self.H * S * self.D :].reshape(1, self.H, S, self.D)
        self.q = np.zeros((1, self.H, self.D), np.float32)
        self.k_t, self.v_t, self.q_t = torch.from_numpy(self.k), torch.from_numpy(self.v), torch.from_numpy(self.q)
        self.scale = 1.0 / math.sqrt(self.D)


def _has_step_kernel() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("fastrader::decode_step", "CPU")
    except RuntimeError:  # the op is not even declared: an older build of the extension
        return False


class IncrementalModel:
    """One model, one sequence: ``step(row) -> score``; see the module docstring."""

    def __init__(self, model: CausalTransformer):
        cfg = model.cfg
        self.cfg = cfg
        self.sinks = cfg.sinks
        self.inp_wt, self.inp_b = _np(model.inp.weight).T.copy(), _np(model.inp.bias)
        w = _np(model.conv.conv.weight)[:, 0, :]  # (C, k): tap i multiplies the input k-1-i bars back
        self.conv_w = w.T.copy()  # (k, C), row i for input t-(k-1)+i
        self.conv_b = _np(model.conv.conv.bias)
        self.k = cfg.conv_kernel
        self.ln_f_w, self.ln_f_b = _np(model.ln_f.weight), _np(model.ln_f.bias)
        self.head_w, self.head_b = _np(model.head.weight)[0], float(_np(model.head.bias)[0])
        D = cfg.d_model // cfg.n_heads
        sizes = [2 * cfg.n_heads * (cfg.sinks + cfg.window * d) * D for d in cfg.dilations]
        self.cache = np.zeros(sum(sizes), np.float32)  # every layer's K and V, one block
        offs = np.cumsum([0] + sizes)
        self.layers = [
            _Layer(b, cfg.n_heads, cfg.sinks, self.cache[offs[i] : offs[i + 1]]) for i, b in enumerate(model.blocks)
        ]
        self.pos_t = torch.zeros(1, dtype=torch.int64)
        self._pos = self.pos_t.numpy()
        # Use the compiled decode op directly after one full validation of the shapes.
        self._op = torch.ops.fastrader.sparse_attn_decode if "cpu" in _DECODE_DEVICES else None
        for L in self.layers:
            check_decode_inputs(L.q_t, L.k_t, L.v_t, self.pos_t, L.window, L.dilation, L.sinks, L.scale)
        self.conv_hist = np.zeros((self.k, cfg.d_model), np.float32)  # last k conv inputs, oldest first
        self._fused = None
        if _has_step_kernel():
            self._params = torch.from_numpy(self._pack())
            self._cache_t, self._conv_t = torch.from_numpy(self.cache), torch.from_numpy(self.conv_hist)
            self._x = np.zeros(cfg.n_features, np.float32)
            self._x_t = torch.from_numpy(self._x)
            self._fused = torch.ops.fastrader.decode_step
            self._dims = (cfg.n_features, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.conv_kernel, cfg.sinks, cfg.window,
                          list(cfg.dilations))
        from scipy.special import erf  # exact GELU needs erf as a ufunc; scipy comes with quantstats

        self._erf = erf
        self.bars = 0  # bars consumed: the next bar has position sinks + bars
        self._model = model
        self._fill_sinks()

    def _pack(self) -> np.ndarray:
        """The weights in the order (and (in, out) layout) of the decode_step kernel."""
        parts = [self.inp_wt, self.inp_b, self.conv_w, self.conv_b]
        for L in self.layers:
            parts += [L.ln1_w, L.ln1_b, L.qkv_wt, L.qkv_b, L.proj_wt, L.proj_b, L.ln2_w, L.ln2_b,
                      L.fc1_wt, L.fc1_b, L.fc2_wt, L.fc2_b]
        parts += [self.ln_f_w, self.ln_f_b, self.head_w, np.array([self.head_b], np.float32)]
        return np.concatenate([np.asarray(p, np.float32).ravel() for p in parts])

    # ---- state ---------------------------------------------------------------------------
    def _fill_sinks(self):
        """The sink tokens' keys per layer: fixed, computed once by a batch pass over no bars."""
        if not self.sinks:
            return
        kv: list = []
        with torch.inference_mode():  # sinks come first, so they never see a bar: run them alone
            h = self._model.sink.unsqueeze(0).float()
            for blk in self._model.blocks:
                h = blk(h, kv)
        for L, (k, v) in zip(self.layers, kv):
            L.k[0, :, : self.sinks] = _np(k[0, :, : self.sinks])
            L.v[0, :, : self.sinks] = _np(v[0, :, : self.sinks])

    def warm_span(self) -> int:
        """Bars of history a batch warm-up needs so that every cached key is exact."""
        cfg = self.cfg
        return cfg.receptive_field + max(L.span for L in self.layers)

    def warm(self, z: np.ndarray, bars_before: int) -> None:
        """Consume rows ``z`` (normalised features, non-finite rows as in precompute) in one batch pass.

        ``bars_before``: how many bars preceded ``z[0]`` (their effect is assumed
        to be outside the receptive field: pass at least :meth:`warm_span` rows
        when bars_before > 0). Replaces any state.
        """
        n = len(z)
        valid = np.isfinite(z).all(axis=1)
        x = torch.from_numpy(np.where(valid[:, None], z, 0.0).astype(np.float32))[None]
        with torch.inference_mode():
            _, st = self._model.forward_state(x, keep=True)
        s = self.sinks
        g0 = bars_before
        for L, (k, v) in zip(self.layers, st["kv"]):
            m = min(n, L.span)
            g = np.arange(g0 + n - m, g0 + n)
            slots = s + (s + g) % L.span
            L.k[0][:, slots] = _np(k[0, :, s + n - m :])
            L.v[0][:, slots] = _np(v[0, :, s + n - m :])
        ci = _np(st["conv_in"][0])
        self.conv_hist[:] = 0.0
        m = min(n, self.k - 1)
        if m:  # the newest inputs at the end: step() shifts them back by one before appending
            self.conv_hist[self.k - m :] = ci[n - m :]
        self.bars = g0 + n

    # ---- one bar -------------------------------------------------------------------------
    def step(self, x: np.ndarray) -> float:
        """Score of the next bar from its normalised (finite) feature row x, float32."""
        if self._fused is not None:  # the whole step in one call of our extension
            self._x[:] = x
            out = self._fused(self._x_t, self._params, self._cache_t, self._conv_t, self.sinks + self.bars, *self._dims)
            self.bars += 1
            return out
        return self._step_numpy(x)

    def _step_numpy(self, x: np.ndarray) -> float:
        """The same step in numpy, attention through sparse_attention_decode (when decode_step is not built)."""
        h = x @ self.inp_wt + self.inp_b
        ch = self.conv_hist
        ch[:-1] = ch[1:]
        ch[-1] = h
        h = h + (self.conv_w * ch).sum(axis=0) + self.conv_b
        p = self.sinks + self.bars
        self._pos[0] = p
        for L in self.layers:
            a = _layer_norm(h, L.ln1_w, L.ln1_b)
            qkv = a @ L.qkv_wt + L.qkv_b
            C = L.C
            slot = L.sinks + p % L.span
            L.q[0] = qkv[:C].reshape(L.H, L.D)
            L.k[0, :, slot] = qkv[C : 2 * C].reshape(L.H, L.D)
            L.v[0, :, slot] = qkv[2 * C :].reshape(L.H, L.D)
            if self._op is not None:
                y = self._op(L.q_t, L.k_t, L.v_t, self.pos_t, L.window, L.dilation, L.sinks, L.scale)
            else:
                y = sparse_attention_decode(L.q_t, L.k_t, L.v_t, self.pos_t, L.window, L.dilation, L.sinks, L.scale)
            h = h + (y.numpy().reshape(C) @ L.proj_wt + L.proj_b)
            a = _layer_norm(h, L.ln2_w, L.ln2_b)
            u = a @ L.fc1_wt + L.fc1_b
            u = 0.5 * u * (1.0 + self._erf(u * _RSQRT2))
            h = h + (u @ L.fc2_wt + L.fc2_b)
        self.bars += 1
        a = _layer_norm(h, self.ln_f_w, self.ln_f_b)
        return float(np.dot(a, self.head_w)) + self.head_b


