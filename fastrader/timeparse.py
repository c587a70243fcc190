"""Times given by users: ISO dates/datetimes or integer UTC milliseconds, always UTC."""

from __future__ import annotations

import pandas as pd

from .errors import ConfigError


def parse_time_ms(value, what: str = "time") -> int:
    """'2021-01-01', '2021-01-01T12:00Z' or 1609459200000 -> UTC ms.

    A naive date or datetime is read as UTC, never as local time.
    """
    if isinstance(value, (int,)) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        return int(value)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{what}: cannot read {value!r} as a date (use e.g. 2021-01-01 or UTC ms)") from None
    if ts is pd.NaT:
        raise ConfigError(f"{what}: empty date")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)
