"""Benchmark: model signals per bar -- precomputed, streamed with KV caches, or recomputed.

Over the real BTC/USDT hours (``../shared/data/binance_BTCUSDT_1h.csv``, or
``--data``), in one process, for three models:

* ``default``: the shipped checkpoint (16 features, 32-wide, 2 layers);
* ``seed-W256`` / ``seed-W2048``: the seed size (5 features -> 64-wide, 4
  layers, 8 heads), window 256 / 2048 bars per layer, untrained (random
  init; speed does not depend on the weights).

Implementations (``impl``):

* ``fastrader-precompute``: ``SignalModel.precompute`` over all bars (one
  chunked causal pass), wall time divided by the bars;
* ``fastrader-stream``: ``SignalStream.update`` one bar at a time (features
  incremental, per-layer ring-buffer KV caches), each bar timed; ``ms`` is
  the median, ``p99_ms`` the 99th percentile;
* ``recompute``: what a live loop without caches does (the peers' way,
  e.g. freqtrade/FreqAI or a hand-written Backtrader indicator): re-run the
  model over the last W bars for every new bar (W = the receptive field for
  ``default``, the window for the seed models), features precomputed and
  not counted; the best of 1 thread and all threads is kept.

``--json PATH`` writes rows {"case", "impl", "pass": "per-bar", "ms",
"p99_ms" (stream), "bars"}; ``--train`` adds training throughput rows
(``pass`` "train", tokens/s) of the seed model at sequence 2048 with
``--attention fastrader`` against ``sdpa``.

    .venv/bin/python benchmarks/signals.py [--json out.json] [--train] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastrader.model.checkpoint import load  # noqa: E402
from fastrader.model.presets import SEED_FEATURES, seed_config, untrained_checkpoint  # noqa: E402
from fastrader.signals import SignalModel  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_BTCUSDT_1h.csv"


def model_for(case: str, df: pd.DataFrame) -> tuple[SignalModel, int]:
    if case == "default":
        sm = SignalModel(load())
        return sm, sm.receptive_field
    w = int(case.split("-W")[1])
    return SignalModel(untrained_checkpoint(seed_config(w), SEED_FEATURES, df.iloc[:6000])), w


def time_precompute(sm, df, repeat):
    sm.precompute(df.iloc[:5000])  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        sm.precompute(df)
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts)) / len(df)


def time_stream(sm, df, bars):
    start = len(df) - bars
    st = sm.stream(df.iloc[:start])  # caches filled from the history in one batch
    o, h, l, c, v = (df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))  # noqa: E741
    ts = np.empty(bars)
    for i in range(start, len(df)):
        t = time.perf_counter()
        st.update(o[i], h[i], l[i], c[i], v[i])
        ts[i - start] = time.perf_counter() - t
    ts = ts[min(50, bars // 10) :]  # the first calls warm caches and the allocator
    return 1e3 * float(np.median(ts)), 1e3 * float(np.percentile(ts, 99))


def time_recompute(sm, df, W, bars):
    """Median ms per bar, and the torch thread count that gave it: the peer gets its best of 1 or all threads
    (on a busy 2-core machine one thread is often faster for these small passes)."""
    z = sm.features(df)
    valid = np.isfinite(z).all(axis=1)
    x = torch.from_numpy(np.where(valid[:, None], z, 0.0).astype(np.float32))
    best = None
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        ts = []
        with torch.inference_mode():
            for t in range(len(df) - bars - 2, len(df)):
                t0 = time.perf_counter()
                sm.model(x[t - W + 1 : t + 1][None])[0, -1].item()
                ts.append(time.perf_counter() - t0)
        med = 1e3 * float(np.median(ts[2:]))
        if best is None or med < best[0]:
            best = (med, threads)
    torch.set_num_threads(default_threads)
    return best


def train_rows(quick: bool):
    from fastrader.model.train import TrainConfig, train_speed

    rows = []
    for w in (256, 2048):
        cfg = seed_config(w)
        model = {k: getattr(cfg, k) for k in ("d_model", "n_heads", "n_layers", "d_ff", "window", "dilations", "sinks")}
        for impl in ("fastrader", "sdpa"):
            tc = TrainConfig(seq_len=2048, batch_size=2 if quick else 4, attention=impl, model=model)
            tok = train_speed(tc, n_features=len(SEED_FEATURES.names), steps=2 if quick else 5)
            rows.append({"case": f"seed-W{w}-seq2048", "impl": impl, "pass": "train",
                         "ms": 1e3 * tc.batch_size * tc.seq_len / tok, "tokens_per_s": tok,
                         "batch": tc.batch_size})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REAL), help="candles CSV (default: the real BTC/USDT hours in ../shared)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    ap.add_argument("--repeat", type=int, default=3, help="precompute passes to take the median of (default: 3)")
    ap.add_argument("--stream-bars", type=int, default=10000, help="bars streamed and timed per case (default: 10000)")
    ap.add_argument("--recompute-bars", type=int, default=60, help="bars recomputed and timed per case (default: 60)")
    ap.add_argument("--cases", default="default,seed-W256,seed-W2048", help="comma-separated cases")
    ap.add_argument("--train", action="store_true", help="also training tokens/s, fastrader vs sdpa attention")
    ap.add_argument("--quick", action="store_true", help="fewer bars and steps (a smoke run)")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"error: candles not found: {args.data}", file=sys.stderr)
        return 2
    df = pd.read_csv(args.data)
    if args.quick:
        args.stream_bars, args.recompute_bars, args.repeat = 1000, 10, 1
    print(f"{len(df):,} bars from {args.data}; torch threads {torch.get_num_threads()}")
    rows = []
    for case in args.cases.split(","):
        sm, W = model_for(case, df)
        pre = time_precompute(sm, df, args.repeat)
        med, p99 = time_stream(sm, df, min(args.stream_bars, len(df) - 1))
        rec, rec_threads = time_recompute(sm, df, W, args.recompute_bars)
        rows += [
            {"case": case, "impl": "fastrader-precompute", "pass": "per-bar", "ms": pre, "bars": len(df)},
            {"case": case, "impl": "fastrader-stream", "pass": "per-bar", "ms": med, "p99_ms": p99,
             "bars": min(args.stream_bars, len(df) - 1)},
            {"case": case, "impl": "recompute", "pass": "per-bar", "ms": rec, "bars": args.recompute_bars, "window": W,
             "threads": rec_threads},
        ]
        print(f"  {case}: precompute {pre:.4f} ms/bar, stream {med:.4f} (p99 {p99:.3f}), recompute {rec:.3f} (W={W})",
              flush=True)
    if args.train:
        rows += train_rows(args.quick)

    print(f"\n{'case':<18} {'impl':<22} {'pass':<8} {'ms':>10} {'p99_ms':>8} {'vs recompute':>13}")
    rec = {r["case"]: r["ms"] for r in rows if r["impl"] == "recompute"}
    for r in rows:
        ratio = f"{rec[r['case']] / r['ms']:,.0f}x" if r["case"] in rec and r["impl"] != "recompute" else ""
        p99 = f"{r['p99_ms']:.3f}" if "p99_ms" in r else ""
        extra = f"  {r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else ""
        print(f"{r['case']:<18} {r['impl']:<22} {r['pass']:<8} {r['ms']:>10.4f} {p99:>8} {ratio:>13}{extra}")
    train = {(r["case"], r["impl"]): r["tokens_per_s"] for r in rows if r["pass"] == "train"}
    for case in sorted({c for c, _ in train}):
        print(f"{case}: fastrader / sdpa training throughput = {train[(case, 'fastrader')] / train[(case, 'sdpa')]:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
