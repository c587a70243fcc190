"""Download speed: fastrader's cached download against a plain ccxt ``fetch_ohlcv`` paging loop.

Both run in this one process, one after the other, against the same local
fake Binance (``fastrader.testing.exchange_server``, in a process of its own
unless ``--in-process``), serving the same synthetic 1-minute candles in the
same 1000-candle pages, through the same real ccxt client class with rate
limiting on. fastrader's run is the whole
``fetch_history`` path into a fresh temporary cache: market loading, paging,
page checks, one durable segment per page, compaction, the final frame
(the deletion of the folded segments is left to a helper thread, as in real
use; the temporary cache is made and removed outside the timing). The
peer is what a user writes by hand: a loop that asks from one timeframe after
the last candle until the range is done, then builds a DataFrame; it caches
nothing and checks nothing.

The server renders every row before any timing, so a page costs it a join;
what is timed is the client side. Each case is timed ``--repeats`` times,
alternating which implementation goes first; the table shows medians, the
spread (max/min - 1) across repeats, the ratio of the medians ("vs loop") and
the median (and range) of the per-repeat ratios ("paired"), which is what to
read on a shared machine: both runs of a pair see the same load.

    python benchmarks/download.py                  # 1, 3, 6 and 12 months
    python benchmarks/download.py --months 1,12 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MINUTE = 60_000
DAY = 86_400_000
START = 1_640_995_200_000  # 2022-01-01 00:00 UTC


def synthetic_minutes(months: int, seed: int = 0) -> pd.DataFrame:
    """``months`` x (365/12) days of 1m candles: a random walk with opens away from the last close and a few gaps."""
    from fastrader.testing import random_candles

    n = months * 365 * 1440 // 12
    frame = random_candles(n, seed=seed, start_ms=START, step_ms=MINUTE)
    rng = np.random.default_rng(seed)
    frame["open"] = frame["open"] * (1 + rng.normal(0, 0.0005, n))  # not every open is the last close
    frame["high"] = np.maximum(frame["high"], frame["open"])
    frame["low"] = np.minimum(frame["low"], frame["open"])
    # A handful of short outages, as real minute histories have.
    gaps = rng.choice(np.arange(100, n - 100), size=max(1, months * 2), replace=False)
    drop = np.unique(np.concatenate([g + np.arange(rng.integers(1, 30)) for g in gaps]))
    return frame.drop(index=drop).reset_index(drop=True)


def run_fastrader(url: str, since: int, until: int, cache: str) -> int:
    from fastrader.data import fetch_history

    result = fetch_history("binance", "BTC/USDT", "1m", since, until, cache_dir=cache, api_url=url, progress=False)
    if result.warnings or result.missing:
        raise RuntimeError(f"fastrader download incomplete: {result.warnings} {result.missing}")
    return len(result.candles)


def run_ccxt_loop(url: str, since: int, until: int, cache: str) -> int:
    import ccxt

    from fastrader.data.exchange import override_api_url

    exchange = ccxt.binance({"enableRateLimit": True})
    override_api_url(exchange, url)  # only rewrites the base URLs, as fastrader's client gets
    exchange.options["fetchMarkets"] = dict(exchange.options["fetchMarkets"], types=["spot"])
    exchange.load_markets()
    rows: list[list] = []
    cursor = since
    while cursor < until:
        page = exchange.fetch_ohlcv("BTC/USDT", "1m", since=cursor, limit=1000)
        if not page:
            break
        rows.extend(r for r in page if r[0] < until)
        cursor = page[-1][0] + MINUTE
    frame = pd.DataFrame(rows, columns=["timestamp", "open", "high", "low", "close", "volume"])
    return len(frame)


IMPLS = {"fastrader": run_fastrader, "ccxt-loop": run_ccxt_loop}


@contextlib.contextmanager
def serve(frame: pd.DataFrame, *, in_process: bool):
    """The fake Binance serving ``frame`` as 1m klines, every row rendered before any timing; yields its URL.

    By default it runs in its own process, so its work neither holds this
    process's GIL nor waits for it: the clients are what is timed.
    """
    if in_process:
        from fastrader.testing.exchange_server import ExchangeServer

        with ExchangeServer(frame, interval="1m", extra_symbols=(), max_requests=10**9) as server:
            for series in server.series.values():
                series.binance_rows(0, len(series.ts))
            yield server.url
        return
    with tempfile.TemporaryDirectory(prefix="fastrader-bench-") as tmp:
        data = Path(tmp) / "candles.parquet"
        frame.to_parquet(data, index=False)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastrader.testing.exchange_server", "--csv", str(data), "--interval", "1m",
             "--port", str(port), "--max-requests", str(10**9), "--prerender"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            line = proc.stdout.readline()  # 'serving ... at URL' once every row is rendered
            if "serving" not in line:
                raise RuntimeError(f"test server did not start: {line!r}")
            yield line.rsplit(" ", 1)[-1].strip()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--months", default="1,3,6,12", help="comma-separated case lengths in months (default: 1,3,6,12)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case and implementation (default: 3)")
    parser.add_argument("--json", metavar="PATH", help="write rows {case, impl, pass, ms, ...} to PATH")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the server on a thread of this process (its work then shares the GIL with both clients)",
    )
    args = parser.parse_args(argv)
    months = [int(m) for m in args.months.split(",") if m.strip()]

    frame = synthetic_minutes(max(months))
    since = int(frame["timestamp"].iat[0])
    with serve(frame, in_process=args.in_process) as url:
        server = argparse.Namespace(url=url)
        for impl in IMPLS.values():  # warm-up: imports, connection pool, ccxt's market parsing
            with tempfile.TemporaryDirectory(prefix="fastrader-bench-cache-") as cache:
                impl(server.url, since, since + 3 * 1000 * MINUTE, cache)
        rows = []
        for m in months:
            until = START + m * 365 * DAY // 12
            expected = int(((frame["timestamp"] >= since) & (frame["timestamp"] < until)).sum())
            times: dict[str, list[float]] = {name: [] for name in IMPLS}
            for rep in range(args.repeats):
                order = list(IMPLS) if rep % 2 == 0 else list(IMPLS)[::-1]
                for name in order:
                    # A fresh, empty cache each time; made and removed outside the timing.
                    cache = tempfile.mkdtemp(prefix="fastrader-bench-cache-")
                    t0 = time.perf_counter()
                    n = IMPLS[name](server.url, since, until, cache)
                    times[name].append((time.perf_counter() - t0) * 1000)
                    shutil.rmtree(cache, ignore_errors=True)
                    if n != expected:
                        raise RuntimeError(f"{name} got {n} candles for {m} months, the server holds {expected}")
            # Each repeat times both back to back, so their ratio sees the same machine load.
            paired = [f / c for f, c in zip(times["fastrader"], times["ccxt-loop"])]
            for name, ms in times.items():
                med = statistics.median(ms)
                rows.append(
                    {
                        "case": f"1m-{m}mo",
                        "impl": name,
                        "pass": "download",
                        "ms": round(med, 1),
                        "candles": expected,
                        "us_per_candle": round(med * 1000 / expected, 2),
                        "spread": round(max(ms) / min(ms) - 1, 3),
                        "runs_ms": [round(t, 1) for t in ms],
                        "paired_ratio": round(statistics.median(paired), 3) if name == "fastrader" else 1.0,
                        "paired_ratio_range": [round(min(paired), 3), round(max(paired), 3)] if name == "fastrader" else [1.0, 1.0],
                    }
                )
            print(f"  {m} months done", file=sys.stderr, flush=True)

    print(
        f"{'case':<9} {'impl':<10} {'candles':>8} {'ms':>10} {'us/candle':>10} {'spread':>7} {'vs loop':>8} "
        f"{'paired (min..max)':>20}"
    )
    by = {(r["case"], r["impl"]): r for r in rows}
    for r in rows:
        ratio = r["ms"] / by[(r["case"], "ccxt-loop")]["ms"]
        lo, hi = r["paired_ratio_range"]
        print(
            f"{r['case']:<9} {r['impl']:<10} {r['candles']:>8} {r['ms']:>10.1f} {r['us_per_candle']:>10.2f} "
            f"{r['spread']:>6.1%} {ratio:>7.2f}x {r['paired_ratio']:>7.2f}x ({lo:.2f}..{hi:.2f})"
        )
    if 1 in months and 12 in months:
        f1, f12 = by[("1m-1mo", "fastrader")], by[("1m-12mo", "fastrader")]
        ratio12 = f12["ms"] / by[("1m-12mo", "ccxt-loop")]["ms"]
        growth = f12["us_per_candle"] / f1["us_per_candle"]
        print(f"fastrader / ccxt-loop at 12 months: {ratio12:.2f}x (target <= 1.3x)")
        print(f"fastrader us/candle, 12 months / 1 month: {growth:.2f}x (target <= 1.2x)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
