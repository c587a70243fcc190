"""Result files of a run: metrics.json, trades.csv, equity.csv, signals.csv, orders.csv."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _plain(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; null says "undefined" honestly
    return x


def _json_plain(x):
    if isinstance(x, dict):
        return {k: _json_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_plain(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        x = x.item()
    return _plain(x)


def write_results(out: Path, *, metrics: dict, equity, trades, signals, extra: dict | None = None,
                  orders=None) -> dict[str, Path]:
    """Write the data files; each is complete on its own (no shared state)."""
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
    if orders is not None:
        paths["orders"] = out / "orders.csv"
        orders.to_csv(paths["orders"], index=False)
    payload = {k: _json_plain(v) for k, v in metrics.items()}
    if extra:
        payload["run"] = _json_plain(extra)
    paths["metrics"].write_text(json.dumps(payload, indent=2) + "\n")
    return paths
