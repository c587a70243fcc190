"""The QuantStats HTML tearsheet, strategy against buy-and-hold."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd


def write_tearsheet(
    returns: pd.Series,
    benchmark: pd.Series,
    path: str | Path,
    *,
    title: str = "fastrader backtest",
    benchmark_title: str = "Buy & hold",
    periods: int = 365,
) -> Path:
    """Write the HTML tearsheet; returns and benchmark are daily, tz-naive UTC."""
    import matplotlib

    matplotlib.use("Agg")
    # Missing system fonts make matplotlib log one line per glyph lookup.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    import quantstats as qs

    path = Path(path)
    bench = benchmark.reindex(returns.index).fillna(0.0)
    bench.name = benchmark_title
    if not returns.to_numpy().any():
        # A strategy that never traded: QuantStats' benchmark regression has
        # no variance to work with and raises, so report without a benchmark.
        bench = None
        title = f"{title} (no trades: the strategy stayed flat)"
    with warnings.catch_warnings():
        # Third-party deprecation noise is not ours to fix; keep the console clean.
        warnings.simplefilter("ignore")
        qs.reports.html(
            returns,
            benchmark=bench,
            output=str(path),
            title=title,
            periods_per_year=periods,
            # Keep every day: trimming leading flat days would make the HTML's
            # numbers differ from metrics.json.
            match_dates=False,
        )
    # The browser tab shows the run's own title (an IN-SAMPLE run must say so there too).
    import html as _html
    import re

    text = path.read_text()
    path.write_text(re.sub(r"<title>.*?</title>", f"<title>{_html.escape(title)}</title>", text, count=1, flags=re.S))
    return path
