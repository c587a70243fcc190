"""Causality (features on bars[:t] == the first t rows on all bars), streaming
== batch, and the documented behaviour on bad bars."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrader.errors import DataError
from fastrader.features import (
    KINDS, FeatureSpec, FeatureStream, atr, bar_flags, compute_features, default_spec, ema, macd, rsi, sma, stddev,
)
from fastrader.features import validate
from _bars import walk  # noqa: E402


# every kind, small windows so that all warm up within a few dozen bars
ALL_KINDS = FeatureSpec((
    {"kind": "logret", "n": 3}, {"kind": "volatility", "n": 7}, {"kind": "sma", "n": 5}, {"kind": "ema", "n": 6},
    {"kind": "close_sma", "n": 9}, {"kind": "close_ema", "n": 4}, {"kind": "rsi", "n": 5}, {"kind": "atr", "n": 4},
    {"kind": "atr_pct", "n": 8}, {"kind": "macd", "fast": 3, "slow": 8, "signal": 4},
    {"kind": "macd_norm", "fast": 4, "slow": 11, "signal": 3}, {"kind": "bbands", "n": 6, "k": 1.5},
    {"kind": "bb_pctb", "n": 10}, {"kind": "bb_width", "n": 5}, {"kind": "stddev", "n": 7, "nbdev": 2},
    {"kind": "volume_z", "n": 6}, {"kind": "vwap", "n": 5}, {"kind": "vwap_dev", "n": 12}, "hl_range", "intrabar",
))
SPECS = {"default": default_spec(), "all_kinds": ALL_KINDS, "all_kinds_rolling_z": ALL_KINDS.with_normalize(17)}


def test_all_kinds_covered():
    assert {f["kind"] for f in ALL_KINDS.features} == set(KINDS)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 500), frac=st.floats(0, 1),
       spec=st.sampled_from(sorted(SPECS)), nbad=st.integers(0, 3))
def test_prefix_equals_first_rows(seed, n, frac, spec, nbad):
    """Row t never changes when later bars arrive (also across bad bars)."""
    spec = SPECS[spec]
    bars = walk(n, seed)
    rng = np.random.default_rng(seed)
    for i in rng.integers(0, n, nbad):
        bars[rng.integers(0, 5)][i] = np.nan
    t = int(round(frac * n))
    full = compute_features(spec, *bars, on_bad="nan")
    part = compute_features(spec, *(x[:t] for x in bars), on_bad="nan")
    assert part.shape == (t, len(spec.names))
    np.testing.assert_array_equal(part, full[:t])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(30, 300), t=st.integers(0, 299))
def test_future_bars_do_not_leak(seed, n, t):
    """Changing every bar after t leaves rows <= t untouched (kernels and engine)."""
    t = min(t, n - 1)
    a = walk(n, seed)
    b = [x.copy() for x in a]
    b2 = walk(n, seed + 1)
    for x, y in zip(b, b2):
        x[t + 1:] = y[t + 1:] * 1.7
    np.testing.assert_array_equal(compute_features(ALL_KINDS, *a)[: t + 1], compute_features(ALL_KINDS, *b)[: t + 1])
    for f in (lambda x: sma(x[3], 5), lambda x: ema(x[3], 5), lambda x: rsi(x[3], 5),
              lambda x: atr(x[1], x[2], x[3], 5), lambda x: stddev(x[3], 5), lambda x: macd(x[3], 3, 8, 4)[2]):
        np.testing.assert_array_equal(f(a)[: t + 1], f(b)[: t + 1])


@pytest.mark.parametrize("name", sorted(SPECS))
def test_stream_equals_batch(name):
    spec = SPECS[name]
    bars = walk(3000, 5)
    for i in (700, 701, 1500):            # bad bars: NaN close, high < low, zero price
        bars[3][700] = np.nan
    bars[1][701], bars[2][701] = bars[2][701], bars[1][701] * 1.01
    bars[0][1500] = 0.0
    X, flags = compute_features(spec, *bars, on_bad="nan", return_flags=True)
    fs = FeatureStream(spec, on_bad="nan")
    rows = []
    for i in range(3000):
        rows.append(fs.update(*(x[i] for x in bars)))
        assert fs.last_flags == flags[i]
    np.testing.assert_array_equal(np.array(rows), X)
    assert np.isnan(X[[700, 701, 1500]]).all()


def test_stream_rejects_bad_bar_and_keeps_state():
    spec = default_spec()
    bars = walk(600, 9)
    fs = FeatureStream(spec)
    rows = [fs.update(*(x[i] for x in bars)) for i in range(300)]
    with pytest.raises(DataError, match=r"bar 300 has high < low"):
        fs.update(bars[0][300], 1.0, 2.0, bars[3][300], bars[4][300])
    rows += [fs.update(*(x[i] for x in bars)) for i in range(300, 600)]
    np.testing.assert_array_equal(np.array(rows), compute_features(spec, *bars))
    assert fs.bars == 600
    fs.reset()
    np.testing.assert_array_equal(fs.update(*(x[0] for x in bars)), compute_features(spec, *bars)[0])


@pytest.mark.parametrize("field,value,words", [
    (3, np.nan, "NaN or infinite"), (4, np.inf, "NaN or infinite"), (2, -1.0, "non-positive price"),
    (1, 0.5, "high < low"), (4, -3.0, "negative volume"),
])
def test_bad_bar_raises_with_location(field, value, words):
    bars = walk(400, 3)
    bars[field][123] = value
    with pytest.raises(DataError, match=rf"bar 123 has .*{words}"):
        compute_features(default_spec(), *bars)


def test_bad_bars_nan_mode_equals_clean_segments():
    """on_bad='nan': a bad bar is a NaN row and features restart from the next bar,
    i.e. the result is the clean stretches computed separately."""
    spec = ALL_KINDS
    bars = walk(2000, 4)
    bad = [0, 400, 401, 1234]
    bars[3][400] = -5.0
    bars[0][0] = np.nan
    bars[4][401] = -1.0
    bars[1][1234] = bars[2][1234] * 0.99   # high < low
    X, flags = compute_features(spec, *bars, on_bad="nan", return_flags=True)
    assert sorted(np.flatnonzero(flags & validate.BAD)) == bad
    edges = [-1] + bad + [2000]
    for a, b in zip(edges[:-1], edges[1:]):
        seg = compute_features(spec, *(x[a + 1:b] for x in bars))
        np.testing.assert_array_equal(X[a + 1:b], seg)
    assert np.isnan(X[bad]).all()
    # the same for the standalone kernels on a series with a hole (up to rounding:
    # the kernels step recursions two bars at a time, paired from the array start,
    # and STDDEV re-anchors its shifted moment sums on a chunk grid counted from
    # the array start; its variance subtracts two close numbers, so its rounding
    # differences are larger, still far inside the 1e-9 TA-Lib contract)
    c = bars[3].copy()
    c[400] = np.nan
    for f, tol in ((lambda x: sma(x, 9), 1e-13), (lambda x: ema(x, 9), 1e-13), (lambda x: rsi(x, 9), 1e-13),
                   (lambda x: stddev(x, 9), 1e-11)):
        after = f(c)[401:]
        np.testing.assert_array_equal(np.isnan(after), np.isnan(f(c[401:])))
        np.testing.assert_allclose(after, f(c[401:]), rtol=tol)
        assert np.isnan(f(c)[400])


def test_flags_match_independent_checks():
    bars = walk(1000, 8)
    rng = np.random.default_rng(0)
    for k in range(40):
        i, f = rng.integers(0, 1000), rng.integers(0, 5)
        bars[f][i] = [np.nan, 0.0, -1.0, bars[f][i] * 1.05, bars[f][i] * 0.95][k % 5]
    bars[4][rng.integers(0, 1000, 10)] = 0.0
    o, h, lo, c, v = bars
    fin = np.isfinite(np.c_[o, h, lo, c, v]).all(axis=1)
    expect = np.where(fin, 0, validate.NONFINITE)
    with np.errstate(invalid="ignore"):
        expect |= np.where(fin & ((np.c_[o, h, lo, c] <= 0).any(axis=1)), validate.NONPOSITIVE_PRICE, 0)
        incons = (h < lo) | (o > h) | (o < lo) | (c > h) | (c < lo)
        expect |= np.where(fin & incons, validate.INCONSISTENT, 0)
        expect |= np.where(fin & (v < 0), validate.NEGATIVE_VOLUME, 0)
        expect |= np.where(fin & (v == 0), validate.ZERO_VOLUME, 0)
    np.testing.assert_array_equal(bar_flags(*bars), expect)
    assert (expect & validate.BAD).any() and (expect & validate.ZERO_VOLUME).any()


def test_zero_volume_gives_nan_not_numbers():
    """Zero volume is legal; volume features whose window has no spread/volume are NaN."""
    bars = walk(300, 2)
    bars[4][100:140] = 0.0
    spec = FeatureSpec(({"kind": "volume_z", "n": 24}, {"kind": "vwap_dev", "n": 24}, "rsi"))
    X, flags = compute_features(spec, *bars, return_flags=True)
    assert (flags[100:140] & validate.ZERO_VOLUME).all()
    assert np.isnan(X[123:140, 0]).all() and np.isnan(X[123:140, 1]).all()   # window all zero
    assert np.isfinite(X[140:, :]).all() and np.isfinite(X[100:123, :]).all()
    assert np.isfinite(X[14:, 2]).all()


def test_short_and_empty_inputs():
    spec = default_spec()
    for n in (0, 1, 5, spec.warmup):
        X = compute_features(spec, *walk(n, 1))
        assert X.shape == (n, len(spec.names))
        for j, w in enumerate(spec.column_warmups):
            assert np.isnan(X[:w, j]).all() and np.isfinite(X[w:, j]).all()
    X = compute_features(spec, *walk(spec.warmup + 1, 1))
    assert np.isfinite(X[-1]).all()
    with pytest.raises(DataError, match="lengths differ"):
        compute_features(spec, *walk(10, 1)[:4], np.ones(9))
    with pytest.raises(DataError, match="1-D"):
        compute_features(spec, *walk(10, 1)[:4], np.ones((10, 1)))
