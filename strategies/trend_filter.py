"""Long-only model entries, allowed only while price is above its long moving average."""

import backtrader as bt

from fastrader.strategy import ModelStrategy


class Strategy(ModelStrategy):
    params = dict(trend_period=200, allow_short=False)

    def __init__(self):
        super().__init__()
        self.trend = bt.indicators.SimpleMovingAverage(self.data.close, period=self.p.trend_period)

    def target(self, signal):
        # During the SMA's warm-up Backtrader does not call next(), so trend[0] is defined here.
        if self.data.close[0] > self.trend[0] and signal > self.p.threshold:
            return 1.0
        return 0.0
