"""Loads fastrnn._C, the compiled kernels: the copy `pip install` built, or else one compiled here on
first use with ninja (torch.utils.cpp_extension.load, cached on disk by torch), and says clearly why
when neither can be had. Nothing is compiled until a backend that needs the kernels runs.

The CUDA kernels are in fastrnn._C when pip built it with nvcc and a CUDA build of torch. Otherwise,
on a machine with a GPU and nvcc, they are compiled on first use into a module of their own
(fastrnn_C_cuda: the binding's CUDA section and csrc/cuda/*.cu); the CPU kernels stay where they are."""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

from . import _build

BUILD_ON_FIRST_USE = "FASTRNN_BUILD_ON_FIRST_USE"  # "0" turns the on-first-use build off


@functools.lru_cache(maxsize=None)
def _prebuilt() -> ModuleType | None:
    try:
        module = importlib.import_module("fastrnn._C")
    except ImportError:
        return None
    _warn_if_older_than_sources(module.__file__)
    return module


def _warn_if_older_than_sources(library: str) -> None:
    """In a source checkout, a library built before the last edit of csrc/ runs old kernels: say so."""
    emulation = Path(_build.CSRC) / "emulation"  # test support, never built into fastrnn._C
    sources = [path for pattern in ("*.h", "*.cpp", "*.cuh", "*.cu") for path in Path(_build.CSRC).rglob(pattern)
               if emulation not in path.parents]
    if sources and max(path.stat().st_mtime for path in sources) > Path(library).stat().st_mtime:
        warnings.warn(f"fastrnn._C ({library}) is older than its sources in {_build.CSRC}: it runs the kernels as "
                      "they were; rebuild it with `python setup.py build_ext --inplace` (or pip install -e .)",
                      stacklevel=3)


def prebuilt() -> bool:
    return _prebuilt() is not None


def build_reason() -> str | None:
    """None when fastrnn._C is installed or can be compiled on first use; else why not (cheap: builds nothing)."""
    if prebuilt():
        return None
    if os.environ.get(BUILD_ON_FIRST_USE, "1") == "0":
        return f"fastrnn._C was not built by pip and {BUILD_ON_FIRST_USE}=0 forbids compiling it on first use"
    if not _build.cpu_sources():
        return ("fastrnn._C was not built by pip and this installation has no csrc/ sources to compile it from; "
                "install from a source checkout: pip install --no-build-isolation -e .")
    return None


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ModuleType | None, str | None]:
    module = _prebuilt()
    if module is not None:
        return module, None
    reason = build_reason()
    if reason is not None:
        return None, reason
    try:
        from torch.utils.cpp_extension import load

        print("fastrnn: compiling the C++ kernels (fastrnn._C) on first use, once; torch caches the build",
              file=sys.stderr, flush=True)
        module = load(name="fastrnn_C", sources=_build.absolute(_build.cpu_sources()),
                      extra_include_paths=[_build.CSRC], extra_cflags=_build.CXX_FLAGS,
                      extra_ldflags=_build.LINK_FLAGS)
    except Exception as error:  # a missing compiler or ninja, a failed build: reported by the backends
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return None, f"compiling fastrnn._C on first use failed ({first_line}); see the build log above"
    return module, None


def extension() -> ModuleType | None:
    """The extension module (compiled now if need be), or None."""
    return _load()[0]


def unavailable_reason() -> str | None:
    """None when the extension can be loaded (compiling it if need be), else why not."""
    return _load()[1]


# --- the CUDA kernels --------------------------------------------------------------------------------


def _has_cuda_kernels(module: ModuleType | None) -> bool:
    return module is not None and hasattr(module, "lstm_forward_cuda")


def cuda_build_reason() -> str | None:
    """None when the CUDA kernels are in fastrnn._C or can be compiled on first use here; else why not.
    Cheap: builds nothing. (Whether a GPU is visible is the backend registry's question.)"""
    import torch

    if _has_cuda_kernels(_prebuilt()):
        return None
    if torch.version.cuda is None:
        return "torch is a CPU-only build (torch.version.cuda is None): install a CUDA build of torch"
    if not _build.cuda_sources():
        return ("fastrnn._C was built without the CUDA kernels and this installation has no csrc/cuda sources to "
                "compile them from; install from a source checkout: pip install --no-build-isolation -e .")
    built = ("fastrnn._C was built without the CUDA kernels" if prebuilt() else
             "fastrnn._C was not built by pip")
    if os.environ.get(BUILD_ON_FIRST_USE, "1") == "0":
        return f"{built} and {BUILD_ON_FIRST_USE}=0 forbids compiling them on first use"
    if _build.nvcc() is None:
        return (f"{built}, and no CUDA toolkit (nvcc) is found to compile them on first use: set CUDA_HOME or put "
                "nvcc on PATH, then reinstall (pip install --no-build-isolation -e .) or just run again")
    return None


@functools.lru_cache(maxsize=None)
def _load_cuda() -> tuple[ModuleType | None, str | None]:
    prebuilt_module = _prebuilt()
    if _has_cuda_kernels(prebuilt_module):
        return prebuilt_module, None
    reason = cuda_build_reason()
    if reason is not None:
        return None, reason
    try:
        from torch.utils import cpp_extension

        home = _build.cuda_home()
        if home is not None and cpp_extension.CUDA_HOME != home:  # torch's guess is wrong when nvcc is a wrapper
            os.environ["CUDA_HOME"] = cpp_extension.CUDA_HOME = home
        print("fastrnn: compiling the CUDA kernels (csrc/cuda) on first use, once; torch caches the build",
              file=sys.stderr, flush=True)
        defines = ["-DFASTRNN_WITH_CUDA", "-DFASTRNN_CUDA_ONLY"]
        module = cpp_extension.load(name="fastrnn_C_cuda",
                                    sources=_build.absolute(["csrc/binding.cpp", *_build.cuda_sources()]),
                                    extra_include_paths=[_build.CSRC], extra_cflags=_build.CXX_FLAGS + defines,
                                    extra_cuda_cflags=_build.NVCC_FLAGS + defines, extra_ldflags=_build.LINK_FLAGS)
    except Exception as error:  # a missing compiler or ninja, a failed build: reported by the backend
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return None, f"compiling the CUDA kernels on first use failed ({first_line}); see the build log above"
    return module, None


def cuda_extension() -> ModuleType | None:
    """The module with the CUDA kernels (fastrnn._C, or compiled now if need be), or None."""
    return _load_cuda()[0]


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA kernels can be loaded (compiling them if need be), else why not."""
    return _load_cuda()[1]
