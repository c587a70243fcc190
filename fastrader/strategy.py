"""The Backtrader side of fastrader: strategies that delegate signals to a model.

Feels like plain Backtrader: ``params``, ``lines``, ``next()``. A subclass
usually overrides only :meth:`ModelStrategy.target` (signal -> desired
position as a fraction of equity, in [-1, 1]):

    class LongOnly(ModelStrategy):
        params = dict(threshold=0.5)

        def target(self, signal):
            return 1.0 if signal > self.p.threshold else 0.0

Where the signal comes from:

* precomputed (default): the pipeline computed every bar's signal in one
  causal pass and put it on the data feed's ``signal`` line;
* streamed (``params.stream=True``): the :class:`ModelSignal` indicator calls
  the model bar by bar inside Backtrader, using only bars seen so far.

Either way, a decision made in ``next()`` on bar t is filled at bar t+1's
open (Backtrader's default, no cheat-on-close), so no order uses a price that
was not yet known.
"""

from __future__ import annotations

import math

import backtrader as bt
import numpy as np


class ModelSignal(bt.Indicator):
    """Streams the model over the data, one bar at a time (``lines.signal``)."""

    lines = ("signal",)
    params = (("model", None),)  # a fastrader.signals.SignalModel

    def __init__(self):
        if self.p.model is None:
            raise ValueError("ModelSignal needs params.model (a fastrader.signals.SignalModel)")
        self._stream = self.p.model.stream()

    def next(self):
        d = self.data
        self.lines.signal[0] = self._stream.update(d.open[0], d.high[0], d.low[0], d.close[0], d.volume[0])


class ModelStrategy(bt.Strategy):
    """Long/short on the model's signal: +stake above threshold, -stake below -threshold, with hysteresis."""

    params = dict(
        threshold=1.5,  # enter when |signal| exceeds this (units of the training-period signal scale)
        exit_threshold=0.0,  # hold a position until the signal falls back through this (hysteresis)
        allow_short=True,
        stake=0.95,  # fraction of equity per full position (leaves room for fees)
        stream=False,  # True: compute signals bar by bar with ModelSignal
        model=None,  # SignalModel, needed when stream=True
        rebalance_band=0.0,  # skip orders that change the target by less than this
    )

    def __init__(self):
        if self.p.stream:
            self.signal = ModelSignal(self.data, model=self.p.model).signal
        else:
            self.signal = self.data.signal
        self.records: list[tuple[float, float, float]] = []  # (bt datetime, signal, target)
        self._current_target = 0.0

    # ---- the part users override -------------------------------------------------
    def target(self, signal: float) -> float:
        """Desired position as a fraction of equity in [-1, 1]; 0 when unsure.

        Enter beyond +/-threshold; once in, hold while the signal stays on the
        position's side of exit_threshold. The band between the two saves the
        fees of flipping in and out on noise.
        """
        if signal > self.p.threshold:
            return 1.0
        if self.p.allow_short and signal < -self.p.threshold:
            return -1.0
        cur = self._current_target
        if cur > 0 and signal > self.p.exit_threshold:
            return cur
        if cur < 0 and signal < -self.p.exit_threshold:
            return cur
        return 0.0

    # ---- Backtrader plumbing ----------------------------------------------------------
    def prenext(self):
        # Indicators of a subclass are still warming up: stay flat, but keep the record.
        self.records.append((self.data.datetime[0], float(self.signal[0]), 0.0))

    def next(self):
        sig = float(self.signal[0])
        tgt = 0.0 if math.isnan(sig) else float(np.clip(self.target(sig), -1.0, 1.0))
        self.records.append((self.data.datetime[0], sig, tgt))
        if abs(tgt - self._current_target) > self.p.rebalance_band or (tgt == 0.0 and self._current_target != 0.0):
            self.order_target_percent(target=tgt * self.p.stake)
            self._current_target = tgt


class LongOnlyModelStrategy(ModelStrategy):
    """Long when the signal is above the threshold, flat otherwise."""

    params = dict(allow_short=False)


BUILTIN = {
    "model": ModelStrategy,
    "model_long_only": LongOnlyModelStrategy,
}
