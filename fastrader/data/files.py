"""Reading candle files: CSV or Parquet in the ccxt layout.

Everything that reads a file ends in :func:`validate_candles`, so a file with
bad data is rejected with one line saying what is wrong and on which line,
instead of surfacing later as a strange backtest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fastrader.data.candles import COLUMNS, validate_candles
from fastrader.errors import DataError

_PARQUET_MAGIC = b"PAR1"


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == _PARQUET_MAGIC
    except OSError:
        return False


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if p.is_dir():
        raise DataError(f"data path is a directory, expected a CSV or Parquet file: {p}")
    if p.stat().st_size == 0:
        raise DataError(f"data file is empty: {p}")
    return p


def _looks_numeric(cell: object) -> bool:
    try:
        float(str(cell).strip())
    except ValueError:
        return False
    return True


def exact_float_kwargs() -> dict:
    """read_csv options for exact decimal -> double parsing.

    Before pandas 3.1 the default parser may be off by one ulp (seen on 3.0.6),
    so a CSV written from a frame would not load back bit for bit and two runs
    over "the same data" could differ. pandas 3.1 parses exactly by default
    and deprecates the option.
    """
    major, minor = (int(x) for x in pd.__version__.split(".")[:2])
    return {"float_precision": "round_trip"} if (major, minor) < (3, 1) else {}


def read_csv_table(path: Path) -> tuple[pd.DataFrame, int]:
    """Read a CSV with or without a header; return the table and its first data line.

    A header-less file must have the six ccxt columns in order. Compressed
    files (.gz, .zip with one member, ...) are read through pandas' inference.
    """
    try:
        first = pd.read_csv(path, header=None, nrows=1, dtype=str, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: no rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as CSV ({_first_line(exc)})") from None
    headerless = len(first.columns) > 0 and _looks_numeric(first.iloc[0, 0])
    try:
        if headerless:
            if len(first.columns) != len(COLUMNS):
                raise DataError(
                    f"{path}: header-less CSV has {len(first.columns)} columns; expected the 6 ccxt "
                    "columns timestamp,open,high,low,close,volume"
                )
            table = pd.read_csv(path, header=None, names=list(COLUMNS), **exact_float_kwargs())
            return table, 1
        return pd.read_csv(path, **exact_float_kwargs()), 2
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: no rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as CSV ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_parquet_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise DataError(f"{path}: cannot read as Parquet ({_first_line(exc)})") from None


def read_table(path: Path) -> pd.DataFrame:
    """Any CSV or Parquet table (not only candles), with the loader's one-line errors."""
    p = _check_path(path)
    if _is_parquet(p):
        return read_parquet_table(p)
    try:
        return pd.read_csv(p, **exact_float_kwargs())
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{p}: cannot read as CSV ({_first_line(exc)})") from None


def load_candles(path: str | os.PathLike, format: str = "auto", on_bad: str = "error") -> pd.DataFrame:
    """Load and validate a CSV or Parquet file of candles.

    ``format`` is 'ccxt' (timestamp,open,high,low,close,volume, with or
    without header), one of the public formats in :mod:`.formats`
    ('binance', 'cryptodatadownload', 'bitstamp'), or 'auto' to detect it.
    Returns a new frame with a RangeIndex and exactly the columns timestamp
    (int64 UTC ms), open, high, low, close, volume (float64), ascending.
    Raises :class:`fastrader.errors.DataError` with one line on any problem.
    ``on_bad`` is the policy for bad bars (see :func:`validate_candles`).
    """
    from fastrader.data.formats import FORMATS, READERS, detect_format

    if format not in FORMATS:
        raise DataError(f"unknown candle file format {format!r} (choose from {', '.join(FORMATS)})")
    p = _check_path(path)
    if not _is_parquet(p):
        fmt = detect_format(p) if format == "auto" else format
        if fmt in READERS:
            frame = READERS[fmt](p)
            return validate_candles(frame, source=str(p), on_bad=on_bad) if on_bad != "error" else frame
    if _is_parquet(p):
        table, first_line = read_parquet_table(p), None
    else:
        table, first_line = read_csv_table(p)
    if table.empty:
        raise DataError(f"{p}: no rows")
    return validate_candles(table, source=str(p), first_line=first_line, on_bad=on_bad)
