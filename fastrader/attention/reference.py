"""Pure PyTorch sparse attention with a materialised mask (tests only).

Independent of the C++ kernels: builds the dense (seq, seq) score matrix, so
it costs O(seq^2) memory; use it on small shapes, in float64 for gradients.
"""

import math

import torch

from .mask import sparse_attention_mask


def sparse_attention_reference(q, k, v, window=256, dilation=1, sinks=0, scale=None, return_lse=False):
    """Same semantics and signature as :func:`fastrader.attention.sparse_attention`.

    Half-precision inputs are computed in float32 and cast back, like the op.
    With ``return_lse`` also returns the row log-sum-exp of the scaled scores.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    dtype = q.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    q, k, v = q.to(work), k.to(work), v.to(work)
    mask = sparse_attention_mask(q.shape[-2], window, dilation, sinks, device=q.device)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ v
    out = out.to(dtype)
    return (out, lse) if return_lse else out
