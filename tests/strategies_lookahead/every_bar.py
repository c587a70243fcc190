"""Trades on every bar (long, short, long...), so an order is always created on the last bar before a cut."""

import backtrader as bt


class Strategy(bt.Strategy):
    def next(self):
        self.order_target_percent(target=0.4 if len(self.data) % 2 else -0.4)
