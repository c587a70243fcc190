"""The default build is portable: wide instructions only inside the dispatched paths.

Disassembles the built modules with objdump and attributes every VEX (AVX,
AVX2, FMA) and EVEX (AVX-512) instruction to its function. In fastrader._C
only the kernels in namespace fastrader::cpu::avx2 / ::avx512 may use VEX,
and only ::avx512 may use EVEX; the baseline Cython modules use neither and
their _avx2 builds no EVEX. Anything else would crash with an illegal
instruction on a CPU the dispatch considers able to run it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from fastrader.attention import available

pytestmark = pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")

_FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_INSN = re.compile(r"^\s+[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(\S.*)$")  # continuation lines have no mnemonic
_EVEX_REG = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2[0-9]|3[01])\b")


def wide_functions(path: Path) -> dict[str, set[str]]:
    """Demangled function name -> {'vex', 'evex'} for functions that use them."""
    text = subprocess.run(["objdump", "-d", "-C", str(path)], capture_output=True, text=True, check=True).stdout
    found: dict[str, set[str]] = defaultdict(set)
    func = None
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            func = m.group(1)
            continue
        m = _INSN.match(line)
        if not m or func is None:
            continue
        first, insn = m.group(1).split()[0], m.group(2)
        # 64-bit code: 0x62 starts an EVEX prefix, 0xc4/0xc5 a VEX prefix.
        if first == "62" or _EVEX_REG.search(insn):
            found[func].add("evex")
        elif first in ("c4", "c5") or "%ymm" in insn:
            found[func].add("vex")
    return found


def _module_file(name: str) -> Path:
    # By path, not find_spec: fastrader.features aliases its modules to the
    # _avx2 builds in sys.modules, and find_spec would return those.
    import fastrader

    root = Path(fastrader.__file__).resolve().parent.parent
    path = root / (name.replace(".", "/") + importlib.machinery.EXTENSION_SUFFIXES[0])
    if not path.is_file():
        pytest.skip(f"{name} not built ({path} missing)")
    return path


def _module_file_exists(name: str) -> bool:
    import fastrader

    root = Path(fastrader.__file__).resolve().parent.parent
    return (root / (name.replace(".", "/") + importlib.machinery.EXTENSION_SUFFIXES[0])).is_file()


def test_self_check_sees_avx512_in_the_avx512_kernels():
    # The scanner must find what is there, or the tests below prove nothing.
    if not available():
        pytest.skip("fastrader._C not built")
    funcs = wide_functions(_module_file("fastrader._C"))
    assert any("evex" in k and "fastrader::cpu::avx512::" in f for f, k in funcs.items())
    assert any("vex" in k and "fastrader::cpu::avx2::" in f for f, k in funcs.items())


def test_decode_kernels_are_in_the_dispatched_paths():
    # sparse_attn_decode / decode_step (per-bar streaming) run per ISA like the
    # forward: their vector code sits in the avx2 and avx512 copies.
    if not available():
        pytest.skip("fastrader._C not built")
    from fastrader import _C

    if _C.build_info()["native"]:
        pytest.skip("a FASTRADER_NATIVE=1 build has no per-ISA copies")
    funcs = wide_functions(_module_file("fastrader._C"))
    for isa in ("avx2", "avx512"):
        ns = f"fastrader::cpu::{isa}::"
        for kernel in ("decode_impl<float>", "decode_step_impl"):
            assert any(ns in f and kernel in f for f, k in funcs.items() if k), f"no {isa} vector code in {kernel}"


def test_extension_has_wide_instructions_only_in_dispatched_kernels():
    if not available():
        pytest.skip("fastrader._C not built")
    from fastrader import _C

    if _C.build_info()["native"]:
        pytest.skip("a FASTRADER_NATIVE=1 build is -march=native everywhere by design")
    funcs = wide_functions(_module_file("fastrader._C"))
    bad_evex = sorted(f for f, k in funcs.items() if "evex" in k and "fastrader::cpu::avx512::" not in f)
    bad_vex = sorted(
        f for f, k in funcs.items()
        if k and "fastrader::cpu::avx512::" not in f and "fastrader::cpu::avx2::" not in f
    )
    assert not bad_evex, f"AVX-512 outside fastrader::cpu::avx512: {bad_evex[:5]}"
    assert not bad_vex, f"AVX outside the dispatched kernels: {bad_vex[:5]}"


@pytest.mark.parametrize("name", ["fastrader.features._engine", "fastrader.features._kernels", "fastrader._cpu"])
def test_baseline_cython_modules_are_plain_x86_64(name):
    funcs = wide_functions(_module_file(name))
    wide = sorted(f for f, k in funcs.items() if k)
    if wide and not _module_file_exists("fastrader.features._engine_avx2"):
        pytest.skip("a native build (no _avx2 variants)")
    assert not wide, f"{name}: AVX/AVX-512 in the baseline build: {wide[:5]}"


@pytest.mark.parametrize("name", ["fastrader.features._engine_avx2", "fastrader.features._kernels_avx2"])
def test_avx2_cython_modules_have_no_avx512(name):
    funcs = wide_functions(_module_file(name))
    assert any("vex" in k for k in funcs.values()), "the _avx2 build should use AVX2/FMA"
    evex = sorted(f for f, k in funcs.items() if "evex" in k)
    assert not evex, f"{name}: AVX-512 in the AVX2 build: {evex[:5]}"
