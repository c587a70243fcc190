"""A/B of the small-head-dim mma.sync forward in one process: two key/value
stages and two barriers per tile (FASTRADER_FWD_STAGES=2) against three
stages and one barrier (FASTRADER_FWD_STAGES=3),
alternating, three times each, at the issue's D = 8/16/32 shapes and the
default model's. FA2-local's forward is timed beside them each round as the
peer the ratios are taken against. CUDA-graph replays, medians
(benchmarks/attention_cuda.py's bench).

    python benchmarks/fwd_small_ab_cuda.py [--json PATH]
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_cuda as ac  # noqa: E402

CASES = [(8, 8, 2048, 8, 256, 1), (8, 8, 2048, 16, 256, 1), (8, 8, 2048, 32, 256, 1), (16, 4, 512, 8, 48, 1)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: needs a CUDA GPU", file=sys.stderr)
        return 2
    import fastrader.attention  # noqa: F401

    rows, table = [], []
    for case in CASES:
        name = ac.case_name(*case)
        impls = ac.make_impls(*case, torch.bfloat16, False, None)
        fwd = impls["fastrader"][0]
        fa2 = impls["fa2-local"]
        outs = {}
        for mt in ("2", "3"):
            os.environ["FASTRADER_FWD_STAGES"] = mt
            outs[mt] = fwd().float()
        diff = (outs["2"] - outs["3"]).abs().max().item()
        times = {"st2": [], "st3": [], "fa2-local": []}
        for _ in range(a.rounds):
            for mt in ("2", "3"):
                os.environ["FASTRADER_FWD_STAGES"] = mt
                times["st" + mt].append(ac.bench(fwd))
            if not isinstance(fa2, str):
                times["fa2-local"].append(ac.bench(fa2[0]))
        os.environ.pop("FASTRADER_FWD_STAGES", None)
        med = {k: statistics.median(v) for k, v in times.items() if v}
        for impl, ms in med.items():
            rows.append({"case": name, "impl": impl if impl == "fa2-local" else f"fastrader-{impl}", "pass": "fwd",
                         "ms": ms})
        table.append((name, med, diff))
        del impls
    print(f"{'case':34s} {'st2 ms':>9s} {'st3 ms':>9s} {'fa2 ms':>9s} {'fa2/st2':>8s} {'fa2/st3':>8s} {'|st2-st3|':>10s}")
    for name, med, diff in table:
        f = med.get("fa2-local", float("nan"))
        print(f"{name:34s} {med['st2']:9.4f} {med['st3']:9.4f} {f:9.4f} {f / med['st2']:7.2f}x {f / med['st3']:7.2f}x "
              f"{diff:10.3g}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
