"""Helpers for tests: random candle frames and a local fake exchange server."""

from fastrader.testing.candles import random_candles

__all__ = ["random_candles"]
