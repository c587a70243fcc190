"""Paging ``fetch_ohlcv`` history out of an exchange through ccxt.

The rules that ccxt-to-Backtrader bridges tend to get wrong, made explicit:

* a page is asked from ``cursor`` and the next cursor is one timeframe after
  the newest candle received, so boundaries are neither skipped nor fetched
  twice; candles before the cursor (servers that overlap pages) are dropped,
  and within a page a repeated timestamp keeps its last version;
* candles that have not closed yet (open time + timeframe > now) are dropped;
* every request goes through :func:`call_with_retry` (transient errors back
  off, permanent ones stop with one line);
* a page proves the range complete only from the cursor to its last candle
  (to the end of the range when that candle is within a timeframe of it);
* an empty page is asked again, then stepped over by one page *without*
  claiming the stretch: it may be an exchange glitch, never the end of history
  (windowed exchanges, whose empty answer is about an explicit window, excepted);
* a first candle more than a page after the cursor is checked with a small
  probe, so an exchange that ignores ``since`` is reported instead of cached;
* after each page ``on_page`` gets the new candles and the range they prove,
  so the cache can persist progress and a killed download resumes.
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
from fastrader.errors import DataError, ExchangeError

_DEFAULT_PAGE_LIMIT = 500
# Where ccxt's ``until`` param only bounds a page that still starts at ``since``.
# Elsewhere it can move the page instead (on OKX it becomes ``after``, and the
# exchange answers with the candles just before ``until``), so it is not sent.
_UNTIL_BOUNDS_PAGE = {"binance", "binanceus", "binanceusdm", "binancecoinm"}
# Exchanges whose pages are fixed time windows (ccxt asks [since, since + limit
# timeframes)): an empty page is a quiet window, not the end of the history.
_WINDOW_PAGES = {"okx"}
# How often an empty page is asked before it is stepped over.
_EMPTY_ASKS = 2

# (new candles, the [start, end) range they prove complete or None)
# (new candles as a float array (n, 6) in the ccxt column order, the [start, end) range they prove complete or None)
PageCallback = Callable[[np.ndarray, "tuple[int, int] | None"], None]


@dataclass
class DownloadResult:
    candles: pd.DataFrame
    covered: list[tuple[int, int]]  # every closed candle inside these ranges is in ``candles``
    skipped: list[tuple[int, int]]  # answered empty twice and stepped over: unknown, not complete
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
        page = np.array(raw, dtype=np.float64)  # ccxt's rows are [t, o, h, l, c, v]: one conversion, no copies
        if page.ndim != 2 or page.shape[1] != 6:
            raise ValueError("shape")
    except (TypeError, ValueError):
        try:  # rows with extra fields, or none at all
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

    Returns them ascending and unique, with the ranges they are known to cover
    (every closed candle inside is in ``candles``) and the ranges skipped past
    because the exchange answered them with nothing. Raises :class:`DataError`
    when the exchange ignores ``since``.
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

    def fetch(start: int, n: int, extra: dict) -> np.ndarray:
        what = f"candles {symbol} {timeframe} from {format_ms(start)}"
        return call_with_retry(
            exchange,
            lambda: _to_page(exchange.fetch_ohlcv(symbol, timeframe, since=int(start), limit=n, params=dict(extra)), exchange, what),
            what,
            policy=policy,
            stats=stats,
        )

    def emit(page: np.ndarray, interval: tuple[int, int] | None) -> None:
        if interval is not None:
            covered.append(interval)
        if on_page is not None:
            on_page(page, interval)

    pages: list[np.ndarray] = []
    covered: list[tuple[int, int]] = []
    skipped: list[tuple[int, int]] = []
    cursor = since
    empty_answers = 0  # consecutive empty pages at this cursor
    while cursor < end:
        raw_page = fetch(cursor, limit, params)
        stats.pages += 1
        if len(raw_page) and raw_page[:, 0].max() < cursor:
            raw_page = raw_page[:0]  # only candles before the cursor: no step forward, as good as empty
        if len(raw_page) == 0:
            # Not proof that nothing follows: exchanges have empty-page glitches,
            # and ccxt turns a page of only earlier candles into an empty one.
            # Ask once more, then step one page further without claiming the
            # stretch stepped over; a later run asks for it again.
            empty_answers += 1
            if empty_answers < _EMPTY_ASKS:
                stats.empty_retries += 1
                continue
            empty_answers = 0
            stop = min(end, cursor + limit * tf)
            if windowed:
                # A window the exchange bounds itself ([since, since + limit)):
                # twice empty is a quiet window (an outage, before the listing).
                emit(raw_page[:0], (cursor, stop))
            else:
                skipped.append((cursor, stop))
            cursor = stop
            continue
        empty_answers = 0
        raw_min, raw_max = raw_page[:, 0].min(), raw_page[:, 0].max()
        if raw_min - cursor > limit * tf:
            # More than a page of nothing after ``cursor``: a listing date or a
            # long outage, or an exchange that ignores ``since`` and answers
            # with its newest candles. Tell them apart before trusting the jump.
            _check_since_is_honoured(exchange, symbol, timeframe, cursor, raw_page, fetch)
        keep = (raw_page[:, 0] >= cursor) & (raw_page[:, 0] < end)
        page = raw_page[keep]
        if len(page) > 1 and not (page[1:, 0] > page[:-1, 0]).all():
            # Sorted, one row per timestamp, the last version of a repeated one.
            page = page[np.argsort(page[:, 0], kind="stable")]
            last_of_each = np.r_[page[1:, 0] != page[:-1, 0], True]
            page = page[last_of_each]
        if len(page):
            _check_values(page, exchange, symbol, timeframe)
            pages.append(page)
        # Candles are at least one timeframe apart, so once one opens within a
        # timeframe of the end, no later one can be in range. Otherwise the page
        # proves the range only up to its last candle (a short page is not the
        # end: ccxt drops overlapping rows before we see the page).
        stop = end if raw_max + tf >= end else int(page[-1, 0]) + tf
        emit(page, (cursor, stop))
        cursor = stop

    candles = _frame(np.concatenate(pages)) if pages else empty_candles()
    return DownloadResult(candles=candles, covered=merge_spans(covered), skipped=merge_spans(skipped), stats=stats)


def _check_since_is_honoured(exchange, symbol: str, timeframe: str, asked: int, page: np.ndarray, fetch) -> None:
    """Raise DataError when the exchange answers a page of ``since`` requests regardless of ``since``.

    An exchange without paging answers with its newest candles whatever it is
    asked, and ccxt's own filtering makes that page look like a listing that
    started there. Asking for two candles from the middle of the page tells
    them apart: an exchange that pages returns the candle we know opens there.
    """
    ts = np.unique(page[:, 0])
    if len(ts) < 5:
        return  # a history this short is all there is, whatever the exchange does
    probe = int(ts[len(ts) // 2])
    for _ in range(_EMPTY_ASKS):
        answer = fetch(probe, 2, {})
        if len(answer):
            break
    got = int(answer[:, 0].min()) if len(answer) else None
    if got == probe:
        return
    raise DataError(
        f"{exchange.id} ignores 'since' for {symbol} {timeframe} candles: asked from {format_ms(asked)}, "
        f"it answered from {format_ms(int(ts[0]))}, and asked from {format_ms(probe)} it answered "
        f"{'with nothing' if got is None else 'from ' + format_ms(got)}; its history cannot be paged, so none of it was cached"
    )


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and join touching [start, end) spans."""
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _frame(rows: np.ndarray) -> pd.DataFrame:
    if len(rows) == 0:
        return empty_candles()
    columns = {name: rows[:, i].copy() for i, name in enumerate(COLUMNS)}
    columns["timestamp"] = columns["timestamp"].astype(np.int64)
    return pd.DataFrame(columns, columns=list(COLUMNS))


def _check_values(page: np.ndarray, exchange, symbol: str, timeframe: str) -> None:
    """The checks validate_candles makes, on the raw page (a tenth of its cost): fail before anything is cached."""
    prices, volume = page[:, 1:5], page[:, 5]
    bad_price = ~(prices > 0).all(axis=1) | ~np.isfinite(prices).all(axis=1)
    bad = bad_price | ~(volume >= 0) | ~np.isfinite(volume) | (page[:, 2] < page[:, 3])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        o, h, low, c, v = (float(x) for x in page[i, 1:])
        raise DataError(
            f"{exchange.id} sent a bad {symbol} {timeframe} candle at {format_ms(int(page[i, 0]))}: "
            f"open {o}, high {h}, low {low}, close {c}, volume {v}; nothing from that page was cached"
        )
