"""Reads a fixed later bar of the whole close array in ``__init__``: fails when the data is shorter."""

import backtrader as bt


class Strategy(bt.Strategy):
    def __init__(self):
        self.anchor = self.data.close.array[400]  # a bar from the future, known from the start

    def next(self):
        self.order_target_percent(target=0.5 if self.data.close[0] < self.anchor else -0.5)
