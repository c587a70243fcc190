"""fastrader: causal, fast, model-driven backtests on Backtrader."""

import sys as _sys
import warnings as _warnings

__version__ = "0.1.0"

# Backtrader's source has invalid escape sequences: Python 3.12+ reports them
# as SyntaxWarnings whenever it compiles that source (no cached bytecode:
# PYTHONDONTWRITEBYTECODE=1, read-only installs, slim containers), five lines
# of noise before every command's output. Compile-time warnings carry the
# file path as their module, hence the path pattern.
_warnings.filterwarnings("ignore", category=SyntaxWarning, module=r".*[\\/]backtrader[\\/]")

# Warnings raised inside the libraries we drive (their own deprecations and
# internals) are not actionable for a fastrader user, so by default they do
# not reach the terminal. Warnings attributed to fastrader or to the user's
# code still show, and -W / PYTHONWARNINGS / -X dev bring everything back.
_THIRD_PARTY = (
    "backtrader|quantstats|pandas|numpy|torch|ccxt|pyarrow|matplotlib|seaborn|scipy|tqdm|"
    "safetensors|IPython|ipykernel|yfinance|tabulate|dateutil|pytz|aiohttp|requests|urllib3"
)
if not _sys.warnoptions and not _sys.flags.dev_mode:
    _warnings.filterwarnings("ignore", module=rf"(.*[\\/])?({_THIRD_PARTY})([\\/.]|$)")
