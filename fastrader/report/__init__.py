"""Reports: metrics from the equity curve, the QuantStats tearsheet, result files."""

from .metrics import METRIC_KEYS, daily_returns, compute_metrics
from .tearsheet import write_tearsheet
from .files import write_results

__all__ = ["METRIC_KEYS", "daily_returns", "compute_metrics", "write_tearsheet", "write_results"]
