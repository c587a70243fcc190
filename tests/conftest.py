"""Shared fixtures: seeded random candles and the real-data path (skips when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "binance_BTCUSDT_1h.csv"


def random_candles(n: int, seed: int = 0, start_ms: int = 1_600_000_000_000 - (1_600_000_000_000 % 3_600_000)) -> pd.DataFrame:
    """A random-walk market in ccxt layout (never zeros, never flat)."""
    rng = np.random.default_rng(seed)
    r = rng.standard_t(4, n) * 0.006
    close = 20_000 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[20_000.0], close[:-1]]) * np.exp(rng.normal(0, 2e-4, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 3e-3, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 3e-3, n)))
    vol = np.exp(rng.normal(7, 0.5, n))
    ts = start_ms + 3_600_000 * np.arange(n, dtype=np.int64)
    return pd.DataFrame({"timestamp": ts, "open": open_, "high": high, "low": low, "close": close, "volume": vol})


@pytest.fixture
def candles():
    return random_candles(1500, seed=1)


@pytest.fixture
def real_data_path():
    if not REAL_DATA.is_file():
        pytest.skip(f"real BTC/USDT data not found at {REAL_DATA} (../shared is absent in a user's clone)")
    return REAL_DATA
