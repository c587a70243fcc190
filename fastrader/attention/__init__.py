"""Sparse (causal sliding-window + dilation + sinks) attention as a torch op.

    from fastrader.attention import sparse_attention
    out = sparse_attention(q, k, v, window=256, dilation=1, sinks=0, scale=None)

The pure PyTorch reference lives in :mod:`fastrader.attention.reference`.
When the compiled extension does not load, :func:`available` is False and
:func:`load_error` keeps the ImportError (``fastrader doctor`` prints it).
"""

from .mask import sparse_attention_mask
from .ops import (
    AttentionArgumentError,
    AttentionTypeError,
    available,
    check_inputs,
    load_error,
    load_error_line,
    sparse_attention,
    sparse_attention_with_lse,
    warn_fallback,
)

__all__ = [
    "AttentionArgumentError",
    "AttentionTypeError",
    "available",
    "check_inputs",
    "load_error",
    "load_error_line",
    "sparse_attention",
    "sparse_attention_mask",
    "sparse_attention_with_lse",
    "warn_fallback",
]
