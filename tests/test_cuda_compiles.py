"""The CUDA kernels compile for the GPUs they target (sm_80, sm_90) within the resources that keep the
persistent grid co-resident, and stage their GEMM operands with 16-byte asynchronous copies, without
needing a GPU.

nvcc compiles each csrc/cuda/*.cu to a cubin per architecture, with torch's extension flags, ptxas'
resource report (-Xptxas -v) and spills and local memory made errors (--warn-on-spills,
--warn-on-local-memory-usage, -Werror all-warnings). The report is parsed per kernel and printed
(registers, spill stores and loads, stack frame, static shared memory, constant memory) and checked:
no spills, no local memory, and registers that let a CTA of 256 threads (the kernels' launch bound)
be resident, so a persistent grid of one CTA per SM fits (its dynamic shared memory is the plan's,
checked for an H100 in tests/test_cuda_emulated.py::test_anchor_shapes_run_persistent_on_an_h100).
Reports are cached under ~/.cache/fastrnn/ptxas by a hash of the sources, flags and nvcc version.
Also runnable alone: `python tests/test_cuda_compiles.py` prints the table.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fastrnn"))
import _build  # noqa: E402

sys.path.pop(0)

ARCHS = ("sm_80", "sm_90")
THREADS = 256  # kMaxThreads in csrc/cuda/plan.h: every kernel's __launch_bounds__
REGISTERS_PER_SM = 65536
# What torch's CUDAExtension passes to nvcc (setup.py builds the kernels with these).
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]
FLAGS = ["-std=c++17", *_build.NVCC_FLAGS, *TORCH_NVCC_FLAGS, "-Xptxas", "-v,--warn-on-spills,--warn-on-local-memory-usage",
         "-Werror", "all-warnings"]
CACHE = Path(os.environ.get("FASTRNN_PTXAS_CACHE", Path.home() / ".cache" / "fastrnn" / "ptxas"))
# Kernels per .cu: (cell, pass) x (float64/fma, float32/fma, float32/tf32, float16, bfloat16); the cell step's
# forward likewise, its pointwise backward once per storage type.
EXPECTED_KERNELS = {"lstm.cu": 10, "gru.cu": 10, "rnn.cu": 10, "cell_step.cu": 9, "plans.cu": 0}
MATH = {"0": "fma", "1": "tf32", "2": "tensor16"}


def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout


def _compiled(nvcc: str, source: Path, arch: str) -> Path:
    """The cache entry of one source and architecture (entry.txt: ptxas' report, entry.cubin: the code),
    compiled if absent."""
    digest = hashlib.sha256(" ".join(FLAGS).encode() + _nvcc_version(nvcc).encode())
    for path in sorted((ROOT / "csrc" / "cuda").iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update((ROOT / "csrc" / "cell.h").read_bytes())
    entry = CACHE / f"{digest.hexdigest()[:16]}-{arch}-{source.stem}"
    report, cubin = entry.with_suffix(".txt"), entry.with_suffix(".cubin")
    if report.exists() and cubin.exists():
        return entry
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([nvcc, *FLAGS, f"-arch={arch}", "-cubin", "-o", str(cubin), str(source)],
                          capture_output=True, text=True, cwd=source.parent)
    if done.returncode != 0:
        raise AssertionError(f"nvcc -arch={arch} {source.name} failed:\n{done.stdout[-3000:]}{done.stderr[-6000:]}")
    report.write_text(done.stdout + done.stderr)
    return entry


def _report(nvcc: str, source: Path, arch: str) -> str:
    """ptxas' report for one source and architecture (compiling, or from the cache)."""
    return _compiled(nvcc, source, arch).with_suffix(".txt").read_text()


def _demangle(names: list[str]) -> list[str]:
    filt = shutil.which("c++filt")
    if filt is None:
        return names
    return subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()


def parse(report: str) -> list[dict]:
    """One dict per kernel entry: name, registers, spill_stores, spill_loads, stack, smem, cmem."""
    entries = []
    for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", report):
        found = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", block)
        if not found:
            continue
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", block)
        used = re.search(r"Used (\d+) registers", block)
        smem = re.search(r"(\d+) bytes smem", block)
        cmem = re.search(r"(\d+) bytes cmem\[0\]", block)
        entries.append(dict(mangled=found.group(1), arch=found.group(2), registers=int(used.group(1)),
                            stack=int(frame.group(1)), spill_stores=int(frame.group(2)), spill_loads=int(frame.group(3)),
                            smem=int(smem.group(1)) if smem else 0, cmem=int(cmem.group(1)) if cmem else 0))
    for entry, name in zip(entries, _short_names([e["mangled"] for e in entries])):
        entry["name"] = name
    return entries


def _short_names(mangled: list[str]) -> list[str]:
    """Kernel names as `lstm_forward_kernel<__half, tensor16>` (or the demangled name if not a kernel's)."""
    names = []
    for name in _demangle(mangled):
        short = re.search(r"(\w+_kernel)<([^,]+), \(fastrnn::cuda::Math\)(\d)>", name)
        alone = re.search(r"(\w+_kernel)<([^,<>]+)>", name)  # a kernel templated on its storage type only
        names.append(f"{short.group(1)}<{short.group(2)}, {MATH[short.group(3)]}>" if short else
                     f"{alone.group(1)}<{alone.group(2)}>" if alone else name)
    return names


def reports() -> dict[tuple[str, str], list[dict]]:
    nvcc = _build.nvcc()
    sources = [ROOT / path for path in _build.cuda_sources()]
    jobs = [(source, arch) for source in sources for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        texts = list(pool.map(lambda job: _report(nvcc, *job), jobs))
    return {(source.name, arch): parse(text) for (source, arch), text in zip(jobs, texts)}


def table(found: dict) -> str:
    lines = [f"{'kernel':<46} {'arch':<6} {'regs':>4} {'spill st/ld':>11} {'stack':>5} {'smem':>5} {'cmem':>5}"]
    for (source, arch), entries in sorted(found.items()):
        for e in sorted(entries, key=lambda e: e["name"]):
            lines.append(f"{e['name']:<46} {arch:<6} {e['registers']:>4} {e['spill_stores']:>5}/{e['spill_loads']:<5} "
                         f"{e['stack']:>5} {e['smem']:>5} {e['cmem']:>5}")
    return "\n".join(lines)


@pytest.mark.skipif(_build.nvcc() is None, reason="no CUDA toolkit (nvcc) to compile the kernels with")
def test_kernels_compile_for_sm80_and_sm90_without_spills():
    found = reports()
    print("\n" + table(found))
    for (source, arch), entries in found.items():
        assert len(entries) == EXPECTED_KERNELS[source], (source, arch, [e["name"] for e in entries])
        for e in entries:
            what = f"{e['name']} on {arch}"
            assert e["spill_stores"] == 0 and e["spill_loads"] == 0, f"{what} spills registers"
            assert e["stack"] == 0, f"{what} uses {e['stack']} bytes of local memory"
            assert e["registers"] * THREADS <= REGISTERS_PER_SM, f"{what}: {e['registers']} registers x {THREADS} threads"
            assert e["smem"] == 0, f"{what}: static shared memory (every kernel takes its shared memory dynamically)"


def _cuobjdump() -> str | None:
    """cuobjdump from the CUDA toolkit, else the one inside triton's wheel, else None."""
    home = _build.cuda_home()
    if home and os.path.exists(os.path.join(home, "bin", "cuobjdump")):
        return os.path.join(home, "bin", "cuobjdump")
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else shutil.which("cuobjdump")


def sass(cubin: Path) -> dict[str, str]:
    """Each kernel's SASS (cuobjdump -sass), by its name as in the ptxas table."""
    text = subprocess.run([_cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    parts = re.split(r"\n\s*Function : (\S+)\n", text)
    return dict(zip(_short_names(parts[1::2]), parts[2::2]))


# Every kernel with a GEMM stages A (h_{t-1}, [x | h], the gate gradients) through run_phase's copies; the cell
# step's backward is pointwise and stages nothing.
STAGING_KERNELS = {"lstm.cu": 10, "gru.cu": 10, "rnn.cu": 10, "cell_step.cu": 5}


@pytest.mark.skipif(_build.nvcc() is None, reason="no CUDA toolkit (nvcc) to compile the kernels with")
@pytest.mark.skipif(_cuobjdump() is None, reason="no cuobjdump (CUDA toolkit or triton's wheel) to read the SASS with")
def test_every_gemm_kernel_stages_with_16_byte_asynchronous_copies_and_no_full_fence():
    """The A staging compiles to LDGSTS.E.BYPASS.128 (cp.async.cg, 16 bytes, L1 bypassed), waited for with
    DEPBAR: the SASS shows it, so that it cannot fall back to scalar 2-byte loads unnoticed (the per-element
    loop it replaced waited an L2 round trip per element). And no kernel has a MEMBAR.SC."""
    nvcc = _build.nvcc()
    for source, expected in STAGING_KERNELS.items():
        for arch in ARCHS:
            kernels = sass(_compiled(nvcc, ROOT / "csrc" / "cuda" / source, arch).with_suffix(".cubin"))
            staging = {name: code for name, code in kernels.items() if not name.startswith("cell_backward_kernel")}
            assert len(staging) == expected, (source, arch, sorted(kernels))
            for name, code in staging.items():
                assert "LDGSTS.E.BYPASS.128" in code, f"{name} on {arch}: no 16-byte cp.async in its SASS"
                assert "DEPBAR" in code, f"{name} on {arch}: cp.async never waited for (no DEPBAR)"
                # The grid barrier orders memory with its release add and acquire loads alone: a sequentially
                # consistent fence (__threadfence, MEMBAR.SC) on every step's critical path would be redundant.
                assert "MEMBAR.SC" not in code, f"{name} on {arch}: a MEMBAR.SC (a __threadfence) in its SASS"


if __name__ == "__main__":
    print(table(reports()))
