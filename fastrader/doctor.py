"""``fastrader doctor``: what this installation is and whether its compiled parts load.

Prints fastrader's and Python's versions, the torch in use, and for the
attention extension ``fastrader._C`` either its build facts (the torch it was
built against, the CPU instruction-set paths compiled in and the one this CPU
uses, CUDA and its archs) or the import error. Exit code 0 when every compiled
part loads, 1 when one does not.
"""

from __future__ import annotations

import argparse
import platform
import sys

import fastrader


def extension_facts() -> dict:
    """Build facts of fastrader._C, or {'error': '<the import error>'}."""
    from fastrader import attention

    if not attention.available():
        return {"error": attention.load_error_line()}
    from fastrader import _C

    return dict(_C.build_info())


def features_facts() -> dict:
    """Which build of each Cython feature module is in use, or the import error."""
    try:
        import fastrader.features  # noqa: F401  (chooses the builds)
    except ImportError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    from fastrader import _isa

    return {"cpu": _isa.cpu_level(), "modules": _isa.chosen()}


def _torch_version() -> str:
    try:
        import torch
    except ImportError as exc:
        return f"not importable ({exc})"
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ", CPU only"
    return f"{torch.__version__}{cuda}"


def extension_line(facts: dict) -> str:
    if "error" in facts:
        return f"fastrader._C: NOT LOADED ({facts['error']})"
    cuda = f"CUDA archs {facts['cuda_archs']}" if facts.get("cuda") else "no CUDA kernels"
    build = "native (-march=native) build" if facts.get("native") else "portable build"
    return (
        f"fastrader._C: built against torch {facts['torch']}, CPU paths {facts['cpu_isa_compiled']} "
        f"(using {facts['cpu_isa']}), {cuda}, {build}, GCC {facts['compiler']}"
    )


def version_text() -> str:
    """`fastrader --version`: versions and the extension's build facts."""
    return "\n".join(
        [
            f"fastrader {fastrader.__version__} (Python {platform.python_version()}, torch {_torch_version()})",
            extension_line(extension_facts()),
        ]
    )


def report() -> tuple[str, bool]:
    ext = extension_facts()
    feats = features_facts()
    lines = [
        f"fastrader    {fastrader.__version__} at {fastrader.__path__[0]}",
        f"python       {platform.python_version()} ({sys.executable})",
        f"platform     {platform.platform()}",
        f"torch        {_torch_version()}",
        extension_line(ext),
    ]
    if "error" not in ext:
        import torch

        if torch.cuda.is_available():
            caps = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            lines.append(f"GPUs         compute capability {', '.join(caps)}")
    else:
        lines.append("             `--attention auto` falls back to sdpa; rebuild with `make install` (or "
                     "`pip install --no-build-isolation .` against the torch you run)")
    if "error" in feats:
        lines.append(f"features     NOT LOADED ({feats['error']})")
    else:
        used = ", ".join(f"{k.rsplit('.', 1)[-1]} -> {v.rsplit('.', 1)[-1]}" for k, v in feats["modules"].items())
        lines.append(f"features     CPU level {feats['cpu']}; {used}")
    ok = "error" not in ext and "error" not in feats
    lines.append("status       ok" if ok else "status       BROKEN: a compiled part does not load")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="fastrader doctor",
        description="Print what this fastrader installation is: versions, the attention extension's build "
        "(torch it was built against, CPU instruction-set paths, CUDA archs) or its import error, and the "
        "feature modules in use. Exit code 1 when a compiled part does not load.",
    ).parse_args(argv)
    text, ok = report()
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
