"""A local fake of Binance's (and OKX's) public spot REST API, with faults on request.

No exchange is reachable from CI, so tests point the real ccxt client at this
server (through the API URL override) instead of mocking ccxt. It serves
``GET /api/v3/exchangeInfo``, ``/api/v3/klines``, ``/api/v3/time`` and
``/api/v3/ping`` with Binance's JSON shapes and rules: klines filtered by
``startTime``/``endTime`` (both inclusive, on the open time), ``limit`` default
500 and at most 1000, prices as 8-decimal strings, Binance error bodies
(``{"code": -1121, "msg": "Invalid symbol."}``) for bad input.

Faults are injected per klines request, either queued explicitly
(:meth:`ExchangeServer.inject`) or drawn at random with ``fault_rate``:

* ``"429"``: HTTP 429 with ``Retry-After`` and Binance's -1003 body
* ``"5xx"``: HTTP 500/502/503/504 with a load-balancer style HTML body
* ``"timeout"``: the answer is held back longer than the client waits
* ``"disconnect"``: headers and half the body are sent, then the socket closes
* ``"overlap"``: the page starts a few candles before ``startTime`` (duplicates
  across pages, as some exchanges do)
* ``"empty"``: a klines page with no candles although candles exist (a glitch
  some exchanges have); :meth:`ExchangeServer.empty_at` makes every request
  from one ``startTime`` answer so
* permanent ones, never drawn at random: ``"bad_symbol"`` (400, -1121),
  ``"bad_interval"`` (400, -1120), ``"auth"`` (401, -2015)

``ignore_since`` makes the server behave like exchanges that do not page:
``"latest"`` answers every klines request with the newest ``limit`` candles,
``"first"`` with the oldest, whatever ``startTime`` says.

Closed candles are rendered to JSON once (per 4096-candle chunk, on first
use) and a page is a join of those rows, so after one warm-up pass the server
costs little per page and is not what a download benchmark measures.

It listens on 127.0.0.1 only. Every wait is bounded and ends at shutdown.

Run it by hand for demos::

    python -m fastrader.testing.exchange_server --csv candles.csv --symbol BTC/USDT --port 8765
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import signal
import threading
import time
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

TRANSIENT_FAULTS = ("429", "5xx", "timeout", "disconnect")
PERMANENT_FAULTS = ("bad_symbol", "bad_interval", "auth")
ALL_FAULTS = TRANSIENT_FAULTS + ("overlap", "empty") + PERMANENT_FAULTS

BINANCE_INTERVALS_MS = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
    "3d": 259_200_000,
    "1w": 604_800_000,
}
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500


OKX_BARS_MS = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1H": 3_600_000,
    "2H": 7_200_000,
    "4H": 14_400_000,
    "6H": 21_600_000,
    "12H": 43_200_000,
    "1D": 86_400_000,
    "1W": 604_800_000,
}
OKX_BARS_MS.update({k + "utc": v for k, v in list(OKX_BARS_MS.items()) if v >= 21_600_000})
OKX_MAX_LIMIT = 300
OKX_DEFAULT_LIMIT = 100
OKX_RECENT = 1440  # /market/candles only serves this many recent candles; older ones need history-candles


def _market_id(symbol: str, exchange: str = "binance") -> tuple[str, str, str]:
    """'BTC/USDT' -> ('BTCUSDT', 'BTC', 'USDT') on Binance, ('BTC-USDT', ...) on OKX."""
    base, quote = symbol.split("/")
    return (f"{base}-{quote}" if exchange == "okx" else base + quote), base, quote


def _okx_instrument(inst_id: str, base: str, quote: str) -> dict:
    # The fields ccxt's okx.parse_market reads, in OKX's own shape (strings throughout).
    return {
        "instType": "SPOT", "instId": inst_id, "uly": "", "instFamily": "", "baseCcy": base, "quoteCcy": quote,
        "settleCcy": "", "ctValCcy": "", "optType": "", "stk": "", "listTime": "1548133413000", "expTime": "",
        "lever": "10", "tickSz": "0.1", "lotSz": "0.00000001", "minSz": "0.00001", "ctVal": "", "ctMult": "",
        "ctType": "", "alias": "", "state": "live", "maxLmtSz": "9999999999", "maxMktSz": "1000000",
        "maxLmtAmt": "20000000", "maxMktAmt": "1000000", "maxTwapSz": "9999999999", "maxIcebergSz": "9999999999",
        "maxTriggerSz": "9999999999", "maxStopSz": "1000000", "ruleType": "normal", "instIdCode": 1,
    }


def _symbol_info(market_id: str, base: str, quote: str) -> dict:
    # The fields ccxt's binance.parse_market reads, in Binance's own shape.
    return {
        "symbol": market_id,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True, "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


class _Series:
    """One symbol/interval of candles, held as arrays for fast slicing."""

    def __init__(self, frame: pd.DataFrame, interval_ms: int):
        frame = frame.sort_values("timestamp").drop_duplicates("timestamp")
        self.ts = frame["timestamp"].to_numpy(dtype=np.int64)
        # Binance quotes 8 decimals; round once so what we serve is exactly
        # what ``candles()`` reports as the reference.
        self.values = np.round(frame[["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64), 8)
        self.interval_ms = interval_ms
        self._chunks: dict[int, list[bytes]] = {}

    def binance_rows(self, lo: int, hi: int) -> list[bytes]:
        """Candles lo..hi-1 as closed Binance klines, JSON-encoded (each chunk once, on first use)."""
        out: list[bytes] = []
        for chunk in range(lo // _CHUNK, (hi - 1) // _CHUNK + 1 if hi > lo else lo // _CHUNK):
            rows = self._chunks.get(chunk)
            if rows is None:
                a, b = chunk * _CHUNK, min(len(self.ts), (chunk + 1) * _CHUNK)
                rows = [
                    _binance_row(t, o, h, low, c, v, self.interval_ms)
                    for t, (o, h, low, c, v) in zip(self.ts[a:b].tolist(), self.values[a:b].tolist())
                ]
                self._chunks[chunk] = rows
            base = chunk * _CHUNK
            out.extend(rows[max(lo, base) - base : min(hi, base + _CHUNK) - base])
        return out


_CHUNK = 4096


def _binance_row(t: int, o: float, h: float, low: float, c: float, v: float, step: int) -> bytes:
    # Binance's kline array: open time, OHLCV as 8-decimal strings, close time,
    # quote volume, trade count, taker buy volumes, and an ignored field.
    return (
        f'[{t},"{o:.8f}","{h:.8f}","{low:.8f}","{c:.8f}","{v:.8f}",{t + step - 1},"{v * c:.8f}",'
        f'{1 + int(v * 7) % 5000},"{v / 2:.8f}","{v * c / 2:.8f}","0"]'
    ).encode()


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        # Clients that gave up (timeouts) or sockets we cut on purpose are
        # expected here; anything else is still reported.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class ExchangeServer:
    """A threaded HTTP server on 127.0.0.1 speaking Binance's (or OKX's) spot candle API.

    ``exchange`` picks the dialect: 'binance' (``/api/v3/...``, forward pages
    from ``startTime``) or 'okx' (``/api/v5/...``, newest-first pages between
    ``before`` and ``after``, string fields, ``{"code": "0", "data": [...]}``).

    ``candles`` maps a unified symbol ('BTC/USDT') to a frame in the ccxt
    layout, or is a single frame served as ``symbol``; it is served at
    ``interval``. ``now_ms`` is the server's clock (default: the real clock);
    candles opening after it do not exist yet, and with ``open_candle`` the
    candle containing ``now_ms`` is served while still open (its close moves
    on every request). ``fault_rate`` draws one of ``fault_kinds`` for that
    share of klines requests, reproducibly from ``seed``.
    """

    def __init__(
        self,
        candles: pd.DataFrame | dict[str, pd.DataFrame],
        *,
        symbol: str = "BTC/USDT",
        interval: str = "1h",
        exchange: str = "binance",
        extra_symbols: tuple[str, ...] = ("ETH/USDT",),
        now_ms: int | None = None,
        open_candle: bool = False,
        fault_rate: float = 0.0,
        fault_kinds: tuple[str, ...] = TRANSIENT_FAULTS,
        seed: int = 0,
        retry_after_s: int = 1,
        timeout_delay_s: float = 2.0,
        page_delay_s: float = 0.0,
        overlap: int = 3,
        ignore_since: str | bool | None = None,
        max_requests: int = 20_000,
        port: int = 0,
    ):
        if interval not in BINANCE_INTERVALS_MS:
            raise ValueError(f"unsupported interval {interval}")
        if exchange not in ("binance", "okx"):
            raise ValueError(f"unsupported exchange dialect {exchange}")
        self.exchange = exchange
        frames = candles if isinstance(candles, dict) else {symbol: candles}
        self.interval = interval
        self.series = {_market_id(s, exchange)[0]: _Series(f, BINANCE_INTERVALS_MS[interval]) for s, f in frames.items()}
        self.markets = [_market_id(s, exchange) for s in list(frames) + [s for s in extra_symbols if s not in frames]]
        self.now_ms = now_ms
        self.open_candle = open_candle
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        for kind in self.fault_kinds:
            if kind not in ALL_FAULTS:
                raise ValueError(f"unknown fault kind {kind}")
        self.retry_after_s = retry_after_s
        self.timeout_delay_s = timeout_delay_s
        self.page_delay_s = page_delay_s
        self.overlap = overlap
        if ignore_since is True:
            ignore_since = "latest"
        if ignore_since not in (None, False, "latest", "first"):
            raise ValueError(f"ignore_since must be None, 'latest' or 'first', not {ignore_since!r}")
        self.ignore_since = ignore_since or None
        self._empty_at: dict[int, int] = {}  # startTime -> empty answers left (-1: always)
        self.max_requests = max_requests
        self._rng = random.Random(seed)
        self._queued: collections.deque[str | None] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests: list[tuple[str, dict]] = []  # (path, query) of every request
        self.faults: list[str] = []  # fault kinds injected, in order
        self._httpd = _QuietHTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- public helpers --------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def candles(self, symbol: str = "BTC/USDT") -> pd.DataFrame:
        """The closed candles this server holds for ``symbol``, as served (8 decimals)."""
        s = self.series[_market_id(symbol, self.exchange)[0]]
        now = self._now()
        keep = s.ts + s.interval_ms <= now
        frame = pd.DataFrame(s.values[keep], columns=["open", "high", "low", "close", "volume"])
        frame.insert(0, "timestamp", s.ts[keep])
        return frame

    def inject(self, kind: str, count: int = 1, after: int = 0) -> None:
        """Queue ``kind`` for ``count`` klines requests, once ``after`` more have been answered normally."""
        if kind not in ALL_FAULTS:
            raise ValueError(f"unknown fault kind {kind}")
        with self._lock:
            self._queued.extend([None] * after + [kind] * count)

    def empty_at(self, start_ms: int, count: int = -1) -> None:
        """Answer klines requests with ``startTime == start_ms`` with no candles (``count`` times; -1: always)."""
        with self._lock:
            self._empty_at[int(start_ms)] = int(count)

    def clear_empty(self) -> None:
        with self._lock:
            self._empty_at.clear()

    @property
    def kline_requests(self) -> int:
        """Candle requests answered so far (klines on Binance, candles on OKX)."""
        return sum(1 for path, _ in self.requests if path.endswith(("/klines", "candles")))

    def start(self) -> "ExchangeServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ExchangeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling ------------------------------------------------------

    def _now(self) -> int:
        return self.now_ms if self.now_ms is not None else int(time.time() * 1000)

    def _bar(self, ts, values, i, step, now):
        """Candle i as (o, h, l, c, v, is_open), or None for an open candle the server hides.

        A candle still trading gets a close that moves with every request.
        """
        o, h, low, c, v = values[i]
        is_open = ts[i] + step > now
        if is_open and not self.open_candle:
            return None
        if is_open:
            c = round(c * (1 + self._rng.uniform(-0.01, 0.01)), 8)
            h, low = max(h, c), min(low, c)
        return o, h, low, c, v, is_open

    def _take_empty(self, start: int) -> bool:
        with self._lock:
            left = self._empty_at.get(int(start))
            if left is None or left == 0:
                return False
            if left > 0:
                self._empty_at[int(start)] = left - 1
            return True

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._queued:
                return self._queued.popleft()  # None: a planned normal answer
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.fault_kinds)
        return None

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes; without this, Nagle holds the
            # body back until the client acknowledges the headers (a delayed ACK).
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                parsed = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
                with server._lock:
                    server.requests.append((parsed.path, query))
                    overflow = len(server.requests) > server.max_requests
                if overflow:
                    # A client stuck in a loop must fail the test, not hang it.
                    return self._json(503, {"code": -1008, "msg": "test server request budget exhausted"})
                if server.exchange == "okx":
                    routes = {
                        "/api/v5/public/time": lambda q: self._json(200, {"code": "0", "msg": "", "data": [{"ts": str(server._now())}]}),
                        "/api/v5/public/instruments": self._okx_instruments,
                        "/api/v5/market/candles": lambda q: self._okx_candles(q, history=False),
                        "/api/v5/market/history-candles": lambda q: self._okx_candles(q, history=True),
                    }
                else:
                    routes = {
                        "/api/v3/ping": lambda q: self._json(200, {}),
                        "/api/v3/time": lambda q: self._json(200, {"serverTime": server._now()}),
                        "/api/v3/exchangeInfo": self._exchange_info,
                        "/api/v3/klines": self._klines,
                    }
                route = routes.get(parsed.path)
                if route is None:
                    return self._raw(404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html")
                route(query)

            # -- responses ---------------------------------------------------

            def _raw(self, status, body: bytes, ctype="application/json;charset=UTF-8", headers=None, cut=False):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if cut:
                    # Promise the full length, send half, then drop the socket.
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                self.wfile.write(body)

            def _json(self, status, payload, headers=None, cut=False):
                self._raw(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers, cut=cut)

            def _error(self, status, code, msg):
                self._json(status, {"code": code, "msg": msg})

            def _exchange_info(self, query):
                symbols = [_symbol_info(*m) for m in server.markets]
                if "symbol" in query:
                    symbols = [s for s in symbols if s["symbol"] == query["symbol"]]
                    if not symbols:
                        return self._error(400, -1121, "Invalid symbol.")
                self._json(
                    200,
                    {
                        "timezone": "UTC",
                        "serverTime": server._now(),
                        "rateLimits": [
                            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
                        ],
                        "exchangeFilters": [],
                        "symbols": symbols,
                    },
                )

            def _take_fault(self) -> str | None:
                fault = server._next_fault()
                if fault is not None:
                    with server._lock:
                        server.faults.append(fault)
                return fault

            def _send_fault(self, fault: str | None) -> bool:
                """Answer with ``fault`` if it replaces the normal answer; True when sent."""
                okx = server.exchange == "okx"
                if fault == "429":
                    body = (
                        {"code": "50011", "msg": "Too Many Requests", "data": []}
                        if okx
                        else {"code": -1003, "msg": "Too many requests; current limit of IP is 6000 requests per minute."}
                    )
                    self._json(429, body, headers={"Retry-After": str(server.retry_after_s)})
                elif fault == "5xx":
                    status = server._rng.choice([500, 502, 503, 504])
                    body = f"<html><body><h1>{status} Server Error</h1></body></html>".encode()
                    self._raw(status, body, "text/html")
                elif fault == "timeout":
                    # Hold the answer past the client's timeout; bounded, and released at shutdown.
                    server._stop.wait(server.timeout_delay_s)
                    self.close_connection = True
                elif fault == "bad_symbol":
                    if okx:
                        self._json(400, {"code": "51001", "msg": "Instrument ID does not exist.", "data": []})
                    else:
                        self._error(400, -1121, "Invalid symbol.")
                elif fault == "bad_interval":
                    if okx:
                        self._json(400, {"code": "51000", "msg": "Parameter bar error", "data": []})
                    else:
                        self._error(400, -1120, "Invalid interval.")
                elif fault == "auth":
                    if okx:
                        self._json(401, {"code": "50113", "msg": "Invalid Sign", "data": []})
                    else:
                        self._error(401, -2015, "Invalid API-key, IP, or permissions for action.")
                else:
                    return False
                return True

            def _okx_instruments(self, query):
                if query.get("instType", "").upper() != "SPOT":
                    return self._json(200, {"code": "0", "msg": "", "data": []})
                data = [_okx_instrument(*m) for m in server.markets]
                self._json(200, {"code": "0", "msg": "", "data": data})

            def _okx_candles(self, query, history: bool):
                fault = self._take_fault()
                if self._send_fault(fault):
                    return None
                okx_error = lambda code, msg: self._json(400, {"code": code, "msg": msg, "data": []})  # noqa: E731
                series = server.series.get(query.get("instId", ""))
                if "instId" not in query:
                    return okx_error("50014", "Parameter instId can not be empty.")
                if series is None:
                    return okx_error("51001", "Instrument ID does not exist.")
                bar = query.get("bar", "1m")
                if bar not in OKX_BARS_MS:
                    return okx_error("51000", "Parameter bar error")
                try:
                    limit = int(query.get("limit", OKX_DEFAULT_LIMIT))
                    after = int(query["after"]) if "after" in query else None
                    before = int(query["before"]) if "before" in query else None
                except ValueError:
                    return okx_error("51000", "Parameter after error")
                if not 1 <= limit <= OKX_MAX_LIMIT:
                    return okx_error("51000", "Parameter limit error")
                if OKX_BARS_MS[bar] != series.interval_ms:
                    return self._json(200, {"code": "0", "msg": "", "data": []})
                if server.page_delay_s:
                    server._stop.wait(server.page_delay_s)
                if fault == "empty":
                    return self._json(200, {"code": "0", "msg": "", "data": []})
                now = server._now()
                step = series.interval_ms
                n_exist = int(np.searchsorted(series.ts, now, side="right"))
                first = 0 if history else max(0, n_exist - OKX_RECENT)
                ts, values = series.ts[:n_exist], series.values[:n_exist]
                # Strictly between ``before`` and ``after``; the newest ``limit`` of them, newest first.
                lo = first if before is None else max(first, int(np.searchsorted(ts, before, side="right")))
                hi = n_exist if after is None else int(np.searchsorted(ts, after, side="left"))
                if fault == "overlap" and before is not None:
                    lo = max(first, lo - server.overlap)
                lo = max(lo, hi - limit)
                rows = []
                for i in range(hi - 1, lo - 1, -1):
                    bar = server._bar(ts, values, i, step, now)
                    if bar is None:
                        continue
                    o, h, low, c, v, is_open = bar
                    rows.append(
                        [str(int(ts[i])), f"{o:.8f}", f"{h:.8f}", f"{low:.8f}", f"{c:.8f}", f"{v:.8f}",
                         f"{v * c:.8f}", f"{v * c:.8f}", "0" if is_open else "1"]
                    )
                self._json(200, {"code": "0", "msg": "", "data": rows}, cut=(fault == "disconnect"))

            def _klines(self, query):
                fault = self._take_fault()
                if self._send_fault(fault):
                    return None

                series = server.series.get(query.get("symbol", ""))
                if "symbol" not in query:
                    return self._error(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
                if series is None:
                    return self._error(400, -1121, "Invalid symbol.")
                interval = query.get("interval")
                if interval is None:
                    return self._error(400, -1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
                if interval not in BINANCE_INTERVALS_MS:
                    return self._error(400, -1120, "Invalid interval.")
                try:
                    limit = int(query.get("limit", DEFAULT_LIMIT))
                    start = int(query["startTime"]) if "startTime" in query else None
                    end = int(query["endTime"]) if "endTime" in query else None
                except ValueError:
                    return self._error(400, -1100, "Illegal characters found in a parameter.")
                if not 1 <= limit <= MAX_LIMIT:
                    return self._error(400, -1130, "Invalid data sent for a parameter.")
                if interval != server.interval:
                    return self._json(200, [])  # a real interval we hold no data for
                if server.page_delay_s:
                    server._stop.wait(server.page_delay_s)

                now = server._now()
                step = series.interval_ms
                # Candles that exist: opened at or before now (the last one may be open).
                n_exist = int(np.searchsorted(series.ts, now, side="right"))
                ts, values = series.ts[:n_exist], series.values[:n_exist]
                if server.ignore_since is not None:
                    start = end = None  # a server that does not page: the same candles whatever was asked
                if fault == "empty" or (start is not None and server._take_empty(start)):
                    if fault != "empty":
                        with server._lock:
                            server.faults.append("empty")
                    return self._raw(200, b"[]")
                lo = 0 if start is None else int(np.searchsorted(ts, start, side="left"))
                hi = n_exist if end is None else int(np.searchsorted(ts, end, side="right"))
                if fault == "overlap" and start is not None:
                    lo = max(0, lo - server.overlap)
                if start is None and server.ignore_since != "first":
                    lo = max(lo, hi - limit)
                hi = min(hi, lo + limit)
                # Closed candles come pre-rendered; only a still-open last one is built per request.
                closed_hi = max(lo, min(hi, int(np.searchsorted(ts, now - step, side="right"))))
                parts = series.binance_rows(lo, closed_hi)
                for i in range(closed_hi, hi):
                    bar = server._bar(ts, values, i, step, now)
                    if bar is not None:
                        parts.append(_binance_row(int(ts[i]), *bar[:5], step))
                self._raw(200, b"[" + b",".join(parts) + b"]", cut=(fault == "disconnect"))

        return Handler


def main(argv: list[str] | None = None) -> int:
    from fastrader.data.files import load_candles

    parser = argparse.ArgumentParser(description="Serve a candle file through a fake Binance REST API on 127.0.0.1.")
    parser.add_argument("--csv", required=True, help="candles in the ccxt layout (CSV or Parquet)")
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--interval", default="1h")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--exchange", choices=["binance", "okx"], default="binance")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument("--timeout-delay", type=float, default=2.0, help="seconds a 'timeout' fault holds the answer")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds sent with 429")
    parser.add_argument("--max-requests", type=int, default=20_000, help="answer 503 after this many requests")
    parser.add_argument("--prerender", action="store_true", help="render every kline row before serving (for benchmarks)")
    args = parser.parse_args(argv)
    server = ExchangeServer(
        load_candles(args.csv), symbol=args.symbol, interval=args.interval, fault_rate=args.fault_rate, port=args.port,
        exchange=args.exchange, seed=args.seed, timeout_delay_s=args.timeout_delay, retry_after_s=args.retry_after,
        max_requests=args.max_requests,
    )
    if args.prerender:
        for series in server.series.values():
            series.binance_rows(0, len(series.ts))
    print(f"serving {args.symbol} {args.interval} at {server.url}", flush=True)

    def _stop(signum, frame):
        raise KeyboardInterrupt

    # A server started in the background has SIGINT ignored; let SIGTERM end it cleanly too.
    signal.signal(signal.SIGTERM, _stop)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(f"{len(server.requests)} requests, {len(server.faults)} faults injected", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
