"""Shared fixtures: seeded random candles and the real-data path (skips when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastrader.testing.candles import random_candles

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "binance_BTCUSDT_1h.csv"


@pytest.fixture
def candles():
    return random_candles(1500, seed=1)


@pytest.fixture
def real_data_path():
    if not REAL_DATA.is_file():
        pytest.skip(f"real BTC/USDT data not found at {REAL_DATA} (../shared is absent in a user's clone)")
    return REAL_DATA
