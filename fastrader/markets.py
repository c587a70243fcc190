"""The instruments of a run: one symbol or a portfolio, loaded, named and reported.

* ``--data a.csv --data b.csv`` (repeatable, globs expanded in sorted order)
  or ``--symbol BTC/USDT,ETH/USDT --exchange binance`` give one
  :class:`Market` per symbol. Each keeps its own candles: nothing is aligned
  or filled here. Backtrader's multi-data clock aligns the feeds by
  timestamp, and a symbol with no candle at a time simply has no new bar.
* A file names its instrument: ``binance_ETHUSDT_1h.csv``, ``ETH-USDT-4h.parquet``
  or ``ETHUSDT-1h-2024-01.zip`` is ETH/USDT at 1h (``--symbol`` wins).
* Reports: an equal-weight buy-and-hold benchmark, a per-symbol block, and
  the long equity table (one row per symbol per step of the common clock).
"""

from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError

QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "DAI", "USD", "EUR", "GBP", "TRY", "BTC", "ETH", "BNB")
_TF = re.compile(r"^\d+(s|m|h|d|w|M)$")
_UNITS = (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000))


@dataclass
class Market:
    name: str  # the instrument, e.g. ETH/USDT
    source: str
    candles: pd.DataFrame
    timeframe: str | None = None
    signal: np.ndarray | None = None
    start: int = 0  # index of the first traded bar
    in_sample_bars: int = 0
    notes: list[str] = field(default_factory=list)


def data_paths(data) -> list[str]:
    """``--data`` values (a string or a list) with globs expanded, sorted, in the order given."""
    items = [data] if isinstance(data, str) else list(data or [])
    out = []
    for item in items:
        item = str(item)
        if any(ch in item for ch in "*?["):
            hits = sorted(glob.glob(item))
            if not hits:
                raise ConfigError(f"--data {item}: no file matches")
            out += hits
        else:
            out.append(item)
    if len(set(out)) != len(out):
        dup = next(p for p in out if out.count(p) > 1)
        raise ConfigError(f"--data {dup} is given twice")
    return out


def split_symbols(symbol: str | None) -> list[str]:
    return [s.strip() for s in str(symbol or "").split(",") if s.strip()]


def instrument_from_filename(path: str) -> tuple[str | None, str | None]:
    """(symbol, timeframe) read from a file name, or None for what it does not say."""
    stem = Path(path).name
    for ext in (".zip", ".gz", ".csv", ".parquet", ".pq", ".txt"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    for ext in (".csv",):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    tokens = [t for t in re.split(r"[_\-.\s]+", stem) if t]
    tf = next((t for t in tokens if _TF.match(t) and not t.isdigit()), None)
    if tf is not None and tf[-1] != "M":
        tf = tf.lower()
    up = [t.upper() for t in tokens]
    symbol = None
    for i, t in enumerate(up):
        if "/" in t:
            continue
        if t in QUOTES and i > 0 and up[i - 1].isalpha() and up[i - 1] != t and len(up[i - 1]) >= 2:
            symbol = f"{up[i - 1]}/{t}"  # ETH_USDT
            break
        for q in QUOTES:
            if t.endswith(q) and len(t) > len(q) + 1 and t[: -len(q)].isalnum() and t[: -len(q)].isalpha():
                symbol = f"{t[: -len(q)]}/{q}"  # ETHUSDT
                break
        if symbol:
            break
    return symbol, tf


def timeframe_label(step_ms: int) -> str:
    for unit, ms in _UNITS:
        if step_ms % ms == 0:
            return f"{step_ms // ms}{unit}"
    return f"{step_ms}ms"


def candle_timeframe(df: pd.DataFrame) -> str | None:
    from .data.gaps import typical_step_ms

    if len(df) < 2:
        return None
    return timeframe_label(int(typical_step_ms(df["timestamp"].to_numpy())))


def name_markets(paths: list[str], symbols: list[str]) -> list[tuple[str, str | None]]:
    """(instrument, timeframe from the name) per file: ``--symbol`` first, then the file's name, then its stem."""
    if symbols and len(symbols) != len(paths):
        raise ConfigError(f"--symbol names {len(symbols)} instrument(s) for {len(paths)} --data file(s); "
                          "give one per file, comma-separated, or leave it out to read them from the file names")
    out = []
    for i, p in enumerate(paths):
        sym, tf = instrument_from_filename(p)
        out.append((symbols[i] if symbols else (sym or Path(p).stem), tf))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two --data files are both {dup}; name them with --symbol A,B,...")
    return out


# ---- reports ----------------------------------------------------------------------------

def equal_weight_benchmark(frames: dict[str, pd.DataFrame]) -> pd.Series:
    """Daily returns of equal cash in each symbol, bought at its first traded open and held.

    Each symbol is marked at its last close; one with no candle yet is still cash.
    """
    from .report.metrics import daily_returns

    ts = np.unique(np.concatenate([f["timestamp"].to_numpy() for f in frames.values()]))
    value = np.zeros(len(ts))
    n = len(frames)
    for f in frames.values():
        t = f["timestamp"].to_numpy()
        growth = f["close"].to_numpy(np.float64) / float(f["open"].iloc[0])
        idx = np.searchsorted(t, ts, side="right") - 1
        value += np.where(idx >= 0, growth[np.maximum(idx, 0)], 1.0) / n
    r = daily_returns(ts, value, 1.0)
    r.name = "benchmark"
    return r


def equity_table(result) -> pd.DataFrame:
    """equity.csv: timestamp, symbol, position, close, equity, cash; one row per symbol per step."""
    h = result.holdings
    eq = result.equity
    if h is None:
        return eq
    n = max(1, len(result.symbols))
    out = h.copy()
    out["equity"] = np.repeat(eq["equity"].to_numpy(), n)
    out["cash"] = np.repeat(eq["cash"].to_numpy(), n)
    return out


def per_symbol(result, frames: dict[str, pd.DataFrame]) -> dict:
    """Per-symbol block of metrics.json: trades, net P&L, exposure, and the symbol's own buy-and-hold."""
    trades = result.trades
    h = result.holdings
    out = {}
    for name, f in frames.items():
        t = trades[trades["symbol"] == name] if len(trades) else trades
        pos = h.loc[h["symbol"] == name, "position"].to_numpy() if h is not None else np.zeros(0)
        bh = float(f["close"].iloc[-1] / f["open"].iloc[0] - 1.0) if len(f) else math.nan
        out[name] = {
            "bars": int(len(f)),
            "first_bar_ms": int(f["timestamp"].iloc[0]) if len(f) else None,
            "last_bar_ms": int(f["timestamp"].iloc[-1]) if len(f) else None,
            "n_trades": int(len(t)),
            "pnl_net": float(t["pnl_net"].sum()) if len(t) else 0.0,
            "contribution": float(t["pnl_net"].sum() / result.start_cash) if len(t) else 0.0,
            "win_rate": float((t["pnl_net"] > 0).mean()) if len(t) else math.nan,
            "exposure": float((pos != 0).mean()) if len(pos) else 0.0,
            "buy_and_hold_return": bh,
        }
    return out


def read_signal_columns(path: str, markets: list[Market]) -> None:
    """A portfolio's signals file: ``timestamp`` plus one column per symbol; sets each market's signal.

    A column is named as the symbol (``ETH/USDT``) or without the slash
    (``ETHUSDT``). A value at a time the symbol has no candle is an error, and
    so is a candle of the symbol, inside its column's span, with no row: no
    signal is ever filled or shifted. A blank cell is NaN (flat).
    """
    from .data.files import read_table
    from .pipeline import _utc

    table = read_table(Path(path))
    cols = {str(c): c for c in table.columns}
    if "timestamp" not in cols:
        raise DataError(f"{path}: a signals file needs a timestamp column (found: {', '.join(cols)})")
    ts = pd.to_numeric(table["timestamp"], errors="coerce").to_numpy()
    if len(ts) == 0 or np.isnan(ts).any():
        raise DataError(f"{path}: timestamps must be UTC milliseconds, one per row")
    ts = ts.astype(np.int64)
    if (np.diff(ts) <= 0).any():
        raise DataError(f"{path}: timestamps must be strictly increasing")
    want = {m.name: next((cols[c] for c in (m.name, m.name.replace("/", "")) if c in cols), None) for m in markets}
    lacking = [n for n, c in want.items() if c is None]
    if lacking:
        hint = " (one `signal` column is for a single symbol)" if "signal" in cols else ""
        raise DataError(f"{path}: a portfolio's signals file needs one column per symbol; no column for "
                        f"{', '.join(lacking)}{hint} (found: {', '.join(cols)})")
    for m in markets:
        sig = pd.to_numeric(table[want[m.name]], errors="coerce").to_numpy(np.float64)
        cts = m.candles["timestamp"].to_numpy()
        have = ~np.isnan(sig)
        pos = np.searchsorted(cts, ts)
        known = (pos < len(cts)) & (cts[np.minimum(pos, len(cts) - 1)] == ts)
        extra = have & ~known
        if extra.any():
            k = int(np.flatnonzero(extra)[0])
            raise DataError(f"{path}: {int(extra.sum()):,} {m.name} signals are at times with no {m.name} candle, the "
                            f"first {int(ts[k])} ({_utc(ts[k])} UTC); signals are never filled or shifted")
        if not have.any():
            raise DataError(f"{path}: the {m.name} column has no values")
        lo, hi = ts[have][0], ts[have][-1]
        inside = (cts >= lo) & (cts <= hi)
        rows = np.isin(cts, ts[known])
        gap = inside & ~rows
        if gap.any():
            k = int(np.flatnonzero(gap)[0])
            raise DataError(f"{path}: {int(gap.sum()):,} {m.name} candles have no row in the file, the first at "
                            f"{_utc(cts[k])} UTC; signals are never filled")
        out = np.full(len(cts), np.nan)
        out[pos[known]] = sig[known]
        m.signal = out
        m.start = int(np.searchsorted(cts, lo))


# ---- loading and preparing ----------------------------------------------------------------

def load_markets(cfg) -> list[Market]:
    """One :class:`Market` per symbol from ``--data`` files or ``--exchange``, resampled to ``--timeframe``."""
    from dataclasses import replace

    from .pipeline import SAMPLE_DATA, load_data

    symbols = split_symbols(cfg.symbol)
    out = []
    if cfg.exchange:
        if cfg.data:
            raise ConfigError("give either --data or --exchange, not both")
        for sym in symbols or ["BTC/USDT"]:
            df, source = load_data(replace(cfg, symbol=sym, data=None))
            out.append(Market(sym.upper(), source, df, cfg.source_timeframe or cfg.timeframe or "1h"))
    else:
        if cfg.source_timeframe:
            raise ConfigError("--source-timeframe is for --exchange; a file's timeframe is read from its candles")
        paths = data_paths(cfg.data)
        for (name, tf_name), path in zip(name_markets(paths or [str(SAMPLE_DATA)], symbols), paths or [None]):
            df, source = load_data(replace(cfg, data=path))
            tf = candle_timeframe(df) or tf_name
            m = Market(name, source, df, tf)
            if tf_name and tf and tf_name != tf:
                m.notes.append(f"{Path(source).name}: the name says {tf_name}, the candles are {tf} apart; using {tf}")
            out.append(m)
    if cfg.timeframe:
        for m in out:
            _resample_market(m, cfg.timeframe)
    return out


def _resample_market(m: Market, timeframe: str) -> None:
    from .data.gaps import typical_step_ms
    from .data.resample import resample_candles
    from .data.timeframes import timeframe_ms

    want = timeframe_ms(timeframe)
    if len(m.candles) < 2:
        return
    step = int(typical_step_ms(m.candles["timestamp"].to_numpy()))
    if step == want:
        return
    if step > want:
        raise ConfigError(f"{m.name}: the candles are {timeframe_label(step)}; --timeframe {timeframe} would need "
                          "finer ones (resampling only makes bars coarser)")
    n = len(m.candles)
    m.candles = resample_candles(m.candles, timeframe, source_step_ms=step)
    if len(m.candles) == 0:
        raise DataError(f"{m.name}: {n:,} {timeframe_label(step)} candles hold no complete {timeframe} bar")
    m.timeframe = timeframe
    m.notes.append(f"{m.name}: {n:,} {timeframe_label(step)} candles resampled to {len(m.candles):,} complete "
                   f"{timeframe} bars (labelled by open time)")


def prepare_portfolio(prep):
    """:func:`fastrader.pipeline.prepare` for several symbols: each its own start and its own signals."""
    from .pipeline import backtest_start, gap_note, resolve_device

    cfg, markets = prep.cfg, prep.markets
    if prep.streaming:
        raise ConfigError("--stream runs one symbol; a portfolio uses precomputed signals (drop --stream)")
    prep.notes = [n for m in markets for n in m.notes]
    for m in markets:
        note = gap_note(m.candles)
        if note:
            prep.notes.append(f"{m.name}: {note}")
    if not prep.is_model:
        if cfg.start != "auto":
            for m in markets:
                m.start = backtest_start(cfg, m.candles, None)[0]
    elif cfg.signals:
        read_signal_columns(cfg.signals, markets)
        if cfg.start != "auto":
            for m in markets:
                m.start = max(m.start, backtest_start(cfg, m.candles, None)[0])
    else:
        import time

        from .model.checkpoint import load as load_checkpoint
        from .signals import SignalModel

        ckpt = load_checkpoint(cfg.model)
        prep.model = SignalModel(ckpt, device=resolve_device(cfg.device), attention=cfg.attention,
                                 on_bad="nan" if cfg.on_bad_bars == "nan" else "raise")
        t = time.perf_counter()
        for m in markets:
            m.start, m.in_sample_bars, notes, warns = backtest_start(cfg, m.candles, ckpt.train)
            prep.notes += [f"{m.name}: {x}" for x in notes]
            prep.warnings += [w.replace("warning: ", f"warning: {m.name}: ", 1) for w in warns]
            m.signal = prep.model.precompute(m.candles)  # each symbol's own bars: nothing aligned or filled
        prep.signal_seconds = time.perf_counter() - t
    first = markets[0]
    prep.start, prep.signal = first.start, first.signal
    prep.in_sample_bars = sum(m.in_sample_bars for m in markets)
    return prep


def traded_frames(prep, end: int | None = None) -> dict[str, pd.DataFrame]:
    """{symbol: its traded bars with their ``signal``}; ``end`` cuts every symbol at the time of
    ``prep.candles``' bar ``end`` (the first symbol's), as a single-symbol backtest cuts at that bar."""
    end_ms = None
    if end is not None and end < len(prep.candles):
        end_ms = int(prep.candles["timestamp"].iloc[end])
    out = {}
    for m in prep.markets:
        f = m.candles.iloc[m.start:]
        sig = m.signal[m.start:] if m.signal is not None else None
        if end_ms is not None:
            k = int(np.searchsorted(f["timestamp"].to_numpy(), end_ms))
            f, sig = f.iloc[:k], (sig[:k] if sig is not None else None)
        f = f.reset_index(drop=True).copy()
        if sig is not None:
            f["signal"] = sig
        if len(f):
            out[m.name] = f
    if not out:
        raise DataError("no symbol has a bar to trade in the chosen range")
    return out


def chart_or_note(out: Path, frames: dict, result, files: dict, warns: list) -> tuple[dict, list]:
    """Write chart.png beside the other files; a chart that fails is a warning, never a lost run.

    Adds to ``files``/``warns`` and returns them (a worker process sends them back that way).
    """
    from .report.chart import write_chart

    try:
        files["chart"] = write_chart(out / "chart.png", frames, result)
    except Exception as exc:  # the results are already on disk
        warns.append(f"warning: chart.png not written ({type(exc).__name__}: {exc})")
    return files, warns
