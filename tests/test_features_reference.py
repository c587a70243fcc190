"""Features TA-Lib does not have, against independent NumPy/pandas code
(two-pass window statistics over sliding windows), to <= 1e-12."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view as windows

from fastrader.features import FeatureSpec, compute_features, default_spec, rolling_zscore
from _bars import real_ohlcv, walk  # noqa: E402

TOL = 1e-12


DATASETS = {"btc": real_ohlcv, "walk": lambda: walk(30_000, 11), "walk_quiet": lambda: walk(30_000, 12, 2e4, 0.002)}


@pytest.fixture(params=list(DATASETS), scope="module")
def bars(request):
    return DATASETS[request.param]()


def lead(n, x):
    """x preceded by n NaNs."""
    return np.r_[np.full(n, np.nan), x]


def roll_mean(x, n):
    return lead(n - 1, windows(x, n).mean(axis=1))


def roll_std(x, n, ddof):
    w = windows(x, n)
    d = w - w.mean(axis=1, keepdims=True)
    return lead(n - 1, np.sqrt((d * d).sum(axis=1) / (n - ddof)))


def assert_close(ours, ref, what, scale=None):
    """Same NaN pattern; |ours - ref| <= TOL * max(|ref|, scale).

    `scale` is the feature's typical magnitude (its median |value|): a
    dimensionless feature that crosses zero (a z-score, a deviation) is judged
    relative to its usual size, not to a value that happens to be ~0.
    """
    ours, ref = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), f"{what}: NaN pattern differs"
    m = ~np.isnan(ref)
    assert m.sum() > 0
    if scale is None:
        scale = np.median(np.abs(ref[m]))
    err = np.abs(ours[m] - ref[m]) / np.maximum(np.abs(ref[m]), scale)
    assert err.max() <= TOL, f"{what}: max error {err.max():.3g} > {TOL}"


def features(bars, *items, normalize=None):
    spec = FeatureSpec(items, normalize)
    return pd.DataFrame(compute_features(spec, *bars), columns=spec.names)


def test_returns_and_volatility(bars):
    o, h, lo, c, v = bars
    X = features(bars, "logret", {"kind": "logret", "n": 24}, {"kind": "volatility", "n": 24},
                 {"kind": "volatility", "n": 168})
    r1 = np.log(c[1:] / c[:-1])
    assert_close(X["logret_1"], lead(1, r1), "logret_1")
    assert_close(X["logret_24"], lead(24, np.log(c[24:] / c[:-24])), "logret_24")
    # pandas, an independent implementation, as a second opinion on the volatility
    pd_vol = pd.Series(lead(1, r1)).rolling(24).std().to_numpy()
    assert_close(X["vol_24"], roll_std(lead(1, r1), 24, 1), "vol_24")
    np.testing.assert_allclose(X["vol_24"], pd_vol, rtol=1e-9)
    assert_close(X["vol_168"], roll_std(lead(1, r1), 168, 1), "vol_168")


def test_price_relative_features(bars):
    o, h, lo, c, v = bars
    X = features(bars, {"kind": "close_sma", "n": 50}, {"kind": "close_ema", "n": 20},
                 {"kind": "bb_pctb", "n": 20, "k": 2}, {"kind": "bb_width", "n": 30, "k": 1.5})
    assert_close(X["close_sma_50"], c / roll_mean(c, 50) - 1, "close_sma")
    # EMA seeded with the mean of the first n closes, then the textbook recursion (pandas ewm)
    seeded = np.r_[np.mean(c[:20]), c[20:]]
    ema = lead(19, pd.Series(seeded).ewm(alpha=2 / 21, adjust=False).mean().to_numpy())
    assert_close(X["close_ema_20"], c / ema - 1, "close_ema")
    mid, sd = roll_mean(c, 20), roll_std(c, 20, 0)
    assert_close(X["bb_pctb_20_2"], (c - (mid - 2 * sd)) / (4 * sd), "bb_pctb")
    mid, sd = roll_mean(c, 30), roll_std(c, 30, 0)
    assert_close(X["bb_width_30_1.5"], 3 * sd / mid, "bb_width")


def test_volume_and_bar_shape(bars):
    o, h, lo, c, v = bars
    X = features(bars, {"kind": "volume_z", "n": 24}, {"kind": "vwap", "n": 24}, {"kind": "vwap_dev", "n": 10},
                 "hl_range", "intrabar")
    assert_close(X["volume_z_24"], (v - roll_mean(v, 24)) / roll_std(v, 24, 1), "volume_z")
    tp = (h + lo + c) / 3
    vw24 = lead(23, windows(tp * v, 24).sum(axis=1) / windows(v, 24).sum(axis=1))
    assert_close(X["vwap_24"], vw24, "vwap")
    vw10 = lead(9, windows(tp * v, 10).sum(axis=1) / windows(v, 10).sum(axis=1))
    assert_close(X["vwap_dev_10"], c / vw10 - 1, "vwap_dev")
    assert_close(X["hl_range"], (h - lo) / c, "hl_range")
    # documented convention: a bar with no range (high == low; BTC has some) sits at 0.5
    pos = np.divide(c - lo, h - lo, out=np.full_like(c, 0.5), where=h > lo)
    assert_close(X["intrabar"], pos, "intrabar")


def test_rolling_zscore_normalisation(bars):
    spec = default_spec()
    raw = compute_features(spec, *bars)
    W = 200
    Z = compute_features(spec.with_normalize(W), *bars)
    ref = np.full_like(raw, np.nan)
    for j in range(raw.shape[1]):
        col = raw[:, j]
        start = spec.column_warmups[j]
        seg = col[start:]
        ref[start:, j] = (seg - roll_mean(seg, W)) / roll_std(seg, W, 1)
    for j, name in enumerate(spec.names):
        assert_close(Z[:, j], ref[:, j], f"rolling z of {name}", scale=1.0)
    # the standalone function computes the same numbers, bit for bit
    np.testing.assert_array_equal(rolling_zscore(raw, W), Z)
    assert spec.with_normalize(W).warmup == spec.warmup + W - 1
    assert np.isfinite(Z[spec.warmup + W - 1:]).all() and np.isnan(Z[spec.warmup + W - 2]).any()


def test_default_spec_warmup_and_scale_free(bars):
    spec = default_spec()
    X = compute_features(spec, *bars)
    assert 12 <= len(spec.names) <= 16 and X.shape == (len(bars[3]), len(spec.names))
    assert np.isfinite(X[spec.warmup:]).all()
    for j, w in enumerate(spec.column_warmups):
        assert np.isnan(X[:w, j]).all() and np.isfinite(X[w, j]), spec.names[j]
    # scale-free: multiplying all prices by 1000 and volumes by 7 changes nothing but rounding
    o, h, lo, c, v = bars
    Y = compute_features(spec, o * 1000, h * 1000, lo * 1000, c * 1000, v * 7)
    np.testing.assert_allclose(Y[spec.warmup:], X[spec.warmup:], rtol=1e-6, atol=1e-9)
