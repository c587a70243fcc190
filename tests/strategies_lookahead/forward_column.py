"""Sizes by a column computed in ``__init__`` from the whole close array: the return 3 bars ahead."""

import backtrader as bt
import numpy as np

AHEAD = 3


class Strategy(bt.Strategy):
    def __init__(self):
        close = np.asarray(self.data.close.array, dtype=np.float64)
        fwd = np.zeros(len(close))
        fwd[:-AHEAD] = close[AHEAD:] / close[:-AHEAD] - 1.0  # shifted from the future
        self.fwd = fwd

    def next(self):
        i = len(self.data) - 1
        self.order_target_percent(target=float(np.clip(self.fwd[i] * 20.0, -0.8, 0.8)))
