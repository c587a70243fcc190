"""The broker fastrader backtests against: crypto commissions, borrow costs, solvency.

Backtrader's own :class:`~backtrader.brokers.BackBroker` does the order
matching; two things are added so a backtest cannot quietly lie:

* **Borrowing costs money.** A short sells borrowed coins, and a long above
  1x leverage spends borrowed cash. Both pay an annual ``borrow_rate``
  through Backtrader's credit-interest mechanism (``CommInfoBase.interest``,
  charged by the broker once per calendar day the position is held, on the
  position's entry value, the way Backtrader defines it).
* **Equity cannot go below zero.** When a bar's adverse extreme (its high for
  a short, its low for a long) would take the account's equity to zero, the
  positions are liquidated within that bar: at the price where equity hits
  zero, or at the open when the bar gaps through it, commission included.
  Any loss beyond the account's equity is recorded as a shortfall, equity is
  floored at zero, and every later order is rejected, so the remaining bars
  are flat. A liquidation is listed in ``broker.liquidations``.
"""

from __future__ import annotations

from dataclasses import dataclass

import backtrader as bt

DEFAULT_BORROW_RATE = 0.10  # 10% a year: a typical crypto margin rate for USDT and BTC loans


class CryptoCommission(bt.CommInfoBase):
    """Percentage commission on traded value, fractional sizes, interest on borrowing."""

    params = (
        ("stocklike", True),
        ("commtype", bt.CommInfoBase.COMM_PERC),
        ("percabs", True),  # 0.001 means 0.1%
        ("interest", DEFAULT_BORROW_RATE),  # annual borrow rate
        ("interest_long", True),  # longs are asked too; only their borrowed part pays (below)
    )

    broker = None  # set by make_broker: longs pay only on what exceeds the account's equity

    def getsize(self, price, cash):
        # Backtrader's default rounds down to whole units: 1 BTC steps are useless.
        return self.p.leverage * (cash / price)

    def get_credit_interest(self, data, pos, dt):
        if not self.p.interest:  # no borrow rate: skip the per-bar date arithmetic
            return 0.0
        return super().get_credit_interest(data, pos, dt)

    def _get_credit_interest(self, data, size, price, days, dt0, dt1):
        rate = self.p.interest * days / 365.0
        if size < 0:  # a short borrows every coin it sold
            return rate * abs(size) * price
        # A long borrows only the part of its value above the account's equity (leverage > 1).
        equity = self.broker.getvalue() if self.broker is not None else float("inf")
        return rate * max(0.0, size * price - equity)


@dataclass(frozen=True)
class Liquidation:
    dt: float  # Backtrader day number of the bar
    data: str
    size: float  # position size that was closed (signed, as held)
    price: float  # fill price
    equity_before: float  # equity at the bar's open, before the liquidation
    shortfall: float  # loss beyond the account's equity, absorbed by the floor at zero


class SolventBroker(bt.brokers.BackBroker):
    """BackBroker that liquidates at zero equity and never lets equity go negative."""

    def __init__(self):
        super().__init__()
        self.liquidations: list[Liquidation] = []
        self.liquidated = False

    def submit(self, order, check=True):
        if self.liquidated:  # the account is gone: nothing more can be traded
            order.reject(self)
            self.notify(order)
            return order
        return super().submit(order, check)

    def next(self):
        super().next()
        if not self.liquidated:
            self._check_solvency()

    def _check_solvency(self):
        # Once per bar over every position: the equity at each one's adverse extreme, read straight from
        # the line buffers (d.low[0] is several calls deep in Backtrader).
        worst = self.cash
        held = []
        for d, p in self.positions.items():
            size = p.size
            if size:
                ln = d.lines.low if size > 0 else d.lines.high
                worst += size * ln.array[ln.idx]
                held.append((d, p))
        if not held or worst > 0:
            return

        def adverse(d, p):
            return d.low[0] if p.size > 0 else d.high[0]

        before = self.cash + sum(p.size * d.open[0] for d, p in held)
        if len(held) == 1:
            d, p = held[0]
            zero = -self.cash / p.size  # the price at which equity is exactly zero
            gapped = (d.open[0] >= zero) if p.size < 0 else (d.open[0] <= zero)
            prices = {d: d.open[0] if gapped else zero}
        else:  # several positions: each at its adverse extreme, the conservative choice
            prices = {d: adverse(d, p) for d, p in held}
        for d, p in held:
            price, size = prices[d], p.size
            comminfo = self.getcommissioninfo(d)
            self.cash += size * price - comminfo.getcommission(size, price)
            p.update(-size, price)
            self.liquidations.append(Liquidation(d.datetime[0], d._name, size, price, before, 0.0))
        if self.cash < 0:
            last = self.liquidations[-1]
            self.liquidations[-1] = Liquidation(last.dt, last.data, last.size, last.price, before, -self.cash)
            self.cash = 0.0
        self.liquidated = True
        for order in list(self.pending):
            if order is not None and order.alive():
                self.cancel(order)
        self._get_value()


def make_broker(cash: float, commission: float, slippage_bps: float, borrow_rate: float) -> SolventBroker:
    broker = SolventBroker()
    broker.setcash(cash)
    comminfo = CryptoCommission(commission=commission, interest=borrow_rate)
    comminfo.broker = broker
    broker.addcommissioninfo(comminfo)
    if slippage_bps:
        # slip_open: the fill at the next open is slipped too, not only later fills.
        broker.set_slippage_perc(slippage_bps / 1e4, slip_open=True, slip_limit=True, slip_match=True)
    return broker
