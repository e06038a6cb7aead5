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
KERNEL_FLAGS = {
    "lstm_forward_kernel": dict(HAS_PROJ=True, REVERSE=True),
    "lstm_backward_kernel": dict(HAS_PROJ=True, REVERSE=True),
    "gru_forward_kernel": dict(HAS_BIAS=True, REVERSE=True),
    "gru_backward_kernel": dict(REVERSE=True),
}
# Buffers that are fp32 (or int32) whatever the data dtype: carried cell state and its gradient, scratch, lengths.
FIXED_POINTERS = {"c_ptr": "*fp32", "dc_ptr": "*fp32", "dhu_ptr": "*fp32", "len_ptr": "*i32"}
SIZES = ("T", "B", "H", "R")


def compile_all() -> int:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastrnn.triton import gru, lstm

    failures = 0
    for (name, flags), dtype, capability in itertools.product(KERNEL_FLAGS.items(), DTYPES, CAPABILITIES):
        kernel = getattr(lstm if name.startswith("lstm") else gru, name)
        constants = dict(flags, ACC=tl.float32, PRECISION="tf32" if dtype == "fp32" else "ieee",
                         BLOCK_B=16, BLOCK_H=32, BLOCK_K=32)
        signature = {arg: "constexpr" if arg in constants else "i32" if arg in SIZES
                     else FIXED_POINTERS.get(arg, f"*{dtype}") for arg in kernel.arg_names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
            shared = compiled.metadata.shared
            assert compiled.asm["cubin"], "empty cubin"
            assert shared <= 48 * 1024, f"{shared} B of shared memory needs an opt-in launch"
            print(f"ok {name} {dtype} sm_{capability} shared={shared}")
        except Exception as error:  # report every variant, then fail
            failures += 1
            print(f"FAILED {name} {dtype} sm_{capability}: {type(error).__name__}: {error}")
    return failures


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_every_kernel_compiles_for_sm90_and_sm80():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert done.stdout.count("ok ") == len(KERNEL_FLAGS) * len(DTYPES) * len(CAPABILITIES), done.stdout


if __name__ == "__main__":
    sys.exit(1 if compile_all() else 0)
