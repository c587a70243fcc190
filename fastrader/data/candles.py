"""The candle table every part of fastrader agrees on, and its validation.

The layout is exactly what ccxt's ``fetch_ohlcv`` returns: ``timestamp`` (candle
open time, int64 milliseconds since the epoch, UTC), then ``open``, ``high``,
``low``, ``close``, ``volume`` as float64. Files, caches and downloads are all
turned into this frame and checked here, so a bad value is reported once, in
one place, with where it was found.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from fastrader.errors import DataError

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")

# Millisecond timestamps between 1973 and 2100. Values outside are almost
# always seconds or microseconds, which would silently shift every date.
_MS_MIN = 100_000_000_000
_MS_MAX = 4_102_444_800_000


def empty_candles() -> pd.DataFrame:
    """A zero-row frame with the canonical columns and dtypes."""
    frame = pd.DataFrame({c: np.array([], dtype=np.float64) for c in COLUMNS})
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    return frame


def _where(pos: int, first_line: int | None) -> str:
    # Files are reported by line number (what an editor shows); in-memory
    # frames by 0-based position (what df.iloc takes).
    if first_line is None:
        return f"row {pos}"
    return f"line {pos + first_line}"


def _numeric(values: pd.Series, name: str, source: str, first_line: int | None) -> np.ndarray:
    """Convert one column to float64, naming the first cell that is not a number."""
    if pd.api.types.is_bool_dtype(values.dtype):
        raise DataError(f"{source}: column '{name}' holds booleans, expected numbers")
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    coerced = pd.to_numeric(values, errors="coerce")
    text = values.astype("string").str.strip()
    bad = coerced.isna().to_numpy() & values.notna().to_numpy() & (text != "").fillna(False).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: non-numeric value {values.iloc[pos]!r} in column '{name}' at {_where(pos, first_line)}"
        )
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan)


def _timestamps_ms(values: pd.Series, source: str, first_line: int | None) -> np.ndarray:
    """Return int64 UTC milliseconds from integer ms, datetimes or ISO strings."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        stamps = values
        if getattr(values.dtype, "tz", None) is None:
            stamps = values.dt.tz_localize("UTC")
        if stamps.isna().any():
            pos = int(np.flatnonzero(stamps.isna().to_numpy())[0])
            raise DataError(f"{source}: missing timestamp at {_where(pos, first_line)}")
        return stamps.dt.tz_convert("UTC").dt.as_unit("ms").astype("int64").to_numpy()

    if not pd.api.types.is_numeric_dtype(values.dtype):
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.isna().sum() > values.isna().sum():
            # Not plain numbers: accept date strings, read as UTC when naive.
            try:
                parsed = pd.to_datetime(values, utc=True, format="ISO8601")
            except (ValueError, TypeError):
                pos = int(np.flatnonzero(numeric.isna().to_numpy() & values.notna().to_numpy())[0])
                raise DataError(
                    f"{source}: timestamp {values.iloc[pos]!r} at {_where(pos, first_line)} is neither "
                    "integer milliseconds nor an ISO date"
                ) from None
            return _timestamps_ms(parsed, source, first_line)
        values = numeric

    as_float = values.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(as_float)
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        raise DataError(f"{source}: missing timestamp at {_where(pos, first_line)}")
    if pd.api.types.is_integer_dtype(values.dtype):
        ms = values.to_numpy(dtype=np.int64)
    else:
        fractional = as_float != np.floor(as_float)
        if fractional.any():
            pos = int(np.flatnonzero(fractional)[0])
            raise DataError(
                f"{source}: timestamp {as_float[pos]!r} at {_where(pos, first_line)} is not whole milliseconds"
            )
        ms = as_float.astype(np.int64)
    low = ms < _MS_MIN
    high = ms > _MS_MAX
    if low.any() or high.any():
        pos = int(np.flatnonzero(low | high)[0])
        unit = "seconds" if low[pos] else "microseconds or nanoseconds"
        raise DataError(
            f"{source}: timestamp {int(ms[pos])} at {_where(pos, first_line)} is not UTC milliseconds "
            f"(it looks like {unit})"
        )
    return ms


def validate_candles(df: pd.DataFrame, source: str = "candles", *, first_line: int | None = None) -> pd.DataFrame:
    """Check a candle frame and return a clean copy in the canonical layout.

    Column names are matched case-insensitively; other columns are dropped.
    Raises :class:`DataError` naming the first problem and where it is:
    missing columns, non-numeric or missing values, non-positive prices,
    negative volume, high below low, timestamps that are not UTC milliseconds,
    out of order, or duplicated. ``first_line`` turns positions into file line
    numbers (the line of the first data row).
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    by_lower: dict[str, object] = {}
    for col in df.columns:
        key = str(col).strip().lower()
        by_lower.setdefault(key, col)
    missing = [c for c in COLUMNS if c not in by_lower]
    if missing:
        found = ", ".join(str(c) for c in df.columns) or "none"
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} (found: {found})")

    out: dict[str, np.ndarray] = {}
    out["timestamp"] = _timestamps_ms(df[by_lower["timestamp"]], source, first_line)
    for name in COLUMNS[1:]:
        values = _numeric(df[by_lower[name]], name, source, first_line)
        nan = np.isnan(values)
        if nan.any():
            pos = int(np.flatnonzero(nan)[0])
            raise DataError(f"{source}: missing (NaN) value in column '{name}' at {_where(pos, first_line)}")
        if name in PRICE_COLUMNS:
            bad = ~(values > 0) | ~np.isfinite(values)
            what = "non-positive or infinite price"
        else:
            bad = (values < 0) | ~np.isfinite(values)
            what = "negative or infinite volume"
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: {what} {values[pos]!r} in column '{name}' at {_where(pos, first_line)}")
        out[name] = values

    inverted = out["high"] < out["low"]
    if inverted.any():
        pos = int(np.flatnonzero(inverted)[0])
        raise DataError(
            f"{source}: high {out['high'][pos]!r} is below low {out['low'][pos]!r} at {_where(pos, first_line)}"
        )

    ts = out["timestamp"]
    if len(ts) > 1:
        step = np.diff(ts)
        bad_step = np.flatnonzero(step <= 0)
        if len(bad_step):
            pos = int(bad_step[0]) + 1
            if step[pos - 1] == 0:
                raise DataError(
                    f"{source}: duplicated timestamp {int(ts[pos])} ({_iso(ts[pos])}) at "
                    f"{_where(pos - 1, first_line)} and {_where(pos, first_line)}"
                )
            raise DataError(
                f"{source}: timestamps out of order at {_where(pos, first_line)}: {int(ts[pos])} "
                f"({_iso(ts[pos])}) comes after {int(ts[pos - 1])} ({_iso(ts[pos - 1])})"
            )

    frame = pd.DataFrame(out, columns=list(COLUMNS))
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    return frame


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def candles_digest(candles: pd.DataFrame) -> str:
    """SHA-256 over the candle values in canonical dtypes (independent of Parquet encoding)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(candles["timestamp"].to_numpy(dtype=np.int64)).tobytes())
    for name in COLUMNS[1:]:
        h.update(np.ascontiguousarray(candles[name].to_numpy(dtype=np.float64)).tobytes())
    return h.hexdigest()
