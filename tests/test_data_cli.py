"""``python -m fastrader.data``: permanent errors end with one line and a non-zero code; info; several symbols."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastrader.data.__main__ import main
from fastrader.data.cache import ParquetStore, cache_key
from fastrader.data.timeframes import parse_time
from fastrader.errors import ConfigError
from fastrader.testing import random_candles
from fastrader.testing.exchange_server import ExchangeServer

HOUR = 3_600_000
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def market():
    start = 1_600_000_000_000 - 1_600_000_000_000 % HOUR
    return {"BTC/USDT": random_candles(4_000, seed=31, start_ms=start), "ETH/USDT": random_candles(3_000, seed=32, start_ms=start)}


def _args(server, cache, *extra):
    return ["download", "--api-url", server.url, "--cache-dir", str(cache), "--no-progress", "--retry-delay", "0.01", *extra]


def test_unknown_symbol_and_timeframe_fail_in_one_line_with_exit_code(tmp_path, market):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cache = tmp_path / "c"
    with ExchangeServer(market) as server:
        for extra, message in [
            (["--symbol", "DOGE/USDT"], "error: binance: unknown symbol 'DOGE/USDT'"),
            (["--symbol", "BTC/USDT", "--timeframe", "7m"], "error: binance: unsupported timeframe '7m' (supported: 1s, 1m"),
        ]:
            proc = subprocess.run(
                [sys.executable, "-m", "fastrader.data", *_args(server, cache, "--since", "2020-09-14", *extra)],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
            )
            assert proc.returncode != 0
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
            assert "Traceback" not in proc.stderr
        assert server.kline_requests == 0
    assert ParquetStore(cache).keys() == [], "no cache entry for a failed request"
    assert not [p for p in cache.rglob("*") if p.is_file() and ".locks" not in p.parts]


def test_permanent_error_mid_download_keeps_only_what_is_complete(tmp_path, market, capsys):
    cache = tmp_path / "c"
    btc = market["BTC/USDT"]
    since, until = int(btc["timestamp"].iat[0]), int(btc["timestamp"].iat[-1]) + HOUR
    with ExchangeServer(market) as server:
        server.inject("bad_symbol", after=2)  # delisted after two pages
        code = main(_args(server, cache, "--symbol", "BTC/USDT", "--since", str(since), "--until", str(until)))
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and "unknown symbol" in err[0]
        key = cache_key("binance", "BTC/USDT", "1h", server.url)
        entry = ParquetStore(cache).read(key)
        # The two pages received are kept, and known complete only as far as they go.
        assert len(entry.candles) == 2000
        assert entry.covered == [(since, int(btc["timestamp"].iat[2000]))]
        assert main(_args(server, cache, "--symbol", "BTC/USDT", "--since", str(since), "--until", str(until))) == 0
        reference = server.candles("BTC/USDT")
    entry = ParquetStore(cache).read(key)
    np.testing.assert_array_equal(entry.candles.to_numpy(), reference.to_numpy())
    assert entry.covered == [(since, until)]


def test_several_symbols_then_info(tmp_path, market, capsys):
    cache = tmp_path / "c"
    since, until = int(market["BTC/USDT"]["timestamp"].iat[0]), int(market["BTC/USDT"]["timestamp"].iat[-1]) + HOUR
    with ExchangeServer(market) as server:
        assert main(_args(server, cache, "--symbol", "BTC/USDT,ETH/USDT", "--since", str(since), "--until", str(until))) == 0
        out = capsys.readouterr().out
        refs = {s: server.candles(s) for s in market}
        url = server.url
    assert f"BTC/USDT 1h via {url}: 4000 candles" in out and f"ETH/USDT 1h via {url}: 3000 candles" in out
    store = ParquetStore(cache)
    for symbol, ref in refs.items():
        np.testing.assert_array_equal(store.read(cache_key("binance", symbol, "1h", url)).candles.to_numpy(), ref.to_numpy())
    assert main(["info", "--cache-dir", str(cache)]) == 0
    info = capsys.readouterr().out
    assert "binance BTC/USDT 1h: 4000 candles" in info and "binance ETH/USDT 1h: 3000 candles" in info
    # Listed under the namespace of the URL they came from, never as the exchange's own.
    namespace = cache_key("binance", "BTC/USDT", "1h", url).namespace()
    assert f"namespace {namespace}: candles fetched via --api-url {url}" in info and "(default)" not in info
    # A damaged file is listed as bad and makes info exit non-zero.
    path = store.base_path(cache_key("binance", "ETH/USDT", "1h", url))
    path.write_bytes(path.read_bytes()[:500])
    assert main(["info", "--cache-dir", str(cache)]) != 0
    assert "BAD  cache file" in capsys.readouterr().out


def test_export_writes_a_csv_that_loads_back_identically(tmp_path, market, capsys):
    from fastrader.data import load_candles

    btc = market["BTC/USDT"]
    since, until = int(btc["timestamp"].iat[0]), int(btc["timestamp"].iat[-1]) + HOUR
    out = tmp_path / "btc.csv"
    with ExchangeServer(market) as server:
        args = _args(server, tmp_path / "c", "--symbol", "BTC/USDT", "--since", str(since), "--until", str(until), "--out", str(out))
        assert main(["export", *args[1:]]) == 0
        reference = server.candles("BTC/USDT")
    np.testing.assert_array_equal(load_candles(out).to_numpy(), reference.to_numpy())


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["download", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--api-url", "--cache-dir", "--since", "--until", "--timeframe", "--symbol", "--exchange"):
        assert option in text


@pytest.mark.parametrize(
    "text", ["2021-01-01", "2021-01-01T00:00Z", "2021-01-01T00:00:00+00:00", "2021-01-01T01:00+01:00", "1609459200000"]
)
def test_times_are_utc(text):
    import datetime as dt

    expected = int(dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    assert parse_time(text) == expected
    assert parse_time(expected) == expected


@pytest.mark.parametrize("text", ["yesterday-ish", "1609459200", "2021-13-01"])
def test_bad_times_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_time(text, name="--since")


def test_config_file_supplies_options_and_the_command_line_wins(tmp_path, market, capsys):
    btc = market["BTC/USDT"]
    since, until = int(btc["timestamp"].iat[0]), int(btc["timestamp"].iat[-1]) + HOUR
    with ExchangeServer(market) as server:
        config = tmp_path / "fastrader.toml"
        config.write_text(
            f'strategy = "model"\n[data]\nexchange = "binance"\nsymbol = ["ETH/USDT"]\nsince = {since}\n'
            f'until = {until}\napi_url = "{server.url}"\ncache_dir = "{tmp_path / "c"}"\nretry_delay = 0.01\n'
        )
        assert main(["download", "--config", str(config), "--no-progress"]) == 0
        assert f"ETH/USDT 1h via {server.url}: 3000 candles" in capsys.readouterr().out
        assert main(["download", "--config", str(config), "--no-progress", "--symbol", "BTC/USDT"]) == 0
        assert f"BTC/USDT 1h via {server.url}: 4000 candles" in capsys.readouterr().out
    config.write_text("[data]\nsymbols = 'BTC/USDT'\n")
    assert main(["download", "--config", str(config)]) == 2
    assert "unknown key(s) in [data]: symbols" in capsys.readouterr().err


def test_unusable_cache_dir_and_unknown_exchange_are_one_line_errors(tmp_path, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    code = main(["download", "--symbol", "BTC/USDT", "--since", "2021-01-01", "--cache-dir", str(blocker), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error: cannot use cache directory")
    code = main(["download", "--exchange", "binanse", "--symbol", "BTC/USDT", "--since", "2021-01-01", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error: unknown exchange 'binanse' (did you mean binance")
