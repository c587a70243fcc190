"""Random but plausible candle frames for tests (never zeros, never constant)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def random_candles(n: int, seed: int = 0, start_ms: int = 1_600_000_000_000, step_ms: int = 3_600_000) -> pd.DataFrame:
    """A geometric random walk in the ccxt layout, ``n`` candles ``step_ms`` apart."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]] if n else close
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    return pd.DataFrame(
        {
            "timestamp": start_ms + step_ms * np.arange(n, dtype=np.int64),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.uniform(1, 50, n),
        }
    )


def gapping_candles(n: int, seed: int = 0, start_ms: int = 1_600_000_000_000, step_ms: int = 3_600_000,
                    gap_sd: float = 0.01, missing: float = 0.01, vol: float = 0.01) -> pd.DataFrame:
    """Like :func:`random_candles`, but every open gaps away from the last close (by ``gap_sd``)
    and a ``missing`` fraction of the timestamps is absent, as in real exchange data."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, vol, n)))
    prev = np.r_[100.0, close[:-1]]
    open_ = prev * np.exp(rng.normal(0, gap_sd, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, vol, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, vol, n))
    steps = np.where(rng.uniform(size=n) < missing, 2 + rng.integers(0, 3, n), 1)
    steps[0] = 0
    return pd.DataFrame(
        {
            "timestamp": start_ms + step_ms * np.cumsum(steps).astype(np.int64),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.lognormal(3.0, 1.0, n),
        }
    )
