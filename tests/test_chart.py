"""chart.png: one block of panels per symbol, readable at 43,780 bars (decimated for display only)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fastrader.backtest import run_backtest
from fastrader.report.chart import MAX_POINTS, decimate, write_chart
from fastrader.strategy import ModelStrategy
from fastrader.testing.candles import gapping_candles


def test_decimate_keeps_every_extreme():
    rng = np.random.default_rng(3)
    n = 43_780
    x = np.arange(n)
    y = np.cumsum(rng.normal(size=n))
    y[12_345] += 80.0  # a one-bar spike must survive the thinning
    dx, dy, lo, hi = decimate(x, y, y - 1.0, y + 1.0, max_points=1500)
    assert len(dx) <= 1500 and dx[-1] == n - 1 and dy[-1] == y[-1]
    assert hi.max() == (y + 1.0).max() and lo.min() == (y - 1.0).min()
    k = -(-n // 1500)
    np.testing.assert_array_equal(hi, np.maximum.reduceat(y + 1.0, np.arange(0, n, k)))
    short = decimate(x[:100], y[:100])
    assert len(short[0]) == 100


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_chart_of_a_long_portfolio_run(tmp_path, suffix):
    import matplotlib.image as mpimg

    n = 43_780 if suffix == ".png" else 5_000
    frames = {}
    for i, sym in enumerate(("BTC/USDT", "ETH/USDT")):
        f = gapping_candles(n, seed=i, missing=0.01)
        f["signal"] = np.repeat(np.random.default_rng(i).uniform(-3, 3, n // 48 + 1), 48)[:n]
        frames[sym] = f
    res = run_backtest(frames, ModelStrategy, dict(threshold=1.0))
    assert len(res.trades) > 50
    t = time.perf_counter()
    path = write_chart(tmp_path / f"chart{suffix}", frames, res)
    seconds = time.perf_counter() - t
    assert path.is_file() and seconds < 30
    if suffix == ".png":
        img = mpimg.imread(path)
        h, w = img.shape[:2]
        assert 1200 <= w <= 2500 and h > w  # two symbols x three panels, tall and readable
        assert img[..., :3].std() > 0.05  # not blank
        assert path.stat().st_size < 3_000_000
    else:
        text = path.read_text()
        assert text.count("<g id=\"axes_") == 6  # price, signal, position per symbol
        assert "BTC/USDT" in text and "ETH/USDT" in text
    assert MAX_POINTS <= 2000
