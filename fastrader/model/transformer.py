"""A small causal transformer over bar features.

Reads top to bottom: config, blocks, model. The model maps a (batch, bars,
features) tensor to one score per bar, and the score at bar t depends only on
bars <= t, because every operation is causal:

* a causal depthwise convolution gives the model local order (there are no
  absolute position embeddings, so a bar's score cannot depend on how far it
  is from the start of the file);
* attention is sliding-window, optionally dilated, with learned sink tokens
  prepended to every sequence (so a sink is the same in a batch pass and in a
  bar-by-bar stream, unlike "the first bars of the file");
* MLPs and layer norms act per bar.

The receptive field is finite (``ModelConfig.receptive_field`` bars), which
is what makes bar-by-bar streaming exact with a bounded buffer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attend import attend


@dataclass
class ModelConfig:
    n_features: int
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 64
    window: int = 48
    # One dilation per layer: the later layer looks further back at a coarser grain.
    dilations: list[int] = field(default_factory=lambda: [1, 4])
    sinks: int = 1
    conv_kernel: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        self.dilations = [int(d) for d in self.dilations]
        if len(self.dilations) != self.n_layers:
            raise ValueError(f"dilations has {len(self.dilations)} entries for {self.n_layers} layers")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    @property
    def receptive_field(self) -> int:
        """How many bars (the current one included) can influence a score."""
        return 1 + (self.conv_kernel - 1) + sum((self.window - 1) * d for d in self.dilations)

    def to_dict(self) -> dict:
        return asdict(self)


class CausalConv(nn.Module):
    """Depthwise conv that only looks back: left-pad by kernel-1."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.k = k
        self.conv = nn.Conv1d(d, d, k, groups=d)

    def forward(self, x):  # x: (B, N, d)
        y = F.pad(x.transpose(1, 2), (self.k - 1, 0))
        return self.conv(y).transpose(1, 2)


class SparseSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, dilation: int):
        super().__init__()
        self.h = cfg.n_heads
        self.window, self.dilation, self.sinks = cfg.window, dilation, cfg.sinks
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.backend = "sdpa"  # set by CausalTransformer.set_backend

    def forward(self, x, kv: list | None = None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, N, self.h, C // self.h).transpose(1, 2).contiguous() for t in (q, k, v))
        if kv is not None:  # a stream's caches are filled from these
            kv.append((k, v))
        # Sinks are the learned tokens at the front; the window is counted in bars.
        y = attend(q, k, v, window=self.window, dilation=self.dilation, sinks=self.sinks, backend=self.backend)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, dilation: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SparseSelfAttention(cfg, dilation)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, kv: list | None = None):
        x = x + self.drop(self.attn(self.ln1(x), kv))
        return x + self.drop(self.mlp(self.ln2(x)))


class CausalTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.n_features, cfg.d_model)
        self.conv = CausalConv(cfg.d_model, cfg.conv_kernel)
        self.sink = nn.Parameter(torch.randn(cfg.sinks, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg, d) for d in cfg.dilations)
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def set_backend(self, backend: str) -> "CausalTransformer":
        if backend == "flash" and (self.cfg.sinks or any(d != 1 for d in self.cfg.dilations)):
            from ..errors import ConfigError

            raise ConfigError(
                f"attention backend 'flash' runs models with dilation 1 and no sink tokens; this one has dilations "
                f"{list(self.cfg.dilations)} and {self.cfg.sinks} sink(s): use --attention fastrader"
            )
        for b in self.blocks:
            b.attn.backend = backend
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, n_features), finite. Returns (B, N) scores."""
        return self.forward_state(x)[0]

    def forward_state(self, x: torch.Tensor, keep: bool = False):
        """Scores, and with ``keep`` what a bar-by-bar stream needs to continue.

        Returns (scores, state); state is None, or a dict with ``conv_in``
        (B, N, d_model), the convolution's input, and ``kv``, one (k, v) pair per
        layer of shape (B, heads, sinks + N, head_dim), sink tokens first.
        """
        B = x.shape[0]
        h = self.inp(x)
        state = {"conv_in": h, "kv": []} if keep else None
        h = h + self.conv(h)
        s = self.cfg.sinks
        if s:
            h = torch.cat([self.sink.unsqueeze(0).expand(B, -1, -1).to(h.dtype), h], dim=1)
        for blk in self.blocks:
            h = blk(h, state["kv"] if keep else None)
        out = self.head(self.ln_f(h)).squeeze(-1)
        return out[:, s:], state

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
