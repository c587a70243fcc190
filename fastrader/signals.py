"""From candles to model signals, causally, in one pass or bar by bar.

A signal is the model's score divided by the score scale fitted on the
training range: roughly "expected forward return in units of its typical
size". It is NaN while the features warm up, and strategies stay flat then.

Two ways to get the same numbers:

* :meth:`SignalModel.precompute` runs features and model once over all bars
  (fast; the model is causal, so bar t's signal ignores bars after t);
* :meth:`SignalModel.stream` feeds one bar at a time, keeping only the model's
  receptive field of history (what a live strategy would do).

Tests prove the two agree, and that precomputing on bars[:t] gives the same
first t signals as precomputing on all bars.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pandas as pd
import torch

from .features import FeatureSpec, FeatureStream, Normalizer, compute_features
from .model.attend import resolve_backend
from .model.checkpoint import Checkpoint


class SignalModel:
    def __init__(self, ckpt: Checkpoint, device: str = "cpu", attention: str = "auto"):
        self.ckpt = ckpt
        self.spec = FeatureSpec.from_dict(ckpt.features)
        self.normalizer = Normalizer.from_dict(ckpt.normalizer)
        self.scale = float(ckpt.signal.get("scale", 1.0))
        self.device = torch.device(device)
        self.backend = resolve_backend(attention)
        self.model = ckpt.model.to(self.device).eval().set_backend(self.backend)
        n_feat = len(self.spec.names)
        if ckpt.config.n_features != n_feat:
            from .errors import CheckpointError

            raise CheckpointError(
                f"checkpoint's model takes {ckpt.config.n_features} features but its feature spec has {n_feat}"
            )

    @property
    def receptive_field(self) -> int:
        return self.ckpt.config.receptive_field

    def features(self, df: pd.DataFrame) -> np.ndarray:
        """Normalised features; NaN rows (warm-up) stay NaN."""
        raw = compute_features(
            self.spec,
            df["open"].to_numpy(np.float64),
            df["high"].to_numpy(np.float64),
            df["low"].to_numpy(np.float64),
            df["close"].to_numpy(np.float64),
            df["volume"].to_numpy(np.float64),
        )
        return self.normalizer.transform(raw)

    def _scores(self, z: np.ndarray) -> np.ndarray:
        """Model scores for rows of normalised features; NaN where a row is not finite."""
        valid = np.isfinite(z).all(axis=1)
        x = torch.from_numpy(np.where(valid[:, None], z, 0.0).astype(np.float32)).to(self.device)
        with torch.inference_mode():
            s = self.model(x.unsqueeze(0))[0].double().cpu().numpy()
        s = s / self.scale
        s[~valid] = np.nan
        return s

    def precompute(self, df: pd.DataFrame) -> np.ndarray:
        """One causal pass over all bars: a signal per bar (NaN during warm-up)."""
        return self._scores(self.features(df))

    def stream(self, history: pd.DataFrame | None = None) -> "SignalStream":
        """A bar-by-bar stream that has already consumed ``history`` (may be None or empty).

        Its next ``update(o, h, l, c, v)`` returns exactly what :meth:`precompute`
        over ``history`` followed by the new bars gives at that bar, so a live
        or backtest loop can start trading at any bar without replaying the past
        one bar at a time.
        """
        st = SignalStream(self)
        if history is not None and len(history):
            st.warm(history)
        return st


class SignalStream:
    """Bar-by-bar signals, equal to :meth:`SignalModel.precompute` on the same bars.

    It keeps the last ``receptive_field`` normalised feature rows and reruns the
    model over them for each new bar: bars older than that cannot influence the
    current score, so the result is exact, at O(receptive_field) per bar.
    """

    def __init__(self, sm: SignalModel):
        self.sm = sm
        self.features = FeatureStream(sm.spec)
        self.rows: deque = deque(maxlen=sm.receptive_field)

    def warm(self, history: pd.DataFrame) -> None:
        """Consume bars in one batch: features advance over all of them, the model keeps the tail."""
        cols = [np.ascontiguousarray(history[k].to_numpy(np.float64)) for k in ("open", "high", "low", "close", "volume")]
        raw, flags, bad = self.features._eng.run(*cols, self.features._stop, True)
        if bad >= 0:
            from .features.validate import bad_bar_error

            raise bad_bar_error(bad, int(flags[bad]), tuple(c[bad] for c in cols))
        for row in self.sm.normalizer.transform(raw[-self.rows.maxlen :]):
            self.rows.append(row)

    def update(self, o: float, h: float, l: float, c: float, v: float) -> float:  # noqa: E741
        raw = np.asarray(self.features.update(o, h, l, c, v), dtype=np.float64)
        self.rows.append(self.sm.normalizer.transform(raw[None, :])[0])
        return float(self.sm._scores(np.stack(self.rows))[-1])


def target_positions(signal: np.ndarray, threshold: float, allow_short: bool = True) -> np.ndarray:
    """Map signals to target positions in {-1, 0, +1} (0 while the signal is NaN)."""
    s = np.asarray(signal, dtype=np.float64)
    pos = np.zeros_like(s)
    pos[s > threshold] = 1.0
    if allow_short:
        pos[s < -threshold] = -1.0
    return pos
