"""The boolean attention mask of causal sliding-window + dilation + sinks.

Materialises (seq, seq): for tests, references and SDPA comparisons only.
"""

import torch


def sparse_attention_mask(seq_len, window, dilation=1, sinks=0, device=None):
    """``mask[i, j]`` is True iff query i attends key j.

    j <= i and ((i - j) < window * dilation and (i - j) % dilation == 0,
    or j < sinks).
    """
    i = torch.arange(seq_len, device=device).unsqueeze(1)
    j = torch.arange(seq_len, device=device).unsqueeze(0)
    diff = i - j
    causal = diff >= 0
    span = min(window, max(seq_len, 1)) * dilation  # a wider window changes nothing
    in_window = causal & (diff < span) & (diff % dilation == 0)
    return in_window | (causal & (j < sinks))
