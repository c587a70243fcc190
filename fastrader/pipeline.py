"""One backtest run, start to finish: data -> features -> signals -> Backtrader -> reports.

The CLI (``fastrader.run``) only parses options into a :class:`RunConfig` and
calls :func:`run`. Result files are written as soon as the backtest ends, and
the tearsheet last, so a failure in reporting never loses the backtest.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError, FastraderError



def _sample_data() -> Path:
    # A wheel carries the sample inside the package (setup.py copies it to
    # assets/sample/); a checkout has it in the top-level data/ folder.
    here = Path(__file__).resolve().parent
    packaged = here / "assets" / "sample" / "sample_btcusdt_1h.csv"
    checkout = here.parent / "data" / "sample_btcusdt_1h.csv"
    return packaged if packaged.is_file() or not checkout.is_file() else checkout


SAMPLE_DATA = _sample_data()


@dataclass
class RunConfig:
    data: str | None = None
    exchange: str | None = None
    symbol: str = "BTC/USDT"
    timeframe: str = "1h"
    since: str | None = None
    until: str | None = None
    api_url: str | None = None
    cache_dir: str | None = None
    strategy: str = "model"
    threshold: float | None = None
    stream: bool = False
    model: str | None = None
    cash: float = 10_000.0
    commission: float = 0.001
    slippage_bps: float = 5.0
    device: str = "auto"
    attention: str = "auto"
    start: str = "auto"
    periods_per_year: int = 365
    out: str | None = None
    reports_dir: str = "reports"
    tearsheet: bool = True
    progress: bool = True


@dataclass
class RunOutcome:
    out_dir: Path
    metrics: dict
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_data(cfg: RunConfig) -> tuple[pd.DataFrame, str]:
    """Candles from a file, from an exchange (through the cache), or the sample."""
    from .data import load_candles

    if cfg.data and cfg.exchange:
        raise ConfigError("give either --data or --exchange, not both")
    if cfg.exchange:
        from .data import load_history

        if cfg.since is None:
            raise ConfigError("--exchange needs --since (first candle, e.g. 2024-01-01); --until defaults to now")

        df = load_history(
            cfg.exchange,
            cfg.symbol,
            cfg.timeframe,
            cfg.since,
            cfg.until,
            cache_dir=cfg.cache_dir,
            api_url=cfg.api_url,
            progress=cfg.progress,
        )
        return df, f"{cfg.exchange}:{cfg.symbol}:{cfg.timeframe}"
    path = Path(cfg.data) if cfg.data else SAMPLE_DATA
    return load_candles(path), str(path)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {name!r}")
    return name


def backtest_start(cfg: RunConfig, df: pd.DataFrame, train: dict) -> tuple[int, str | None]:
    """Index of the first traded bar.

    ``auto``: if the data contains the model's own training range (same
    candles, checked by hash), trading starts after it, so the default run is
    out of sample. Otherwise trading starts at the first bar; the model's
    warm-up bars are simply flat. An ISO date or UTC ms starts there.
    """
    from .data import candles_digest

    ts = df["timestamp"].to_numpy()
    if cfg.start == "auto":
        lo, hi, digest = train.get("start_ms"), train.get("end_ms"), train.get("data_digest")
        if lo is None or hi is None or digest is None:
            return 0, None
        in_range = (ts >= lo) & (ts <= hi)
        if not in_range.any() or candles_digest(df[in_range]) != digest:
            return 0, None
        i = int(np.searchsorted(ts, hi, side="right"))
        if i >= len(ts):
            raise DataError("the data ends inside the model's training range; nothing is left to backtest out of sample")
        when = datetime.fromtimestamp(ts[i] / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        return i, f"backtest starts {when} UTC, after the model's training range (out of sample)"
    from .data import parse_time

    start_ms = parse_time(cfg.start, name="--start")
    i = int(np.searchsorted(ts, start_ms, side="left"))
    if i >= len(ts):
        raise ConfigError(f"--start {cfg.start} is after the last bar of the data")
    return i, None


def new_run_dir(cfg: RunConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.reports_dir) / f"{stamp}-{cfg.strategy.replace(':', '_').replace('/', '_')}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def run(cfg: RunConfig) -> RunOutcome:
    from tqdm.auto import tqdm

    from .backtest import run_backtest
    from .model.checkpoint import load as load_checkpoint
    from .registry import resolve_strategy
    from .report import compute_metrics, daily_returns, write_results, write_tearsheet
    from .report.metrics import benchmark_returns
    from .signals import SignalModel

    t_start = time.perf_counter()
    strategy_cls = resolve_strategy(cfg.strategy)  # fail fast on a bad name
    if cfg.periods_per_year not in (252, 365):
        raise ConfigError("--periods-per-year must be 365 (crypto) or 252 (exchange trading days)")
    steps = ["load data", "load model", "signals", "backtest", "results", "tearsheet"]
    bar = tqdm(total=len(steps), desc="fastrader", unit="step", disable=not cfg.progress, leave=False)
    notes: list[str] = []

    def step(i):
        bar.set_description(f"fastrader: {steps[i]}")

    step(0)
    df, source = load_data(cfg)
    bar.update()

    step(1)
    ckpt = load_checkpoint(cfg.model)
    sm = SignalModel(ckpt, device=resolve_device(cfg.device), attention=cfg.attention)
    bar.update()

    step(2)
    start, note = backtest_start(cfg, df, ckpt.train)
    if note:
        notes.append(note)
    from .strategy import ModelStrategy

    is_model = issubclass(strategy_cls, ModelStrategy)
    streaming = is_model and (cfg.stream or bool(strategy_cls.params.stream))
    traded = df.iloc[start:].reset_index(drop=True).copy()
    sig_seconds = float("nan")
    if not streaming:  # a streaming strategy computes its own signals inside Backtrader
        t_sig = time.perf_counter()
        signal = sm.precompute(df)  # one causal pass over all bars, history before `start` included
        sig_seconds = time.perf_counter() - t_sig
        traded["signal"] = signal[start:]
    bar.update()

    step(3)
    params = {}
    if cfg.threshold is not None:
        params["threshold"] = cfg.threshold
    if is_model:
        params["model"] = sm  # used when the strategy streams (``--stream`` or params.stream)
    if cfg.stream:
        params["stream"] = True
    try:
        result = run_backtest(
            traded,
            strategy_cls,
            params,
            cash=cfg.cash,
            commission=cfg.commission,
            slippage_bps=cfg.slippage_bps,
            name=cfg.symbol if cfg.exchange else Path(source).stem,
        )
    except TypeError as exc:
        raise ConfigError(f"strategy {cfg.strategy!r} rejected its parameters: {exc}") from exc
    bar.update()

    step(4)
    returns = daily_returns(result.equity["timestamp"], result.equity["equity"], result.start_cash)
    metrics = compute_metrics(
        returns,
        n_trades=len(result.trades),
        bars=result.bars,
        seconds=result.seconds,
        periods=cfg.periods_per_year,
    )
    metrics["signal_bars_per_s"] = float(len(df) / sig_seconds) if sig_seconds > 0 else float("nan")  # NaN when streamed
    out = new_run_dir(cfg)
    # signals.csv holds what the strategy itself saw and decided at each bar.
    signals = result.signals.rename(columns={"target": "target_position"})
    run_info = {
        "source": source,
        "strategy": cfg.strategy,
        "model": str(cfg.model or "default"),
        "attention": sm.backend,
        "device": str(sm.device),
        "first_bar_ms": int(traded["timestamp"].iloc[0]),
        "last_bar_ms": int(traded["timestamp"].iloc[-1]),
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
    }
    files = write_results(
        out, metrics=metrics, equity=result.equity, trades=result.trades, signals=signals, extra=run_info
    )
    bar.update()

    step(5)
    if cfg.tearsheet:
        bench = benchmark_returns(traded)
        try:
            files["tearsheet"] = write_tearsheet(
                returns,
                bench,
                out / "tearsheet.html",
                title=f"fastrader: {cfg.strategy} on {run_info['source']}",
                benchmark_title="Buy & hold",
                periods=cfg.periods_per_year,
            )
        except Exception as exc:  # the backtest's files are already on disk
            raise FastraderError(
                f"tearsheet failed ({type(exc).__name__}: {exc}); the other results are in {out}"
            ) from exc
    bar.update()
    bar.close()
    metrics["wall_s"] = time.perf_counter() - t_start
    return RunOutcome(out, metrics, files, notes)
