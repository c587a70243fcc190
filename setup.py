"""Build script for fastrader's compiled parts.

Two kinds of extension are built by ``pip install --no-build-isolation .``:

* Cython modules of the feature pipeline: every ``fastrader/**/*.pyx``.
* The torch extension ``fastrader._C`` (the sparse attention op) from
  ``ext/csrc``: the C++ sources always, the ``.cu`` sources too when the
  installed torch was built with CUDA and nvcc can be found.

Environment knobs:
  FASTRADER_BUILD=all|cython|torch   which extensions to build (dev speed-up)
  FASTRADER_NATIVE=0    build without -march=native (portable binaries)
  FASTRADER_CUDA=0|1    force the CUDA kernels off / on
  TORCH_CUDA_ARCH_LIST  as usual for torch extensions (default here: 9.0)
"""

import glob
import os

import numpy as np
from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.environ.get("FASTRADER_NATIVE", "1") != "0"


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def cython_extensions():
    from Cython.Build import cythonize

    exts = []
    for pyx in _rel(glob.glob(os.path.join(ROOT, "fastrader", "**", "*.pyx"), recursive=True)):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        exts.append(
            Extension(
                name,
                [pyx],
                include_dirs=[np.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"] + (["-march=native"] if NATIVE else []),
            )
        )
    return cythonize(
        exts,
        language_level=3,
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


def torch_extensions():
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = _rel(glob.glob(os.path.join(ROOT, "ext", "csrc", "**", "*.cpp"), recursive=True))
    if not sources:
        return [], {}
    cxx = ["-O3", "-std=c++17", "-fopenmp"] + (["-march=native"] if NATIVE else [])
    include = [os.path.join(ROOT, "ext", "csrc")]
    if _want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        cu = _rel(glob.glob(os.path.join(ROOT, "ext", "csrc", "**", "*.cu"), recursive=True))
        ext = CUDAExtension(
            "fastrader._C",
            sources + cu,
            include_dirs=include,
            define_macros=[("FASTRADER_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx,
                "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"],
            },
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "fastrader._C",
            sources,
            include_dirs=include,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


_which = os.environ.get("FASTRADER_BUILD", "all")
_cy = cython_extensions() if _which in ("all", "cython") else []
_te, _cmdclass = torch_extensions() if _which in ("all", "torch") else ([], {})
setup(ext_modules=_cy + _te, cmdclass=_cmdclass)
