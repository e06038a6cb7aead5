"""How the compiled kernels are built: their sources and compiler flags, shared by setup.py (ahead of
time) and fastrnn/_ext.py (on first use). Imports nothing from fastrnn, so setup.py can load it alone."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
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
# The architectures the CUDA kernels are built for when TORCH_CUDA_ARCH_LIST does not say.
DEFAULT_CUDA_ARCHS = "8.0;9.0"
# The CUDA kernels compiled by g++ against the SIMT emulator (csrc/emulation/simt.h), for the tests.
EMULATION_FLAGS = ["-O2", "-DFASTRNN_SIMT_EMULATION"]


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


def emulation_sources() -> list[str]:
    """The binding and the CUDA kernels as host C++: the sources of the emulated extension."""
    return _sources("binding.cpp", "emulation/cuda_*.cpp")


@functools.lru_cache(maxsize=None)
def cuda_home() -> str | None:
    """The CUDA toolkit's root: $CUDA_HOME or $CUDA_PATH, else where the nvcc on PATH says it lives (a
    wrapper script on PATH would make torch guess its parent folder), else /usr/local/cuda; None if none."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            return os.environ[variable]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        try:
            dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
            found = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
            if found:
                return os.path.normpath(found.group(1).strip())
        except (OSError, subprocess.SubprocessError):
            pass
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None


def nvcc() -> str | None:
    home = cuda_home()
    path = os.path.join(home, "bin", "nvcc") if home else None
    return path if path and os.path.exists(path) else shutil.which("nvcc")


def cuda_headers() -> list[str] | None:
    """Include folders that give the CUDA headers the emulator compiles as host code (cuda_fp16.h,
    cuda_bf16.h and libcu++'s cuda/atomic), or None when this machine has no CUDA toolkit."""
    home = cuda_home()
    if home is None:
        return None
    include = os.path.join(home, "include")
    if not (os.path.exists(os.path.join(include, "cuda_bf16.h"))
            and os.path.exists(os.path.join(include, "cccl", "cuda", "atomic"))):
        return None
    return [include, os.path.join(include, "cccl")]


def absolute(sources: list[str]) -> list[str]:
    return [os.path.join(ROOT, source) for source in sources]
