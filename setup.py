"""Builds fastrnn and its compiled kernels, the extension fastrnn._C.

fastrnn._C always holds the fused C++ CPU kernels (csrc/cpu/) when torch is importable here and a C++
compiler is found; it also holds the CUDA kernels (csrc/cuda/) when torch is a CUDA build and the CUDA
toolkit (nvcc) is found. Whatever cannot be built is said, and the package installs without it: the
kernels are then compiled on first use (fastrnn/_ext.py), or their backends report why they cannot run.
Arch list: TORCH_CUDA_ARCH_LIST (default "8.0;9.0"); parallel jobs: MAX_JOBS.
"""

import os
import shutil
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastrnn"))
import _build  # noqa: E402  (fastrnn/_build.py: the source lists and flags, shared with the on-first-use build)


def _say(message: str) -> None:
    print(f"fastrnn setup: {message}", file=sys.stderr)


def extension_kwargs() -> dict:
    if _build.cuda_home() and not os.environ.get("CUDA_HOME"):
        # torch guesses the toolkit from nvcc's folder, wrong when nvcc on PATH is a wrapper script.
        os.environ["CUDA_HOME"] = _build.cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable while building (install torch first and use --no-build-isolation); "
             "installing without fastrnn._C (it will be compiled on first use)")
        return {}
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        _say(f"no C++ compiler ({compiler}) found; installing without fastrnn._C")
        return {}
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and bool(_build.cuda_sources())
    if not with_cuda:
        why = ("torch is a CPU build" if torch.version.cuda is None else
               "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)" if CUDA_HOME is None else
               "csrc/ has no CUDA sources")
        _say(f"building fastrnn._C with the CPU kernels only: {why}")
        extension = CppExtension(name="fastrnn._C", sources=_build.cpu_sources(), include_dirs=[_build.CSRC],
                                 extra_compile_args=_build.CXX_FLAGS, extra_link_args=_build.LINK_FLAGS)
    else:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _build.DEFAULT_CUDA_ARCHS)
        _say(f"building fastrnn._C with the CPU and CUDA kernels for arch {os.environ['TORCH_CUDA_ARCH_LIST']} "
             f"(CUDA at {CUDA_HOME})")
        extension = CUDAExtension(name="fastrnn._C", sources=_build.cpu_sources() + _build.cuda_sources(),
                                  include_dirs=[_build.CSRC], define_macros=[("FASTRNN_WITH_CUDA", None)],
                                  extra_compile_args={"cxx": _build.CXX_FLAGS, "nvcc": _build.NVCC_FLAGS},
                                  extra_link_args=_build.LINK_FLAGS)
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(**extension_kwargs())
