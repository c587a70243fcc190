"""Parameter sweeps: many backtests over a space of run options and strategy params, on Ray or a process pool.

Python API::

    from fastrader.sweep import load_spec, run_sweep
    res = run_sweep(load_spec("sweep.toml"))
    res.table            # one row per trial, ranked by the sweep's metric
    res.summary["pbo"]   # probability of backtest overfitting (CSCV)

``main(argv)`` is the command line (``python -m fastrader.sweep``).
"""

from .cli import main
from .config import SweepSpec, load_spec, spec_from_dict
from .runner import SweepResult, run_sweep, summary_text

__all__ = ["main", "SweepSpec", "load_spec", "spec_from_dict", "run_sweep", "SweepResult", "summary_text"]
