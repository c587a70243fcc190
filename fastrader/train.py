"""``python -m fastrader.train``: train the signal model and write a checkpoint.

The shipped default checkpoint is reproduced by running this with no options.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import FastraderError
from .model.train import TrainConfig


def main(argv: list[str] | None = None) -> int:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m fastrader.train",
        description="Train the causal transformer on the training range of a candle file and save a "
        "safetensors checkpoint (weights + feature spec + normalisation + provenance).",
    )
    p.add_argument("--data", metavar="PATH", help="candles CSV/Parquet (default: the embedded sample)")
    p.add_argument("--out", metavar="PATH", help="checkpoint path (default: the package's default_model.safetensors)")
    p.add_argument("--train-frac", type=float, default=d.train_frac, help="fraction of bars used for training (default: %(default)s)")
    p.add_argument("--horizon", type=int, default=d.horizon, help="bars ahead the target looks (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per step (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="bars per window (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument("--attention", default=d.attention, choices=["auto", "fastrader", "sdpa", "flash"], help="attention backend (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    import torch

    from .data import load_candles
    from .model.checkpoint import DEFAULT_CHECKPOINT, save
    from .model.train import train
    from .pipeline import SAMPLE_DATA

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = TrainConfig(
        train_frac=args.train_frac,
        horizon=args.horizon,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        seed=args.seed,
        attention=args.attention,
    )
    try:
        df = load_candles(args.data or SAMPLE_DATA)
        ckpt, info = train(df, cfg, progress=not args.no_progress)
        info["command"] = "python -m fastrader.train " + " ".join(argv if argv is not None else sys.argv[1:])
        ckpt.train["command"] = info["command"]
        path = save(ckpt, args.out or DEFAULT_CHECKPOINT)
    except FastraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: info[k] for k in ("bars", "final_loss", "train_ic", "seconds")}, indent=2))
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
