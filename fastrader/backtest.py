"""Run a Backtrader backtest over candles (with signals) and collect the results.

Cerebro is set up the way crypto trades: fractional sizes, a percentage
commission on traded value, slippage in basis points against the trader, and
orders filled at the next bar's open. Analyzers record the equity at every bar
and every closed trade, which the report module turns into files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import backtrader as bt
import numpy as np
import pandas as pd

from .data import make_feed


class CryptoCommission(bt.CommInfoBase):
    """Percentage commission on traded value, fractional position sizes."""

    params = (
        ("stocklike", True),
        ("commtype", bt.CommInfoBase.COMM_PERC),
        ("percabs", True),  # 0.001 means 0.1%
    )

    def getsize(self, price, cash):
        # Backtrader's default rounds down to whole units: 1 BTC steps are useless.
        return self.p.leverage * (cash / price)


class EquityRecorder(bt.Analyzer):
    """Broker value (cash + positions marked to close) after every bar."""

    def start(self):
        self.rows: list[tuple[float, float, float]] = []

    def next(self):
        b = self.strategy.broker
        pos = self.strategy.getposition(self.data).size
        self.rows.append((self.data.datetime[0], b.getvalue(), pos))

    def get_analysis(self):
        return self.rows


class TradeLog(bt.Analyzer):
    """One row per closed trade (a trade runs from flat to flat)."""

    def start(self):
        self.rows: list[dict] = []
        self._opened: dict[int, float] = {}

    def notify_trade(self, trade):
        if trade.justopened:
            self._opened[trade.ref] = trade.size
        if not trade.isclosed:
            return
        size = abs(self._opened.pop(trade.ref, float("nan")))
        sign = 1.0 if trade.long else -1.0
        self.rows.append(
            {
                "open_dt": trade.dtopen,
                "close_dt": trade.dtclose,
                "direction": "long" if trade.long else "short",
                "size": size,
                "entry_price": trade.price,
                # pnl = sign * size * (exit - entry), before commission
                "exit_price": trade.price + sign * trade.pnl / size if size else float("nan"),
                "bars_held": trade.barlen,
                "pnl": trade.pnl,
                "pnl_net": trade.pnlcomm,
                "commission": trade.commission,
            }
        )

    def get_analysis(self):
        return self.rows


@dataclass
class BacktestResult:
    equity: pd.DataFrame  # timestamp (UTC ms), equity, position
    trades: pd.DataFrame
    signals: pd.DataFrame  # timestamp, signal, target
    bars: int
    seconds: float
    start_cash: float

    @property
    def bars_per_s(self) -> float:
        return self.bars / self.seconds if self.seconds > 0 else float("nan")


def bt_num_to_ms(num: np.ndarray) -> np.ndarray:
    """Backtrader float day numbers to UTC ms, rounded to the millisecond."""
    epoch = bt.date2num(pd.Timestamp("1970-01-01").to_pydatetime())
    return np.round((np.asarray(num, dtype=np.float64) - epoch) * 86_400_000.0).astype(np.int64)


def run_backtest(
    candles: pd.DataFrame,
    strategy: type[bt.Strategy],
    strategy_params: dict | None = None,
    *,
    cash: float = 10_000.0,
    commission: float = 0.001,
    slippage_bps: float = 5.0,
    name: str = "data",
) -> BacktestResult:
    """Backtest ``strategy`` over ``candles`` (ccxt layout, optional ``signal`` column)."""
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True)
    cerebro.adddata(make_feed(candles, name=name), name=name)
    cerebro.broker.setcash(cash)
    cerebro.broker.addcommissioninfo(CryptoCommission(commission=commission))
    if slippage_bps:
        # slip_open: the fill at the next open is slipped too, not only later fills.
        cerebro.broker.set_slippage_perc(slippage_bps / 1e4, slip_open=True, slip_limit=True, slip_match=True)
    cerebro.addstrategy(strategy, **(strategy_params or {}))
    cerebro.addanalyzer(EquityRecorder, _name="equity")
    cerebro.addanalyzer(TradeLog, _name="trades")

    t0 = time.perf_counter()
    strat = cerebro.run()[0]
    seconds = time.perf_counter() - t0

    eq = np.array(strat.analyzers.equity.get_analysis(), dtype=np.float64).reshape(-1, 3)
    equity = pd.DataFrame({"timestamp": bt_num_to_ms(eq[:, 0]), "equity": eq[:, 1], "position": eq[:, 2]})

    trades = pd.DataFrame(
        strat.analyzers.trades.get_analysis(),
        columns=["open_dt", "close_dt", "direction", "size", "entry_price", "exit_price", "bars_held", "pnl", "pnl_net", "commission"],
    )
    if len(trades):
        trades.insert(0, "open_time", bt_num_to_ms(trades.pop("open_dt").to_numpy()))
        trades.insert(1, "close_time", bt_num_to_ms(trades.pop("close_dt").to_numpy()))
    else:
        trades = trades.drop(columns=["open_dt", "close_dt"])
        trades.insert(0, "open_time", pd.Series(dtype="int64"))
        trades.insert(1, "close_time", pd.Series(dtype="int64"))

    rec = getattr(strat, "records", None) or []
    rec = np.array(rec, dtype=np.float64).reshape(-1, 3)
    signals = pd.DataFrame({"timestamp": bt_num_to_ms(rec[:, 0]), "signal": rec[:, 1], "target": rec[:, 2]})
    return BacktestResult(equity, trades, signals, len(equity), seconds, cash)
