"""Streaming features: one new bar in, that bar's feature row out.

``FeatureStream`` steps the very same engine state as :func:`compute_features`,
so after feeding bars 0..t the row returned for bar t equals row t of the
batch result bit for bit. A step costs O(features): O(1) work per feature
(rolling sums are recomputed exactly once per window, amortised O(1)).
"""

from __future__ import annotations

import numpy as np

from fastrader.features._engine import Engine
from fastrader.features.spec import FeatureSpec
from fastrader.features.validate import bad_bar_error, check_on_bad


class FeatureStream:
    """Incremental feature rows for one instrument.

    With ``on_bad="raise"`` a bad bar raises DataError and leaves the state
    as it was (the bar is rejected); with ``"nan"`` it yields a NaN row and the
    features warm up again from the next bar, as in the batch call.
    """

    def __init__(self, spec: FeatureSpec, on_bad: str = "raise"):
        self.spec = spec
        self._stop = check_on_bad(on_bad)
        self.on_bad = on_bad
        self.last_flags = 0
        self._new()

    def _new(self):
        norm = self.spec.normalize["window"] if self.spec.normalize else 0
        self._eng = Engine(self.spec._program(), len(self.spec.names), norm, self.spec._capacity())

    @property
    def names(self) -> list[str]:
        return self.spec.names

    @property
    def bars(self) -> int:
        """Bars accepted so far."""
        return self._eng.bars

    def update(self, open, high, low, close, volume) -> np.ndarray:
        """Feed one bar; returns its feature row (float64, one value per column)."""
        row, flags = self._eng.update(float(open), float(high), float(low), float(close),
                                      float(volume), self._stop)
        self.last_flags = flags
        if row is None:
            raise bad_bar_error(self._eng.bars, flags, (open, high, low, close, volume))
        return row

    def reset(self):
        """Forget all bars (start a new series)."""
        self._new()
        self.last_flags = 0
