"""Backtrader integration: fills at the next open, commission and slippage as configured.

The equity curve is recomputed here by an independent bar-by-bar simulation
of the same rules, so a look-ahead fill, a wrong commission or a wrong size
would show up as a mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastrader.backtest import run_backtest
from fastrader.strategy import ModelStrategy

from fastrader.testing.candles import random_candles


def simulate(df, signal, threshold, stake, cash, comm, slip, exit_threshold=0.0, borrow=0.0):
    """Bar-by-bar re-simulation. ``borrow``: annual rate a short pays on its entry value,
    once per calendar day held (charged at the first bar of each new UTC day)."""
    o, h, l, c = (df[k].to_numpy() for k in ("open", "high", "low", "close"))
    day = df["timestamp"].to_numpy() // 86_400_000
    pos, equity, pending, cur = 0.0, [], None, 0.0
    entry, held_day = 0.0, None
    for t in range(len(df)):
        if pos < 0 and day[t] > held_day:
            cash -= borrow * (day[t] - held_day) / 365.0 * abs(pos) * entry
        if pos:
            held_day = day[t]
        if pending is not None:  # the order placed at t-1 fills at t's open
            delta = pending
            price = min(o[t] * (1 + slip), h[t]) if delta > 0 else max(o[t] * (1 - slip), l[t])
            cash -= delta * price + abs(delta) * price * comm
            if pos == 0 or np.sign(pos + delta) != np.sign(pos):
                entry = price  # a new position (or a flip): its entry price is this fill
            elif abs(pos + delta) > abs(pos):
                entry = (entry * abs(pos) + price * abs(delta)) / abs(pos + delta)
            pos += delta
            held_day = day[t]
            pending = None
        s = signal[t]
        if np.isnan(s):
            tgt = 0.0
        elif s > threshold:
            tgt = 1.0
        elif s < -threshold:
            tgt = -1.0
        elif (cur > 0 and s > exit_threshold) or (cur < 0 and s < -exit_threshold):
            tgt = cur  # hysteresis: hold until the signal crosses back
        else:
            tgt = 0.0
        value = cash + pos * c[t]
        if tgt != cur:
            pending = -pos if tgt == 0 else (value * tgt * stake) / c[t] - pos
            cur = tgt
        equity.append(value)
    return np.array(equity)


@pytest.mark.parametrize("slip_bps,comm,borrow", [(0.0, 0.0, 0.0), (5.0, 0.001, 0.1), (20.0, 0.0025, 0.35)])
def test_equity_matches_independent_simulation(slip_bps, comm, borrow):
    df = random_candles(600, seed=3)
    rng = np.random.default_rng(4)
    # Persistent random signals so positions are held for a while, with a NaN warm-up.
    sig = np.repeat(rng.normal(0, 1, 60), 10)
    sig[:25] = np.nan
    df["signal"] = sig
    res = run_backtest(df, ModelStrategy, {"threshold": 0.5}, cash=10_000, commission=comm, slippage_bps=slip_bps,
                       borrow_rate=borrow)
    ref = simulate(df, sig, 0.5, 0.95, 10_000.0, comm, slip_bps / 1e4, borrow=borrow)
    assert len(res.equity) == len(df)
    np.testing.assert_allclose(res.equity["equity"].to_numpy(), ref, rtol=1e-9)
    assert (res.equity["timestamp"].to_numpy() == df["timestamp"].to_numpy()).all()
    assert len(res.trades) > 5
    # signals.csv content: what the strategy saw, per bar
    np.testing.assert_array_equal(res.signals["timestamp"].to_numpy(), df["timestamp"].to_numpy())
    np.testing.assert_allclose(res.signals["signal"].to_numpy(), sig, equal_nan=True)


def test_signal_only_acts_next_bar():
    """A signal that appears at bar t changes the position at t+1's open, not before."""
    df = random_candles(100, seed=5)
    sig = np.full(len(df), np.nan)
    sig[40:] = 2.0
    df["signal"] = sig
    res = run_backtest(df, ModelStrategy, {}, cash=10_000, commission=0.0, slippage_bps=0.0)
    pos = res.equity["position"].to_numpy()
    assert (pos[:41] == 0).all()
    assert pos[41] > 0
    assert res.signals["target"].to_numpy()[40] == 1.0
