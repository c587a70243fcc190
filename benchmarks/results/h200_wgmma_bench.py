"""A/B of the sparse-attention forward kernels in one process: mma.sync
(FASTRADER_CUDA_FWD=mma) against the default dispatch (the wgmma kernel on
sm_90), alternating, twice each, through benchmarks/attention_cuda.py's
make_impls and bench (CUDA-graph replays, median ms). fa2-local's forward
is timed once per case as a cross-run reference.

    python benchmarks/results/h200_wgmma_bench.py [--json PATH] [--d128]
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import attention_cuda as ac  # noqa: E402

CASES = [(1, 8, 131072, 64, 1024, 1), (1, 8, 131072, 64, 256, 1), (4, 16, 16384, 64, 512, 1)]
D128 = [(4, 16, 16384, 128, 512, 1), (1, 8, 131072, 128, 1024, 1)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--d128", action="store_true")
    p.add_argument("--no-bwd", action="store_true")
    a = p.parse_args()
    import fastrader.attention  # noqa: F401

    rows = []
    for case in CASES + (D128 if a.d128 else []):
        name = ac.case_name(*case)
        impls = ac.make_impls(*case, torch.bfloat16, False, None)
        fwd, fb, _ = impls["fastrader"]
        outs = {}
        for mode in ("mma", "auto"):
            os.environ["FASTRADER_CUDA_FWD"] = mode
            outs[mode] = fwd().float()
        err = (outs["mma"] - outs["auto"]).abs().max().item()
        for rep in (1, 2):
            for mode in ("mma", "auto"):
                os.environ["FASTRADER_CUDA_FWD"] = mode
                impl = "fastrader-" + ("mma" if mode == "mma" else "default")
                rows.append({"case": name, "impl": impl, "pass": "fwd", "ms": ac.bench(fwd), "rep": rep})
                if not a.no_bwd:
                    rows.append({"case": name, "impl": impl, "pass": "fwd+bwd", "ms": ac.bench(fb), "rep": rep})
                print(f"  {name:34s} {impl:18s} rep{rep} " +
                      " ".join(f"{r['pass']}={r['ms']:.4f}" for r in rows[-(1 if a.no_bwd else 2):]), flush=True)
        os.environ.pop("FASTRADER_CUDA_FWD", None)
        fa2 = impls["fa2-local"]
        if not isinstance(fa2, str):
            rows.append({"case": name, "impl": "fa2-local", "pass": "fwd", "ms": ac.bench(fa2[0]), "rep": 1})
        print(f"  {name}: max |mma - default| = {err:.3g}", flush=True)
        rows.append({"case": name, "impl": "check", "pass": "max_abs_diff", "ms": err, "rep": 0})
        del impls
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(f"\n{'case':34s} {'pass':8s} {'mma ms':>15s} {'default ms':>15s} {'mma/default':>11s} {'fa2 fwd':>8s}")
    for name in dict.fromkeys(r["case"] for r in rows):
        for pas in ("fwd", "fwd+bwd"):
            m = sorted(r["ms"] for r in rows if r["case"] == name and r["impl"] == "fastrader-mma" and r["pass"] == pas)
            d = sorted(r["ms"] for r in rows if r["case"] == name and r["impl"] == "fastrader-default" and r["pass"] == pas)
            if not m:
                continue
            f2 = [r["ms"] for r in rows if r["case"] == name and r["impl"] == "fa2-local"]
            print(f"{name:34s} {pas:8s} {' '.join(f'{x:.3f}' for x in m):>15s} {' '.join(f'{x:.3f}' for x in d):>15s} "
                  f"{min(m) / min(d):11.2f} {f2[0] if f2 and pas == 'fwd' else float('nan'):8.3f}")


if __name__ == "__main__":
    main()
