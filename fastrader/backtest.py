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
from dataclasses import dataclass

import backtrader as bt
import numpy as np
import pandas as pd

from .analyzers import EquityRecorder, OrderLog, TradeLog
from .broker import DEFAULT_BORROW_RATE, make_broker
from .data import make_feed

TRADE_COLUMNS = ["open_time", "close_time", "direction", "size", "max_size", "entry_price", "exit_price",
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
    candles: pd.DataFrame,
    strategy: type[bt.Strategy],
    strategy_params: dict | None = None,
    *,
    cash: float = 10_000.0,
    commission: float = 0.001,
    slippage_bps: float = 5.0,
    borrow_rate: float = DEFAULT_BORROW_RATE,
    name: str = "data",
) -> BacktestResult:
    """Backtest ``strategy`` over ``candles`` (ccxt layout, optional ``signal`` column)."""
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True)
    cerebro.adddata(make_feed(candles, name=name), name=name)
    cerebro.broker = make_broker(cash, commission, slippage_bps, borrow_rate)
    cerebro.addstrategy(strategy, **(strategy_params or {}))
    cerebro.addanalyzer(EquityRecorder, _name="equity")
    cerebro.addanalyzer(TradeLog, _name="trades")
    cerebro.addanalyzer(OrderLog, _name="orders")

    t0 = time.perf_counter()
    strat = cerebro.run()[0]
    seconds = time.perf_counter() - t0

    eq = np.array(strat.analyzers.equity.get_analysis(), dtype=np.float64).reshape(-1, 3)
    equity = pd.DataFrame({"timestamp": bt_num_to_ms(eq[:, 0]), "equity": eq[:, 1], "position": eq[:, 2]})

    trades = pd.DataFrame(strat.analyzers.trades.get_analysis())
    trades = _ms_columns(trades, {"open_dt": "open_time", "close_dt": "close_time"}, TRADE_COLUMNS)
    orders = pd.DataFrame(strat.analyzers.orders.get_analysis())
    orders = _ms_columns(orders, {"created_dt": "created_time", "final_dt": "final_time"}, ORDER_COLUMNS)
    if len(orders):  # Backtrader numbers orders process-wide; number them per run, so runs compare
        orders["ref"] = orders["ref"].rank(method="dense").astype(np.int64)

    rec = getattr(strat, "records", None) or []
    rec = np.array(rec, dtype=np.float64).reshape(-1, 3)
    signals = pd.DataFrame({"timestamp": bt_num_to_ms(rec[:, 0]), "signal": rec[:, 1], "target": rec[:, 2]})
    return BacktestResult(
        equity, trades, signals, len(equity), seconds, cash,
        orders=orders,
        order_counts=strat.analyzers.orders.counts(),
        liquidations=list(cerebro.broker.liquidations),
    )
