"""From candles to model signals, causally, in one pass or bar by bar.

A signal is the model's score divided by the score scale fitted on the
training range: roughly "expected forward return in units of its typical
size". It is NaN while the features warm up, and strategies stay flat then.

Two ways to get the same numbers:

* :meth:`SignalModel.precompute` runs features and model once over all bars
  (fast; the model is causal, so bar t's signal ignores bars after t);
* :meth:`SignalModel.stream` feeds one bar at a time through per-layer KV
  caches (what a live strategy would do), O(layers x window) per bar.

Tests prove the two agree, and that precomputing on bars[:t] gives the same
first t signals as precomputing on all bars.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .features import FeatureSpec, FeatureStream, Normalizer, compute_features
from .model.attend import resolve_backend
from .model.checkpoint import Checkpoint
from .model.decode import IncrementalModel


class SignalModel:
    #: bars per chunk of :meth:`precompute` (plus the receptive field of overlap)
    CHUNK = 1 << 16

    def __init__(self, ckpt: Checkpoint, device: str = "cpu", attention: str = "auto", on_bad: str = "raise"):
        self.ckpt = ckpt
        self.on_bad = on_bad  # the feature engine's bad-bar policy: "raise", or "nan" (blank and restart warm-up)
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
        self._cpu_model = None

    @property
    def receptive_field(self) -> int:
        return self.ckpt.config.receptive_field

    def features(self, df: pd.DataFrame) -> np.ndarray:
        """Normalised features; NaN rows (warm-up) stay NaN."""
        return self.normalizer.transform(compute_features(self.spec, *_ohlcv(df), on_bad=self.on_bad))

    def _scores(self, z: np.ndarray) -> np.ndarray:
        """Model scores for rows of normalised features; NaN where a row is not finite."""
        valid = np.isfinite(z).all(axis=1)
        x = torch.from_numpy(np.where(valid[:, None], z, 0.0).astype(np.float32)).to(self.device)
        with torch.inference_mode():
            s = self.model(x.unsqueeze(0))[0].double().cpu().numpy()
        s = s / self.scale
        s[~valid] = np.nan
        return s

    def precompute_from(self, df: pd.DataFrame, first: int) -> np.ndarray:
        """Signals of bars ``first..`` only (NaN before): features over all bars, the model over the tail.

        Equal to ``precompute(df)[first:]`` (the model pass starts
        ``receptive_field - 1`` bars before ``first``); for scoring a short
        out-of-sample segment at the end of a long history.
        """
        first = max(0, int(first))
        z = self.features(df)
        lo = max(0, first - (self.receptive_field - 1))
        out = np.full(len(df), np.nan)
        if first < len(df):
            out[first:] = self._scores(z[lo:])[first - lo :]
        return out

    def precompute(self, df: pd.DataFrame, chunk: int | None = None) -> np.ndarray:
        """One causal pass over all bars: a signal per bar (NaN during warm-up).

        Runs in chunks of ``chunk`` bars (default :attr:`CHUNK`), each model
        pass starting ``receptive_field - 1`` bars early so that every bar sees
        its whole receptive field: memory stays bounded for any history, and the
        result equals one pass over everything (the features carry their state
        from chunk to chunk, so they are the batch features exactly).
        """
        chunk = int(chunk or self.CHUNK)
        if chunk < 1:
            raise ValueError("precompute: chunk must be >= 1")
        n = len(df)
        if n <= chunk:
            return self._scores(self.features(df))
        o, h, l, c, v = _ohlcv(df)  # noqa: E741
        eng = FeatureStream(self.spec, on_bad=self.on_bad)
        out = np.empty(n)
        keep = self.receptive_field - 1
        tail = np.empty((0, len(self.spec.names)))
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            raw, flags, bad = eng._eng.run(o[s:e], h[s:e], l[s:e], c[s:e], v[s:e], True, True)
            if bad >= 0:
                from .features.validate import bad_bar_error

                raise bad_bar_error(s + bad, int(flags[bad]), (o[s + bad], h[s + bad], l[s + bad], c[s + bad], v[s + bad]))
            z = np.concatenate([tail, self.normalizer.transform(raw)])
            out[s:e] = self._scores(z)[len(tail) :]
            tail = z[len(z) - min(keep, len(z)) :] if keep else z[:0]
        return out

    def stream(self, history: pd.DataFrame | None = None) -> "SignalStream":
        """A bar-by-bar stream that has already consumed ``history`` (may be None or empty).

        Its next ``update(o, h, l, c, v)`` returns exactly what :meth:`precompute`
        over ``history`` followed by the new bars gives at that bar, so a live
        or backtest loop can start trading at any bar without replaying the past
        one bar at a time: the features run over the history in one batch, and
        the KV caches fill from one batch pass over its last bars.
        """
        st = SignalStream(self)
        if history is not None and len(history):
            st.warm(history)
        return st

    def incremental_model(self) -> IncrementalModel:
        """A fresh per-sequence decoder (KV caches) of this model, on CPU."""
        if self._cpu_model is None:
            import copy

            m = self.model if self.device.type == "cpu" else copy.deepcopy(self.model).to("cpu")
            self._cpu_model = m.eval()
        return IncrementalModel(self._cpu_model)


def _ohlcv(df: pd.DataFrame):
    return tuple(np.ascontiguousarray(df[k].to_numpy(np.float64)) for k in ("open", "high", "low", "close", "volume"))


class SignalStream:
    """Bar-by-bar signals, equal to :meth:`SignalModel.precompute` on the same bars.

    Features advance incrementally (the Cython engine's own state), and the
    model steps through :class:`~fastrader.model.decode.IncrementalModel`:
    per-layer ring-buffer KV caches and the convolution's state, so the work
    per bar is O(layers x window) and independent of how many bars came before.
    A bar whose features are not all finite (warm-up, after a bad bar) scores
    NaN and feeds zeros to the model, as in the batch pass.
    """

    def __init__(self, sm: SignalModel):
        self.sm = sm
        self.features = FeatureStream(sm.spec, on_bad=sm.on_bad)
        self.model = sm.incremental_model()
        norm = sm.normalizer
        self._mean, self._std, self._clip = norm.mean, norm.std, norm.clip
        self._zero = np.zeros(len(norm.mean), np.float32)
        self._inv_scale = 1.0 / sm.scale

    @property
    def bars(self) -> int:
        return self.model.bars

    def warm(self, history: pd.DataFrame) -> None:
        """Consume bars in one batch: the features over all of them, the model over the tail it needs."""
        if self.model.bars:
            raise ValueError("SignalStream.warm: only a fresh stream can take a history batch")
        cols = _ohlcv(history)
        raw, flags, bad = self.features._eng.run(*cols, self.features._stop, True)
        if bad >= 0:
            from .features.validate import bad_bar_error

            raise bad_bar_error(bad, int(flags[bad]), tuple(c[bad] for c in cols))
        n, m = len(raw), self.model.warm_span()
        start = self.model.bars
        tail = raw[max(0, n - m) :]
        self.model.warm(self.sm.normalizer.transform(tail), start + n - len(tail))

    def update(self, o: float, h: float, l: float, c: float, v: float) -> float:  # noqa: E741
        raw = self.features.update(o, h, l, c, v)
        z = (raw - self._mean) / self._std
        if self._clip is not None:
            np.clip(z, -self._clip, self._clip, out=z)
        if np.isfinite(z).all():
            return self.model.step(z.astype(np.float32)) * self._inv_scale
        self.model.step(self._zero)
        return float("nan")


def target_positions(signal: np.ndarray, threshold: float, allow_short: bool = True) -> np.ndarray:
    """Map signals to target positions in {-1, 0, +1} (0 while the signal is NaN)."""
    s = np.asarray(signal, dtype=np.float64)
    pos = np.zeros_like(s)
    pos[s > threshold] = 1.0
    if allow_short:
        pos[s < -threshold] = -1.0
    return pos
