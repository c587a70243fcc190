"""chart.png: what the strategy did, per symbol: price with entries and exits, the signal, the position.

Long runs are decimated for display only (the metrics never see this): the
bars are cut into at most :data:`MAX_POINTS` buckets, and each bucket is
drawn as its low-high range with its last close as the line, so a spike is
never hidden by the thinning. Entries and exits are drawn at their own fill
times and prices, every one of them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

MAX_POINTS = 1500


def decimate(x: np.ndarray, y: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None,
             max_points: int = MAX_POINTS):
    """(x, last y, min, max) per bucket of consecutive points; unchanged when short enough."""
    n = len(x)
    lo = y if lo is None else lo
    hi = y if hi is None else hi
    if n <= max_points:
        return x, y, lo, hi
    k = -(-n // max_points)
    starts = np.arange(0, n, k)
    ends = np.minimum(starts + k, n) - 1
    return x[ends], y[ends], np.fmin.reduceat(lo, starts), np.fmax.reduceat(hi, starts)


def _dt(ms) -> np.ndarray:
    return pd.to_datetime(np.asarray(ms, dtype=np.int64), unit="ms").to_numpy()


def write_chart(path: str | Path, frames: dict[str, pd.DataFrame], result, max_points: int = MAX_POINTS) -> Path:
    """One block of three panels per symbol; returns the path written (PNG, or SVG by its suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    import matplotlib.pyplot as plt

    path = Path(path)
    names = list(frames)
    sig = result.signals
    trades = result.trades
    hold = result.holdings
    eq = result.equity
    ratios = []
    for _ in names:
        ratios += [3.0, 1.0, 1.0]
    fig, axes = plt.subplots(len(ratios), 1, figsize=(14, 1.6 * sum(ratios)), sharex=True,
                             gridspec_kw={"height_ratios": ratios, "hspace": 0.12})
    axes = np.atleast_1d(axes)
    for i, name in enumerate(names):
        f = frames[name]
        ax_p, ax_s, ax_q = axes[3 * i: 3 * i + 3]
        x = _dt(f["timestamp"])
        dx, dc, dl, dh = decimate(x, f["close"].to_numpy(float), f["low"].to_numpy(float), f["high"].to_numpy(float),
                                  max_points)
        ax_p.fill_between(dx, dl, dh, color="0.85", linewidth=0, step="pre", label="low-high")
        ax_p.plot(dx, dc, color="0.2", linewidth=0.8, label="close")
        t = trades[trades["symbol"] == name] if len(trades) and "symbol" in trades else trades
        if len(t):
            for direction, marker, color in (("long", "^", "tab:green"), ("short", "v", "tab:red")):
                e = t[t["direction"] == direction]
                if len(e):
                    ax_p.scatter(_dt(e["open_time"]), e["entry_price"], marker=marker, s=18, color=color, zorder=3,
                                 label=f"{direction} entry")
            ax_p.scatter(_dt(t["close_time"]), t["exit_price"], marker="x", s=14, color="black", zorder=3,
                         linewidths=0.8, label="exit")
        if np.nanmin(dl) > 0 and np.nanmax(dh) / np.nanmin(dl) > 8:
            ax_p.set_yscale("log")  # a tenfold move would flatten the early or late years on a linear axis
        ax_p.set_ylabel("price")
        ax_p.set_title(f"{name}: {len(f):,} bars, {len(t):,} trades"
                       + (f" (drawn as {len(dx):,} buckets)" if len(dx) < len(f) else ""), loc="left", fontsize=10)
        ax_p.legend(loc="upper left", fontsize=7, ncol=5)
        s = sig[sig["symbol"] == name] if "symbol" in sig else sig
        if len(s):
            sx, sy, slo, shi = decimate(_dt(s["timestamp"]), s["signal"].to_numpy(float), max_points=max_points)
            ax_s.fill_between(sx, slo, shi, color="tab:blue", alpha=0.25, linewidth=0, step="pre")
            ax_s.plot(sx, sy, color="tab:blue", linewidth=0.6)
            ax_s.axhline(0, color="0.5", linewidth=0.5)
        ax_s.set_ylabel("signal")
        if hold is not None and len(hold):
            h = hold[hold["symbol"] == name]
            e = eq.set_index("timestamp")["equity"].reindex(h["timestamp"].to_numpy()).to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                expo = np.where(e > 0, h["position"].to_numpy() * h["close"].to_numpy() / e, 0.0)
            qx, qy, qlo, qhi = decimate(_dt(h["timestamp"]), expo, max_points=max_points)
            ax_q.fill_between(qx, qlo, qhi, color="tab:orange", alpha=0.35, linewidth=0, step="pre")
            ax_q.plot(qx, qy, color="tab:orange", linewidth=0.6, drawstyle="steps-pre")
            ax_q.axhline(0, color="0.5", linewidth=0.5)
        ax_q.set_ylabel("position\n(x equity)")
    axes[-1].set_xlabel("UTC")
    fig.align_ylabels(axes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
