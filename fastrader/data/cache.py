"""On-disk candle cache: per exchange/symbol/timeframe, a compacted base plus append-only segments.

Layout, one directory per key::

    <root>/<exchange>/<SYMBOL>-<tf>/base.parquet            candles from the exchange itself
    <root>/_api/<host>-<port>-<hash>/<exchange>/<SYMBOL>-<tf>/...   candles from an --api-url
    .../seg-000000042.bin                                    one downloaded page each

Candles fetched through ``--api-url`` (a proxy, a mirror, a test server) live
in their own namespace, named from the normalised URL, so they can never be
taken for the exchange's own history.

``base.parquet`` carries in its schema metadata who it belongs to (exchange,
symbol, timeframe, source URL), the ranges known complete (``covered``: every
closed candle in them is in the cache, so a gap inside is a real exchange gap,
not a hole to fetch again), a row count and SHA-256 of the candle values, and
``through``, the last segment folded into it.

A downloaded page is one segment: a small self-describing binary file (a
header with the key, sequence number, rows, the range the page proves and the
SHA-256 of the values, then the columns), written to a temporary name and
renamed into place. That rename is the page's commit point, so writing a page
costs O(page), and a process killed at any moment loses at most the page it
was writing: a half-written segment never carries a segment's name. A helper
thread then fsyncs each segment (and the directory), off the download's
path; after a power cut only the newest segments can be short, and a short
segment at the end of the sequence is read as never written (its range was
not marked complete either, so it is fetched again). A short segment with
later ones after it, or any checksum mismatch, is damage and reported.
At the end of a download the segments are folded into the base when they
hold as many candles as it (or there are more than ``max_segments``): the base
is rewritten (temp file, fsync, rename, directory fsync), then the folded
segments are deleted; a segment at or below ``through`` left by a compaction
that was killed is ignored. Each candle is so rewritten O(1) times on
average, and a page costs the same at the end of a year as at its start.

Anything that cannot be read, lacks the metadata, belongs to another key or
source, or does not match its checksum is reported as corrupt or foreign and
never trusted; the history loader moves it aside and downloads again.

Storage is pluggable: :class:`CandleStore` is the interface the history loader
uses; :class:`ParquetStore` is the default implementation.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from fastrader.data.candles import COLUMNS, candles_digest, empty_candles, validate_candles
from fastrader.errors import CacheError, ConfigError, DataError

FORMAT = "fastrader-candles"
VERSION = 2
_META_KEY = b"fastrader"
_SEGMENT_MAGIC = b"FRSEG\x00\x02\n"
_BASE = "base.parquet"
_SEGMENT_RE = re.compile(r"^seg-(\d{9})\.bin$")
_NAMESPACES = "_api"  # not a ccxt exchange id: those are lowercase letters and digits

Interval = tuple[int, int]


def normalise_api_url(url: str) -> str:
    """The one spelling of an API base URL: lower-case scheme and host, no default port, no trailing '/'."""
    parsed = urlparse(str(url).strip())
    if parsed.scheme.lower() not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--api-url {url!r} must look like http://host:port or https://host/prefix")
    scheme = parsed.scheme.lower()
    host = parsed.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    port = parsed.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parsed.path.rstrip('/')}"


@dataclass(frozen=True)
class CacheKey:
    exchange: str
    symbol: str
    timeframe: str
    source: str = ""  # normalised --api-url the candles came from; "" for the exchange itself

    def filename(self) -> str:
        """The key's directory name."""
        # 'BTC/USDT:USDT' -> 'BTC_USDT-USDT'; only safe characters reach the file system.
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.symbol.replace("/", "_").replace(":", "-"))
        # '1M' (month) and '1m' (minute) must not share a directory on case-insensitive file systems.
        timeframe = self.timeframe[:-1] + "mo" if self.timeframe.endswith("M") else self.timeframe
        return f"{safe}-{timeframe}"

    def namespace(self) -> str:
        """'' for the exchange's own candles, else '_api/<host>-<port>-<hash of the URL>'."""
        return _namespace(self.source)

    def __str__(self) -> str:
        text = f"{self.exchange} {self.symbol} {self.timeframe}"
        return f"{text} via {self.source}" if self.source else text


@functools.lru_cache(maxsize=64)
def _namespace(source: str) -> str:
    if not source:
        return ""
    parsed = urlparse(source)
    readable = re.sub(r"[^A-Za-z0-9.-]", "_", f"{parsed.hostname}-{parsed.port or parsed.scheme}")
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"{_NAMESPACES}/{readable}-{digest}"


def cache_key(exchange: str, symbol: str, timeframe: str, api_url: str | None = None) -> CacheKey:
    """The key candles of ``exchange`` are cached under, in the namespace of ``api_url`` when given."""
    return CacheKey(exchange, symbol, timeframe, normalise_api_url(api_url) if api_url else "")


# A part is the candle columns as arrays ({'timestamp': int64, 'open': float64, ...}): pages
# stay arrays until the whole entry is wanted, so adding one costs no DataFrame.
Part = dict


def as_part(candles) -> Part:
    """Columns of a candle frame, or of a float array (n, 6) in the ccxt column order."""
    if isinstance(candles, pd.DataFrame):
        part = {c: candles[c].to_numpy(dtype=np.int64 if c == "timestamp" else np.float64) for c in COLUMNS}
    else:
        rows = np.asarray(candles, dtype=np.float64).reshape(-1, len(COLUMNS))
        part = {c: rows[:, i] for i, c in enumerate(COLUMNS)}
        part["timestamp"] = part["timestamp"].astype(np.int64)
    ts = part["timestamp"]
    if len(ts) > 1 and not (ts[1:] > ts[:-1]).all():
        # Sorted, one row per timestamp, the last version of a repeated one.
        order = np.argsort(ts, kind="stable")
        ts_sorted = ts[order]
        last = order[np.r_[ts_sorted[1:] != ts_sorted[:-1], True]]
        part = {c: v[last] for c, v in part.items()}
    return part


def _part_rows(part: Part) -> int:
    return len(part["timestamp"])


def _merge_parts(parts: list[Part]) -> pd.DataFrame:
    """One ascending, unique frame from parts in write order (a later part's candle wins)."""
    parts = [p for p in parts if _part_rows(p)]
    if not parts:
        return empty_candles()
    ts = [p["timestamp"] for p in parts]
    columns = {c: np.concatenate([p[c] for p in parts]) if len(parts) > 1 else np.array(parts[0][c]) for c in COLUMNS}
    if any(t[0] <= prev[-1] for prev, t in zip(ts, ts[1:])):
        # Parts that overlap (a hole filled later, a range fetched again): the later version wins.
        all_ts = columns["timestamp"]
        order = np.argsort(all_ts, kind="stable")
        sorted_ts = all_ts[order]
        keep = order[np.r_[sorted_ts[1:] != sorted_ts[:-1], True]]
        columns = {c: v[keep] for c, v in columns.items()}
    return pd.DataFrame(columns, columns=list(COLUMNS))


class CacheEntry:
    """One key's candles and known-complete ranges, held as parts in write order."""

    def __init__(self, key: CacheKey, candles: pd.DataFrame | None = None, covered: list[Interval] | None = None):
        self.key = key
        self.covered: list[Interval] = merge_intervals(covered or [])
        self.parts: list[Part] = [] if candles is None or not len(candles) else [as_part(candles)]
        # Store bookkeeping: rows in the base, the last segment folded into it, live segments and their rows.
        self.base_rows = self.through = self.segment_rows = 0
        self.segments: list[int] = []
        self._merged: pd.DataFrame | None = None

    def __repr__(self) -> str:
        rows = sum(_part_rows(p) for p in self.parts)
        return f"CacheEntry({self.key}, {rows} rows in {len(self.parts)} parts, covered={self.covered})"

    @property
    def candles(self) -> pd.DataFrame:
        """All candles, ascending and unique (merged once per change, not per page)."""
        if self._merged is None:
            self._merged = _merge_parts(self.parts)
            self.parts = [as_part(self._merged)] if len(self._merged) else []
        return self._merged

    def add(self, candles, covered: Interval | None) -> Part | None:
        """Add new candles (a frame or a float array (n, 6); newer versions win) and extend the complete ranges."""
        part = None
        if len(candles):
            part = as_part(candles)
            self.parts.append(part)
            self._merged = None
        if covered is not None and covered[1] > covered[0]:
            self.covered = merge_intervals(self.covered + [covered])
        return part

    def slice(self, since: int, until: int) -> pd.DataFrame:
        candles = self.candles
        ts = candles["timestamp"].to_numpy()
        lo, hi = np.searchsorted(ts, since, side="left"), np.searchsorted(ts, until, side="left")
        return candles.iloc[lo:hi].reset_index(drop=True)


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

    def append(self, entry: CacheEntry, candles: pd.DataFrame, covered: Interval | None) -> None:
        """Add one page to ``entry`` and commit it; O(page), not O(entry)."""

    def write(self, entry: CacheEntry) -> None:
        """Replace the entry atomically with everything it holds."""

    def flush(self, entry: CacheEntry) -> None:
        """Make the pages appended so far durable across a power cut."""

    def compact_if_due(self, entry: CacheEntry) -> bool:
        """Fold segments into the base when the policy says so (after a download)."""

    def lock(self, key: CacheKey) -> contextlib.AbstractContextManager:
        """Exclusive access to one key across processes."""

    def quarantine(self, key: CacheKey) -> Path | None:
        """Move a bad entry out of the way; return where it went."""

    def keys(self) -> list[CacheKey | Path]:
        """Everything stored (paths for entries whose key cannot be read)."""


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
    """A base Parquet file plus page segments under ``root/[<namespace>/]<exchange>/<symbol>-<timeframe>/``.

    ``max_segments`` bounds how many segments wait for compaction;
    ``durable=False`` skips the fsyncs (for throwaway caches, e.g. in tests).
    """

    def __init__(self, root: str | os.PathLike | None = None, *, max_segments: int = 128, durable: bool = True):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_segments = max_segments
        self.durable = durable
        self._sync: _Syncer | None = None
        self._delete: _Syncer | None = None
        self._made: set[Path] = set()  # directories this store created (or found), so a page costs no mkdir

    def path(self, key: CacheKey) -> Path:
        """The key's directory."""
        ns = key.namespace()
        return (self.root / ns if ns else self.root) / key.exchange / key.filename()

    def base_path(self, key: CacheKey) -> Path:
        return self.path(key) / _BASE

    def segment_path(self, key: CacheKey, seq: int) -> Path:
        return self.path(key) / f"seg-{seq:09d}.bin"

    def segment_paths(self, key: CacheKey) -> list[Path]:
        """The key's live segments (not yet folded into the base), oldest first."""
        through = self._base_through(key)
        return [p for seq, p in _segments(self.path(key)) if seq > through]

    def _base_through(self, key: CacheKey) -> int:
        """The last segment the base holds, from its footer alone (0 without a readable base)."""
        base = self.base_path(key)
        if not base.exists():
            return 0
        import pyarrow.parquet as pq

        try:
            return int(json.loads((pq.read_schema(base).metadata or {})[_META_KEY])["through"])
        except Exception:
            return 0  # a bad base is the reader's to report

    def legacy_path(self, key: CacheKey) -> Path:
        """Where fastrader's format 1 kept the key (one Parquet file, no namespaces)."""
        return self.path(key).with_name(key.filename() + ".parquet")

    # -- reading ---------------------------------------------------------------

    def read(self, key: CacheKey) -> CacheEntry | None:
        legacy = self.legacy_path(key)
        if legacy.exists():
            raise CacheError(
                f"cache file {legacy} is in an older fastrader format (1, which could mix candles from "
                "--api-url into the exchange's own); not trusted"
            )
        entry = self.read_dir(self.path(key))
        if entry is not None and entry.key != key:
            raise CacheError(f"cache entry {self.path(key)} belongs to {entry.key}, not {key}")
        return entry

    def read_dir(self, directory: Path) -> CacheEntry | None:
        """Read and check one key's directory; None when it holds nothing; CacheError says what is wrong."""
        if not directory.is_dir():
            return None
        key = None
        covered: list[Interval] = []
        parts: list[Part] = []
        through = base_rows = 0
        base = directory / _BASE
        if base.exists():
            base_frame, meta = self.read_file(base)
            key, through, base_rows = _meta_key(meta), int(meta.get("through", 0)), len(base_frame)
            covered += [(int(s), int(e)) for s, e in meta["covered"]]
            parts.append(as_part(base_frame))
        seqs, seg_rows = [], 0
        torn: Path | None = None
        for seq, path in _segments(directory):
            if seq <= through:
                continue  # folded into the base by a compaction killed before it deleted the segment
            try:
                frame, header = _read_segment(path)
            except _TornSegment as exc:
                # Short: the last pages before a power cut, not yet on disk. Only at the end of
                # the sequence is that what it can be; a short segment before others is damage.
                torn = torn or path
                torn_error = exc
                continue
            if torn is not None:
                raise CacheError(f"cache segment {torn} is corrupt ({torn_error}, and later segments follow it)")
            seg_key = _meta_key(header)
            if header.get("seq") != seq:
                raise CacheError(f"cache segment {path} is corrupt (its header says segment {header.get('seq')})")
            if key is None:
                key = seg_key
            elif seg_key != key:
                raise CacheError(f"cache segment {path} belongs to {seg_key}, not {key}")
            covered += [(int(s), int(e)) for s, e in header["covered"]]
            parts.append(frame)
            seqs.append(seq)
            seg_rows += _part_rows(frame)
        if key is None:
            return None
        entry = CacheEntry(key, covered=covered)
        entry.parts = parts
        entry.base_rows, entry.through, entry.segments, entry.segment_rows = base_rows, through, seqs, seg_rows
        try:
            entry._merged = validate_candles(_merge_parts(parts), source=str(directory))
        except DataError as exc:
            raise CacheError(f"cache entry {directory} is corrupt ({exc})") from None
        entry.parts = [as_part(entry._merged)] if len(entry._merged) else []
        return entry

    def read_file(self, path: Path) -> tuple[pd.DataFrame, dict]:
        """Read and check one base file; CacheError says what is wrong with it."""
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
            _meta_key(meta)
            [(int(s), int(e)) for s, e in meta["covered"]]
        except (ValueError, KeyError, TypeError):
            raise CacheError(f"cache file {path} is foreign (metadata is not fastrader's candle format)") from None
        if meta.get("version") != VERSION:
            raise CacheError(f"cache file {path} has format version {meta.get('version')}, this fastrader reads {VERSION}")
        if table.column_names != list(COLUMNS):
            raise CacheError(f"cache file {path} is corrupt (columns {table.column_names})")
        candles = table.to_pandas()
        if len(candles) != meta.get("rows") or candles_digest(candles) != meta.get("sha256"):
            raise CacheError(f"cache file {path} is corrupt (rows or checksum do not match its metadata)")
        return candles, meta

    # -- writing ---------------------------------------------------------------

    def append(self, entry: CacheEntry, candles: pd.DataFrame, covered: Interval | None) -> None:
        """Add one page and commit it as a segment (O(page): nothing else is read or rewritten)."""
        part = entry.add(candles, covered)
        if part is None and (covered is None or covered[1] <= covered[0]):
            return
        part = part if part is not None else as_part(empty_candles())
        seq = (entry.segments[-1] if entry.segments else entry.through) + 1  # segments are kept in order
        self._mkdir(entry.key)
        header = {
            **_key_meta(entry.key),
            "seq": seq,
            "rows": _part_rows(part),
            "covered": [list(covered)] if covered is not None and covered[1] > covered[0] else [],
        }
        payload = _columns_bytes(part)
        header["sha256"] = hashlib.sha256(payload).hexdigest()
        head = json.dumps(header, separators=(",", ":")).encode()
        path = self.segment_path(entry.key, seq)
        # Written and renamed here, so a killed process loses at most this page; the fsync that
        # makes it survive a power cut too runs on a helper thread, overlapping the next request.
        self._atomic_write(path, [_SEGMENT_MAGIC, struct.pack("<I", len(head)), head, payload], sync_dir=False, sync=False)
        if self.durable:
            self._syncer().submit(path)
        entry.segments.append(seq)
        entry.segment_rows += _part_rows(part)

    def compact_if_due(self, entry: CacheEntry) -> bool:
        """Fold the segments into the base when they hold as many candles as it, or are too many.

        Called once at the end of a download, never per page: a download of n
        candles then costs one rewrite of the entry, and small updates to a
        large entry cost none until they add up to it.
        """
        if entry.segments and (len(entry.segments) > self.max_segments or entry.segment_rows >= entry.base_rows):
            self.write(entry)
            return True
        self._drain()
        return False

    def write(self, entry: CacheEntry) -> None:
        """Fold everything into a new base (the compaction), then drop the folded segments."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._mkdir(entry.key)
        self._drain()
        candles = validate_candles(entry.candles, source=f"candles for {entry.key}")
        through = entry.segments[-1] if entry.segments else entry.through
        meta = {
            **_key_meta(entry.key),
            "covered": [list(c) for c in merge_intervals(entry.covered)],
            "rows": int(len(candles)),
            "sha256": candles_digest(candles),
            "through": through,
        }
        table = pa.Table.from_pandas(candles, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})

        def write_parquet(fh) -> None:
            # No dictionary encoding: prices rarely repeat, and trying it costs 20x the write.
            # Timestamps a timeframe apart delta-encode to almost nothing.
            pq.write_table(table, fh, use_dictionary=False, column_encoding={"timestamp": "DELTA_BINARY_PACKED"})

        self._atomic_write(self.base_path(entry.key), write_parquet, sync_dir=True)
        # The new base is the commit point; the segments it folded (and any a killed
        # compaction left behind) are now garbage, deleted off the caller's path.
        self._remove_folded(entry.key, through)
        entry.through, entry.segments, entry.segment_rows, entry.base_rows = through, [], 0, len(candles)

    compact = write

    def flush(self, entry: CacheEntry) -> None:
        """Wait until every segment written is on disk, with its name (one call per download)."""
        self._drain()

    def settle(self) -> None:
        """Wait for all disk work left to the helper threads (syncs, and deletions of folded segments)."""
        self._drain()
        if self._delete is not None:
            self._delete.drain()

    def _syncer(self) -> "_Syncer":
        if self._sync is None:
            self._sync = _Syncer()
        return self._sync

    def _deleter(self) -> "_Syncer":
        # A queue of its own, so that waiting for the syncs never waits for deletions.
        if self._delete is None:
            self._delete = _Syncer()
        return self._delete

    def _drain(self) -> None:
        if self._sync is not None:
            self._sync.drain()

    def _mkdir(self, key: CacheKey) -> Path:
        directory = self.path(key)
        if directory in self._made:
            return directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create cache directory {directory}: {_short(exc)}") from None
        self._made.add(directory)
        return directory

    def _remove_folded(self, key: CacheKey, through: int) -> None:
        for seq, path in _segments(self.path(key)):
            if seq <= through:
                if self.durable:
                    self._deleter().submit(path, "unlink")
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)

    def _atomic_write(self, path: Path, chunks, *, sync_dir: bool, sync: bool = True) -> None:
        """Write ``chunks`` (bytes, or a function writing to a file object) to ``path`` atomically."""
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                if callable(chunks):
                    chunks(fh)
                else:
                    for chunk in chunks:
                        fh.write(chunk)
                fh.flush()
                if self.durable and sync:
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
        if sync_dir and self.durable:
            _fsync_dir(path.parent)

    @contextlib.contextmanager
    def lock(self, key: CacheKey) -> Iterator[None]:
        """An exclusive lock on one key; also clears what a killed writer left (temp files, folded segments)."""
        path = self.path(key)
        locks = self.root / ".locks"
        name = f"{key.namespace().replace('/', '+')}+{key.exchange}-{key.filename()}.lock".lstrip("+")
        try:
            locks.mkdir(parents=True, exist_ok=True)
            fh = open(locks / name, "a+")
        except OSError as exc:
            raise CacheError(f"cannot use cache directory {path.parent}: {_short(exc)}") from None
        try:
            try:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            except ImportError:  # Windows: no cross-process lock, single writer assumed
                pass
            if path.is_dir():
                for stale in path.glob(".*.tmp"):
                    with contextlib.suppress(OSError):
                        stale.unlink()
                self._collect_folded(key)
            yield
        finally:
            fh.close()

    def _collect_folded(self, key: CacheKey) -> None:
        """Delete segments the base already holds (a process that exited before deleting them)."""
        if self._delete is not None:
            self._delete.drain()
        segments = _segments(self.path(key))
        if not segments:
            return
        through = self._base_through(key)
        for seq, path in segments:
            if seq <= through:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def quarantine(self, key: CacheKey) -> Path | None:
        self.settle()
        self._made.discard(self.path(key))
        moved = None
        for path in (self.legacy_path(key), self.path(key)):
            if not path.exists():
                continue
            target = path.with_name(path.name + ".corrupt")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"{path.name}.corrupt{n}")
            os.replace(path, target)
            moved = target
        return moved

    def keys(self) -> list[CacheKey | Path]:
        found: list[CacheKey | Path] = []
        if not self.root.exists():
            return found
        exchange_dirs = [d for d in sorted(self.root.iterdir()) if d.is_dir() and not d.name.startswith((".", "_"))]
        ns_root = self.root / _NAMESPACES
        if ns_root.is_dir():
            exchange_dirs += [d for ns in sorted(ns_root.iterdir()) if ns.is_dir() for d in sorted(ns.iterdir()) if d.is_dir()]
        for exchange_dir in exchange_dirs:
            for path in sorted(exchange_dir.iterdir()):
                if path.suffix == ".parquet" and path.is_file():
                    found.append(path)  # format 1: reported, not trusted
                elif path.is_dir() and not re.search(r"\.corrupt\d*$", path.name):
                    try:
                        entry = self.read_dir(path)
                    except CacheError:
                        found.append(path)
                        continue
                    if entry is not None:
                        found.append(entry.key)
        return found

    def describe_bad(self, path: Path) -> str:
        """Why ``path`` (from :meth:`keys`) is not trusted."""
        try:
            if path.is_file():
                self.read_file(path)
            else:
                self.read_dir(path)
        except CacheError as exc:
            return str(exc)
        return f"{path} is readable"


class _Syncer:
    """One helper thread for the disk work a download need not wait for, in order.

    It fsyncs written segments (then their directory) and deletes segments
    a compaction has folded into the base. Both wait on the disk, not the
    CPU, and release the GIL, so the download's next request runs meanwhile.
    At most the pages of the last moment wait here to be synced; a power cut
    then leaves them short at worst, and a short segment at the end of the
    sequence is read as not written. A folded segment not yet deleted is
    ignored by readers (its number is at or below the base's ``through``) and
    removed by the next lock of its key; the queue is also drained at exit.
    """

    def __init__(self):
        import atexit
        import queue
        import threading

        self._queue: "queue.Queue[tuple[str, Path]]" = queue.Queue()
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="fastrader-cache-disk", daemon=True).start()
        atexit.register(self._drain_quietly)

    def submit(self, path: Path, action: str = "sync") -> None:
        self._raise_pending()
        self._queue.put((action, path))

    def drain(self) -> None:
        self._queue.join()
        self._raise_pending()

    def _drain_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._queue.join()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise CacheError(f"cannot write cache segment: {_short(error)}")

    def _run(self) -> None:
        while True:
            action, path = self._queue.get()
            try:
                if action == "unlink":
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    continue
                try:
                    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows fsyncs writable fds only
                except FileNotFoundError:
                    continue  # already folded into a base by a compaction (which synced that)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if self._queue.empty():
                    _fsync_dir(path.parent)  # the renames, once per burst
            except OSError as exc:
                self._error = exc
            finally:
                self._queue.task_done()


def _key_meta(key: CacheKey) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "exchange": key.exchange,
        "symbol": key.symbol,
        "timeframe": key.timeframe,
        "source": key.source,
    }


def _meta_key(meta: dict) -> CacheKey:
    return CacheKey(str(meta["exchange"]), str(meta["symbol"]), str(meta["timeframe"]), str(meta.get("source", "")))


def _segments(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _SEGMENT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _columns_bytes(part: Part) -> bytes:
    # Column after column, in the canonical dtypes: the bytes candles_digest hashes.
    return b"".join(np.ascontiguousarray(part[c]).tobytes() for c in COLUMNS)


class _TornSegment(Exception):
    """A segment shorter than its header says (or than a header)."""


def _read_segment(path: Path) -> tuple[Part, dict]:
    """One segment file, checked: magic, header, key fields, length and SHA-256."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CacheError(f"cache segment {path} is unreadable ({_short(exc)})") from None
    n_magic = len(_SEGMENT_MAGIC)
    if len(data) < n_magic + 4 or (data[:n_magic] == _SEGMENT_MAGIC and len(data) < n_magic + 4 + struct.unpack_from("<I", data, n_magic)[0]):
        raise _TornSegment(f"truncated: {len(data)} bytes")
    if data[:n_magic] != _SEGMENT_MAGIC:
        raise CacheError(f"cache segment {path} is foreign or corrupt (not a fastrader segment)")
    try:
        (n_head,) = struct.unpack_from("<I", data, n_magic)
        header = json.loads(data[n_magic + 4 : n_magic + 4 + n_head])
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError("format")
        _meta_key(header)
        rows = int(header["rows"])
        [(int(s), int(e)) for s, e in header["covered"]]
    except (struct.error, ValueError, KeyError, TypeError):
        raise CacheError(f"cache segment {path} is corrupt (unreadable header)") from None
    payload = data[n_magic + 4 + n_head :]
    if len(payload) < rows * 8 * len(COLUMNS):
        raise _TornSegment(f"truncated: {len(payload)} bytes for {rows} candles")
    if len(payload) != rows * 8 * len(COLUMNS):
        raise CacheError(f"cache segment {path} is corrupt ({len(payload)} bytes for {rows} candles)")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CacheError(f"cache segment {path} is corrupt (checksum does not match its header)")
    part = {}
    for i, name in enumerate(COLUMNS):
        chunk = payload[i * rows * 8 : (i + 1) * rows * 8]
        part[name] = np.frombuffer(chunk, dtype=np.int64 if name == "timestamp" else np.float64)
    return part, header


def _fsync_dir(directory: Path) -> None:
    # Makes renames in it durable; not possible (nor needed) on Windows.
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
