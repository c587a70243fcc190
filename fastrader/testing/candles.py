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
