"""fastrader's market data layer.

Loading files (:mod:`.files`), validating candles (:mod:`.candles`) and feeding
them to Backtrader (:mod:`.feed`) live apart from downloading through ccxt and
caching, so each can be used and tested on its own.
"""

from fastrader.data.candles import COLUMNS, validate_candles
from fastrader.data.feed import CandleFeed, add_feeds, infer_timeframe, make_feed
from fastrader.data.files import load_candles

__all__ = [
    "COLUMNS",
    "CandleFeed",
    "add_feeds",
    "infer_timeframe",
    "load_candles",
    "make_feed",
    "validate_candles",
]
