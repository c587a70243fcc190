"""``python -m fastrader.walkforward``: retrain every K bars, stitch the out-of-sample signals.

Writes into ``--out DIR``: ``signals.csv`` (``timestamp`` in UTC ms,
``signal``; only out-of-sample bars, ready for ``python -m fastrader.run
--signals``), ``folds.csv`` (per-fold ranges and OOS metrics), ``summary.json``
and ``oos_ic.png`` (OOS IC per fold); with ``--save-models`` also each fold's
checkpoint. Training options are those of ``python -m fastrader.train`` and
may come from ``--config FILE.toml`` (walk-forward keys too: ``train-bars``,
``step-bars``, ``mode``, ``embargo``, ``folds``, ``workers``).
"""

from __future__ import annotations

import sys

from .errors import ConfigError, FastraderError

_WF_OPTS = {"train_bars": int, "step_bars": int, "mode": str, "embargo": int, "folds": int, "workers": int}


def main(argv: list[str] | None = None) -> int:
    from .train import _read_toml, build_parser, config_from_args

    p = build_parser()
    p.prog = "python -m fastrader.walkforward"
    p.description = ("Walk-forward: retrain the model every --step-bars bars on a rolling or expanding window "
                     "(with an embargo of the horizon), score each fold only on its own out-of-sample segment, "
                     "and write the stitched out-of-sample signals, a per-fold metrics table and a chart.")
    g = p.add_argument_group("walk-forward")
    g.add_argument("--train-bars", type=int, help="fit window in bars (rolling; the first fit when expanding) (default: 5000)")
    g.add_argument("--step-bars", type=int, help="retrain every K bars: the length of each out-of-sample segment (default: 1000)")
    g.add_argument("--mode", choices=["rolling", "expanding"], help="fit window kind (default: rolling)")
    g.add_argument("--embargo", type=int, help="bars between a fit window and its segment (default: the horizon)")
    g.add_argument("--folds", type=int, help="at most this many folds (default: as many as the data allows)")
    g.add_argument("--workers", type=int, help="processes for the folds (default: min(folds, CPUs))")
    g.add_argument("--save-models", action="store_true", help="also write each fold's checkpoint into --out")
    p.set_defaults(out=None)
    for a in p._actions:  # --out is a directory here
        if a.dest == "out":
            a.help = "output directory (default: walkforward/)"
        if a.dest in ("resume", "stop_after"):
            a.help = "not used by walk-forward"
    args = p.parse_args(argv)
    try:
        if args.resume or args.stop_after:
            raise ConfigError("--resume and --stop-after are training-only options")
        file = _read_toml(args.config, extra=_WF_OPTS) if args.config else {}
        tcfg, io = config_from_args(args, file)
        if not ({"train_frac", "val_frac"} & (set(file) | {k for k in ("train_frac", "val_frac") if getattr(args, k) is not None})):
            tcfg.train_frac, tcfg.val_frac = 0.8, 0.2  # a fold has no test split: its OOS segment is the test
        tcfg.check()
        kw = {}
        for k, typ in _WF_OPTS.items():
            v = getattr(args, k) if getattr(args, k) is not None else file.get(k)
            if v is not None:
                try:
                    kw[k] = typ(v)
                except (TypeError, ValueError):
                    raise ConfigError(f"{k} must be a {typ.__name__}, got {v!r}") from None
        from .data import load_candles
        from .model.walkforward import WalkForwardConfig, format_table, walk_forward, write_outputs
        from .pipeline import SAMPLE_DATA

        cfg = WalkForwardConfig(train=tcfg, **kw)
        cfg.check()
        df = load_candles(io["data"] or SAMPLE_DATA)
        out = io["out"] or "walkforward"
        res = walk_forward(df, cfg, progress=not args.no_progress, ckpt_dir=out if args.save_models else None)
        paths = write_outputs(res, out)
    except FastraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(res))
    print(f"signals: {paths['signals']}\nfolds: {paths['folds']}\nchart: {paths['chart']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
