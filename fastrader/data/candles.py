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
                f"{source}: timestamp {_num(as_float[pos])} at {_where(pos, first_line)} is not whole milliseconds"
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


ON_BAD = ("error", "drop", "nan")


def _num(x) -> str:
    """A number as a person writes it (25969.88), never numpy's repr (np.float64(25969.88))."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def validate_candles(df: pd.DataFrame, source: str = "candles", *, first_line: int | None = None,
                     on_bad: str = "error") -> pd.DataFrame:
    """Check a candle frame and return a clean copy in the canonical layout.

    Column names are matched case-insensitively; other columns are dropped.
    Raises :class:`DataError` naming the first problem and where it is:
    missing columns, non-numeric values, timestamps that are not UTC
    milliseconds, out of order, or duplicated. ``first_line`` turns positions
    into file line numbers (the line of the first data row).

    *Bad bars* (a missing value, a non-positive price, a negative volume,
    high below low, or open or close outside [low, high]) follow ``on_bad``:
    ``error`` (default) raises naming the row and its values; ``drop``
    removes them (the frame's ``attrs["note"]`` says how many and the first);
    ``nan`` keeps bars whose prices are finite and positive but inconsistent,
    for the feature engine to blank out and restart its warm-up after, and
    drops the rest (a broker cannot price them).
    """
    if on_bad not in ON_BAD:
        raise DataError(f"on_bad must be one of {', '.join(ON_BAD)}, got {on_bad!r}")
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
    unpriceable = np.zeros(len(df), dtype=bool)  # no broker can fill or mark these
    problems: list[tuple[np.ndarray, object]] = []  # (mask, message for the first row)
    for name in COLUMNS[1:]:
        values = _numeric(df[by_lower[name]], name, source, first_line)
        nan = np.isnan(values)
        problems.append((nan, lambda p, n=name: f"missing (NaN) value in column '{n}' at {_where(p, first_line)}"))
        if name in PRICE_COLUMNS:
            bad = ~nan & (~(values > 0) | ~np.isfinite(values))
            unpriceable |= nan | bad
            what = "non-positive or infinite price"
        else:
            bad = ~nan & ((values < 0) | ~np.isfinite(values))
            unpriceable |= nan | bad
            what = "negative or infinite volume"
        problems.append((bad, lambda p, n=name, v=values, w=what: f"{w} {_num(v[p])} in column '{n}' at "
                                                                  f"{_where(p, first_line)}"))
        out[name] = values

    o, h, l, c = (out[k] for k in PRICE_COLUMNS)
    with np.errstate(invalid="ignore"):
        inverted = h < l
        outside = ~inverted & ((o < l) | (o > h) | (c < l) | (c > h))
    problems.append((inverted, lambda p: f"high {_num(h[p])} is below low {_num(l[p])} at {_where(p, first_line)}"))
    problems.append((outside, lambda p: f"open or close outside [low, high] at {_where(p, first_line)}: "
                                        f"open={_num(o[p])} high={_num(h[p])} low={_num(l[p])} close={_num(c[p])}"))
    bad_any = np.zeros(len(df), dtype=bool)
    for mask, _ in problems:
        bad_any |= mask
    note = None
    if bad_any.any():
        first = int(np.flatnonzero(bad_any)[0])
        message = next(m(first) for mask, m in problems if mask[first])
        if on_bad == "error":
            raise DataError(f"{source}: {message} (--on-bad-bars drop or nan to go on)")
        drop = bad_any if on_bad == "drop" else unpriceable
        kept = int((bad_any & ~drop).sum())
        note = (f"{source}: {int(bad_any.sum()):,} bad bars, the first {message}; "
                f"{int(drop.sum()):,} dropped" + (f", {kept:,} kept for the features to skip" if kept else ""))
        out = {k: v[~drop] for k, v in out.items()}

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
    if note:
        frame.attrs["note"] = note
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
