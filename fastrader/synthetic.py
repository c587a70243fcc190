"""Synthetic BTC/USDT-like hourly candles: the project's embedded sample market.

Real exchange data cannot ship with the repository, so the default run uses a
market this module generates, seeded and reproducible. It is built to have the
stylised facts a strategy meets on real crypto data, so that the demo is not a
toy:

* volatility clustering: hourly variance follows a GARCH(1,1) process;
* fat tails: innovations are Student-t (4 degrees of freedom), rescaled to unit
  variance;
* an intraday volatility cycle (busier during European/US hours);
* volume that moves with volatility (log-volume regresses on |return|);
* a weak, slowly switching drift regime, so that a model has something causal
  (if faint) to learn; on real markets there is no promise of that.

Candles use the exact ccxt layout: timestamp (UTC ms of the candle open), open,
high, low, close, volume (in the base asset).

Run ``python -m fastrader.synthetic --help`` to regenerate ``data/``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pandas as pd

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class MarketParams:
    """Parameters of the synthetic market (hourly scale)."""

    start: str = "2021-01-01"
    bars: int = 2 * 365 * 24 + 31 * 24  # a little over two years of hours
    price0: float = 29_000.0
    # GARCH(1,1) on hourly log returns: long-run hourly vol ~0.7%, like BTC.
    omega: float = 2.5e-6
    alpha: float = 0.08
    beta: float = 0.87
    t_dof: float = 4.0
    # Drift regimes: +/- drift per hour, switching on average every ~2 weeks.
    drift: float = 2.0e-4
    regime_switch_p: float = 1.0 / (24 * 14)
    # Short-horizon momentum of returns (AR(1)), weak.
    ar1: float = 0.03
    # Volume: log-volume = base + slope*|r|/sigma_lr + noise.
    log_volume0: float = np.log(1_200.0)
    volume_slope: float = 0.35
    volume_noise: float = 0.35
    # A planted, exactly known edge (off by default): the return of bar t gets
    # sqrt(plant_snr) * eps_{t - plant_lag}, where eps is the random innovation
    # of bar t - plant_lag (visible in that bar's return). plant_snr is the
    # variance of the planted part over that of the innovation, so the best
    # achievable IC on 1-bar returns is about sqrt(snr / (1 + snr)); see oracle_forecast.
    plant_snr: float = 0.0
    plant_lag: int = 1


def generate(params: MarketParams = MarketParams(), seed: int = 1, return_planted: bool = False):
    """Return a DataFrame of synthetic candles in ccxt's column layout.

    With ``return_planted`` also the planted component of every bar's log
    return (zeros when ``params.plant_snr`` is 0), for :func:`oracle_forecast`.
    """
    if params.plant_snr < 0 or params.plant_lag < 1:
        raise ValueError("plant_snr must be >= 0 and plant_lag >= 1")
    rng = np.random.default_rng(seed)
    n = params.bars
    t0 = int(pd.Timestamp(params.start, tz="UTC").value // 1_000_000)
    ts = t0 + HOUR_MS * np.arange(n, dtype=np.int64)
    hour = (ts // HOUR_MS) % 24

    # Intraday volatility multiplier: quiet Asian night, busy 13-17 UTC.
    intraday = 1.0 + 0.35 * np.exp(-0.5 * ((hour - 15.0) / 3.0) ** 2) - 0.15 * np.exp(
        -0.5 * ((hour - 3.0) / 3.0) ** 2
    )

    # Student-t innovations rescaled to unit variance.
    dof = params.t_dof
    z = rng.standard_t(dof, size=n) * np.sqrt((dof - 2.0) / dof)

    regime_flip = rng.random(n) < params.regime_switch_p
    regime = np.where(np.cumsum(regime_flip) % 2 == 0, 1.0, -1.0)

    var = np.empty(n)
    r = np.empty(n)
    planted = np.zeros(n)
    innov = np.zeros(n)
    load, lag = float(np.sqrt(params.plant_snr)), int(params.plant_lag)
    long_run = params.omega / (1.0 - params.alpha - params.beta)
    v, prev_eps, prev_r = long_run, 0.0, 0.0
    for i in range(n):
        v = params.omega + params.alpha * prev_eps**2 + params.beta * v
        var[i] = v
        eps = np.sqrt(v) * intraday[i] * z[i]
        r[i] = params.drift * regime[i] + params.ar1 * prev_r + eps
        if load:  # only when planting: the plain market stays bit for bit what it was
            innov[i] = eps
            if i >= lag:
                planted[i] = load * innov[i - lag]
                r[i] += planted[i]
        prev_eps, prev_r = eps, r[i]

    close = params.price0 * np.exp(np.cumsum(r))
    # Opens gap slightly from the previous close, as on a real order book.
    prev_close = np.concatenate([[params.price0], close[:-1]])
    open_ = prev_close * np.exp(rng.normal(0.0, 0.0002, n))
    sigma = np.sqrt(var) * intraday
    # High/low extend beyond the open-close body by a half-normal amount ~ sigma.
    up = np.abs(rng.normal(0.0, 0.6, n)) * sigma
    down = np.abs(rng.normal(0.0, 0.6, n)) * sigma
    high = np.maximum(open_, close) * np.exp(up)
    low = np.minimum(open_, close) * np.exp(-down)

    sigma_lr = np.sqrt(long_run)
    log_vol = (
        params.log_volume0
        + params.volume_slope * np.abs(r) / sigma_lr
        + 0.4 * (intraday - 1.0)
        + rng.normal(0.0, params.volume_noise, n)
    )
    volume = np.exp(log_vol)

    # Prices to cents and volumes to 5 decimals, as an exchange would report.
    df = pd.DataFrame(
        {
            "timestamp": ts,
            "open": np.round(open_, 2),
            "high": np.round(np.maximum(high, np.maximum(open_, close)), 2),
            "low": np.round(np.minimum(low, np.minimum(open_, close)), 2),
            "close": np.round(close, 2),
            "volume": np.round(volume, 5),
        }
    )
    return (df, planted) if return_planted else df


def oracle_forecast(planted: np.ndarray, horizon: int, lag: int) -> np.ndarray:
    """The best forecast at bar t of the next ``horizon`` bars' planted returns.

    Known at t only if every term is: each planted[t + k] (k = 1..horizon)
    depends on the innovation of bar t + k - lag, so ``lag >= horizon``. NaN
    where the horizon runs past the data. Its IC against the realised target
    is the IC a perfect model of the planted edge would reach.
    """
    if lag < horizon:
        raise ValueError(f"a planted edge at lag {lag} is not fully known {horizon} bars ahead (need lag >= horizon)")
    n = len(planted)
    c = np.concatenate([[0.0], np.cumsum(planted)])
    out = np.full(n, np.nan)
    t = np.arange(n - horizon)
    out[t] = c[t + horizon + 1] - c[t + 1]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fastrader.synthetic",
        description="Generate the synthetic BTC/USDT-like hourly sample market (ccxt column layout).",
    )
    ap.add_argument("--out", default="data/sample_btcusdt_1h.csv", help="output CSV path (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    ap.add_argument("--bars", type=int, default=MarketParams.bars, help="number of hourly bars (default: %(default)s)")
    ap.add_argument("--plant-snr", type=float, default=0.0,
                    help="plant a predictable edge: returns load on the innovation --plant-lag bars back with this "
                    "signal-to-noise ratio (default: 0, none)")
    ap.add_argument("--plant-lag", type=int, default=1, help="lag of the planted edge in bars (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.plant_snr < 0 or args.plant_lag < 1 or args.bars < 1:
        import sys

        print("error: --plant-snr must be >= 0, --plant-lag and --bars >= 1", file=sys.stderr)
        return 2
    df = generate(MarketParams(bars=args.bars, plant_snr=args.plant_snr, plant_lag=args.plant_lag), seed=args.seed)
    df.to_csv(args.out, index=False)
    print(f"wrote {len(df)} candles to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
