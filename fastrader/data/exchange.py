"""Making ccxt exchange clients and calling them with a retry policy.

Two things live here because every command that reaches an exchange needs
them: the API URL override (``--api-url``: a proxy, a mirror or a test server)
and the split between transient failures, which are retried with capped
exponential back-off, and permanent ones, which end with one clear line.
"""

from __future__ import annotations

import difflib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlparse

from fastrader.errors import ConfigError, ExchangeError


def _ccxt():
    import ccxt  # imported lazily: loading ccxt costs ~0.5 s and most runs never need it

    return ccxt


@dataclass
class RetryPolicy:
    """How transient failures are retried.

    The n-th retry waits ``min(max_delay, base_delay * 2**n)`` (with +-jitter),
    or the server's ``Retry-After`` when it sent one (up to
    ``max_retry_after``). Tests shrink ``base_delay`` so faults cost
    milliseconds, not seconds.
    """

    max_retries: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    jitter: float = 0.1
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = min(self.max_delay, self.base_delay * (2**attempt))
        wait *= 1 + random.uniform(-self.jitter, self.jitter)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return max(0.0, wait)


@dataclass
class RequestStats:
    """What talking to the exchange cost: requests, retries by cause, time."""

    requests: int = 0
    retries: int = 0
    pages: int = 0
    empty_retries: int = 0  # empty pages asked again (not errors: the answer was a valid empty list)
    slept_s: float = 0.0
    errors: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        causes = ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items()))
        text = f"{self.requests} requests, {self.pages} pages, {self.retries} retries"
        if causes:
            text += f" ({causes}; {self.slept_s:.1f} s backing off)"
        if self.empty_retries:
            text += f", {self.empty_retries} empty pages asked again"
        return text


def make_exchange(exchange_id: str, *, api_url: str | None = None, timeout_ms: int = 10_000, market_type: str = "spot"):
    """A ccxt client for ``exchange_id`` with rate limiting on and only public market loading.

    ``market_type`` limits ``load_markets`` to the markets needed ('spot' or
    'swap'), so a spot download does not also hit the futures endpoints.
    """
    ccxt = _ccxt()
    exchange_id = str(exchange_id).strip().lower()
    cls = getattr(ccxt, exchange_id, None)
    if exchange_id not in ccxt.exchanges or cls is None:
        close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown exchange '{exchange_id}'{hint}")
    exchange = cls({"enableRateLimit": True, "timeout": int(timeout_ms)})
    # Currencies need private endpoints on several exchanges; candles never need them.
    exchange.has = dict(exchange.has, fetchCurrencies=False)
    exchange.options["fetchCurrencies"] = False
    types = ["spot"] if market_type == "spot" else (["linear", "inverse"] if exchange_id.startswith("binance") else [market_type])
    fetch_markets = exchange.options.get("fetchMarkets")
    if isinstance(fetch_markets, dict) and "types" in fetch_markets:
        exchange.options["fetchMarkets"] = dict(fetch_markets, types=types)
    elif isinstance(fetch_markets, list):
        exchange.options["fetchMarkets"] = types
    if api_url:
        override_api_url(exchange, api_url)
    return exchange


def override_api_url(exchange, api_url: str) -> None:
    """Point every REST base URL of ``exchange`` at ``api_url``, keeping each path.

    'https://api.binance.com/api/v3' becomes 'http://127.0.0.1:8765/api/v3';
    a path in ``api_url`` is kept as a prefix (for path-routing proxies).
    """
    parsed = urlparse(api_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"--api-url {api_url!r} must look like http://host:port or https://host/prefix")
    base = api_url.rstrip("/")

    def rewrite(url):
        if isinstance(url, str):
            return base + urlparse(url).path if "://" in url else url
        if isinstance(url, dict):
            return {k: rewrite(v) for k, v in url.items()}
        return url

    exchange.urls = dict(exchange.urls, api=rewrite(exchange.urls["api"]))


def is_transient(exc: BaseException) -> bool:
    """Network errors, timeouts, 429/5xx, rate limits, maintenance: worth retrying."""
    ccxt = _ccxt()
    return isinstance(exc, ccxt.OperationFailed)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(exchange) -> float | None:
    headers = getattr(exchange, "last_response_headers", None) or {}
    value = None
    for key in headers:
        if str(key).lower() == "retry-after":
            value = headers[key]
            break
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def call_with_retry(exchange, fn: Callable, what: str, *, policy: RetryPolicy, stats: RequestStats):
    """Call ``fn()`` (one request to ``exchange``), retrying transient failures.

    Raises :class:`ExchangeError` with one line naming ``what`` failed: at once
    for a permanent error, after ``policy.max_retries`` for a transient one.
    """
    ccxt = _ccxt()
    attempt = 0
    while True:
        exchange.last_response_headers = None
        stats.requests += 1
        try:
            return fn()
        except ccxt.BaseError as exc:
            if not is_transient(exc):
                raise ExchangeError(describe_permanent(exchange, exc, what)) from None
            kind = type(exc).__name__
            stats.errors[kind] += 1
            if attempt >= policy.max_retries:
                raise ExchangeError(
                    f"{exchange.id}: {what} still failing after {attempt + 1} attempts "
                    f"({kind}: {_one_line(exc)})"
                ) from None
            # Headers were cleared before the call, so any Retry-After is this answer's.
            retry_after = _retry_after(exchange)
            wait = policy.delay(attempt, retry_after)
            stats.retries += 1
            stats.slept_s += wait
            policy.sleep(wait)
            attempt += 1


def describe_permanent(exchange, exc: BaseException, what: str) -> str:
    ccxt = _ccxt()
    if isinstance(exc, ccxt.BadSymbol):
        reason = "unknown symbol"
    elif isinstance(exc, ccxt.AuthenticationError):
        reason = "authentication refused (public data should not need keys; check --api-url)"
    elif isinstance(exc, ccxt.NotSupported):
        reason = "not supported"
    elif isinstance(exc, ccxt.BadRequest):
        reason = "request rejected"
    else:
        reason = "exchange error"
    return f"{exchange.id}: {what}: {reason} ({_one_line(exc)})"
