"""PBO (CSCV) and the deflated Sharpe ratio against independent re-implementations and planted cases."""

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest

from fastrader.sweep.overfit import deflated_sharpe, expected_max_sharpe, pbo_cscv


def brute_pbo(m, s):
    """CSCV written out loop by loop from Bailey, Borwein, López de Prado & Zhu (2017), section 2."""
    t, n = m.shape
    edges = np.linspace(0, t, s + 1).astype(int)
    blocks = [m[edges[i]:edges[i + 1]] for i in range(s)]
    logits = []
    for c in itertools.combinations(range(s), s // 2):
        ins = np.vstack([blocks[i] for i in c])
        oos = np.vstack([blocks[i] for i in range(s) if i not in c])
        sr_in = [ins[:, j].mean() / ins[:, j].std(ddof=1) for j in range(n)]
        sr_out = [oos[:, j].mean() / oos[:, j].std(ddof=1) for j in range(n)]
        best = int(np.argmax(sr_in))
        rank = sum(x < sr_out[best] for x in sr_out) + (sum(x == sr_out[best] for x in sr_out) + 1) / 2
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
    return float(np.mean(np.array(logits) <= 0)), len(logits)


def test_pbo_matches_brute_force():
    rng = np.random.default_rng(5)
    m = rng.standard_t(4, size=(240, 7)) * 0.01 + rng.normal(0, 0.001, 7)
    for s in (4, 6, 8):
        got = pbo_cscv(m, blocks=s)
        want, splits = brute_pbo(m, s)
        assert got.splits == splits and got.blocks == s
        assert got.pbo == pytest.approx(want, abs=1e-12)


def test_no_edge_is_called_overfit_and_not_significant():
    # 60 strategies of pure noise with fat tails: the in-sample winner is a coin flip out of sample.
    rng = np.random.default_rng(11)
    m = rng.standard_t(5, size=(730, 60)) * 0.02
    p = pbo_cscv(m)
    assert 0.3 < p.pbo < 0.75, p.pbo
    d = deflated_sharpe(m)
    assert d.dsr < 0.95, d.dsr
    assert d.sharpe0 > 0 and d.sharpe < 3 * d.sharpe0


def test_planted_edge_is_found():
    rng = np.random.default_rng(12)
    m = rng.normal(0, 0.02, size=(730, 60))
    m[:, 17] += 0.004  # a daily Sharpe of 0.2 (3.8 annualised) among noise
    p = pbo_cscv(m)
    assert p.pbo < 0.05, p.pbo
    d = deflated_sharpe(m)
    assert d.selected == 17
    assert d.dsr > 0.95, d.dsr  # the usual significance bar


def test_deflated_sharpe_formula_by_hand():
    # Bailey & López de Prado (2014), eqs. 2 and 5, computed here with statistics.NormalDist only.
    rng = np.random.default_rng(3)
    m = rng.standard_t(6, size=(500, 25)) * 0.01 + 0.0004
    d = deflated_sharpe(m)
    sr = m.mean(0) / m.std(0, ddof=1)
    k = int(np.argmax(sr))
    x = m[:, k]
    g = 0.5772156649015329
    nd = NormalDist()
    n = m.shape[1]
    sr0 = math.sqrt(np.var(sr, ddof=1)) * ((1 - g) * nd.inv_cdf(1 - 1 / n) + g * nd.inv_cdf(1 - 1 / (n * math.e)))
    z = (x - x.mean()) / x.std(ddof=0)
    skew, kurt = float(np.mean(z ** 3)), float(np.mean(z ** 4))
    want = nd.cdf((sr[k] - sr0) * math.sqrt(len(x) - 1) / math.sqrt(1 - skew * sr[k] + (kurt - 1) / 4 * sr[k] ** 2))
    assert d.selected == k
    assert d.sharpe0 == pytest.approx(sr0, rel=1e-12)
    assert d.dsr == pytest.approx(want, rel=1e-9)
    assert expected_max_sharpe(1.0, 1) == 0.0
