"""Stop-loss, take-profit and trailing stops of :class:`fastrader.strategy.ModelStrategy`, as Backtrader brackets.

A position opens with one Backtrader bracket: the market entry and, as its
children, a ``Stop`` (or ``StopTrail``) order and a ``Limit`` order, one
cancelling the other. Their prices are set from the reference price the
decision was made on, the decision bar's close ``c``:

* ``stop_loss=s``: stop at ``c * (1 - s)`` for a long, ``c * (1 + s)`` for a short;
* ``take_profit=t``: limit at ``c * (1 + t)`` for a long, ``c * (1 - t)`` for a short;
* ``trail_stop=r``: a ``StopTrail`` starting at ``c * (1 - r)`` (long), moved
  after every bar to ``r`` behind that bar's close when that is tighter.

Backtrader activates a bracket's exits on the bar after the entry fills.
From then on a stop fills at its price when the bar trades through it, or at
the bar's open when the bar gaps through it: whichever is worse for the
trader (then slippage, against the trader). The take-profit fills at its
limit, or at the open when the bar gaps beyond it. A bar that reaches both
fills the stop (it is checked first): the conservative reading of a bar whose
path inside is unknown.
"""

from __future__ import annotations

import math

import backtrader as bt


def check_stop_params(p) -> None:
    for name in ("stop_loss", "take_profit", "trail_stop"):
        x = getattr(p, name)
        if not (isinstance(x, (int, float)) and math.isfinite(x) and 0 <= x < 1):
            raise ValueError(f"param {name} must be a fraction in [0, 1) (0.05 = 5%; 0 = none), got {x!r}")
    if p.stop_loss and p.trail_stop:
        raise ValueError("give param stop_loss or trail_stop, not both (a bracket has one stop)")


def exit_prices(side: int, ref: float, p) -> tuple[float | None, float | None]:
    """(stop, take-profit) prices for a position on ``side`` (+1 long, -1 short) decided at ``ref``."""
    stop = ref * (1 - side * p.stop_loss) if p.stop_loss else None
    take = ref * (1 + side * p.take_profit) if p.take_profit else None
    return stop, take


def place_bracket(strategy: bt.Strategy, data, frac: float, p):
    """Open ``frac`` of equity on ``data`` at the next open with its exits; returns (entry, [exits])."""
    side = 1 if frac > 0 else -1
    ref = float(data.close[0])
    size = abs(frac) * strategy.broker.getvalue() / ref
    stop, take = exit_prices(side, ref, p)
    kw = dict(data=data, size=size, exectype=bt.Order.Market)
    if p.trail_stop:
        kw.update(stopexec=bt.Order.StopTrail, stopprice=ref, stopargs=dict(trailpercent=p.trail_stop))
    elif stop is not None:
        kw.update(stopprice=stop)
    else:
        kw.update(stopexec=None)
    if take is not None:
        kw.update(limitprice=take)
    else:
        kw.update(limitexec=None)
    orders = (strategy.buy_bracket if side > 0 else strategy.sell_bracket)(**kw)
    return orders[0], [o for o in orders[1:] if o is not None]
