"""Build script for fastrader's compiled parts.

Two kinds of extension are built by ``pip install --no-build-isolation .``:

* Cython modules of the feature pipeline: every ``fastrader/**/*.pyx``.
* The torch extension ``fastrader._C`` (the sparse attention op) from
  ``ext/csrc``: every ``.cpp`` there always, every ``.cu`` too when the
  installed torch was built with CUDA and nvcc can be found. New kernel files
  build without edits here (they are globbed).

Portable by default: nothing is compiled with -march=native, so a wheel or a
shared environment runs on any x86-64. Speed comes from runtime dispatch:

* attention kernels: compiled for base / AVX2+FMA / AVX-512 inside the one
  extension and picked on the first call (``ext/csrc/cpu/isa.h``);
* Cython features: each module is also built as ``<name>_avx2`` with the
  x86-64-v3 flags; ``fastrader._isa`` imports that copy on CPUs that have
  AVX2 and FMA (it also rounds like TA-Lib's FMA build on those CPUs).

Environment knobs:
  FASTRADER_BUILD=all|cython|torch   which extensions to build (dev speed-up)
  FASTRADER_NATIVE=1    compile everything with -march=native instead (fastest
                        on the build machine, may crash elsewhere; no variants)
  FASTRADER_CUDA=0|1    force the CUDA kernels off / on
  TORCH_CUDA_ARCH_LIST  CUDA archs; default: those of the GPUs present, else
                        8.0;8.6;8.9;9.0 (A100, consumer Ampere, Ada, H100)

``_C`` is built with ninja when it is installed (``pip install ninja``), so a
rebuild after editing one kernel recompiles only that file.
"""

import glob
import hashlib
import os
import platform
import sys

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.environ.get("FASTRADER_NATIVE", "0") == "1"
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0"
# The x86-64-v3 feature set, spelled out for compilers without -march=x86-64-v3.
AVX2_FLAGS = ["-mavx", "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c", "-mlzcnt", "-mmovbe"]
# Generated files (Cython's C, the build-facts header, the ISA copies of the
# .pyx) per interpreter and environment: two venvs (two Pythons, or numpy 1
# and 2, or two torches) building in one checkout must not share them.
GEN_DIR = os.path.join(
    ROOT, "build", "fastrader_gen",
    f"{sys.implementation.cache_tag}-{hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]}",
)


def _flags_stamp():
    """A file whose content is the build mode: extensions depend on it, so
    switching FASTRADER_NATIVE rebuilds them (setuptools only compares mtimes)."""
    path = os.path.join(GEN_DIR, "build_mode.txt")
    _write_if_changed(path, f"native={int(NATIVE)}\n")
    return os.path.relpath(path, ROOT)


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _isa_variant_source(pyx, suffix):
    """A copy of `pyx` named <module><suffix>.pyx under build/: Cython names the
    module's init function after the file, so a second build of the same
    source under another module name needs its own file."""
    base = os.path.splitext(pyx)[0]
    dst = os.path.join(GEN_DIR, "pyx", base + suffix + ".pyx")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(os.path.join(ROOT, pyx), "rb") as f:
        text = f.read()
    if not os.path.exists(dst) or open(dst, "rb").read() != text:
        with open(dst, "wb") as f:
            f.write(text)
    return os.path.relpath(dst, ROOT)


def cython_extensions():
    from Cython.Build import cythonize

    def ext(name, src, flags):
        return Extension(
            name,
            [src],
            include_dirs=[np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3"] + flags,
            depends=[_flags_stamp()],
        )

    exts = []
    for pyx in _rel(glob.glob(os.path.join(ROOT, "fastrader", "**", "*.pyx"), recursive=True)):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        if NATIVE:
            exts.append(ext(name, pyx, ["-march=native"]))
            continue
        exts.append(ext(name, pyx, []))
        if X86 and name != "fastrader._cpu":  # the CPU probe itself runs anywhere
            exts.append(ext(name + "_avx2", _isa_variant_source(pyx, "_avx2"), AVX2_FLAGS))
    return cythonize(
        exts,
        language_level=3,
        include_path=[ROOT],
        build_dir=os.path.join(GEN_DIR, "cython"),
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


def _want_cuda():
    flag = os.environ.get("FASTRADER_CUDA")
    if flag is not None:
        return flag == "1"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def _cuda_archs():
    """TORCH_CUDA_ARCH_LIST if set, else the archs of the GPUs present, else
    DEFAULT_CUDA_ARCHS (a build box without a GPU builds for the common ones)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    import torch

    try:
        n = torch.cuda.device_count()
    except Exception:  # no driver: build for the documented list
        n = 0
    found = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(n)})
    return ";".join(found) if found else DEFAULT_CUDA_ARCHS


def _sm90a_flags(archs):
    """nvcc flags for Hopper's arch-specific instructions (wgmma, setmaxnreg:
    ext/csrc/cuda/fwd_wgmma_sm90.cu) when 9.0 is among the CUDA archs: torch's
    gencode list with the sm_90 machine code built as sm_90a instead (it runs
    on every compute capability 9.0 device; one cubin for 9.0, so the driver
    has no choice to make between two), plus FASTRADER_SM90A for the host
    dispatch. The other archs' gencodes stay as torch makes them. Giving nvcc
    any arch flag turns torch's own off, hence the whole list here."""
    wanted = {a.strip().split("+")[0] for a in archs.replace(" ", ";").split(";")}
    if not wanted & {"9.0", "9.0a"}:
        return []
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    flags = [f.replace("arch=compute_90,code=sm_90", "arch=compute_90a,code=sm_90a") for f in _get_cuda_arch_flags()]
    return sorted(set(flags)) + ["-DFASTRADER_SM90A=1"]


def _write_if_changed(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path) and open(path).read() == text:
        return  # keep the mtime: ninja would rebuild everything that includes it
    with open(path, "w") as f:
        f.write(text)


def _build_info_header(cuda_archs):
    import torch

    def c_str(s):
        return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'

    _write_if_changed(
        os.path.join(GEN_DIR, "include", "fastrader_build_info.h"),
        "// Generated by setup.py: what this build of fastrader._C was made with.\n"
        "#pragma once\n"
        f"#define FR_BUILD_TORCH {c_str(torch.__version__)}\n"
        f"#define FR_BUILD_CUDA_ARCHS {c_str(cuda_archs)}\n"
        f"#define FR_BUILD_NATIVE {1 if NATIVE else 0}\n",
    )
    return os.path.join(GEN_DIR, "include")


def _torch_rpath():
    """Linker flags that let `import fastrader._C` find libc10/libtorch_cpu by itself.

    torch's extensions record no search path for torch's libraries: they load
    only because `import torch` loaded them first. fastrader._C then fails on a
    bare `import fastrader._C` (libc10.so not found). Two run paths fix that:
    $ORIGIN/../torch/lib for the usual layout (fastrader and torch side by side
    in one site-packages, as a wheel installs them), then the lib folder of the
    torch built against, for an editable install or a venv that reaches torch
    through a .pth. Either way it is the same torch the build checked."""
    if not sys.platform.startswith("linux"):
        return []
    import torch

    lib = os.path.join(os.path.dirname(os.path.abspath(torch.__file__)), "lib")
    return ["-Wl,-rpath,$ORIGIN/../torch/lib", f"-Wl,-rpath,{lib}"]


def torch_extensions():
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    csrc = os.path.join(ROOT, "ext", "csrc")
    sources = _rel(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    if not sources:
        return [], {}
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    macros = []
    if NATIVE:
        cxx.append("-march=native")
        macros.append(("FASTRADER_NATIVE_BUILD", "1"))
    link = ["-fopenmp", *_torch_rpath()]
    cuda = _want_cuda()
    archs = _cuda_archs() if cuda else ""
    include = [csrc, _build_info_header(archs)]
    if cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", *_sm90a_flags(archs)]
        cu = _rel(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
        ext = CUDAExtension(
            "fastrader._C",
            sources + cu,
            include_dirs=include,
            define_macros=macros + [("FASTRADER_WITH_CUDA", "1")],
            depends=[_flags_stamp()],
            extra_compile_args={
                "cxx": cxx,
                "nvcc": nvcc,
            },
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "fastrader._C",
            sources,
            include_dirs=include,
            define_macros=macros,
            depends=[_flags_stamp()],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    # use_ninja: BuildExtension falls back to the plain compiler (with a
    # warning) when the ninja executable is missing.
    base = BuildExtension.with_options(no_python_abi_suffix=False, use_ninja=True)

    class BuildExt(base):
        """Objects in a fixed folder under build/ (per interpreter and venv),
        also for `pip install -e`, which otherwise compiles in a fresh temporary
        folder every time: ninja then recompiles only what changed."""

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(GEN_DIR, "temp")

    return [ext], {"build_ext": BuildExt}


class BuildPyWithAssets(build_py):
    """Puts the sample candles and the example strategies into the package.

    A checkout keeps them at the top (data/, strategies/); a wheel has no top,
    so they travel as fastrader/assets/{sample,strategies}/ (looked up by
    fastrader.pipeline and fastrader.registry, checkout first)."""

    def run(self):
        super().run()
        dst = os.path.join(self.build_lib, "fastrader", "assets")
        for pattern, sub in (("data/sample_*.csv", "sample"), ("strategies/*.py", "strategies")):
            files = glob.glob(os.path.join(ROOT, pattern))
            if not files:
                continue
            os.makedirs(os.path.join(dst, sub), exist_ok=True)
            for f in files:
                self.copy_file(f, os.path.join(dst, sub, os.path.basename(f)))


_which = os.environ.get("FASTRADER_BUILD", "all")
_cy = cython_extensions() if _which in ("all", "cython") else []
_te, _cmdclass = torch_extensions() if _which in ("all", "torch") else ([], {})
setup(ext_modules=_cy + _te, cmdclass={"build_py": BuildPyWithAssets, **_cmdclass})
