"""On-disk candle cache: one Parquet file per exchange/symbol/timeframe.

Each file carries, in its Parquet schema metadata, who it belongs to
(exchange, symbol, timeframe), which time ranges are known complete
(``covered``: every closed candle in them is in the file, so a gap inside is a
real exchange gap, not a hole to fetch again), and a row count and SHA-256 of
the candle values. A file that cannot be read, lacks that metadata, belongs to
another key, or does not match its checksum is reported as corrupt or foreign
and never trusted.

Writes go to a temporary file in the same directory, are fsynced, then renamed
over the old file (and the directory fsynced): a download killed at any point
leaves either the previous complete file or the new one, never a torn one.

Storage is pluggable: :class:`CandleStore` is the interface the history loader
uses; :class:`ParquetStore` is the default implementation.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import pandas as pd

from fastrader.data.candles import COLUMNS, candles_digest, empty_candles, validate_candles
from fastrader.errors import CacheError, DataError

FORMAT = "fastrader-candles"
VERSION = 1
_META_KEY = b"fastrader"

Interval = tuple[int, int]


@dataclass(frozen=True)
class CacheKey:
    exchange: str
    symbol: str
    timeframe: str

    def filename(self) -> str:
        # 'BTC/USDT:USDT' -> 'BTC_USDT-USDT'; only safe characters reach the file system.
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.symbol.replace("/", "_").replace(":", "-"))
        # '1M' (month) and '1m' (minute) must not share a file on case-insensitive file systems.
        timeframe = self.timeframe[:-1] + "mo" if self.timeframe.endswith("M") else self.timeframe
        return f"{safe}-{timeframe}.parquet"

    def __str__(self) -> str:
        return f"{self.exchange} {self.symbol} {self.timeframe}"


@dataclass
class CacheEntry:
    key: CacheKey
    candles: pd.DataFrame = field(default_factory=empty_candles)
    covered: list[Interval] = field(default_factory=list)

    def add(self, candles: pd.DataFrame, covered: Interval | None) -> None:
        """Merge new candles (newer versions win) and extend the known-complete ranges."""
        if len(candles):
            merged = pd.concat([self.candles, candles], ignore_index=True)
            merged = merged.drop_duplicates("timestamp", keep="last").sort_values("timestamp", kind="stable")
            self.candles = merged.reset_index(drop=True)
        if covered is not None and covered[1] > covered[0]:
            self.covered = merge_intervals(self.covered + [covered])

    def slice(self, since: int, until: int) -> pd.DataFrame:
        ts = self.candles["timestamp"].to_numpy()
        lo, hi = np.searchsorted(ts, since, side="left"), np.searchsorted(ts, until, side="left")
        return self.candles.iloc[lo:hi].reset_index(drop=True)


def merge_intervals(intervals: list[Interval]) -> list[Interval]:
    """Sort and join overlapping or touching [start, end) intervals."""
    merged: list[list[int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in intervals if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def missing_intervals(request: Interval, covered: list[Interval]) -> list[Interval]:
    """The parts of [start, end) not inside any covered interval."""
    start, end = request
    missing = []
    cursor = start
    for c_start, c_end in merge_intervals(covered):
        if c_end <= cursor:
            continue
        if c_start >= end:
            break
        if c_start > cursor:
            missing.append((cursor, min(c_start, end)))
        cursor = max(cursor, c_end)
        if cursor >= end:
            break
    if cursor < end:
        missing.append((cursor, end))
    return missing


class CandleStore(Protocol):
    """What the history loader needs from a cache backend."""

    def read(self, key: CacheKey) -> CacheEntry | None:
        """The entry, None when absent; raises CacheError when corrupt or foreign."""

    def write(self, entry: CacheEntry) -> None:
        """Replace the entry atomically."""

    def lock(self, key: CacheKey) -> contextlib.AbstractContextManager:
        """Exclusive access to one key across processes."""

    def quarantine(self, key: CacheKey) -> Path | None:
        """Move a bad entry out of the way; return where it went."""

    def keys(self) -> list[CacheKey | Path]:
        """Everything stored (paths for files whose key cannot be read)."""


def default_cache_dir() -> Path:
    """$FASTRADER_CACHE_DIR, else the user's cache dir (XDG on Linux)/fastrader/candles."""
    env = os.environ.get("FASTRADER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        base = Path(xdg)
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path.home() / ".cache"
    return base / "fastrader" / "candles"


class ParquetStore:
    """Parquet files under ``root/<exchange>/<symbol>-<timeframe>.parquet``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def path(self, key: CacheKey) -> Path:
        return self.root / key.exchange / key.filename()

    # -- reading ---------------------------------------------------------------

    def read(self, key: CacheKey) -> CacheEntry | None:
        path = self.path(key)
        if not path.exists():
            return None
        entry, _ = self.read_file(path)
        if entry.key != key:
            raise CacheError(f"cache file {path} belongs to {entry.key}, not {key}")
        return entry

    def read_file(self, path: Path) -> tuple[CacheEntry, dict]:
        """Read and check one cache file; CacheError says what is wrong with it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CacheError(f"cache file {path} is corrupt (unreadable Parquet: {_short(exc)})") from None
        raw_meta = (table.schema.metadata or {}).get(_META_KEY)
        if raw_meta is None:
            raise CacheError(f"cache file {path} is foreign (no fastrader metadata); move it out of the cache")
        try:
            meta = json.loads(raw_meta)
            if meta.get("format") != FORMAT:
                raise ValueError("format")
            key = CacheKey(meta["exchange"], meta["symbol"], meta["timeframe"])
            covered = [(int(s), int(e)) for s, e in meta["covered"]]
        except (ValueError, KeyError, TypeError):
            raise CacheError(f"cache file {path} is foreign (metadata is not fastrader's candle format)") from None
        if meta.get("version") != VERSION:
            raise CacheError(f"cache file {path} has format version {meta.get('version')}, this fastrader reads {VERSION}")
        if table.column_names != list(COLUMNS):
            raise CacheError(f"cache file {path} is corrupt (columns {table.column_names})")
        candles = table.to_pandas()
        if len(candles) != meta.get("rows") or candles_digest(candles) != meta.get("sha256"):
            raise CacheError(f"cache file {path} is corrupt (rows or checksum do not match its metadata)")
        try:
            candles = validate_candles(candles, source=str(path))
        except DataError as exc:
            raise CacheError(f"cache file {path} is corrupt ({exc})") from None
        return CacheEntry(key=key, candles=candles, covered=merge_intervals(covered)), meta

    # -- writing ---------------------------------------------------------------

    def write(self, entry: CacheEntry) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.path(entry.key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create cache directory {path.parent}: {_short(exc)}") from None
        candles = validate_candles(entry.candles, source=f"candles for {entry.key}")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "exchange": entry.key.exchange,
            "symbol": entry.key.symbol,
            "timeframe": entry.key.timeframe,
            "covered": [list(c) for c in merge_intervals(entry.covered)],
            "rows": int(len(candles)),
            "sha256": candles_digest(candles),
        }
        table = pa.Table.from_pandas(candles, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a cache is not secret
            os.replace(tmp_name, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise CacheError(f"cannot write cache file {path}: {_short(exc)}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(path.parent)

    @contextlib.contextmanager
    def lock(self, key: CacheKey) -> Iterator[None]:
        """An exclusive lock on one key; also clears temp files a killed writer left."""
        path = self.path(key)
        locks = self.root / ".locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
            fh = open(locks / f"{key.exchange}-{path.name}.lock", "a+")
        except OSError as exc:
            raise CacheError(f"cannot use cache directory {path.parent}: {_short(exc)}") from None
        try:
            try:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            except ImportError:  # Windows: no cross-process lock, single writer assumed
                pass
            for stale in path.parent.glob(f".{path.name}.*.tmp") if path.parent.exists() else ():
                with contextlib.suppress(OSError):
                    stale.unlink()
            yield
        finally:
            fh.close()

    def quarantine(self, key: CacheKey) -> Path | None:
        path = self.path(key)
        if not path.exists():
            return None
        target = path.with_name(path.name + ".corrupt")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.corrupt{n}")
        os.replace(path, target)
        return target

    def keys(self) -> list[CacheKey | Path]:
        found: list[CacheKey | Path] = []
        if not self.root.exists():
            return found
        for path in sorted(self.root.glob("*/*.parquet")):
            try:
                entry, _ = self.read_file(path)
                found.append(entry.key)
            except CacheError:
                found.append(path)
        return found


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
