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
    """Streams the model over the data, one bar at a time (``lines.signal``).

    ``history`` holds the bars before the data feed's first bar (a DataFrame
    in the ccxt layout): the stream consumes them first, so the signal on
    the first traded bar is the same one a precomputed pass over history
    plus traded bars gives.
    """

    lines = ("signal",)
    params = (("model", None), ("history", None))  # a fastrader.signals.SignalModel; warm-up bars

    def __init__(self):
        if self.p.model is None:
            raise ValueError("ModelSignal needs params.model (a fastrader.signals.SignalModel)")
        history = self.p.history
        self._stream = self.p.model.stream(history) if history is not None and len(history) else self.p.model.stream()

    def next(self):
        d = self.data
        self.lines.signal[0] = self._stream.update(d.open[0], d.high[0], d.low[0], d.close[0], d.volume[0])


# Order policy of ModelStrategy when the broker refuses an order for lack of cash
# (a gap at the next open, or fees on top of a 100% stake): retry on the next bar
# with the stake cut by a haircut that doubles from 0.5% per refusal, up to 50%.
RETRY_HAIRCUT = 0.005
RETRY_HAIRCUT_MAX = 0.5


class ModelStrategy(bt.Strategy):
    """Long/short on the model's signal: +stake above threshold, -stake below -threshold, with hysteresis.

    Order lifecycle: the strategy's position state (what :meth:`target` sees
    as the current position) changes only when an order fills
    (``notify_order``). While an order is in flight no other is sent. An
    order the broker refuses (margin or rejected), or that is cancelled or
    expires, is retried on the next bar toward the then-current target; after
    a margin refusal the stake is cut by a haircut (0.5%, doubling per
    consecutive refusal, at most 50%) until it fills. Every order's fate is
    counted by :class:`fastrader.analyzers.OrderLog`.
    """

    params = dict(
        threshold=1.5,  # enter when |signal| exceeds this (units of the training-period signal scale)
        exit_threshold=0.0,  # hold a position until the signal falls back through this (hysteresis)
        allow_short=True,
        stake=0.95,  # fraction of equity per full position (leaves room for fees)
        stream=False,  # True: compute signals bar by bar with ModelSignal
        model=None,  # SignalModel, needed when stream=True
        history=None,  # bars before the first traded one, to warm the streamed model up on
        rebalance_band=0.0,  # skip orders that change the target by less than this
    )

    def __init__(self):
        if self.p.stream:
            self.signal = ModelSignal(self.data, model=self.p.model, history=self.p.history).signal
        else:
            self.signal = self.data.signal
        self.records: list[tuple[float, float, float]] = []  # (bt datetime, signal, target)
        self._current_target = 0.0  # the position the fills have given us, as a target fraction
        self._order = None  # the order in flight
        self._order_target = 0.0
        self._retry = False
        self._margin_refusals = 0

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
    def notify_order(self, order):
        if self._order is None or order.ref != self._order.ref or order.alive():
            return
        self._order = None
        if order.status == order.Completed:
            self._current_target = self._order_target
            self._retry = False
            self._margin_refusals = 0
            return
        self._retry = True  # margin, rejected, cancelled or expired: try again next bar
        if order.status == order.Margin:
            self._margin_refusals += 1

    def prenext(self):
        # Indicators of a subclass are still warming up: stay flat, but keep the record.
        self.records.append((self.data.datetime[0], float(self.signal[0]), 0.0))

    def next(self):
        sig = float(self.signal[0])
        tgt = 0.0 if math.isnan(sig) else float(np.clip(self.target(sig), -1.0, 1.0))
        self.records.append((self.data.datetime[0], sig, tgt))
        if self._order is not None or getattr(self.broker, "liquidated", False):
            return
        changed = abs(tgt - self._current_target) > self.p.rebalance_band or (tgt == 0.0 and self._current_target != 0.0)
        if not (changed or (self._retry and tgt != self._current_target)):
            self._retry = False
            return
        haircut = 0.0
        if self._margin_refusals:
            haircut = min(RETRY_HAIRCUT_MAX, RETRY_HAIRCUT * 2 ** (self._margin_refusals - 1))
        order = self.order_target_percent(target=tgt * self.p.stake * (1.0 - haircut))
        if order is None:  # already there: nothing to trade
            self._current_target = tgt
            self._retry = False
        else:
            self._order, self._order_target = order, tgt


class LongOnlyModelStrategy(ModelStrategy):
    """Long when the signal is above the threshold, flat otherwise."""

    params = dict(allow_short=False)


BUILTIN = {
    "model": ModelStrategy,
    "model_long_only": LongOnlyModelStrategy,
}
