"""Causal feature engineering in Cython: indicators, one fused pass, streaming.

Quick use::

    from fastrader.features import default_spec, compute_features, Normalizer, FeatureStream
    spec = default_spec()
    X = compute_features(spec, open, high, low, close, volume)   # (bars, len(spec.names))
    norm = Normalizer.fit(X[:train_end])                           # training rows only
    Z = norm.transform(X)

Row t of every feature depends only on bars <= t; rows before ``spec.warmup``
are NaN on clean data. Bad bars raise by default (see ``validate``).
Standalone TA-Lib-compatible kernels: ``sma, ema, rsi, atr, macd, bbands, stddev``.
"""

from __future__ import annotations

import numpy as np

from fastrader._isa import use_variants

use_variants(__name__, ("_engine", "_kernels"))  # the AVX2/FMA builds where the CPU has them

from fastrader.features._engine import Engine  # noqa: E402
from fastrader.features._kernels import atr, bbands, ema, macd, rsi, sma, stddev  # noqa: E402
from fastrader.features.normalize import Normalizer, rolling_zscore
from fastrader.features.spec import KINDS, FeatureSpec, default_spec
from fastrader.features.stream import FeatureStream
from fastrader.features.validate import as_arrays, bad_bar_error, bar_flags, check_on_bad

__all__ = [
    "FeatureSpec", "default_spec", "compute_features", "compute_frame", "FeatureStream",
    "Normalizer", "rolling_zscore", "bar_flags", "KINDS",
    "sma", "ema", "rsi", "atr", "macd", "bbands", "stddev",
]


def compute_features(spec: FeatureSpec, open, high, low, close, volume, *,
                     on_bad: str = "raise", return_flags: bool = False, out=None):
    """All features of `spec` over the bars, in one fused pass.

    Returns a C-contiguous float64 array (bars x len(spec.names)), NaN during
    each column's warm-up; with ``return_flags`` also the per-bar flag bytes
    (see ``fastrader.features.validate``). ``out``: an existing C-contiguous
    float64 array of that shape to fill instead (saves allocating, and the
    kernel zeroing, a fresh array on every call of a sweep).
    """
    stop = check_on_bad(on_bad)
    o, h, l, c, v = as_arrays(open, high, low, close, volume)
    F = len(spec.names)
    if out is not None:
        if (not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != (len(c), F)
                or not out.flags.c_contiguous or not out.flags.writeable):
            from fastrader.errors import DataError

            raise DataError(f"compute_features: out must be a writeable C-contiguous float64 array of shape "
                            f"{(len(c), F)}, got {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}")
    norm = spec.normalize["window"] if spec.normalize else 0
    eng = Engine(spec._program(), F, norm, spec._capacity())
    X, flags, bad = eng.run(o, h, l, c, v, stop, return_flags or stop, out)
    if bad >= 0:
        raise bad_bar_error(bad, int(flags[bad]), (o[bad], h[bad], l[bad], c[bad], v[bad]))
    return (X, flags) if return_flags else X


def compute_frame(spec: FeatureSpec, df, *, on_bad: str = "raise"):
    """compute_features on a DataFrame with open/high/low/close/volume columns;
    returns a DataFrame with the spec's column names and the frame's index."""
    import pandas as pd

    from fastrader.errors import DataError

    missing = [k for k in ("open", "high", "low", "close", "volume") if k not in df.columns]
    if missing:
        raise DataError(f"compute_frame: missing columns {missing}")
    X = compute_features(spec, *(df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")),
                         on_bad=on_bad)
    return pd.DataFrame(X, index=df.index, columns=spec.names)
