"""load_candles / validate_candles: good files round-trip, bad ones fail with one clear line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fastrader.data import COLUMNS, load_candles, validate_candles
from fastrader.errors import DataError
from fastrader.testing import random_candles


def test_csv_round_trip_is_exact(tmp_path):
    df = random_candles(300, seed=1)
    path = tmp_path / "c.csv"
    df.to_csv(path, index=False, float_format="%.17g")
    got = load_candles(path)
    assert list(got.columns) == list(COLUMNS)
    assert got["timestamp"].dtype == np.int64
    assert all(got[c].dtype == np.float64 for c in COLUMNS[1:])
    assert isinstance(got.index, pd.RangeIndex) and got.index[0] == 0
    np.testing.assert_array_equal(got.to_numpy(), df.to_numpy())


def test_headerless_csv_and_parquet_and_extra_columns(tmp_path):
    df = random_candles(50, seed=2)
    df.to_csv(tmp_path / "h.csv", index=False, header=False, float_format="%.17g")
    df.assign(signal=np.arange(50.0), Symbol="X").to_parquet(tmp_path / "p.parquet")
    for got in (load_candles(tmp_path / "h.csv"), load_candles(tmp_path / "p.parquet")):
        assert list(got.columns) == list(COLUMNS)
        np.testing.assert_array_equal(got.to_numpy(), df.to_numpy())


def test_uppercase_names_and_iso_dates_are_read_as_utc(tmp_path):
    df = random_candles(5, seed=3)
    text = df.rename(columns=str.capitalize).assign(
        Timestamp=pd.to_datetime(df["timestamp"], unit="ms").dt.strftime("%Y-%m-%d %H:%M:%S")
    )
    text.to_csv(tmp_path / "iso.csv", index=False, float_format="%.17g")
    got = load_candles(tmp_path / "iso.csv")
    np.testing.assert_array_equal(got["timestamp"].to_numpy(), df["timestamp"].to_numpy())


def _write(tmp_path, df, name="bad.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.csv"):
        load_candles(tmp_path / "nope.csv")


def test_missing_columns_are_named(tmp_path):
    path = _write(tmp_path, random_candles(5).drop(columns=["high", "volume"]))
    with pytest.raises(DataError, match=r"missing column\(s\) high, volume") as err:
        load_candles(path)
    assert "\n" not in str(err.value)


def test_non_numeric_price_names_column_and_line(tmp_path):
    df = random_candles(20, seed=4).astype({"close": object})
    df.loc[7, "close"] = "12,5O"
    path = _write(tmp_path, df)
    # Row 7 of the frame is line 9 of the file (line 1 is the header).
    with pytest.raises(DataError, match=r"non-numeric value '12,5O' in column 'close' at line 9"):
        load_candles(path)
    with pytest.raises(DataError, match=r"column 'close' at row 7"):
        validate_candles(df)


@pytest.mark.parametrize("column", ["open", "low"])
def test_nan_and_non_positive_prices(tmp_path, column):
    df = random_candles(30, seed=5)
    df.loc[11, column] = np.nan
    with pytest.raises(DataError, match=rf"NaN\) value in column '{column}' at line 13"):
        load_candles(_write(tmp_path, df))
    df.loc[11, column] = -1.0
    with pytest.raises(DataError, match=rf"non-positive .* column '{column}' at row 11"):
        validate_candles(df)
    df.loc[11, column] = 0.0
    with pytest.raises(DataError, match=rf"non-positive .* column '{column}' at row 11"):
        validate_candles(df)


def test_out_of_order_and_duplicate_timestamps(tmp_path):
    df = random_candles(40, seed=6)
    swapped = df.copy()
    swapped.loc[[20, 21], "timestamp"] = swapped.loc[[21, 20], "timestamp"].to_numpy()
    with pytest.raises(DataError, match=r"out of order at line 23: "):
        load_candles(_write(tmp_path, swapped))
    dup = df.copy()
    dup.loc[30, "timestamp"] = dup.loc[29, "timestamp"]
    with pytest.raises(DataError, match=rf"duplicated timestamp {dup.loc[29, 'timestamp']} .* at row 29 and row 30"):
        validate_candles(dup)


def test_seconds_instead_of_milliseconds_is_caught():
    df = random_candles(5)
    df["timestamp"] //= 1000
    with pytest.raises(DataError, match="looks like seconds"):
        validate_candles(df, source="mem")


def test_unreadable_parquet_and_empty_csv(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="cannot read as Parquet"):
        load_candles(bad)
    empty = tmp_path / "e.csv"
    empty.write_text("timestamp,open,high,low,close,volume\n")
    with pytest.raises(DataError, match="no rows"):
        load_candles(empty)
