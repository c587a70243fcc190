"""The real ccxt client against the local fake Binance: paging, faults, gaps, open candles.

Every test points ccxt's binance class at ``ExchangeServer`` through the API
URL override; nothing in ccxt is mocked. References are computed from the
frame the server serves, independently of the downloader.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from fastrader.data import fetch_history, find_gaps, load_candles
from fastrader.data.exchange import RequestStats, RetryPolicy, make_exchange
from fastrader.data.download import download_candles
from fastrader.errors import ExchangeError
from fastrader.testing import random_candles
from fastrader.testing.exchange_server import ExchangeServer

HOUR = 3_600_000
FAST = dict(base_delay=0.01, max_delay=0.1)  # keep back-off in tests to milliseconds


def _fetch(server, tmp_path, since, until, **kw):
    kw.setdefault("retry", RetryPolicy(**FAST))
    return fetch_history(
        "binance", "BTC/USDT", "1h", since, until, cache_dir=tmp_path / "cache", api_url=server.url, progress=False, **kw
    )


def _reference_gaps(ts: np.ndarray, step: int) -> list[tuple[int, int]]:
    """(first missing, count) from set difference against the full grid: independent of find_gaps."""
    missing = np.setdiff1d(np.arange(ts[0], ts[-1], step), ts)
    runs: list[tuple[int, int]] = []
    for t in missing:
        if runs and runs[-1][0] + runs[-1][1] * step == t:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((int(t), 1))
    return runs


def test_five_years_of_real_hourly_candles_exactly(tmp_path, real_data_path):
    source = load_candles(real_data_path)
    with ExchangeServer(source) as server:
        t0 = time.perf_counter()
        result = _fetch(server, tmp_path, "2020-10-01", "2025-10-06T18:00Z")
        elapsed = time.perf_counter() - t0
        reference = server.candles()
    got = result.candles
    np.testing.assert_array_equal(got.to_numpy(), reference.to_numpy())
    assert len(got) == len(source) == 43_780
    ts = got["timestamp"].to_numpy()
    assert (np.diff(ts) > 0).all()
    # UTC end to end: the first candle is 2020-10-07 18:00 UTC per the data set's provenance notes.
    assert pd.Timestamp(ts[0], unit="ms", tz="UTC") == pd.Timestamp("2020-10-07 18:00", tz="UTC")
    # ceil(43780 / 1000) pages plus one exchangeInfo, and no more.
    assert result.stats.pages == 44 and result.stats.requests == 45 and server.kline_requests == 44
    assert all(int(q["limit"]) == 1000 for p, q in server.requests if p.endswith("/klines"))
    expected = _reference_gaps(ts, HOUR)
    assert [(g.start, g.missing) for g in result.gaps.gaps] == expected
    assert result.gaps.count == 10 and result.gaps.missing == 20 and result.gaps.largest.missing == 4
    print(f"\n5y download: {len(got)} candles, {result.stats.summary()}, {elapsed:.2f} s")


@pytest.fixture(scope="module")
def walk():
    """A random 30,000-candle hourly history with three gaps."""
    frame = random_candles(30_000, seed=7, start_ms=1_577_836_800_000)
    return frame.drop(index=[100, 5000, 5001, 5002, 9999]).reset_index(drop=True)


def test_twenty_percent_mixed_faults_give_the_same_result(tmp_path, walk):
    with ExchangeServer(walk, fault_rate=0.2, seed=5, timeout_delay_s=1.0, retry_after_s=1) as server:
        t0 = time.perf_counter()
        result = _fetch(server, tmp_path, walk["timestamp"].iat[0], walk["timestamp"].iat[-1] + HOUR, timeout_ms=400)
        elapsed = time.perf_counter() - t0
        reference = server.candles()
        faults = list(server.faults)
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())
    assert set(faults) == {"429", "5xx", "timeout", "disconnect"}, faults
    # Each fault cost one retry. On a loaded 2-core machine a healthy answer can also miss the
    # 400 ms client timeout now and then, which costs a retry of its own: allow two of those.
    assert len(faults) <= result.stats.retries <= len(faults) + 2
    assert result.stats.requests == 1 + 30 + result.stats.retries
    # 429 answers carried Retry-After: 1, and it was honoured.
    assert result.stats.slept_s >= faults.count("429") * 1.0
    print(f"\n20% faults: {result.stats.summary()}, faults {pd.Series(faults).value_counts().to_dict()}, {elapsed:.2f} s")


def test_twenty_percent_faults_on_five_real_years(tmp_path, real_data_path):
    source = load_candles(real_data_path)
    with ExchangeServer(source, fault_rate=0.2, seed=11, timeout_delay_s=1.0, retry_after_s=1) as server:
        t0 = time.perf_counter()
        result = _fetch(server, tmp_path, "2020-10-01", "2025-10-06T18:00Z", timeout_ms=400)
        elapsed = time.perf_counter() - t0
        reference = server.candles()
        faults = list(server.faults)
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())
    assert result.stats.retries == len(faults) > 0
    assert result.stats.requests == 45 + len(faults)
    print(f"\n5y with 20% faults: {result.stats.summary()}, {len(faults)} faults, {elapsed:.2f} s")


def test_retry_after_is_honoured_and_backoff_is_capped(walk):
    waits: list[float] = []
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05, jitter=0.0, sleep=waits.append)
    assert [policy.delay(n) for n in range(5)] == [0.01, 0.02, 0.04, 0.05, 0.05]
    with ExchangeServer(walk, retry_after_s=2) as server:
        server.inject("429", count=2)
        server.inject("5xx", count=3)
        ex = make_exchange("binance", api_url=server.url)
        result = download_candles(ex, "BTC/USDT", "1h", int(walk["timestamp"].iat[0]), int(walk["timestamp"].iat[999]) + 1, policy=policy)
    # Back-off counts consecutive failures of one request: the 5xx retries are its 3rd to 5th.
    assert waits == [2.0, 2.0, 0.04, 0.05, 0.05]
    assert len(result.candles) == 1000


def test_persistent_server_errors_give_up_with_one_line(walk):
    with ExchangeServer(walk) as server:
        server.inject("5xx", count=50)
        ex = make_exchange("binance", api_url=server.url)
        with pytest.raises(ExchangeError, match=r"still failing after 4 attempts") as err:
            download_candles(ex, "BTC/USDT", "1h", int(walk["timestamp"].iat[0]), int(walk["timestamp"].iat[-1]), policy=RetryPolicy(max_retries=3, base_delay=0.001))
        assert server.kline_requests == 4
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind, pattern", [("bad_symbol", "unknown symbol"), ("auth", "authentication refused")])
def test_permanent_errors_are_not_retried(walk, kind, pattern):
    with ExchangeServer(walk) as server:
        server.inject(kind)
        ex = make_exchange("binance", api_url=server.url)
        with pytest.raises(ExchangeError, match=pattern):
            download_candles(ex, "BTC/USDT", "1h", int(walk["timestamp"].iat[0]), int(walk["timestamp"].iat[-1]), policy=RetryPolicy(**FAST))
        assert server.kline_requests == 1


def test_overlapping_pages_do_not_duplicate(walk):
    with ExchangeServer(walk, fault_rate=1.0, fault_kinds=("overlap",), overlap=5) as server:
        ex = make_exchange("binance", api_url=server.url)
        stats = RequestStats()
        result = download_candles(ex, "BTC/USDT", "1h", int(walk["timestamp"].iat[0]), int(walk["timestamp"].iat[-1]) + HOUR, stats=stats)
        reference = server.candles()
    # Every page after the first repeats 5 candles, so it brings 995 new ones.
    assert stats.pages == 1 + int(np.ceil((len(walk) - 1000) / 995))
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())


def test_open_last_candle_is_dropped():
    now = 1_700_000_000_000 + 25 * 60_000  # 25 minutes into an hour
    last_open = now - now % HOUR
    frame = random_candles(2500, seed=9, start_ms=last_open - 2499 * HOUR)
    with ExchangeServer(frame, now_ms=now, open_candle=True) as server:
        ex = make_exchange("binance", api_url=server.url)
        result = download_candles(ex, "BTC/USDT", "1h", int(frame["timestamp"].iat[0]), now + 10 * HOUR, now=now)
        served_open = any(
            p.endswith("/klines") and "endTime" not in q for p, q in server.requests
        )  # the client asked without an end, so the server did send the open candle
        reference = server.candles()
    assert served_open
    assert result.candles["timestamp"].iat[-1] == last_open - HOUR
    # Known complete up to (excluding) the first open time that cannot have closed by ``now``.
    assert result.covered == [(int(frame["timestamp"].iat[0]), now - HOUR + 1)] and result.skipped == []
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())


def test_gaps_reported_never_filled_unless_asked(tmp_path, walk):
    with ExchangeServer(walk) as server:
        since, until = int(walk["timestamp"].iat[0]), int(walk["timestamp"].iat[-1]) + HOUR
        plain = _fetch(server, tmp_path, since, until)
        filled = _fetch(server, tmp_path, since, until, fill=True)
    assert len(plain.candles) == len(walk)
    assert [(g.start, g.missing) for g in plain.gaps.gaps] == _reference_gaps(walk["timestamp"].to_numpy(), HOUR)
    assert plain.gaps.count == 3 and plain.gaps.largest.missing == 3
    full = filled.candles
    assert len(full) == len(walk) + 5
    assert (np.diff(full["timestamp"].to_numpy()) == HOUR).all()
    inserted = ~full["timestamp"].isin(walk["timestamp"])
    prev_close = full["close"].shift(1)[inserted]
    assert (full.loc[inserted, ["open", "high", "low", "close"]].to_numpy() == prev_close.to_numpy()[:, None]).all()
    assert (full.loc[inserted, "volume"] == 0).all()
    # The filled candles are not written back to the cache.
    assert find_gaps(plain.candles["timestamp"], HOUR).count == 3


def test_api_url_prefix_is_kept():
    ex = make_exchange("binance", api_url="http://127.0.0.1:9/mirror/")
    assert ex.urls["api"]["public"] == "http://127.0.0.1:9/mirror/api/v3"
    assert ex.urls["api"]["fapiPublic"] == "http://127.0.0.1:9/mirror/fapi/v1"


def test_okx_windows_newest_first_pages_faults_and_a_long_outage(tmp_path):
    """A second exchange with another page shape: OKX pages are newest-first windows between before/after."""
    frame = random_candles(5_000, seed=8, start_ms=1_577_836_800_000)
    outage = list(range(1000, 1700))  # longer than a 300-candle window: whole pages come back empty
    frame = frame.drop(index=outage + [3000]).reset_index(drop=True)
    with ExchangeServer(frame, exchange="okx", fault_rate=0.2, seed=4, timeout_delay_s=1.0, retry_after_s=1) as server:
        result = fetch_history(
            "okx", "BTC/USDT", "1h", int(frame["timestamp"].iat[0]), int(frame["timestamp"].iat[-1]) + HOUR,
            cache_dir=tmp_path, api_url=server.url, progress=False, retry=RetryPolicy(**FAST), timeout_ms=400,
        )
        reference = server.candles()
        faults = list(server.faults)
        candle_paths = {p for p, _ in server.requests if "candles" in p}
        windows = sorted({(int(q["before"]) + 1, int(q["after"])) for p, q in server.requests if "candles" in p})
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())
    assert candle_paths == {"/api/v5/market/history-candles"}
    assert result.stats.retries == len(faults) > 0
    assert result.stats.slept_s >= faults.count("429") * 1.0  # OKX's 429 Retry-After honoured too
    # The windows asked for tile the history with no hole, each 300 candles wide, each asked once,
    # except the quiet windows of the outage, asked twice before they are taken as quiet.
    assert result.stats.empty_retries >= 1
    assert result.stats.pages == len(windows) + result.stats.empty_retries
    assert result.missing == []
    assert windows[0][0] == frame["timestamp"].iat[0] and windows[-1][1] > frame["timestamp"].iat[-1]
    assert all(b - a == 300 * HOUR for a, b in windows)
    assert all(nxt[0] <= prev[1] for prev, nxt in zip(windows, windows[1:]))
    assert [(g.start, g.missing) for g in result.gaps.gaps] == _reference_gaps(frame["timestamp"].to_numpy(), HOUR)
