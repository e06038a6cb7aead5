"""How the compiled kernels are built: their sources and compiler flags, shared by setup.py (ahead of
time) and fastrnn/_ext.py (on first use). Imports nothing from fastrnn, so setup.py can load it alone."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = str(ROOT / "csrc")

# -ffp-contract=fast lets the vector code use fused multiply-adds (ISO C++ mode turns contraction off);
# OpenMP provides the one parallel region per layer-direction (csrc/cpu/dispatch.cpp); -g0 drops the
# debug information Python's default flags ask for (it tripled the build time and the library's size);
# -O2 builds the kernels in half the time of -O3 and ran them as fast (the kernels unroll by pragma).
CXX_FLAGS = ["-O2", "-g0", "-ffp-contract=fast", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-lineinfo"]


def _sources(*patterns: str) -> list[str]:
    """Paths relative to the project root (as setup.py needs them) of the files matching the patterns."""
    found = []
    for pattern in patterns:
        found += sorted(str(path.relative_to(ROOT)) for path in (ROOT / "csrc").glob(pattern))
    return found


def cpu_sources() -> list[str]:
    return _sources("binding.cpp", "cpu/*.cpp")


def cuda_sources() -> list[str]:
    return _sources("cuda/*.cu")


def absolute(sources: list[str]) -> list[str]:
    return [os.path.join(ROOT, source) for source in sources]
