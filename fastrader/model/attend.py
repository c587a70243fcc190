"""Attention backends for the model, all with the same causal sparse semantics.

Query i sees key j iff j <= i and either (i - j) < window * dilation with
(i - j) % dilation == 0, or j < sinks. The backends differ only in speed:

* ``fastrader``: our C++/CUDA extension (``fastrader.attention``); the default.
* ``sdpa``: PyTorch's ``scaled_dot_product_attention`` over query chunks with an
  explicit boolean mask; a fallback when the extension is not built, and the
  peer the benchmarks compare against.
* ``flash``: FlashAttention with a causal sliding window (flash-attn-4 when
  installed, else flash-attn 2, else the FlashAttention-2 bundled with CUDA
  builds of PyTorch; ``fastrader.model.flash``); CUDA only, dilation 1 and no
  sinks only (FlashAttention has neither).
* ``auto``: ``fastrader`` if the extension is importable, else ``sdpa``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import available as _fastrader_available
from ..attention import sparse_attention, warn_fallback
from ..errors import ConfigError

BACKENDS = ("auto", "fastrader", "sdpa", "flash")


def resolve_backend(name: str) -> str:
    """Turn ``auto`` into a concrete backend and check that it can run here."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if _fastrader_available():
            return "fastrader"
        warn_fallback()  # one stderr line with the import error: never a silent fallback
        return "sdpa"
    if name == "fastrader" and not _fastrader_available():
        raise ConfigError("attention backend 'fastrader' needs the compiled extension; reinstall with `make install`")
    if name == "flash":
        from .flash import implementation

        implementation()  # a ConfigError naming what was tried when no FlashAttention imports
    return name


def band_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, dilation: int, sinks: int) -> torch.Tensor:
    """Boolean (len(q_pos), len(k_pos)) mask of allowed (query, key) pairs."""
    d = q_pos[:, None] - k_pos[None, :]
    local = (d >= 0) & (d < window * dilation) & (d % dilation == 0)
    sink = (k_pos[None, :] < sinks) & (d >= 0)
    return local | sink


def _sdpa_chunked(q, k, v, window, dilation, sinks, chunk=1024):
    """Masked SDPA over query chunks so memory stays O(chunk * span)."""
    n = q.shape[-2]
    span = window * dilation
    outs = []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        ks = max(0, s - span + 1)
        q_pos = torch.arange(s, e, device=q.device)
        k_idx = torch.arange(ks, e, device=q.device)
        if sinks > 0 and ks > 0:
            k_idx = torch.cat([torch.arange(0, min(sinks, ks), device=q.device), k_idx])
        mask = band_mask(q_pos, k_idx, window, dilation, sinks)
        outs.append(
            F.scaled_dot_product_attention(
                q[..., s:e, :], k[..., k_idx, :], v[..., k_idx, :], attn_mask=mask
            )
        )
    return torch.cat(outs, dim=-2)


def attend(q, k, v, *, window: int, dilation: int = 1, sinks: int = 0, backend: str = "fastrader"):
    """Causal sparse attention of (B, H, N, D) tensors with the chosen backend."""
    if backend == "fastrader":
        return sparse_attention(q, k, v, window=window, dilation=dilation, sinks=sinks)
    if backend == "sdpa":
        return _sdpa_chunked(q, k, v, window, dilation, sinks)
    if backend == "flash":
        from .flash import flash_attention

        return flash_attention(q, k, v, window, dilation, sinks)
    raise ConfigError(f"unknown attention backend {backend!r}")
