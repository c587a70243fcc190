"""Every order accounted for, shorts that pay to borrow, equity that never goes negative,
and trade records that hold when a position is scaled in and out.

All on candles whose opens gap away from the previous close, with missing bars.
Each result is checked against an independent numpy calculation.
"""

from __future__ import annotations

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from fastrader.backtest import run_backtest
from fastrader.strategy import RETRY_HAIRCUT, ModelStrategy
from fastrader.testing.candles import gapping_candles


def _signal_frame(n=400, seed=7, gap_sd=0.01):
    df = gapping_candles(n, seed=seed, gap_sd=gap_sd)
    rng = np.random.default_rng(seed + 1)
    sig = np.repeat(rng.normal(0, 1.5, n // 20 + 1), 20)[:n]
    sig[:10] = np.nan
    df["signal"] = sig
    return df


def test_full_stake_rejections_are_counted_retried_and_filled():
    # stake=1.0 leaves no room for fees or a gap up at the next open: the broker refuses
    # the first order for margin, and the strategy retries with a growing haircut.
    df = _signal_frame()
    res = run_backtest(df, ModelStrategy, {"threshold": 0.5, "stake": 1.0}, commission=0.001, slippage_bps=5)
    c = res.order_counts
    assert c["rejected_margin"] > 0
    assert c["filled"] > 0
    assert c["submitted"] == c["filled"] + c["rejected"] + c["cancelled"] + c["expired"] + c["open_at_end"]
    orders = res.orders
    assert len(orders) == c["submitted"] - c["open_at_end"]
    # every refusal is followed on the very next bar by another order the same way, whose stake
    # carries the documented haircut: RETRY_HAIRCUT * 2**(k-1) after k refusals in a row
    ts = df["timestamp"].to_numpy()
    bar = {t: i for i, t in enumerate(ts)}
    close = df["close"].to_numpy()
    equity, position = res.equity["equity"].to_numpy(), res.equity["position"].to_numpy()
    k, checked = 0, 0
    orders = orders.sort_values("ref").reset_index(drop=True)
    for i, r in orders.iterrows():
        b = bar[r["created_time"]]
        if i and orders.loc[i - 1, "status"] == "margin":
            assert b == bar[orders.loc[i - 1, "final_time"]]
            assert r["side"] == orders.loc[i - 1, "side"]
        if position[b] == 0:  # from flat, the order's value is the stake times the haircut
            frac = abs(r["size"]) * close[b] / equity[b]
            haircut = RETRY_HAIRCUT * 2 ** (k - 1) if k else 0.0
            assert frac == pytest.approx(1.0 - haircut, rel=1e-9)
            checked += 1
        k = k + 1 if r["status"] == "margin" else 0
    assert checked > 3
    # the broker's position is what the fills made it
    assert (position != 0).any()


def test_position_state_changes_only_on_fills():
    # Orders that can never fill: the strategy must not believe it holds a position, so it
    # keeps asking (the orders keep coming and keep being refused) and the account stays flat.
    df = _signal_frame()

    # 50x long leverage on a cash account: every buy is refused
    res = run_backtest(df, ModelStrategy, {"threshold": 0.5, "stake": 50.0, "allow_short": False}, cash=1_000)
    assert res.order_counts["filled"] == 0
    assert res.order_counts["rejected"] > 10
    assert (res.equity["position"] == 0).all()
    assert (res.equity["equity"] == 1_000).all()


class Oversized(bt.Strategy):
    """Backtrader's quickstart shape: a fixed 10-unit stake, far above what the cash buys."""

    params = dict(maperiod=15, stake=10)

    def __init__(self):
        self.sma = bt.indicators.SimpleMovingAverage(self.datas[0], period=self.p.maperiod)

    def next(self):
        if not self.position:
            if self.data.close[0] > self.sma[0]:
                self.buy(size=self.p.stake)
        elif self.data.close[0] < self.sma[0]:
            self.sell(size=self.p.stake)


def test_plain_strategy_orders_are_counted():
    df = gapping_candles(600, seed=3)
    df[["open", "high", "low", "close"]] *= 30.0  # ~3000 a unit: 10 units cost 3x the cash
    res = run_backtest(df, Oversized, {}, cash=10_000)
    c = res.order_counts
    assert c["rejected_margin"] > 20 and c["filled"] == 0
    assert c["submitted"] == c["rejected_margin"]


def _short_frame(n, seed=5, gap_sd=0.004):
    df = gapping_candles(n, seed=seed, gap_sd=gap_sd, missing=0.0)
    sig = np.full(n, -3.0)
    sig[:3] = np.nan
    df["signal"] = sig
    return df


def test_short_pays_the_borrow_rate():
    # Held short from bar 4's open to the end: Backtrader charges rate/365 of the position's
    # entry value for every calendar day crossed, at the first bar of each new UTC day.
    n, rate = 24 * 9 + 5, 0.25
    df = _short_frame(n)
    free = run_backtest(df, ModelStrategy, {"threshold": 1.0}, commission=0.0, slippage_bps=0.0, borrow_rate=0.0)
    paid = run_backtest(df, ModelStrategy, {"threshold": 1.0}, commission=0.0, slippage_bps=0.0, borrow_rate=rate)
    assert paid.order_counts["filled"] == 1
    fill = paid.orders.iloc[0]
    size, entry = abs(fill["filled_size"]), fill["price"]
    day = df["timestamp"].to_numpy() // 86_400_000
    fill_bar = int(np.flatnonzero(df["timestamp"].to_numpy() == fill["final_time"])[0])
    cost = np.zeros(n)
    for t in range(fill_bar + 1, n):
        if day[t] > day[t - 1]:
            cost[t] = rate * (day[t] - day[t - 1]) / 365.0 * size * entry
    expected = free.equity["equity"].to_numpy() - np.cumsum(cost)
    np.testing.assert_allclose(paid.equity["equity"].to_numpy(), expected, rtol=1e-12)
    assert cost.sum() > 0.004 * size * entry  # nine days at 25% a year is about 0.6% of the position


def test_loss_of_everything_liquidates_and_never_goes_negative():
    # A short into a price that more than doubles: equity would go far below zero.
    n = 300
    rng = np.random.default_rng(1)
    df = _short_frame(n, gap_sd=0.0)
    t = np.arange(n)
    close = 100 * np.exp(np.where(t > 50, (t - 50) * 0.01, 0.0) + rng.normal(0, 0.002, n))
    df["close"] = close
    df["open"] = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.004, n))
    df["high"] = np.maximum(df["open"], df["close"]) * 1.004
    df["low"] = np.minimum(df["open"], df["close"]) * 0.996
    comm = 0.001
    res = run_backtest(df, ModelStrategy, {"threshold": 1.0}, commission=comm, slippage_bps=5, borrow_rate=0.0)
    eq, pos = res.equity["equity"].to_numpy(), res.equity["position"].to_numpy()
    assert (eq >= 0).all()
    assert len(res.liquidations) == 1
    liq = res.liquidations[0]
    # independent: after the short's fill, cash + size * p = 0 at p* = cash / |size|; the first
    # later bar whose high reaches p* liquidates, at p* or at the open when it gapped past it
    fill = res.orders[res.orders["status"] == "filled"].iloc[0]
    size = fill["filled_size"]
    cash = 10_000 - size * fill["price"] - fill["commission"]
    zero = cash / abs(size)
    ts = df["timestamp"].to_numpy()
    fill_bar = int(np.flatnonzero(ts == fill["final_time"])[0])
    k = fill_bar + 1 + int(np.argmax(df["high"].to_numpy()[fill_bar + 1:] >= zero))
    price = max(df["open"].iloc[k], zero)
    assert liq.size == pytest.approx(size)
    assert liq.price == pytest.approx(price, rel=1e-12)
    shortfall = -(cash - abs(size) * price - abs(size) * price * comm)
    assert liq.shortfall == pytest.approx(shortfall, rel=1e-9)
    assert (eq[k:] == 0).all() and (pos[k:] == 0).all() and (eq[:k] > 0).all()
    # no order fills after the liquidation; the one round trip is recorded, closed at the liquidation
    assert (res.orders["status"] == "filled").sum() == 1
    assert len(res.trades) == 1 and res.trades["exit_price"].iloc[0] == pytest.approx(price)


class Scaler(bt.Strategy):
    """Scales in and out on a fixed schedule, with flips, to exercise the trade records."""

    params = dict(plan=None)

    def next(self):
        i = len(self) - 1
        size = self.p.plan.get(i)
        if size:
            self.buy(size=size) if size > 0 else self.sell(size=-size)


def _reference_trades(plan, fills):
    """Independent round trips from a list of (bar, size, price, fee): VWAPs, pnl, fees."""
    trades, pos, cur = [], 0.0, None
    for bar, size, price, fee in fills:
        remaining, total = size, abs(size)
        if pos and np.sign(size) != np.sign(pos):
            q = min(abs(size), abs(pos))
            cur["out"].append((q, price))
            cur["fee"] += fee * q / total
            pos += np.sign(size) * q
            remaining = size - np.sign(size) * q
            if abs(pos) < 1e-12:
                pos = 0.0
                inq = sum(a for a, _ in cur["in"])
                outq = sum(a for a, _ in cur["out"])
                entry = sum(a * b for a, b in cur["in"]) / inq
                exit_ = sum(a * b for a, b in cur["out"]) / outq
                pnl = cur["sign"] * outq * (exit_ - entry)
                trades.append(dict(size=inq, entry_price=entry, exit_price=exit_, pnl=pnl,
                                   commission=cur["fee"], pnl_net=pnl - cur["fee"]))
                cur = None
        if abs(remaining) > 1e-12:
            if cur is None:
                cur = {"sign": np.sign(remaining), "in": [], "out": [], "fee": 0.0}
            cur["in"].append((abs(remaining), price))
            cur["fee"] += fee * abs(remaining) / total
            pos += remaining
    return pd.DataFrame(trades)


def test_trade_records_when_scaling_in_and_out():
    df = gapping_candles(120, seed=9)
    # long 2, add 3, take off 4, flip to short 2 (sell 3), add short 1, cover 3; then long 1 and out
    plan = {5: 2.0, 12: 3.0, 20: -4.0, 31: -3.0, 40: -1.0, 55: 3.0, 70: 1.0, 80: -1.0}
    res = run_backtest(df, Scaler, {"plan": plan}, cash=10_000, commission=0.002, slippage_bps=10)
    assert res.order_counts["filled"] == len(plan)
    o = res.orders.sort_values("ref")
    fills = list(zip(o["created_time"], o["filled_size"], o["price"], o["commission"]))
    ref = _reference_trades(plan, fills)
    got = res.trades
    assert len(got) == len(ref) == 3
    for col in ("size", "entry_price", "exit_price", "pnl", "commission", "pnl_net"):
        np.testing.assert_allclose(got[col].to_numpy(), ref[col].to_numpy(), rtol=1e-10, err_msg=col)
    assert list(got["direction"]) == ["long", "short", "long"]
    # the fills' gross pnl adds up to the equity change less the fees
    eq = res.equity["equity"].to_numpy()
    assert eq[-1] - 10_000 == pytest.approx(got["pnl_net"].sum(), rel=1e-9)
