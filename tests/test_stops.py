"""Stops as Backtrader brackets, checked bar by bar against an independent simulation on gapping candles.

The simulation below restates the rules of fastrader.stops in plain Python:
a position opens at the next open with a stop (or trailing stop) and a
take-profit priced off the decision bar's close; the exits are live from the
bar after the entry; a stop fills at its price, or at the open when the bar
gaps through it, whichever is worse for the trader; the stop wins a bar that
reaches both; slippage and commission as the broker applies them.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastrader.backtest import run_backtest
from fastrader.strategy import ModelStrategy
from fastrader.testing.candles import gapping_candles

SLIP, COMM, STAKE, TH, EXIT_TH = 5e-4, 1e-3, 0.9, 1.0, 0.3


def _buy_px(price, hi, slip=True):
    p = price * (1 + SLIP) if slip else price
    return min(p, hi)


def _sell_px(price, lo, slip=True):
    p = price * (1 - SLIP) if slip else price
    return max(p, lo)


def simulate(df, signal, stop_loss=0.0, take_profit=0.0, trail=0.0, cash=10_000.0):
    o, h, lo, c = (df[k].to_numpy() for k in ("open", "high", "low", "close"))
    pos = cur = 0.0
    side = 0
    pending = None  # ("entry", side, size, ref) or ("exit",)
    stop = take = None
    live_from = None
    blocked = 0
    fills, equity, kinds = [], [], []
    for t in range(len(df)):
        # ---- the broker at bar t ----
        if pending is not None:
            if pending[0] == "entry":
                _, s, size, ref = pending
                px = _buy_px(o[t], h[t]) if s > 0 else _sell_px(o[t], lo[t])
                pos, side = s * size, s
                cash -= pos * px + abs(pos) * px * COMM
                cur = float(s)
                live_from = t + 1
                fills.append((t, pos, px))
                if trail:
                    stop = ref * (1 - s * trail)
                else:
                    stop = ref * (1 - s * stop_loss) if stop_loss else None
                take = ref * (1 + s * take_profit) if take_profit else None
            else:  # exit at the open
                px = _sell_px(o[t], lo[t]) if pos > 0 else _buy_px(o[t], h[t])
                cash += pos * px - abs(pos) * px * COMM
                fills.append((t, -pos, px))
                pos, cur, side, stop, take = 0.0, 0.0, 0, None, None
            pending = None
        elif pos != 0 and t >= live_from:
            px = None
            if stop is not None:
                if side > 0 and o[t] <= stop:
                    px, kind = _sell_px(o[t], lo[t]), "stop-gap"
                elif side > 0 and lo[t] <= stop:
                    px, kind = _sell_px(stop, lo[t]), "stop"
                elif side < 0 and o[t] >= stop:
                    px, kind = _buy_px(o[t], h[t]), "stop-gap"
                elif side < 0 and h[t] >= stop:
                    px, kind = _buy_px(stop, h[t]), "stop"
            if px is None and take is not None:
                if side > 0 and take <= o[t]:
                    px, kind = max(o[t] * (1 - SLIP), take), "take-gap"
                elif side > 0 and take <= h[t]:
                    px, kind = take, "take"
                elif side < 0 and take >= o[t]:
                    px, kind = min(o[t] * (1 + SLIP), take), "take-gap"
                elif side < 0 and take >= lo[t]:
                    px, kind = take, "take"
            if px is not None:
                cash += pos * px - abs(pos) * px * COMM
                fills.append((t, -pos, px))
                kinds.append(kind)
                blocked, pos, cur, side, stop, take = side, 0.0, 0.0, 0, None, None
            elif trail:
                stop = max(stop, c[t] * (1 - trail)) if side > 0 else min(stop, c[t] * (1 + trail))
        equity.append(cash + pos * c[t])
        # ---- the strategy at bar t's close ----
        s = signal[t]
        if s > TH:
            tgt = 1.0
        elif s < -TH:
            tgt = -1.0
        elif (cur > 0 and s > EXIT_TH) or (cur < 0 and s < -EXIT_TH):
            tgt = cur
        else:
            tgt = 0.0
        if blocked:
            if tgt * blocked > 0:
                tgt = 0.0
            else:
                blocked = 0
        if pos != 0:
            if tgt == 0 or np.sign(tgt) != side:
                pending = ("exit",)
        elif tgt != 0:
            pending = ("entry", int(np.sign(tgt)), STAKE * cash / c[t], c[t])
    return np.array(equity), fills, kinds


def _signal(n, seed):
    rng = np.random.default_rng(seed)
    return np.repeat(rng.uniform(-3, 3, n // 12 + 1), 12)[:n]


def _fills(res, df):
    f = res.orders[res.orders["status"] == "filled"]
    idx = np.searchsorted(df["timestamp"].to_numpy(), f["final_time"].to_numpy())
    return [(int(i), float(s), float(p)) for i, s, p in zip(idx, f["filled_size"], f["price"])]


@pytest.mark.parametrize("params", [
    dict(stop_loss=0.015, take_profit=0.03),
    dict(stop_loss=0.02),
    dict(take_profit=0.01),
    dict(trail_stop=0.015),
    dict(trail_stop=0.03, take_profit=0.02),
], ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_stops_bar_by_bar_against_simulation(params):
    df = gapping_candles(1500, seed=17, gap_sd=0.008, missing=0.01, vol=0.008)
    df["signal"] = _signal(len(df), 3)
    res = run_backtest(df, ModelStrategy, dict(threshold=TH, exit_threshold=EXIT_TH, stake=STAKE, **params),
                       commission=COMM, slippage_bps=SLIP * 1e4, borrow_rate=0.0)
    eq, fills, kinds = simulate(df, df["signal"].to_numpy(), params.get("stop_loss", 0.0),
                                params.get("take_profit", 0.0), params.get("trail_stop", 0.0))
    got = _fills(res, df)
    assert len(got) == len(fills)
    for (ta, sa, pa), (tb, sb, pb) in zip(got, fills):
        assert ta == tb and sa == pytest.approx(sb, rel=1e-9) and pa == pytest.approx(pb, rel=1e-12)
    np.testing.assert_allclose(res.equity["equity"].to_numpy(), eq, rtol=1e-10)
    # the run went through both branches: bars that gap through the level and bars that trade through it
    assert len(kinds) >= 10
    if "stop_loss" in params or "trail_stop" in params:
        assert kinds.count("stop-gap") >= 2 and kinds.count("stop") >= 2, kinds
    if "take_profit" in params:
        assert "take" in kinds or "take-gap" in kinds


def test_stop_fills_at_worse_of_stop_and_open():
    """A long's stop: the bar opening below it sells at that open, never at the better stop price."""
    df = gapping_candles(1500, seed=17, gap_sd=0.008, missing=0.01, vol=0.008)
    df["signal"] = _signal(len(df), 3)
    res = run_backtest(df, ModelStrategy, dict(threshold=TH, exit_threshold=EXIT_TH, stake=STAKE, stop_loss=0.015),
                       commission=0.0, slippage_bps=0.0, borrow_rate=0.0)
    o = res.orders
    stops = o[(o["status"] == "filled")]
    # every exit fill of a long (a sell that flattens) is at min(stop, open) or at the open for signal exits
    opens = df.set_index("timestamp")["open"]
    sells = stops[stops["side"] == "sell"]
    assert (sells["price"] <= opens.reindex(sells["final_time"]).to_numpy() + 1e-12).all()


def test_bracket_lifecycle_with_refused_entries():
    """Entries the broker refuses take their exits with them; nothing is believed filled; retries come next bar."""
    df = gapping_candles(400, seed=5)
    df["signal"] = 5.0
    res = run_backtest(df, ModelStrategy, dict(threshold=1.0, stake=50.0, allow_short=False, stop_loss=0.02,
                                               take_profit=0.02), cash=1_000)
    c = res.order_counts
    assert c["filled"] == 0 and c["rejected_margin"] > 10
    assert c["cancelled"] >= 2 * c["rejected_margin"] - 2  # each refused entry's stop and limit died with it
    assert (res.equity["equity"] == 1_000).all() and (res.holdings["position"] == 0).all()
    # a fillable stake: enters once, and holds through the stop/take-profit lifecycle without double orders
    res = run_backtest(df, ModelStrategy, dict(threshold=1.0, stake=0.9, allow_short=False, stop_loss=0.02,
                                               take_profit=0.02), cash=1_000)
    pos = res.holdings["position"].to_numpy()
    assert res.order_counts["open_at_end"] <= 2 and (pos >= 0).all() and pos.max() > 0
    f = res.orders[res.orders["status"] == "filled"]
    assert (f["side"].to_numpy()[0::2] == "buy").all() and (f["side"].to_numpy()[1::2] == "sell").all()
