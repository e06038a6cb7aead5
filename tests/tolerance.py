"""How far a kernel's result may be from the float64 answer: one rule for every test that runs the fused
kernels on a GPU (the CUDA and Triton kernels op by op, the layer modules against nn.LSTM/nn.GRU).

The rule: a result's error against float64 is at most twice the error of a reference that rounds the way
the kernel does, plus a floor per dtype. For float16, bfloat16, float64 and IEEE float32 that reference is
the reference recurrence run in the dtype. For float32 on TF32 tensor cores it is the same recurrence with
every matrix product's operands first rounded to TF32 (`tf32_matmuls`): a TF32 tensor core keeps 10 of
float32's 23 mantissa bits of each operand, multiplies exactly and accumulates in float32, which is what
an IEEE float32 product of TF32-rounded operands computes. The reference truncates (drops the 13 low
bits, unit roundoff 2**-10 and a bias towards zero) rather than rounding to nearest (2**-11, unbiased):
the CUDA kernels round to nearest (`cvt.rna.tf32.f32`), tensor cores handed float32 bits unconverted
(Triton's tf32 dot) truncate, and the truncating reference's error is the larger of the two, so one bound
holds for both. Comparing against an IEEE float32 reference instead would ask TF32 for float32's accuracy:
at a 37-unit LSTM the TF32 error is ~300x the IEEE one.

Which switch turns TF32 on: `torch.backends.cudnn.allow_tf32` (torch's default: on), the switch nn.LSTM's
cuDNN obeys, for both kernel backends (`fastrnn.backends.tf32_enabled`). `tf32_switch(on)` sets it for
a block; tests run every float32 GPU check with it explicitly on and explicitly off.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

from fastrnn.backends import tf32_enabled

from conftest import rel_error

# Error floor per dtype on top of the bound.
FLOOR = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
# TF32 keeps 10 mantissa bits: unit roundoff 2**-11 rounding to nearest, 2**-10 truncating.
U_TF32_NEAREST = 2.0 ** -11
U_TF32_TRUNCATE = 2.0 ** -10
_LOW_BITS = (1 << 13) - 1  # the float32 mantissa bits TF32 drops


def round_to_tf32(t: torch.Tensor, mode: str = "truncate") -> torch.Tensor:
    """float32 `t` with each mantissa cut to TF32's 10 bits: "truncate" (towards zero) or "nearest" (ties
    away from zero, as cvt.rna.tf32.f32). Other dtypes, and inf/NaN, are returned unchanged."""
    if t.dtype != torch.float32:
        return t
    if mode not in ("truncate", "nearest"):
        raise ValueError(f"mode must be 'truncate' or 'nearest'; got {mode!r}")
    bits = t.contiguous().view(torch.int32)
    if mode == "nearest":
        bits = bits + (1 << 12)  # half of the dropped range: a carry into the kept bits rounds the magnitude up
    rounded = (bits & ~_LOW_BITS).view(torch.float32).view(t.shape)
    return torch.where(torch.isfinite(t), rounded, t)


# The matrix products the reference recurrence uses, and which arguments are their two matrix operands.
_OPERANDS = {
    torch.mm: (0, 1), torch.Tensor.mm: (0, 1), torch.matmul: (0, 1), torch.Tensor.matmul: (0, 1),
    torch.Tensor.__matmul__: (0, 1), torch.Tensor.__rmatmul__: (0, 1), torch.bmm: (0, 1), torch.Tensor.bmm: (0, 1),
    torch.addmm: (1, 2), torch.Tensor.addmm: (1, 2), torch.baddbmm: (1, 2), torch.nn.functional.linear: (0, 1),
}


class tf32_matmuls(TorchFunctionMode):
    """Within the block every float32 matrix product rounds its two matrix operands to TF32 first (`mode`
    as in round_to_tf32), so the product is what a TF32 tensor core computes."""

    def __init__(self, mode: str = "truncate"):
        super().__init__()
        self.mode = mode

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        positions = _OPERANDS.get(func)
        if positions is not None:
            args = list(args)
            for index in positions:
                if index < len(args) and isinstance(args[index], torch.Tensor):
                    args[index] = round_to_tf32(args[index], self.mode)
        return func(*args, **kwargs)


@contextlib.contextmanager
def tf32_switch(on: bool):
    """torch.backends.cudnn.allow_tf32 set to `on` within the block (the switch both kernel backends follow)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def runs_tf32(dtype: torch.dtype) -> bool:
    """Whether a kernel backend's float32 products run on TF32 now (the switch, read as the backends read it)."""
    return tf32_enabled(dtype)


def reference(fn, *args, tf32: bool = False):
    """fn(*args) in the arithmetic the kernels use: with `tf32`, float32 products on TF32-rounded operands."""
    if not tf32:
        return fn(*args)
    with tf32_matmuls("truncate"):
        return fn(*args)


def allowed_error(dtype: torch.dtype, *reference_errors: float) -> float:
    """The bound: twice the largest of the references' own errors against float64, plus the dtype's floor."""
    return 2 * max(reference_errors) + FLOOR[dtype]


def assert_bounded(ours, low_reference, exact, dtype, what: str) -> None:
    """Each of our results' error against float64 within allowed_error of the matching reference result
    (`low_reference`: computed by `reference(..., tf32=...)` in the arithmetic the kernels used)."""
    for index, (a, b, e) in enumerate(zip(ours, low_reference, exact, strict=True)):
        assert a.shape == e.shape and a.dtype == dtype, f"{what} result {index}: {a.shape} {a.dtype}"
        if e.numel() == 0:
            continue
        mine, theirs = rel_error(a, e), rel_error(b, e)
        limit = allowed_error(dtype, theirs)
        assert mine <= limit, f"{what} result {index}: error {mine:.2e} > bound {limit:.2e} (reference's {theirs:.2e})"


def precisions(dtypes) -> list:
    """pytest params of (dtype, tf32) for `dtypes` (dtypes or pytest.params of one), float32 twice: with
    TF32 explicitly off ("float32-ieee") and on ("float32-tf32"); the others with tf32 False."""
    import pytest

    params = []
    for entry in dtypes:
        dtype, marks = (entry.values[0], entry.marks) if hasattr(entry, "values") else (entry, ())
        name = str(dtype).removeprefix("torch.")
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            label = name + ("-tf32" if tf32 else "-ieee") if dtype == torch.float32 else name
            params.append(pytest.param(dtype, tf32, marks=marks, id=label))
    return params
