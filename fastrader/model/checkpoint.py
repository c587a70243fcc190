"""Checkpoints: one safetensors file, weights plus a JSON header. No pickle.

Everything needed to turn candles into signals travels in the file, so a
checkpoint cannot be paired with the wrong features by accident:

* ``model``: the :class:`ModelConfig` fields;
* ``features``: the feature spec (names and parameters);
* ``normalizer``: per-feature statistics fitted on the training range only;
* ``signal``: how raw scores become signals (the scale fitted on training);
* ``train``: provenance (data file hash, training range, steps, loss, command).

Loading never executes code: safetensors holds raw tensors and the header is
parsed as JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import CheckpointError
from .transformer import CausalTransformer, ModelConfig

FORMAT = "fastrader-checkpoint/1"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "default_model.safetensors"


@dataclass
class Checkpoint:
    model: CausalTransformer
    features: dict
    normalizer: dict
    signal: dict = field(default_factory=lambda: {"scale": 1.0})
    train: dict = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def save(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write atomically: a crash mid-write never leaves a half checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": FORMAT,
        "model": ckpt.model.cfg.to_dict(),
        "features": ckpt.features,
        "normalizer": ckpt.normalizer,
        "signal": ckpt.signal,
        "train": ckpt.train,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in ckpt.model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"fastrader": json.dumps(header)})
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is meant to be shared
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(path: str | os.PathLike | None = None) -> Checkpoint:
    """Load a checkpoint; any mismatch is a :class:`CheckpointError` naming the file."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if "fastrader" not in meta:
        raise CheckpointError(f"{path}: safetensors file has no fastrader header; was it written by fastrader.train?")
    try:
        header = json.loads(meta["fastrader"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: header is not valid JSON ({exc})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {header.get('format')!r}, expected {FORMAT!r}")
    try:
        cfg = ModelConfig(**header["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model config in header ({exc})") from None
    model = CausalTransformer(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: weights do not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: weight {name} has shape {tuple(t.shape)}, the model config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors)
    model.eval()
    for key in ("features", "normalizer"):
        if key not in header:
            raise CheckpointError(f"{path}: header lacks '{key}'")
    return Checkpoint(
        model=model,
        features=header["features"],
        normalizer=header["normalizer"],
        signal=header.get("signal", {"scale": 1.0}),
        train=header.get("train", {}),
    )


__all__ = ["Checkpoint", "save", "load", "DEFAULT_CHECKPOINT"]
