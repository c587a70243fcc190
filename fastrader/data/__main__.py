"""``python -m fastrader.data download|info|export``: thin CLI over the data layer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastrader.errors import ConfigError, FastraderError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read options from a TOML file (keys like exchange, symbol, timeframe, since, until, api_url, "
        "cache_dir, at the top level or under [data]); the command line wins",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="candle cache directory (default: $FASTRADER_CACHE_DIR or the user cache dir, e.g. ~/.cache/fastrader/candles)",
    )


def _range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exchange", default="binance", help="ccxt exchange id (default: binance)")
    parser.add_argument(
        "--symbol",
        action="append",
        help="market in ccxt form, e.g. BTC/USDT; repeat or comma-separate for several (required)",
    )
    parser.add_argument("--timeframe", default="1h", help="candle length: 1m, 5m, 15m, 1h, 4h, 1d ... (default: 1h)")
    parser.add_argument(
        "--since", help="first candle open time, UTC: ISO date (2021-01-01, 2021-01-01T00:00Z) or ms (required)"
    )
    parser.add_argument("--until", default=None, help="end of the range, exclusive, same forms as --since (default: now)")


def _network(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        default=None,
        help="REST base URL replacing the exchange's (a proxy, a mirror or a test server), e.g. http://127.0.0.1:8765; "
        "candles fetched through it are cached in a namespace of their own, never as the exchange's",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for one response (default: 10)")
    parser.add_argument("--retries", type=int, default=8, help="retries of a failing request before giving up (default: 8)")
    parser.add_argument(
        "--retry-delay", type=float, default=0.5, help="first back-off in seconds, doubled per retry up to 30 s (default: 0.5)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastrader.data",
        description="Download, cache and inspect historical candles (through ccxt). Times are UTC.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{download,info,export}")

    download = sub.add_parser(
        "download",
        help="download candles into the cache (only what is missing)",
        description="Download candles into the cache, fetching only the ranges not cached yet. "
        "Prints rows, range and gaps per symbol.",
    )
    _range(download)
    _network(download)
    _common(download)

    info = sub.add_parser("info", help="list what is cached", description="List cached candle sets with their ranges, complete ranges and gaps, "
        "grouped by namespace (the exchange's own, then one per --api-url).")
    _common(info)

    export = sub.add_parser(
        "export",
        help="write cached (or downloaded) candles to a CSV/Parquet file",
        description="Write candles for one symbol to a CSV or Parquet file in the ccxt layout, downloading what is missing.",
    )
    _range(export)
    _network(export)
    _common(export)
    export.add_argument("--out", required=True, help="output file (.csv or .parquet)")
    export.add_argument("--fill-gaps", action="store_true", help="fill missing candles with flat bars at the previous close")
    parser.subcommands = {"download": download, "info": info, "export": export}
    return parser


def _symbols(values: list[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _fetch(args, symbol: str, fill: bool = False):
    from fastrader.data.exchange import RetryPolicy
    from fastrader.data.history import fetch_history

    return fetch_history(
        args.exchange,
        symbol,
        args.timeframe,
        args.since,
        args.until,
        cache_dir=args.cache_dir,
        api_url=args.api_url,
        progress=not args.no_progress,
        retry=RetryPolicy(max_retries=args.retries, base_delay=args.retry_delay),
        timeout_ms=int(args.timeout * 1000),
        fill=fill,
    )


def cmd_download(args) -> int:
    for symbol in _symbols(args.symbol):
        result = _fetch(args, symbol)
        print(result.summary())
    return 0


def cmd_export(args) -> int:
    symbols = _symbols(args.symbol)
    if len(symbols) != 1:
        raise FastraderError("export takes exactly one --symbol")
    result = _fetch(args, symbols[0], fill=args.fill_gaps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".parquet", ".pq"):
        result.candles.to_parquet(out, index=False)
    else:
        result.candles.to_csv(out, index=False, float_format="%.17g")
    print(f"{result.summary()}\nwrote {len(result.candles)} candles to {out}")
    return 0


def cmd_info(args) -> int:
    from fastrader.data.cache import CacheKey, ParquetStore
    from fastrader.data.gaps import find_gaps
    from fastrader.data.timeframes import format_ms, timeframe_ms

    store = ParquetStore(args.cache_dir)
    keys = store.keys()
    print(f"cache: {store.root}")
    if not keys:
        print("(empty)")
        return 0
    bad = 0
    # The exchanges' own candles first, then each --api-url namespace under its URL.
    for source in sorted({k.source for k in keys if isinstance(k, CacheKey)}):
        if source:
            namespace = CacheKey("x", "X/Y", "1m", source).namespace()
            print(f"namespace {namespace}: candles fetched via --api-url {source}")
        else:
            print("namespace (default): candles from the exchanges themselves")
        for key in (k for k in keys if isinstance(k, CacheKey) and k.source == source):
            entry = store.read(key)
            candles = entry.candles
            span = (
                f"{format_ms(candles['timestamp'].iat[0])} .. {format_ms(candles['timestamp'].iat[-1])}"
                if len(candles)
                else "no candles"
            )
            covered = ", ".join(f"[{format_ms(s)} .. {format_ms(e)})" for s, e in entry.covered) or "nothing"
            gaps = find_gaps(candles["timestamp"].to_numpy(), timeframe_ms(key.timeframe))
            pending = f"; {len(entry.segments)} segment(s) not yet compacted" if entry.segments else ""
            print(
                f"  {key.exchange} {key.symbol} {key.timeframe}: {len(candles)} candles, {span}; "
                f"complete for {covered}; {gaps.summary(show=3)}{pending}"
            )
    for path in (k for k in keys if not isinstance(k, CacheKey)):
        print(f"  BAD  {store.describe_bad(path)}")
        bad += 1
    return 1 if bad else 0


_CONFIG_KEYS = {
    "exchange", "symbol", "timeframe", "since", "until", "api_url", "cache_dir", "timeout", "retries", "retry_delay",
}


def _read_config(path: str) -> dict:
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("data") if isinstance(data.get("data"), dict) else None
    if section is not None:
        unknown = sorted(set(k.replace("-", "_") for k in section) - _CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"config file {path}: unknown key(s) in [data]: {', '.join(unknown)}")
    else:
        # A file shared with ``fastrader.run``: take the keys that concern data, leave the rest.
        section = {k: v for k, v in data.items() if k.replace("-", "_") in _CONFIG_KEYS}
    return {k.replace("-", "_"): v for k, v in section.items()}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        config = _read_config(args.config)
        # Reparse with the file's values as defaults, so the command line wins.
        sub = parser.subcommands[args.command]
        sub.set_defaults(**{k: v for k, v in config.items() if k != "symbol" and hasattr(args, k)})
        given = parser.parse_args(argv)
        if given.symbol is None and "symbol" in config:
            symbols = config["symbol"]
            given.symbol = [symbols] if isinstance(symbols, str) else [str(s) for s in symbols]
        args = given
    if args.command in ("download", "export"):
        if not args.symbol:
            raise ConfigError("--symbol is required (or 'symbol' in the --config file)")
        if args.since is None:
            raise ConfigError("--since is required (or 'since' in the --config file)")
        for key in ("since", "until"):
            value = getattr(args, key)
            if value is not None and not isinstance(value, str):
                setattr(args, key, str(value) if not hasattr(value, "isoformat") else value.isoformat())
    return args


def main(argv: list[str] | None = None) -> int:
    commands = {"download": cmd_download, "info": cmd_info, "export": cmd_export}
    try:
        args = _parse(argv)
        return commands[args.command](args)
    except FastraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; what was downloaded is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
