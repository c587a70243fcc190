"""Readers for common public candle files, each turned into the ccxt layout.

* ``binance``: Binance public data (data.binance.vision) kline CSVs, zipped or
  not: 12 columns, no header for spot (a header row for futures), open time in
  ms, or in microseconds for spot files from 2025 on.
* ``cryptodatadownload``: CryptoDataDownload exports: a URL on the first line,
  then ``Unix,Date,Symbol,Open,High,Low,Close,Volume <BASE>,Volume <QUOTE>,...``
  newest first; the Unix column is seconds in older files, ms in newer ones.
* ``bitstamp``: the Kaggle "Bitcoin Historical Data" Bitstamp 1-minute CSV:
  ``Timestamp,Open,High,Low,Close,Volume_(BTC),...`` (or ``...,Volume``) in
  Unix seconds, with all-NaN rows for minutes without trades. Those rows are
  dropped, so they show up as gaps in the gap report instead of fake prices.

Timestamps are normalised to UTC milliseconds by magnitude, row by row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fastrader.data.candles import validate_candles
from fastrader.errors import DataError

FORMATS = ("auto", "ccxt", "binance", "cryptodatadownload", "bitstamp")


def epoch_to_ms(values, source: str) -> np.ndarray:
    """Seconds, ms, microseconds or ns since the epoch -> int64 ms (decided per value)."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(v).any():
        pos = int(np.flatnonzero(np.isnan(v))[0])
        raise DataError(f"{source}: missing or non-numeric time at row {pos}")
    out = np.empty(len(v), dtype=np.int64)
    sec = v < 1e11
    ms = (v >= 1e11) & (v < 1e14)
    us = (v >= 1e14) & (v < 1e17)
    ns = v >= 1e17
    out[sec] = np.round(v[sec] * 1000).astype(np.int64)
    out[ms] = v[ms].astype(np.int64)
    out[us] = (v[us] // 1000).astype(np.int64)
    out[ns] = (v[ns] // 1_000_000).astype(np.int64)
    return out


def _read(path: Path, **kw) -> pd.DataFrame:
    try:
        from fastrader.data.files import exact_float_kwargs

        return pd.read_csv(path, **{**exact_float_kwargs(), **kw})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read as CSV ({first})") from None


def _first_lines(path: Path, n: int = 2) -> list[str]:
    try:
        head = pd.read_csv(path, header=None, nrows=n, dtype=str, sep="\x01", skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return []
    return [str(x) for x in head.iloc[:, 0].tolist()]


def detect_format(path: Path) -> str:
    """Guess the format from the first lines (works through .zip/.gz compression)."""
    lines = _first_lines(path)
    if not lines:
        return "ccxt"
    first = lines[0].strip().lower()
    if "cryptodatadownload" in first:
        return "cryptodatadownload"
    cells = [c.strip().lower() for c in first.split(",")]
    if cells and cells[0] == "open_time":
        return "binance"
    if cells and cells[0] == "timestamp" and any(c.startswith("volume_(") for c in cells):
        return "bitstamp"
    if cells and cells[0] in ("unix", "unix timestamp") and "symbol" in cells:
        return "cryptodatadownload"
    try:
        float(cells[0])
    except (ValueError, IndexError):
        return "ccxt"
    return "binance" if len(cells) == 12 else "ccxt"


def read_binance_klines(path: Path) -> pd.DataFrame:
    has_header = _first_lines(path, 1)[0].strip().lower().startswith("open_time")
    table = _read(path, header=0 if has_header else None)
    if table.shape[1] < 6:
        raise DataError(f"{path}: Binance kline CSV needs at least 6 columns, found {table.shape[1]}")
    frame = table.iloc[:, :6].copy()
    frame.columns = ["timestamp", "open", "high", "low", "close", "volume"]
    frame["timestamp"] = epoch_to_ms(frame["timestamp"], str(path))
    return validate_candles(frame, source=str(path), first_line=2 if has_header else 1)


def read_cryptodatadownload(path: Path) -> pd.DataFrame:
    skip = 1 if "cryptodatadownload" in (_first_lines(path, 1) or [""])[0].lower() else 0
    table = _read(path, skiprows=skip)
    cols = {str(c).strip().lower(): c for c in table.columns}
    symbol = None
    if "symbol" in cols and len(table):
        symbol = str(table[cols["symbol"]].iloc[0])
    volume_cols = [c for k, c in cols.items() if k.startswith("volume")]
    # "Volume BTC" (base) comes before "Volume USDT" (quote); prefer the one named after the base.
    base_volume = None
    for col in volume_cols:
        unit = str(col).split(" ", 1)[-1].strip().upper()
        if symbol and symbol.replace("/", "").upper().startswith(unit):
            base_volume = col
            break
    if base_volume is None and volume_cols:
        base_volume = volume_cols[0]
    missing = [name for name in ("open", "high", "low", "close") if name not in cols]
    if base_volume is None:
        missing.append("volume")
    time_col = cols.get("unix") or cols.get("unix timestamp")
    if time_col is None and "date" not in cols:
        missing.insert(0, "unix (or date)")
    if missing:
        raise DataError(f"{path}: CryptoDataDownload file is missing column(s) {', '.join(missing)}")
    if time_col is not None:
        stamps = epoch_to_ms(table[time_col], str(path))
    else:
        stamps = table[cols["date"]]
    frame = pd.DataFrame(
        {
            "timestamp": stamps,
            "open": table[cols["open"]],
            "high": table[cols["high"]],
            "low": table[cols["low"]],
            "close": table[cols["close"]],
            "volume": table[base_volume],
        }
    )
    # Newest first in these exports: put in time order, without hiding duplicates.
    frame = frame.iloc[::-1].reset_index(drop=True) if _descending(frame["timestamp"]) else frame
    return validate_candles(frame, source=str(path))


def _descending(stamps: pd.Series) -> bool:
    values = pd.to_numeric(stamps, errors="coerce")
    if values.isna().any():
        values = pd.to_datetime(stamps, utc=True, errors="coerce").astype("int64")
    return len(values) > 1 and values.iloc[0] > values.iloc[-1]


def read_kaggle_bitstamp(path: Path) -> pd.DataFrame:
    table = _read(path)
    cols = {str(c).strip().lower(): c for c in table.columns}
    volume = cols.get("volume_(btc)") or cols.get("volume")
    missing = [n for n in ("timestamp", "open", "high", "low", "close") if n not in cols] + ([] if volume else ["volume"])
    if missing:
        raise DataError(f"{path}: Bitstamp file is missing column(s) {', '.join(missing)}")
    frame = pd.DataFrame(
        {
            "timestamp": table[cols["timestamp"]],
            "open": table[cols["open"]],
            "high": table[cols["high"]],
            "low": table[cols["low"]],
            "close": table[cols["close"]],
            "volume": table[volume],
        }
    )
    # Minutes without trades are all-NaN rows: drop them (they become gaps).
    no_trade = frame[["open", "high", "low", "close"]].isna().all(axis=1)
    frame = frame[~no_trade].reset_index(drop=True)
    frame["timestamp"] = epoch_to_ms(frame["timestamp"], str(path))
    return validate_candles(frame, source=str(path))


READERS = {
    "binance": read_binance_klines,
    "cryptodatadownload": read_cryptodatadownload,
    "bitstamp": read_kaggle_bitstamp,
}
