"""FeatureSpec (names, warm-ups, JSON round trip, validation) and Normalizer
(fitted on training rows only, NaN-aware, checkpoint round trip)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastrader.errors import CheckpointError, ConfigError, DataError
from fastrader.features import KINDS, FeatureSpec, FeatureStream, Normalizer, compute_features, default_spec


def walk(n, seed):
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = np.r_[100.0, c[:-1]]
    h = np.maximum(o, c) * (1 + rng.uniform(0.0001, 0.01, n))
    lo = np.minimum(o, c) * (1 - rng.uniform(0.0001, 0.01, n))
    return o, h, lo, c, rng.lognormal(3, 1, n)


def test_default_spec_shape_and_scale_free_names():
    spec = default_spec()
    assert 12 <= len(spec.names) <= 16 and len(set(spec.names)) == len(spec.names)
    # the default model set holds no raw price levels
    assert not any(n.startswith(("sma_", "ema_", "bb_upper", "bb_middle", "bb_lower", "vwap_2", "atr_1", "macd_"))
                   for n in spec.names)
    assert spec.warmup == max(spec.column_warmups) == 168


def test_json_round_trip_is_exact_and_plain():
    spec = FeatureSpec(({"kind": "bbands", "n": 30, "k": 2.5}, ("rsi", {"n": 9}), "intrabar"),
                       {"kind": "rolling_z", "window": 300})
    s = spec.to_json()
    d = json.loads(s)                       # plain JSON, nothing Python-specific
    assert d["features"][1] == {"kind": "rsi", "n": 9}
    back = FeatureSpec.from_json(s)
    assert back == spec and back.names == spec.names and back.warmup == spec.warmup
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.names == ["bb_upper_30_2.5", "bb_middle_30_2.5", "bb_lower_30_2.5", "rsi_9", "intrabar"]
    bars = walk(800, 1)
    np.testing.assert_array_equal(compute_features(back, *bars), compute_features(spec, *bars))


def test_every_kind_has_defaults_and_documented_warmup():
    bars = walk(400, 2)
    for kind in KINDS:
        spec = FeatureSpec((kind,))
        X = compute_features(spec, *bars)
        for j, w in enumerate(spec.column_warmups):
            assert np.isnan(X[:w, j]).all() and np.isfinite(X[w:, j]).all(), (kind, j, w)


@pytest.mark.parametrize("bad,match", [
    (({"kind": "nope"},), "unknown feature kind 'nope'"),
    (({"kind": "rsi", "m": 3},), "has no parameter"),
    (({"kind": "rsi", "n": 0},), "must be >= 1"),
    (({"kind": "rsi", "n": 2.5},), "must be an integer"),
    (({"kind": "volatility", "n": 1},), "must be >= 2"),
    (({"kind": "macd", "fast": 26, "slow": 12},), "fast .* must be < slow"),
    (({"kind": "bbands", "k": -1},), "positive number"),
    (("rsi", "rsi"), "duplicate columns"),
    ((), "at least one feature"),
])
def test_bad_specs_raise_config_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        FeatureSpec(bad)


def test_bad_normalize_and_json():
    with pytest.raises(ConfigError, match="normalize"):
        FeatureSpec(("rsi",), {"kind": "rolling_z", "window": 1})
    with pytest.raises(ConfigError, match="not valid JSON"):
        FeatureSpec.from_json("{nope")
    with pytest.raises(ConfigError, match="unsupported format"):
        FeatureSpec.from_dict({"format": "other/9", "features": ["rsi"]})
    with pytest.raises(ConfigError, match="on_bad"):
        compute_features(default_spec(), *walk(10, 1), on_bad="ignore")
    with pytest.raises(ConfigError, match="on_bad"):
        FeatureStream(default_spec(), on_bad="skip")


def test_normalizer_uses_training_rows_only():
    spec = default_spec()
    X = compute_features(spec, *walk(3000, 3))
    train = 2000
    norm = Normalizer.fit(X[:train], names=spec.names)
    # independent reference: NumPy nan-aware statistics of the training rows
    np.testing.assert_allclose(norm.mean, np.nanmean(X[:train], axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(norm.std, np.nanstd(X[:train], axis=0), rtol=1e-12)
    Z = norm.transform(X)
    np.testing.assert_allclose(Z, (X - np.nanmean(X[:train], 0)) / np.nanstd(X[:train], 0), rtol=1e-12, atol=1e-12)
    assert np.isnan(Z[: spec.warmup]).any() and np.isfinite(Z[spec.warmup:]).all()
    # rows after the training range do not move the statistics
    Y = X.copy()
    Y[train:] *= 10
    assert np.array_equal(Normalizer.fit(Y[:train]).mean, norm.mean)
    # a single streamed row is scaled the same way as in the matrix
    np.testing.assert_array_equal(norm.transform(X[2500]), Z[2500])
    # checkpoint round trip through JSON
    back = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(back.transform(X), Z)
    assert back.names == tuple(spec.names)


def test_normalizer_clip_and_errors():
    rng = np.random.default_rng(4)
    X = rng.standard_t(3, size=(500, 3))
    norm = Normalizer.fit(X, clip=3.0)
    Z = norm.transform(X)
    assert Z.max() <= 3.0 and Z.min() >= -3.0 and (np.abs(Z) == 3.0).any()
    X[:, 1] = 7.0
    with pytest.raises(DataError, match="column 'b' is constant"):
        Normalizer.fit(X, names=["a", "b", "c"])
    X[:, 1] = np.nan
    X[0, 1] = 1.0
    with pytest.raises(DataError, match="1 finite training values"):
        Normalizer.fit(X)
    with pytest.raises(DataError, match="columns"):
        Normalizer.fit(rng.normal(size=(50, 2))).transform(rng.normal(size=(5, 3)))
    with pytest.raises(CheckpointError):
        Normalizer.from_dict({"mean": [0.0, 1.0], "std": [1.0, 0.0]})
    with pytest.raises(CheckpointError):
        Normalizer.from_dict({"std": [1.0]})


def test_compute_into_preallocated_out():
    spec = default_spec()
    bars = walk(1000, 5)
    ref = compute_features(spec, *bars)
    out = np.full((1000, len(spec.names)), 123.0)
    got = compute_features(spec, *bars, out=out)
    assert got is out
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(DataError, match="out must be"):
        compute_features(spec, *bars, out=np.empty((1000, len(spec.names) + 1)))
    with pytest.raises(DataError, match="out must be"):
        compute_features(spec, *bars, out=np.empty((len(spec.names), 1000)).T)


def test_kernel_outputs_are_independent_contiguous_arrays():
    from fastrader.features import bbands, macd, sma
    x = walk(5000, 6)[3]
    a = sma(x, 10)
    up, mid, lo = bbands(x, 10, 2.0)
    for arr in (a, up, mid, lo, *macd(x)):
        assert arr.shape == x.shape and arr.dtype == np.float64 and arr.flags.c_contiguous and arr.flags.writeable
    before = lo.copy()
    up[:] = 0.0                      # the outputs share one allocation but never overlap
    mid[:] = 1.0
    np.testing.assert_array_equal(lo, before)
    assert sma(x[:0], 10).shape == (0,)
