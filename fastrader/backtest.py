"""Run a Backtrader backtest over candles (with signals) and collect the results.

Cerebro is set up the way crypto trades: fractional sizes, a percentage
commission on traded value, slippage in basis points against the trader,
orders filled at the next bar's open, a borrow rate on shorts and leverage,
and liquidation at zero equity (:mod:`fastrader.broker`). Analyzers
(:mod:`fastrader.analyzers`) record the equity at every bar, every order's
fate and every round-trip trade, which the report module turns into files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import backtrader as bt
import numpy as np
import pandas as pd

from .analyzers import EquityRecorder, OrderLog, TradeLog
from .broker import DEFAULT_BORROW_RATE, make_broker
from .data import make_feed

TRADE_COLUMNS = ["symbol", "open_time", "close_time", "direction", "size", "max_size", "entry_price", "exit_price",
                 "bars_held", "pnl", "pnl_net", "commission"]
ORDER_COLUMNS = ["created_time", "final_time", "ref", "side", "size", "status", "filled_size", "price", "commission"]


@dataclass
class BacktestResult:
    equity: pd.DataFrame  # timestamp (UTC ms), equity, position
    trades: pd.DataFrame
    signals: pd.DataFrame  # timestamp, signal, target
    bars: int
    seconds: float
    start_cash: float
    orders: pd.DataFrame  # one row per order at its final status (ORDER_COLUMNS)
    order_counts: dict  # submitted / filled / rejected (by reason) / cancelled / expired
    liquidations: list  # fastrader.broker.Liquidation rows (empty unless equity hit zero)
    # timestamp, symbol, position, close (the mark), one row per symbol per step of the common clock
    holdings: pd.DataFrame | None = None
    symbols: list = field(default_factory=list)  # the traded datas' names, in feed order

    @property
    def bars_per_s(self) -> float:
        return self.bars / self.seconds if self.seconds > 0 else float("nan")


def bt_num_to_ms(num: np.ndarray) -> np.ndarray:
    """Backtrader float day numbers to UTC ms, rounded to the millisecond."""
    epoch = bt.date2num(pd.Timestamp("1970-01-01").to_pydatetime())
    return np.round((np.asarray(num, dtype=np.float64) - epoch) * 86_400_000.0).astype(np.int64)


def _ms_columns(frame: pd.DataFrame, pairs: dict[str, str], columns: list[str]) -> pd.DataFrame:
    for src, dst in pairs.items():
        frame[dst] = bt_num_to_ms(frame.pop(src).to_numpy()) if len(frame) else pd.Series(dtype="int64")
    return frame.reindex(columns=columns)


def run_backtest(
    candles: pd.DataFrame | dict[str, pd.DataFrame],
    strategy: type[bt.Strategy],
    strategy_params: dict | None = None,
    *,
    cash: float = 10_000.0,
    commission: float = 0.001,
    slippage_bps: float = 5.0,
    borrow_rate: float = DEFAULT_BORROW_RATE,
    name: str = "data",
    context: tuple = (),
) -> BacktestResult:
    """Backtest ``strategy`` over ``candles`` (ccxt layout, optional ``signal`` column).

    ``candles`` may be a dict {symbol: frame} for a portfolio: one feed per
    symbol, in the dict's order, aligned by timestamp by Backtrader's own
    multi-data clock (a symbol with no bar at a time is not filled in).
    ``context`` lists coarser timeframes ('1d', ...) added for every symbol as
    Backtrader ``resampledata`` feeds (see :func:`fastrader.data.resample.add_coarse_feed`).
    """
    frames = candles if isinstance(candles, dict) else {name: candles}
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True)
    for sym, frame in frames.items():
        cerebro.adddata(make_feed(frame, name=sym), name=sym)
    if context:
        from .data.resample import add_coarse_feed

        for sym, frame in frames.items():
            for tf in context:
                add_coarse_feed(cerebro, frame, tf, name=sym)
    cerebro.broker = make_broker(cash, commission, slippage_bps, borrow_rate)
    cerebro.addstrategy(strategy, **(strategy_params or {}))
    cerebro.addanalyzer(EquityRecorder, _name="equity")
    cerebro.addanalyzer(TradeLog, _name="trades")
    cerebro.addanalyzer(OrderLog, _name="orders")

    t0 = time.perf_counter()
    strat = cerebro.run()[0]
    seconds = time.perf_counter() - t0

    eq = np.array(strat.analyzers.equity.get_analysis(), dtype=np.float64).reshape(-1, 4)
    equity = pd.DataFrame({"timestamp": bt_num_to_ms(eq[:, 0]), "equity": eq[:, 1], "position": eq[:, 3],
                           "cash": eq[:, 2]})
    symbols = list(frames)
    holdings = _holdings(equity, frames, strat.analyzers.equity.holdings)

    trades = pd.DataFrame(strat.analyzers.trades.get_analysis()).rename(columns={"data": "symbol"})
    trades = _ms_columns(trades, {"open_dt": "open_time", "close_dt": "close_time"}, TRADE_COLUMNS)
    orders = pd.DataFrame(strat.analyzers.orders.get_analysis())
    orders = _ms_columns(orders, {"created_dt": "created_time", "final_dt": "final_time"}, ORDER_COLUMNS)
    if len(orders):  # Backtrader numbers orders process-wide; number them per run, so runs compare
        orders["ref"] = orders["ref"].rank(method="dense").astype(np.int64)

    rec = getattr(strat, "records", None) or []
    rec = np.array(rec, dtype=np.float64)
    rec = rec.reshape(-1, rec.shape[1] if rec.ndim == 2 else 3)
    signals = pd.DataFrame({"timestamp": bt_num_to_ms(rec[:, 0]), "signal": rec[:, 1], "target": rec[:, 2]})
    if len(symbols) > 1 and rec.shape[1] > 3:  # a portfolio: which symbol each decision was about
        signals.insert(1, "symbol", np.asarray(symbols, dtype=object)[rec[:, 3].astype(np.int64)])
        signals = signals.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)
    return BacktestResult(
        equity, trades, signals, len(equity), seconds, cash,
        orders=orders,
        order_counts=strat.analyzers.orders.counts(),
        liquidations=list(cerebro.broker.liquidations),
        holdings=holdings,
        symbols=symbols,
    )


def _holdings(equity: pd.DataFrame, frames: dict, rows: list) -> pd.DataFrame:
    """Long table of each symbol's position and mark at every step (one symbol: from the equity rows)."""
    names = list(frames)
    if len(names) == 1:
        f = next(iter(frames.values()))
        close = pd.Series(f["close"].to_numpy(np.float64), index=f["timestamp"].to_numpy())
        return pd.DataFrame({"timestamp": equity["timestamp"], "symbol": names[0], "position": equity["position"],
                             "close": close.reindex(equity["timestamp"].to_numpy()).to_numpy()})
    h = np.array(rows, dtype=np.float64).reshape(-1, 2 * len(names))
    n = len(names)
    return pd.DataFrame({
        "timestamp": np.repeat(equity["timestamp"].to_numpy(), n),
        "symbol": np.tile(np.asarray(names, dtype=object), len(h)),
        "position": h[:, :n].reshape(-1),
        "close": h[:, n:].reshape(-1),
    })
