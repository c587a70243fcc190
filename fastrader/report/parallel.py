"""Run a report's independent jobs on several cores.

A tearsheet is ~15 matplotlib figures plus chart.png and the result files,
each made from data that is already computed; made one after another they
are most of a default run's time. :class:`Workers` runs them in forked
worker processes: jobs given when the workers start are inherited by the
fork (closures over the run's returns, trades, ...) and never pickled; jobs
submitted later are a module-level function and picklable arguments. Only
results travel back (an SVG string, a dict of paths).

Fork is used only on Linux, where it is the platform's own default; elsewhere,
with one worker, with ``FASTRADER_REPORT_JOBS=1``, or in a process that has
started or joined a Ray runtime (Ray's gRPC client keeps threads and locks
that outlive ``ray.shutdown()``: a forked child that merely frees one of its
objects can block forever), every job runs in this process when its result
is asked for. Either way the results are the same.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Any, Callable, Sequence

_INHERITED: Sequence[Callable] | None = None  # read by the forked workers


def _call_inherited(i: int):
    return _INHERITED[i]()


# Set once this process has started or joined a Ray runtime (fastrader.sweep does): Ray's gRPC
# client and its threads outlive ray.shutdown(), so fork stays unsafe for the rest of the process.
_FORK_UNSAFE = False


def mark_fork_unsafe() -> None:
    """From now on, run report jobs in this process instead of forked workers."""
    global _FORK_UNSAFE
    _FORK_UNSAFE = True


def fork_is_safe() -> bool:
    """False off Linux, after :func:`mark_fork_unsafe`, and while a Ray runtime is connected."""
    if not sys.platform.startswith("linux") or _FORK_UNSAFE:
        return False
    ray = sys.modules.get("ray")  # merely imported is harmless: its threads start with ray.init()
    try:
        return ray is None or not ray.is_initialized()
    except Exception:  # a half-imported or unusual ray: do not risk a fork
        return False


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


class _Later:
    """A job run in this process, when its result is first asked for (the serial path)."""

    def __init__(self, fn: Callable, args: tuple = ()):
        self._fn, self._args, self._done, self._value, self._error = fn, args, False, None, None

    def get(self):
        if not self._done:
            self._done = True
            try:
                self._value = self._fn(*self._args)
            except BaseException as exc:  # raised again below, to every caller that asks
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value


class Workers:
    """``with Workers(inherited) as w:`` then ``w.inherited(i).get()``, ``w.submit(fn, *args).get()``."""

    def __init__(self, inherited: Sequence[Callable[[], Any]] = (), workers: int | None = None):
        global _INHERITED
        self._jobs = list(inherited)
        n = default_workers() if workers is None else max(1, workers)
        self._pool = None
        # a daemonic worker (a sweep's process pool) may not have children of its own
        if n > 1 and fork_is_safe() and not mp.current_process().daemon:
            _INHERITED = self._jobs
            try:
                self._pool = mp.get_context("fork").Pool(n)
            except OSError:  # out of processes or memory: the same jobs, in this process
                self._pool = None

    def inherited(self, i: int):
        if self._pool is None:
            return _Later(self._jobs[i])
        return self._pool.apply_async(_call_inherited, (i,))

    def submit(self, fn: Callable, *args):
        if self._pool is None:
            return _Later(fn, args)
        return self._pool.apply_async(fn, args)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        global _INHERITED
        if self._pool is not None:
            if kind is None:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()
            self._pool = None
        _INHERITED = None
        return False


def run_jobs(jobs: Sequence[Callable[[], Any]], workers: int | None = None) -> list:
    """``[job() for job in jobs]``, on up to ``workers`` forked processes."""
    if not jobs:
        return []
    n = min(default_workers() if workers is None else max(1, workers), len(jobs))
    with Workers(jobs, n) as w:
        # handed out last first: a tearsheet's slowest figures are at the end of its page, and
        # starting them first keeps the workers' loads even
        handles = {i: w.inherited(i) for i in reversed(range(len(jobs)))}
        return [handles[i].get() for i in range(len(jobs))]
