"""Public candle files (Binance public data, CryptoDataDownload, Kaggle Bitstamp) load into the ccxt layout."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from fastrader.data import find_gaps, load_candles
from fastrader.data.formats import detect_format
from fastrader.errors import DataError
from fastrader.testing import random_candles

HOUR = 3_600_000
MINUTE = 60_000


def _fmt(x: float) -> str:
    return f"{x:.8f}"


@pytest.fixture
def ref():
    frame = random_candles(300, seed=51, start_ms=1_735_689_600_000 - 200 * HOUR)  # spans 2025-01-01
    for col in ("open", "high", "low", "close", "volume"):
        frame[col] = frame[col].round(8)
    return frame


def _binance_rows(frame, time_unit_us: bool) -> list[str]:
    rows = []
    for r in frame.itertuples(index=False):
        scale = 1000 if time_unit_us else 1
        rows.append(
            ",".join(
                [str(r.timestamp * scale), _fmt(r.open), _fmt(r.high), _fmt(r.low), _fmt(r.close), _fmt(r.volume),
                 str((r.timestamp + HOUR) * scale - 1), _fmt(r.volume * r.close), "17", _fmt(r.volume / 2), _fmt(r.volume * r.close / 2), "0"]
            )
        )
    return rows


def test_binance_public_spot_zip_with_ms_and_microseconds(tmp_path, ref):
    # Spot files switched to microseconds on 2025-01-01; a concatenation holds both.
    before = ref["timestamp"] < 1_735_689_600_000
    lines = _binance_rows(ref[before], time_unit_us=False) + _binance_rows(ref[~before], time_unit_us=True)
    path = tmp_path / "BTCUSDT-1h-2025-01.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("BTCUSDT-1h-2025-01.csv", "\n".join(lines) + "\n")
    assert detect_format(path) == "binance"
    np.testing.assert_array_equal(load_candles(path).to_numpy(), ref.to_numpy())


def test_binance_public_futures_with_header(tmp_path, ref):
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
    path = tmp_path / "BTCUSDT-1h.csv"
    path.write_text(header + "\n" + "\n".join(_binance_rows(ref, time_unit_us=False)) + "\n")
    np.testing.assert_array_equal(load_candles(path).to_numpy(), ref.to_numpy())


@pytest.mark.parametrize("unit", [1, 1000])
def test_cryptodatadownload_newest_first_base_volume(tmp_path, ref, unit):
    lines = ["https://www.CryptoDataDownload.com", "Unix,Date,Symbol,Open,High,Low,Close,Volume BTC,Volume USDT,tradecount"]
    for r in ref.iloc[::-1].itertuples(index=False):
        date = np.datetime64(int(r.timestamp), "ms").astype("datetime64[s]").astype(str).replace("T", " ")
        lines.append(
            f"{r.timestamp // 1000 * unit},{date},BTCUSDT,{_fmt(r.open)},{_fmt(r.high)},{_fmt(r.low)},{_fmt(r.close)},"
            f"{_fmt(r.volume)},{_fmt(r.volume * r.close)},42"
        )
    path = tmp_path / "Binance_BTCUSDT_1h.csv"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "cryptodatadownload"
    np.testing.assert_array_equal(load_candles(path).to_numpy(), ref.to_numpy())


def test_kaggle_bitstamp_minutes_without_trades_become_gaps(tmp_path):
    ref = random_candles(500, seed=52, start_ms=1_325_412_060_000, step_ms=MINUTE)
    for col in ("open", "high", "low", "close", "volume"):
        ref[col] = ref[col].round(8)
    quiet = {17, 18, 19, 250}
    lines = ["Timestamp,Open,High,Low,Close,Volume_(BTC),Volume_(Currency),Weighted_Price"]
    for i, r in enumerate(ref.itertuples(index=False)):
        if i in quiet:
            lines.append(f"{r.timestamp // 1000},NaN,NaN,NaN,NaN,NaN,NaN,NaN")
        else:
            lines.append(f"{r.timestamp // 1000},{r.open!r},{r.high!r},{r.low!r},{r.close!r},{r.volume!r},{r.volume * r.close!r},{r.close!r}")
    path = tmp_path / "bitstampUSD_1-min_data.csv"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "bitstamp"
    got = load_candles(path)
    expected = ref.drop(index=sorted(quiet)).reset_index(drop=True)
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())
    gaps = find_gaps(got["timestamp"], MINUTE)
    assert [(g.start, g.missing) for g in gaps.gaps] == [(int(ref["timestamp"].iat[17]), 3), (int(ref["timestamp"].iat[250]), 1)]


def test_public_format_errors_are_one_line(tmp_path):
    path = tmp_path / "cdd.csv"
    path.write_text("https://www.CryptoDataDownload.com\nUnix,Date,Symbol,Open,High,Close,Volume BTC\n1,2,3,4,5,6,7\n")
    with pytest.raises(DataError, match=r"missing column\(s\) low"):
        load_candles(path)
    with pytest.raises(DataError, match="unknown candle file format"):
        load_candles(path, format="kraken")
