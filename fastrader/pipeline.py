"""One backtest run, start to finish: data -> features -> signals -> Backtrader -> reports.

The CLI (``fastrader.run``) only parses options into a :class:`RunConfig` and
calls :func:`run`. The run is three stages that other commands reuse
(``fastrader.check`` re-runs :func:`backtest` on truncated data, sweeps run
whole trials):

* :func:`prepare`: check the options, load the candles and the model, pick
  the first traded bar (out of sample by time), precompute the signals;
* :func:`backtest`: run Backtrader over the traded bars;
* :func:`report`: metrics, result files, and the tearsheet last, so a failure
  in reporting never loses the backtest.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .broker import DEFAULT_BORROW_RATE
from .errors import ConfigError, DataError, FastraderError


def _sample_data() -> Path:
    # A wheel carries the sample inside the package (setup.py copies it to
    # assets/sample/); a checkout has it in the top-level data/ folder.
    here = Path(__file__).resolve().parent
    packaged = here / "assets" / "sample" / "sample_btcusdt_1h.csv"
    checkout = here.parent / "data" / "sample_btcusdt_1h.csv"
    return packaged if packaged.is_file() or not checkout.is_file() else checkout


SAMPLE_DATA = _sample_data()
ON_BAD_BARS = ("error", "drop", "nan")


@dataclass
class RunConfig:
    data: str | list | None = None  # one path, or several (a portfolio); globs are expanded
    exchange: str | None = None
    symbol: str | None = None  # BTC/USDT for --exchange; with --data it names the file(s)' instrument(s)
    timeframe: str | None = None  # --exchange: what to download (1h); finer candles are resampled to it
    source_timeframe: str | None = None  # --exchange: download/cache this finer timeframe, resample to --timeframe
    since: str | None = None
    until: str | None = None
    api_url: str | None = None
    cache_dir: str | None = None
    on_bad_bars: str = "error"
    strategy: str = "model"
    threshold: float | None = None
    params: dict = field(default_factory=dict)
    stream: bool = False
    model: str | None = None
    signals: str | None = None
    cash: float = 10_000.0
    commission: float = 0.001
    slippage_bps: float = 5.0
    borrow_rate: float = DEFAULT_BORROW_RATE
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
    warnings: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    """Everything a backtest needs, computed once: candles, model, signals, first traded bar."""

    cfg: RunConfig
    candles: pd.DataFrame  # every bar, the history before ``start`` included
    source: str
    name: str
    strategy_cls: type
    params: dict  # strategy params, typed (model and history are added by backtest())
    is_model: bool
    streaming: bool
    start: int  # index of the first traded bar
    in_sample_bars: int
    model: object | None = None  # SignalModel
    signal: np.ndarray | None = None  # per bar of ``candles``; None when streamed or not a model strategy
    signal_seconds: float = float("nan")
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    markets: list = field(default_factory=list)  # fastrader.markets.Market per symbol; several for a portfolio
    timeframe: str | None = None  # of the traded bars, from the options or the candles

    @property
    def traded(self) -> pd.DataFrame:
        return self.candles.iloc[self.start:].reset_index(drop=True)


def _plain(x) -> str:
    # Messages show numbers as a user typed them: 25969.88, not np.float64(25969.88).
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def check_broker_options(cfg: RunConfig) -> list[str]:
    """Range checks of the broker options; returns warning lines, raises ConfigError."""
    def finite(name, x):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ConfigError(f"{name} must be a finite number, got {x!r}")
        return float(x)

    warns = []
    if finite("--cash", cfg.cash) <= 0:
        raise ConfigError(f"--cash must be > 0, got {_plain(cfg.cash)}")
    c = finite("--commission", cfg.commission)
    if c < 0:
        raise ConfigError(f"--commission must be >= 0 (a fraction: 0.001 = 0.1%), got {_plain(c)}")
    if c >= 0.10:
        raise ConfigError(f"--commission {_plain(c)} is {_plain(c * 100)}% of traded value; it is a fraction "
                          "(0.001 = 0.1%), and 10% or more is refused")
    if c > 0.01:
        warns.append(f"warning: --commission {_plain(c)} is {_plain(round(c * 100, 6))}% per trade, far above "
                     "exchange fees (0.001 = 0.1%)")
    if finite("--slippage-bps", cfg.slippage_bps) < 0:
        raise ConfigError(f"--slippage-bps must be >= 0 (slippage is against the trader), got {_plain(cfg.slippage_bps)}")
    if finite("--borrow-rate", cfg.borrow_rate) < 0:
        raise ConfigError(f"--borrow-rate must be >= 0 (annual, 0.1 = 10%), got {_plain(cfg.borrow_rate)}")
    if cfg.on_bad_bars not in ON_BAD_BARS:
        raise ConfigError(f"--on-bad-bars must be one of {', '.join(ON_BAD_BARS)}, got {cfg.on_bad_bars!r}")
    if cfg.periods_per_year not in (252, 365):
        raise ConfigError("--periods-per-year must be 365 (crypto) or 252 (exchange trading days)")
    return warns


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
            cfg.symbol or "BTC/USDT",
            cfg.source_timeframe or cfg.timeframe or "1h",
            cfg.since,
            cfg.until,
            cache_dir=cfg.cache_dir,
            api_url=cfg.api_url,
            progress=cfg.progress,
        )
        return df, f"{cfg.exchange}:{cfg.symbol or 'BTC/USDT'}:{cfg.source_timeframe or cfg.timeframe or '1h'}"
    path = Path(cfg.data) if cfg.data else SAMPLE_DATA
    return load_candles(path, on_bad=cfg.on_bad_bars), str(path)


def gap_note(df: pd.DataFrame) -> str | None:
    """One line on missing candles: how many gaps, the first and the largest."""
    from .data.gaps import find_gaps, typical_step_ms
    from .data.timeframes import format_ms

    if len(df) < 3:
        return None
    rep = find_gaps(df["timestamp"].to_numpy(), typical_step_ms(df["timestamp"].to_numpy()))
    if not rep.count:
        return None
    first, big = rep.gaps[0], rep.largest
    return (f"data has {rep.count} gaps ({rep.missing} candles missing); first at {format_ms(first.start)} "
            f"({first.missing} missing), largest at {format_ms(big.start)} ({big.missing} missing); "
            "gaps are not filled")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {name!r}")
    return name


def training_range(train: dict, timestamps: np.ndarray) -> tuple[int, int, int] | None:
    """(first bar, last bar, embargo end) of the model's training range in UTC ms, or None.

    The embargo covers the target horizon after the last training bar: the
    labels of the last training bars are returns over those bars, so they are
    in sample too.
    """
    lo, hi = train.get("start_ms"), train.get("end_ms")
    if lo is None or hi is None:
        return None
    horizon = train.get("horizon", (train.get("config") or {}).get("horizon", 0)) or 0
    tf = train.get("timeframe_ms")
    if not tf:
        from .data.gaps import typical_step_ms

        tf = typical_step_ms(timestamps)
    return int(lo), int(hi), int(hi) + int(horizon) * int(tf)


def _utc(ms) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def backtest_start(cfg: RunConfig, df: pd.DataFrame, train: dict | None) -> tuple[int, int, list[str], list[str]]:
    """First traded bar, bars traded inside the training range, notes and warnings.

    ``auto``: when the data's time span overlaps the model's training range
    (plus its embargo), whatever the file or symbol, trading starts after it.
    Otherwise at the first bar (the warm-up bars are flat). An explicit start
    (ISO date or UTC ms) is honoured, but bars it trades inside the training
    range are counted and warned about.
    """
    from .data import parse_time

    ts = df["timestamp"].to_numpy()
    rng = training_range(train or {}, ts)
    notes, warns = [], []
    if cfg.start == "auto":
        i = 0
        if rng is not None and ts[0] <= rng[2] and ts[-1] >= rng[0]:
            i = int(np.searchsorted(ts, rng[2], side="right"))
            if i >= len(ts):
                raise DataError(
                    f"the data ends at {_utc(ts[-1])} UTC, inside the model's training range "
                    f"({_utc(rng[0])} to {_utc(rng[2])} UTC with its embargo); nothing is left to backtest out of sample"
                )
            notes.append(f"backtest starts {_utc(ts[i])} UTC, after the model's training range "
                         f"({_utc(rng[0])} to {_utc(rng[1])} UTC, plus a {_embargo_words(rng)} embargo; out of sample)")
    else:
        i = int(np.searchsorted(ts, parse_time(cfg.start, name="--start"), side="left"))
        if i >= len(ts):
            raise ConfigError(f"--start {cfg.start} is after the last bar of the data ({_utc(ts[-1])} UTC)")
    inside = 0
    if rng is not None:
        traded = ts[i:]
        inside = int(((traded >= rng[0]) & (traded <= rng[2])).sum())
    if inside:
        warns.append(f"warning: IN-SAMPLE: {inside:,} traded bars lie inside the model's training range "
                     f"({_utc(rng[0])} to {_utc(rng[2])} UTC with its embargo); these results are not out of sample")
    return i, inside, notes, warns


def _embargo_words(rng) -> str:
    hours = (rng[2] - rng[1]) / 3_600_000
    return f"{hours:g}-hour" if hours < 48 else f"{hours / 24:g}-day"


def strategy_params(strategy_cls, cfg: RunConfig) -> dict:
    """``--param`` / ``[params]`` values converted to the types of the strategy's defaults."""
    from .params import convert_params

    params = convert_params(strategy_cls, cfg.params)
    if cfg.threshold is not None:
        params.update(convert_params(strategy_cls, {"threshold": cfg.threshold}))
    return params


def read_signals_file(path: str, candles: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Signals from a file (``timestamp`` plus ``signal``), aligned to the candles.

    The file's timestamps must be a run of consecutive candles: none that the
    candles lack, none of the candles missing inside its span. Returns the
    signal per candle (NaN before the file starts) and the first covered bar.
    """
    from .data.files import read_table

    table = read_table(Path(path))
    if "timestamp" not in table.columns or "signal" not in table.columns:
        raise DataError(f"{path}: a signals file needs the columns timestamp and signal (found: {', '.join(map(str, table.columns))})")
    ts = pd.to_numeric(table["timestamp"], errors="coerce").to_numpy()
    sig = pd.to_numeric(table["signal"], errors="coerce").to_numpy(np.float64)
    if np.isnan(ts).any() or len(ts) == 0:
        raise DataError(f"{path}: timestamps must be UTC milliseconds, one per row")
    ts = ts.astype(np.int64)
    if (np.diff(ts) <= 0).any():
        raise DataError(f"{path}: timestamps must be strictly increasing")
    cts = candles["timestamp"].to_numpy()
    pos = np.searchsorted(cts, ts)
    extra = (pos >= len(cts)) | (cts[np.minimum(pos, len(cts) - 1)] != ts)
    if extra.any():
        k = int(np.flatnonzero(extra)[0])
        raise DataError(f"{path}: {int(extra.sum()):,} signal timestamps have no candle, the first {int(ts[k])} "
                        f"({_utc(ts[k])} UTC); signals are never filled or shifted")
    if (np.diff(pos) != 1).any():
        k = int(np.flatnonzero(np.diff(pos) != 1)[0])
        raise DataError(f"{path}: the candles have {int(pos[k + 1] - pos[k] - 1):,} bars after {_utc(ts[k])} UTC "
                        "with no signal in the file; signals are never filled")
    out = np.full(len(cts), np.nan)
    out[pos] = sig
    return out, int(pos[0])


def prepare(cfg: RunConfig) -> Prepared:
    """Check options, load data and model, choose the traded range, precompute signals."""
    from .registry import resolve_strategy
    from .strategy import ModelStrategy

    strategy_cls = resolve_strategy(cfg.strategy)  # fail fast on a bad name
    warns = check_broker_options(cfg)
    params = strategy_params(strategy_cls, cfg)
    is_model = issubclass(strategy_cls, ModelStrategy)
    if cfg.signals and cfg.model:
        raise ConfigError("give either --signals or --model, not both")
    if cfg.signals and (cfg.stream or params.get("stream")):
        raise ConfigError("--signals replaces the model, so there is nothing to stream (drop --stream)")
    streaming = is_model and not cfg.signals and (cfg.stream or bool(params.get("stream", strategy_cls.params.stream)))

    from .markets import load_markets, prepare_portfolio

    markets = load_markets(cfg)  # one per symbol, named from the options or the file names, resampled if asked
    df, source, name = markets[0].candles, markets[0].source, markets[0].name
    notes = [n for n in [getattr(df, "attrs", {}).get("note"), gap_note(df)] if n] + markets[0].notes
    prep = Prepared(cfg, df, source, name, strategy_cls, params, is_model, streaming, 0, 0, notes=notes, warnings=warns)
    prep.markets, prep.timeframe = markets, markets[0].timeframe
    if len(markets) > 1:
        return prepare_portfolio(prep)
    if not is_model:
        if cfg.start != "auto":
            prep.start, _, _, _ = backtest_start(cfg, df, None)
        return prep
    if cfg.signals:
        prep.signal, first = read_signals_file(cfg.signals, df)
        prep.start, _, _, _ = backtest_start(cfg, df, None)
        if cfg.start == "auto":
            prep.start = first
        return prep

    from .model.checkpoint import load as load_checkpoint
    from .signals import SignalModel

    ckpt = load_checkpoint(cfg.model)
    prep.model = SignalModel(ckpt, device=resolve_device(cfg.device), attention=cfg.attention,
                             on_bad="nan" if cfg.on_bad_bars == "nan" else "raise")
    prep.start, prep.in_sample_bars, n, w = backtest_start(cfg, df, ckpt.train)
    prep.notes += n
    prep.warnings += w
    if not streaming:  # a streaming strategy computes its own signals inside Backtrader
        t = time.perf_counter()
        prep.signal = prep.model.precompute(df)  # one causal pass over all bars, history before `start` included
        prep.signal_seconds = time.perf_counter() - t
    return prep


def backtest(prep: Prepared, end: int | None = None):
    """Backtest the prepared run over bars [start, end) of its candles."""
    from .backtest import run_backtest

    cfg = prep.cfg
    if len(prep.markets) > 1:  # a portfolio: {symbol: its own bars}, aligned by Backtrader's clock
        from .markets import traded_frames

        traded = traded_frames(prep, end)
    else:
        traded = prep.candles.iloc[prep.start:end].reset_index(drop=True).copy()
        if prep.signal is not None:
            traded["signal"] = prep.signal[prep.start:end]
    params = dict(prep.params)
    if prep.is_model and prep.streaming:
        params["model"] = prep.model
        params["stream"] = True
        # the streamed model warms up on the same history the precomputed pass sees
        params["history"] = prep.candles.iloc[:prep.start]
    try:
        return run_backtest(
            traded,
            prep.strategy_cls,
            params,
            cash=cfg.cash,
            commission=cfg.commission,
            slippage_bps=cfg.slippage_bps,
            borrow_rate=cfg.borrow_rate,
            name=prep.name,
            context=tuple(getattr(prep.strategy_cls, "coarse_feeds", ()) or ()),
        )
    except TypeError as exc:
        raise ConfigError(f"strategy {cfg.strategy!r} rejected its parameters: {exc}") from exc


def order_warning(counts: dict) -> str | None:
    bad = counts["rejected"] + counts["cancelled"] + counts["expired"]
    if not counts["rejected"]:
        return None
    parts = [f"{counts['rejected_margin']:,} for margin" if counts["rejected_margin"] else "",
             f"{counts['rejected_other']:,} rejected by the broker" if counts["rejected_other"] else ""]
    return (f"warning: {counts['rejected']:,} of {counts['submitted']:,} orders were refused "
            f"({', '.join(p for p in parts if p)}); {bad:,} did not fill, {counts['filled']:,} filled "
            "(see orders.csv)")


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


def run_metrics(prep: Prepared, result) -> tuple[pd.Series, dict]:
    """Daily returns and the metrics of ``metrics.json``, without writing anything (sweeps use this)."""
    from .report import compute_metrics, daily_returns
    from .report.metrics import max_drawdown

    cfg = prep.cfg
    returns = daily_returns(result.equity["timestamp"], result.equity["equity"], result.start_cash)
    metrics = compute_metrics(
        returns,
        n_trades=len(result.trades),
        bars=result.bars,
        seconds=result.seconds,
        periods=cfg.periods_per_year,
    )
    metrics["max_drawdown"] = max_drawdown(result.equity["equity"], result.start_cash)
    metrics["in_sample_bars"] = int(prep.in_sample_bars)
    metrics["orders"] = dict(result.order_counts)
    metrics["liquidations"] = len(result.liquidations)
    metrics["final_equity"] = float(result.equity["equity"].iloc[-1]) if len(result.equity) else float(cfg.cash)
    metrics["signal_bars_per_s"] = (float(len(prep.candles) / prep.signal_seconds)
                                    if prep.signal_seconds > 0 else float("nan"))  # NaN when streamed
    return returns, metrics


def report(prep: Prepared, result, t_start: float | None = None) -> RunOutcome:
    """Metrics and result files, then the tearsheet."""
    from .report import write_results
    from .report.metrics import benchmark_returns

    from .markets import chart_or_note, equal_weight_benchmark, equity_table, per_symbol, traded_frames

    cfg = prep.cfg
    portfolio = len(prep.markets) > 1
    frames = traded_frames(prep) if portfolio else {prep.name: prep.traded}
    traded = prep.traded if not portfolio else pd.concat(list(frames.values())).sort_values("timestamp", kind="stable")
    returns, metrics = run_metrics(prep, result)
    if portfolio:
        metrics["symbols"] = per_symbol(result, frames)
    warns = list(prep.warnings)
    w = order_warning(result.order_counts)
    if w:
        warns.append(w)
    for liq in result.liquidations:
        from .backtest import bt_num_to_ms

        warns.append(f"warning: LIQUIDATED at {_utc(bt_num_to_ms([liq.dt])[0])} UTC: equity reached zero, the "
                     f"{'short' if liq.size < 0 else 'long'} of {abs(liq.size):.6g} was closed at {liq.price:.8g}; "
                     "the remaining bars are flat")
    out = new_run_dir(cfg)
    # signals.csv holds what the strategy itself saw and decided at each bar.
    signals = result.signals.rename(columns={"target": "target_position"})
    run_info = {
        "source": prep.source,
        "symbol": prep.name,
        "symbols": [m.name for m in prep.markets] or [prep.name],
        "timeframe": prep.timeframe,
        "strategy": cfg.strategy,
        "model": None if not prep.is_model or cfg.signals else str(cfg.model or "default"),
        "signals_file": cfg.signals,
        "attention": prep.model.backend if prep.model is not None else None,
        "device": str(prep.model.device) if prep.model is not None else None,
        "first_bar_ms": int(traded["timestamp"].iloc[0]),
        "last_bar_ms": int(traded["timestamp"].iloc[-1]),
        "params": {k: v for k, v in prep.params.items()},
        "liquidations": [
            {"dt": float(x.dt), "size": x.size, "price": x.price, "shortfall": x.shortfall} for x in result.liquidations
        ],
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
    }
    from .report.parallel import Workers
    from .report.tearsheet import draw_figure, finish_tearsheet, layout_tearsheet

    out.mkdir(parents=True, exist_ok=True)
    # The result files and chart.png are written by forked workers while this process lays out the
    # tearsheet; its figures then go to the same workers (see fastrader.report.parallel).
    jobs = [
        lambda: write_results(out, metrics=metrics, equity=equity_table(result), trades=result.trades,
                              signals=signals, extra=run_info, orders=result.orders),
        lambda: chart_or_note(out, frames, result, {}, []),
    ]
    with Workers(jobs) as w:
        written, charted = w.inherited(0), w.inherited(1)
        figures = layout = None
        if cfg.tearsheet:
            bench = equal_weight_benchmark(frames) if portfolio else benchmark_returns(traded)
            title = f"fastrader: {cfg.strategy} on {', '.join(frames) if portfolio else prep.source}"
            if prep.in_sample_bars:
                title = f"IN-SAMPLE ({prep.in_sample_bars:,} bars in the model's training range): {title}"
            try:
                layout, title = layout_tearsheet(returns, bench, title=title, periods=cfg.periods_per_year,
                                                 benchmark_title="Equal-weight buy & hold" if portfolio
                                                 else "Buy & hold")
                # last first: the page's slowest figures are at its end; starting them first evens the load
                figures = {i: w.submit(draw_figure, *c) for i, c in reversed(list(enumerate(layout.calls)))}
            except Exception as exc:
                figures = exc
        files = written.get()  # the backtest's files are on disk before anything else can fail
        chart_files, chart_warns = charted.get()
        files.update(chart_files)
        warns.extend(chart_warns)
        try:
            if isinstance(figures, Exception):
                raise figures
            if figures is not None:
                drawn = [figures[i].get() for i in range(len(figures))]
                files["tearsheet"] = finish_tearsheet(layout, drawn, out / "tearsheet.html", title=title,
                                                      chart=files.get("chart"))
        except Exception as exc:
            raise FastraderError(
                f"tearsheet failed ({type(exc).__name__}: {exc}); the other results are in {out}"
            ) from exc
    if t_start is not None:
        metrics["wall_s"] = time.perf_counter() - t_start
    return RunOutcome(out, metrics, files, list(prep.notes), warns)


def run(cfg: RunConfig) -> RunOutcome:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    # a context manager, so that an error clears the bar before its `error:` line is printed
    with tqdm(total=3, desc="fastrader: data, model and signals", unit="step", disable=not cfg.progress,
              leave=False) as bar:
        prep = prepare(cfg)
        bar.update()
        bar.set_description("fastrader: backtest")
        result = backtest(prep)
        bar.update()
        bar.set_description("fastrader: results and tearsheet")
        outcome = report(prep, result, t_start)
        bar.update()
    return outcome
