"""Cache first, download only what is missing: the one path every command uses.

``load_history`` is what ``python -m fastrader.run --exchange ...`` and
``python -m fastrader.data download`` call. It reads the cache entry, works out
which parts of [since, until) are not yet known, downloads only those (no
exchange client is even created when nothing is missing), and commits every
page as it comes (one small segment each, see :mod:`.cache`), so an
interrupted run resumes where it stopped. Candles fetched through
``api_url`` are cached apart from the exchange's own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from fastrader.data.cache import CacheEntry, CacheKey, CandleStore, ParquetStore, cache_key, missing_intervals
from fastrader.data.download import check_symbol, check_timeframe, download_candles, load_markets
from fastrader.data.exchange import RequestStats, RetryPolicy, make_exchange
from fastrader.data.gaps import GapReport, fill_gaps, find_gaps
from fastrader.data.timeframes import format_ms, now_ms, parse_time, timeframe_ms
from fastrader.errors import CacheError, ConfigError


@dataclass
class HistoryResult:
    candles: pd.DataFrame
    key: CacheKey
    since: int
    until: int
    gaps: GapReport
    stats: RequestStats
    downloaded: int = 0  # candles fetched from the exchange in this call
    warnings: list[str] = field(default_factory=list)
    # Parts of the range not known complete (the exchange answered them with nothing): not gaps, holes.
    missing: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.candles)
        if n:
            span = f"{format_ms(self.candles['timestamp'].iat[0])} .. {format_ms(self.candles['timestamp'].iat[-1])}"
        else:
            span = "no candles"
        net = "from cache, no network" if self.stats.requests == 0 else self.stats.summary()
        text = f"{self.key}: {n} candles, {span}; {self.downloaded} downloaded ({net}); {self.gaps.summary()}"
        if self.missing:
            first = self.missing[0]
            text += (
                f"; NOT COMPLETE: {len(self.missing)} stretch(es) unknown, first "
                f"[{format_ms(first[0])} .. {format_ms(first[1])}) (rerun to retry)"
            )
        return text


def _normalise_symbol(symbol: str) -> str:
    symbol = str(symbol).strip().upper()
    if "/" not in symbol:
        raise ConfigError(f"symbol {symbol!r} should be in ccxt's BASE/QUOTE form, e.g. BTC/USDT")
    return symbol


def fetch_history(
    exchange: str,
    symbol: str,
    timeframe: str,
    since,
    until=None,
    *,
    cache_dir=None,
    api_url: str | None = None,
    progress: bool = True,
    store: CandleStore | None = None,
    retry: RetryPolicy | None = None,
    timeout_ms: int = 10_000,
    fill: bool = False,
    now: int | None = None,
    log: Callable[[str], None] | None = None,
) -> HistoryResult:
    """Candles with open time in [since, until) from the cache, downloading what is missing."""
    exchange_id = str(exchange).strip().lower()
    symbol = _normalise_symbol(symbol)
    tf_ms = timeframe_ms(timeframe)
    since_ms = parse_time(since, name="since")
    now = now_ms() if now is None else now
    until_ms = now if until is None else parse_time(until, name="until")
    if until_ms <= since_ms:
        raise ConfigError(f"until ({format_ms(until_ms)}) must be after since ({format_ms(since_ms)})")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    store = store or ParquetStore(cache_dir)
    key = cache_key(exchange_id, symbol, timeframe, api_url)
    stats = RequestStats()
    warnings: list[str] = []

    with store.lock(key):
        try:
            entry = store.read(key)
        except CacheError as exc:
            moved = store.quarantine(key)
            warnings.append(f"{exc}; moved to {moved}, downloading again")
            log(f"warning: {warnings[-1]}")
            entry = None
        entry = entry or CacheEntry(key)

        # Up to the last candle that can have closed; later ones do not exist yet.
        end = min(until_ms, now - tf_ms + 1)
        todo = missing_intervals((since_ms, end), entry.covered) if end > since_ms else []
        downloaded = 0
        if todo:
            client = make_exchange(exchange_id, api_url=api_url, timeout_ms=timeout_ms, market_type="swap" if ":" in symbol else "spot")
            check_timeframe(client, timeframe)
            # Fail on a bad symbol before any progress bar or page.
            load_markets(client, policy=retry or RetryPolicy(), stats=stats)
            check_symbol(client, symbol)
            bar = _progress_bar(progress, key, sum(max(0, (e - s) // tf_ms) for s, e in todo))
            try:
                for start, stop in todo:
                    def on_page(page: pd.DataFrame, covered) -> None:
                        nonlocal downloaded
                        store.append(entry, page, covered)  # one segment per page: a kill loses at most one page
                        downloaded += len(page)
                        if bar is not None:
                            bar.update(len(page))
                            bar.set_postfix_str(f"{stats.pages} pages, {stats.retries} retries", refresh=False)

                    done = download_candles(
                        client, symbol, timeframe, start, stop, policy=retry, stats=stats, now=now, on_page=on_page
                    )
                    for a, b in done.skipped:
                        warnings.append(
                            f"{exchange_id} answered twice with no {symbol} candles from {format_ms(a)}; stepped over "
                            f"[{format_ms(a)} .. {format_ms(b)}), which stays missing, not complete (rerun to retry)"
                        )
                        log(f"warning: {warnings[-1]}")
                store.compact_if_due(entry)
            finally:
                store.flush(entry)
                if bar is not None:
                    # Gaps and the listing date make the estimate high: end the bar at what came.
                    bar.total = bar.n
                    bar.refresh()
                    bar.close()

        missing = missing_intervals((since_ms, end), entry.covered) if end > since_ms else []

    candles = entry.slice(since_ms, until_ms)
    gaps = find_gaps(candles["timestamp"].to_numpy(), tf_ms)
    if fill:
        candles = fill_gaps(candles, tf_ms)
    return HistoryResult(candles, key, since_ms, until_ms, gaps, stats, downloaded, warnings, missing)


def load_history(
    exchange: str,
    symbol: str,
    timeframe: str,
    since,
    until=None,
    cache_dir=None,
    api_url: str | None = None,
    progress: bool = True,
    **kwargs,
) -> pd.DataFrame:
    """Candles in the ccxt layout for [since, until), cache first (see :func:`fetch_history`).

    ``since``/``until`` take ISO dates ('2021-01-01', '2021-01-01T00:00Z') or
    integer UTC milliseconds; ``until`` defaults to now. With ``progress`` a
    progress bar and a one-line summary (rows, range, gaps) go to stderr.
    """
    result = fetch_history(
        exchange, symbol, timeframe, since, until, cache_dir=cache_dir, api_url=api_url, progress=progress, **kwargs
    )
    if progress:
        print(result.summary(), file=sys.stderr)
    return result.candles


def _progress_bar(enabled: bool, key: CacheKey, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{key.exchange} {key.symbol} {key.timeframe}", unit="candles", file=sys.stderr)


def load_histories(exchange: str, symbols, timeframe: str, since, until=None, **kwargs) -> dict[str, pd.DataFrame]:
    """:func:`load_history` for several symbols: {symbol: candles}, in the order given.

    Feed the result to :func:`fastrader.data.add_feeds` for a multi-symbol run.
    """
    if isinstance(symbols, str):
        symbols = [s for s in symbols.split(",") if s.strip()]
    return {_normalise_symbol(s): load_history(exchange, s, timeframe, since, until, **kwargs) for s in symbols}
