"""Metrics against independent numpy formulas on random returns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fastrader.report.metrics import compute_metrics, daily_returns


def test_daily_compounding_of_intraday_equity():
    rng = np.random.default_rng(0)
    n = 24 * 30
    ts = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000 + 3_600_000 * np.arange(n)
    eq = 1000 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    r = daily_returns(ts, eq, 1000.0)
    assert len(r) == 30 and r.index.tz is None
    day_close = eq[23::24]
    expected = np.concatenate([[day_close[0] / 1000 - 1], day_close[1:] / day_close[:-1] - 1])
    np.testing.assert_allclose(r.to_numpy(), expected, rtol=1e-12)
    # compounding the daily returns gives back the whole-period return
    assert np.prod(1 + r.to_numpy()) - 1 == pytest.approx(eq[-1] / 1000 - 1, rel=1e-12)


@pytest.mark.parametrize("periods", [365, 252])
def test_metrics_formulas(periods):
    rng = np.random.default_rng(1)
    r = pd.Series(rng.normal(0.001, 0.02, 400), index=pd.date_range("2022-01-01", periods=400, freq="D"))
    m = compute_metrics(r, n_trades=7, bars=9600, seconds=2.0, periods=periods)
    x = r.to_numpy()
    curve = np.concatenate([[1.0], np.cumprod(1 + x)])
    assert m["total_return"] == pytest.approx(curve[-1] - 1, rel=1e-10)
    assert m["cagr"] == pytest.approx(curve[-1] ** (periods / 400) - 1, rel=1e-10)
    assert m["sharpe"] == pytest.approx(x.mean() / x.std(ddof=1) * np.sqrt(periods), rel=1e-10)
    assert m["sortino"] == pytest.approx(x.mean() / np.sqrt(np.mean(np.minimum(x, 0) ** 2)) * np.sqrt(periods), rel=1e-10)
    assert m["max_drawdown_daily"] == pytest.approx((curve[1:] / np.maximum.accumulate(curve)[1:] - 1).min(), rel=1e-10)
    assert (m["n_trades"], m["bars"], m["bars_per_s"]) == (7, 9600, 4800.0)


def test_bar_level_drawdown_against_numpy():
    from fastrader.report.metrics import max_drawdown

    rng = np.random.default_rng(5)
    values = 1_000.0 * np.cumprod(1 + rng.normal(0, 0.01, 5_000))
    ref = (np.r_[1_000.0, values] / np.maximum.accumulate(np.r_[1_000.0, values]) - 1).min()
    assert max_drawdown(values, 1_000.0) == pytest.approx(ref, rel=1e-12)
    assert max_drawdown(values * 0 + 900.0, 1_000.0) == pytest.approx(-0.1)  # a first-bar loss counts
    assert max_drawdown(np.r_[1_000.0, 500.0, 0.0, 0.0], 1_000.0) == -1.0  # a wiped-out account
