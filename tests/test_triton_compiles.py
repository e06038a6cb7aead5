"""The Triton kernels compile for the GPUs they target (sm_90, sm_80), without needing one.

The interpreter (tests/test_triton.py) checks what the kernels compute but never compiles them. This
compiles each kernel ahead of time to a cubin for every dtype, with its optional paths switched on.
The compiles run in one child process (the kernels must be defined without TRITON_INTERPRET, which
conftest sets), spread over a pool of worker processes, one per CPU core; there is one test per
kernel, each passing as soon as its variants are done, so a cold cache (minutes of compiling on a
2-core machine) shows progress. Also runnable alone: `python tests/test_triton_compiles.py [--jobs N]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest

CAPABILITIES = (90, 80)
DTYPES = ("bf16", "fp16", "fp32")
# Every optional path switched on, wherever a kernel has the flag.
FLAGS = dict(HAS_PROJ=True, HAS_BIAS=True, REVERSE=True, RELU=True, SAVE=True)
# The layers' kernels: the default tiles everywhere; the largest tuning candidate's on sm_90 (the shared-memory
# bound that matters). The cell kernels run one fixed tile (backends/triton.py, CELL_BLOCK_*), for each cell
# branch of their MODE (the Elman one with relu, whose code is tanh's but for the activation).
TILES = {90: [(16, 32, 32), (64, 64, 64)], 80: [(16, 32, 32)]}
CELL_TILES = {90: [(16, 32, 32)], 80: [(16, 32, 32)]}
CELL_MODES = ("LSTM", "GRU", "RNN_RELU")
# Buffers that are fp32 (or int32) whatever the data dtype: carried cell state and its gradient, lengths.
FIXED_POINTERS = {"c_ptr": "*fp32", "dc_ptr": "*fp32", "len_ptr": "*i32"}
SIZES = ("T", "t", "B", "I", "H", "R")
# Shared memory a block may use (Triton's launcher opts in past 48 KB): 227 KB on sm_90, 163 KB on sm_80.
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
TIMEOUT_S = 1200  # for all compiles together

HAVE_TRITON = importlib.util.find_spec("triton") is not None


def kernels():
    from fastrnn.triton import cell_step, gru, lstm, rnn

    return {name: getattr(module, name) for module in (lstm, gru, rnn, cell_step) for name in dir(module)
            if name.endswith("_kernel")}


KERNEL_NAMES = sorted(kernels()) if HAVE_TRITON else []


def _is_cell_kernel(name: str) -> bool:
    return name in ("cell_forward_kernel", "cell_backward_kernel")


def variants(names=KERNEL_NAMES):
    """(kernel, dtype, capability, tiles, MODE or None) of every compile."""
    return [(name, dtype, capability, tiles, mode) for name in names for dtype in DTYPES
            for capability in CAPABILITIES for tiles in (CELL_TILES if _is_cell_kernel(name) else TILES)[capability]
            for mode in (CELL_MODES if _is_cell_kernel(name) else (None,))]


def compile_one(variant) -> str:
    """'ok <kernel> ...' or 'FAILED <kernel> ...: why', one line."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, dtype, capability, (block_b, block_h, block_k), mode = variant
    kernel = kernels()[name]
    what = f"{name} {dtype} sm_{capability} tiles={block_b}x{block_h}x{block_k}" + (f" {mode}" if mode else "")
    try:
        constexprs = {p.name for p in kernel.params if p.is_constexpr}
        values = dict(FLAGS, ACC=tl.float32, PRECISION="tf32" if dtype == "fp32" else "ieee",
                      BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, MODE=mode)
        constants = {k: v for k, v in values.items() if k in constexprs}
        assert constants.keys() == constexprs, f"no value for {constexprs - constants.keys()}"
        signature = {arg: "constexpr" if arg in constants else "i32" if arg in SIZES
                     else FIXED_POINTERS.get(arg, f"*{dtype}") for arg in kernel.arg_names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
        start = time.perf_counter()
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
        shared = compiled.metadata.shared
        assert compiled.asm["cubin"], "empty cubin"
        assert shared <= SHARED_LIMIT[capability], f"{shared} B of shared memory is more than sm_{capability} has"
        return f"ok {what} shared={shared} ({time.perf_counter() - start:.1f} s)"
    except Exception as error:  # report every variant, then fail
        return f"FAILED {what}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def compile_all(jobs: int) -> int:
    """Compile every variant on `jobs` worker processes, printing one line per result as it comes."""
    failures = 0
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        for line in pool.map(compile_one, variants()):  # in order: each kernel's lines come together
            print(line, flush=True)
            failures += line.startswith("FAILED")
    return failures


class CompileRun:
    """The child process compiling every variant, and its result lines grouped by kernel as they arrive."""

    def __init__(self):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        # A session of its own, so that stop() can end the child's compile workers along with it.
        self.process = subprocess.Popen([sys.executable, __file__, "--jobs", str(os.cpu_count() or 1)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: dict[str, list[str]] = defaultdict(list)
        self.other: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.deadline = time.monotonic() + TIMEOUT_S

    def _read(self):
        for line in self.process.stdout:
            words = line.split()
            with self.changed:
                if len(words) > 1 and words[0] in ("ok", "FAILED") and words[1] in KERNEL_NAMES:
                    self.lines[words[1]].append(line.rstrip())
                else:
                    self.other.append(line.rstrip())
                self.changed.notify_all()
        self.process.wait()
        with self.changed:
            self.changed.notify_all()

    def results(self, name: str) -> list[str]:
        """The result lines of kernel `name`, once all are in (fewer if the child died or timed out)."""
        expected = len(variants([name]))
        with self.changed:
            self.changed.wait_for(lambda: len(self.lines[name]) >= expected or self.process.returncode is not None,
                                  timeout=max(0.0, self.deadline - time.monotonic()))
            return list(self.lines[name])

    def stop(self):
        """Let a child that has compiled everything exit on its own (its pool shuts down); otherwise (a
        test run cut short) end it and its workers: killing only the child left the workers running."""
        finished = all(len(self.lines[name]) >= len(variants([name])) for name in KERNEL_NAMES)
        try:
            self.process.wait(timeout=120 if finished else 0)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def compile_run():
    run = CompileRun()
    yield run
    run.stop()


needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")


@needs_triton
def test_every_kernel_is_covered():
    # 2 persistent + 5 stepwise LSTM kernels, 2 + 3 GRU ones, 2 + 3 Elman ones, the cells' forward and backward
    assert len(KERNEL_NAMES) == 19


@needs_triton
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_kernel_compiles_for_sm90_and_sm80(compile_run, name):
    lines = compile_run.results(name)
    context = "\n".join(lines + compile_run.other[-20:])
    assert len(lines) == len(variants([name])), f"compiles of {name} did not finish:\n{context}"
    assert all(line.startswith("ok ") for line in lines), context


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    sys.exit(1 if compile_all(parser.parse_args().jobs) else 0)
