"""``python -m fastrader.run``: backtest a model-driven strategy and write a tearsheet.

With no options it backtests the default model on the embedded synthetic
sample market (out of sample: after the model's training range) and writes
``reports/<run-id>/``. Options may also come from ``--config FILE.toml``
(keys are the long option names, with ``-`` or ``_``); the command line wins.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

from .errors import ConfigError, FastraderError
from .pipeline import RunConfig

EPILOG = """examples:
  python -m fastrader.run                                   # sample data, default model
  python -m fastrader.run --data my_candles.csv --out out/  # your own candles (ccxt layout)
  python -m fastrader.run --exchange binance --symbol BTC/USDT --timeframe 1h \\
      --since 2024-01-01 --until 2025-01-01                 # history through ccxt (cached)
  python -m fastrader.run --strategy model_long_only --threshold 0.8
"""


def build_parser() -> argparse.ArgumentParser:
    d = RunConfig()
    p = argparse.ArgumentParser(
        prog="python -m fastrader.run",
        description="Backtest a model-driven Backtrader strategy and write a QuantStats tearsheet plus "
        "metrics.json, trades.csv, equity.csv and signals.csv.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE.toml", help="read any option below from a TOML file; the command line wins")
    g = p.add_argument_group("data (default: the embedded synthetic sample, data/sample_btcusdt_1h.csv)")
    g.add_argument("--data", metavar="PATH", action="append", help="candles as CSV or Parquet: timestamp (UTC ms), open, "
                   "high, low, close, volume; repeat it (or give a quoted glob) for a portfolio, one file per symbol")
    g.add_argument("--exchange", help="ccxt exchange id (e.g. binance): download history through ccxt, cached on disk")
    g.add_argument("--symbol", help="market symbol(s), comma-separated for a portfolio (BTC/USDT,ETH/USDT): what "
                   "--exchange downloads (default: BTC/USDT); with --data, the files' instruments in their order "
                   "(default: read from the file names, e.g. binance_ETHUSDT_1h.csv is ETH/USDT)")
    g.add_argument("--timeframe", help="bar timeframe: what --exchange downloads (default: 1h); finer candles (a file, "
                   "or --source-timeframe) are resampled to it: bars labelled by open time, complete bars only")
    g.add_argument("--source-timeframe", metavar="TF", help="with --exchange: download (or read from the cache) this "
                   "finer timeframe and resample it to --timeframe, e.g. --source-timeframe 1m --timeframe 1h")
    g.add_argument("--since", help="first candle for --exchange: ISO date or UTC ms")
    g.add_argument("--until", help="end (exclusive) for --exchange: ISO date or UTC ms (default: now)")
    g.add_argument("--api-url", metavar="URL", help="point ccxt's REST API at another base URL (proxy, mirror, test server)")
    g.add_argument("--cache-dir", metavar="DIR", help="candle cache directory (default: the user cache dir)")
    g.add_argument("--on-bad-bars", choices=["error", "drop", "nan"], help="bars with a missing value, a non-positive "
                   "price or open/close outside [low, high]: error (default) names the first; drop removes them; nan "
                   "keeps the priceable ones and blanks their features, restarting the warm-up")
    g = p.add_argument_group("strategy and model")
    g.add_argument("--strategy", help=f"built-in or strategies/ name, or module:Class (default: {d.strategy})")
    g.add_argument("--threshold", type=float, help="signal threshold passed to the strategy (default: the strategy's own)")
    g.add_argument("--param", action="append", metavar="NAME=VALUE", help="set a strategy param (repeatable); the value "
                   "is converted to the type of the param's default; a [params] table in --config does the same")
    g.add_argument("--signals", metavar="FILE", help="CSV/Parquet with timestamp (UTC ms) and signal columns, e.g. from "
                   "`python -m fastrader.walkforward`: replaces the model; its timestamps must match the candles")
    g.add_argument("--stream", action="store_true", default=None, help="compute signals bar by bar inside Backtrader instead of one precomputed causal pass")
    g.add_argument("--model", metavar="PATH", help="model checkpoint (.safetensors from `python -m fastrader.train`; default: the shipped one)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help=f"where the model runs (default: {d.device})")
    g.add_argument("--attention", choices=["auto", "fastrader", "sdpa", "flash"], help=f"attention backend (default: {d.attention})")
    g = p.add_argument_group("broker")
    g.add_argument("--cash", type=float, help=f"starting cash in quote currency (default: {d.cash:g})")
    g.add_argument("--commission", type=float, help=f"commission per trade as a fraction of traded value (default: {d.commission:g} = 0.1%%)")
    g.add_argument("--slippage-bps", type=float, help=f"slippage against the trader, in basis points (default: {d.slippage_bps:g})")
    g.add_argument("--borrow-rate", type=float, help=f"annual rate paid on shorts and on leverage above 1x, through "
                   f"Backtrader's credit interest, charged per day held (default: {d.borrow_rate:g} = {d.borrow_rate * 100:g}%%)")
    g.add_argument("--start", help="first traded bar: ISO date, UTC ms, or auto = after the model's training range "
                   "(plus its target-horizon embargo) whenever the data's time span overlaps it (default: auto); an "
                   "explicit start inside that range runs with an IN-SAMPLE warning")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="write the files directly into DIR instead of reports/<run-id>/")
    g.add_argument("--reports-dir", metavar="DIR", help=f"parent of run folders (default: {d.reports_dir})")
    g.add_argument("--periods-per-year", type=int, choices=[365, 252], help="annualisation: 365 for crypto, 252 for exchange trading days (default: 365)")
    g.add_argument("--no-tearsheet", dest="tearsheet", action="store_false", default=None, help="skip the HTML tearsheet")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    return p


_KEYS = {f.name for f in fields(RunConfig)}
# What each option accepts in a config file (bool is not a number here, although Python says it is).
_TYPES = {
    f.name: {"str": (str,), "float": (float, int), "int": (int,), "bool": (bool,), "dict": (dict,)}[
        f.type.split(" | ")[0] if isinstance(f.type, str) else f.type.__name__
    ]
    for f in fields(RunConfig)
}


def _check_type(where: str, key: str, value):
    want = _TYPES[key]
    if key == "data" and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value  # data = ["btc.csv", "eth.csv"]: a portfolio
    ok = isinstance(value, want) and not (isinstance(value, bool) and bool not in want)
    if not ok:
        names = " or ".join("number" if t is float else {"str": "string", "int": "integer", "bool": "boolean",
                                                          "dict": "table"}[t.__name__] for t in want if t is not int
                            or float not in want)
        article = "an" if names[0] in "aeiou" else "a"
        raise ConfigError(f"{where}: option {key.replace('_', '-')!r} must be {article} {names}, got {value!r}")
    return float(value) if float in want and not isinstance(value, bool) else value


def read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc})") from None
    out = {}
    for k, v in raw.items():
        key = k.replace("-", "_")
        if key not in _KEYS:
            raise ConfigError(f"{p}: unknown option {k!r}")
        out[key] = _check_type(str(p), key, v)
    return out


def config_from_args(argv: list[str] | None) -> RunConfig:
    from .params import parse_assignments

    args = build_parser().parse_args(argv)
    values = read_config_file(args.config) if args.config else {}
    for k, v in vars(args).items():
        if k in ("config", "param") or v is None:
            continue
        if k == "data" and len(v) == 1:
            v = v[0]  # one file: a plain path, as before portfolios
        values[k] = v  # the command line wins over the file
    if args.param:
        values["params"] = {**values.get("params", {}), **parse_assignments(args.param)}
    try:
        return RunConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _fmt_pct(x):
    return "n/a" if x is None or x != x else f"{x * 100:,.2f}%"


def _fmt(x, nd=2):
    return "n/a" if x is None or x != x else f"{x:,.{nd}f}"


def summary_table(m: dict) -> str:
    rows = [
        ("total return", _fmt_pct(m["total_return"])),
        ("CAGR", _fmt_pct(m["cagr"])),
        ("Sharpe", _fmt(m["sharpe"])),
        ("Sortino", _fmt(m["sortino"])),
        ("max drawdown (bar)", _fmt_pct(m["max_drawdown"])),
        ("max drawdown (daily)", _fmt_pct(m["max_drawdown_daily"])),
        ("trades", str(m["n_trades"])),
        ("bars", f"{m['bars']:,}"),
        ("bars/s", _fmt(m["bars_per_s"], 0)),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v:>12}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    from .pipeline import run

    try:
        cfg = config_from_args(argv)
        outcome = run(cfg)
    except FastraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for note in outcome.notes:
        print(note)
    for line in outcome.warnings:
        print(line, file=sys.stderr)
    print(summary_table(outcome.metrics))
    print(f"report: {outcome.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
