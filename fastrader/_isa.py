"""Pick the build of each Cython module that this CPU runs fastest.

setup.py compiles every feature module twice: ``<name>`` for the x86-64
baseline and ``<name>_avx2`` with the x86-64-v3 flags (AVX2, FMA). The
package's ``__init__`` calls :func:`use_variants` before importing them, which
makes ``<name>`` refer to the ``_avx2`` build on CPUs that have AVX2 and FMA,
so every ``from fastrader.features._engine import ...`` gets the fast copy.
The FMA build also rounds its fused multiply-adds the way TA-Lib's own FMA
build does on such CPUs (see fastrader/features/_common.pxd).

``FASTRADER_CPU_ISA=base`` forces the baseline builds (and the attention
extension's baseline kernels), for testing every path on one machine.
A native build (``FASTRADER_NATIVE=1``) has no variants: the one module is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

SUFFIX = "_avx2"
_chosen: dict[str, str] = {}


def cpu_level() -> str:
    """'avx512', 'avx2' or 'base': what this CPU and OS support."""
    try:
        from fastrader import _cpu
    except ImportError:  # not built (a checkout before `make install`)
        return "base"
    if _cpu.has_avx512():
        return "avx512"
    return "avx2" if _cpu.has_avx2_fma() else "base"


def _wanted() -> bool:
    return os.environ.get("FASTRADER_CPU_ISA", "") != "base" and cpu_level() != "base"


def use_variants(package: str, names: tuple[str, ...]) -> None:
    """Alias ``package.name`` to ``package.name_avx2`` where that build exists
    and this CPU runs it. A variant that exists but fails to import raises:
    no silent fallback to the slow build."""
    want = _wanted()
    for name in names:
        full = f"{package}.{name}"
        if full in sys.modules:
            continue
        if want and importlib.util.find_spec(full + SUFFIX) is not None:
            sys.modules[full] = importlib.import_module(full + SUFFIX)
            _chosen[full] = full + SUFFIX
        else:
            _chosen[full] = full


def chosen() -> dict[str, str]:
    """Module name -> the build actually imported for it (for doctor)."""
    return dict(_chosen)
