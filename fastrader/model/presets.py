"""Named model shapes used by tests and benchmarks, and untrained checkpoints of them.

``seed``: the size a quant might start from -- 5 features into a 64-wide,
4-layer, 8-head model with a window of W bars per layer (W = 256 or 2048 in
the benchmarks). Untrained (random init) is enough wherever only speed or
exactness is measured: the arithmetic is the same as a trained model's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..features import FeatureSpec, Normalizer, compute_features
from .checkpoint import Checkpoint
from .transformer import CausalTransformer, ModelConfig

SEED_FEATURES = FeatureSpec(
    (
        {"kind": "logret", "n": 1},
        {"kind": "logret", "n": 24},
        {"kind": "volatility", "n": 24},
        {"kind": "rsi", "n": 14},
        {"kind": "volume_z", "n": 24},
    )
)


def seed_config(window: int = 256, sinks: int = 1) -> ModelConfig:
    return ModelConfig(
        n_features=len(SEED_FEATURES.names), d_model=64, n_heads=8, n_layers=4, d_ff=256,
        window=window, dilations=[1, 1, 1, 1], sinks=sinks,
    )


def untrained_checkpoint(cfg: ModelConfig, spec: FeatureSpec, fit_bars: pd.DataFrame, seed: int = 0) -> Checkpoint:
    """A randomly initialised model whose normaliser and signal scale are fitted on ``fit_bars``.

    The scale makes the signal's spread 1 on those bars, as training does, so
    that a tolerance on signals means the same for this model as for a trained one.
    """
    torch.manual_seed(seed)
    model = CausalTransformer(cfg).eval()
    cols = [fit_bars[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")]
    norm = Normalizer.fit(compute_features(spec, *cols))
    z = norm.transform(compute_features(spec, *cols))
    ok = np.isfinite(z).all(axis=1)
    with torch.inference_mode():
        s = model(torch.from_numpy(np.where(ok[:, None], z, 0.0).astype(np.float32))[None])[0].double().numpy()
    scale = float(np.std(s[ok])) or 1.0
    return Checkpoint(model=model, features=spec.to_dict(), normalizer=norm.to_dict(), signal={"scale": scale},
                      train={"note": "untrained (random init)"})
