"""Trades the hourly bars on the last two closed daily bars (a coarse feed through Backtrader's resampledata)."""

import backtrader as bt


class Strategy(bt.Strategy):
    coarse_feeds = ("1d",)

    def next(self):
        day = self.datas[1]
        if len(day) < 2:
            return
        self.order_target_percent(target=0.5 if day.close[0] > day.close[-1] else -0.3)
