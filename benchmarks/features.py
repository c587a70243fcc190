"""Benchmark: fastrader.features against TA-Lib and pandas, one process.

Cases (each a batch pass over --bars bars of a seeded BTC-like random walk):
rsi_14, ema_20, atr_14, bbands_20, macd, stddev_24, sma_20 (each impl computes
the same indicator) and ``all``: the default model feature set (16 columns)
in fastrader's fused pass, the same columns written in pandas, and TA-Lib for
the indicators it has with pandas/NumPy for the rest. With the real BTC/USDT
file present, also ``all_btc`` (the default set over the 43,780 real bars),
pass ``batch`` and ``stream`` (FeatureStream, one bar at a time).

Timing: the implementations of a case are warmed up, then timed in
interleaved rounds (one call of each per round, in alternating order,
--repeat rounds), so that load from other processes and the allocator state
each leaves behind hit them alike; ``ms`` is the median wall time,
``cpu_ms`` the median CPU time of this process, ``min_ms`` the fastest call.
``--json PATH`` writes a list of rows {"case", "impl", "pass", "ms", "cpu_ms",
"min_ms", "bars", "speedup_vs_fastrader"?, "note"?}; speedups are ratios of
medians (wall).

    .venv/bin/python benchmarks/features.py [--bars 1000000] [--repeat 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Idle OpenBLAS worker threads spin for a while after any BLAS call and would
# steal a core from the timed code on a small machine; nothing here needs BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastrader.features as ff  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_BTCUSDT_1h.csv"


def bars(n, seed=0):
    rng = np.random.default_rng(seed)
    c = 30_000 * np.exp(np.cumsum(rng.normal(0, 0.007, n)))
    o = np.r_[30_000, c[:-1]]
    h = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.003, n)))
    lo = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.003, n)))
    v = rng.lognormal(6.0, 0.8, n)
    return o, h, lo, c, v


def timeit(fns, repeat, warmup=2):
    """Median wall ms, median CPU ms and min wall ms of each callable, timed in rounds."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for r in range(repeat):
        # alternate who goes first: whoever runs right after the other one
        # meets the allocator and caches in the state the other left
        order = list(enumerate(fns))
        for j, fn in (order if r % 2 == 0 else order[::-1]):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
            wall[j].append((t1 - t0) * 1e3)
            cpu[j].append((c1 - c0) * 1e3)
    return [(statistics.median(w), statistics.median(c), min(w)) for w, c in zip(wall, cpu)]


# ----------------------------------------------------------------- pandas side
def pd_ema_seeded(s: pd.Series, n: int) -> pd.Series:
    """TA-Lib-style EMA in pandas: seed with the mean of the first n, then recurse."""
    x = s.to_numpy()
    seeded = pd.Series(np.r_[x[:n].mean(), x[n:]])
    e = seeded.ewm(alpha=2 / (n + 1), adjust=False).mean().to_numpy()
    return pd.Series(np.r_[np.full(n - 1, np.nan), e], index=s.index)


def pd_wilder(x: pd.Series, n: int) -> pd.Series:
    """Wilder smoothing (alpha 1/n) seeded with the mean of the first n valid values."""
    first = x.first_valid_index()
    v = x.to_numpy()[first:]
    seeded = pd.Series(np.r_[v[:n].mean(), v[n:]])
    w = seeded.ewm(alpha=1 / n, adjust=False).mean().to_numpy()
    return pd.Series(np.r_[np.full(first + n - 1, np.nan), w], index=x.index)


def pd_rsi(c: pd.Series, n=14):
    d = c.diff()
    g = pd_wilder(d.clip(lower=0), n)
    lo = pd_wilder((-d).clip(lower=0), n)
    return 100 * g / (g + lo)


def pd_atr(h, lo, c, n=14):
    pc = c.shift(1)
    tr = pd.concat([h - lo, (h - pc).abs(), (lo - pc).abs()], axis=1).max(axis=1, skipna=False)
    return pd_wilder(tr, n)


def pd_macd(c, f=12, s=26, g=9):
    fast = pd_ema_seeded(c.iloc[s - f:].reset_index(drop=True), f).to_numpy()
    slow = pd_ema_seeded(c, s).to_numpy()
    line = pd.Series(np.r_[np.full(s - f, np.nan), fast] - slow)
    sig = pd_ema_seeded(line.iloc[s - 1:].reset_index(drop=True), g).to_numpy()
    sig = pd.Series(np.r_[np.full(s - 1, np.nan), sig])
    return line, sig, line - sig


def pd_bbands(c, n=20, k=2.0):
    m = c.rolling(n).mean()
    sd = c.rolling(n).std(ddof=0)
    return m + k * sd, m, m - k * sd


def pd_default(o, h, lo, c, v):
    """The default feature set, column for column, in pandas."""
    r = np.log(c / c.shift(1))
    out = {
        "logret_1": r,
        "logret_24": np.log(c / c.shift(24)),
        "vol_24": r.rolling(24).std(),
        "vol_168": r.rolling(168).std(),
        "close_ema_20": c / pd_ema_seeded(c, 20) - 1,
        "rsi_14": pd_rsi(c, 14),
        "atr_pct_14": pd_atr(h, lo, c, 14) / c,
    }
    line, sig, hist = pd_macd(c)
    out.update({"macdn_12_26_9": line / c, "macdn_signal_12_26_9": sig / c, "macdn_hist_12_26_9": hist / c})
    up, mid, dn = pd_bbands(c, 20, 2.0)
    out["bb_pctb_20_2"] = (c - dn) / (up - dn)
    out["bb_width_20_2"] = (up - dn) / mid
    out["volume_z_24"] = (v - v.rolling(24).mean()) / v.rolling(24).std()
    tp = (h + lo + c) / 3
    out["vwap_dev_24"] = c / ((tp * v).rolling(24).sum() / v.rolling(24).sum()) - 1
    out["hl_range"] = (h - lo) / c
    out["intrabar"] = ((c - lo) / (h - lo)).where(h > lo, 0.5)
    return pd.DataFrame(out)


def talib_default(o, h, lo, c, v):
    """The default set with TA-Lib where it has the indicator, pandas/NumPy elsewhere."""
    import talib

    cs, vs = pd.Series(c), pd.Series(v)
    r = np.r_[np.nan, np.log(c[1:] / c[:-1])]
    rs = pd.Series(r)
    X = np.empty((len(c), 16))
    X[:, 0] = r
    X[:, 1] = np.r_[np.full(24, np.nan), np.log(c[24:] / c[:-24])]
    X[:, 2] = rs.rolling(24).std().to_numpy()
    X[:, 3] = rs.rolling(168).std().to_numpy()
    X[:, 4] = c / talib.EMA(c, 20) - 1
    X[:, 5] = talib.RSI(c, 14)
    X[:, 6] = talib.ATR(h, lo, c, 14) / c
    line, sig, hist = talib.MACD(c, 12, 26, 9)
    X[:, 7], X[:, 8], X[:, 9] = line / c, sig / c, hist / c
    up, mid, dn = talib.BBANDS(c, 20, 2, 2, 0)
    X[:, 10] = (c - dn) / (up - dn)
    X[:, 11] = (up - dn) / mid
    X[:, 12] = ((vs - vs.rolling(24).mean()) / vs.rolling(24).std()).to_numpy()
    tp = (h + lo + c) / 3
    X[:, 13] = c / (pd.Series(tp * v).rolling(24).sum() / vs.rolling(24).sum()).to_numpy() - 1
    X[:, 14] = (h - lo) / c
    X[:, 15] = np.where(h > lo, (c - lo) / np.where(h > lo, h - lo, 1.0), 0.5)
    return X


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)

    try:
        import talib
    except ImportError:
        talib = None
        print("talib not installed: TA-Lib rows skipped", file=sys.stderr)

    o, h, lo, c, v = bars(args.bars)
    cs, hs, ls, vs = pd.Series(c), pd.Series(h), pd.Series(lo), pd.Series(v)
    slow_rep = max(3, args.repeat // 3)
    cases = {
        "rsi_14": (lambda: ff.rsi(c, 14), lambda: talib.RSI(c, 14), lambda: pd_rsi(cs, 14)),
        "ema_20": (lambda: ff.ema(c, 20), lambda: talib.EMA(c, 20), lambda: pd_ema_seeded(cs, 20)),
        "atr_14": (lambda: ff.atr(h, lo, c, 14), lambda: talib.ATR(h, lo, c, 14), lambda: pd_atr(hs, ls, cs, 14)),
        "bbands_20": (lambda: ff.bbands(c, 20, 2.0), lambda: talib.BBANDS(c, 20, 2, 2, 0), lambda: pd_bbands(cs)),
        "macd": (lambda: ff.macd(c, 12, 26, 9), lambda: talib.MACD(c, 12, 26, 9), lambda: pd_macd(cs)),
        "stddev_24": (lambda: ff.stddev(c, 24), lambda: talib.STDDEV(c, 24, 1), lambda: cs.rolling(24).std(ddof=0)),
        "sma_20": (lambda: ff.sma(c, 20), lambda: talib.SMA(c, 20), lambda: cs.rolling(20).mean()),
    }
    spec = ff.default_spec()
    cases["all"] = (lambda: ff.compute_features(spec, o, h, lo, c, v), lambda: talib_default(o, h, lo, c, v),
                    lambda: pd_default(pd.Series(o), hs, ls, cs, vs))
    notes = {("all", "talib"): "TA-Lib for EMA/RSI/ATR/MACD/BBANDS, pandas/NumPy for the rest",
             ("all", "fastrader"): f"default_spec(), {len(spec.names)} columns, one fused pass"}

    rows = []

    def add(case, impl, res, n, ours=None, **extra):
        ms, cpu, mn = res
        row = {"case": case, "impl": impl, "pass": extra.pop("pass_", "batch"), "ms": ms, "cpu_ms": cpu,
               "min_ms": mn, "bars": n}
        if ours is not None:
            row["speedup_vs_fastrader"] = ms / ours
        row.update(extra)
        rows.append(row)

    for case, (f_ours, f_ta, f_pd) in cases.items():
        fns = [f_ours] + ([f_ta] if talib is not None else [])
        res = timeit(fns, args.repeat)
        add(case, "fastrader", res[0], args.bars)
        if talib is not None:
            add(case, "talib", res[1], args.bars, ours=res[0][0])
        # pandas is 5-50x slower: fewer rounds, interleaved with ours again
        res_pd = timeit([f_ours, f_pd], slow_rep, warmup=1)
        add(case, "pandas", res_pd[1], args.bars, ours=res_pd[0][0])

    if REAL.is_file():
        df = pd.read_csv(REAL)
        ro, rh, rl, rc, rv = (df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume"))
        res = timeit([lambda: ff.compute_features(spec, ro, rh, rl, rc, rv),
                      lambda: pd_default(df.open, df.high, df.low, df.close, df.volume)], args.repeat)
        add("all_btc", "fastrader", res[0], len(rc))
        add("all_btc", "pandas", res[1], len(rc), ours=res[0][0])

        def stream():
            fs = ff.FeatureStream(spec)
            for b in zip(ro.tolist(), rh.tolist(), rl.tolist(), rc.tolist(), rv.tolist()):
                fs.update(*b)

        (ms, cpu, mn), = timeit([stream], 3, warmup=1)
        add("all_btc", "fastrader", (ms, cpu, mn), len(rc), pass_="stream",
            note=f"{ms * 1e3 / len(rc):.2f} us per bar, Python loop included")
    else:
        print(f"real data not found at {REAL}: all_btc rows skipped", file=sys.stderr)

    for r in rows:
        if (r["case"], r["impl"]) in notes:
            r.setdefault("note", notes[(r["case"], r["impl"])])

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"fastrader.features benchmark, {args.bars:,} bars, median of {args.repeat} rounds "
          f"(pandas {slow_rep}), {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"{'case':<10} {'impl':<10} {'pass':<7} {'bars':>9} {'ms':>10} {'cpu_ms':>10} {'min_ms':>10} "
          f"{'x fastrader':>12}")
    for r in rows:
        sp = r.get("speedup_vs_fastrader")
        print(f"{r['case']:<10} {r['impl']:<10} {r['pass']:<7} {r['bars']:>9,} {r['ms']:>10.3f} {r['cpu_ms']:>10.3f} "
              f"{r['min_ms']:>10.3f} {(f'{sp:.2f}x' if sp else ''):>12}")
    print("'x fastrader': the impl's median time over fastrader's median in the same rounds "
          "(>1: fastrader is faster)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
