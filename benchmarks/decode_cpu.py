"""Benchmark: the CPU decode kernels, one call per bar (bar-by-bar streaming).

Two ops of our extension, each against the fallback that runs where it is not
built (the same arithmetic in plain torch / numpy, also ours: the point here
is the compiled kernels' speed, e.g. portable vs -march=native builds via
benchmarks/build_variants.py; benchmarks/signals.py compares streaming with
the peers' recompute-per-bar):

* ``step-*``: ``fastrader::decode_step``, one whole CausalTransformer step
  (``IncrementalModel.step``) vs ``IncrementalModel._step_numpy``, at the
  shipped model's size (16 features, 32 wide, 2 layers, window 48) and the
  seed size (5 -> 64 wide, 4 layers, 8 heads) at window 256 and 2048;
* ``attn-*``: ``fastrader::sparse_attn_decode`` alone vs the plain-torch
  gather (``fastrader.attention.ops._decode_torch``).

Untrained weights (speed does not depend on them), every ring full. ``ms``
is the median over blocks of calls of the per-call time, after a warm-up;
``--clock cpu`` uses process CPU time (steadier on a busy machine).

    python benchmarks/decode_cpu.py [--clock cpu] [--json out.json]

Rows written by --json: {"case", "impl", "pass": "per-call", "ms"}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastrader.attention import available  # noqa: E402
from fastrader.attention.ops import _decode_torch, decode_cache_slots  # noqa: E402
from fastrader.model import CausalTransformer, ModelConfig  # noqa: E402
from fastrader.model.decode import IncrementalModel  # noqa: E402

STEP_CASES = {
    "step-default": dict(n_features=16, d_model=32, n_heads=4, n_layers=2, d_ff=64, window=48, dilations=[1, 4]),
    "step-seed-W256": dict(n_features=5, d_model=64, n_heads=8, n_layers=4, d_ff=128, window=256,
                           dilations=[1, 1, 1, 1]),
    "step-seed-W2048": dict(n_features=5, d_model=64, n_heads=8, n_layers=4, d_ff=128, window=2048,
                            dilations=[1, 1, 1, 1]),
}
# (batch, heads, head_dim, window, dilation, sinks)
ATTN_CASES = {
    "attn-B1-H8-D8-W2048": (1, 8, 8, 2048, 1, 1),
    "attn-B1-H8-D64-W256": (1, 8, 64, 256, 1, 1),
    "attn-B32-H8-D64-W256": (32, 8, 64, 256, 1, 1),
}

_CLOCK = time.perf_counter


def per_call_ms(fn, calls: int, blocks: int) -> float:
    for _ in range(max(3, calls // 10)):
        fn()
    times = []
    for _ in range(blocks):
        t0 = _CLOCK()
        for _ in range(calls):
            fn()
        times.append((_CLOCK() - t0) * 1e3 / calls)
    return statistics.median(times)


def step_rows(blocks: int):
    rows = []
    rng = np.random.default_rng(0)
    for case, kw in STEP_CASES.items():
        torch.manual_seed(0)
        model = CausalTransformer(ModelConfig(**kw)).eval()
        im = IncrementalModel(model)
        im.cache[:] = rng.standard_normal(im.cache.shape).astype(np.float32)
        im.bars = max(kw["window"] * d for d in kw["dilations"]) + 10  # every window full
        x = rng.standard_normal(kw["n_features"]).astype(np.float32)
        impls = {"numpy-step": im._step_numpy}
        if im._fused is not None:
            impls = {"fastrader": lambda: im.step(x), **impls}
        for impl, fn in impls.items():
            f = fn if impl == "fastrader" else (lambda fn=fn: fn(x))
            calls = 200 if impl == "fastrader" else 20
            rows.append({"case": case, "impl": impl, "pass": "per-call", "ms": per_call_ms(f, calls, blocks)})
    return rows


def attn_rows(blocks: int):
    rows = []
    g = torch.Generator().manual_seed(1)
    for case, (B, H, D, W, dil, sinks) in ATTN_CASES.items():
        S = decode_cache_slots(W, dil, sinks)
        q = torch.randn(B, H, D, generator=g)
        k = torch.randn(B, H, S, D, generator=g)
        v = torch.randn(B, H, S, D, generator=g)
        pos = torch.full((B,), sinks + W * dil + 5, dtype=torch.int64)
        scale = D**-0.5
        impls = {"torch-gather": lambda: _decode_torch(q, k, v, pos, W, dil, sinks, scale)}
        if available():
            op = torch.ops.fastrader.sparse_attn_decode
            impls = {"fastrader": lambda: op(q, k, v, pos, W, dil, sinks, scale), **impls}
        for impl, fn in impls.items():
            calls = 200 if impl == "fastrader" else 20
            rows.append({"case": case, "impl": impl, "pass": "per-call", "ms": per_call_ms(fn, calls, blocks)})
    return rows


def main(argv=None):
    global _CLOCK
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one bar, one sequence)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--blocks", type=int, default=7, help="timed blocks of calls (median)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    _CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    rows = step_rows(a.blocks) + attn_rows(a.blocks)
    best = {r["case"]: r["ms"] for r in rows if r["impl"] == "fastrader"}
    print(f"{'case':<24} {'impl':<14} {'ms/call':>10} {'vs fastrader':>13}")
    for r in rows:
        rel = f"{r['ms'] / best[r['case']]:.2f}x" if r["case"] in best else ""
        print(f"{r['case']:<24} {r['impl']:<14} {r['ms']:>10.4f} {rel:>13}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
