"""Loads the compiled CUDA extension `fastrnn._C`, and says clearly why when it can't."""

from __future__ import annotations

import functools
import importlib


@functools.lru_cache(maxsize=None)
def _load():
    try:
        return importlib.import_module("fastrnn._C"), None
    except ImportError as error:
        return None, (
            f"the CUDA extension fastrnn._C is not built ({error}); it is compiled by "
            "`pip install --no-build-isolation -e .` on a machine with the CUDA toolkit (nvcc) "
            "and a CUDA build of torch"
        )


def extension():
    """The extension module, or None."""
    return _load()[0]


def unavailable_reason() -> str | None:
    """None when the extension is importable, else why not."""
    return _load()[1]
