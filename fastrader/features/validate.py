"""Input checks for OHLCV bars and the documented behaviour on bad bars.

Every bar gets a flag byte (bits below). A bar is *bad* when it has a
non-finite value, a non-positive price, high < low or open/close outside
[low, high], or a negative volume. Zero volume is legitimate (no trades) and
only flagged: volume features whose window has no volume are NaN.

``on_bad="raise"`` (default): the first bad bar raises :class:`DataError`
naming the bar and what is wrong; nothing is computed silently.
``on_bad="nan"``: a bad bar yields an all-NaN row and restarts every
feature's warm-up, so each row is computed only from the bars after the last
bad bar (the result equals computing each clean stretch separately); pass
``return_flags=True`` to get the per-bar flags alongside.
"""

from __future__ import annotations

import numpy as np

from fastrader.errors import ConfigError, DataError
from fastrader.features._engine import FLAGS as _F, flags_of

NONFINITE = _F["nonfinite"]
NONPOSITIVE_PRICE = _F["nonpositive_price"]
INCONSISTENT = _F["inconsistent"]
NEGATIVE_VOLUME = _F["negative_volume"]
ZERO_VOLUME = _F["zero_volume"]
BAD = _F["bad"]

_WORDS = [
    (NONFINITE, "a NaN or infinite value"),
    (NONPOSITIVE_PRICE, "a non-positive price"),
    (INCONSISTENT, "high < low or open/close outside [low, high]"),
    (NEGATIVE_VOLUME, "a negative volume"),
    (ZERO_VOLUME, "zero volume"),
]
ON_BAD = ("raise", "nan")


def describe(flags: int) -> str:
    """Human words for one flag byte."""
    words = [w for bit, w in _WORDS if flags & bit]
    return ", ".join(words) if words else "ok"


def check_on_bad(on_bad: str) -> bool:
    """True when bad bars must raise."""
    if on_bad not in ON_BAD:
        raise ConfigError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    return on_bad == "raise"


def bad_bar_error(index: int, flags: int, bar) -> DataError:
    o, h, l, c, v = (float(x) for x in bar)
    return DataError(f"bar {index} has {describe(flags & BAD)} "
                     f"(open={o!r} high={h!r} low={l!r} close={c!r} volume={v!r}); "
                     f"fix the data or pass on_bad='nan'")


def as_arrays(open, high, low, close, volume):
    """Five equal-length 1-D C-contiguous float64 arrays, or DataError."""
    out = []
    for name, x in zip(("open", "high", "low", "close", "volume"), (open, high, low, close, volume)):
        try:
            a = np.ascontiguousarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"{name}: cannot be read as float64 numbers ({e})") from None
        if a.ndim != 1:
            raise DataError(f"{name}: expected a 1-D array, got shape {a.shape}")
        out.append(a)
    lens = {len(a) for a in out}
    if len(lens) != 1:
        raise DataError(f"open/high/low/close/volume lengths differ: {[len(a) for a in out]}")
    return out


def bar_flags(open, high, low, close, volume) -> np.ndarray:
    """Per-bar flag bytes (uint8) of OHLCV arrays."""
    return flags_of(*as_arrays(open, high, low, close, volume))
