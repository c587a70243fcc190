"""A sweep's results on disk: one JSON file per finished trial, then the ranked table and its pictures.

Each finished trial is written at once as ``trials/<id>.json`` (a temporary
file renamed into place, so a killed sweep never leaves half a record and
loses only the trials in flight). The table, the heatmap, the held-out
report and the summary are rebuilt from those files at the end of every run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

METRIC_COLUMNS = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "max_drawdown_daily", "n_trades",
                  "bars", "days", "final_equity", "liquidations", "in_sample_bars")


class TrialStore:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob("*.tmp"):  # left by a sweep killed while writing
            tmp.unlink(missing_ok=True)

    def path(self, tid: str) -> Path:
        return self.dir / f"{tid}.json"

    def load(self) -> dict[str, dict]:
        out = {}
        for p in sorted(self.dir.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue  # unreadable: treated as missing, so the trial runs again
            out[rec["id"]] = rec
        return out

    def write(self, rec: dict) -> None:
        p = self.path(rec["id"])
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(rec, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)


def _sort_key(metric: str, mode: str):
    def key(r):
        v = r.get("metrics", {}).get(metric) if r.get("status") == "ok" else None
        bad = v is None or not isinstance(v, (int, float)) or not math.isfinite(v)
        return (r.get("status") != "ok", bad, 0.0 if bad else (-v if mode == "max" else v), r["id"])

    return key


def rank_records(records: list[dict], metric: str, mode: str) -> list[dict]:
    """Best first by ``metric``; NaN metrics after numbers, failed trials last; ties by trial id."""
    return sorted(records, key=_sort_key(metric, mode))


def table(records: list[dict], keys: list[str], metric: str, mode: str) -> pd.DataFrame:
    rows = []
    for i, r in enumerate(rank_records(records, metric, mode), 1):
        m = r.get("metrics") or {}
        row = {"rank": i, "trial": r["id"], "status": r["status"]}
        row.update({k: r["point"].get(k) for k in keys})
        for c in METRIC_COLUMNS:
            row[c] = m.get(c)
        for c, v in m.items():
            if c.startswith("orders_"):
                row[c] = v
        row["bars_per_s"] = m.get("bars_per_s")
        row["seconds"] = r.get("seconds")
        row["node"] = r.get("node")
        row["error"] = r.get("error")
        rows.append(row)
    df = pd.DataFrame(rows)
    for k in keys:  # a column of mixed types (e.g. numbers and strings) is written as text
        if k in df and df[k].map(type).nunique() > 1:
            df[k] = df[k].astype(str)
    return df


def write_table(df: pd.DataFrame, out: Path) -> dict[str, Path]:
    files = {"table_csv": out / "table.csv", "table_parquet": out / "table.parquet"}
    for key, p in files.items():
        tmp = p.with_name(p.name + ".tmp")
        if key == "table_csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, p)
    return files


def default_heatmap_keys(df: pd.DataFrame, keys: list[str]) -> list[str] | None:
    multi = [k for k in keys if k in df and df[k].nunique() > 1]
    return multi[:2] if len(multi) >= 2 else None


def heatmap(df: pd.DataFrame, x: str, y: str, metric: str, mode: str, path: Path) -> Path | None:
    """The ranking metric over two swept keys; each cell is the best trial over the other keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"].copy()
    ok[metric] = pd.to_numeric(ok[metric], errors="coerce")
    if ok.empty:
        return None
    grid = ok.pivot_table(index=y, columns=x, values=metric, aggfunc="max" if mode == "max" else "min")
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * max(3, grid.shape[1]), 1.2 + 0.6 * max(3, grid.shape[0])))
    vals = grid.to_numpy(dtype=np.float64)
    im = ax.imshow(vals, cmap="viridis" if mode == "max" else "viridis_r", aspect="auto", origin="lower")
    ax.set_xticks(range(grid.shape[1]), [f"{c:g}" if isinstance(c, float) else str(c) for c in grid.columns],
                  rotation=45, ha="right")
    ax.set_yticks(range(grid.shape[0]), [f"{c:g}" if isinstance(c, float) else str(c) for c in grid.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            if np.isfinite(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    others = "best over the other swept keys" if len(df.columns) else ""
    ax.set_title(f"{metric} ({mode}); {others}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def holdout_table(top: list[dict], held: dict[str, dict], keys: list[str], metric: str, mode: str) -> pd.DataFrame:
    """The best in-sample trials beside their metrics on the held-out period."""
    rows = []
    for i, r in enumerate(top, 1):
        h = held.get(r["id"]) or {}
        hm = h.get("metrics") or {}
        m = r.get("metrics") or {}
        row = {"in_sample_rank": i, "trial": r["id"]}
        row.update({k: r["point"].get(k) for k in keys})
        for c in ("total_return", "sharpe", "max_drawdown", "n_trades"):
            row[f"{c}_in_sample"] = m.get(c)
            row[f"{c}_held_out"] = hm.get(c)
        row["held_out_status"] = h.get("status")
        row["held_out_error"] = h.get("error")
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        col = pd.to_numeric(df[f"{metric}_held_out"] if f"{metric}_held_out" in df else
                            pd.Series([(held.get(t) or {}).get("metrics", {}).get(metric) for t in df["trial"]]),
                            errors="coerce")
        df["held_out_rank"] = col.rank(ascending=(mode == "min"), method="min").astype("Int64")  # none when it failed
    return df


def fmt(x, nd=2, pct=False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if pct:
        return f"{x * 100:,.2f}%"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def text_table(df: pd.DataFrame, cols: list[str], n: int = 5) -> str:
    pct = {"total_return", "cagr", "max_drawdown", "max_drawdown_daily"}
    head = df.head(n)
    cells = [[c for c in cols]]
    for _, r in head.iterrows():
        cells.append([fmt(r[c], pct=any(c.startswith(p) for p in pct)) if c in r else "" for c in cols])
    w = [max(len(str(row[j])) for row in cells) for j in range(len(cols))]
    return "\n".join("  " + "  ".join(str(v).rjust(w[j]) for j, v in enumerate(row)) for row in cells)
