"""Time parsing for users (--since/--until) and timeframe lengths, all in UTC ms."""

from __future__ import annotations

import datetime as _dt
import re

import pandas as pd

from fastrader.errors import ConfigError

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "M": 2_592_000_000}
_TIMEFRAME_RE = re.compile(r"^(\d+)([smhdwM])$")


def timeframe_ms(timeframe: str) -> int:
    """'1h' -> 3600000. Months count as 30 days (only used for spacing checks)."""
    match = _TIMEFRAME_RE.match(str(timeframe).strip())
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"timeframe {timeframe!r} is not like 1m, 5m, 1h, 4h, 1d, 1w")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_time(value, *, name: str = "time") -> int:
    """Turn an ISO date/time, a datetime or integer milliseconds into UTC ms.

    Naive times are UTC, never local time: '2021-01-01' and
    '2021-01-01T00:00Z' are the same instant, 1609459200000.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a date or UTC milliseconds, got {value!r}")
    if isinstance(value, int):
        return _check_ms(value, name)
    if isinstance(value, (_dt.datetime, _dt.date, pd.Timestamp)):
        stamp = pd.Timestamp(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"-?\d+", text):
            return _check_ms(int(text), name)
        try:
            stamp = pd.Timestamp(text)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{name}: cannot read {text!r} as a date; use ISO like 2021-01-01 or 2021-01-01T00:00Z, "
                "or UTC milliseconds"
            ) from None
    if stamp is pd.NaT:
        raise ConfigError(f"{name}: {value!r} is not a date")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)


def _check_ms(ms: int, name: str) -> int:
    if not 0 <= ms < 4_102_444_800_000:
        raise ConfigError(f"{name}: {ms} is not UTC milliseconds between 1970 and 2100")
    if 0 < ms < 100_000_000_000:
        raise ConfigError(f"{name}: {ms} looks like seconds; give UTC milliseconds or an ISO date")
    return ms


def format_ms(ms: int) -> str:
    """UTC ms -> '2021-01-01 00:00 UTC' for messages and reports."""
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def now_ms() -> int:
    return int(_dt.datetime.now(_dt.timezone.utc).timestamp() * 1000)
