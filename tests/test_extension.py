"""The compiled extension loads where it was built, says what it is, and a broken one is loud.

FASTRADER_EXPECT_EXT=1 (set by `make test`, hence CI) means the extension was
built here: then a `fastrader._C` that does not import FAILS the suite instead
of the CPU attention tests quietly skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastrader
from fastrader import _isa
from fastrader.attention import available, load_error_line
from fastrader.testing.candles import random_candles

EXPECTED = os.environ.get("FASTRADER_EXPECT_EXT") == "1"
PKG = Path(fastrader.__file__).resolve().parent


def test_extension_loads_when_expected():
    if not available():
        if EXPECTED:
            pytest.fail(
                "fastrader._C was built for this environment (FASTRADER_EXPECT_EXT=1) but does not load: "
                f"{load_error_line()}; rebuild with `make install` against the torch in use",
                pytrace=False,
            )
        pytest.skip(f"fastrader._C not built here ({load_error_line()}); set FASTRADER_EXPECT_EXT=1 where it is")
    from fastrader import _C

    info = _C.build_info()
    # Built against exactly the torch that runs it (an isolated build pulls another one).
    assert info["torch"] == torch.__version__
    compiled = info["cpu_isa_compiled"].split(",")
    assert compiled == ["base", "avx2", "avx512"]
    # The extension's CPUID probe and the Python-side one agree (unless capped for a test).
    if "FASTRADER_CPU_ISA" not in os.environ:
        assert info["cpu_isa"] == _isa.cpu_level()
    assert info["cuda"] == (torch.ops.fastrader.sparse_attn_fwd.default.has_kernel_for_dispatch_key("CUDA"))


def test_feature_modules_use_the_fastest_build_the_cpu_runs():
    import fastrader.features._engine as eng

    chosen = _isa.chosen()
    assert set(chosen) == {"fastrader.features._engine", "fastrader.features._kernels"}
    variant = importlib_find("fastrader.features._engine_avx2")
    if variant and _isa.cpu_level() != "base" and os.environ.get("FASTRADER_CPU_ISA") != "base":
        assert eng.__name__ == "fastrader.features._engine_avx2"
    else:
        assert eng.__name__ == "fastrader.features._engine"


def importlib_find(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


_PATH_CHECK = """
import os, sys, torch
from fastrader import _C
from fastrader.attention import sparse_attention_with_lse
from fastrader.attention.reference import sparse_attention_reference
assert _C.build_info()["cpu_isa"] == sys.argv[1], (_C.build_info(), sys.argv[1])
# torch's first multi-threaded float64 exp in a fresh process sometimes runs one chunk through a less
# accurate path (3.3e-9 relative, seen with torch 2.13 on 2 threads; later calls are exact): the reference
# below needs float64 exp exact, so warm it up first.
torch.exp(torch.randn(1 << 20, dtype=torch.float64))
g = torch.Generator().manual_seed(5)
for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
    q, k, v = (torch.randn(2, 3, 300, 24, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    out, lse = sparse_attention_with_lse(q, k, v, window=40, dilation=2, sinks=3)
    ref = sparse_attention_reference(q.double(), k.double(), v.double(), window=40, dilation=2, sinks=3)
    ref_out = ref[0] if isinstance(ref, tuple) else ref
    assert (out.double() - ref_out).abs().max() < tol, (dtype, (out.double() - ref_out).abs().max())
    go = torch.randn(out.shape, generator=g, dtype=dtype)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), go)
    rq, rk, rv = torch.autograd.grad(ref_out, (q, k, v), go.double())
    for a, b in ((dq, rq), (dk, rk), (dv, rv)):
        assert (a.double() - b).abs().max() < 20 * tol, (dtype, (a.double() - b).abs().max())
# The decode kernel (dispatched like the forward): one query per sequence
# against a wrapped ring cache, more than 8 keys (the AVX2 block of eight),
# vector (D % 8 == 0) and scalar head sizes, against the float64 reference row.
from fastrader.attention.ops import sparse_attention_decode
W, DIL, SK, N = 21, 2, 2, 131
span = W * DIL
for D in (8, 32, 12):
    qd, kd, vd = (torch.randn(2, 3, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    ref = sparse_attention_reference(qd, kd, vd, window=W, dilation=DIL, sinks=SK)
    ref = ref[0] if isinstance(ref, tuple) else ref
    pos = torch.tensor([N - 1, N - 20])
    kc = torch.zeros(2, 3, SK + span, D, dtype=torch.float64)
    vc = torch.zeros_like(kc)
    for b in range(2):
        for j in range(int(pos[b]) + 1):
            slot = j if j < SK else SK + j % span
            kc[b, :, slot], vc[b, :, slot] = kd[b, :, j], vd[b, :, j]
    qq = torch.stack([qd[b, :, int(pos[b])] for b in range(2)])
    want = torch.stack([ref[b, :, int(pos[b])] for b in range(2)])
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        out = sparse_attention_decode(qq.to(dtype), kc.to(dtype), vc.to(dtype), pos, W, DIL, SK)
        err = (out.double() - want).abs().max()
        assert err < tol, ("decode", D, dtype, err)
print("ok", sys.argv[1])
"""


@pytest.mark.skipif(not available(), reason="fastrader._C not built")
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_dispatched_cpu_path_matches_the_reference(isa):
    if _isa.cpu_level() == "base" and isa != "base" or _isa.cpu_level() == "avx2" and isa == "avx512":
        pytest.skip(f"this CPU cannot run the {isa} path")
    env = {**os.environ, "FASTRADER_CPU_ISA": isa}
    r = subprocess.run([sys.executable, "-c", _PATH_CHECK, isa], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == f"ok {isa}"


# An editable install (this checkout's venv) adds a finder that would still find
# the checkout's _C once the copy's is gone; the copy must stand alone, as a
# wheel install does.
_ALONE = (
    "import sys, runpy; sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, '__name__', '') != "
    "'_EditableFinder']; "
)
_FASTRADER = _ALONE + "sys.argv[0] = 'fastrader'; runpy.run_module('fastrader', run_name='__main__', alter_sys=True)"
_PYTEST = _ALONE + "import pytest; sys.exit(pytest.main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def broken_install(tmp_path_factory):
    """A copy of the installed package whose fastrader._C cannot be imported."""
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(PKG, root / "fastrader", ignore=shutil.ignore_patterns("__pycache__"))
    libs = list((root / "fastrader").glob("_C.*.so"))
    if not libs:
        pytest.skip("no fastrader._C binary to break in this install")
    for lib in libs:
        lib.rename(lib.with_name(lib.name + ".disabled"))
    env = {k: v for k, v in os.environ.items() if k != "FASTRADER_CPU_ISA"}
    env["PYTHONPATH"] = str(root)
    return root, env


def test_broken_extension_run_prints_one_warning_line(broken_install, tmp_path):
    root, env = broken_install
    csv = tmp_path / "candles.csv"
    random_candles(700, seed=3, start_ms=1_700_000_000_000 - 1_700_000_000_000 % 3_600_000).to_csv(csv, index=False)
    r = subprocess.run(
        [sys.executable, "-c", _FASTRADER, "run", "--data", str(csv), "--out", str(tmp_path / "out"),
         "--no-progress", "--no-tearsheet"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("warning: fastrader._C did not load (ImportError: cannot import name '_C'")
    assert "sdpa" in lines[0]
    assert (tmp_path / "out" / "metrics.json").is_file()
    # It ran the copy, not the checkout.
    doctor = subprocess.run([sys.executable, "-c", _FASTRADER, "doctor"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert doctor.returncode == 1
    assert str(root) in doctor.stdout and "fastrader._C: NOT LOADED (ImportError: cannot import name '_C'" in doctor.stdout


def test_broken_extension_fails_the_suite_check(broken_install, tmp_path):
    root, env = broken_install
    shutil.copy(Path(__file__), tmp_path / "test_extension_copy.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**env, "FASTRADER_EXPECT_EXT": "1"}
    r = subprocess.run(
        [sys.executable, "-c", _PYTEST, "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(tmp_path / "test_extension_copy.py") + "::test_extension_loads_when_expected"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert r.returncode == 1, r.stdout
    assert "1 failed" in r.stdout
    assert "fastrader._C was built for this environment (FASTRADER_EXPECT_EXT=1) but does not load" in r.stdout
