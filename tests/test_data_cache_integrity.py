"""The cache holds what it says: namespaces per --api-url, no false 'complete', pages that
cannot be paged are refused, segments that are checked, written in O(page) and compacted
to the same candles. The real ccxt client against the local fake Binance throughout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fastrader.data import fetch_history
from fastrader.data.__main__ import main as data_main
from fastrader.data.cache import CacheEntry, CacheKey, ParquetStore, cache_key, normalise_api_url
from fastrader.data.candles import candles_digest
from fastrader.data.exchange import RetryPolicy
from fastrader.errors import CacheError, DataError
from fastrader.testing import random_candles
from fastrader.testing.exchange_server import ExchangeServer

HOUR = 3_600_000
START = 1_600_000_000_000 - 1_600_000_000_000 % HOUR


def _walk(n: int, seed: int, drop=(300, 301, 302, 4400)) -> pd.DataFrame:
    """Hourly candles with gaps, opens away from the previous close."""
    frame = random_candles(n, seed=seed, start_ms=START)
    rng = np.random.default_rng(seed)
    frame["open"] = frame["open"] * (1 + rng.normal(0, 0.002, n))
    frame["high"] = np.maximum(frame["high"], frame["open"])
    frame["low"] = np.minimum(frame["low"], frame["open"])
    return frame.drop(index=[i for i in drop if i < n]).reset_index(drop=True)


def _fetch(url, cache, since, until, **kw):
    kw.setdefault("log", lambda m: None)
    return fetch_history(
        "binance", "BTC/USDT", "1h", since, until, cache_dir=cache, api_url=url, progress=False,
        retry=RetryPolicy(base_delay=0.01, max_delay=0.1), **kw,
    )


def _klines_from(server, first: int = 0) -> list[int]:
    return [int(q["startTime"]) for p, q in server.requests[first:] if p.endswith("/klines")]


# -- namespaces ----------------------------------------------------------------------


def test_api_url_download_never_appears_in_the_default_namespace(tmp_path):
    cache = tmp_path / "c"
    a, b = _walk(3000, seed=1), _walk(3000, seed=2)  # same symbol and times, other prices
    since, until = START, START + 3000 * HOUR
    with ExchangeServer(a) as server_a, ExchangeServer(b) as server_b:
        got_a = _fetch(server_a.url, cache, since, until)
        ref_a = server_a.candles()
        store = ParquetStore(cache)
        # Nothing under the exchange's own name: not the entry, not even its directory.
        assert store.read(CacheKey("binance", "BTC/USDT", "1h")) is None
        assert not (cache / "binance").exists()
        assert store.keys() == [cache_key("binance", "BTC/USDT", "1h", server_a.url)]
        assert got_a.key.source == normalise_api_url(server_a.url) and server_a.url in str(got_a.key)

        # Another server for the same market is another namespace: downloaded, not served from A's candles.
        got_b = _fetch(server_b.url, cache, since, until)
        assert server_b.kline_requests == 3
        ref_b = server_b.candles()

        # The same server spelt differently is the same namespace: no request at all.
        before = server_a.kline_requests
        again = _fetch(server_a.url.replace("http://", "HTTP://") + "/", cache, since, until)
        assert server_a.kline_requests == before and again.stats.requests == 0
    np.testing.assert_array_equal(got_a.candles.to_numpy(), ref_a.to_numpy())
    np.testing.assert_array_equal(got_b.candles.to_numpy(), ref_b.to_numpy())
    np.testing.assert_array_equal(again.candles.to_numpy(), ref_a.to_numpy())
    assert not np.array_equal(ref_a["close"].to_numpy(), ref_b["close"].to_numpy())
    assert sorted(k.source for k in store.keys()) == sorted(normalise_api_url(s.url) for s in (server_a, server_b))


def test_info_lists_each_namespace_under_its_url(tmp_path, capsys):
    cache = tmp_path / "c"
    with ExchangeServer(_walk(1200, seed=3)) as server:
        _fetch(server.url, cache, START, START + 1200 * HOUR)
        url = normalise_api_url(server.url)
    assert data_main(["info", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    namespace = cache_key("binance", "BTC/USDT", "1h", url).namespace()
    assert f"namespace {namespace}: candles fetched via --api-url {url}" in out
    assert "binance BTC/USDT 1h: 1197 candles" in out and "(default)" not in out


# -- complete only where candles came ----------------------------------------------------


def test_empty_page_mid_range_does_not_mark_the_rest_complete_and_a_rerun_fills_the_hole(tmp_path):
    cache = tmp_path / "c"
    frame = _walk(5000, seed=4)
    ts = frame["timestamp"].to_numpy()
    since, until = int(ts[0]), int(ts[-1]) + HOUR
    hole_start = int(ts[2000])  # a page boundary: pages start at ts[0], ts[1000], ts[2000], ...
    with ExchangeServer(frame) as server:
        server.empty_at(hole_start)  # every request from there answers [] although candles exist
        messages: list[str] = []
        first = _fetch(server.url, cache, since, until, log=messages.append)
        asked = _klines_from(server)
        reference = server.candles()
        # Asked twice, then stepped one page (1000 timeframes) on; what lies beyond was fetched.
        hole = (hole_start, hole_start + 1000 * HOUR)
        assert asked.count(hole_start) == 2 and hole[1] in asked
        assert first.missing == [hole]
        assert len(messages) == 1 and "stays missing, not complete" in messages[0]
        assert "NOT COMPLETE" in first.summary()
        entry = ParquetStore(cache).read(cache_key("binance", "BTC/USDT", "1h", server.url))
        assert entry.covered == [(since, hole[0]), (hole[1], until)]
        outside = (reference["timestamp"] < hole[0]) | (reference["timestamp"] >= hole[1])
        np.testing.assert_array_equal(first.candles.to_numpy(), reference[outside].to_numpy())

        # The exchange answers again: a rerun asks for the hole only, and the set is whole.
        server.clear_empty()
        n = len(server.requests)
        second = _fetch(server.url, cache, since, until)
        assert _klines_from(server, n) == [hole_start]
        third = _fetch(server.url, cache, since, until)
    np.testing.assert_array_equal(second.candles.to_numpy(), reference.to_numpy())
    assert second.missing == [] and second.downloaded == int((~outside).sum())
    assert third.stats.requests == 0
    entry = ParquetStore(cache).read(cache_key("binance", "BTC/USDT", "1h", server.url))
    assert entry.covered == [(since, until)]


def test_one_empty_answer_is_asked_again_and_leaves_no_hole(tmp_path):
    frame = _walk(3000, seed=5)
    ts = frame["timestamp"].to_numpy()
    with ExchangeServer(frame) as server:
        server.empty_at(int(ts[1000]), count=1)
        result = _fetch(server.url, tmp_path, int(ts[0]), int(ts[-1]) + HOUR)
        reference = server.candles()
    assert result.stats.empty_retries == 1 and result.missing == [] and not result.warnings
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())


def test_complete_only_up_to_the_last_candle_received(tmp_path):
    """Candles stop (a delisting) before the range does: the rest is unknown, not complete."""
    frame = _walk(1500, seed=6)
    last = int(frame["timestamp"].iat[-1])
    until = last + 1800 * HOUR
    with ExchangeServer(frame, now_ms=until + 10 * HOUR) as server:
        result = _fetch(server.url, tmp_path, START, until)
        reference = server.candles()
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())
    # Complete exactly up to one timeframe after the last candle; never marked done beyond it.
    assert result.missing == [(last + HOUR, until)]
    entry = ParquetStore(tmp_path).read(result.key)
    assert entry.covered == [(START, last + HOUR)]


# -- an exchange that ignores since ------------------------------------------------------


def test_exchange_ignoring_since_is_one_error_line_and_nothing_is_cached(tmp_path, capsys):
    frame = _walk(5000, seed=7)
    cache = tmp_path / "c"
    with ExchangeServer(frame, ignore_since=True) as server:
        with pytest.raises(DataError, match=r"ignores 'since'"):
            _fetch(server.url, cache, START, START + 5000 * HOUR)
        assert ParquetStore(cache).read(cache_key("binance", "BTC/USDT", "1h", server.url)) is None
        code = data_main(
            ["download", "--symbol", "BTC/USDT", "--since", str(START), "--until", str(START + 5000 * HOUR),
             "--api-url", server.url, "--cache-dir", str(cache), "--no-progress", "--retry-delay", "0.01"]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: binance ignores 'since' for BTC/USDT 1h")


def test_a_listing_later_than_since_is_not_mistaken_for_ignoring_it(tmp_path):
    frame = _walk(3000, seed=8)
    since = START - 4000 * HOUR  # four pages before the first candle exists
    with ExchangeServer(frame) as server:
        result = _fetch(server.url, tmp_path, since, START + 3000 * HOUR)
        reference = server.candles()
        probes = [q for p, q in server.requests if p.endswith("/klines") and q.get("limit") == "2"]
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())
    assert len(probes) == 1  # the jump was checked once, with a two-candle probe
    assert result.missing == [] and ParquetStore(tmp_path).read(result.key).covered == [(since, START + 3000 * HOUR)]


# -- segments ----------------------------------------------------------------------------


def _pandas_reference(pages: list[pd.DataFrame]) -> pd.DataFrame:
    """Independent of the cache's merge: concat in write order, the last version of a timestamp wins."""
    merged = pd.concat(pages, ignore_index=True).drop_duplicates("timestamp", keep="last")
    return merged.sort_values("timestamp").reset_index(drop=True)


def test_segments_and_their_compaction_give_the_same_candles(tmp_path):
    rng = np.random.default_rng(9)
    full = _walk(6000, seed=9)
    key = cache_key("binance", "BTC/USDT", "1h", "http://127.0.0.1:9")
    store = ParquetStore(tmp_path)
    entry = CacheEntry(key)
    pages = []
    for _ in range(12):
        # Pages in any order, overlapping, some with revised prices (a later version wins).
        lo = int(rng.integers(0, 5500))
        page = full.iloc[lo : lo + int(rng.integers(50, 500))].copy()
        page["close"] = np.minimum(page["high"], page["close"] * (1 + rng.uniform(0, 0.001, len(page))))
        pages.append(page)
        ts = page["timestamp"].to_numpy()
        store.append(entry, page, (int(ts[0]), int(ts[-1]) + HOUR))
    store.flush(entry)
    assert len(store.segment_paths(key)) == 12 and not store.base_path(key).exists()
    reference = _pandas_reference(pages)
    from_segments = store.read(key)
    pd.testing.assert_frame_equal(from_segments.candles, reference, check_exact=True)

    store.compact(from_segments)
    store.settle()
    assert store.segment_paths(key) == [] and store.base_path(key).exists()
    from_base = store.read(key)
    pd.testing.assert_frame_equal(from_base.candles, reference, check_exact=True)
    assert from_base.covered == from_segments.covered == entry.covered
    assert candles_digest(from_base.candles) == candles_digest(reference)


def test_a_new_page_writes_a_segment_of_its_size_and_leaves_the_base_alone(tmp_path):
    frame = _walk(6000, seed=10)
    ts = frame["timestamp"].to_numpy()
    with ExchangeServer(frame) as server:
        key = cache_key("binance", "BTC/USDT", "1h", server.url)
        store = ParquetStore(tmp_path)
        _fetch(server.url, tmp_path, int(ts[0]), int(ts[5000]))
        base = store.base_path(key)
        before = base.stat()
        _fetch(server.url, tmp_path, int(ts[0]), int(ts[5500]))
        reference = server.candles()
    after = base.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    (segment,) = store.segment_paths(key)
    # 500 candles x 6 columns x 8 bytes, plus a header of a few hundred bytes.
    assert 500 * 48 < segment.stat().st_size < 500 * 48 + 1024
    np.testing.assert_array_equal(store.read(key).candles.to_numpy(), reference.iloc[:5500].to_numpy())


def test_a_short_last_segment_reads_as_never_written_and_a_short_middle_one_is_damage(tmp_path):
    frame = _walk(4000, seed=11)
    ts = frame["timestamp"].to_numpy()
    since, until = int(ts[0]), int(ts[-1]) + HOUR
    with ExchangeServer(frame) as server:
        key = cache_key("binance", "BTC/USDT", "1h", server.url)
        store = ParquetStore(tmp_path)
        _fetch(server.url, tmp_path, since, int(ts[1000]))  # a compacted base of 1000
        # Three more pages, as segments (a store that compacts only past 128 segments and the base size).
        entry = store.read(key)
        for lo in (1000, 1500, 2000):
            page = server.candles().iloc[lo : lo + 500]
            store.append(entry, page, (int(ts[lo]), int(ts[lo + 500])))
        store.flush(entry)
        segments = store.segment_paths(key)
        assert len(segments) == 3

        # As a power cut can leave it: the newest segment cut short. It is not data, and not damage.
        last = segments[-1]
        last.write_bytes(last.read_bytes()[:700])
        entry = store.read(key)
        assert entry.covered == [(since, int(ts[2000]))] and len(entry.candles) == 2000
        n = len(server.requests)
        result = _fetch(server.url, tmp_path, since, until)
        assert _klines_from(server, n)[0] == int(ts[2000])  # fetched again from where the short one began
        reference = server.candles()
        np.testing.assert_array_equal(result.candles.to_numpy(), reference.to_numpy())

        # A short segment with others after it cannot be a cut-off write: reported.
        entry = store.read(key)
        page = reference.iloc[100:200]
        store.append(entry, page, None)
        store.append(entry, reference.iloc[200:300], None)
        store.flush(entry)
        middle = store.segment_paths(key)[-2]
        middle.write_bytes(middle.read_bytes()[:700])
        with pytest.raises(CacheError, match="corrupt"):
            store.read(key)


def test_segments_left_by_a_killed_compaction_are_ignored_then_removed(tmp_path):
    frame = _walk(3000, seed=12)
    ts = frame["timestamp"].to_numpy()
    key = cache_key("binance", "BTC/USDT", "1h", "http://127.0.0.1:9")
    store = ParquetStore(tmp_path)
    entry = CacheEntry(key)
    for lo in (0, 1000, 2000):
        store.append(entry, frame.iloc[lo : lo + 1000], (int(ts[lo]), int(ts[min(lo + 1000, len(ts) - 1)])))
    store.flush(entry)
    old_segments = {p: p.read_bytes() for p in store.segment_paths(key)}
    store.compact(entry)
    # A revision of 100 candles, folded in too: the base now holds newer prices than the old segments.
    revised = frame.iloc[500:600].copy()
    revised["close"] = revised["low"] + (revised["high"] - revised["low"]) / 3
    store.append(entry, revised, None)
    store.compact(entry)
    expected = _pandas_reference([frame, revised])
    # As if a compaction had been killed after its rename but before deleting what it folded.
    for path, data in old_segments.items():
        path.write_bytes(data)
    pd.testing.assert_frame_equal(store.read(key).candles, expected, check_exact=True)
    assert store.segment_paths(key) == []  # none of them is live
    store.compact(store.read(key))
    store.settle()  # folded segments are deleted on a helper thread
    assert not list(store.path(key).glob("seg-*.bin"))
    pd.testing.assert_frame_equal(store.read(key).candles, expected, check_exact=True)
