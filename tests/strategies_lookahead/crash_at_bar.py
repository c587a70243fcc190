"""Raises on its 100th bar whatever data follows: a bug, not lookahead."""

import backtrader as bt


class Strategy(bt.Strategy):
    def next(self):
        if len(self.data) == 100:
            raise ValueError("bar 100 is cursed")
        self.order_target_percent(target=0.3 if len(self.data) % 7 else 0.0)
