"""``python -m fastrader.check``: a lookahead check for any strategy.

Takes every option of ``python -m fastrader.run`` (same data, strategy,
model and broker), plus the options of the check itself. The work is in
:mod:`fastrader.lookahead`; this module parses options and prints.

Exit codes: 0 no lookahead found; 1 lookahead (the first differing bar and
field are named); 2 bad input, or a strategy that raises in the full run
(one ``error:`` line); 3 the strategy is not
deterministic (two full runs differ), so lookahead cannot be judged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import FastraderError

EPILOG = """examples:
  python -m fastrader.check                                    # default strategy on the sample data
  python -m fastrader.check --strategy my_strategy.py:Mine --cuts 16 --json check.json
  python -m fastrader.check --data my_candles.csv --recompute-signals

exit codes: 0 no lookahead, 1 lookahead (first differing bar and field named),
2 bad input or a strategy that fails in the full run, 3 not deterministic (two
full runs differ; nothing is judged).
Output options of run (--out, --reports-dir, --no-tearsheet) are accepted and
ignored: the check writes no report, only --json.
"""

def _add_own(p: argparse.ArgumentParser, group: bool = True) -> None:
    g = p.add_argument_group("lookahead check") if group else p
    g.add_argument("--cuts", type=int, default=8, help="cut points spread over the traded bars; the backtest is re-run "
                   "on the data truncated at each (default: 8)")
    g.add_argument("--json", metavar="PATH", help="write the verdict and the per-cut results as JSON to PATH")
    g.add_argument("--jobs", type=int, help="processes running the backtests (default: 2 on 2+ cores; 1 for a "
                   "streaming strategy, whose model runs torch inside the backtest)")
    g.add_argument("--recompute-signals", action="store_true", help="also recompute the model's signals on each "
                   "truncated history and compare them with the full pass (checks the model end to end; by default "
                   "the truncated runs take the first rows of the full pass, which tests prove causal)")
    g.add_argument("--model-atol", type=float, default=1e-5, help="largest difference allowed between recomputed and "
                   "full-pass signals with --recompute-signals (float32 model; default: 1e-5)")


def build_parser() -> argparse.ArgumentParser:
    """``run``'s parser (all its options) plus the check's own group."""
    from .run import build_parser as run_parser

    p = run_parser()
    p.prog = "python -m fastrader.check"
    p.description = ("Lookahead check for any strategy: re-run the backtest on the data truncated at K cut points "
                     "and compare every signal, target, order, trade, position and equity value before each cut with "
                     "the full run. Takes every option of `python -m fastrader.run`.")
    p.epilog = EPILOG
    _add_own(p)
    return p


def parse(argv: list[str] | None):
    """(RunConfig, the check's own options). The run options go through ``fastrader.run.config_from_args``."""
    from .run import config_from_args

    argv = list(sys.argv[1:] if argv is None else argv)
    build_parser().parse_args(argv)  # --help, and one usage error for any bad option
    own = argparse.ArgumentParser(add_help=False)
    _add_own(own, group=False)
    opts, rest = own.parse_known_args(argv)
    return config_from_args(rest), opts


def main(argv: list[str] | None = None) -> int:
    from .lookahead import check, table, verdict
    from .pipeline import prepare

    try:
        cfg, opts = parse(argv)
        prep = prepare(cfg)
        for note in prep.notes:
            print(note)
        for line in prep.warnings:
            print(line, file=sys.stderr)
        report = check(prep, opts.cuts, jobs=opts.jobs, recompute_signals=opts.recompute_signals,
                       model_atol=opts.model_atol, progress=cfg.progress)
    except FastraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for note in report.notes:
        print(note)
    traded = len(prep.candles) - prep.start
    markets = getattr(prep, "markets", None) or []
    what = (f"{', '.join(m.name for m in markets)} (bars and cuts counted on {markets[0].name})" if len(markets) > 1
            else prep.source)
    print(f"fastrader check: {cfg.strategy} on {what}: {traded:,} traded bars from bar {prep.start:,}, "
          f"{len(report.cuts) or opts.cuts} cuts, {report.full_orders:,} orders in the full run, "
          f"{report.seconds:.1f} s ({report.jobs} process{'es' if report.jobs > 1 else ''})")
    if report.cuts:
        print(table(report))
    print(verdict(report), file=sys.stderr if report.status == "failed" else sys.stdout)
    if opts.json:
        out = {"strategy": cfg.strategy, "source": prep.source, "verdict": verdict(report), **report.to_dict()}
        try:
            Path(opts.json).write_text(json.dumps(out, indent=2) + "\n")
        except OSError as exc:
            print(f"error: cannot write --json {opts.json}: {exc}", file=sys.stderr)
            return 2
    return report.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
