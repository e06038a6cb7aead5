"""Builds fastrnn, and its CUDA extension fastrnn._C where that is possible.

The extension is compiled only when torch is importable here as a CUDA build, the CUDA toolkit
(nvcc) is found and csrc/ holds kernel sources; otherwise this says why and installs the pure
Python package, whose `cuda` backend then reports itself unavailable with the reason.
Arch list: TORCH_CUDA_ARCH_LIST (default "8.0;9.0"); parallel jobs: MAX_JOBS.
"""

import glob
import os
import sys

from setuptools import setup


def _say(message: str) -> None:
    print(f"fastrnn setup: {message}", file=sys.stderr)


def cuda_extension_kwargs() -> dict:
    sources = sorted(glob.glob("csrc/*.cu")) + sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        _say("csrc/ has no kernel sources; installing without the CUDA extension")
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable while building (install torch first and use --no-build-isolation); "
             "installing without the CUDA extension")
        return {}
    if torch.version.cuda is None:
        _say(f"torch {torch.__version__} is a CPU build; installing without the CUDA extension")
        return {}
    if CUDA_HOME is None:
        _say("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH); installing without the CUDA extension")
        return {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    _say(f"building fastrnn._C for arch {os.environ['TORCH_CUDA_ARCH_LIST']} with CUDA at {CUDA_HOME}")
    extension = CUDAExtension(
        name="fastrnn._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(**cuda_extension_kwargs())
