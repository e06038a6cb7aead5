"""How fast this machine can go at most: its measured peak, each case's FLOP count, and the floor (the case's
FLOPs at that peak), which no correct implementation can beat.

On a CPU the peak is that of fp32 fused multiply-adds: a loop of independent FMA chains on values held in
vector registers (no memory traffic, the widest vectors the compiler targets for this CPU: `cc -O2
-march=native`), compiled once per run and called through ctypes; its rate is FLOPs per second of the calling
thread's CPU time (time.thread_time_ns), the best of several runs, so a machine busy with other work cannot
make it read low. A row on N threads is held to N times that peak. Where no C compiler is found it falls back
to the best rate of a large 1-thread oneDNN matmul (torch._C._nn.mkldnn_linear), said so in the header: a
practical peak, not the hardware's.

On a GPU the peak is the median rate of a large square matmul in the case's dtype (cuBLAS)."""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from fastrnn import cells

from .cases import Case

_FMA_SOURCE = r"""
#if defined(__AVX512F__)
#define BYTES 64
#elif defined(__AVX__)
#define BYTES 32
#else
#define BYTES 16
#endif
#define CHAINS 16  /* independent chains: enough to hide the FMA latency on every pipe */
typedef float vf __attribute__((vector_size(BYTES)));
int flops_per_iteration(void) { return 2 * (BYTES / 4) * CHAINS; }
int vector_bits(void) { return BYTES * 8; }
float fma_loop(long iterations) {
    vf acc[CHAINS], m, c;
    for (int l = 0; l < BYTES / 4; ++l) { m[l] = 0.999999f; c[l] = 1e-6f; }
    for (int k = 0; k < CHAINS; ++k) for (int l = 0; l < BYTES / 4; ++l) acc[k][l] = (float)(k + l);
    /* m and c in registers: without this GCC reads m from the stack in every FMA, which measured 15% low */
#if defined(__x86_64__) || defined(__i386__)
    __asm__("" : "+v"(m), "+v"(c));
#elif defined(__aarch64__)
    __asm__("" : "+w"(m), "+w"(c));
#endif
    for (long i = 0; i < iterations; ++i) {
#pragma GCC unroll 16
        for (int k = 0; k < CHAINS; ++k) acc[k] = acc[k] * m + c;
    }
    float sum = 0;  /* returned, so the loop cannot be dropped */
    for (int k = 0; k < CHAINS; ++k) for (int l = 0; l < BYTES / 4; ++l) sum += acc[k][l];
    return sum;
}
"""

REPEATS = 10  # the best of these runs is the peak
RUN_SECONDS = 0.02  # CPU time per run


@dataclasses.dataclass
class Peak:
    gflops: float  # per thread on a CPU; of the whole device on a GPU
    per_thread: bool  # CPU: a row on N threads is held to N x gflops
    source: str  # what was measured, for the header

    def row_gflops(self, threads: int) -> float:
        return self.gflops * (threads if self.per_thread else 1)

    def header(self, dtype: str, threads: int) -> str:
        if self.per_thread:
            return (f"peak ({dtype} rows): {self.gflops:.1f} GFLOP/s per thread ({self.source}); "
                    f"this run's {threads}-thread rows are held to {self.row_gflops(threads):.1f} GFLOP/s")
        return f"peak ({dtype} rows): {self.gflops / 1e3:.1f} TFLOP/s ({self.source})"


def case_flops(case: Case, mode: str, tokens: int | None = None) -> float:
    """Matmul FLOPs, input projection included: per layer-direction 2*G*(I_l + H) per token (G = 4H for an
    LSTM, 3H for a GRU, H for an Elman RNN; a decoder loop of cell calls counts as one layer), over `tokens` tokens (default B*T; a packed batch has only its real tokens); a
    training step (forward, backward to input and weights) is 3x the forward."""
    gates = cells.cell(case.mode).gates * case.hidden
    tokens = case.batch * case.seq_len if tokens is None else tokens
    total = 0.0
    for layer in range(case.layers):
        layer_input = case.input_size if layer == 0 else case.hidden * case.directions
        total += case.directions * 2.0 * tokens * gates * (layer_input + case.hidden)
    return total * (3 if mode == "train" else 1)


def floor_ms(flops: float, peak: Peak | None, threads: int) -> float | None:
    """The case's FLOPs at the peak: no implementation computes them faster."""
    return None if peak is None else flops / (peak.row_gflops(threads) * 1e9) * 1e3


NO_PEAK = "16-bit dtypes on a CPU: their dot-product instructions are not measured; no floor, no % of peak"


def measure_peak(device: torch.device, dtype: torch.dtype) -> Peak | None:
    """None where no peak is measured: 16-bit dtypes on a CPU, whose dot-product instructions (AVX512_BF16,
    AMX) outrun fp32 FMAs by a factor this bench does not measure."""
    if device.type == "cuda":
        return _gpu_matmul_peak(device, dtype)
    if dtype in (torch.float16, torch.bfloat16):
        return None
    return cpu_fma_peak() or _cpu_matmul_peak()


_CPU_PEAK: Peak | None = None


def cpu_fma_peak() -> Peak | None:
    """The fp32 FMA peak of one thread (measured once per process), or None when no C compiler builds the loop."""
    global _CPU_PEAK
    if _CPU_PEAK is None:
        library = _build_fma_loop()
        if library is None:
            return None
        flops = library.flops_per_iteration()
        iterations, best = 1 << 16, 0.0
        while True:  # size one run to about RUN_SECONDS of CPU time
            start = time.thread_time_ns()
            library.fma_loop(iterations)
            spent = time.thread_time_ns() - start
            if spent >= RUN_SECONDS * 1e9 / 4:
                break
            iterations *= 4
        iterations = int(iterations * RUN_SECONDS * 1e9 / max(spent, 1))
        for _ in range(REPEATS):
            start = time.thread_time_ns()
            library.fma_loop(iterations)
            spent = time.thread_time_ns() - start
            best = max(best, flops * iterations / max(spent, 1))  # FLOP per ns = GFLOP/s
        _CPU_PEAK = Peak(best, True, f"best of {REPEATS} runs of a register-only loop of {library.vector_bits()}-bit "
                                     f"fp32 FMAs per second of thread CPU time")
    return _CPU_PEAK


def _build_fma_loop():
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="bench-fma-"))
    (directory / "fma.c").write_text(_FMA_SOURCE)
    for arch in ("-march=native", "-mcpu=native"):
        try:
            built = subprocess.run([compiler, "-O2", arch, "-ffp-contract=fast", "-shared", "-fPIC", "fma.c", "-o", "fma.so"],
                                   cwd=directory, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        if built.returncode == 0:
            library = ctypes.CDLL(str(directory / "fma.so"))
            library.fma_loop.restype, library.fma_loop.argtypes = ctypes.c_float, [ctypes.c_long]
            return library
    return None


def _cpu_matmul_peak() -> Peak:
    size = 1024
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(size, size).to_mkldnn()
        w = torch.randn(size, size).to_mkldnn()
        torch._C._nn.mkldnn_linear(a, w, None)  # warm-up
        best = 0.0
        for _ in range(REPEATS):
            start = time.thread_time_ns()
            torch._C._nn.mkldnn_linear(a, w, None)
            best = max(best, 2 * size**3 / max(time.thread_time_ns() - start, 1))
    finally:
        torch.set_num_threads(threads)
    return Peak(best, True, f"best of {REPEATS} 1-thread {size}^3 fp32 oneDNN matmuls per second of thread CPU time "
                            "(no C compiler for the FMA loop: a practical peak, not the hardware's)")


def _gpu_matmul_peak(device: torch.device, dtype: torch.dtype) -> Peak:
    from .measure import time_fn

    size = 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms = time_fn(lambda: a @ b, device, 0.2).median_ms
    return Peak(2 * size**3 / (ms * 1e6), False, f"median rate of a {size}^3 matmul in this dtype (cuBLAS)")
