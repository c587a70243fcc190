"""OHLCV arrays shared by the feature tests: random walks and the real BTC/USDT file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_BTCUSDT_1h.csv"


def walk(n, seed, start=100.0, vol=0.01):
    """Geometric random walk OHLCV with consistent bars, as a list of five float64 arrays."""
    rng = np.random.default_rng(seed)
    c = start * np.exp(np.cumsum(rng.normal(0, vol, n)))
    o = np.r_[start, c[:-1]] * np.exp(rng.normal(0, vol / 4, n))
    h = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, vol / 2, n)))
    lo = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, vol / 2, n)))
    v = rng.lognormal(3.0, 1.0, n)
    return [o, h, lo, c, v]


def require_real_data() -> Path:
    """Path of the real hourly candles; skips the calling test when ../shared is absent."""
    if not REAL.is_file():
        pytest.skip(f"real BTC/USDT data not found at {REAL} (../shared is absent in a user's clone)")
    return REAL


def real_ohlcv():
    """The real hourly candles as five arrays; skips the test when ../shared is absent."""
    df = pd.read_csv(require_real_data())
    return tuple(df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume"))
