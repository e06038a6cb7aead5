"""Loads fastrnn._C, the compiled kernels: the copy `pip install` built, or else one compiled here on
first use with ninja (torch.utils.cpp_extension.load, cached on disk by torch), and says clearly why
when neither can be had. Nothing is compiled until a backend that needs the kernels runs."""

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
    sources = [path for pattern in ("*.h", "*.cpp", "*.cuh", "*.cu") for path in Path(_build.CSRC).rglob(pattern)]
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
