"""Backtest your own strategy from Python instead of the command line.

    python examples/custom_strategy.py

Defines a strategy that goes long on strong model signals only while
volatility is calm, runs it on the embedded sample, and prints the metrics.
"""

import backtrader as bt

from fastrader.pipeline import RunConfig, run
from fastrader.strategy import ModelStrategy


class CalmLong(ModelStrategy):
    params = dict(threshold=0.8, atr_period=24, max_atr_pct=0.012, allow_short=False)

    def __init__(self):
        super().__init__()
        self.atr = bt.indicators.AverageTrueRange(self.data, period=self.p.atr_period)

    def target(self, signal):
        calm = self.atr[0] / self.data.close[0] < self.p.max_atr_pct
        return 1.0 if calm and signal > self.p.threshold else 0.0


if __name__ == "__main__":
    # "path/to/file.py:Class" is what --strategy accepts on the command line too.
    outcome = run(RunConfig(strategy=f"{__file__}:CalmLong", out="reports/example-calm-long"))
    for k, v in outcome.metrics.items():
        print(f"{k:>18}: {v}")
    print("report:", outcome.out_dir)
