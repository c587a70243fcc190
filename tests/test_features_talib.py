"""TA-Lib-covered indicators (SMA, EMA, RSI, ATR, MACD, BBANDS, STDDEV) against
``talib`` itself: <= 1e-9 relative on the real BTC/USDT 1h bars and on random
walks, through both the standalone kernels and the fused engine."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

talib = pytest.importorskip("talib", reason="ta-lib (dev extra) is needed for the reference values")

from fastrader.features import FeatureSpec, atr, bbands, compute_features, ema, macd, rsi, sma, stddev  # noqa: E402
from _bars import real_ohlcv, walk  # noqa: E402

RTOL = 1e-9


DATASETS = {
    "btc": real_ohlcv,
    "walk_small": lambda: walk(20_000, 1),
    "walk_1e4": lambda: walk(20_000, 2, start=1e4, vol=0.003),  # quiet, high level: hard for E[x^2]-E[x]^2
    "walk_long": lambda: walk(300_000, 3, start=50.0, vol=0.02),
}


@pytest.fixture(params=list(DATASETS), scope="module")
def bars(request):
    return DATASETS[request.param]()


def assert_rel(ours, ref, what, tol=RTOL):
    """Same NaN pattern as TA-Lib; where it is finite, |ours - ref| <= tol * |ref|."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), (
        f"{what}: NaN pattern differs: first finite ours={np.argmax(~np.isnan(ours))} "
        f"talib={np.argmax(~np.isnan(ref))}")
    m = ~np.isnan(ref)
    assert m.sum() > 0
    err = np.abs(ours[m] - ref[m])
    bad = err > tol * np.abs(ref[m])
    assert not bad.any(), f"{what}: max rel error {np.max(err / np.abs(ref[m])):.3g} > {tol}"


@pytest.mark.parametrize("n", [2, 5, 20, 50, 200])
def test_sma_ema(bars, n):
    c = bars[3]
    assert_rel(sma(c, n), talib.SMA(c, n), f"sma {n}")
    assert_rel(ema(c, n), talib.EMA(c, n), f"ema {n}")


@pytest.mark.parametrize("n", [2, 7, 14, 30])
def test_rsi_atr(bars, n):
    _, h, lo, c, _ = bars
    assert_rel(rsi(c, n), talib.RSI(c, n), f"rsi {n}")
    assert_rel(atr(h, lo, c, n), talib.ATR(h, lo, c, n), f"atr {n}")


@pytest.mark.parametrize("f,s,g", [(12, 26, 9), (5, 35, 5), (3, 10, 16)])
def test_macd(bars, f, s, g):
    c = bars[3]
    ours = macd(c, f, s, g)
    ref = talib.MACD(c, f, s, g)
    # our line starts at slow-1 (TA-Lib hides it until the signal exists)
    assert np.isnan(ours[0][: s - 1]).all() and np.isfinite(ours[0][s - 1 :]).all()
    line = ours[0].copy()
    line[: s + g - 2] = np.nan
    for a, b, name in zip((line, ours[1], ours[2]), ref, ("line", "signal", "hist")):
        assert_rel(a, b, f"macd {name}")


@pytest.mark.parametrize("n,k", [(20, 2.0), (10, 1.5), (50, 3.0)])
def test_bbands(bars, n, k):
    c = bars[3]
    for a, b, name in zip(bbands(c, n, k), talib.BBANDS(c, n, k, k, 0), ("upper", "middle", "lower")):
        assert_rel(a, b, f"bbands {name}")


@pytest.mark.parametrize("n,nb", [(24, 1.0), (5, 2.0), (100, 1.0)])
def test_stddev(bars, n, nb):
    c = bars[3]
    assert_rel(stddev(c, n, nb), talib.STDDEV(c, n, nb), f"stddev {n}")


def test_fused_engine_matches_talib(bars):
    o, h, lo, c, v = bars
    spec = FeatureSpec(("sma", "ema", "rsi", "atr", {"kind": "macd"}, "bbands", "stddev",
                        {"kind": "ema", "n": 50}, {"kind": "atr_pct", "n": 14},
                        {"kind": "macd_norm", "fast": 5, "slow": 35, "signal": 5}))
    X = pd.DataFrame(compute_features(spec, o, h, lo, c, v), columns=spec.names)
    assert_rel(X["sma_20"], talib.SMA(c, 20), "sma")
    assert_rel(X["ema_20"], talib.EMA(c, 20), "ema")
    assert_rel(X["ema_50"], talib.EMA(c, 50), "ema 50")
    assert_rel(X["rsi_14"], talib.RSI(c, 14), "rsi")
    assert_rel(X["atr_14"], talib.ATR(h, lo, c, 14), "atr")
    assert_rel(X["atr_pct_14"], talib.ATR(h, lo, c, 14) / c, "atr_pct")
    for name, ref in zip(("macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9"), talib.MACD(c)):
        ours = X[name].to_numpy().copy()
        ours[:33] = np.nan
        assert_rel(ours, ref, name)
    for name, ref in zip(("macdn_5_35_5", "macdn_signal_5_35_5", "macdn_hist_5_35_5"), talib.MACD(c, 5, 35, 5)):
        ours = X[name].to_numpy().copy()
        ours[:38] = np.nan
        assert_rel(ours, ref / c, name)
    for name, ref in zip(("bb_upper_20_2", "bb_middle_20_2", "bb_lower_20_2"), talib.BBANDS(c, 20, 2, 2, 0)):
        assert_rel(X[name], ref, name)
    assert_rel(X["stddev_24"], talib.STDDEV(c, 24, 1), "stddev")


def test_leading_nans_like_talib():
    """A series that starts with NaN (e.g. an indicator of an indicator) starts where TA-Lib starts."""
    c = walk(3000, 7)[3].copy()
    c[:37] = np.nan
    assert_rel(sma(c, 20), talib.SMA(c, 20), "sma")
    assert_rel(ema(c, 20), talib.EMA(c, 20), "ema")
    assert_rel(rsi(c, 14), talib.RSI(c, 14), "rsi")
    assert_rel(stddev(c, 24), talib.STDDEV(c, 24), "stddev")
    for a, b in zip(bbands(c, 20, 2.0), talib.BBANDS(c, 20, 2, 2, 0)):
        assert_rel(a, b, "bbands")
