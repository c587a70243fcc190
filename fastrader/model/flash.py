"""The ``flash`` attention backend: FlashAttention with a causal sliding window.

Which FlashAttention runs, the first that imports:

* ``fa4``: flash-attn-4 (``flash_attn.cute.flash_attn_func``, CuTe DSL, Hopper/Blackwell);
* ``fa2``: the flash-attn 2 package (``flash_attn.flash_attn_func``);
* ``fa2-torch``: the FlashAttention-2 that CUDA builds of PyTorch bundle
  (``torch.ops.aten._flash_attention_forward`` with a left window), so the
  backend works on any CUDA machine with nothing else installed.

All three compute the same function as our op with dilation 1 and no sink
tokens: query i sees keys i-W+1..i. FlashAttention has no dilation and no
value-carrying sink tokens (FA4's per-head "sink" is a softmax logit, not a
key with a value), so models that use either are refused with one clear error.
It runs on CUDA tensors in half precision; float32 inputs are cast to bf16 and
the output cast back.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch

from ..errors import ConfigError

IMPLS = ("fa4", "fa2", "fa2-torch")


def _load(name: str):
    if name == "fa4":
        from flash_attn.cute import flash_attn_func

        def fa4(q, k, v, window):
            out = flash_attn_func(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=True, window_size=(window - 1, 0))
            return out[0] if isinstance(out, tuple) else out

        return fa4
    if name == "fa2":
        from flash_attn import flash_attn_func

        return lambda q, k, v, window: flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0))
    if name == "fa2-torch":
        if torch.version.cuda is None or not torch.backends.cuda.is_flash_attention_available():
            raise ImportError("this torch has no bundled FlashAttention (a CPU build)")
        fl = torch.ops.aten._flash_attention_forward

        def fa2_torch(q, k, v, window):
            n, d = q.shape[1], q.shape[-1]
            return fl(q, k, v, None, None, n, n, 0.0, True, False, scale=1.0 / math.sqrt(d),
                      window_size_left=window - 1, window_size_right=0)[0]

        return fa2_torch
    raise ValueError(name)


def implementation(prefer: str | None = None) -> tuple[str, object]:
    """(name, fn) of the FlashAttention that runs; ``prefer`` (or FASTRADER_FLASH) picks one of IMPLS."""
    return _implementation(prefer or os.environ.get("FASTRADER_FLASH") or None)


@lru_cache(maxsize=None)
def _implementation(prefer: str | None) -> tuple[str, object]:
    if prefer is not None and prefer not in IMPLS:
        raise ConfigError(f"FASTRADER_FLASH must be one of {', '.join(IMPLS)}, got {prefer!r}")
    errors = []
    for name in (prefer,) if prefer else IMPLS:
        try:
            return name, _load(name)
        except Exception as exc:  # noqa: BLE001  (absent or broken: try the next, say why if none)
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}")
    raise ConfigError("attention backend 'flash' found no FlashAttention ("
                      + "; ".join(errors) + "); pip install 'fastrader[flash]' or use a CUDA build of torch")


def check(q: torch.Tensor, window: int, dilation: int, sinks: int) -> None:
    """Why the flash backend refuses a call, as a ConfigError; None when it runs."""
    if dilation != 1 or sinks != 0:
        raise ConfigError(
            f"attention backend 'flash' supports neither dilation nor sink tokens (this model: dilation {dilation}, "
            f"sinks {sinks}); use --attention fastrader"
        )
    if q.device.type != "cuda":
        raise ConfigError(f"attention backend 'flash' runs on CUDA only (the model is on {q.device.type}); "
                          "pass --device cuda or use --attention fastrader")
    if window < 1:
        raise ConfigError(f"attention backend 'flash': window must be >= 1, got {window}")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int = 1,
                    sinks: int = 0) -> torch.Tensor:
    """Causal window attention of (B, H, N, D) tensors through FlashAttention (see the module doc)."""
    check(q, window, dilation, sinks)
    _, fn = implementation()
    dt = q.dtype
    half = dt if dt in (torch.float16, torch.bfloat16) else torch.bfloat16
    # FlashAttention takes (B, N, H, D) with the head dim contiguous
    qt, kt, vt = (t.to(half).transpose(1, 2) for t in (q, k, v))
    out = fn(qt, kt, vt, window)
    return out.transpose(1, 2).to(dt)
