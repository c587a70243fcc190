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

from .sizers import RollingVol, bars_per_year, cap, raw_fraction, risk_weights
from .stops import check_stop_params, place_bracket


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
        rebalance_band=0.0,  # skip orders that change a position by less than this (in units of one full stake)
        # sizing (fastrader.sizers; the README's sizing table)
        sizing="fixed",  # fixed | vol_target | signal
        vol_target=0.2,  # annual volatility to aim each position at (sizing=vol_target)
        vol_window=720,  # bars of realised volatility (sizing=vol_target, weighting=risk): 30 days of 1h
        signal_full=3.0,  # |signal| at which a sizing=signal position is full size
        max_leverage=0.0,  # cap on any one position's |fraction of equity| (0 = none; set it with vol_target)
        # portfolios (several traded datas)
        weighting="equal",  # equal: 1/N each; risk: inverse realised volatility, summing to 1
        gross_cap=0.0,  # cap on the sum of |positions| as a fraction of equity (0 = none)
        net_cap=0.0,  # cap on |sum of positions| as a fraction of equity (0 = none)
        # exits placed as Backtrader bracket orders when a position opens (0 = none)
        stop_loss=0.0,  # stop this fraction beyond the entry reference (the decision bar's close)
        take_profit=0.0,  # limit this fraction in the position's favour
        trail_stop=0.0,  # trailing stop (StopTrail) this fraction behind the best close; replaces stop_loss
    )

    def __init__(self):
        from .sizers import check_params

        try:
            check_params(self.p)
            check_stop_params(self.p)
        except ValueError as exc:
            raise TypeError(str(exc)) from None  # the pipeline reports a TypeError as a rejected param
        traded = [d for d in self.datas if not getattr(d, "fr_context", False)]  # coarse feeds are context only
        if self.p.stream:
            if len(traded) > 1:
                raise TypeError("stream=True runs one symbol; a portfolio uses precomputed signals")
            signals = [ModelSignal(self.data, model=self.p.model, history=self.p.history).signal]
        else:
            signals = [d.signal for d in traded]
        self.legs = [Leg(i, d, sig, self.p) for i, (d, sig) in enumerate(zip(traded, signals))]
        self.leg = self.legs[0]  # the leg being decided (what target() sees); data0's when there is one
        self.signal = self.legs[0].signal
        self.records: list[tuple[float, float, float, int]] = []  # (bt datetime, signal, target, leg index)
        self._leg_of: dict[int, Leg] = {}  # order ref -> leg, for the orders in flight and live exits
        self._stops = bool(self.p.stop_loss or self.p.take_profit or self.p.trail_stop)
        self._needs_vol = self.p.sizing == "vol_target" or (len(self.legs) > 1 and self.p.weighting == "risk")

    @property
    def _current_target(self) -> float:
        """The position the fills have given the leg being decided, in target units."""
        return self.leg.current

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

    # ---- sizing: the size() hook ----------------------------------------------------------
    def size(self, leg: "Leg", target: float) -> float:
        """Fraction of equity to hold on ``leg`` for ``target``, before portfolio weights and caps.

        The default follows ``params.sizing`` (see :mod:`fastrader.sizers`);
        override it for a sizing rule of your own.
        """
        p = self.p
        return raw_fraction(target, leg.sig, sizing=p.sizing, stake=p.stake, vol=leg.vol.value if leg.vol else NAN,
                            ann=leg.ann, vol_target=p.vol_target, signal_full=p.signal_full)

    # ---- Backtrader plumbing ----------------------------------------------------------
    def notify_order(self, order):
        if order.alive():
            return
        leg = self._leg_of.pop(order.ref, None)
        if leg is None:
            return
        if leg.order is not None and order.ref == leg.order.ref:
            leg.order = None
            if order.status == order.Completed:
                leg.current, leg.held = leg.order_target, leg.order_frac
                leg.retry = False
                leg.refusals = 0
                return
            leg.retry = True  # margin, rejected, cancelled or expired: try again next bar (its exits died with it)
            if order.status == order.Margin:
                leg.refusals += 1
            return
        # one of a bracket's exits (stop, trailing stop or take-profit)
        leg.children = [o for o in leg.children if o.ref != order.ref]
        if order.status == order.Completed:
            leg.blocked = 1 if leg.held > 0 else -1  # stay out of that side until the target leaves it
            leg.current = leg.held = 0.0
            for o in leg.children:  # Backtrader cancels the sibling
                self._leg_of.pop(o.ref, None)
            leg.children = []

    def _observe(self, leg: "Leg") -> bool:
        """Read the leg's new bar; False when its data has no bar at this time (nothing new, nothing filled in)."""
        n = len(leg.data)
        if n == leg.seen:
            return False
        leg.seen = n
        leg.sig = float(leg.signal[0])
        if leg.vol is not None:
            leg.vol.update(leg.data.close[0])
        return True

    def prenext(self):
        if len(self.legs) > 1 and not self._lineiterators[bt.LineIterator.IndType]:
            # Nothing of ours is warming up: a symbol whose data starts later must not hold the others back.
            self.next()
            return
        # Indicators of a subclass are still warming up: stay flat, but keep the record.
        for leg in self.legs:
            if self._observe(leg):
                self.records.append((leg.data.datetime[0], leg.sig, 0.0, leg.index))

    def next(self):
        fresh = []
        for leg in self.legs:
            if not self._observe(leg):
                continue
            self.leg = leg
            sig = leg.sig
            tgt = 0.0 if sig != sig else float(self.target(sig))
            tgt = 0.0 if tgt != tgt else min(1.0, max(-1.0, tgt))
            if leg.blocked:
                if tgt * leg.blocked > 0:
                    tgt = 0.0
                else:
                    leg.blocked = 0
            leg.target = tgt
            self.records.append((leg.data.datetime[0], sig, tgt, leg.index))
            fresh.append(leg)
        if fresh and not getattr(self.broker, "liquidated", False):
            self._rebalance(fresh)

    def _rebalance(self, fresh: list["Leg"]):
        p, legs = self.p, self.legs
        for leg in fresh:
            self.leg = leg
            leg.want = self.size(leg, leg.target)
        if len(legs) == 1:
            fracs = [legs[0].want]
        else:
            w = risk_weights([leg.vol.value for leg in legs]) if p.weighting == "risk" else [1.0 / len(legs)] * len(legs)
            fracs = [leg.want * wi for leg, wi in zip(legs, w)]
        fracs = cap(fracs, max_leverage=p.max_leverage, gross_cap=p.gross_cap, net_cap=p.net_cap)
        plan = []
        for leg in fresh:
            f = fracs[leg.index]
            if leg.order is not None:
                continue
            changed = abs(f - leg.held) > p.rebalance_band * p.stake or (f == 0.0 and leg.held != 0.0)
            if not (changed or (leg.retry and f != leg.held)):
                leg.retry = False
                continue
            plan.append((abs(f) >= abs(leg.held), leg, f))  # reductions first: they free the cash buys need
        plan.sort(key=lambda x: x[0])
        for _, leg, f in plan:
            self.leg = leg
            haircut = 0.0
            if leg.refusals:
                haircut = min(RETRY_HAIRCUT_MAX, RETRY_HAIRCUT * 2 ** (leg.refusals - 1))
            if self._stops:
                self._trade_with_exits(leg, f, haircut)
                continue
            order = self.order_target_percent(data=leg.data, target=f * (1.0 - haircut))
            self._sent(leg, order, f)

    def _sent(self, leg: "Leg", order, frac: float):
        if order is None:  # already there: nothing to trade
            leg.current, leg.held = leg.target if frac else 0.0, frac
            leg.retry = False
            return
        leg.order, leg.order_target, leg.order_frac = order, (leg.target if frac else 0.0), frac
        self._leg_of[order.ref] = leg

    def _trade_with_exits(self, leg: "Leg", frac: float, haircut: float):
        """With stops: open with a bracket, hold that size, close on a change of side (re-entry comes next bar)."""
        if leg.held != 0.0 or self.getposition(leg.data).size:
            if frac != 0.0 and (frac > 0) == (leg.held > 0):
                return  # same side: the position keeps the size and the exits it opened with
            for o in leg.children:
                self._leg_of.pop(o.ref, None)
                self.cancel(o)
            leg.children = []
            self._sent(leg, self.order_target_percent(data=leg.data, target=0.0), 0.0)
            return
        if frac == 0.0:
            return
        main, children = place_bracket(self, leg.data, frac * (1.0 - haircut), self.p)
        self._sent(leg, main, frac)
        leg.children = children
        for o in children:
            self._leg_of[o.ref] = leg


NAN = float("nan")


class Leg:
    """One traded data's state inside :class:`ModelStrategy` (a portfolio has one per symbol)."""

    __slots__ = ("index", "data", "signal", "seen", "sig", "target", "current", "held", "want", "order",
                 "order_target", "order_frac", "retry", "refusals", "children", "blocked", "vol", "ann")

    def __init__(self, index: int, data, signal, p):
        self.index, self.data, self.signal = index, data, signal
        self.seen = 0  # len(data) when last read
        self.sig = NAN
        self.target = 0.0  # this bar's target, in [-1, 1]
        self.current = 0.0  # the target the fills have given us (what target() sees as the position)
        self.held = 0.0  # the fraction of equity the fills have given us
        self.want = 0.0  # this bar's fraction before portfolio weights and caps
        self.order = None  # the order in flight
        self.order_target = self.order_frac = 0.0
        self.retry = False
        self.refusals = 0  # consecutive margin refusals
        self.children = []  # live bracket exits
        self.blocked = 0  # side (+1/-1) closed by a stop or take-profit, not re-entered until the target leaves it
        need = p.sizing == "vol_target" or p.weighting == "risk"
        self.vol = RollingVol(p.vol_window) if need else None
        self.ann = math.sqrt(bars_per_year(data_step_ms(data)))


def data_step_ms(data) -> float:
    """The bar spacing of a Backtrader data in ms, from its timeframe and compression."""
    unit = {bt.TimeFrame.Seconds: 1_000, bt.TimeFrame.Minutes: 60_000, bt.TimeFrame.Days: 86_400_000,
            bt.TimeFrame.Weeks: 604_800_000, bt.TimeFrame.Months: 30 * 86_400_000,
            bt.TimeFrame.MicroSeconds: 0.001}.get(data._timeframe, 86_400_000)
    return unit * max(1, int(data._compression or 1))


class LongOnlyModelStrategy(ModelStrategy):
    """Long when the signal is above the threshold, flat otherwise."""

    params = dict(allow_short=False)


BUILTIN = {
    "model": ModelStrategy,
    "model_long_only": LongOnlyModelStrategy,
}
