"""Strategy params from the command line (``--param NAME=VALUE``) or a config's ``[params]`` table.

Each value is converted to the type of the strategy's own default, so
``--param maperiod=20`` reaches a plain Backtrader strategy as the int 20.
Unknown names and values of the wrong type are one-line errors that list
what the strategy accepts.
"""

from __future__ import annotations

import backtrader as bt

from .errors import ConfigError

# Params that fastrader itself fills in; a user setting them would break the run.
INTERNAL = frozenset({"model", "history"})
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def defaults(strategy_cls: type[bt.Strategy]) -> dict:
    """The strategy's params and their defaults, in declaration order."""
    return {k: v for k, v in strategy_cls.params._getitems() if k not in INTERNAL}


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--param takes NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def _convert(name: str, value, default):
    kind = type(default)
    if isinstance(value, str) and default is not None and not isinstance(default, str):
        text = value.strip()
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
        else:
            try:
                return kind(text) if kind is not int else int(text, 0)
            except (TypeError, ValueError):
                pass
        raise ConfigError(f"param {name}: {value!r} is not a valid {kind.__name__} (default {default!r})")
    if default is None or isinstance(default, str) and isinstance(value, str):
        return _literal(value) if default is None else value
    # typed value (TOML): accept ints for floats, nothing else loosely
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool) == isinstance(value, bool):
        return value
    raise ConfigError(f"param {name}: {value!r} is a {type(value).__name__}, expected a {kind.__name__} "
                      f"(default {default!r})")


def _literal(value):
    """A value for a param whose default is None: a number when it reads as one."""
    if not isinstance(value, str):
        return value
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    low = value.lower()
    if low in _TRUE | _FALSE and low not in ("0", "1"):
        return low in _TRUE
    return value


def convert_params(strategy_cls: type[bt.Strategy], values: dict) -> dict:
    """Check names against the strategy's params and convert each value to its default's type."""
    known = defaults(strategy_cls)
    out = {}
    for name, value in (values or {}).items():
        if name not in known:
            listing = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
            raise ConfigError(f"unknown param {name!r} for strategy {strategy_cls.__name__}; its params: {listing}")
        out[name] = _convert(name, value, known[name])
    return out
