"""Tokens/s of fastrader's own training loop on a GPU, with and without ``--compile``.

    python benchmarks/train_loop_cuda.py [--steps 30] [--json PATH]

``fastrader.model.train.train_speed``: the loop ``fastrader train`` runs (bf16
autocast forward, Huber loss, backward, fused AdamW), on the seed-size model
(5 features -> 64 wide, 4 layers, 8 heads of 8, W=256, one sink) at batch
16 x 2048, random inputs, median step time after warm-up steps (which pay the
compile). Attention through the model's own backends: ``fastrader`` (our op,
window plus the sink token) and ``flash`` (FlashAttention, window only, so the
model has no sink there). Dense SDPA is not one of the model's backends; the
comparison against it, and against the other peers, is
``benchmarks/train_cuda.py``.
Writes rows {"case", "impl", "pass", "ms", "tokens_per_s"} with --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: train_loop_cuda.py needs a CUDA device", file=sys.stderr)
        return 2
    from fastrader.model.presets import seed_config
    from fastrader.model.train import TrainConfig, train_speed

    rows = []
    for attention, sinks in (("fastrader", 1), ("flash", 0)):
        mc = seed_config(window=256, sinks=sinks)
        model = {f.name: getattr(mc, f.name) for f in dataclasses.fields(mc) if f.name != "n_features"}
        for compile_ in (False, True):
            cfg = TrainConfig(batch_size=16, seq_len=2048, device="cuda", attention=attention, compile=compile_,
                              model=model)
            try:
                tps = train_speed(cfg, mc.n_features, steps=args.steps, warmup=args.warmup)
            except Exception as exc:  # noqa: BLE001  (a peer that fails is reported)
                print(f"  {attention:10s} compile={compile_}: failed: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            impl = f"{attention}{' (no sink)' if not sinks else ''}"
            mode = "loop --compile" if compile_ else "loop"
            ms = 16 * 2048 / tps * 1e3
            rows.append({"case": "seed model B=16,N=2048 fastrader.train loop", "impl": impl, "pass": mode,
                         "ms": ms, "tokens_per_s": tps})
            print(f"  {impl:20s} {mode:15s} {ms:8.3f} ms/step {tps:12.0f} tokens/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
