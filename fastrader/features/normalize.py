"""Causal normalisation of feature matrices for the model.

Two ways, neither of which lets statistics peek at the future:

* :class:`Normalizer` fits per-column mean and std on a training range only
  (NaN-aware) and applies them unchanged to any later rows; its ``to_dict``
  goes into the model checkpoint.
* :func:`rolling_zscore` (or ``FeatureSpec.normalize``) z-scores every row
  against the statistics of the last W rows up to and including it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastrader.errors import CheckpointError, DataError
from fastrader.features._kernels import rolling_zscore

__all__ = ["Normalizer", "rolling_zscore"]


@dataclass(frozen=True)
class Normalizer:
    """(x - mean) / std per column, with mean/std fitted on training rows only."""

    mean: np.ndarray
    std: np.ndarray
    names: tuple | None = None
    clip: float | None = None

    @classmethod
    def fit(cls, X, names=None, clip: float | None = None) -> "Normalizer":
        """Fit on the training rows X (rows x columns); NaN rows (warm-up) are ignored.

        A column with fewer than two finite values or zero spread cannot be
        scaled and raises DataError (rather than dividing by zero later).
        """
        A = np.asarray(X, dtype=np.float64)
        if A.ndim != 2:
            raise DataError(f"Normalizer.fit: expected a 2-D (rows x columns) array, got shape {A.shape}")
        if names is not None and len(names) != A.shape[1]:
            raise DataError(f"Normalizer.fit: {len(names)} names for {A.shape[1]} columns")
        ok = np.isfinite(A)
        cnt = ok.sum(axis=0)
        label = (lambda j: repr(names[j])) if names is not None else (lambda j: str(j))
        for j in np.flatnonzero(cnt < 2):
            raise DataError(f"Normalizer.fit: column {label(j)} has {cnt[j]} finite training values (need >= 2)")
        Z = np.where(ok, A, 0.0)
        mean = Z.sum(axis=0) / cnt
        dev = np.where(ok, A - mean, 0.0)
        std = np.sqrt((dev * dev).sum(axis=0) / cnt)
        for j in np.flatnonzero(~(std > 0)):
            raise DataError(f"Normalizer.fit: column {label(j)} is constant over the training range")
        return cls(mean, std, tuple(names) if names is not None else None,
                   None if clip is None else float(clip))

    def transform(self, X) -> np.ndarray:
        """Scale rows (2-D) or a single row (1-D) with the fitted statistics; NaN stays NaN."""
        A = np.asarray(X, dtype=np.float64)
        if A.shape[-1] != self.mean.shape[0]:
            raise DataError(f"Normalizer.transform: {A.shape[-1]} columns, fitted on {self.mean.shape[0]}")
        Z = (A - self.mean) / self.std
        if self.clip is not None:
            np.clip(Z, -self.clip, self.clip, out=Z)
        return Z

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(),
                "names": list(self.names) if self.names is not None else None, "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            std = np.asarray(d["std"], dtype=np.float64)
            names, clip = d.get("names"), d.get("clip")
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"Normalizer.from_dict: malformed normaliser ({e!r})") from None
        if mean.ndim != 1 or mean.shape != std.shape or not (std > 0).all():
            raise CheckpointError("Normalizer.from_dict: mean/std must be equal-length lists with std > 0")
        if names is not None and len(names) != len(mean):
            raise CheckpointError(f"Normalizer.from_dict: {len(names)} names for {len(mean)} columns")
        return cls(mean, std, tuple(names) if names is not None else None,
                   None if clip is None else float(clip))
