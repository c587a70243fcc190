"""How much of a sweep's best result is selection luck.

Two statistics on the trial matrix (daily returns, one column per trial):

* **Probability of backtest overfitting (PBO)** by combinatorially symmetric
  cross-validation (CSCV), from D. H. Bailey, J. M. Borwein, M. López de
  Prado and Q. J. Zhu, "The Probability of Backtest Overfitting", Journal of
  Computational Finance 20(4), 2017 (SSRN 2326253, 2013-2015). The rows are
  cut into S blocks; for every way of choosing S/2 blocks as in-sample (the
  rest out-of-sample) the trial with the best in-sample Sharpe is found and
  its out-of-sample Sharpe ranked among all trials: ``w = rank / (N + 1)``,
  ``logit = ln(w / (1 - w))``. PBO is the share of splits whose logit is
  <= 0: how often the in-sample winner is at or below the median out of
  sample. Strategies with no edge give about 0.5; a real edge gives near 0.
* **Deflated Sharpe ratio (DSR)**, from D. H. Bailey and M. López de Prado,
  "The Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest
  Overfitting and Non-Normality", Journal of Portfolio Management 40(5),
  2014. The best trial's per-period Sharpe ``SR`` is compared with the
  Sharpe that the best of N no-edge trials reaches by luck,
  ``SR0 = sqrt(V) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))``
  (V: variance of the trials' Sharpe ratios, g: Euler-Mascheroni constant,
  Z: standard normal quantile), allowing for the skew and kurtosis of its
  returns over T periods:
  ``DSR = Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR**2))``.
  It is the probability that the true Sharpe is above zero after the
  selection; 0.95 is the usual bar. N counts every trial, correlated ones
  too, which makes SR0 larger: the test errs on the cautious side.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

EULER_GAMMA = 0.5772156649015329


def _sharpe(x: np.ndarray, axis=0) -> np.ndarray:
    mu = x.mean(axis=axis)
    sd = x.std(axis=axis, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(sd > 0, mu / sd, 0.0)  # a flat trial has no edge: Sharpe 0
    return s


@dataclass
class PBO:
    pbo: float
    blocks: int
    splits: int
    trials: int
    periods: int
    logits: np.ndarray
    degradation: float  # mean out-of-sample minus in-sample Sharpe of the selected trial (per period)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("logits")
        d["logit_median"] = float(np.median(self.logits))
        return d


def pbo_cscv(matrix, blocks: int = 16) -> PBO:
    """PBO of a T x N matrix of per-period returns (rows: time, columns: trials)."""
    m = np.asarray(matrix, dtype=np.float64)
    t, n = m.shape
    if n < 2:
        raise ValueError("PBO needs at least two trials")
    s = int(blocks) - int(blocks) % 2
    while s > 2 and t // s < 2:
        s -= 2
    if s < 2 or t // s < 2:
        raise ValueError(f"PBO needs at least 4 periods, got {t}")
    edges = np.linspace(0, t, s + 1).astype(int)
    cnt = np.diff(edges).astype(np.float64)
    sums = np.add.reduceat(m, edges[:-1], axis=0)  # (S, N)
    sq = np.add.reduceat(m * m, edges[:-1], axis=0)
    combos = np.array(list(itertools.combinations(range(s), s // 2)))
    mask = np.zeros((len(combos), s))
    mask[np.arange(len(combos))[:, None], combos] = 1.0

    def sharpe_of(msk):
        k = msk @ cnt  # periods per split
        mu = (msk @ sums) / k[:, None]
        var = ((msk @ sq) - k[:, None] * mu * mu) / (k[:, None] - 1)
        sd = np.sqrt(np.maximum(var, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 1e-15 * np.maximum(np.abs(mu), 1.0), mu / sd, 0.0)

    ins, oos = sharpe_of(mask), sharpe_of(1.0 - mask)
    best = np.argmax(ins, axis=1)  # first of ties: deterministic
    pick = oos[np.arange(len(combos)), best]
    # rank of the picked trial out of sample, 1 = worst, N = best; ties share their mean rank
    below = (oos < pick[:, None]).sum(axis=1)
    equal = (oos == pick[:, None]).sum(axis=1)
    rank = below + (equal + 1) / 2.0
    w = rank / (n + 1.0)
    logits = np.log(w / (1.0 - w))
    degr = float(np.mean(pick - ins[np.arange(len(combos)), best]))
    return PBO(float(np.mean(logits <= 0)), s, len(combos), n, t, logits, degr)


@dataclass
class DSR:
    dsr: float
    sharpe: float  # selected trial, per period
    sharpe0: float  # expected best Sharpe of N no-edge trials, per period
    trials: int
    periods: int
    skew: float
    kurtosis: float
    sharpe_var: float
    selected: int

    def as_dict(self) -> dict:
        return asdict(self)


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_ppf(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def expected_max_sharpe(sharpe_var: float, n: int) -> float:
    """SR0: what the best of ``n`` trials with no edge is expected to reach (Bailey & López de Prado 2014, eq. 5)."""
    if n < 2:
        return 0.0
    return math.sqrt(sharpe_var) * ((1 - EULER_GAMMA) * _norm_ppf(1 - 1 / n) + EULER_GAMMA * _norm_ppf(1 - 1 / (n * math.e)))


def deflated_sharpe(matrix, selected: int | None = None) -> DSR:
    """DSR of the selected column (default: the highest Sharpe) of a T x N matrix of per-period returns."""
    m = np.asarray(matrix, dtype=np.float64)
    t, n = m.shape
    if t < 3:
        raise ValueError(f"the deflated Sharpe ratio needs at least 3 periods, got {t}")
    srs = _sharpe(m)
    k = int(np.argmax(srs)) if selected is None else int(selected)
    x = m[:, k]
    sr = float(srs[k])
    v = float(np.var(srs, ddof=1)) if n > 1 else 0.0
    sr0 = expected_max_sharpe(v, n)
    d = x - x.mean()
    sd = math.sqrt(float(np.mean(d * d)))
    skew = float(np.mean(d ** 3) / sd ** 3) if sd > 0 else 0.0
    kurt = float(np.mean(d ** 4) / sd ** 4) if sd > 0 else 3.0
    den = 1 - skew * sr + (kurt - 1) / 4 * sr * sr
    z = (sr - sr0) * math.sqrt(t - 1) / math.sqrt(den) if den > 0 else float("nan")
    return DSR(_norm_cdf(z) if z == z else float("nan"), sr, sr0, n, t, skew, kurt, v, k)


def returns_matrix(records: list[dict]) -> pd.DataFrame:
    """Daily returns of ok trials as a T x N frame on the days all of them share."""
    cols = {}
    for r in records:
        ret = r.get("returns")
        if r.get("status") == "ok" and ret and ret.get("r"):
            cols[r["id"]] = pd.Series(ret["r"], index=ret["day_ms"], dtype=np.float64)
    if not cols:
        return pd.DataFrame()
    return pd.DataFrame(cols).dropna(how="any").sort_index()


def verdict(pbo: PBO | None, dsr: DSR | None, periods_per_year: int = 365) -> list[str]:
    lines = []
    if pbo is not None:
        what = ("likely overfit: the in-sample best is at or below the median out of sample in most splits"
                if pbo.pbo >= 0.5 else "the in-sample best mostly stays above the median out of sample"
                if pbo.pbo < 0.2 else "some overfitting: the in-sample best often falls to the median or below")
        lines.append(f"PBO {pbo.pbo:.2f} (CSCV, {pbo.blocks} blocks, {pbo.splits:,} splits of {pbo.trials} trials "
                     f"x {pbo.periods} days): {what}")
    if dsr is not None:
        ann = math.sqrt(periods_per_year)
        what = ("significant: the best trial's Sharpe beats what the best of this many no-edge trials reaches"
                if dsr.dsr >= 0.95 else "not significant: no evidence of an edge beyond selection luck")
        lines.append(f"deflated Sharpe {dsr.dsr:.2f} for the best trial (Sharpe {dsr.sharpe * ann:.2f} annualised vs "
                     f"{dsr.sharpe0 * ann:.2f} expected from the best of {dsr.trials} trials by luck): {what}")
    return lines
