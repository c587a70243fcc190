"""A plain Backtrader SMA crossover (no fastrader base class): long on a golden cross, flat on a death cross."""

import backtrader as bt


class Strategy(bt.Strategy):
    params = dict(fast=10, slow=30)

    def __init__(self):
        self.cross = bt.indicators.CrossOver(bt.indicators.SMA(self.data.close, period=self.p.fast),
                                             bt.indicators.SMA(self.data.close, period=self.p.slow))

    def next(self):
        if self.cross[0] > 0:
            self.order_target_percent(target=0.9)
        elif self.cross[0] < 0:
            self.order_target_percent(target=0.0)
