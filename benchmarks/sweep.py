"""Benchmark: a 48-trial sweep on Ray and on the process pool, at 1 and 2 workers, and Backtrader's optstrategy.

The grid is that of ``examples/sweep.toml`` (the shipped model's strategy,
threshold x exit threshold x shorting = 48 trials) on the synthetic sample
from --start. For each worker count, each backend is started and warmed up
(workers spawned, modules imported, by a 2-trial sweep) outside the timing,
then the 48-trial sweep is timed from its first submission to its last
record on disk; that includes the one shared prepare() (candles, model,
signals), the metrics of every trial and the atomic record writes.

* ``agree``: the Ray and pool tables are equal row for row (every metric,
  timing columns aside);
* ``overhead``: Ray's time per trial over the pool's, minus 1 (target <= 10%); both
  backends are up at once and their sweeps alternate, medians over --repeats;
* the peer is Backtrader's own ``cerebro.optstrategy`` over the same bars
  and precomputed signals (given to it for free), one process
  (``maxcpus=1``), the same broker and strategy class; ``pass`` there means its
  final equity equals our trial's, combination by combination.

Ray's runtime start is reported on its own (``ray start``), not inside the
per-trial numbers. On a shared machine, other work inflates and scatters
these times; rerun on an idle one.

    .venv/bin/python benchmarks/sweep.py [--start 2022-10-01] [--workers 1,2] [--repeats 1] [--json out.json]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

GRID = {"threshold": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0], "params.exit_threshold": [0.0, 0.25, 0.5, 0.75],
        "params.allow_short": [True, False]}
TIMING = ["seconds", "bars_per_s", "node"]


def spec(out, backend, workers, start, space=GRID):
    from fastrader.sweep import spec_from_dict

    return spec_from_dict({"sweep": {"backend": backend, "workers": workers, "progress": False, "tearsheet": False,
                                     "out": str(out)},
                           "run": {"strategy": "model", "start": start},
                           "space": space})


def timed_sweep(backend_obj, backend, workers, start, tmp):
    from fastrader.sweep import run_sweep

    warm = {"threshold": [0.9, 1.1], "params.exit_threshold": [0.1], "params.allow_short": [True]}
    run_sweep(spec(tmp / f"warm-{backend}-{workers}", backend, workers, start, warm), echo=lambda *a: None,
              backend=backend_obj)
    out = tmp / f"{backend}-{workers}-{time.time_ns()}"
    res = run_sweep(spec(out, backend, workers, start), echo=lambda *a: None, backend=backend_obj)
    assert res.failed == 0, res.table["error"].dropna().head()
    return res.summary["trials_seconds"], res.table


def optstrategy_peer(start):
    """Backtrader's optstrategy over the grid, one process; returns (seconds, {(th, ex, short): final equity})."""
    import backtrader as bt

    from fastrader.analyzers import EquityRecorder
    from fastrader.broker import make_broker
    from fastrader.data import make_feed
    from fastrader.pipeline import RunConfig, prepare

    cfg = RunConfig(strategy="model", start=start, progress=False, tearsheet=False)
    prep = prepare(cfg)
    traded = prep.candles.iloc[prep.start:].reset_index(drop=True).copy()
    traded["signal"] = prep.signal[prep.start:]
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True, optreturn=True)
    cerebro.adddata(make_feed(traded, name=prep.name), name=prep.name)
    cerebro.broker = make_broker(cfg.cash, cfg.commission, cfg.slippage_bps, cfg.borrow_rate)
    cerebro.optstrategy(prep.strategy_cls, threshold=GRID["threshold"], exit_threshold=GRID["params.exit_threshold"],
                        allow_short=GRID["params.allow_short"])
    cerebro.addanalyzer(EquityRecorder, _name="equity")
    t0 = time.perf_counter()
    runs = cerebro.run(maxcpus=1)
    seconds = time.perf_counter() - t0
    finals = {}
    for r in runs:
        s = r[0]
        finals[(float(s.p.threshold), float(s.p.exit_threshold), bool(s.p.allow_short))] = float(
            s.analyzers.equity.get_analysis()[-1][1])  # (dt, value, cash, position) of the last bar
    return seconds, finals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", default="2022-10-01", help="first traded bar of the sample (default 2022-10-01)")
    ap.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    ap.add_argument("--repeats", type=int, default=2, help="timed sweeps per backend and worker count, alternating (median)")
    ap.add_argument("--no-peer", action="store_true", help="skip Backtrader's optstrategy")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    args = ap.parse_args(argv)

    import pandas as pd

    from fastrader.sweep.backends import LocalBackend, RayBackend

    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    rows, tables, per = [], {}, {}
    n = 48
    for w in [int(x) for x in args.workers.split(",")]:
        # Both backends up at once and timed in alternating order, so that load from other work
        # on the machine hits them alike; medians over --repeats.
        backends, startup = {}, {}
        for name in ("local", "ray"):
            t0 = time.perf_counter()
            backends[name] = LocalBackend(w, tmp / "shared") if name == "local" else RayBackend(workers=w)
            backends[name].start(echo=lambda *a: None)
            startup[name] = time.perf_counter() - t0
        times = {"local": [], "ray": []}
        try:
            for rep in range(args.repeats):
                for name in (("local", "ray") if rep % 2 == 0 else ("ray", "local")):
                    s, table = timed_sweep(backends[name], name, w, args.start, tmp)
                    times[name].append(s)
                    tables[(name, w)] = table.drop(columns=[c for c in TIMING if c in table]).reset_index(drop=True)
        finally:
            for b in backends.values():
                b.close()
        for name in ("local", "ray"):
            med = statistics.median(times[name])
            per[(name, w)] = med / n
            rows.append({"case": f"{n} trials, {w} worker{'s' if w > 1 else ''}", "impl": f"fastrader sweep ({name})",
                         "pass": True, "ms": med * 1000, "trials_per_min": n / med * 60, "startup_s": startup[name],
                         "runs_s": times[name]})
    # agreement and overhead
    for w in sorted({k[1] for k in per}):
        a, b = tables[("ray", w)], tables[("local", w)]
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
            same = True
        except AssertionError:
            same = False
        over = per[("ray", w)] / per[("local", w)] - 1
        for r in rows:
            if r["case"].startswith(f"{n} trials, {w} worker") and r["impl"].endswith("(ray)"):
                r["pass"] = same and over <= 0.10
                r["agree"] = same
                r["overhead_vs_pool"] = over
    if not args.no_peer:
        s, finals = optstrategy_peer(args.start)
        ours = tables[("local", min(k[1] for k in per))]
        ok = all(abs(finals[(float(r["threshold"]), float(r["params.exit_threshold"]), bool(r["params.allow_short"]))]
                     - r["final_equity"]) <= 1e-6 * abs(r["final_equity"]) for _, r in ours.iterrows())
        rows.append({"case": f"{n} trials, 1 worker", "impl": "backtrader optstrategy (maxcpus=1)", "pass": ok,
                     "ms": s * 1000, "trials_per_min": n / s * 60})

    print(f"sweep benchmark: {n} trials of the model strategy on the sample from {args.start} "
          f"({os.cpu_count()} cores; medians of {args.repeats})")
    print(f"{'case':<22} {'impl':<36} {'trials/min':>10} {'s':>8} {'vs pool':>8} {'agree':>6} {'start s':>8} {'pass':>5}")
    for r in rows:
        ov = f"{r['overhead_vs_pool'] * 100:+.1f}%" if "overhead_vs_pool" in r else ""
        ag = str(r.get("agree", "")) if "agree" in r else ""
        st = f"{r['startup_s']:.1f}" if "startup_s" in r else ""
        print(f"{r['case']:<22} {r['impl']:<36} {r['trials_per_min']:>10.1f} {r['ms'] / 1000:>8.1f} {ov:>8} {ag:>6} "
              f"{st:>8} {str(r['pass']):>5}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
