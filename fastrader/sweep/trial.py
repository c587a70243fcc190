"""One trial: resolved run options -> metrics, and the shared inputs trials reuse.

A trial's options are a full :class:`fastrader.pipeline.RunConfig` (every
option resolved: defaults filled in, paths absolute, strategy params typed by
the strategy's defaults). Its identity is a hash of those options, so a
rerun recognises the trials it already has.

Trials that differ only in what Backtrader sees (strategy params, threshold,
broker costs) share one :class:`Shared`: the candles, the precomputed causal
signals and the first traded bar, prepared once per group and handed to the
trials (through Ray's object store, or a Parquet file for the process pool),
never loaded or computed again per trial.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, FastraderError
from ..pipeline import RunConfig

RUN_FIELDS = tuple(f.name for f in fields(RunConfig))
# Options that change neither the result nor the identity of a trial.
NOT_IDENTITY = ("out", "reports_dir", "tearsheet", "progress")
# Options only Backtrader sees: trials differing only in these share one prepare().
BACKTEST_ONLY = ("params", "threshold", "cash", "commission", "slippage_bps", "borrow_rate", "periods_per_year")
PATH_OPTIONS = ("data", "model", "signals", "cache_dir")
# Metrics that measure speed, not the result: they differ between runs and backends.
TIMING_METRICS = ("bars_per_s", "signal_bars_per_s", "seconds", "node", "pid")


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]


def resolve_strategy_name(name: str) -> str:
    """A ``strategies/`` file name becomes ``/abs/path.py:Class``, so workers in any directory find it."""
    from ..registry import resolve_strategy
    from ..strategy import BUILTIN

    if name in BUILTIN:
        return name
    if ":" in name:
        target, cls = name.rsplit(":", 1)
        if target.endswith(".py"):
            return f"{Path(target).resolve()}:{cls}"
        return name
    cls = resolve_strategy(name)
    from ..registry import strategy_dirs

    for d in strategy_dirs():
        p = d / f"{name}.py"
        if p.is_file():
            return f"{p.resolve()}:{cls.__name__}"
    return name


def resolve_options(base: dict, point: dict, walkforward: dict | None = None) -> dict:
    """Base options plus one point of the space -> a full, typed RunConfig dict."""
    from ..params import convert_params
    from ..registry import resolve_strategy

    opts = dict(base)
    params = dict(base.get("params") or {})
    wf = None if walkforward is None else {**walkforward, "model": dict(walkforward.get("model") or {})}
    for k, v in point.items():
        if k.startswith("params."):
            params[k[len("params."):]] = v
        elif k.startswith("walkforward."):
            if wf is None:
                raise ConfigError(f"space key {k!r} needs kind = 'walkforward' in [sweep]")
            name = k[len("walkforward."):]
            if name.startswith("model."):
                wf["model"][name[len("model."):]] = v
            else:
                wf[name] = v
        else:
            opts[k] = v
    opts["params"] = params
    try:
        cfg = RunConfig(**opts)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    d = asdict(cfg)
    for k in PATH_OPTIONS:
        if isinstance(d.get(k), list):
            d[k] = [str(Path(x).expanduser().resolve()) for x in d[k]]
        elif d.get(k):
            d[k] = str(Path(d[k]).expanduser().resolve())
    d["strategy"] = resolve_strategy_name(d["strategy"])
    cls = resolve_strategy(d["strategy"])
    d["params"] = convert_params(cls, d["params"])  # unknown names / bad types fail before the sweep starts
    if d["threshold"] is not None:
        convert_params(cls, {"threshold": d["threshold"]})
    for k in NOT_IDENTITY:
        d.pop(k)
    if wf is not None:
        if d["model"] or d["signals"]:
            raise ConfigError("a walk-forward trial trains its own models: drop model / signals from [run]")
        walkforward_configs(wf)  # bad names or values fail before the sweep starts
        d["walkforward"] = wf
    return d


WF_ONLY = ("workers", "train")  # set by the trial itself


def walkforward_configs(wf: dict):
    """[walkforward] options -> fastrader.model.walkforward.WalkForwardConfig (its TrainConfig inside)."""
    try:
        from ..model.walkforward import WalkForwardConfig
        from ..model.train import TrainConfig
    except ImportError as exc:
        raise ConfigError(f"walk-forward trials need fastrader.model.walkforward ({exc})") from None
    wf_keys = {f.name for f in fields(WalkForwardConfig)} - set(WF_ONLY)
    tr_keys = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(wf) - wf_keys - tr_keys)
    if bad:
        raise ConfigError(f"unknown walk-forward option(s) {', '.join(bad)}; known: {', '.join(sorted(wf_keys | tr_keys))}")
    tr = {"train_frac": 0.8, "val_frac": 0.2, **{k: v for k, v in wf.items() if k in tr_keys}}
    try:
        cfg = WalkForwardConfig(train=TrainConfig(**tr), workers=1, **{k: v for k, v in wf.items() if k in wf_keys})
        cfg.check()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"walk-forward options: {exc}") from None
    return cfg


def walkforward_signals(opts: dict, wf: dict) -> tuple[str, dict]:
    """Train every fold, write the stitched out-of-sample signals to a temporary file; (path, OOS metrics)."""
    import tempfile

    from ..model.walkforward import walk_forward
    from ..pipeline import load_data

    cfg = walkforward_configs(wf)
    df, _ = load_data(RunConfig(**opts, progress=False))
    res = walk_forward(df, cfg, progress=False)
    fd, path = tempfile.mkstemp(prefix="fastrader-wf-", suffix=".csv")
    os.close(fd)
    res.signals.to_csv(path, index=False)
    extra = {"wf_oos_ic": res.overall.get("ic"), "wf_oos_rank_ic": res.overall.get("rank_ic"),
             "wf_oos_dir_acc": res.overall.get("dir_acc"), "wf_folds": int(len(res.folds))}
    return path, extra


def trial_id(options: dict, phase: str = "in_sample", holdout: str | None = None, kind: str = "backtest") -> str:
    return short_hash({"options": options, "phase": phase, "holdout": holdout, "kind": kind})


def shared_options(options: dict) -> dict:
    """The options prepare() depends on (a group key): everything but what only Backtrader sees."""
    d = {k: v for k, v in options.items() if k not in BACKTEST_ONLY}
    if "stream" in (options.get("params") or {}):  # a param that changes how signals are made
        d["params"] = {"stream": options["params"]["stream"]}
    return d


@dataclass
class Shared:
    """What every trial of a group reuses. Plain data: it travels through Ray's object store or Parquet."""

    key: str
    candles: pd.DataFrame | None = None  # every bar up to the end of the traded range
    signal: np.ndarray | None = None
    start: int = 0
    train_range: tuple | None = None  # (first ms, last ms with embargo) of the model's training data
    source: str = ""
    name: str = ""
    is_model: bool = False
    streaming: bool = False
    signal_seconds: float = float("nan")
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    error: str | None = None
    timeframe: str | None = None
    extra: dict = field(default_factory=dict)  # metrics of the group's own making (walk-forward OOS IC)


def _holdout_index(candles: pd.DataFrame, holdout: str) -> int:
    from ..data import parse_time

    return int(np.searchsorted(candles["timestamp"].to_numpy(), parse_time(holdout, name="holdout"), side="left"))


def _last(candles) -> str:
    from ..data.timeframes import format_ms

    return format_ms(int(candles["timestamp"].iloc[-1]))


def prepare_shared(sopts: dict, phase: str = "in_sample", holdout: str | None = None) -> Shared:
    """prepare() once for a group. With a holdout, ``in_sample`` ends before it and ``holdout`` starts at it."""
    from ..pipeline import prepare, training_range

    key = short_hash({"shared": sopts, "phase": phase, "holdout": holdout})
    try:
        opts = {k: v for k, v in sopts.items() if k in RUN_FIELDS}
        extra, tmp = {}, None
        if sopts.get("walkforward") is not None:  # the group's signals come from its own walk-forward
            tmp, extra = walkforward_signals(opts, sopts["walkforward"])
            opts["signals"] = tmp
        cfg = RunConfig(**opts, progress=False, tearsheet=False)
        try:
            prep = prepare(cfg)
        finally:
            if tmp:
                os.unlink(tmp)
        if len(getattr(prep, "markets", ())) > 1:
            raise ConfigError("a sweep trial backtests one market; portfolios (several --data/--symbol) are not swept yet")
        candles, signal, start = prep.candles, prep.signal, prep.start
        if holdout is not None:
            cut = _holdout_index(candles, holdout)
            if cut >= len(candles):
                raise ConfigError(f"holdout {holdout} is after the last bar of the data ({_last(candles)} UTC)")
            if phase == "in_sample":
                if cut <= start:
                    raise ConfigError(f"holdout {holdout} is at or before the first traded bar; nothing is left in sample")
                candles = candles.iloc[:cut].reset_index(drop=True)
                signal = None if signal is None else signal[:cut]
            else:
                start = max(start, cut)
        rng = None
        if prep.model is not None:
            r = training_range(prep.model.ckpt.train, prep.candles["timestamp"].to_numpy())
            rng = None if r is None else (r[0], r[2])
        return Shared(key, candles, signal, start, rng, prep.source, prep.name, prep.is_model, prep.streaming,
                      prep.signal_seconds, list(prep.notes), list(prep.warnings), timeframe=getattr(prep, "timeframe", None),
                      extra=extra)
    except Exception as exc:  # recorded on every trial of the group
        return Shared(key, error=_describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FastraderError):
        return f"{type(exc).__name__}: {exc}"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


_MODELS: dict = {}


def _model_for(cfg: RunConfig):
    # Streaming trials run the model inside Backtrader: one model per worker process, loaded from the
    # checkpoint file (safetensors + JSON) the group shares.
    from ..model.checkpoint import load as load_checkpoint
    from ..pipeline import resolve_device
    from ..signals import SignalModel

    k = (cfg.model, cfg.device, cfg.attention)
    if k not in _MODELS:
        _MODELS[k] = SignalModel(load_checkpoint(cfg.model), device=resolve_device(cfg.device), attention=cfg.attention)
    return _MODELS[k]


def build_prepared(options: dict, shared: Shared):
    """A pipeline.Prepared for this trial's options on the group's shared inputs."""
    from ..pipeline import Prepared, check_broker_options, strategy_params
    from ..registry import resolve_strategy

    cfg = RunConfig(**{k: v for k, v in options.items() if k in RUN_FIELDS}, progress=False, tearsheet=False)
    if options.get("walkforward") is not None:
        cfg.signals = "walk-forward"  # what the report records: the signals were not the shipped model's
    cls = resolve_strategy(cfg.strategy)
    warns = list(shared.warnings) + check_broker_options(cfg)
    params = strategy_params(cls, cfg)
    inside = 0
    if shared.train_range is not None:
        ts = shared.candles["timestamp"].to_numpy()[shared.start:]
        inside = int(((ts >= shared.train_range[0]) & (ts <= shared.train_range[1])).sum())
    model = _model_for(cfg) if shared.streaming else None
    prep = Prepared(cfg, shared.candles, shared.source, shared.name, cls, params, shared.is_model, shared.streaming,
                    shared.start, inside, model=model, signal=shared.signal, signal_seconds=shared.signal_seconds,
                    notes=list(shared.notes), warnings=warns)
    if hasattr(prep, "timeframe"):
        prep.timeframe = shared.timeframe
    return prep


def _plain_metrics(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                out[f"{k}_{kk}"] = vv
        elif isinstance(v, (np.floating, np.integer)):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def where_am_i() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return socket.gethostname()


def run_trial(options: dict, shared: Shared) -> dict:
    """Backtest one trial and return its record (never raises: a failure is a record with its error)."""
    from ..pipeline import backtest, order_warning, run_metrics

    t0 = time.perf_counter()
    rec = {"status": "ok", "error": None, "metrics": {}, "returns": None, "warnings": []}
    try:
        if shared.error:
            raise _GroupFailed(shared.error)
        prep = build_prepared(options, shared)
        result = backtest(prep)
        returns, metrics = run_metrics(prep, result)
        rec["metrics"] = _plain_metrics({**metrics, **shared.extra})
        rec["returns"] = {"day_ms": [int(x) for x in returns.index.asi8 // 1_000_000],
                          "r": [float(x) for x in returns.to_numpy()]}
        w = order_warning(result.order_counts)
        rec["warnings"] = prep.warnings + ([w] if w else [])
    except _GroupFailed as exc:
        rec.update(status="failed", error=str(exc))
    except Exception as exc:
        rec.update(status="failed", error=_describe(exc))
    rec["group"] = shared.key  # which shared prepare() the trial ran on
    rec["seconds"] = time.perf_counter() - t0
    rec["node"] = where_am_i()
    rec["pid"] = os.getpid()
    return rec


class _GroupFailed(Exception):
    pass


# --- the process pool's way of sharing: one Parquet + JSON pair per group, loaded once per worker

def save_shared(shared: Shared, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in asdict(shared).items() if k not in ("candles", "signal")}
    meta["has_signal"] = shared.signal is not None
    base = directory / shared.key
    if shared.candles is not None:
        table = shared.candles.copy()
        if shared.signal is not None:
            table["__signal__"] = shared.signal
        tmp = base.with_suffix(".parquet.tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, base.with_suffix(".parquet"))
    tmp = base.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, base.with_suffix(".json"))
    return base.with_suffix(".json")


_LOADED: dict = {}


def load_shared(meta_path: str) -> Shared:
    if meta_path in _LOADED:
        return _LOADED[meta_path]
    p = Path(meta_path)
    meta = json.loads(p.read_text())
    has_signal = meta.pop("has_signal")
    candles = signal = None
    if meta.get("error") is None:
        table = pd.read_parquet(p.with_suffix(".parquet"))
        if has_signal:
            signal = table.pop("__signal__").to_numpy(np.float64)
        candles = table
    if meta.get("train_range") is not None:
        meta["train_range"] = tuple(meta["train_range"])
    shared = Shared(candles=candles, signal=signal, **meta)
    while len(_LOADED) >= 4:  # a few groups per worker keeps memory flat on big sweeps
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[meta_path] = shared
    return shared


def run_trial_from_file(options: dict, meta_path: str) -> dict:
    return run_trial(options, load_shared(meta_path))


def prepare_to_file(sopts: dict, phase: str, holdout: str | None, directory: str) -> str:
    return str(save_shared(prepare_shared(sopts, phase, holdout), Path(directory)))


def finite_or_none(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None
