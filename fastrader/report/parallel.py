"""Run a report's independent drawing jobs on several cores.

A tearsheet is ~15 matplotlib figures plus chart.png, each drawn from data
that is already computed; drawn one after another they are most of a
default run's time. :func:`run_jobs` draws them in forked worker processes:
a forked child inherits the jobs (closures over the run's returns, trades,
...) without pickling them, and sends back only its result (an SVG string,
a path).

Fork is used only where it is the platform's safe default (Linux); elsewhere,
with one worker, or when ``FASTRADER_REPORT_JOBS=1``, the jobs run in this
process, in order. Either way the results are the same, in the jobs' order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

_JOBS: Sequence[Callable] | None = None  # read by the forked workers


def _call(i: int):
    return _JOBS[i]()


def default_workers() -> int:
    env = os.environ.get("FASTRADER_REPORT_JOBS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            return 1
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 4))  # past ~4 the page's slowest figure is the wall


def run_jobs(jobs: Sequence[Callable[[], T]], workers: int | None = None) -> list[T]:
    """``[job() for job in jobs]``, drawn on up to ``workers`` forked processes."""
    global _JOBS
    workers = default_workers() if workers is None else max(1, workers)
    workers = min(workers, len(jobs))
    if workers <= 1 or not sys.platform.startswith("linux"):
        return [job() for job in jobs]
    _JOBS = jobs
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            # handed out one at a time, last first: a tearsheet's slowest figures are at the end of its
            # page, and starting them first keeps the workers' loads even
            order = list(range(len(jobs)))[::-1]
            out = dict(zip(order, pool.imap(_call, order, chunksize=1)))
            return [out[i] for i in range(len(jobs))]
    finally:
        _JOBS = None
