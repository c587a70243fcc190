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
    chart: str | Path | None = None,
) -> Path:
    """Write the HTML tearsheet; returns and benchmark are daily, tz-naive UTC.

    ``chart`` (the run's chart.png) is embedded at the top of the page and
    links to the file beside it.
    """
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
    text = re.sub(r"<title>.*?</title>", f"<title>{_html.escape(title)}</title>", text, count=1, flags=re.S)
    if chart is not None and Path(chart).is_file():
        text = _embed_chart(text, Path(chart))
    path.write_text(text)
    return path


def _embed_chart(text: str, chart: Path) -> str:
    import base64
    import re

    kind = "svg+xml" if chart.suffix.lower() == ".svg" else "png"
    data = base64.b64encode(chart.read_bytes()).decode("ascii")
    block = (f'<div id="fastrader-chart"><h3>Price, entries and exits, signal and position '
             f'(<a href="{chart.name}">{chart.name}</a>)</h3>'
             f'<img alt="trades chart" style="width:100%" src="data:image/{kind};base64,{data}"></div>')
    m = re.search(r"<body[^>]*>", text)
    return text[:m.end()] + block + text[m.end():] if m else block + text
