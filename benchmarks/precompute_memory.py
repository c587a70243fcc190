"""Benchmark: peak memory and time of precomputing signals over a very long history.

Generates a synthetic market of --bars one-minute bars (default 2.6M: five
years of minutes), writes it to a Parquet file, then in a fresh child
process loads it and runs ``SignalModel.precompute`` (chunked, bounded
memory) with the shipped default model. The child reports its peak RSS
(``ru_maxrss``: candles, features of one chunk, model activations, the
output and the interpreter with torch all included), the RSS before the
pass, and the wall time. ``--json PATH`` writes one row
{"case", "impl", "pass", "ms", "peak_rss_mib", "rss_before_mib", "bars"};
``ms`` is per bar.

    .venv/bin/python benchmarks/precompute_memory.py [--bars 2600000] [--chunk 65536] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(path: str, chunk: int) -> None:
    import resource

    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from fastrader.model.checkpoint import load
    from fastrader.signals import SignalModel

    df = pd.read_parquet(path)
    sm = SignalModel(load())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    sig = sm.precompute(df, chunk=chunk)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": secs, "peak_rss_mib": peak, "rss_before_mib": before, "bars": len(df),
                      "finite": int(np.isfinite(sig).sum())}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=2_600_000, help="bars of history (default: %(default)s)")
    ap.add_argument("--chunk", type=int, default=1 << 16, help="bars per precompute chunk (default: %(default)s)")
    ap.add_argument("--json", metavar="PATH", help="write the row as a JSON list")
    ap.add_argument("--child", metavar="PARQUET", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.chunk)
        return 0
    sys.path.insert(0, str(ROOT))
    from fastrader.synthetic import MarketParams, generate

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bars.parquet")
        t = time.perf_counter()
        df = generate(MarketParams(bars=args.bars), seed=3)
        df["timestamp"] = df["timestamp"].iloc[0] + 60_000 * (df.index.to_numpy())  # one-minute spacing
        df.to_parquet(path)
        print(f"generated {len(df):,} bars in {time.perf_counter() - t:.1f} s")
        del df
        res = subprocess.run([sys.executable, __file__, "--child", path, "--chunk", str(args.chunk)],
                             capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    row = {"case": f"default-{r['bars']}bars", "impl": "fastrader-precompute", "pass": "chunked",
           "ms": 1e3 * r["seconds"] / r["bars"], "seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"],
           "rss_before_mib": r["rss_before_mib"], "bars": r["bars"], "chunk": args.chunk}
    print(f"{r['bars']:,} bars precomputed in {r['seconds']:.1f} s ({row['ms'] * 1e3:.1f} us/bar); "
          f"peak RSS {r['peak_rss_mib']:.0f} MiB (before the pass {r['rss_before_mib']:.0f} MiB); "
          f"{r['finite']:,} finite signals")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([row], fh, indent=1)
        print(f"wrote 1 row to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
