"""Lookahead check: does a backtest decide anything differently when the future is cut off?

A causal backtest decides at bar t from bars up to t only. So if the data
ended right after bar t, every decision up to t would be the same. This
module tests exactly that, for any strategy (plain Backtrader ones included):

1. run the full backtest twice; if the two runs differ, the strategy is not
   deterministic, and a difference after a cut would prove nothing (the
   check says so and stops there, blaming no lookahead);
2. run it again on the data truncated at K cut points spread over the traded
   range, the data feed really ending at the cut (so ``data.close[1]``, or a
   column computed in ``__init__`` from the whole ``data.close.array``, sees
   less than in the full run);
3. compare, per cut, everything the strategy decided before the cut with the
   full run: every bar's signal and target (strategies that keep
   ``records``, as :class:`fastrader.strategy.ModelStrategy` does), every
   order (creation and final bar, side, size, status, fill size, price,
   commission), every closed trade, every liquidation, and every bar's
   position and equity. Floats are compared exactly (NaN equals NaN): a
   causal run repeats the same arithmetic, so there is no rounding to allow.

What may legitimately differ at the cut edge, and is not compared:

* an order whose fate is settled at or after the first cut-off bar. Orders
  fill at the next bar's open, so an order created on the last bar before
  the cut never fills in the truncated run, where the full run fills it at
  the cut; it is still open when the truncated data ends, and an open order
  is in neither run's order log. So the full run's orders are compared when
  their final bar is before the cut, and the truncated run's all (they all
  are). The bar on which such an order was *created* is compared through
  that bar's target, position and equity;
* trades still open at the cut and orders still open at the end of the data
  (neither run logs them); ``order_counts['open_at_end']`` is not compared;
* Backtrader's order ``ref`` numbers, which count on across runs in one
  process.

A truncated run that raises where the full run did not (``data.close[1]``
on the last bar raises ``IndexError``: Backtrader's preloaded line has no
next bar there) is lookahead too, named at the bar where it raised.

Reuse, so that the check costs a few backtests and no model passes: the
model's precomputed signal is causal (tests prove that precomputing on
``bars[:t]`` gives the first t rows of the full pass), so the truncated runs
take the first rows of :attr:`Prepared.signal`. ``recompute_signals=True``
also recomputes the model on each truncated history and compares its
signals with the full pass (to ``model_atol``: the float32 model's
reductions may round differently on a shorter sequence), checking the model
end to end too. Streaming strategies run the model inside Backtrader, so
their truncated runs check it anyway.

A check can only see lookahead that changes something it compares: a peek
that never changes a decision, position or order is invisible, and more
cuts give more chances to catch a rare one.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError

CLEAN, LOOKAHEAD, FAILED, NONDETERMINISTIC = "clean", "lookahead", "failed", "nondeterministic"
EXIT_CODES = {CLEAN: 0, LOOKAHEAD: 1, FAILED: 2, NONDETERMINISTIC: 3}
MIN_BARS = 2  # a truncated feed needs two candles to know its timeframe

# What is compared, in the order used to break ties on one bar: (name, BacktestResult attribute,
# time of a row's decision, time that settles the row). Every column is compared but Backtrader's
# order ``ref``, a counter that is not part of any decision.
_STREAMS = (
    ("signals", "signals", "timestamp", "timestamp"),
    ("orders", "orders", "created_time", "final_time"),
    ("equity", "equity", "timestamp", "timestamp"),
    ("holdings", "holdings", "timestamp", "timestamp"),
    ("trades", "trades", "close_time", "close_time"),
    ("liquidations", "liquidations", "time", "time"),
)
_SKIP = {"ref"}
_LABELS = {("signals", "timestamp"): "bar time of the strategy's record", ("equity", "timestamp"): "bar time of the equity record",
           ("signals", "signal"): "signal", ("signals", "target"): "target", ("equity", "position"): "position",
           ("equity", "equity"): "equity", ("equity", "cash"): "cash"}
_ROW = {"signals": "a bar record", "orders": "an order", "equity": "an equity row", "holdings": "a holdings row",
        "trades": "a trade", "liquidations": "a liquidation"}


@dataclass
class Difference:
    """The first place two runs part: a bar (row of the data), a field, the two values."""

    bar: int | None  # index of the bar in the data (all candles, history included); None when unknown
    time_ms: int | None
    field: str
    full: object  # the full run's value
    other: object  # the truncated run's (or the second full run's) value

    def to_dict(self) -> dict:
        return {"bar": self.bar, "time": iso(self.time_ms), "time_ms": self.time_ms, "field": self.field,
                "full": _jsonable(self.full), "other": _jsonable(self.other)}


@dataclass
class CutResult:
    cut: int  # the truncated run trades bars [start, cut): ``cut`` is the first bar it lacks
    last_ms: int  # time of its last bar (cut - 1)
    bars: int  # traded bars compared
    orders: int  # orders compared
    result: str = "same"  # same | differs | raised | raised like the full run | not compared
    difference: Difference | None = None  # the first difference that proves lookahead
    error: str | None = None  # the exception a truncated run raised
    model_difference: Difference | None = None  # recompute_signals: first signal beyond model_atol
    seconds: float = float("nan")
    reference: int | None = None  # end of the longer run compared with, when not the full run (it raised)

    @property
    def clean(self) -> bool:
        return self.difference is None and self.model_difference is None

    @property
    def first(self) -> Difference | None:
        found = [d for d in (self.difference, self.model_difference) if d is not None]
        return min(found, key=_bar_key) if found else None

    def to_dict(self) -> dict:
        return {"cut": self.cut, "last_bar": self.cut - 1, "last_time": iso(self.last_ms), "bars_compared": self.bars,
                "orders_compared": self.orders, "result": self.result if self.model_difference is None else "differs",
                "difference": self.difference.to_dict() if self.difference else None, "error": self.error,
                "model_difference": self.model_difference.to_dict() if self.model_difference else None,
                "compared_with": "full run" if self.reference is None else f"run ending before bar {self.reference}",
                "seconds": round(self.seconds, 4)}


@dataclass
class CheckReport:
    status: str  # clean | lookahead | failed | nondeterministic
    start: int  # first traded bar
    n_bars: int  # all bars of the data
    cuts: list[CutResult] = field(default_factory=list)
    nondeterminism: Difference | None = None
    failure: Difference | None = None  # status failed: the exception of the full run
    full_orders: int = 0
    jobs: int = 1
    recomputed_signals: bool = False
    seconds: float = float("nan")
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def first(self) -> tuple[CutResult, Difference] | None:
        """The cut whose difference comes earliest in the data, and that difference."""
        bad = [(c, c.first) for c in self.cuts if not c.clean]
        return min(bad, key=lambda cd: _bar_key(cd[1])) if bad else None

    def to_dict(self) -> dict:
        first = self.first
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "start_bar": self.start,
            "bars": self.n_bars,
            "traded_bars": self.n_bars - self.start,
            "full_run_orders": self.full_orders,
            "jobs": self.jobs,
            "recomputed_signals": self.recomputed_signals,
            "nondeterminism": self.nondeterminism.to_dict() if self.nondeterminism else None,
            "failure": self.failure.to_dict() if self.failure else None,
            "first_difference": None if first is None else {"cut": first[0].cut, **first[1].to_dict()},
            "cuts": [c.to_dict() for c in self.cuts],
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


def iso(ms) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def _jsonable(x):
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else str(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _bar_key(d: Difference):
    """Order of differences in the data: by time (a portfolio's bars are not all the first symbol's);
    a failure while the strategy was set up comes before every bar, an unknown bar after them."""
    if d.time_ms is not None:
        return (float(d.time_ms),)
    return (float("-inf"),) if "__init__" in d.field else (float("inf"),)


def cut_points(start: int, n: int, k: int) -> list[int]:
    """K cut points spread evenly over the traded bars [start, n): each is the first bar a run lacks."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"--cuts must be a whole number >= 1, got {k!r}")
    span = n - start
    cuts = sorted({start + int(round(span * i / (k + 1))) for i in range(1, k + 1)})
    cuts = [c for c in cuts if c - start >= MIN_BARS and c < n]
    if not cuts:
        raise DataError(f"only {span:,} traded bars: too few to cut (a truncated run needs {MIN_BARS} bars, "
                        "and the full run at least one more)")
    return cuts


# ---- comparing two runs ---------------------------------------------------------------------

def _frame(result, attr: str) -> pd.DataFrame | None:
    if attr != "liquidations":
        return getattr(result, attr, None)
    from .backtest import bt_num_to_ms

    rows = [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else dict(vars(x)) for x in result.liquidations]
    frame = pd.DataFrame(rows)
    frame.insert(0, "time", bt_num_to_ms(frame.pop("dt").to_numpy()) if rows else np.zeros(0, np.int64))
    return frame


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise 'not equal', NaN equal to NaN, no tolerance."""
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        try:
            a, b = a.astype(np.float64), b.astype(np.float64)
        except (TypeError, ValueError):
            return a != b
        return ~((a == b) | (np.isnan(a) & np.isnan(b)))
    return a != b


def _first_row(a: pd.DataFrame, b: pd.DataFrame) -> tuple[int, str | None] | None:
    """(row, column) of the first difference, column None when one frame just has more rows."""
    n = min(len(a), len(b))
    best = None
    cols = [c for c in a.columns if c not in _SKIP] + [c for c in b.columns if c not in _SKIP and c not in a.columns]
    for c in cols:
        if c not in a.columns or c not in b.columns:  # the same code makes both frames: never expected
            return (0, c) if n else None
        bad = _differs(a[c].to_numpy()[:n], b[c].to_numpy()[:n])
        if bad.any():
            i = int(np.argmax(bad))
            if best is None or i < best[0]:
                best = (i, c)
    if best is None and len(a) != len(b):
        best = (n, None)
    return best


def _bar_index(ts: np.ndarray, ms: int) -> int | None:
    i = int(np.searchsorted(ts, ms, side="left"))
    return i if i < len(ts) and ts[i] == ms else None


def _value(frame: pd.DataFrame, i: int, col: str):
    v = frame[col].iloc[i]
    if col.endswith("_time") or col in ("timestamp", "time"):
        return iso(v)
    return v.item() if hasattr(v, "item") else v


def compare(full, other, ts: np.ndarray, cut_ms: int | None = None) -> Difference | None:
    """First difference between two BacktestResults, earliest bar first.

    With ``cut_ms``, the full run's rows are those settled before that time
    (see the module docstring) and ``other`` is the run truncated there.
    """
    found = []
    for rank, (name, attr, when, settled) in enumerate(_STREAMS):
        fa, fb = _frame(full, attr), _frame(other, attr)
        if fa is None or fb is None:
            continue
        if cut_ms is not None and len(fa):
            fa = fa[fa[settled].to_numpy() < cut_ms]
        fa, fb = fa.reset_index(drop=True), fb.reset_index(drop=True)
        hit = _first_row(fa, fb)
        if hit is None:
            continue
        i, col = hit
        times = [int(f[when].iloc[i]) for f in (fa, fb) if i < len(f)]
        t = min(times)
        if col is None:
            d = Difference(_bar_index(ts, t), t, f"{name}: {_ROW[name]} only one run has",
                           "present" if i < len(fa) else "absent", "present" if i < len(fb) else "absent")
        else:
            label = _LABELS.get((name, col), f"{name[:-1]} {col}")
            d = Difference(_bar_index(ts, t), t, label, _value(fa, i, col), _value(fb, i, col))
        found.append((_bar_key(d), rank, d))
    return min(found, key=lambda x: x[:2])[2] if found else None


def compare_signals(full: np.ndarray, recomputed: np.ndarray, ts: np.ndarray, atol: float) -> Difference | None:
    """First bar where a signal recomputed on truncated data differs from the full pass by more than atol."""
    a = np.asarray(full[: len(recomputed)], dtype=np.float64)
    b = np.asarray(recomputed, dtype=np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    with np.errstate(invalid="ignore"):
        bad = (nan_a != nan_b) | (~nan_a & ~nan_b & ~(np.abs(a - b) <= atol))
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return Difference(i, int(ts[i]), f"model signal recomputed on the truncated data (beyond {atol:g})",
                      float(a[i]), float(b[i]))


# ---- running the backtests ---------------------------------------------------------------------

# The prepared run, seen by the pool's forked workers (fork copies it; nothing is pickled but results).
_PREP = None


def _fresh_randomness():
    # fork copies the parent's random state: a strategy drawing from the global
    # generators without a seed would get the same numbers in every worker, and
    # two full runs in two workers would agree, hiding that it is not deterministic.
    random.seed()
    np.random.seed()


def _strategy_bar_ms(exc: BaseException) -> tuple[int | None, bool]:
    """The bar at which a strategy raised (UTC ms), and whether it raised while setting up (``__init__``)."""
    import backtrader as bt

    from .backtest import bt_num_to_ms

    strat_frames = [(f, f.f_locals.get("self")) for f, _ in traceback.walk_tb(exc.__traceback__)]
    strat_frames = [(f, s) for f, s in strat_frames if isinstance(s, bt.Strategy)]
    if not strat_frames:
        return None, False
    if any(f.f_code.co_name == "__init__" for f, _ in strat_frames):
        return None, True
    try:
        return int(bt_num_to_ms([strat_frames[-1][1].datetime[0]])[0]), False
    except Exception:  # noqa: BLE001 - a best effort at naming the bar
        return None, False


@dataclass
class _Run:
    """One backtest's outcome: its result, or the exception it raised and where."""

    end: int  # first bar the run lacks (all bars for a full run)
    result: object | None  # BacktestResult; None when the run raised
    error: str | None = None
    error_bar: int | None = None  # bar where it raised; -1 while the strategy was set up; None unknown
    seconds: float = float("nan")

    @property
    def raised(self) -> bool:
        return self.result is None

    def went_past(self, bar: int) -> bool:
        """Whether this run processed ``bar`` without raising (known for sure)."""
        if bar >= self.end:
            return False
        return not self.raised or (self.error_bar is not None and self.error_bar > bar)


def _task(kind: str, end: int):
    """One backtest over bars [start, end). Returns plain, picklable values."""
    from .errors import FastraderError
    from .pipeline import backtest

    prep = _PREP
    t = time.perf_counter()
    try:
        res = backtest(prep, end=end)
    except FastraderError:
        raise
    except Exception as exc:  # noqa: BLE001 - a run that raises is a finding, judged against the other runs
        ms, in_init = _strategy_bar_ms(exc)
        return kind, end, None, (f"{type(exc).__name__}: {exc}", ms, in_init), time.perf_counter() - t
    return kind, end, res, None, time.perf_counter() - t


def _make_run(out, ts) -> _Run:
    kind, end, res, err, secs = out
    run = _Run(end, res, seconds=secs)
    if err is not None:
        msg, ms, in_init = err
        run.error = msg
        run.error_bar = -1 if in_init else (_bar_index(ts, ms) if ms is not None else None)
    return run


def _error_diff(run: _Run, ts, field: str, full_value, other_value) -> Difference:
    b = run.error_bar
    known = b is not None and b >= 0
    return Difference(b if known else None, int(ts[b]) if known else None,
                      field + (" (while the strategy was set up, in __init__)" if b == -1 else ""), full_value,
                      other_value)


def _determinism(a: _Run, b: _Run, ts) -> Difference | None:
    """First difference between the two full runs (None: they agree)."""
    if not a.raised and not b.raised:
        return compare(a.result, b.result, ts)
    if a.raised and b.raised:
        if (a.error, a.error_bar) == (b.error, b.error_bar):
            return None
        first = a if (a.error_bar if a.error_bar is not None else 1 << 62) <= (
            b.error_bar if b.error_bar is not None else 1 << 62) else b
        return _error_diff(first, ts, "exception", a.error, b.error)
    bad = a if a.raised else b
    return _error_diff(bad, ts, "exception", a.error or "ran on", b.error or "ran on")


def _judge(cut: int, run: _Run, longer: list[_Run], full: _Run, ts, start: int) -> CutResult:
    """Compare a truncated run with the runs that saw more data (``longer``, shortest first, full run last)."""
    cr = CutResult(cut, int(ts[cut - 1]), cut - start, 0, seconds=run.seconds)
    if run.raised:
        cr.result, cr.error = "raised", run.error
        b = run.error_bar
        passer = None if b is None else next((L for L in [full] + longer if L.went_past(b)), None)
        if passer is not None:
            cr.difference = _error_diff(run, ts, "exception at this bar", "ran on", run.error)
            cr.reference = None if passer is full else passer.end
        else:
            cr.result = "raised like the full run"  # a bug the longer runs share: not lookahead
        return cr
    # a run with more data that failed at a bar this one went past
    early = [L for L in longer if L.raised and L.error_bar is not None and L.error_bar < cut]
    if early:
        L = min(early, key=lambda r: r.error_bar)
        cr.result = "differs"
        cr.difference = _error_diff(L, ts, "exception in the longer run", L.error, "ran on")
        return cr
    ref = full if not full.raised else next((L for L in longer if not L.raised), None)
    if ref is None:
        cr.result = "not compared"
        return cr
    if ref is not full:
        cr.reference = ref.end
    cut_ms = int(ts[cut])
    cr.orders = int((ref.result.orders["final_time"].to_numpy() < cut_ms).sum())
    cr.difference = compare(ref.result, run.result, ts, cut_ms)
    cr.result = "same" if cr.difference is None else "differs"
    return cr


def default_jobs(prep) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    # A streamed model runs torch inside each backtest, and torch's thread pools
    # are not safe to use in a forked child of a process that already used them.
    return 1 if prep.streaming else max(1, min(2, cores))


def check(prep, cuts: int = 8, *, jobs: int | None = None, recompute_signals: bool = False,
          model_atol: float = 1e-5, progress: bool = True) -> CheckReport:
    """Run the lookahead check on a prepared run (:func:`fastrader.pipeline.prepare`)."""
    global _PREP
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n = len(prep.candles)
    points = cut_points(prep.start, n, cuts)
    if recompute_signals and (prep.model is None or prep.signal is None):
        why = ("a streaming strategy runs the model inside each backtest, so its cuts check the model already"
               if prep.streaming else "the signals do not come from the model here (a --signals file, or a strategy "
               "that is not a ModelStrategy)")
        raise ConfigError(f"--recompute-signals has no model pass to recompute: {why}")
    if not model_atol >= 0:
        raise ConfigError(f"--model-atol must be >= 0, got {model_atol!r}")
    if jobs is None:
        jobs = default_jobs(prep)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    import multiprocessing as mp

    from fastrader.report.parallel import fork_is_safe

    if jobs > 1 and ("fork" not in mp.get_all_start_methods() or not fork_is_safe()):
        jobs = 1  # the same runs, one after another
    ts = prep.candles["timestamp"].to_numpy()
    report = CheckReport(CLEAN, prep.start, n, jobs=jobs, recomputed_signals=recompute_signals)
    if len(points) < cuts:
        report.notes.append(f"{len(points)} distinct cuts fit in {n - prep.start:,} traded bars (asked for {cuts})")
    if prep.is_model and prep.signal is not None and prep.model is None:
        report.notes.append(f"the signals come from {prep.cfg.signals}: the check tests how the strategy uses them, "
                            "not how they were made")

    # Longest first, so the pool's workers finish together.
    tasks = [("full", n), ("full", n)] + [("cut", c) for c in sorted(points, reverse=True)]
    fulls: list[_Run] = []
    parts: dict[int, _Run] = {}
    bar = tqdm(total=len(tasks), desc="fastrader check: full runs and cuts", unit="run", disable=not progress,
               leave=False)

    def take(out) -> bool:
        run = _make_run(out, ts)
        (fulls.append(run) if out[0] == "full" else parts.__setitem__(run.end, run))
        bar.update()
        # two full runs that differ make every cut meaningless: stop early
        return len(fulls) == 2 and out[0] == "full" and _determinism(*fulls, ts) is not None

    _PREP = prep
    try:
        if jobs == 1:
            for kind, end in tasks:
                if take(_task(kind, end)):
                    break
        else:
            from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork"),
                                       initializer=_fresh_randomness)
            try:
                pending = [pool.submit(_task, k, e) for k, e in tasks]
                stop = False
                while pending and not stop:
                    done, rest = wait(pending, return_when=FIRST_COMPLETED)
                    pending = [f for f in pending if f in rest]
                    for fut in done:
                        stop = take(fut.result()) or stop
            finally:  # on an early stop or an error, runs not started are dropped
                pool.shutdown(wait=True, cancel_futures=True)
        recomputed = {}
        if recompute_signals and len(fulls) == 2 and _determinism(*fulls, ts) is None:
            bar.set_description("fastrader check: model recomputed per cut")
            for c in points:
                recomputed[c] = compare_signals(prep.signal, prep.model.precompute(prep.candles.iloc[:c]), ts,
                                                model_atol)
    finally:
        _PREP = None
        bar.close()

    full = fulls[0]
    report.full_orders = 0 if full.raised else len(full.result.orders)
    report.nondeterminism = _determinism(*fulls, ts)
    if report.nondeterminism is not None:
        report.status = NONDETERMINISTIC
        report.seconds = time.perf_counter() - t0
        return report
    for c in points:
        longer = [parts[e] for e in points if e > c] + [full]
        cr = _judge(c, parts[c], longer, full, ts, prep.start)
        if recompute_signals:
            cr.model_difference = recomputed[c]
        report.cuts.append(cr)
    if not all(c.clean for c in report.cuts):
        report.status = LOOKAHEAD
    elif full.raised:
        report.status = FAILED
        report.failure = _error_diff(full, ts, "exception", full.error, None)
    else:
        report.status = CLEAN
    report.seconds = time.perf_counter() - t0
    return report


# ---- words ------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.10g}"
    return str(v)


def _at(d: Difference) -> str:
    if d.bar is not None:
        return f"at bar {d.bar:,} ({iso(d.time_ms)})"
    if d.time_ms is not None:  # a portfolio's other symbol: a time the first symbol has no bar at
        return f"at {iso(d.time_ms)}"
    return "while the strategy was set up (__init__)" if "__init__" in d.field else "at an unknown bar"


def table(report: CheckReport) -> str:
    rows = [("cut", "last bar kept (UTC)", "bar", "bars compared", "orders", "result")]
    for i, c in enumerate(report.cuts, 1):
        res = c.result if c.model_difference is None or c.difference is not None else "differs (model)"
        first = c.first
        if first is not None:
            res += f" at bar {first.bar:,}" if first.bar is not None else " in __init__"
        rows.append((str(i), iso(c.last_ms)[:-7], f"{c.cut - 1:,}", f"{c.bars:,}", f"{c.orders:,}", res))
    w = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(x.ljust(w[j]) if j in (1, 5) else x.rjust(w[j]) for j, x in enumerate(r)).rstrip()
                     for r in rows)


def verdict(report: CheckReport) -> str:
    """One line: the result, and for a difference the first differing bar (index and UTC time) and field."""
    if report.status == NONDETERMINISTIC:
        d = report.nondeterminism
        return (f"NOT DETERMINISTIC: two full runs of the same backtest differ {_at(d)}, field {d.field!r} (first run "
                f"{_fmt(d.full)}, second run {_fmt(d.other)}); lookahead cannot be judged on a strategy whose runs "
                "differ. Seed its random numbers (e.g. random.Random(seed) in __init__) and check again")
    if report.status == FAILED:
        d = report.failure
        last = d.bar == report.n_bars - 1
        return (f"error: the full backtest raised {d.full} {_at(d)}" + (
            ", its last bar: a strategy that fails only there reads the bar after the current one (e.g. "
            "data.close[1]), but no truncated run showed it" if last else
            ", and every truncated run that reached that bar raised there too: a bug in the strategy, not lookahead")
            + "; the check needs a backtest that runs to the end")
    if report.status == CLEAN:
        what = "signal, target, order, trade, position and equity value"
        model = ("; the model recomputed on each truncated history gives the same signals"
                 if report.recomputed_signals else "")
        return (f"no lookahead: in each of {len(report.cuts)} runs truncated at a cut, every {what} before the cut "
                f"equals the full run, and two full runs agree{model}")
    c, d = report.first
    head = f"LOOKAHEAD: the run truncated after bar {c.cut - 1:,} ({iso(c.last_ms)})"
    longer = "the full run" if c.reference is None else f"a run with the bars up to {c.reference - 1:,}"
    if d is c.model_difference:
        return (f"{head}: the model's signal recomputed on the truncated history differs from the full pass {_at(d)}: "
                f"full pass {_fmt(d.full)}, truncated {_fmt(d.other)}; the model's signal is not causal")
    if c.result == "raised":
        return (f"{head} raised {c.error} {_at(d)}, where {longer} went on: the strategy reads bars after the "
                "current one (e.g. data.close[1], or an index into data.close.array)")
    if d.field.startswith("exception in the longer run"):
        return (f"{head} went on {_at(d)}, where {longer} raised {d.full}: what the strategy did there depended on "
                "bars after it")
    return (f"{head} differs from {longer} {_at(d)}, field {d.field!r}: {longer} {_fmt(d.full)}, truncated run "
            f"{_fmt(d.other)}. The strategy used data from after that bar to decide at it (e.g. data.close[1], or a "
            "column computed in __init__ from the whole data.close.array)")
