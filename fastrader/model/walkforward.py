"""Walk-forward: retrain every K bars, score only the bars after each fit.

Fold i's out-of-sample (OOS) segment is bars [s_i, s_i + K), with
s_i = first_oos + i * K. Its model is fit on the window that ends
``embargo`` bars before s_i: the last ``train_bars`` bars (``rolling``) or
every bar from the start (``expanding``). Inside that window the usual
training split applies (train, then validation for early stopping, the
horizon embargo between them; no test split: the OOS segment is the test).
The fold's model then scores its own segment and nothing else, so the
stitched signal is out of sample on every bar: at no bar was the model that
produced its signal fitted or selected on that bar or on any later one.

Folds are independent, so they run in a process pool. Each fold reports
its OOS IC, rank IC and directional accuracy against the realised target
(the same vol-scaled forward return training uses).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .train import TrainConfig, make_targets, score_metrics


@dataclass
class WalkForwardConfig:
    train_bars: int = 5000  # fit window length (rolling), or the first fit's length (expanding)
    step_bars: int = 1000  # K: bars per OOS segment, i.e. retrain every K bars
    mode: str = "rolling"  # rolling | expanding
    embargo: int | None = None  # bars between a fit window and its OOS segment (default: the horizon)
    folds: int | None = None  # at most this many folds (default: as many as fit)
    workers: int | None = None  # processes (default: min(folds, CPUs)); 1 runs in this process
    train: TrainConfig = field(default_factory=lambda: TrainConfig(train_frac=0.8, val_frac=0.2))

    def check(self) -> None:
        if self.mode not in ("rolling", "expanding"):
            raise ConfigError(f"mode must be rolling or expanding, got {self.mode!r}")
        if self.train_bars < 2 or self.step_bars < 1:
            raise ConfigError("train_bars must be >= 2 and step_bars >= 1")
        if self.embargo is not None and self.embargo < 0:
            raise ConfigError("embargo must be >= 0")
        if self.folds is not None and self.folds < 1:
            raise ConfigError("folds must be >= 1")
        self.train.check()

    @property
    def gap(self) -> int:
        return self.train.horizon if self.embargo is None else int(self.embargo)


@dataclass(frozen=True)
class Fold:
    index: int
    fit: tuple[int, int]  # bars [lo, hi) the model is fit and selected on
    oos: tuple[int, int]  # bars [lo, hi) it scores


def make_folds(n: int, cfg: WalkForwardConfig) -> list[Fold]:
    cfg.check()
    first = cfg.train_bars + cfg.gap
    folds = []
    s = first
    while s < n and (cfg.folds is None or len(folds) < cfg.folds):
        fit_hi = s - cfg.gap
        fit_lo = fit_hi - cfg.train_bars if cfg.mode == "rolling" else 0
        folds.append(Fold(len(folds), (fit_lo, fit_hi), (s, min(n, s + cfg.step_bars))))
        s += cfg.step_bars
    if not folds:
        raise DataError(f"{n} bars leave no out-of-sample segment after train_bars={cfg.train_bars} + embargo={cfg.gap}")
    return folds


def _run_fold(df: pd.DataFrame, fold: Fold, tcfg: TrainConfig, spec_dict: dict | None, threads: int,
              ckpt_dir: str | None):
    """Worker: fit on fold.fit, score fold.oos. Returns (index, OOS signals, train report)."""
    import torch

    from ..features import FeatureSpec
    from ..signals import SignalModel
    from .checkpoint import save
    from .train import train

    torch.set_num_threads(max(1, threads))
    spec = FeatureSpec.from_dict(spec_dict) if spec_dict else None
    fit = df.iloc[fold.fit[0] : fold.fit[1]].reset_index(drop=True)
    ckpt, report = train(fit, tcfg, spec=spec, progress=False)
    if ckpt_dir:
        save(ckpt, Path(ckpt_dir) / f"fold_{fold.index:03d}.safetensors")
    sm = SignalModel(ckpt, device="cpu", attention=tcfg.attention)
    hist = df.iloc[: fold.oos[1]]  # causal: the segment's own bars and what came before
    sig = sm.precompute_from(hist, fold.oos[0])[fold.oos[0] :]
    small = {k: report[k] for k in ("steps_done", "best_step", "best_val_loss", "stopped", "seconds")}
    small["fit_metrics"] = report["metrics"]
    return fold.index, sig, small


@dataclass
class WalkForwardResult:
    signals: pd.DataFrame  # timestamp (UTC ms), signal: OOS bars only
    folds: pd.DataFrame  # one row per fold: ranges, OOS metrics, training summary
    overall: dict  # metrics of the stitched OOS signal
    config: dict


def walk_forward(df: pd.DataFrame, cfg: WalkForwardConfig, spec=None, progress: bool = True,
                 ckpt_dir: str | os.PathLike | None = None) -> WalkForwardResult:
    """Run every fold (in a process pool unless workers == 1) and stitch the OOS signals."""
    from tqdm.auto import tqdm

    n = len(df)
    folds = make_folds(n, cfg)
    tcfg = cfg.train
    spec_dict = spec.to_dict() if spec is not None else None
    ncpu = os.cpu_count() or 1
    workers = cfg.workers or min(len(folds), ncpu)
    threads = max(1, ncpu // workers)
    if ckpt_dir:
        Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    results = {}
    bar = tqdm(total=len(folds), desc="walk-forward", unit="fold", disable=not progress, leave=False)
    args = [(df, f, tcfg, spec_dict, threads, str(ckpt_dir) if ckpt_dir else None) for f in folds]
    if workers == 1:
        for a in args:
            i, sig, rep = _run_fold(*a)
            results[i] = (sig, rep)
            bar.update()
    else:
        import multiprocessing as mp

        # spawn, not fork: a forked copy of a process whose OpenMP/torch threads are running can hang.
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_run_fold, *a) for a in args]
            for fut in futs:
                i, sig, rep = fut.result()
                results[i] = (sig, rep)
                bar.update()
    bar.close()

    y = make_targets(df["close"].to_numpy(np.float64), tcfg.horizon, tcfg.vol_window)
    ts = df["timestamp"].to_numpy()
    lo, hi = folds[0].oos[0], folds[-1].oos[1]
    stitched = np.full(n, np.nan)
    rows = []
    for f in folds:
        sig, rep = results[f.index]
        stitched[f.oos[0] : f.oos[1]] = sig
        m = score_metrics(sig, y[f.oos[0] : f.oos[1]])
        rows.append({
            "fold": f.index,
            "fit_start_ms": int(ts[f.fit[0]]), "fit_end_ms": int(ts[f.fit[1] - 1]),
            "oos_start_ms": int(ts[f.oos[0]]), "oos_end_ms": int(ts[f.oos[1] - 1]),
            "fit_bars": f.fit[1] - f.fit[0], "oos_bars": f.oos[1] - f.oos[0],
            "oos_ic": m["ic"], "oos_rank_ic": m["rank_ic"], "oos_dir_acc": m["dir_acc"], "oos_rows": m["rows"],
            "val_ic": rep["fit_metrics"]["val"].get("ic", float("nan")),
            "steps": rep["steps_done"], "best_step": rep["best_step"], "seconds": rep["seconds"],
        })
    overall = score_metrics(stitched[lo:hi], y[lo:hi])
    signals = pd.DataFrame({"timestamp": ts[lo:hi].astype(np.int64), "signal": stitched[lo:hi]})
    conf = asdict(cfg)
    return WalkForwardResult(signals=signals, folds=pd.DataFrame(rows), overall=overall, config=conf)


def write_outputs(res: WalkForwardResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """signals.csv (timestamp, signal), folds.csv, summary.json and oos_ic.png into ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"signals": out / "signals.csv", "folds": out / "folds.csv", "summary": out / "summary.json",
             "chart": out / "oos_ic.png"}
    res.signals.to_csv(paths["signals"], index=False)
    res.folds.to_csv(paths["folds"], index=False)
    paths["summary"].write_text(json.dumps({"overall": res.overall, "config": res.config}, indent=2, default=str) + "\n")
    plot_fold_ic(res.folds, paths["chart"])
    return paths


def plot_fold_ic(folds: pd.DataFrame, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    ic = folds["oos_ic"].to_numpy(float)
    ax.bar(folds["fold"], ic, color=["tab:green" if v >= 0 else "tab:red" for v in np.nan_to_num(ic)])
    ax.axhline(0, color="black", lw=0.8)
    if np.isfinite(ic).any():
        ax.axhline(np.nanmean(ic), color="tab:blue", ls="--", lw=1, label=f"mean {np.nanmean(ic):.3f}")
        ax.legend(loc="best")
    ax.set_xlabel("fold")
    ax.set_ylabel("out-of-sample IC")
    ax.set_title("Walk-forward: out-of-sample IC per fold")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(res: WalkForwardResult) -> str:
    f = res.folds
    lines = [f"{'fold':>4} {'fit from':>16} {'oos from':>16} {'oos bars':>8} {'IC':>7} {'rank IC':>7} {'dir acc':>7} {'steps':>5}"]
    for r in f.itertuples():
        lines.append(f"{r.fold:>4} {_utc(r.fit_start_ms):>16} {_utc(r.oos_start_ms):>16} {r.oos_bars:>8,} "
                     f"{r.oos_ic:>7.4f} {r.oos_rank_ic:>7.4f} {r.oos_dir_acc:>7.4f} {r.steps:>5}")
    o = res.overall
    lines.append(f"all  {'':>16} {'':>16} {o['rows']:>8,} {o['ic']:>7.4f} {o['rank_ic']:>7.4f} {o['dir_acc']:>7.4f}")
    return "\n".join(lines)


def _utc(ms) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


__all__ = ["WalkForwardConfig", "Fold", "make_folds", "walk_forward", "WalkForwardResult", "write_outputs",
           "format_table", "plot_fold_ic"]
