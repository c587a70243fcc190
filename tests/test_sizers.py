"""Sizing: fixed fraction, volatility target, signal-proportional, leverage and exposure caps.

The pieces are checked against numpy; whole runs are checked on what the
broker actually held (position x price / equity), never on what was asked.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fastrader.backtest import run_backtest
from fastrader.sizers import RollingVol, cap, raw_fraction, risk_weights
from fastrader.strategy import ModelStrategy
from fastrader.testing.candles import gapping_candles

HOUR = 3_600_000


def test_rolling_vol_matches_numpy():
    close = gapping_candles(3000, seed=1)["close"].to_numpy()
    w = 97
    rv = RollingVol(w)
    got = np.array([rv.update(c) for c in close])
    r = np.diff(np.log(close))
    ref = np.full(len(close), np.nan)
    for t in range(w, len(close)):  # returns r[t-w .. t-1] end at bar t
        ref[t] = math.sqrt(np.mean(r[t - w:t] ** 2))
    np.testing.assert_allclose(got, ref, rtol=1e-10, equal_nan=True)


def test_fraction_rules_and_caps():
    kw = dict(stake=0.9, vol=0.01, ann=math.sqrt(8760), vol_target=0.2, signal_full=2.0)
    assert raw_fraction(-1.0, -3.0, sizing="fixed", **kw) == pytest.approx(-0.9)
    assert raw_fraction(1.0, 3.0, sizing="vol_target", **kw) == pytest.approx(0.9 * 0.2 / (0.01 * math.sqrt(8760)))
    assert raw_fraction(1.0, 1.0, sizing="signal", **kw) == pytest.approx(0.45)
    assert raw_fraction(-1.0, -5.0, sizing="signal", **kw) == pytest.approx(-0.9)  # clipped at full size
    assert raw_fraction(1.0, 1.0, sizing="vol_target", **{**kw, "vol": float("nan")}) == 0.0  # warm-up: flat
    assert risk_weights([0.01, 0.02, float("nan")]) == pytest.approx([2 / 3, 1 / 3, 0.0])
    got = cap([0.8, -0.5, 0.6], max_leverage=0.7, gross_cap=1.2, net_cap=0.3)
    clipped = np.array([0.7, -0.5, 0.6])
    g = clipped * 1.2 / np.abs(clipped).sum()
    np.testing.assert_allclose(got, g * 0.3 / abs(g.sum()))
    assert cap([3.0, 2.0], max_leverage=0, gross_cap=0, net_cap=0) == [3.0, 2.0]  # 0 = no cap


def _exposure(res, sym=None):
    """What the broker held after each bar: position x close / equity (per symbol for a portfolio)."""
    h = res.holdings if sym is None else res.holdings[res.holdings["symbol"] == sym]
    e = res.equity.set_index("timestamp")["equity"].reindex(h["timestamp"].to_numpy()).to_numpy()
    return h["position"].to_numpy() * h["close"].to_numpy() / e


def test_signal_proportional_position_tracks_signal_strength():
    df = gapping_candles(600, seed=7, missing=0.0)
    rng = np.random.default_rng(0)
    df["signal"] = np.repeat(rng.uniform(0.5, 4.0, 60) * rng.choice([-1, 1], 60), 10)  # steps held for 10 bars
    res = run_backtest(df, ModelStrategy, dict(threshold=0.4, exit_threshold=0.4, sizing="signal", signal_full=4.0,
                                               stake=0.9), commission=0.0, slippage_bps=0.0, borrow_rate=0.0)
    want = 0.9 * np.clip(df["signal"].to_numpy() / 4.0, -1, 1)
    # decided at the close of a step's first bar t, filled at t+1's open: the size is want x equity(t) / close(t)
    t = np.arange(10, 600, 10)
    pos = res.holdings["position"].to_numpy()
    eq = res.equity["equity"].to_numpy()
    close = df["close"].to_numpy()
    np.testing.assert_allclose(pos[t + 1], want[t] * eq[t] / close[t], rtol=1e-9)
    assert len(set(np.round(np.abs(want[t]), 6))) > 20  # many different sizes, not all-in/all-out


def test_portfolio_caps_and_risk_weights():
    frames = {}
    vols = (0.004, 0.008, 0.016)
    for i, (sym, v) in enumerate(zip(("A/USDT", "B/USDT", "C/USDT"), vols)):
        f = gapping_candles(1500, seed=50 + i, missing=0.0, vol=v, gap_sd=v / 4)
        f["signal"] = 5.0 if i != 1 else -5.0  # long A and C, short B
        frames[sym] = f
    p = dict(threshold=1.0, weighting="risk", vol_window=200, stake=1.0, gross_cap=0.6)
    res = run_backtest(frames, ModelStrategy, p, commission=0.0, slippage_bps=0.0, borrow_rate=0.0)
    # independent: inverse of each symbol's realised vol (numpy), normalised, scaled to the gross cap
    t = np.arange(400, 1499)
    closes = np.vstack([f["close"].to_numpy() for f in frames.values()])
    r = np.diff(np.log(closes), axis=1)
    rv = np.array([[math.sqrt(np.mean(ri[k - 200:k] ** 2)) for k in t] for ri in r])
    w = (1 / rv) / (1 / rv).sum(axis=0) * 0.6 * np.array([[1], [-1], [1]])
    # decided at bar t's close, filled at t+1's open: size = weight x equity(t) / close(t)
    eq = res.equity["equity"].to_numpy()
    pos = np.vstack([res.holdings.loc[res.holdings["symbol"] == s, "position"].to_numpy() for s in frames])
    np.testing.assert_allclose(pos[:, t + 1], w * eq[t] / closes[:, t], rtol=1e-9)
    assert w[0].mean() > 2.5 * w[2].mean()  # the calm market got the larger share
    ex = np.vstack([_exposure(res, s) for s in frames])[:, 401:]
    assert np.abs(ex).sum(axis=0).max() <= 0.6 * 1.05  # the gross cap held (a bar's price move aside)


def test_vol_target_realised_volatility_on_real_btc(real_data_path, tmp_path):
    """Acceptance: always long BTC, sized to 30% annual volatility: the run's realised volatility is within 20%."""
    from fastrader.pipeline import RunConfig, run

    bars = pd.read_csv(real_data_path)
    sig = tmp_path / "long.csv"
    pd.DataFrame({"timestamp": bars["timestamp"], "signal": 5.0}).to_csv(sig, index=False)
    target = 0.30
    out = run(RunConfig(data=str(real_data_path), signals=str(sig), out=str(tmp_path / "o"), tearsheet=False,
                        progress=False, params=dict(sizing="vol_target", vol_target=target, vol_window=24 * 30,
                                                    max_leverage=1.0, rebalance_band=0.05)))
    eq = pd.read_csv(tmp_path / "o" / "equity.csv")
    s = pd.Series(eq["equity"].to_numpy(), index=pd.to_datetime(eq["timestamp"], unit="ms"))
    daily = s.groupby(s.index.floor("D")).last()
    r = daily.pct_change().dropna().iloc[31:]  # after the 30-day warm-up of the volatility window
    realised = float(r.std(ddof=1) * math.sqrt(365))
    print(f"vol target {target:.2f}: realised {realised:.4f} over {len(r)} days, {out.metrics['orders']['filled']} fills")
    assert abs(realised / target - 1) <= 0.20, realised
    held = pd.read_csv(tmp_path / "o" / "equity.csv")
    expo = held["position"] * held["close"] / held["equity"]
    assert expo.iloc[800:].min() > 0.0  # it stayed invested: the number is not a flat account's


def test_bad_sizing_param_is_one_error_line(capsys, tmp_path):
    from fastrader.run import main

    p = tmp_path / "bars.csv"
    gapping_candles(300, seed=2, start_ms=1_700_002_800_000).to_csv(p, index=False)
    for bad, word in (("sizing=kelly", "sizing must be one of fixed, vol_target, signal"),
                      ("vol_target=-0.1", "vol_target must be a number > 0"),
                      ("stop_loss=1.5", "stop_loss must be a fraction")):
        rc = main(["--data", str(p), "--param", bad, "--no-progress", "--no-tearsheet", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and "\n" not in err and word in err, err
