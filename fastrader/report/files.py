"""Result files of a run: metrics.json, trades.csv, equity.csv, signals.csv."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _plain(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; null says "undefined" honestly
    return x


def write_results(out: Path, *, metrics: dict, equity, trades, signals, extra: dict | None = None) -> dict[str, Path]:
    """Write the four data files; each is complete on its own (no shared state)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "equity": out / "equity.csv",
        "trades": out / "trades.csv",
        "signals": out / "signals.csv",
        "metrics": out / "metrics.json",
    }
    equity.to_csv(paths["equity"], index=False)
    trades.to_csv(paths["trades"], index=False)
    signals.to_csv(paths["signals"], index=False)
    payload = {k: _plain(v) for k, v in metrics.items()}
    if extra:
        payload["run"] = extra
    paths["metrics"].write_text(json.dumps(payload, indent=2) + "\n")
    return paths
