"""fastrader's market data layer.

Loading and validating files (:mod:`.files`, :mod:`.candles`), feeding
Backtrader (:mod:`.feed`), downloading through ccxt (:mod:`.download`,
:mod:`.exchange`), caching (:mod:`.cache`) and gap reports (:mod:`.gaps`) are
separate modules; :func:`load_history` ties download and cache together.
"""

from fastrader.data.candles import COLUMNS, candles_digest, validate_candles
from fastrader.data.feed import CandleFeed, add_feeds, infer_timeframe, make_feed
from fastrader.data.files import load_candles
from fastrader.data.gaps import fill_gaps, find_gaps
from fastrader.data.history import HistoryResult, fetch_history, load_histories, load_history
from fastrader.data.timeframes import parse_time, timeframe_ms

__all__ = [
    "COLUMNS",
    "CandleFeed",
    "HistoryResult",
    "add_feeds",
    "candles_digest",
    "fetch_history",
    "fill_gaps",
    "find_gaps",
    "infer_timeframe",
    "load_candles",
    "load_histories",
    "load_history",
    "make_feed",
    "parse_time",
    "timeframe_ms",
    "validate_candles",
]
