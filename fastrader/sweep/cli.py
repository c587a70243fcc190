"""``python -m fastrader.sweep --config sweep.toml``: parse options, run the sweep, print the summary."""

from __future__ import annotations

import argparse
import sys

from ..errors import FastraderError

EPILOG = """examples:
  python -m fastrader.sweep --config examples/sweep.toml                 # local Ray runtime, all cores
  python -m fastrader.sweep --config examples/sweep.toml --backend local # process pool, same results
  python -m fastrader.sweep --config sweep.toml --address auto           # join the Ray cluster of this machine
  python -m fastrader.sweep --config sweep.toml --address ray://head:10001 --gpus-per-trial 0.25

A rerun with the same --out skips the trials whose results are there; a
killed sweep loses only the trials that were running. A Ray cluster runs
code for anyone who can reach its ports: keep it on a trusted network.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastrader.sweep",
        description="Sweep run options and strategy params: one backtest per trial, on Ray or a process pool; "
        "writes a ranked table (CSV, Parquet), a heatmap, the best trial's tearsheet and an overfitting report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="SWEEP.toml", required=True,
                   help="[sweep] settings, [run] options shared by all trials, [space] what varies (see examples/sweep.toml)")
    g = p.add_argument_group("where trials run (override [sweep])")
    g.add_argument("--backend", choices=["ray", "local"], help="ray (default): a local Ray runtime, or a cluster with "
                   "--address; local: a process pool on this machine, same results")
    g.add_argument("--workers", type=int, help="parallel trials on this machine (default: its cores)")
    g.add_argument("--address", help="join a Ray cluster: auto, or ray://host:port (default: start a local runtime "
                   "on 127.0.0.1 only, without the dashboard)")
    g.add_argument("--gpus-per-trial", type=float, help="GPU share asked of Ray by each task that runs the model, e.g. 0.25")
    g.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default 1); also its torch threads")
    g = p.add_argument_group("search and results (override [sweep])")
    g.add_argument("--search", choices=["grid", "random", "optuna"], help="grid (default), random, or optuna (extra)")
    g.add_argument("--trials", type=int, help="number of trials for random and optuna search")
    g.add_argument("--seed", type=int, help="seed of random and optuna search (default 0)")
    g.add_argument("--metric", help="ranking metric (default sharpe), any column of the table")
    g.add_argument("--mode", choices=["max", "min"], help="best is the max (default) or the min of the metric")
    g.add_argument("--out", metavar="DIR", help="results directory (default sweeps/<name>); rerunning into it resumes")
    g.add_argument("--holdout", metavar="TIME", help="first held-out bar (ISO date or UTC ms): trials see only bars "
                   "before it; the best are then backtested on the bars from it")
    g.add_argument("--holdout-top", type=int, help="how many of the best trials the held-out report backtests (default 5)")
    g.add_argument("--heatmap", nargs=2, metavar=("X", "Y"), help="swept keys of the heatmap (default: the first two)")
    g.add_argument("--retry-failed", action="store_true", default=None, help="run failed trials again on a resume")
    g.add_argument("--no-tearsheet", dest="tearsheet", action="store_false", default=None, help="skip the best trial's tearsheet")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    return p


def spec_from_args(argv=None):
    from .config import load_spec

    args = build_parser().parse_args(argv)
    spec = load_spec(args.config)
    for k, v in vars(args).items():
        if k != "config" and v is not None:
            setattr(spec, k, list(v) if k == "heatmap" else v)
    return spec.check()


def main(argv: list[str] | None = None) -> int:
    from .runner import run_sweep, summary_text

    try:
        spec = spec_from_args(argv)
        res = run_sweep(spec)
    except FastraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary_text(res, spec))
    if res.summary["trials"] and res.summary["failed"] == res.summary["trials"]:
        errors = set(res.table["error"])
        if len(errors) == 1 and str(next(iter(errors))).startswith(("ConfigError:", "DataError:", "CheckpointError:")):
            # one bad input made every trial fail: say it as the one line a bad option gets
            print(f"error: {next(iter(errors)).split(': ', 1)[1]}", file=sys.stderr)
            return 2
        print("error: every trial failed (see the error column of table.csv)", file=sys.stderr)
        return 1
    return 0
