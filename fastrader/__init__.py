"""fastrader: causal, fast, model-driven backtests on Backtrader."""

__version__ = "0.1.0"
