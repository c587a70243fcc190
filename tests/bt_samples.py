"""Backtrader's own sample strategies, restated in our words with the same logic, as test fixtures.

They import nothing from fastrader: they are what a Backtrader user already has.
"""

import backtrader as bt


class QuickstartSMA(bt.Strategy):
    """The quickstart's last strategy: long ``stake`` units while the close is above its SMA."""

    params = (("maperiod", 15), ("stake", 10.0), ("printlog", False))

    def __init__(self):
        self.sma = bt.indicators.SimpleMovingAverage(self.datas[0].close, period=self.p.maperiod)
        self.pending = None

    def notify_order(self, order):
        if order.status in (order.Submitted, order.Accepted):
            return
        self.pending = None

    def next(self):
        if self.pending:
            return
        if not self.position:
            if self.datas[0].close[0] > self.sma[0]:
                self.pending = self.buy(size=self.p.stake)
        elif self.datas[0].close[0] < self.sma[0]:
            self.pending = self.sell(size=self.p.stake)


class MultiDataSMACross(bt.Strategy):
    """The multi-data sample: data1's close crossing its SMA drives long-only trades on data0.

    Flat and data1 crosses up: buy ``stake`` of data0. Long and data1 crosses
    down: sell ``stake``. One order at a time.
    """

    params = (("period", 15), ("stake", 10.0))

    def __init__(self):
        self.inflight = None
        ma = bt.indicators.SimpleMovingAverage(self.data1, period=self.p.period)
        self.cross = bt.indicators.CrossOver(self.data1.close, ma)
        self.fills = []  # (bar datetime, data name, size, price)

    def notify_order(self, order):
        if order.status in (order.Submitted, order.Accepted):
            return
        if order.status == order.Completed:
            self.fills.append((order.executed.dt, order.data._name, order.executed.size, order.executed.price))
        self.inflight = None

    def next(self):
        if self.inflight:
            return
        if not self.position:
            if self.cross > 0.0:
                self.inflight = self.buy(data=self.data0, size=self.p.stake)
        elif self.cross < 0.0:
            self.inflight = self.sell(data=self.data0, size=self.p.stake)


class CoarseWatcher(bt.Strategy):
    """Asks fastrader for the same symbol at 4h and 1d (``coarse_feeds``) and records what it sees at each 1h bar."""

    coarse_feeds = ("4h", "1d")

    def __init__(self):
        self.seen = []  # (1h bar datetime, then per coarse feed: len, open, high, low, close, volume)
        self._last = 0

    def next(self):
        if len(self.data0) == self._last:  # only a coarse feed moved at this time
            return
        self._last = len(self.data0)
        row = [self.data0.datetime[0]]
        for d in (self.data1, self.data2):
            row += [len(d)] + ([d.open[0], d.high[0], d.low[0], d.close[0], d.volume[0]] if len(d) else [float("nan")] * 5)
        self.seen.append(tuple(row))

    prenext = next
