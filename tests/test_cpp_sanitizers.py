"""The CPU kernels under ThreadSanitizer and AddressSanitizer + UndefinedBehaviorSanitizer: zero reports.

tests/support/cpu_kernels_driver.cpp runs every kernel (forward and backward, float32 and bfloat16,
with and without proj_size, full and ragged lengths, both directions) on two threads, without torch,
and checks the two-thread results equal the one-thread ones bit for bit. It is built with the kernels'
own sources, their threads (csrc/cpu/parallel.cpp, plain threads here: the sanitizers cannot see
into an uninstrumented OpenMP runtime) and their panel cache (csrc/cpu/panel_cache.cpp), once per sanitizer.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fastrnn import _build

DRIVER = Path(__file__).parent / "support" / "cpu_kernels_driver.cpp"
ADDRESS = ["-O0", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
SANITIZERS = {
    "thread": ["-O1", "-fsanitize=thread"],
    "address,undefined": ADDRESS,
    # the bfloat16 kernels' vdpbf16ps GEMMs (pair-packed panels, odd depths): AVX512_BF16 CPUs only
    "address,undefined,pair-products": [*ADDRESS, "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                                        "-mavx512bf16", "-DFASTRNN_BF16_DOT"],
}


def _cpu_flags():
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")


@pytest.mark.parametrize("sanitizer", sorted(SANITIZERS))
def test_kernels_run_clean_under_the_sanitizer(sanitizer, tmp_path):
    if sanitizer.endswith("pair-products") and "avx512_bf16" not in _cpu_flags():
        pytest.skip("this CPU has no AVX512_BF16 to run the pair products on")
    binary = tmp_path / "driver"
    build = subprocess.run(["c++", "-std=c++17", "-g", "-ffp-contract=fast", "-pthread", *SANITIZERS[sanitizer],
                            "-I", _build.CSRC, str(DRIVER),
                            *(str(Path(_build.CSRC) / "cpu" / name) for name in ("parallel.cpp", "panel_cache.cpp")),
                            "-o", str(binary)], capture_output=True, text=True, timeout=900)
    if build.returncode != 0 and "cannot find" in build.stderr and "lib" in build.stderr:
        pytest.skip(f"the {sanitizer} sanitizer's runtime is not installed: {build.stderr.strip()[-300:]}")
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    report = run.stdout + run.stderr
    assert run.returncode == 0 and run.stdout.strip() == "ok", report[-6000:]
    assert "Sanitizer" not in report and "runtime error" not in report, report[-6000:]
