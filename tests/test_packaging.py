"""Package metadata, the sdist's contents and the `fastrader` command.

The wheel itself is installed and run outside the checkout by
tests/wheel_check.py (`make wheel-check`, a step of .ci/run).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import fastrader
from fastrader import cli
from fastrader.attention import available

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def fastrader_cmd(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fastrader", *args], capture_output=True, text=True, **kw)


def test_py_typed_ships():
    assert (Path(fastrader.__file__).parent / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["fastrader"]


def test_classifiers_name_the_tested_pythons():
    cls = PYPROJECT["project"]["classifiers"]
    for v in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {v}" in cls


def test_floors_hold_here_and_pyarrow_excludes_the_vulnerable_release():
    reqs = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    # CVE-2023-47248: pyarrow 14.0.0 runs code from untrusted Parquet files.
    assert not reqs["pyarrow"].specifier.contains("14.0.0")
    assert reqs["pyarrow"].specifier.contains("14.0.1")
    for name in ("numpy", "pandas", "torch", "quantstats", "pyarrow", "backtrader", "ccxt", "safetensors", "tqdm"):
        installed = Version(md.version(name))
        assert reqs[name].specifier.contains(installed, prereleases=True), (name, str(installed), str(reqs[name]))


def test_floors_file_pins_exactly_the_declared_floors():
    # `make test-floors` runs the suite on .ci/floors.txt: every `>=` bound in
    # pyproject.toml is a version that run installs, so no floor is untested.
    reqs = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = Version(version.strip())
    lower = {
        name: Version(s.version) for name, r in reqs.items() for s in r.specifier if s.operator == ">="
    }
    assert set(pins) == set(lower), (sorted(pins), sorted(lower))
    for name, floor in lower.items():
        assert pins[name] == floor, f"{name}: pyproject says >={floor}, floors.txt tests {pins[name]}"


def test_console_script_is_the_cli():
    assert PYPROJECT["project"]["scripts"]["fastrader"] == "fastrader.cli:main"


def test_sdist_has_every_source_the_build_needs(tmp_path):
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "FASTRADER_BUILD": "none"})
    assert r.returncode == 0, r.stderr[-2000:]
    (sdist,) = tmp_path.glob("fastrader-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    needed = [p.relative_to(ROOT).as_posix() for pat in ("ext/csrc/**/*.h", "ext/csrc/**/*.inc", "ext/csrc/**/*.cpp",
              "ext/csrc/**/*.cu", "ext/csrc/**/*.cuh", "fastrader/**/*.pyx", "fastrader/**/*.pxd", "strategies/*.py")
              for p in ROOT.glob(pat)]
    needed += ["data/sample_btcusdt_1h.csv", "setup.py", "pyproject.toml", "MANIFEST.in",
               "fastrader/assets/default_model.safetensors", "fastrader/py.typed"]
    assert len(needed) > 15
    missing = sorted(set(needed) - names)
    assert not missing, missing
    assert not [n for n in names if n.endswith((".so", ".o"))]


_BARE_IMPORT = """
import sys
import fastrader._C as c
assert "torch" not in sys.modules, "fastrader._C imported torch: the test would prove nothing"
info = c.build_info()
import torch  # afterwards: the ops registered by the bare import are torch's, and run
q = torch.randn(1, 2, 8)
k = torch.randn(1, 2, 4, 8)
out = torch.ops.fastrader.sparse_attn_decode(q, k, k, torch.tensor([3]), 4, 1, 0, 8 ** -0.5)
print(info["torch"] == torch.__version__, tuple(out.shape))
"""


@pytest.mark.skipif(not available(), reason="fastrader._C not built")
def test_extension_imports_without_torch_imported_first(tmp_path):
    # The extension links libc10/libtorch_cpu; without the run paths setup.py
    # adds, a bare `import fastrader._C` fails with "libc10.so: cannot open".
    r = subprocess.run([sys.executable, "-c", _BARE_IMPORT], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.split() == ["True", "(1,", "2,", "8)"], r.stdout


def test_version_prints_the_build_facts():
    r = fastrader_cmd("--version")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.startswith(f"fastrader {fastrader.__version__} (Python ")
    if available():
        from fastrader import _C

        info = _C.build_info()
        assert f"built against torch {info['torch']}" in second
        assert f"CPU paths base,avx2,avx512 (using {info['cpu_isa']})" in second
    else:
        assert second.startswith("fastrader._C: NOT LOADED (")


def test_doctor_reports_and_exits_by_health():
    r = fastrader_cmd("doctor")
    assert r.returncode == (0 if available() else 1), r.stdout
    assert "torch" in r.stdout and "features" in r.stdout
    assert r.stdout.rstrip().endswith("status       ok" if available() else "does not load")


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_is_its_module(command):
    r = fastrader_cmd(command, "--help")
    if cli._module_for(command) is None:  # a tool still to come: one clear line, exit 2
        assert r.returncode == 2
        assert r.stderr.splitlines() == [
            f"error: `fastrader {command}` is not available in this version (no module fastrader.{command})"
        ]
        return
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:")
    mod = cli._module_for(command)
    direct = subprocess.run([sys.executable, "-m", mod.removesuffix(".__main__"), "--help"], capture_output=True, text=True)
    assert direct.returncode == 0
    # The same parser answers (the program name aside).
    def norm(text):
        return text.replace(f"python -m {mod.removesuffix('.__main__')}", "PROG").replace(f"fastrader {command}", "PROG")

    assert norm(r.stdout) == norm(direct.stdout)


def test_exit_codes():
    assert fastrader_cmd().returncode == 2  # no command: usage on stdout
    assert fastrader_cmd("--help").returncode == 0
    bad = fastrader_cmd("no-such-command")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown command 'no-such-command'")
    assert fastrader_cmd("run", "--no-such-option").returncode == 2
    # An internal error (a bug) is exit code 1, with the traceback to report.
    code = (
        "import sys, importlib.util, pathlib, tempfile\n"
        "d = pathlib.Path(tempfile.mkdtemp()); (d / 'boom.py').write_text('raise RuntimeError(\"bug\")')\n"
        "spec = importlib.util.spec_from_file_location('fastrader.boom', d / 'boom.py')\n"
        "sys.modules['fastrader.boom'] = importlib.util.module_from_spec(spec)\n"
        "from fastrader.cli import main\n"
        "sys.exit(main(['boom']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1
    assert "RuntimeError: bug" in r.stderr
