"""Random model weights for tests and benchmarks of the model's kernels."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


@torch.no_grad()
def randomize_(model: nn.Module, q_gain: float = 2.0) -> nn.Module:
    """Give a CausalTransformer O(1) activations and peaked attention, in place.

    A freshly initialised model has near-uniform attention and tiny
    activations, so a kernel that mixes up keys or rows can still match its
    reference; these weights make such mistakes visible. Draws from torch's
    global generator (seed it first).
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features))
            m.bias.normal_(0.0, 0.1)
        elif isinstance(m, nn.LayerNorm):
            m.weight.normal_(1.0, 0.1)
            m.bias.normal_(0.0, 0.1)
    model.sink.normal_(0.0, 1.0)
    d = model.cfg.d_model
    for blk in model.blocks:  # sharper attention: scale the query projection
        blk.attn.qkv.weight[:d] *= q_gain
    return model
