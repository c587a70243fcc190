"""Backtrader analyzers that record what a run did, for any strategy.

* :class:`EquityRecorder`: broker value and position after every bar.
* :class:`OrderLog`: every order's fate. Orders that the broker refused
  (margin, rejected) or that were cancelled or expired are counted by reason,
  so a strategy whose orders silently fail is reported, not believed.
* :class:`TradeLog`: round trips from flat to flat, built from the fills
  themselves: a position scaled in and out gets its size-weighted entry and
  exit prices and the fees of every fill that belongs to it.
"""

from __future__ import annotations

import backtrader as bt

_FINAL = {
    bt.Order.Completed: "filled",
    bt.Order.Canceled: "cancelled",
    bt.Order.Expired: "expired",
    bt.Order.Margin: "margin",
    bt.Order.Rejected: "rejected",
}


class _Analyzer(bt.Analyzer):
    """An analyzer without children that ignores Backtrader's per-bar cash/value/fund notifications.

    Backtrader calls both on every analyzer at every bar; none of ours reads them, and over a
    portfolio's hundreds of thousands of steps the empty calls add up.
    """

    def _notify_cashvalue(self, cash, value):
        pass

    def _notify_fund(self, cash, value, fundvalue, shares):
        pass


class _EventsOnly(_Analyzer):
    """An analyzer that reacts to order and trade notifications only: no per-bar call at all."""

    def _next(self):
        pass

    def _prenext(self):
        pass

    def _nextstart(self):
        pass


class EquityRecorder(_Analyzer):
    """Broker value (cash + positions marked to close) and cash after every bar.

    With several traded datas (a portfolio) it also records each one's
    position at every step of Backtrader's common clock (a fresh snapshot only
    after a fill or a liquidation: positions change at no other time); the
    marks are the symbols' last closes, as the broker's valuation uses, and
    :func:`fastrader.backtest.run_backtest` adds them from the candles. Coarse
    context feeds (``fr_context``) are not traded and not recorded.
    """

    def start(self):
        self.rows: list[tuple[float, float, float, float]] = []  # (dt, value, cash, position of data0)
        self.holdings: list[tuple] = []  # per row: the traded datas' positions (portfolios)
        self.datas_traded = [d for d in self.strategy.datas if not getattr(d, "fr_context", False)]
        self._multi = len(self.datas_traded) > 1
        self._context = len(self.datas_traded) < len(self.strategy.datas)
        self._last_dt = None
        self._pos = tuple(0.0 for _ in self.datas_traded)
        self._dirty = False
        self._liqs = 0

    def notify_order(self, order):
        if order.executed.size:
            self._dirty = True

    def next(self):
        s = self.strategy
        b = s.broker
        ds = self.datas_traded
        if not self._multi:  # once per bar of a one-symbol run: line buffer and position read directly
            ln = ds[0].lines.datetime
            dt = ln.array[ln.idx]
            if dt == self._last_dt:  # only a context feed moved
                return
            self._last_dt = dt
            self.rows.append((dt, b.getvalue(), b.getcash(), b.getposition(ds[0]).size))
            return
        if self._context:  # the common clock also ticks for the coarse feeds: stamp by the traded datas
            dt = max(d.datetime[0] for d in ds if len(d))
            if dt == self._last_dt:
                return
        else:
            dt = s.datetime[0]  # Backtrader's common clock: the step's time
        self._last_dt = dt
        liqs = len(getattr(b, "liquidations", ()))
        if self._dirty or liqs != self._liqs:
            self._pos = tuple(s.getposition(d).size for d in ds)
            self._dirty, self._liqs = False, liqs
        self.rows.append((dt, b.getvalue(), b.getcash(), self._pos[0]))
        self.holdings.append(self._pos)

    def get_analysis(self):
        return self.rows


class OrderLog(_EventsOnly):
    """One row per order at its final status, and counts by outcome."""

    def start(self):
        self.rows: list[dict] = []
        self._seen: set[int] = set()

    def notify_order(self, order):
        self._seen.add(order.ref)
        status = _FINAL.get(order.status)
        if status is None:  # submitted, accepted, partial: not final yet
            return
        parent = getattr(order, "parent", None)
        if status == "rejected" and parent is not None and parent.status != bt.Order.Completed:
            status = "cancelled"  # a bracket's exit that died with its refused entry: one refusal, not three
        ex = order.executed
        self.rows.append(
            {
                "created_dt": order.created.dt,
                "final_dt": self.strategy.datetime[0],
                "ref": order.ref,
                "data": order.data._name,
                "side": "buy" if order.isbuy() else "sell",
                "size": order.created.size,
                "status": status,
                "filled_size": ex.size,
                "price": ex.price if ex.size else float("nan"),
                "commission": ex.comm,
            }
        )

    def counts(self) -> dict:
        final = [r["status"] for r in self.rows]
        return {
            "submitted": len(self._seen),
            "filled": final.count("filled"),
            "rejected": final.count("margin") + final.count("rejected"),
            "rejected_margin": final.count("margin"),
            "rejected_other": final.count("rejected"),
            "cancelled": final.count("cancelled"),
            "expired": final.count("expired"),
            "open_at_end": len(self._seen) - len(final),
        }

    def get_analysis(self):
        return self.rows


class _Book:
    """The trade currently open on one data feed."""

    __slots__ = ("pos", "sign", "open_dt", "open_bar", "in_qty", "in_val", "out_qty", "out_val", "comm", "max_size")

    def __init__(self):
        self.pos = 0.0

    def open(self, sign, dt, bar):
        self.sign, self.open_dt, self.open_bar = sign, dt, bar
        self.in_qty = self.in_val = self.out_qty = self.out_val = self.comm = self.max_size = 0.0


class TradeLog(_Analyzer):
    """Round trips (flat to flat, or to a flip) from the fills, per data feed.

    ``entry_price`` and ``exit_price`` are the size-weighted averages of the
    fills that opened (or added to) and closed (or reduced) the position;
    ``size`` is the total quantity entered and ``max_size`` the largest
    position held. ``pnl`` is before fees, ``pnl_net`` after them; a fill
    that flips the position splits its fee between the two trades by size.
    Liquidations (see :mod:`fastrader.broker`) close trades too.
    """

    def start(self):
        self.rows: list[dict] = []
        self._books: dict[str, _Book] = {}
        self._done: dict[int, tuple[float, float, float]] = {}  # order ref -> (size, value, fee) booked
        self._liq_seen = 0

    def _bar(self, data) -> int:
        return len(data)

    def _fill(self, data, size, price, comm, dt):
        if size == 0:
            return
        book = self._books.setdefault(data._name, _Book())
        sign = 1.0 if size > 0 else -1.0
        qty = abs(size)
        if book.pos != 0 and sign != book.sign:  # reduces (and maybe flips) the position
            closing = min(qty, abs(book.pos))
            book.out_qty += closing
            book.out_val += closing * price
            book.comm += comm * closing / qty
            book.pos += sign * closing
            if abs(book.pos) <= 1e-12 * max(1.0, book.max_size):
                book.pos = 0.0
                self._close(book, data, dt)
            qty -= closing
            comm *= qty / abs(size)
            if qty <= 1e-12 * max(1.0, abs(size)):
                return
        if book.pos == 0:
            book.open(sign, dt, self._bar(data))
        book.in_qty += qty
        book.in_val += qty * price
        book.comm += comm
        book.pos += sign * qty
        book.max_size = max(book.max_size, abs(book.pos))

    def _close(self, book, data, dt):
        entry = book.in_val / book.in_qty
        exit_ = book.out_val / book.out_qty
        pnl = book.sign * (book.out_val - book.in_val)
        self.rows.append(
            {
                "open_dt": book.open_dt,
                "close_dt": dt,
                "data": data._name,
                "direction": "long" if book.sign > 0 else "short",
                "size": book.in_qty,
                "max_size": book.max_size,
                "entry_price": entry,
                "exit_price": exit_,
                "bars_held": self._bar(data) - book.open_bar,
                "pnl": pnl,
                "pnl_net": pnl - book.comm,
                "commission": book.comm,
            }
        )

    def notify_order(self, order):
        ex = order.executed
        size0, value0, comm0 = self._done.get(order.ref, (0.0, 0.0, 0.0))
        if ex.size == size0:
            return
        # executed.price is the running average; book only what is new since last time
        value = ex.size * ex.price
        dsize, dvalue = ex.size - size0, value - value0
        self._done[order.ref] = (ex.size, value, ex.comm)
        self._fill(order.data, dsize, dvalue / dsize, ex.comm - comm0, ex.dt)

    def next(self):
        liqs = getattr(self.strategy.broker, "liquidations", ())
        if len(liqs) == self._liq_seen:  # the usual bar: nothing was liquidated
            return
        for liq in liqs[self._liq_seen:]:
            data = next(d for d in self.strategy.datas if d._name == liq.data)
            comm = self.strategy.broker.getcommissioninfo(data).getcommission(liq.size, liq.price)
            self._fill(data, -liq.size, liq.price, comm, liq.dt)
        self._liq_seen = len(liqs)

    def get_analysis(self):
        return self.rows
