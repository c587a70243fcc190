"""Commands print nothing but their own output: no third-party warnings on stderr.

On Python 3.12+ Backtrader's source raises SyntaxWarnings (invalid escape
sequences) whenever it is compiled, i.e. whenever no bytecode is cached:
PYTHONDONTWRITEBYTECODE=1, read-only installs, slim containers. The test
reproduces that with a bytecode-free copy of backtrader first on the path.
Under 3.11 those are DeprecationWarnings (hidden anyway); run the suite with
`make test PYTHON=python3.12` to exercise the 3.12 case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import backtrader
import pytest

from fastrader.testing.candles import random_candles


@pytest.fixture(scope="module")
def fresh_backtrader(tmp_path_factory):
    root = tmp_path_factory.mktemp("bt")
    shutil.copytree(Path(backtrader.__file__).parent, root / "backtrader", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS",)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in sys.path if p])
    return root, env


def test_the_copy_really_compiles_from_source(fresh_backtrader):
    # Control: without fastrader's filter, 3.12+ shows Backtrader's SyntaxWarnings.
    root, env = fresh_backtrader
    r = subprocess.run([sys.executable, "-c", "import backtrader, backtrader.feeds; print(backtrader.__file__)"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(root))
    if sys.version_info >= (3, 12):
        assert "SyntaxWarning" in r.stderr
    assert not list(root.rglob("*.pyc"))


def test_cli_error_path_prints_exactly_one_line(fresh_backtrader, tmp_path):
    root, env = fresh_backtrader
    csv = tmp_path / "candles.csv"
    random_candles(300, seed=2, start_ms=1_700_000_000_000 - 1_700_000_000_000 % 3_600_000).to_csv(csv, index=False)
    r = subprocess.run(
        [sys.executable, "-m", "fastrader", "run", "--data", str(csv), "--no-progress", "--strategy", "no_such_strategy"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: unknown strategy 'no_such_strategy'")


def test_warnings_come_back_when_asked_for(fresh_backtrader):
    # -W / PYTHONWARNINGS switch the third-party filter off: nothing is hidden for good.
    root, env = fresh_backtrader
    code = "import fastrader, warnings, pandas; warnings.warn_explicit('x', UserWarning, 'f.py', 1, module='pandas.core')"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    loud = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, env=env)
    assert quiet.stderr == ""
    assert "UserWarning: x" in loud.stderr
