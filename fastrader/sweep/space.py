"""Search spaces: which options a sweep varies, and the points it tries.

A space maps a key to a dimension. A key is any ``python -m fastrader.run``
option (``threshold``, ``commission``, ``start``, ``model``, ``symbol``...,
with ``-`` or ``_``) or ``params.NAME`` for a strategy param. A dimension is

* a list of values: every value for a grid, a uniform choice for random and
  Optuna search;
* a range ``{low, high}`` (``log = true`` for log-uniform, ``int = true`` for
  integers, ``num = K`` to give a grid K evenly spaced values).

Points are plain dicts key -> value, generated deterministically (grid in
the order written, random from a seeded numpy generator), so two runs of the
same sweep, on any backend, try the same points.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Dimension:
    key: str
    values: tuple | None = None  # categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    num: int | None = None  # grid points of a range

    @property
    def is_range(self) -> bool:
        return self.values is None

    def grid(self) -> list:
        if not self.is_range:
            return list(self.values)
        if self.num is None:
            raise ConfigError(f"space {self.key!r}: a range needs num = K to be part of a grid (or use search = 'random')")
        pts = np.geomspace(self.low, self.high, self.num) if self.log else np.linspace(self.low, self.high, self.num)
        if self.integer:
            return sorted({int(round(x)) for x in pts})
        return [float(x) for x in pts]

    def sample(self, rng: np.random.Generator):
        if not self.is_range:
            return self.values[int(rng.integers(len(self.values)))]
        if self.integer:
            if self.log:
                return int(round(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


def parse_dimension(key: str, spec) -> Dimension:
    """One ``[space]`` entry of a sweep config."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"space {key!r}: the list of values is empty")
        return Dimension(key, values=tuple(spec))
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log", "int", "num"}
        if unknown:
            raise ConfigError(f"space {key!r}: unknown range field(s) {', '.join(sorted(unknown))} "
                              "(a range takes low, high, log, int, num)")
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"space {key!r}: a range needs low and high")
        lo, hi = spec["low"], spec["high"]
        for name, x in (("low", lo), ("high", hi)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise ConfigError(f"space {key!r}: {name} must be a finite number, got {x!r}")
        if not lo < hi:
            raise ConfigError(f"space {key!r}: low must be below high, got {lo!r} >= {hi!r}")
        log = bool(spec.get("log", False))
        if log and lo <= 0:
            raise ConfigError(f"space {key!r}: a log range needs low > 0")
        num = spec.get("num")
        if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 1):
            raise ConfigError(f"space {key!r}: num must be a positive integer, got {num!r}")
        return Dimension(key, low=float(lo), high=float(hi), log=log, integer=bool(spec.get("int", False)), num=num)
    return Dimension(key, values=(spec,))  # a single fixed value


def grid_points(dims: list[Dimension]) -> list[dict]:
    """Cartesian product in the order the keys and values were written (last key varies fastest)."""
    if not dims:
        return [{}]
    axes = [d.grid() for d in dims]
    return [dict(zip([d.key for d in dims], combo)) for combo in itertools.product(*axes)]


def random_points(dims: list[Dimension], n: int, seed: int) -> list[dict]:
    """``n`` distinct points drawn from a generator seeded with ``seed`` (fewer if the space is smaller)."""
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    tries = 0
    while len(out) < n and tries < 50 * n + 100:
        tries += 1
        p = {d.key: d.sample(rng) for d in dims}
        ident = repr(sorted(p.items()))
        if ident not in seen:
            seen.add(ident)
            out.append(p)
    return out


def optuna_distributions(dims: list[Dimension]) -> dict:
    import optuna

    out = {}
    for d in dims:
        if not d.is_range:
            out[d.key] = optuna.distributions.CategoricalDistribution(list(d.values))
        elif d.integer:
            out[d.key] = optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log)
        else:
            out[d.key] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.log)
    return out
