"""``python -m fastrader.train``: train the signal model and write a checkpoint.

Options come from the command line or ``--config train.toml`` (same names,
dashes or underscores; the command line wins). Model options go either as
flags (``--d-model 64 --layers 4 ...``) or in a ``[model]`` table. Writes the
checkpoint, ``<name>.metrics.json`` beside it (MSE, MAE, R^2, directional
accuracy, IC, rank IC on train/validation/test) and ``<name>.state.safetensors``
(the resumable training state; ``--resume`` it to continue).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ConfigError, FastraderError
from .model.train import TARGETS, TrainConfig

# flag -> (TrainConfig field, type)
_RUN_OPTS = {
    "train_frac": float, "val_frac": float, "horizon": int, "target": str, "cost": float, "vol_window": int,
    "steps": int, "batch_size": int, "seq_len": int, "lr": float, "min_lr_frac": float, "warmup": int,
    "weight_decay": float, "grad_clip": float, "eval_every": int, "patience": int, "seed": int,
    "attention": str, "device": str, "compile": "bool",
}
# flag -> ModelConfig field
_MODEL_OPTS = {"d_model": "d_model", "layers": "n_layers", "heads": "n_heads", "d_ff": "d_ff", "window": "window",
               "dilations": "dilations", "sinks": "sinks", "dropout": "dropout", "conv_kernel": "conv_kernel"}


def _dilations(s) -> list[int]:
    if isinstance(s, list):
        return [int(x) for x in s]
    try:
        return [int(x) for x in str(s).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"dilations must be comma-separated integers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m fastrader.train",
        description="Train the causal transformer on the training split of a candle file, pick the best step on "
        "the validation split, score the test split, and save a safetensors checkpoint (weights + feature spec "
        "+ normalisation + provenance) with its metrics JSON beside it.",
    )
    p.add_argument("--config", metavar="FILE.toml", help="options from a TOML file (the command line wins)")
    p.add_argument("--data", metavar="PATH", help="candles CSV/Parquet (default: the embedded sample)")
    p.add_argument("--out", metavar="PATH", help="checkpoint path (default: the package's default_model.safetensors)")
    p.add_argument("--resume", metavar="STATE", help="continue from a .state.safetensors file of an earlier run")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N steps in all, saving the resumable state")
    g = p.add_argument_group("data and target")
    g.add_argument("--train-frac", type=float, help=f"fraction of bars in the training split (default: {d.train_frac})")
    g.add_argument("--val-frac", type=float, help=f"fraction in the validation split; the rest is test (default: {d.val_frac})")
    g.add_argument("--horizon", type=int, help=f"bars ahead the target looks; also the embargo between splits (default: {d.horizon})")
    g.add_argument("--target", choices=TARGETS, help=f"return (Huber), direction (logistic) or position (PnL minus cost) (default: {d.target})")
    g.add_argument("--cost", type=float, help=f"position target: cost per unit of position change (default: {d.cost})")
    g.add_argument("--vol-window", type=int, help=f"bars of the volatility that scales the target (default: {d.vol_window})")
    g = p.add_argument_group("model")
    m = ModelDefaults()
    g.add_argument("--d-model", type=int, help=f"width (default: {m.d_model})")
    g.add_argument("--layers", type=int, help=f"transformer blocks (default: {m.n_layers})")
    g.add_argument("--heads", type=int, help=f"attention heads (default: {m.n_heads})")
    g.add_argument("--d-ff", type=int, help=f"MLP width (default: {m.d_ff})")
    g.add_argument("--window", type=int, help=f"attention window in bars, per layer (default: {m.window})")
    g.add_argument("--dilations", help=f"one dilation per layer, comma-separated (default: {','.join(map(str, m.dilations))})")
    g.add_argument("--sinks", type=int, help=f"learned sink tokens (default: {m.sinks})")
    g.add_argument("--dropout", type=float, help=f"dropout (default: {m.dropout})")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help=f"optimiser steps at most (default: {d.steps})")
    g.add_argument("--batch-size", type=int, help=f"windows per step (default: {d.batch_size})")
    g.add_argument("--seq-len", type=int, help=f"bars per window (default: {d.seq_len})")
    g.add_argument("--lr", type=float, help=f"peak learning rate, AdamW (default: {d.lr})")
    g.add_argument("--min-lr-frac", type=float, help=f"cosine floor as a fraction of lr (default: {d.min_lr_frac})")
    g.add_argument("--warmup", type=int, help=f"linear warm-up steps (default: {d.warmup})")
    g.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default: {d.weight_decay})")
    g.add_argument("--grad-clip", type=float, help=f"gradient norm clip (default: {d.grad_clip})")
    g.add_argument("--eval-every", type=int, help=f"steps between validation passes (default: {d.eval_every})")
    g.add_argument("--patience", type=int, help=f"validations without improvement before stopping, 0 = never (default: {d.patience})")
    g.add_argument("--seed", type=int, help=f"random seed (default: {d.seed})")
    g.add_argument("--attention", choices=["auto", "fastrader", "sdpa", "flash"], help=f"attention backend (default: {d.attention})")
    g.add_argument("--device", help=f"auto, cpu or cuda (default: {d.device}; bf16 autocast on CUDA)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step's model (on a GPU with CUDA graphs: fuses the work around "
                        "the attention op, no launch cost per kernel; the first steps pay tens of seconds of compile)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def ModelDefaults():
    from .model.transformer import ModelConfig

    return ModelConfig(n_features=1)


def _read_toml(path: str, extra=frozenset()) -> dict:
    """Options of a TOML file, keys with underscores; ``extra``: further keys a caller accepts."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    out = {}
    for k, v in raw.items():
        if k == "model" and isinstance(v, dict):
            for mk, mv in v.items():
                out[mk.replace("-", "_")] = mv
        else:
            out[k.replace("-", "_")] = v
    known = set(_RUN_OPTS) | set(_MODEL_OPTS) | set(_MODEL_OPTS.values()) | {"data", "out", "resume", "no_progress"}
    known |= set(extra)
    bad = sorted(set(out) - known)
    if bad:
        raise ConfigError(f"config {path}: unknown option(s) {', '.join(bad)}")
    return out


def config_from_args(args: argparse.Namespace, file: dict | None = None) -> tuple[TrainConfig, dict]:
    """TrainConfig from parsed flags over a TOML file's options (read from ``args.config``
    unless given); also returns data/out/resume."""
    if file is None:
        file = _read_toml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if v is not None}

    def pick(name):
        return flags.get(name, file.get(name))

    kw = {}
    for name, typ in _RUN_OPTS.items():
        v = pick(name)
        if v is not None:
            if typ == "bool":
                if not isinstance(v, bool):
                    raise ConfigError(f"{name} must be true or false, got {v!r}")
                kw[name] = v
                continue
            try:
                kw[name] = typ(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a {typ.__name__}, got {v!r}") from None
    model = {}
    for flag, fieldname in _MODEL_OPTS.items():
        v = flags.get(flag, file.get(flag, file.get(fieldname)))
        if v is not None:
            model[fieldname] = _dilations(v) if fieldname == "dilations" else v
    if "n_layers" in model and "dilations" not in model:
        model["dilations"] = [1] * int(model["n_layers"])  # no dilation unless asked
    if "dilations" in model and "n_layers" not in model:
        model["n_layers"] = len(model["dilations"])
    cfg = TrainConfig(**kw, model=model)
    cfg.check()
    try:
        from .model.transformer import ModelConfig

        ModelConfig(n_features=1, **model)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad model options: {exc}") from None
    io = {k: pick(k) for k in ("data", "out", "resume")}
    return cfg, io


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, io = config_from_args(args)
        import torch

        from .data import load_candles
        from .model.checkpoint import DEFAULT_CHECKPOINT, save
        from .model.train import metrics_path, state_path, train
        from .pipeline import SAMPLE_DATA

        torch.set_num_threads(max(1, torch.get_num_threads()))
        out = Path(io["out"] or DEFAULT_CHECKPOINT)
        df = load_candles(io["data"] or SAMPLE_DATA)
        ckpt, report = train(df, cfg, progress=not args.no_progress, resume=io["resume"],
                             state_out=state_path(out), stop_after=args.stop_after)
        command = "python -m fastrader.train " + " ".join(argv if argv is not None else sys.argv[1:])
        ckpt.train["command"] = command
        path = save(ckpt, out)
        report["command"] = command
        report["checkpoint"] = str(path)
        mp = metrics_path(out)
        mp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    except FastraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"checkpoint: {path}\nmetrics: {mp}")
    return 0


def format_report(r: dict) -> str:
    lines = [f"steps {r['steps_done']} (best {r['best_step']}, {r['stopped']}), {r['seconds']:.1f} s, "
             f"{r['tokens_per_s']:,.0f} tokens/s, {r['n_params']:,} parameters"]
    lines.append(f"{'split':<6} {'rows':>7} {'MSE':>8} {'MAE':>8} {'R2':>8} {'dir acc':>8} {'IC':>8} {'rank IC':>8}")
    for name in ("train", "val", "test"):
        m = r["metrics"][name]
        lines.append(f"{name:<6} {m['rows']:>7,} {m.get('mse', float('nan')):>8.4f} {m.get('mae', float('nan')):>8.4f} "
                     f"{m.get('r2', float('nan')):>8.4f} {m.get('dir_acc', float('nan')):>8.4f} "
                     f"{m.get('ic', float('nan')):>8.4f} {m.get('rank_ic', float('nan')):>8.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
