"""The Triton kernels compile for the GPUs they target (sm_90, sm_80), without needing one.

The interpreter (tests/test_triton.py) checks what the kernels compute but never compiles them. This
compiles each kernel ahead of time to a cubin for every dtype, with its optional paths switched on,
in a child process (the kernels must be defined without TRITON_INTERPRET, which conftest sets).
Also runnable alone: `python tests/test_triton_compiles.py`.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys

import pytest

CAPABILITIES = (90, 80)
DTYPES = ("bf16", "fp16", "fp32")
# Every optional path switched on, wherever a kernel has the flag.
FLAGS = dict(HAS_PROJ=True, HAS_BIAS=True, REVERSE=True)
# The default tiles everywhere; the largest tuning candidate's on sm_90 (the shared-memory bound that matters).
TILES = {90: [(16, 32, 32), (64, 64, 64)], 80: [(16, 32, 32)]}
# Buffers that are fp32 (or int32) whatever the data dtype: carried cell state and its gradient, lengths.
FIXED_POINTERS = {"c_ptr": "*fp32", "dc_ptr": "*fp32", "len_ptr": "*i32"}
SIZES = ("T", "t", "B", "H", "R")
# Shared memory a block may use (Triton's launcher opts in past 48 KB): 227 KB on sm_90, 163 KB on sm_80.
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}


def kernels():
    from fastrnn.triton import gru, lstm

    return {name: getattr(module, name) for module in (lstm, gru) for name in dir(module) if name.endswith("_kernel")}


def variants():
    return [(name, dtype, capability, tiles) for name in sorted(kernels()) for dtype in DTYPES
            for capability in CAPABILITIES for tiles in TILES[capability]]


def compile_all() -> int:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = 0
    for name, dtype, capability, (block_b, block_h, block_k) in variants():
        kernel = kernels()[name]
        constexprs = {p.name for p in kernel.params if p.is_constexpr}
        values = dict(FLAGS, ACC=tl.float32, PRECISION="tf32" if dtype == "fp32" else "ieee",
                      BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k)
        constants = {k: v for k, v in values.items() if k in constexprs}
        assert constants.keys() == constexprs, f"{name}: no value for {constexprs - constants.keys()}"
        signature = {arg: "constexpr" if arg in constants else "i32" if arg in SIZES
                     else FIXED_POINTERS.get(arg, f"*{dtype}") for arg in kernel.arg_names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
        what = f"{name} {dtype} sm_{capability} tiles={block_b}x{block_h}x{block_k}"
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
            shared = compiled.metadata.shared
            assert compiled.asm["cubin"], "empty cubin"
            assert shared <= SHARED_LIMIT[capability], f"{shared} B of shared memory is more than sm_{capability} has"
            print(f"ok {what} shared={shared}")
        except Exception as error:  # report every variant, then fail
            failures += 1
            print(f"FAILED {what}: {type(error).__name__}: {error}")
    return failures


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_every_kernel_compiles_for_sm90_and_sm80():
    assert len(kernels()) == 12  # 2 persistent + 5 stepwise LSTM kernels, 2 persistent + 3 stepwise GRU kernels
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert done.stdout.count("ok ") == len(variants()), done.stdout


if __name__ == "__main__":
    sys.exit(1 if compile_all() else 0)
