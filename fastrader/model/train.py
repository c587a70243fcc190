"""Training the signal model: config, splits, targets, loop, metrics.

Splits are chronological: train, validation, test. Each split's labels end
inside it (a label at bar t looks ``horizon`` bars ahead), and the next split
starts ``horizon`` bars after the previous one ends, so no label straddles a
boundary and no training label overlaps a validation or test bar. Feature
normalisation, the signal scale and the position target's cost scale are
fitted on the training split only; validation picks the best step (early
stopping); the test split is only ever scored.

Targets (``TrainConfig.target``), all from ``y``, the forward log return over
``horizon`` bars divided by a causal volatility estimate (rolling std of
1-bar returns known at bar t, times sqrt(horizon)), clipped at +-4:

* ``return``: regress y (Huber loss);
* ``direction``: classify sign(y) (logistic loss on the score as a logit);
* ``position``: allocate p = tanh(score) in [-1, 1] and maximise
  p * y - cost * |p - p_prev| (the cost of changing position, in the same
  volatility units).

Whatever the target, the score is the signal (after dividing by its spread
on the training split), and metrics compare the raw score with y (so MSE,
MAE and R^2 are in y's units for the ``return`` target): MSE, MAE, R^2,
directional accuracy, IC (Pearson) and rank IC (Spearman), per split.

The loop: AdamW, linear warm-up then cosine decay, gradient clipping,
bf16 autocast on CUDA, evaluation every ``eval_every`` steps with early
stopping (``patience`` evaluations without a better validation loss; the
best weights are kept). Its whole state (weights, optimiser moments, random
generators, best weights, counters) is saved as safetensors + JSON, so a run
can be resumed and ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..features import FeatureSpec, Normalizer, compute_features, default_spec
from .attend import resolve_backend
from .checkpoint import Checkpoint
from .transformer import CausalTransformer, ModelConfig

TARGETS = ("return", "direction", "position")
STATE_FORMAT = "fastrader-train-state/1"


@dataclass
class TrainConfig:
    train_frac: float = 0.6  # first 60% of bars: training split
    val_frac: float = 0.2  # next 20%: validation (early stopping); the rest is the test split
    horizon: int = 24  # bars ahead the target looks (a day of hours); also the embargo between splits
    target: str = "return"  # return | direction | position
    cost: float = 0.001  # position target: cost per unit of position change (fraction of price)
    vol_window: int = 168  # bars in the volatility estimate (one week of hours)
    seq_len: int = 512
    batch_size: int = 16
    steps: int = 300  # at most; early stopping may end sooner
    lr: float = 2e-3
    min_lr_frac: float = 0.1  # the cosine decays to lr * min_lr_frac
    warmup: int = 20
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 25
    patience: int = 4  # evaluations without a better validation loss before stopping (0: never stop early)
    seed: int = 0
    attention: str = "auto"
    device: str = "cpu"
    # torch.compile the training forward (and so its backward): Inductor fuses the layer norms,
    # bias reductions and elementwise work around the attention op, which at the seed model's
    # size take most of a step; on a GPU also CUDA graphs (mode "reduce-overhead"), since a
    # step of small kernels is otherwise bound by launches. The first steps pay the compile.
    compile: bool = False
    model: dict = field(default_factory=dict)  # overrides of ModelConfig fields

    def check(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not (0 < self.train_frac < 1 and 0 <= self.val_frac < 1 and self.train_frac + self.val_frac <= 1):
            raise ConfigError(
                f"train_frac ({self.train_frac}) and val_frac ({self.val_frac}) must be fractions summing to at most 1"
            )
        for name in ("horizon", "seq_len", "batch_size", "steps", "eval_every", "vol_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.grad_clip <= 0 or self.cost < 0 or self.patience < 0 or self.warmup < 0:
            raise ConfigError("lr and grad_clip must be > 0; cost, patience and warmup >= 0")
        known = {f.name for f in fields(ModelConfig)} - {"n_features"}
        bad = sorted(set(self.model) - known)
        if bad:
            raise ConfigError(f"unknown model option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")


# ---- data -------------------------------------------------------------------------------


def make_targets(close: np.ndarray, horizon: int, vol_window: int, clip: float = 4.0) -> np.ndarray:
    """Vol-scaled forward log return; NaN where it is not defined."""
    logc = np.log(close)
    r1 = np.diff(logc, prepend=np.nan)
    vol = pd.Series(r1).rolling(vol_window, min_periods=vol_window).std().to_numpy()
    fwd = np.full_like(logc, np.nan)
    fwd[:-horizon] = logc[horizon:] - logc[:-horizon]
    y = fwd / (vol * math.sqrt(horizon))
    return np.clip(y, -clip, clip)


@dataclass
class Splits:
    """Bar index ranges [lo, hi) of each split, and of the rows whose labels stay inside it."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    horizon: int

    def labels(self, name: str) -> tuple[int, int]:
        lo, hi = getattr(self, name)
        return lo, max(lo, hi - self.horizon)

    def to_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test), "horizon": self.horizon}


def make_splits(n: int, train_frac: float, val_frac: float, horizon: int) -> Splits:
    a = int(n * train_frac)
    b = int(n * (train_frac + val_frac))
    return Splits((0, a), (min(n, a + horizon), max(min(n, a + horizon), b)), (min(n, b + horizon), n), horizon)


# ---- metrics ----------------------------------------------------------------------------


def _rank(a: np.ndarray) -> np.ndarray:
    return pd.Series(a).rank().to_numpy()


def score_metrics(pred: np.ndarray, y: np.ndarray) -> dict:
    """MSE, MAE, R^2, directional accuracy, IC and rank IC of predictions against realised y."""
    ok = np.isfinite(pred) & np.isfinite(y)
    p, t = pred[ok].astype(np.float64), y[ok].astype(np.float64)
    out = {"rows": int(ok.sum())}
    if len(p) < 3:
        return out | {k: float("nan") for k in ("mse", "mae", "r2", "dir_acc", "ic", "rank_ic")}
    err = p - t
    ss_tot = float(((t - t.mean()) ** 2).sum())
    nz = t != 0
    out.update(
        mse=float(np.mean(err**2)),
        mae=float(np.mean(np.abs(err))),
        r2=float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        dir_acc=float(np.mean(np.sign(p[nz]) == np.sign(t[nz]))) if nz.any() else float("nan"),
        ic=_corr(p, t),
        rank_ic=_corr(_rank(p), _rank(t)),
    )
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ---- losses -----------------------------------------------------------------------------


def target_loss(target: str, score: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, cost: float) -> torch.Tensor:
    """Mean loss over masked rows of (B, N) scores against vol-scaled forward returns y."""
    m = mask.to(score.dtype)
    denom = m.sum().clamp(min=1)
    if target == "return":
        return (F.huber_loss(score, y, reduction="none", delta=1.0) * m).sum() / denom
    if target == "direction":
        return (F.binary_cross_entropy_with_logits(score, (y > 0).to(score.dtype), reduction="none") * m).sum() / denom
    pos = torch.tanh(score)
    turn = torch.zeros_like(pos)
    turn[:, 1:] = (pos[:, 1:] - pos[:, :-1]).abs()
    return -((pos * y - cost * turn) * m).sum() / denom


# ---- the training state -----------------------------------------------------------------


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    lo = cfg.lr * cfg.min_lr_frac
    return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def save_state(path: str | os.PathLike, model, opt, rng: np.random.Generator, extra: dict, best: dict | None) -> Path:
    """Everything a resumed run needs, as safetensors (tensors) + JSON (the rest). Atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if best is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
    names = {id(p): n for n, p in model.named_parameters()}
    opt_meta = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            n = names[id(p)]
            tensors[f"opt.{n}.exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
            tensors[f"opt.{n}.exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
            opt_meta[n] = float(st["step"])
    tensors["rng.torch"] = torch.get_rng_state()
    header = {
        "format": STATE_FORMAT,
        "extra": extra,
        "opt_steps": opt_meta,
        "numpy_rng": rng.bit_generator.state,
        "has_best": best is not None,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"fastrader": json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_state(path: str | os.PathLike, model, opt, rng: np.random.Generator) -> tuple[dict, dict | None]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from ..errors import CheckpointError

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = json.loads((fh.metadata() or {}).get("fastrader", "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a training state file ({exc})") from None
    if header.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a fastrader training state (format {header.get('format')!r})")
    sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the saved model does not match this configuration ({exc})") from None
    params = dict(model.named_parameters())
    for n, steps in header["opt_steps"].items():
        p = params[n]
        opt.state[p] = {
            "step": torch.tensor(steps),
            "exp_avg": tensors[f"opt.{n}.exp_avg"].to(p.device),
            "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"].to(p.device),
        }
    torch.set_rng_state(tensors["rng.torch"])
    rng.bit_generator.state = header["numpy_rng"]
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")} if header["has_best"] else None
    return header["extra"], best


def state_path(out: str | os.PathLike) -> Path:
    """Where a run writing checkpoint ``out`` keeps its resumable state."""
    out = Path(out)
    return out.with_name(out.stem + ".state.safetensors")


def metrics_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".metrics.json")


# ---- training ---------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but torch sees no CUDA device")
    return torch.device(name)


def train(
    df: pd.DataFrame,
    cfg: TrainConfig,
    spec: FeatureSpec | None = None,
    progress: bool = True,
    resume: str | os.PathLike | None = None,
    state_out: str | os.PathLike | None = None,
    stop_after: int | None = None,
) -> tuple[Checkpoint, dict]:
    """Train on the training split of ``df``; return the checkpoint and a report.

    ``state_out``: where to save the resumable state at each evaluation (and at
    the end); ``resume``: a state file to continue from; ``stop_after``: stop
    (saving the state) once this many steps are done in total, as an
    interruption would -- the returned checkpoint is then the current best.
    """
    from tqdm.auto import tqdm

    cfg.check()
    device = _resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    spec = spec or default_spec()
    n = len(df)
    sp = make_splits(n, cfg.train_frac, cfg.val_frac, cfg.horizon)
    a = sp.train[1]
    cols = [df[c].to_numpy(np.float64) for c in ("open", "high", "low", "close", "volume")]
    raw = compute_features(spec, *cols)
    norm = Normalizer.fit(raw[:a], names=spec.names)
    z = norm.transform(raw)
    y = make_targets(cols[3], cfg.horizon, cfg.vol_window)

    x_ok = np.isfinite(z).all(axis=1)
    zf = np.where(x_ok[:, None], z, 0.0).astype(np.float32)
    lab = np.zeros(n, bool)  # rows whose label is inside its own split
    split_of = {}
    for name in ("train", "val", "test"):
        lo, hi = sp.labels(name)
        m = np.zeros(n, bool)
        m[lo:hi] = True
        m &= x_ok & np.isfinite(y)
        split_of[name] = m
        lab |= m
    tr = split_of["train"]
    first = int(np.argmax(x_ok)) if x_ok.any() else n
    train_lab_end = sp.labels("train")[1]
    if train_lab_end - first < cfg.seq_len:
        raise DataError(
            f"the training split has {max(0, train_lab_end - first)} usable bars; need at least seq_len={cfg.seq_len} "
            "(more data, a larger train_frac or a shorter seq_len)"
        )
    if cfg.patience and not split_of["val"].any():
        raise DataError("the validation split has no usable rows; raise val_frac or pass patience=0")

    mcfg = ModelConfig(n_features=len(spec.names), **cfg.model)
    model = CausalTransformer(mcfg).set_backend(resolve_backend(cfg.attention)).to(device)
    opt = _adamw(model, device, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # evaluation runs the plain module (its sequence length differs); state_dict is the module's either way
    fwd = _compiled(model, device) if cfg.compile else model
    X = torch.from_numpy(zf)
    Y = torch.from_numpy(np.nan_to_num(y).astype(np.float32))
    M = torch.from_numpy(tr)
    # Cost of changing position in y's units: a fraction of price over the typical horizon move.
    r1 = np.diff(np.log(cols[3][:a]))
    cost_y = float(cfg.cost / (np.nanstd(r1) * math.sqrt(cfg.horizon))) if cfg.target == "position" else 0.0

    def full_scores() -> np.ndarray:
        """Scores of every bar in one causal pass (chunked by the receptive field in eval)."""
        model.eval()
        with torch.inference_mode(), _autocast(device):
            s = model(X.to(device)[None])[0].float().cpu().numpy()
        model.train()
        return s

    def split_loss(s: np.ndarray, name: str) -> float:
        m = split_of[name]
        if not m.any():
            return float("nan")
        with torch.no_grad():
            return float(target_loss(cfg.target, torch.from_numpy(s)[None], Y[None], torch.from_numpy(m)[None], cost_y))

    state = {"step": 0, "best_val": None, "best_step": None, "bad_evals": 0, "history": [], "tokens": 0,
             "train_seconds": 0.0, "stopped": None}
    best = None
    if resume is not None:
        state, best = load_state(resume, model, opt, rng)
    model.train()
    t0 = time.perf_counter()
    tokens0, seconds0 = state["tokens"], state["train_seconds"]
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="train", disable=not progress, leave=False, unit="step")
    recent: list[float] = state.setdefault("recent", [])
    val_loss = state["history"][-1]["val_loss"] if state["history"] else float("nan")
    hi_start = train_lab_end - cfg.seq_len + 1
    warm_mask = min(cfg.seq_len // 2, mcfg.receptive_field)
    while state["step"] < cfg.steps and state["stopped"] is None:
        step = state["step"]
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        starts = rng.integers(first, hi_start, size=cfg.batch_size)
        idx = torch.from_numpy(starts[:, None] + np.arange(cfg.seq_len)[None, :])
        xb, yb, mb = X[idx].to(device), Y[idx].to(device), M[idx].clone()
        # The first receptive field of each window sees truncated history: no loss there.
        mb[:, :warm_mask] = False
        mb = mb.to(device)
        with _autocast(device):
            pred = fwd(xb).float()
        loss = target_loss(cfg.target, pred, yb, mb, cost_y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        recent.append(float(loss.item()))
        del recent[:-20]
        state["step"] = step + 1
        state["tokens"] += cfg.batch_size * cfg.seq_len
        elapsed = seconds0 + time.perf_counter() - t0
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            s = full_scores()
            val_loss = split_loss(s, "val") if split_of["val"].any() else split_loss(s, "train")
            rec = {"step": state["step"], "train_loss": float(np.mean(recent)), "val_loss": val_loss}
            state["history"].append(rec)
            if state["best_val"] is None or val_loss < state["best_val"]:
                state["best_val"], state["best_step"], state["bad_evals"] = val_loss, state["step"], 0
                best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_evals"] += 1
                if cfg.patience and state["bad_evals"] >= cfg.patience:
                    state["stopped"] = "early"
            state["train_seconds"] = elapsed
            if state_out is not None:
                save_state(state_out, model, opt, rng, state, best)
        bar.update(1)
        bar.set_postfix(
            train_loss=f"{np.mean(recent):.4f}", val_loss=f"{val_loss:.4f}",
            tok_s=f"{(state['tokens'] - tokens0) / max(1e-9, time.perf_counter() - t0):,.0f}",
        )
        if stop_after is not None and state["step"] >= stop_after and state["step"] < cfg.steps:
            state["train_seconds"] = seconds0 + time.perf_counter() - t0
            if state_out is not None:
                save_state(state_out, model, opt, rng, state, best)
            break
    bar.close()
    state["train_seconds"] = seconds0 + time.perf_counter() - t0
    if state_out is not None:
        save_state(state_out, model, opt, rng, state, best)

    if best is not None:
        model.load_state_dict(best)
    model = model.cpu().eval()
    X_cpu = X
    with torch.inference_mode():
        scores = model(X_cpu[None])[0].double().numpy()
    ok_scale = tr.copy()
    ok_scale[: first + mcfg.receptive_field] = False
    if not ok_scale.any():
        ok_scale = tr
    scale = float(np.std(scores[ok_scale])) or 1.0
    metrics = {}
    for name in ("train", "val", "test"):
        m = split_of[name].copy()
        m[: first + mcfg.receptive_field] = False  # the very first bars see a truncated history
        metrics[name] = score_metrics(np.where(m, scores, np.nan), np.where(m, y, np.nan))

    ts = df["timestamp"].to_numpy()
    from ..data import candles_digest

    fit_end = sp.val[1] if sp.val[1] > sp.val[0] else a  # bars the model was fit or selected on
    tf = int(np.median(np.diff(ts))) if n > 1 else 0
    train_info = {
        "start_ms": int(ts[0]),
        "end_ms": int(ts[fit_end - 1]),
        "bars": int(fit_end),
        "train_end_ms": int(ts[a - 1]),
        "horizon": int(cfg.horizon),
        "timeframe_ms": tf,
        "data_digest": candles_digest(df.iloc[:fit_end]),
        "splits": sp.to_dict(),
        "config": asdict(cfg),
        "steps_done": int(state["step"]),
        "best_step": state["best_step"],
        "best_val_loss": state["best_val"],
        "stopped": state["stopped"] or ("interrupted" if state["step"] < cfg.steps else "steps"),
        "metrics": metrics,
    }
    ckpt = Checkpoint(
        model=model,
        features=spec.to_dict(),
        normalizer=norm.to_dict(),
        signal={"scale": scale},
        train=train_info,
    )
    report = dict(train_info)
    report.update(
        history=state["history"],
        seconds=state["train_seconds"],
        tokens_per_s=state["tokens"] / state["train_seconds"] if state["train_seconds"] > 0 else float("nan"),
        n_params=model.n_params(),
    )
    return ckpt, report


def _adamw(model: torch.nn.Module, device: torch.device, **kw) -> torch.optim.AdamW:
    """AdamW; on a GPU the fused kernel (one launch for every parameter, where the default
    foreach path launches a dozen per step), on the CPU the default."""
    return torch.optim.AdamW(model.parameters(), fused=device.type == "cuda", **kw)


def _compiled(model: torch.nn.Module, device: torch.device):
    """The model under torch.compile for training steps of one fixed shape; CUDA graphs on a GPU.

    Returns a forward for one step at a time: on a GPU each call first marks a new step, so the
    graphs may reuse the last step's outputs (dead by then)."""
    if device.type != "cuda":
        return torch.compile(model, dynamic=False)
    compiled = torch.compile(model, dynamic=False, mode="reduce-overhead")

    def step_forward(x):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x)

    return step_forward


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def train_speed(cfg: TrainConfig, n_features: int, steps: int = 5, warmup: int = 2) -> float:
    """Training tokens per second of one model shape on random inputs (for benchmarks)."""
    torch.manual_seed(cfg.seed)
    device = _resolve_device(cfg.device)
    mcfg = ModelConfig(n_features=n_features, **cfg.model)
    model = CausalTransformer(mcfg).set_backend(resolve_backend(cfg.attention)).to(device).train()
    opt = _adamw(model, device, lr=cfg.lr)
    fwd = _compiled(model, device) if cfg.compile else model
    x = torch.randn(cfg.batch_size, cfg.seq_len, n_features, device=device)
    yv = torch.randn(cfg.batch_size, cfg.seq_len, device=device)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with _autocast(device):
            loss = F.huber_loss(fwd(x).float(), yv)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return cfg.batch_size * cfg.seq_len / float(np.median(times))


__all__ = ["TrainConfig", "TARGETS", "train", "make_targets", "make_splits", "score_metrics", "state_path",
           "metrics_path", "train_speed"]
