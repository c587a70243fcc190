"""FeatureSpec: which features, with which parameters, in which column order.

A spec is plain data (kind names and integer/float parameters), so it round-
trips through JSON and is stored in model checkpoints: a model trained on a
spec is fed the same columns at inference time.

Kinds, their parameters (defaults) and columns; "warm-up" is the number of
leading rows that are NaN on clean data (the index of the first finite row):

==========  ===========================  ==========================================  =============
kind        parameters                   columns                                     warm-up
==========  ===========================  ==========================================  =============
logret      n=1                          logret_{n} = log(close_t / close_{t-n})     n
volatility  n=24 (>= 2)                  vol_{n}: sample std (ddof=1) of the last n  n
                                         1-bar log returns
sma         n=20                         sma_{n} (price level, TA-Lib SMA)           n-1
ema         n=20                         ema_{n} (price level, TA-Lib EMA)           n-1
close_sma   n=20                         close_sma_{n} = close / SMA - 1             n-1
close_ema   n=20                         close_ema_{n} = close / EMA - 1             n-1
rsi         n=14                         rsi_{n}: Wilder RSI in [0, 100] (TA-Lib);   n
                                         50 when there was no move at all
atr         n=14                         atr_{n}: Wilder ATR (TA-Lib)                n
atr_pct     n=14                         atr_pct_{n} = ATR / close                   n
macd        fast=12, slow=26, signal=9   macd_, macd_signal_, macd_hist_{f}_{s}_{g}  slow-1 (line),
                                         (TA-Lib MACD)                               slow+signal-2
macd_norm   fast=12, slow=26, signal=9   macdn_, macdn_signal_, macdn_hist_...:      as macd
                                         the MACD columns divided by close
bbands      n=20, k=2                    bb_upper_, bb_middle_, bb_lower_{n}_{k}     n-1
                                         (TA-Lib BBANDS: SMA +- k population std)
bb_pctb     n=20, k=2                    bb_pctb_{n}_{k} = (close-lower)/(upper-     n-1
                                         lower); NaN when the band is flat
bb_width    n=20, k=2                    bb_width_{n}_{k} = (upper-lower)/middle     n-1
stddev      n=24, nbdev=1                stddev_{n}: population std * nbdev (TA-Lib) n-1
volume_z    n=24 (>= 2)                  volume_z_{n} = (v - mean) / std (ddof=1)    n-1
                                         over the last n volumes; NaN if constant
vwap        n=24                         vwap_{n} = sum(tp*v)/sum(v), tp=(h+l+c)/3   n-1
                                         NaN if no volume in the window
vwap_dev    n=24                         vwap_dev_{n} = close / VWAP - 1             n-1
hl_range    -                            hl_range = (high - low) / close             0
intrabar    -                            intrabar = (close-low)/(high-low), 0.5 when 0
                                         high == low
==========  ===========================  ==========================================  =============

Every column is NaN at a bad bar (see ``validate``) and warms up again after
it. Rolling sums are exact to ~1e-14 (periodically recomputed, see
``_common.pxd``); windows of constant values give exactly zero spread.

Optional normalisation inside the pass: ``normalize={"kind": "rolling_z",
"window": W}`` replaces every column by its causal rolling z-score over the
last W rows (ddof=1), adding W-1 rows of warm-up. For statistics fitted on a
training range instead, see :class:`fastrader.features.Normalizer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastrader.errors import ConfigError

FORMAT = "fastrader.features/1"


def _fmt(x: float) -> str:
    # 2.0 -> "2", 2.5 -> "2.5": stable, readable column names
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _n(p):
    return p["n"]


# kind -> (defaults, minimum of each integer parameter, column names, column warm-ups)
_KINDS: dict[str, tuple[dict, dict, Any, Any]] = {
    "logret": ({"n": 1}, {"n": 1}, lambda p: [f"logret_{p['n']}"], lambda p: [p["n"]]),
    "volatility": ({"n": 24}, {"n": 2}, lambda p: [f"vol_{p['n']}"], lambda p: [p["n"]]),
    "sma": ({"n": 20}, {"n": 1}, lambda p: [f"sma_{p['n']}"], lambda p: [p["n"] - 1]),
    "ema": ({"n": 20}, {"n": 1}, lambda p: [f"ema_{p['n']}"], lambda p: [p["n"] - 1]),
    "close_sma": ({"n": 20}, {"n": 1}, lambda p: [f"close_sma_{p['n']}"], lambda p: [p["n"] - 1]),
    "close_ema": ({"n": 20}, {"n": 1}, lambda p: [f"close_ema_{p['n']}"], lambda p: [p["n"] - 1]),
    "rsi": ({"n": 14}, {"n": 1}, lambda p: [f"rsi_{p['n']}"], lambda p: [p["n"]]),
    "atr": ({"n": 14}, {"n": 1}, lambda p: [f"atr_{p['n']}"], lambda p: [p["n"]]),
    "atr_pct": ({"n": 14}, {"n": 1}, lambda p: [f"atr_pct_{p['n']}"], lambda p: [p["n"]]),
    "macd": (
        {"fast": 12, "slow": 26, "signal": 9},
        {"fast": 1, "slow": 2, "signal": 1},
        lambda p: [f"macd{s}_{p['fast']}_{p['slow']}_{p['signal']}" for s in ("", "_signal", "_hist")],
        lambda p: [p["slow"] - 1] + [p["slow"] + p["signal"] - 2] * 2,
    ),
    "macd_norm": (
        {"fast": 12, "slow": 26, "signal": 9},
        {"fast": 1, "slow": 2, "signal": 1},
        lambda p: [f"macdn{s}_{p['fast']}_{p['slow']}_{p['signal']}" for s in ("", "_signal", "_hist")],
        lambda p: [p["slow"] - 1] + [p["slow"] + p["signal"] - 2] * 2,
    ),
    "bbands": (
        {"n": 20, "k": 2.0},
        {"n": 1},
        lambda p: [f"bb_{s}_{p['n']}_{_fmt(p['k'])}" for s in ("upper", "middle", "lower")],
        lambda p: [p["n"] - 1] * 3,
    ),
    "bb_pctb": ({"n": 20, "k": 2.0}, {"n": 2}, lambda p: [f"bb_pctb_{p['n']}_{_fmt(p['k'])}"], lambda p: [p["n"] - 1]),
    "bb_width": ({"n": 20, "k": 2.0}, {"n": 2}, lambda p: [f"bb_width_{p['n']}_{_fmt(p['k'])}"], lambda p: [p["n"] - 1]),
    "stddev": (
        {"n": 24, "nbdev": 1.0},
        {"n": 1},
        lambda p: [f"stddev_{p['n']}" + ("" if p["nbdev"] == 1.0 else f"_{_fmt(p['nbdev'])}")],
        lambda p: [p["n"] - 1],
    ),
    "volume_z": ({"n": 24}, {"n": 2}, lambda p: [f"volume_z_{p['n']}"], lambda p: [p["n"] - 1]),
    "vwap": ({"n": 24}, {"n": 1}, lambda p: [f"vwap_{p['n']}"], lambda p: [p["n"] - 1]),
    "vwap_dev": ({"n": 24}, {"n": 1}, lambda p: [f"vwap_dev_{p['n']}"], lambda p: [p["n"] - 1]),
    "hl_range": ({}, {}, lambda p: ["hl_range"], lambda p: [0]),
    "intrabar": ({}, {}, lambda p: ["intrabar"], lambda p: [0]),
}
_FLOAT_PARAMS = {"k", "nbdev"}
# kinds whose windows read the engine's rings (the ring must hold n + 1 values)
_RING_KINDS = {"logret", "volatility", "sma", "close_sma", "bbands", "bb_pctb", "bb_width",
               "stddev", "volume_z", "vwap", "vwap_dev"}

KINDS = tuple(_KINDS)


def _feature(item, where: str) -> dict:
    """Normalise one feature given as a dict, a (kind, params) pair or a bare kind name."""
    if isinstance(item, str):
        item = {"kind": item}
    elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
        item = {"kind": item[0], **dict(item[1])}
    if not isinstance(item, dict) or "kind" not in item:
        raise ConfigError(f"{where}: a feature must be a dict with a 'kind' key, got {item!r}")
    kind = item["kind"]
    if kind not in _KINDS:
        raise ConfigError(f"{where}: unknown feature kind {kind!r} (known: {', '.join(_KINDS)})")
    defaults, mins, _, _ = _KINDS[kind]
    extra = set(item) - {"kind"} - set(defaults)
    if extra:
        raise ConfigError(f"{where}: feature {kind!r} has no parameter(s) {sorted(extra)} "
                          f"(it takes {sorted(defaults) or 'none'})")
    out = {"kind": kind}
    for key, default in defaults.items():
        val = item.get(key, default)
        if key in _FLOAT_PARAMS:
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not val > 0 or val != val:
                raise ConfigError(f"{where}: {kind}.{key} must be a positive number, got {val!r}")
            out[key] = float(val)
        else:
            if isinstance(val, bool) or not isinstance(val, int) and not (isinstance(val, float) and val.is_integer()):
                raise ConfigError(f"{where}: {kind}.{key} must be an integer, got {val!r}")
            val = int(val)
            if val < mins[key]:
                raise ConfigError(f"{where}: {kind}.{key} must be >= {mins[key]}, got {val}")
            out[key] = val
    if kind in ("macd", "macd_norm") and out["fast"] >= out["slow"]:
        raise ConfigError(f"{where}: {kind}.fast ({out['fast']}) must be < slow ({out['slow']})")
    return out


def _normalize(norm, where: str):
    if norm is None:
        return None
    if isinstance(norm, dict) and norm.get("kind") == "rolling_z" and set(norm) <= {"kind", "window"}:
        w = norm.get("window", 500)
        if isinstance(w, int) and not isinstance(w, bool) and w >= 2:
            return {"kind": "rolling_z", "window": int(w)}
    raise ConfigError(f"{where}: normalize must be None or {{'kind': 'rolling_z', 'window': int >= 2}}, got {norm!r}")


@dataclass(frozen=True)
class FeatureSpec:
    """An ordered list of features and an optional in-pass normalisation."""

    features: tuple = field(default_factory=tuple)
    normalize: dict | None = None

    def __post_init__(self):
        feats = tuple(_feature(f, f"FeatureSpec.features[{i}]") for i, f in enumerate(self.features))
        if not feats:
            raise ConfigError("FeatureSpec: needs at least one feature")
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "normalize", _normalize(self.normalize, "FeatureSpec.normalize"))
        names = self.names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"FeatureSpec: duplicate columns {dup}")

    def __hash__(self):
        return hash(self.to_json())

    # ---- columns
    @property
    def names(self) -> list[str]:
        """Column names, one per output column, in order."""
        return [name for f in self.features for name in _KINDS[f["kind"]][2](f)]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def column_warmups(self) -> list[int]:
        """Per column: the index of its first finite row on clean data."""
        extra = self.normalize["window"] - 1 if self.normalize else 0
        return [w + extra for f in self.features for w in _KINDS[f["kind"]][3](f)]

    @property
    def warmup(self) -> int:
        """Rows until every column is finite (on clean data): X[warmup:] has no NaN."""
        return max(self.column_warmups)

    # ---- serialisation
    def to_dict(self) -> dict:
        return {"format": FORMAT, "features": [dict(f) for f in self.features],
                "normalize": dict(self.normalize) if self.normalize else None}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        if not isinstance(d, dict) or "features" not in d:
            raise ConfigError(f"FeatureSpec.from_dict: expected a dict with 'features', got {type(d).__name__}")
        fmt = d.get("format", FORMAT)
        if fmt != FORMAT:
            raise ConfigError(f"FeatureSpec.from_dict: unsupported format {fmt!r} (expected {FORMAT!r})")
        return cls(tuple(d["features"]), d.get("normalize"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "FeatureSpec":
        try:
            d = json.loads(s)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"FeatureSpec.from_json: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def with_normalize(self, window: int | None) -> "FeatureSpec":
        """The same features with in-pass rolling z-scores over `window` rows (None: raw)."""
        return FeatureSpec(self.features, {"kind": "rolling_z", "window": window} if window else None)

    # ---- for the engine
    def _program(self):
        from fastrader.features._engine import KINDS as CODES

        prog, col = [], 0
        for f in self.features:
            kind = f["kind"]
            if kind in ("macd", "macd_norm"):
                n1, n2, n3, p1 = f["fast"], f["slow"], f["signal"], 0.0
            else:
                n1, n2, n3 = f.get("n", 1), 0, 0
                p1 = f.get("k", f.get("nbdev", 0.0))
            prog.append((CODES[kind], col, n1, n2, n3, p1))
            col += len(_KINDS[kind][2](f))
        return prog

    def _capacity(self) -> int:
        need = [2] + [f["n"] + 1 for f in self.features if f["kind"] in _RING_KINDS]
        if self.normalize:
            need.append(self.normalize["window"] + 1)
        return max(need)


def default_spec() -> FeatureSpec:
    """The default model feature set for hourly bars: 16 scale-free columns.

    Returns over 1 h and 1 day, volatility over 1 day and 1 week, trend
    (close vs EMA 20, MACD over close), momentum (RSI 14), range (ATR / close,
    Bollinger %b and width), volume (z-score, close vs 24 h VWAP) and the shape
    of the bar. Warm-up 168 rows (the weekly volatility).
    """
    return FeatureSpec((
        {"kind": "logret", "n": 1},
        {"kind": "logret", "n": 24},
        {"kind": "volatility", "n": 24},
        {"kind": "volatility", "n": 168},
        {"kind": "close_ema", "n": 20},
        {"kind": "rsi", "n": 14},
        {"kind": "atr_pct", "n": 14},
        {"kind": "macd_norm", "fast": 12, "slow": 26, "signal": 9},
        {"kind": "bb_pctb", "n": 20, "k": 2.0},
        {"kind": "bb_width", "n": 20, "k": 2.0},
        {"kind": "volume_z", "n": 24},
        {"kind": "vwap_dev", "n": 24},
        {"kind": "hl_range"},
        {"kind": "intrabar"},
    ))
