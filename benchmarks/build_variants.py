"""Benchmark: the portable (dispatching) build against a -march=native build.

Runs ``benchmarks/attention_cpu.py``, ``benchmarks/features.py`` and
``benchmarks/decode_cpu.py`` of each
build tree in turn, interleaved round by round (so a busy machine slows both
alike), and prints the median of every fastrader case per build and the
ratio portable / native. Each TREE is a checkout with its compiled modules in
place, e.g. one built with ``python setup.py build_ext --inplace`` and a copy
built with ``FASTRADER_NATIVE=1 python setup.py build_ext --inplace``.

    python benchmarks/build_variants.py --portable . --native /tmp/native_tree [--rounds 5] [--json out.json]

Times are process CPU time by default (--clock cpu; attention with --threads
1), which a busy machine disturbs far less than wall-clock time. Each build's
figure is the fastest round by default (--stat min): contention from other
processes (a hyperthread sibling, a shared cache) only ever adds time, so the
least-disturbed round is the closest to the code's own speed; --stat median
gives the median round instead.

Rows written by --json: {"case", "impl", "pass", "ms"} with impl
``portable`` or ``native`` (the medians over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

BENCHES = {
    "attention": ["benchmarks/attention_cpu.py", "--quick", "--slow-reps", "1"],
    "features": ["benchmarks/features.py", "--repeat", "9"],
    "decode": ["benchmarks/decode_cpu.py"],
}


def run_bench(tree, args, extra):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        cmd = [sys.executable, os.path.join(tree, args[0]), *args[1:], *extra, "--json", out]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tree)
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def fastrader_rows(rows, metric):
    # Only our own implementation: the peers' code is the same in both builds.
    return {(r["case"], r["pass"]): r.get(metric, r["ms"]) for r in rows if r["impl"].startswith("fastrader")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--portable", required=True, metavar="TREE")
    ap.add_argument("--native", required=True, metavar="TREE")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="attention threads (1: steadier on a busy machine)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                    help="cpu (default): process CPU time, steadier on a busy shared machine")
    ap.add_argument("--stat", choices=("min", "median"), default="min",
                    help="min (default): the fastest round of each build; median: the median round")
    ap.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only this benchmark")
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    trees = {"portable": os.path.abspath(a.portable), "native": os.path.abspath(a.native)}
    times = defaultdict(list)  # (bench, case, pass, build) -> [ms]
    for rnd in range(a.rounds):
        for bench in a.only or sorted(BENCHES):
            extra = ["--threads", str(a.threads), "--clock", a.clock] if bench in ("attention", "decode") else []
            metric = "cpu_ms" if bench == "features" and a.clock == "cpu" else "ms"
            order = list(trees) if rnd % 2 == 0 else list(trees)[::-1]
            for build in order:
                for (case, pss), ms in fastrader_rows(run_bench(trees[build], BENCHES[bench], extra), metric).items():
                    times[(bench, case, pss, build)].append(ms)
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
    keys = sorted({k[:3] for k in times})
    rows = []
    print(f"{a.stat} of {a.rounds} rounds, {a.clock} time; ratio = portable / native")
    print(f"{'bench':<10} {'case':<34} {'pass':<8} {'portable ms':>12} {'native ms':>10} {'ratio':>6}")
    for bench, case, pss in keys:
        agg = min if a.stat == "min" else statistics.median
        p = agg(times[(bench, case, pss, "portable")])
        n = agg(times[(bench, case, pss, "native")])
        print(f"{bench:<10} {case:<34} {pss:<8} {p:>12.2f} {n:>10.2f} {p / n:>6.3f}")
        rows += [
            {"case": f"{bench}:{case}", "impl": "portable", "pass": pss, "ms": p},
            {"case": f"{bench}:{case}", "impl": "native", "pass": pss, "ms": n},
        ]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
