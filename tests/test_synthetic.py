"""The synthetic market: the shipped sample is reproducible, and a planted edge has the strength asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fastrader.synthetic import MarketParams, generate, main, oracle_forecast

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_btcusdt_1h.csv"


def test_plain_sample_is_unchanged_by_the_planting_option():
    df, planted = generate(return_planted=True)
    np.testing.assert_array_equal(df.to_numpy(), pd.read_csv(SAMPLE).to_numpy())
    assert not planted.any()


@pytest.mark.parametrize("snr", [0.04, 0.25])
def test_planted_edge_has_the_asked_strength(snr):
    # without the market's own weak AR(1) and drift, which add predictability of their own
    df, planted = generate(MarketParams(bars=20000, plant_snr=snr, ar1=0.0, drift=0.0), seed=5, return_planted=True)
    r = np.diff(np.log(df["close"].to_numpy()), prepend=np.nan)
    # the planted share of the 1-bar return's variance: corr(planted, r) = sqrt(snr / (1 + snr))
    ok = np.isfinite(r)
    ok[0] = False
    want = np.sqrt(snr / (1 + snr))
    assert np.corrcoef(planted[ok], r[ok])[0, 1] == pytest.approx(want, abs=0.03)
    # and the oracle forecast of bar t+1 is known at t: it is built from bar t's innovation only
    f = oracle_forecast(planted, horizon=1, lag=1)
    np.testing.assert_allclose(f[:-1], planted[1:], rtol=0, atol=1e-15)
    assert np.isnan(f[-1])
    with pytest.raises(ValueError, match="lag >= horizon"):
        oracle_forecast(planted, horizon=2, lag=1)


def test_plant_edge_leaves_the_rest_alike():
    """Volumes and bar count do not depend on the plant; the random draws are the same."""
    a = generate(MarketParams(bars=3000), seed=2)
    b = generate(MarketParams(bars=3000, plant_snr=0.1, plant_lag=3), seed=2)
    assert len(a) == len(b) and (a["close"] != b["close"]).mean() > 0.9
    np.testing.assert_array_equal(a["timestamp"], b["timestamp"])


def test_cli(tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["--out", str(out), "--bars", "500", "--plant-snr", "0.1", "--plant-lag", "2"]) == 0
    assert len(pd.read_csv(out)) == 500
    assert main(["--out", str(out), "--plant-snr", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error:")
