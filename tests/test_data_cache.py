"""The candle cache: no network when covered, only the missing parts, atomic, resumable, distrustful."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastrader.data import fetch_history
from fastrader.data.cache import CacheEntry, CacheKey, ParquetStore, cache_key, merge_intervals, missing_intervals
from fastrader.data.exchange import RetryPolicy
from fastrader.errors import CacheError
from fastrader.testing import random_candles
from fastrader.testing.exchange_server import ExchangeServer

HOUR = 3_600_000
REPO = Path(__file__).resolve().parent.parent


def _key(server) -> CacheKey:
    """Where candles from this server are cached: its own namespace, never the exchange's."""
    return cache_key("binance", "BTC/USDT", "1h", server.url)


@pytest.fixture(scope="module")
def history():
    return random_candles(8_000, seed=21, start_ms=1_600_000_000_000 - 1_600_000_000_000 % HOUR)


def _fetch(server, cache, since, until, **kw):
    return fetch_history(
        "binance", "BTC/USDT", "1h", since, until, cache_dir=cache, api_url=server.url, progress=False,
        retry=RetryPolicy(base_delay=0.01, max_delay=0.1), log=kw.pop("log", lambda m: None), **kw,
    )


def test_missing_intervals_against_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(300):
        covered = [tuple(sorted(rng.integers(0, 60, 2))) for _ in range(rng.integers(0, 5))]
        start, end = sorted(rng.integers(0, 60, 2))
        # Reference: the set of integer points, then runs of consecutive points.
        have = {p for s, e in covered for p in range(s, e)}
        want = [p for p in range(start, end) if p not in have]
        runs = []
        for p in want:
            if runs and runs[-1][1] == p:
                runs[-1][1] = p + 1
            else:
                runs.append([p, p + 1])
        assert missing_intervals((start, end), covered) == [tuple(r) for r in runs]
        assert sum(e - s for s, e in merge_intervals(covered)) == len(have)


def test_covered_range_makes_no_request_and_longer_range_fetches_only_the_rest(tmp_path, history):
    ts = history["timestamp"].to_numpy()
    cache = tmp_path / "c"
    with ExchangeServer(history) as server:
        first = _fetch(server, cache, int(ts[3000]), int(ts[5000]))
        assert first.stats.pages == 2 and len(first.candles) == 2000
        n = len(server.requests)
        again = _fetch(server, cache, int(ts[3500]), int(ts[4500]))
        assert len(server.requests) == n and again.stats.requests == 0  # zero network calls
        np.testing.assert_array_equal(again.candles.to_numpy(), server.candles().iloc[3500:4500].to_numpy())
        wider = _fetch(server, cache, int(ts[1000]), int(ts[7000]))
        starts = [int(q["startTime"]) for p, q in server.requests[n:] if p.endswith("/klines")]
        reference = server.candles()
    # Only the two missing stretches were asked for: [1000, 3000) and [5000, 7000), two pages each.
    assert starts == [int(ts[1000]), int(ts[2000]), int(ts[5000]), int(ts[6000])]
    np.testing.assert_array_equal(wider.candles.to_numpy(), reference.iloc[1000:7000].to_numpy())
    assert wider.downloaded == 4000


def _write_bytes_corruption(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    path.write_bytes(bytes(data))


def _write_checksum_mismatch(path: Path) -> None:
    if path.suffix == ".bin":
        # A segment: change one close price in place, keep the header (and its checksum).
        data = bytearray(path.read_bytes())
        n_head = int.from_bytes(data[8:12], "little")
        rows = (len(data) - 12 - n_head) // 48
        at = 12 + n_head + 8 * rows * 4 + 8 * 10  # close column, row 10
        value = np.frombuffer(bytes(data[at : at + 8]), dtype=np.float64)[0]
        data[at : at + 8] = np.float64(value * 1.01).tobytes()  # a silently changed price
        path.write_bytes(bytes(data))
        return
    table = pq.read_table(path)
    frame = table.to_pandas()
    frame.loc[10, "close"] *= 1.01  # a silently changed price: valid Parquet, wrong data
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(table.schema.metadata), path)


def _write_foreign(path: Path) -> None:
    random_candles(50, seed=1).to_parquet(path, index=False)


@pytest.mark.parametrize("where", ["base", "segment"])
@pytest.mark.parametrize(
    "damage, reason",
    [(_write_bytes_corruption, "corrupt"), (_write_checksum_mismatch, "checksum"), (_write_foreign, "foreign")],
)
def test_bad_cache_file_is_reported_and_not_trusted(tmp_path, history, damage, reason, where):
    ts = history["timestamp"].to_numpy()
    cache = tmp_path / "c"
    with ExchangeServer(history) as server:
        key = _key(server)
        store = ParquetStore(cache)
        _fetch(server, cache, int(ts[0]), int(ts[1500]))
        assert store.segment_paths(key) == [] and store.base_path(key).exists()  # compacted after the download
        _fetch(server, cache, int(ts[0]), int(ts[2500]))
        assert len(store.segment_paths(key)) == 1  # 1000 new candles, fewer than the base holds: a segment
        damage(store.base_path(key) if where == "base" else store.segment_paths(key)[0])
        with pytest.raises(CacheError, match=reason):
            store.read(key)
        messages: list[str] = []
        result = _fetch(server, cache, int(ts[0]), int(ts[2500]), log=messages.append)
        reference = server.candles()
    assert len(messages) == 1 and reason in messages[0] and "downloading again" in messages[0]
    assert result.stats.pages == 3  # downloaded again, not read from the bad entry
    np.testing.assert_array_equal(result.candles.to_numpy(), reference.iloc[:2500].to_numpy())
    assert store.read(key) is not None
    assert list(store.path(key).parent.glob("*.corrupt*")), "the bad entry is kept aside for inspection"


def test_entry_of_another_key_is_refused(tmp_path, history):
    store = ParquetStore(tmp_path)
    entry = CacheEntry(CacheKey("binance", "ETH/USDT", "1h"))
    entry.add(history.iloc[:10], (int(history["timestamp"].iat[0]), int(history["timestamp"].iat[10])))
    store.write(entry)
    btc = CacheKey("binance", "BTC/USDT", "1h")
    os.replace(store.path(entry.key), store.path(btc))
    with pytest.raises(CacheError, match="belongs to binance ETH/USDT 1h"):
        store.read(btc)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "fastrader.data", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, **kw,
    )


def test_killed_download_resumes_to_the_identical_data_set(tmp_path):
    frame = random_candles(30_000, seed=5, start_ms=1_500_000_000_000 - 1_500_000_000_000 % HOUR)
    since, until = int(frame["timestamp"].iat[0]), int(frame["timestamp"].iat[-1]) + HOUR
    cache = tmp_path / "c"
    with ExchangeServer(frame, page_delay_s=0.1) as server:
        proc = _cli(
            "download", "--symbol", "BTC/USDT", "--timeframe", "1h", "--since", str(since), "--until", str(until),
            "--api-url", server.url, "--cache-dir", str(cache), "--no-progress",
        )
        deadline = time.monotonic() + 60
        while server.kline_requests < 15 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up, as with a power cut
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        killed_at = server.kline_requests

        store = ParquetStore(cache)
        key = _key(server)
        partial = store.read(key)  # readable, checksums intact: not corrupt
        assert partial is not None and 10_000 <= len(partial.candles) < len(frame)
        # The server had been asked for ``killed_at`` pages, so the client held at most
        # killed_at - 1 of them; losing at most one leaves killed_at - 2 pages in the cache.
        assert len(partial.candles) % 1000 == 0 and len(partial.candles) >= (killed_at - 2) * 1000
        assert store.segment_paths(key) and not store.base_path(key).exists()  # pages as segments
        assert len(partial.covered) == 1 and partial.covered[0][0] == since and partial.covered[0][1] < until
        reference = server.candles()
        np.testing.assert_array_equal(partial.candles.to_numpy(), reference.iloc[: len(partial.candles)].to_numpy())

        server.page_delay_s = 0.0
        before = len(server.requests)
        resumed = _fetch(server, cache, since, until)
        asked = [int(q["startTime"]) for p, q in server.requests[before:] if p.endswith("/klines")]
        after_resume = len(server.requests)
        third = _fetch(server, cache, since, until)
        assert len(server.requests) == after_resume and third.stats.requests == 0
    np.testing.assert_array_equal(resumed.candles.to_numpy(), reference.to_numpy())
    np.testing.assert_array_equal(third.candles.to_numpy(), reference.to_numpy())
    # The rerun started where the saved data ended and fetched only the rest.
    assert asked[0] == int(partial.candles["timestamp"].iat[-1]) + HOUR
    assert len(asked) == int(np.ceil((len(frame) - len(partial.candles)) / 1000))
    assert killed_at >= 15
    assert not list(store.path(key).glob(".*.tmp")), "stale temp files are cleared on the next run"
    assert store.read(key).covered == [(since, until)]
    print(
        f"\nkilled after {killed_at} page requests with {len(partial.candles)} of {len(frame)} candles saved "
        f"({killed_at - 1 - len(partial.candles) // 1000} received pages lost); "
        f"rerun fetched {resumed.downloaded} in {resumed.stats.requests} requests; third run {third.stats.requests} requests"
    )


def test_month_and_minute_entries_never_share_a_file(tmp_path):
    store = ParquetStore(tmp_path)
    minute, month = store.path(CacheKey("binance", "BTC/USDT", "1m")), store.path(CacheKey("binance", "BTC/USDT", "1M"))
    assert minute.name.lower() != month.name.lower()
