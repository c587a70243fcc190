"""Random decisions from an unseeded generator: not deterministic, though it never sees the future."""

import random

import backtrader as bt


class Strategy(bt.Strategy):
    def next(self):
        self.order_target_percent(target=random.choice((-0.5, 0.0, 0.5)))
