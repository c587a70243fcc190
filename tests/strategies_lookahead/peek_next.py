"""Peeks one bar ahead: Backtrader's preloaded lines answer ``close[1]`` with the next bar's close."""

import backtrader as bt


class Strategy(bt.Strategy):
    def next(self):
        up = self.data.close[1] > self.data.close[0]  # the future: the check must catch this
        self.order_target_percent(target=0.5 if up else -0.5)
