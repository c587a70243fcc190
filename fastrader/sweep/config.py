"""A sweep's settings: the ``[sweep]``, ``[run]`` and ``[space]`` tables of ``sweep.toml``.

``[run]`` holds the options every trial shares (any ``python -m fastrader.run``
option, the same keys as a ``--config`` file, with a ``[run.params]`` table
for strategy params). ``[space]`` holds what varies (see :mod:`.space`).
``[sweep]`` says how to search and where to run.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError
from .space import Dimension, parse_dimension

SEARCHES = ("grid", "random", "optuna")
BACKENDS = ("ray", "local")
KINDS = ("backtest", "walkforward")


@dataclass
class SweepSpec:
    run: dict = field(default_factory=dict)  # RunConfig options shared by every trial (snake_case keys)
    walkforward: dict = field(default_factory=dict)  # kind = "walkforward": WalkForwardConfig + TrainConfig options
    space: list[Dimension] = field(default_factory=list)
    name: str = "sweep"
    kind: str = "backtest"  # or "walkforward": each group trains its models walk-forward, then backtests
    search: str = "grid"
    trials: int | None = None  # random / optuna: how many points
    seed: int = 0
    metric: str = "sharpe"
    mode: str = "max"
    out: str | None = None  # default: sweeps/<name>
    backend: str = "ray"
    workers: int | None = None  # local runtime / pool size; default: the machine's cores
    address: str | None = None  # join a Ray cluster: "auto" or "ray://host:port"
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    holdout: str | None = None  # first held-out bar (ISO date or UTC ms); trials see only bars before it
    holdout_top: int = 5
    heatmap: list[str] | None = None  # two swept keys; default: the first two with several values
    tearsheet: bool = True  # the best trial's tearsheet
    retry_failed: bool = False
    progress: bool = True

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("sweeps") / self.name

    def check(self) -> "SweepSpec":
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind != "walkforward" and (self.walkforward or any(k.startswith("walkforward.") for k in self.keys)):
            raise ConfigError("[walkforward] options and walkforward.* keys need kind = 'walkforward' in [sweep]")
        if self.search not in SEARCHES:
            raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode must be max or min, got {self.mode!r}")
        if self.search in ("random", "optuna") and not self.trials:
            raise ConfigError(f"search = {self.search!r} needs trials = N")
        if self.trials is not None and (isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1):
            raise ConfigError(f"trials must be a positive integer, got {self.trials!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"workers must be a positive integer, got {self.workers!r}")
        for name in ("gpus_per_trial", "cpus_per_trial"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be a number >= 0, got {x!r}")
        if self.address is not None and self.backend != "ray":
            raise ConfigError("--address joins a Ray cluster; it needs --backend ray")
        if self.holdout_top < 1:
            raise ConfigError(f"holdout-top must be >= 1, got {self.holdout_top!r}")
        if self.heatmap is not None and (len(self.heatmap) != 2 or any(k not in self.keys for k in self.heatmap)):
            raise ConfigError(f"heatmap takes two swept keys (swept: {', '.join(self.keys) or 'none'}), got {self.heatmap!r}")
        return self

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.space]


def normalize_key(key: str) -> str:
    """``slippage-bps`` -> ``slippage_bps``; ``params.x`` keeps its param name as written."""
    if key.startswith("walkforward."):
        return key.replace("-", "_")
    if key.startswith("params."):
        name = key[len("params."):]
        if not name:
            raise ConfigError(f"space key {key!r} names no param")
        return "params." + name
    return key.replace("-", "_")


def check_run_options(where: str, raw: dict) -> dict:
    """Validate ``[run]`` like a ``fastrader.run --config`` file (same keys, same types)."""
    from ..run import _KEYS, _check_type

    out = {}
    for k, v in raw.items():
        key = k.replace("-", "_")
        if key not in _KEYS:
            raise ConfigError(f"{where}: unknown run option {k!r}")
        out[key] = _check_type(where, key, v)
    return out


def check_space_values(dim: Dimension) -> None:
    """A swept run option's values must have that option's type (params are checked per strategy later)."""
    from ..run import _KEYS, _check_type

    if dim.key.startswith(("params.", "walkforward.")):
        return
    if dim.key not in _KEYS:
        raise ConfigError(f"space: unknown option {dim.key!r} (any `python -m fastrader.run` option, or params.NAME)")
    if dim.key in ("params", "out", "reports_dir", "tearsheet", "progress"):
        raise ConfigError(f"space: {dim.key!r} cannot be swept")
    for v in dim.grid() if (not dim.is_range or dim.num) else (dim.low, dim.high):
        _check_type("space", dim.key, v)


_SWEEP_KEYS = {f.name for f in fields(SweepSpec)} - {"run", "space"}


def spec_from_dict(raw: dict, where: str = "sweep config") -> SweepSpec:
    unknown = set(raw) - {"sweep", "run", "space", "walkforward"}
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(sorted(unknown))} "
                          "(expected [sweep], [run], [space], [walkforward])")
    kw = {}
    for k, v in (raw.get("sweep") or {}).items():
        key = k.replace("-", "_")
        if key not in _SWEEP_KEYS:
            raise ConfigError(f"{where}: unknown [sweep] key {k!r} (known: {', '.join(sorted(_SWEEP_KEYS))})")
        kw[key] = v
    run = check_run_options(where, raw.get("run") or {})
    dims = []
    for k, v in (raw.get("space") or {}).items():
        if k == "params" and isinstance(v, dict):  # [space.params] table
            for pk, pv in v.items():
                dims.append(parse_dimension(f"params.{pk}", pv))
            continue
        dims.append(parse_dimension(normalize_key(k), v))
    seen = set()
    for d in dims:
        if d.key in seen:
            raise ConfigError(f"{where}: space key {d.key!r} given twice")
        seen.add(d.key)
        check_space_values(d)
    wf = {k.replace("-", "_"): v for k, v in (raw.get("walkforward") or {}).items()}
    return SweepSpec(run=run, space=dims, walkforward=wf, **kw)


def load_spec(path: str | Path) -> SweepSpec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep config not found: {p}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc})") from None
    spec = spec_from_dict(raw, str(p))
    # Relative paths in the file are relative to the file, so a sweep runs from any directory.
    for key in ("data", "model", "signals", "cache_dir"):
        v = spec.run.get(key)
        if isinstance(v, str) and v and not Path(v).is_absolute() and (p.parent / v).exists():
            spec.run[key] = str((p.parent / v).resolve())
    return spec
