"""Paging ``fetch_ohlcv`` history out of an exchange through ccxt.

The rules that ccxt-to-Backtrader bridges tend to get wrong, made explicit:

* a page is asked from ``cursor`` and the next cursor is one timeframe after
  the newest candle received, so boundaries are neither skipped nor fetched
  twice; candles before the cursor (servers that overlap pages) are dropped,
  and within a page a repeated timestamp keeps its last version;
* candles that have not closed yet (open time + timeframe > now) are dropped;
* every request goes through :func:`call_with_retry` (transient errors back
  off, permanent ones stop with one line);
* after each page ``on_page`` gets the new candles and how far the range is
  now known, so the cache can persist progress and a killed download resumes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from fastrader.data.candles import COLUMNS, empty_candles
from fastrader.data.exchange import RequestStats, RetryPolicy, _ccxt, call_with_retry
from fastrader.data.timeframes import format_ms, now_ms as _now_ms
from fastrader.errors import ExchangeError

_DEFAULT_PAGE_LIMIT = 500
# Where ccxt's ``until`` param only bounds a page that still starts at ``since``.
# Elsewhere it can move the page instead (on OKX it becomes ``after``, and the
# exchange answers with the candles just before ``until``), so it is not sent.
_UNTIL_BOUNDS_PAGE = {"binance", "binanceus", "binanceusdm", "binancecoinm"}
# Exchanges whose pages are fixed time windows (ccxt asks [since, since + limit
# timeframes)): an empty page is a quiet window, not the end of the history.
_WINDOW_PAGES = {"okx"}

PageCallback = Callable[[pd.DataFrame, int], None]


@dataclass
class DownloadResult:
    candles: pd.DataFrame
    covered: tuple[int, int]  # [since, covered_end): every closed candle in it is in ``candles``
    stats: RequestStats


def page_limit_for(exchange) -> int:
    """The exchange's own candles-per-request cap, from ccxt's feature table."""
    features = getattr(exchange, "features", None) or {}
    for market_type in ("spot", "swap"):
        section = features.get(market_type) or {}
        if "linear" in section and isinstance(section.get("linear"), dict):
            section = section["linear"]
        limit = (section.get("fetchOHLCV") or {}).get("limit")
        if isinstance(limit, int) and limit > 0:
            return limit
    return _DEFAULT_PAGE_LIMIT


def check_timeframe(exchange, timeframe: str) -> int:
    """Return the timeframe in ms, or fail with the timeframes the exchange offers."""
    offered = getattr(exchange, "timeframes", None) or {}
    if offered and timeframe not in offered:
        raise ExchangeError(
            f"{exchange.id}: unsupported timeframe '{timeframe}' (supported: {', '.join(offered)})"
        )
    try:
        return int(exchange.parse_timeframe(timeframe) * 1000)
    except Exception:
        raise ExchangeError(f"{exchange.id}: cannot understand timeframe '{timeframe}'") from None


def load_markets(exchange, *, policy: RetryPolicy, stats: RequestStats) -> None:
    if not exchange.markets:
        call_with_retry(exchange, exchange.load_markets, "loading markets", policy=policy, stats=stats)


def check_symbol(exchange, symbol: str) -> None:
    if symbol in exchange.markets:
        return
    close = difflib.get_close_matches(symbol, list(exchange.markets), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ExchangeError(f"{exchange.id}: unknown symbol '{symbol}'{hint}")


def _to_page(raw, exchange, what: str) -> np.ndarray:
    """ccxt rows -> float array (n, 6); a malformed body counts as a bad response."""
    ccxt = _ccxt()
    if not isinstance(raw, list):
        raise ccxt.BadResponse(f"{exchange.id} {what}: expected a list of candles, got {type(raw).__name__}")
    try:
        page = np.array([row[:6] for row in raw], dtype=np.float64).reshape(-1, 6)
    except (TypeError, ValueError, IndexError):
        raise ccxt.BadResponse(f"{exchange.id} {what}: malformed candle rows") from None
    if np.isnan(page[:, 0]).any():
        raise ccxt.BadResponse(f"{exchange.id} {what}: candle without a timestamp")
    return page


def download_candles(
    exchange,
    symbol: str,
    timeframe: str,
    since: int,
    until: int,
    *,
    policy: RetryPolicy | None = None,
    stats: RequestStats | None = None,
    page_limit: int | None = None,
    now: int | None = None,
    on_page: PageCallback | None = None,
) -> DownloadResult:
    """Download the closed candles with open time in [since, until).

    Returns them ascending and unique, with the range they are known to cover
    (up to ``until``, or the last closed candle when ``until`` is later).
    """
    policy = policy or RetryPolicy()
    stats = stats or RequestStats()
    tf = check_timeframe(exchange, timeframe)
    load_markets(exchange, policy=policy, stats=stats)
    check_symbol(exchange, symbol)
    limit = page_limit or page_limit_for(exchange)
    now = _now_ms() if now is None else now
    # Candles opening at or after ``end`` are outside the range or not closed.
    end = min(until, now - tf + 1)
    # Asking for an end time only when it is in the past lets a server that
    # sends the still-open candle do so; we drop it below either way.
    params = {"until": end - 1} if until <= now - tf + 1 and exchange.id in _UNTIL_BOUNDS_PAGE else {}
    windowed = exchange.id in _WINDOW_PAGES

    pages: list[np.ndarray] = []
    cursor = since
    covered_end = since
    while cursor < end:
        what = f"candles {symbol} {timeframe} from {format_ms(cursor)}"
        raw_page = call_with_retry(
            exchange,
            lambda: _to_page(exchange.fetch_ohlcv(symbol, timeframe, since=int(cursor), limit=limit, params=dict(params)), exchange, what),
            what,
            policy=policy,
            stats=stats,
        )
        stats.pages += 1
        if len(raw_page) == 0 and windowed and cursor + limit * tf < end:
            # A window without trading (an outage, or before the listing): skip it.
            cursor += limit * tf
            covered_end = cursor
            if on_page is not None:
                on_page(empty_candles(), covered_end)
            continue
        if len(raw_page) == 0:
            covered_end = end  # nothing exists from cursor up to the end
            if on_page is not None:
                on_page(empty_candles(), covered_end)
            break
        raw_max = raw_page[:, 0].max()
        keep = (raw_page[:, 0] >= cursor) & (raw_page[:, 0] < end)
        page = raw_page[keep]
        if len(page):
            # Sorted, one row per timestamp, the last version of a repeated one.
            page = page[np.argsort(page[:, 0], kind="stable")]
            last_of_each = np.r_[page[1:, 0] != page[:-1, 0], True]
            page = page[last_of_each]
            pages.append(page)
            cursor = int(page[-1, 0]) + tf
            covered_end = cursor
        # Candles are at least one timeframe apart, so once one opens within a
        # timeframe of the end, no later one can be in range. (A short page is
        # not proof: ccxt drops overlapping rows before we see the page.)
        if raw_max + tf >= end:
            covered_end = end
        elif len(page) == 0:
            # Only candles before the cursor came back: the exchange is not
            # moving forward, so stop instead of asking the same page forever.
            break
        if on_page is not None:
            on_page(_frame(page), covered_end)
        if covered_end >= end:
            break

    candles = _frame(np.concatenate(pages)) if pages else empty_candles()
    return DownloadResult(candles=candles, covered=(since, max(covered_end, since)), stats=stats)


def _frame(rows: np.ndarray) -> pd.DataFrame:
    if len(rows) == 0:
        return empty_candles()
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    return frame
