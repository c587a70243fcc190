"""Benchmark: whole backtests, fastrader against plain Backtrader, side by side in one process.

Cases:

* ``sma50_btc``: the peer alone, a plain Backtrader SMA(50) cross (long when
  the close is above its 50-bar SMA, flat otherwise, 95% of equity) over the
  43,780 real BTC/USDT hourly bars, fed through Backtrader's own ``PandasData``
  as a Backtrader user would; Cerebro built and run inside the timing.
* ``default_btc``: ``fastrader.run`` with its defaults over the same file (load
  and check the candles, the model's causal pass, the backtest, metrics and
  files, chart), once ``--no-tearsheet`` and once with the tearsheet.
  Targets: the full default run (tearsheet included) <= 1.0x ``sma50_btc``.
  The run writes its files and draws chart.png and the tearsheet's figures on
  forked workers, one per core up to 4 (``FASTRADER_REPORT_JOBS``); the
  SMA peer uses one core. The table's header says how many cores there were
  and how loaded the machine was.
* ``portfolio10``: 10 synthetic markets of 43,780 hourly bars each (seeded
  GARCH-like walks with gaps), signals precomputed. ``fastrader``:
  ``fastrader.backtest.run_backtest`` with ``ModelStrategy`` (equal weight, its
  order lifecycle, and the equity/order/trade analyzers that every fastrader
  run records). ``backtrader``: a hand-written Backtrader strategy over the same
  10 feeds with the precomputed signal lines (threshold rule, equal weight,
  ``order_target_percent``), no analyzers. Both use fastrader's numpy feed
  (``CandleFeed``), the fastest feed either could use, so the difference is the
  strategy and recording. Target: fastrader <= 1.1x the hand-written one.

Every case is warmed up once, then the implementations are timed in
interleaved rounds (--repeat, default 3) and the median wall time is
reported, with the CPU time (this process and the report's workers) beside
it: on a shared machine the CPU time is the steadier figure, the wall time
the one a user waits for. ``--json PATH`` writes rows {"case", "impl",
"pass", "ms", "cpu_ms", ...}.
``--profile`` prints where the time of one fastrader portfolio run goes
(cProfile, by cumulative and own time). The machine is shared: say so when
quoting numbers, and look at the ratios of medians.

    .venv/bin/python benchmarks/backtest.py [--repeat 3] [--json out.json] [--bars 43780] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import backtrader as bt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastrader.backtest import run_backtest  # noqa: E402
from fastrader.data import make_feed  # noqa: E402
from fastrader.strategy import ModelStrategy  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_BTCUSDT_1h.csv"
HOUR = 3_600_000


class SmaCross(bt.Strategy):
    params = (("period", 50),)

    def __init__(self):
        self.sma = bt.indicators.SimpleMovingAverage(self.data.close, period=self.p.period)
        self.cross = bt.indicators.CrossOver(self.data.close, self.sma)

    def next(self):
        if self.cross[0] > 0:
            self.order_target_percent(target=0.95)
        elif self.cross[0] < 0:
            self.order_target_percent(target=0.0)


def sma_run(df: pd.DataFrame) -> float:
    frame = df.set_index(pd.to_datetime(df["timestamp"], unit="ms"))[["open", "high", "low", "close", "volume"]]
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame, openinterest=None))
    cerebro.broker.setcash(10_000)
    cerebro.broker.setcommission(commission=0.001)
    cerebro.addstrategy(SmaCross)
    cerebro.run()
    return cerebro.broker.getvalue()


def default_run(path: Path, tearsheet: bool) -> float:
    from fastrader.pipeline import RunConfig, run

    with tempfile.TemporaryDirectory() as d:
        out = run(RunConfig(data=str(path), out=d, tearsheet=tearsheet, progress=False))
    return out.metrics["final_equity"]


class HandWritten(bt.Strategy):
    """What a Backtrader user writes for N symbols with precomputed signals: threshold rule, equal weight."""

    params = (("threshold", 1.5), ("stake", 0.95))

    def __init__(self):
        self.want = {d: 0.0 for d in self.datas}
        self.inflight = {d: None for d in self.datas}
        self.w = self.p.stake / len(self.datas)

    def notify_order(self, order):
        if not order.alive():
            self.inflight[order.data] = None

    def next(self):
        th = self.p.threshold
        for d in self.datas:
            s = d.signal[0]
            tgt = 1.0 if s > th else (-1.0 if s < -th else 0.0)
            if tgt != self.want[d] and self.inflight[d] is None:
                self.want[d] = tgt
                self.inflight[d] = self.order_target_percent(data=d, target=tgt * self.w)


def synthetic_markets(n: int, k: int = 10, seed: int = 0) -> dict[str, pd.DataFrame]:
    from fastrader.synthetic import MarketParams, generate  # the sample's own generator: GARCH vol, fat tails

    out = {}
    for i in range(k):
        f = generate(MarketParams(bars=n), seed=seed + i)
        rng = np.random.default_rng(100 + i)
        drop = rng.uniform(size=len(f)) < 0.002  # real histories have holes, different per symbol
        drop[0] = False
        f = f[~drop].reset_index(drop=True)
        # a precomputed signal: a slow noisy oscillator, so positions are held for a while
        z = np.cumsum(rng.normal(0, 1, len(f)))
        f["signal"] = (z - pd.Series(z).rolling(48, min_periods=1).mean().to_numpy()) / 3.0
        out[f"S{i:02d}/USDT"] = f
    return out


class Fractional(bt.CommInfoBase):
    """0.1% of traded value, fractional sizes: Backtrader's default sizes whole units, and at ~30,000 a
    unit a 9.5% stake of 10,000 would round to nothing (the baseline would never trade)."""

    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_PERC), ("percabs", True),
              ("commission", 0.001))

    def getsize(self, price, cash):
        return cash / price


def hand_run(frames, count=None) -> float:
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True)
    for name, f in frames.items():
        cerebro.adddata(make_feed(f, name=name), name=name)
    cerebro.broker.setcash(10_000)
    cerebro.broker.addcommissioninfo(Fractional())
    cerebro.addstrategy(HandWritten)
    strat = cerebro.run()[0]
    if count is not None:
        count.append(sum(1 for o in strat._orders if o.status == o.Completed))
    return cerebro.broker.getvalue()


def ours_run(frames, count=None) -> float:
    # exit_threshold=1.5: the hand-written rule (flat inside the band), so both trade the same signals
    res = run_backtest(frames, ModelStrategy, dict(threshold=1.5, exit_threshold=1.5), slippage_bps=0.0,
                       borrow_rate=0.0)
    if count is not None:
        count.append(res.order_counts["filled"])
    return float(res.equity["equity"].iloc[-1])


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the report's workers)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


CPU_MS: dict = {}  # case -> median CPU ms (this process + its workers), beside the wall times


def timed(fns: dict, repeat: int) -> dict:
    for fn in fns.values():  # warm-up: imports, caches, first-touch allocations
        fn()
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeat):
        for k in names if r % 2 == 0 else names[::-1]:
            c, t = _cpu_s(), time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t) * 1e3)
            cpu[k].append((_cpu_s() - c) * 1e3)
    CPU_MS.update({k: statistics.median(v) for k, v in cpu.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def profile(frames) -> None:
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    ours_run(frames)
    pr.disable()
    st = pstats.Stats(pr)
    st.sort_stats("tottime").print_stats(18)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds per case (median reported)")
    ap.add_argument("--bars", type=int, default=43_780, help="bars per synthetic market")
    ap.add_argument("--symbols", type=int, default=10)
    ap.add_argument("--json", metavar="PATH", help="write rows {case, impl, pass, ms} to PATH")
    ap.add_argument("--profile", action="store_true", help="profile one fastrader portfolio run")
    ap.add_argument("--skip", default="", help="comma-separated cases to skip (sma50_btc,default_btc,portfolio10)")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    rows = []

    if REAL.is_file() and not {"sma50_btc", "default_btc"} <= skip:
        btc = pd.read_csv(REAL)
        t = timed({"backtrader_sma50": lambda: sma_run(btc),
                   "fastrader_no_tearsheet": lambda: default_run(REAL, False),
                   "fastrader_full": lambda: default_run(REAL, True)}, args.repeat)
        sma = t["backtrader_sma50"]
        rows.append(dict(case="sma50_btc", impl="backtrader", ms=sma, cpu_ms=CPU_MS["backtrader_sma50"], bars=len(btc),
                         **{"pass": True}))
        for impl, key in (("fastrader --no-tearsheet", "fastrader_no_tearsheet"), ("fastrader (full)", "fastrader_full")):
            ratio = t[key] / sma
            ok = ratio <= 1.0 if key == "fastrader_full" else True
            rows.append(dict(case="default_btc", impl=impl, ms=t[key], cpu_ms=CPU_MS[key], bars=len(btc), ratio_vs_sma=ratio,
                             **{"pass": bool(ok)}))
    elif not {"sma50_btc", "default_btc"} <= skip:
        print(f"note: {REAL} not found; the real-data cases are skipped", file=sys.stderr)

    if "portfolio10" not in skip:
        frames = synthetic_markets(args.bars, args.symbols)
        n = sum(len(f) for f in frames.values())
        fills_hand, fills_ours = [], []
        t = timed({"hand": lambda: hand_run(frames, fills_hand), "ours": lambda: ours_run(frames, fills_ours)},
                  args.repeat)
        ratio = t["ours"] / t["hand"]
        rows.append(dict(case="portfolio10", impl="backtrader hand-written", ms=t["hand"], cpu_ms=CPU_MS["hand"], symbol_bars=n,
                         symbol_bars_per_s=n / t["hand"] * 1e3, fills=fills_hand[-1], **{"pass": True}))
        rows.append(dict(case="portfolio10", impl="fastrader ModelStrategy", ms=t["ours"], cpu_ms=CPU_MS["ours"], symbol_bars=n,
                         symbol_bars_per_s=n / t["ours"] * 1e3, fills=fills_ours[-1], ratio_vs_hand=ratio,
                         **{"pass": bool(ratio <= 1.1)}))
        if args.profile:
            profile(frames)

    from fastrader.report.parallel import default_workers

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, report workers {default_workers()}, load average {load:.2f} at the end")
    print(f"{'case':<14} {'impl':<26} {'ms':>10} {'ratio':>7} {'cpu ms':>9} {'fills':>7}  pass")
    for r in rows:
        ratio = r.get("ratio_vs_sma", r.get("ratio_vs_hand"))
        print(f"{r['case']:<14} {r['impl']:<26} {r['ms']:>10.0f} {'' if ratio is None else f'{ratio:.2f}x':>7} "
              f"{r['cpu_ms']:>9.0f} {r.get('fills', ''):>7}  {'yes' if r['pass'] else 'NO'}")
    if args.json:
        for r in rows:
            r.update(cores=os.cpu_count(), report_workers=default_workers(), load_average=load)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
