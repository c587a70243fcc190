"""Every ready strategy in strategies/ resolves by name and runs; streaming equals precomputed."""

from __future__ import annotations

import json

import pytest

from fastrader.errors import ConfigError
from fastrader.pipeline import RunConfig, run
from fastrader.registry import REPO_STRATEGIES, available, resolve_strategy
from fastrader.testing.candles import random_candles

NAMES = sorted(p.stem for p in REPO_STRATEGIES.glob("*.py"))


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("strat") / "bars.csv"
    random_candles(900, seed=5).to_csv(p, index=False)
    return p


def test_strategies_folder_is_listed():
    assert NAMES, "strategies/ has no strategy files"
    assert set(NAMES) <= set(available())


@pytest.mark.parametrize("name", NAMES)
def test_ready_strategy_runs(name, csv, tmp_path):
    out = run(RunConfig(data=str(csv), strategy=name, out=str(tmp_path), tearsheet=False, progress=False, threshold=0.2))
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["bars"] == 900 and out.metrics["bars"] == 900


def test_stream_flag_gives_the_same_backtest(csv, tmp_path):
    a = run(RunConfig(data=str(csv), out=str(tmp_path / "a"), tearsheet=False, progress=False, threshold=0.2))
    b = run(RunConfig(data=str(csv), out=str(tmp_path / "b"), tearsheet=False, progress=False, threshold=0.2, stream=True))
    assert a.metrics["n_trades"] > 0
    for k in ("total_return", "sharpe", "max_drawdown", "n_trades"):
        assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-9), k


def test_module_class_and_file_class_syntax(tmp_path):
    assert resolve_strategy("fastrader.strategy:LongOnlyModelStrategy").__name__ == "LongOnlyModelStrategy"
    f = tmp_path / "mine.py"
    f.write_text("from fastrader.strategy import ModelStrategy\n\nclass Mine(ModelStrategy):\n    pass\n")
    assert resolve_strategy(f"{f}:Mine").__name__ == "Mine"
    with pytest.raises(ConfigError, match="no class"):
        resolve_strategy(f"{f}:Other")
    bad = tmp_path / "broken.py"
    bad.write_text("raise ValueError('oops')\n")
    with pytest.raises(ConfigError, match="failed to import"):
        resolve_strategy(f"{bad}:X")


def test_example_strategy_and_config_run(csv, tmp_path):
    """The examples/ folder stays runnable: its strategy class and its TOML config."""
    from fastrader.run import config_from_args

    repo = REPO_STRATEGIES.parent
    out = run(RunConfig(data=str(csv), strategy=f"{repo / 'examples' / 'custom_strategy.py'}:CalmLong",
                        out=str(tmp_path / "ex"), tearsheet=False, progress=False))
    assert out.metrics["bars"] == 900
    cfg = config_from_args(["--config", str(repo / "examples" / "run.toml"), "--data", str(csv)])
    assert cfg.strategy == "vol_scaled" and cfg.cash == 25000
