"""Training the signal model, nanoGPT-style: a config, a batch sampler, a loop.

Target: the forward log return over ``horizon`` bars, divided by a causal
estimate of its typical size (rolling volatility known at bar t, times
sqrt(horizon)), clipped. The model learns E[target | bars <= t]; its score
is used as the signal after dividing by the score's spread on the training
range.

Only the training range is ever looked at here: feature normalisation,
targets (whose last ``horizon`` bars would need prices after the range are
dropped) and the signal scale. Everything after ``train_end`` stays unseen,
so a backtest there is out of sample.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from ..features import FeatureSpec, Normalizer, compute_features, default_spec
from .attend import resolve_backend
from .checkpoint import Checkpoint
from .transformer import CausalTransformer, ModelConfig


@dataclass
class TrainConfig:
    train_frac: float = 0.6  # first 60% of bars are the training range
    horizon: int = 24  # bars ahead the target looks (a day: longer than the cost of a round trip)
    vol_window: int = 168  # bars in the volatility estimate (one week of hours)
    seq_len: int = 512
    batch_size: int = 16
    steps: int = 300
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    attention: str = "auto"
    model: dict = field(default_factory=dict)  # overrides of ModelConfig fields


def make_targets(close: np.ndarray, horizon: int, vol_window: int, clip: float = 4.0) -> np.ndarray:
    """Vol-scaled forward log return; NaN where it is not defined."""
    logc = np.log(close)
    r1 = np.diff(logc, prepend=np.nan)
    vol = pd.Series(r1).rolling(vol_window, min_periods=vol_window).std().to_numpy()
    fwd = np.full_like(logc, np.nan)
    fwd[:-horizon] = logc[horizon:] - logc[:-horizon]
    y = fwd / (vol * math.sqrt(horizon))
    return np.clip(y, -clip, clip)


def train(df: pd.DataFrame, cfg: TrainConfig, spec: FeatureSpec | None = None, progress: bool = True) -> tuple[Checkpoint, dict]:
    """Train on the first ``cfg.train_frac`` of ``df``; return the checkpoint and a log."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    spec = spec or default_spec()
    n = len(df)
    train_end = int(n * cfg.train_frac)  # rows [0, train_end) are the training range
    cols = [df[c].to_numpy(np.float64) for c in ("open", "high", "low", "close", "volume")]
    raw = compute_features(spec, *cols)[:train_end]
    norm = Normalizer.fit(raw)
    z = norm.transform(raw)
    y = make_targets(cols[3][:train_end], cfg.horizon, cfg.vol_window)

    # Rows usable as inputs: every feature finite. Rows usable as targets: also y finite.
    x_ok = np.isfinite(z).all(axis=1)
    z = np.where(x_ok[:, None], z, 0.0).astype(np.float32)
    y_ok = x_ok & np.isfinite(y)
    first = int(np.argmax(x_ok))
    if train_end - first < cfg.seq_len + cfg.horizon:
        raise ValueError(f"training range has {train_end - first} usable bars; need more than seq_len={cfg.seq_len}")

    mcfg = ModelConfig(n_features=len(spec.names), **cfg.model)
    model = CausalTransformer(mcfg).set_backend(resolve_backend(cfg.attention))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    X, Y, M = torch.from_numpy(z), torch.from_numpy(np.nan_to_num(y).astype(np.float32)), torch.from_numpy(y_ok)

    t0 = time.perf_counter()
    losses = []
    it = tqdm(range(cfg.steps), desc="train", disable=not progress, leave=False)
    for step in it:
        # Cosine decay after a short warm-up: stable on tiny batches.
        warm = 20
        lr = cfg.lr * (step + 1) / warm if step < warm else cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(first, train_end - cfg.seq_len + 1, size=cfg.batch_size)
        idx = torch.from_numpy(starts[:, None] + np.arange(cfg.seq_len)[None, :])
        xb, yb, mb = X[idx], Y[idx], M[idx]
        # The first receptive field of each window sees truncated history; do not train on it.
        mb[:, : min(cfg.seq_len // 2, mcfg.receptive_field)] = False
        pred = model(xb)
        loss = ((pred - yb) ** 2 * mb).sum() / mb.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            it.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    seconds = time.perf_counter() - t0

    model.eval()
    with torch.inference_mode():
        scores = model(X.unsqueeze(0))[0].numpy()
    ok = y_ok.copy()
    ok[: first + mcfg.receptive_field] = False
    scale = float(np.std(scores[ok])) or 1.0
    ic = float(np.corrcoef(scores[ok], y[ok])[0, 1])

    ts = df["timestamp"].to_numpy()
    from ..data import candles_digest

    train_info = {
        "start_ms": int(ts[0]),
        "end_ms": int(ts[train_end - 1]),
        "bars": int(train_end),
        "data_digest": candles_digest(df.iloc[:train_end]),
        "config": asdict(cfg),
        "final_loss": float(np.mean(losses[-20:])),
        "train_ic": ic,
        "seconds": seconds,
    }
    ckpt = Checkpoint(
        model=model,
        features=spec.to_dict(),
        normalizer=norm.to_dict(),
        signal={"scale": scale},
        train=train_info,
    )
    return ckpt, train_info
