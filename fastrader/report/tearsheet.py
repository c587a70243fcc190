"""The QuantStats HTML tearsheet, strategy against buy-and-hold.

QuantStats lays the page out and draws its ~15 figures one after another;
the drawing is most of the time. Here its ``reports.html`` lays the page out
with each figure call recorded and a marker left in its place
(:class:`_DeferredPlots`), the figures are then drawn by QuantStats' own plot
functions, in parallel (:mod:`fastrader.report.parallel`), and put back where
the markers are, with the same clean-up QuantStats applies to its page. The
page is the one ``reports.html`` writes by itself (a test compares them
byte for byte).
"""

from __future__ import annotations

import html as _html
import io
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

_MARK = "<!--fastrader-figure-{}-->"


def _quantstats():
    import matplotlib

    matplotlib.use("Agg")
    # Missing system fonts make matplotlib log one line per glyph lookup.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    import quantstats as qs

    return qs


class _DeferredPlots:
    """Stands in for ``quantstats.plots`` while ``reports.html`` lays out the page.

    A call that saves its figure into a stream (every figure of the page) is
    recorded, and a marker is written to the stream instead, so the page gets
    the marker where the figure goes. Anything else goes straight through.
    """

    def __init__(self, plots):
        self._plots = plots
        self.calls: list[tuple[str, tuple, dict, str]] = []

    def __getattr__(self, name):
        fn = getattr(self._plots, name)
        if not callable(fn):
            return fn

        def record(*args, **kwargs):
            sf = kwargs.get("savefig")
            if not (isinstance(sf, dict) and hasattr(sf.get("fname"), "write")) or kwargs.get("show", True):
                return fn(*args, **kwargs)
            rest = {k: v for k, v in kwargs.items() if k != "savefig"}
            self.calls.append((name, args, rest, sf.get("format", "svg")))
            sf["fname"].write(_MARK.format(len(self.calls) - 1).encode())
            return None

        return record


def draw_figure(name: str, args: tuple, kwargs: dict, fmt: str) -> str:
    """One figure of the page, drawn by QuantStats, as the HTML it embeds."""
    qs = _quantstats()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(qs.plots, name)(*args, savefig={"fname": buf, "format": fmt}, **kwargs)
    text = qs.reports._embed_figure(buf, fmt)
    # the clean-up reports.html applies to its whole page, figures included
    return re.sub(r"\{\{(.*?)\}\}", "", text).replace("white-space:pre;", "")


@dataclass
class Layout:
    """The tearsheet page with a marker per figure, and the jobs that draw them (in the page's order)."""

    text: str
    calls: list[tuple] = field(default_factory=list)  # each: draw_figure's arguments (picklable)

    @property
    def jobs(self) -> list[Callable[[], str]]:
        return [(lambda c=c: draw_figure(*c)) for c in self.calls]


def layout_tearsheet(returns: pd.Series, benchmark: pd.Series, *, title: str = "fastrader backtest",
                     benchmark_title: str = "Buy & hold", periods: int = 365) -> tuple[Layout, str]:
    """QuantStats' page for ``returns`` against ``benchmark`` (daily, tz-naive UTC), figures not drawn.

    Returns the layout and the title used (a run that never traded says so).
    """
    qs = _quantstats()
    bench = benchmark.reindex(returns.index).fillna(0.0)
    bench.name = benchmark_title
    if not returns.to_numpy().any():
        # A strategy that never traded: QuantStats' benchmark regression has
        # no variance to work with and raises, so report without a benchmark.
        bench = None
        title = f"{title} (no trades: the strategy stayed flat)"
    deferred = _DeferredPlots(qs.plots)
    saved = qs.reports._plots
    qs.reports._plots = deferred
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as d:
            # Third-party deprecation noise is not ours to fix; keep the console clean.
            warnings.simplefilter("ignore")
            page = os.path.join(d, "page.html")
            qs.reports.html(
                returns,
                benchmark=bench,
                output=page,
                title=title,
                periods_per_year=periods,
                # Keep every day: trimming leading flat days would make the HTML's
                # numbers differ from metrics.json.
                match_dates=False,
            )
            text = Path(page).read_text(encoding="utf-8")
    finally:
        qs.reports._plots = saved
    return Layout(text, list(deferred.calls)), title


def finish_tearsheet(layout: Layout, figures: list[str], path: str | Path, *, title: str,
                     chart: str | Path | None = None) -> Path:
    """Put the drawn figures in, title the page, embed chart.png; write it to ``path`` (whole or not at all)."""
    path = Path(path)
    text = layout.text
    for i, fig in enumerate(figures):
        mark = _MARK.format(i)
        if mark not in text:
            raise RuntimeError(f"tearsheet layout lost the place of figure {i}")
        text = text.replace(mark, fig, 1)
    # The browser tab shows the run's own title (an IN-SAMPLE run must say so there too).
    text = re.sub(r"<title>.*?</title>", lambda _: f"<title>{_html.escape(title)}</title>", text, count=1, flags=re.S)
    if chart is not None and Path(chart).is_file():
        text = _embed_chart(text, Path(chart))
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_tearsheet(
    returns: pd.Series,
    benchmark: pd.Series,
    path: str | Path,
    *,
    title: str = "fastrader backtest",
    benchmark_title: str = "Buy & hold",
    periods: int = 365,
    chart: str | Path | None = None,
    workers: int | None = None,
) -> Path:
    """Write the HTML tearsheet; returns and benchmark are daily, tz-naive UTC.

    ``chart`` (the run's chart.png) is embedded at the top of the page and
    links to the file beside it. The figures are drawn on ``workers``
    processes (default: see :func:`fastrader.report.parallel.default_workers`).
    """
    from .parallel import run_jobs

    layout, title = layout_tearsheet(returns, benchmark, title=title, benchmark_title=benchmark_title,
                                     periods=periods)
    return finish_tearsheet(layout, run_jobs(layout.jobs, workers), path, title=title, chart=chart)


def _embed_chart(text: str, chart: Path) -> str:
    import base64

    kind = "svg+xml" if chart.suffix.lower() == ".svg" else "png"
    data = base64.b64encode(chart.read_bytes()).decode("ascii")
    block = (f'<div id="fastrader-chart"><h3>Price, entries and exits, signal and position '
             f'(<a href="{chart.name}">{chart.name}</a>)</h3>'
             f'<img alt="trades chart" style="width:100%" src="data:image/{kind};base64,{data}"></div>')
    m = re.search(r"<body[^>]*>", text)
    return text[:m.end()] + block + text[m.end():] if m else block + text
