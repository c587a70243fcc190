"""The tearsheet drawn in parallel is QuantStats' own page, byte for byte; worker failures surface."""

from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pytest

from fastrader.report import parallel
from fastrader.report.parallel import run_jobs
from fastrader.report.tearsheet import write_tearsheet


def _returns(n=420, seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2022-04-04", periods=n, freq="D")
    r = rng.standard_t(4, n) * 0.015 + 0.0004
    r[50:80] = 0.0  # a flat stretch, as a strategy out of the market has
    b = rng.normal(0.0003, 0.03, n)
    return pd.Series(r, index=idx), pd.Series(b, index=idx)


def test_parallel_tearsheet_is_quantstats_own_page(tmp_path, monkeypatch):
    import re
    import warnings

    import matplotlib

    from fastrader.report.tearsheet import _quantstats

    qs = _quantstats()
    # SVG ids and the creation date are random/clock-based by default; pin them so pages compare
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    monkeypatch.setitem(matplotlib.rcParams, "svg.hashsalt", "fastrader-test")
    r, b = _returns()
    ours = write_tearsheet(r, b, tmp_path / "par.html", title="T", workers=2).read_text()
    bench = b.copy()
    bench.name = "Buy & hold"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qs.reports.html(r, benchmark=bench, output=str(tmp_path / "qs.html"), title="T", periods_per_year=365,
                        match_dates=False)
    ref = (tmp_path / "qs.html").read_text()
    ref = re.sub(r"<title>.*?</title>", "<title>T</title>", ref, count=1, flags=re.S)  # the tab shows our title
    assert ours.count("<svg") >= 14 and "fastrader-figure" not in ours
    assert ours == ref


def _fails():
    raise ValueError("figure 3 could not be drawn")


def test_run_jobs_keeps_order_and_raises_a_worker_error():
    jobs = [(lambda i=i: i * i) for i in range(9)]
    assert run_jobs(jobs, 2) == [i * i for i in range(9)] == run_jobs(jobs, 1)
    with pytest.raises(ValueError, match="figure 3"):
        run_jobs([lambda: 1, _fails, lambda: 2], 2)


def test_no_fork_once_ray_has_been_used(monkeypatch):
    # Ray's gRPC client holds locks in background threads that outlive ray.shutdown(): a forked
    # child that frees one of its objects blocks forever (seen on Python 3.13: a local sweep's
    # report after a Ray sweep in one process).
    jobs = [lambda i=i: i * i for i in range(5)]
    monkeypatch.setattr(parallel, "_FORK_UNSAFE", False)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    linux = sys.platform.startswith("linux")
    assert parallel.fork_is_safe() == linux
    with parallel.Workers(jobs, 2) as w:
        assert (w._pool is not None) == linux
    # merely imported (as test collection does) is harmless; a connected runtime is not
    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: False
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert parallel.fork_is_safe() == linux
    fake.is_initialized = lambda: True
    assert not parallel.fork_is_safe()
    fake.is_initialized = lambda: False
    parallel.mark_fork_unsafe()  # once used, for good
    assert not parallel.fork_is_safe()
    with parallel.Workers(jobs, 2) as w:
        assert w._pool is None
        assert [w.inherited(i).get() for i in range(5)] == [0, 1, 4, 9, 16]
    assert parallel.run_jobs(jobs, 2) == [0, 1, 4, 9, 16]


def test_the_ray_backend_marks_the_process():
    pytest.importorskip("ray")
    from fastrader.sweep import backends

    saved = parallel._FORK_UNSAFE
    try:
        parallel._FORK_UNSAFE = False
        backends._import_ray()
        assert not parallel.fork_is_safe()
    finally:
        parallel._FORK_UNSAFE = saved
