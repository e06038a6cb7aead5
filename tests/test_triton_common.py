"""The device helpers every Triton kernel shares (fastrnn/triton/common.py): the activations, elementwise against
torch in float32 and float64, small results, infinities and NaN included. In Triton's interpreter without a GPU."""

from __future__ import annotations

import pytest
import torch

from fastrnn.backends import unavailable_reason

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if unavailable_reason("triton", DEVICE) is not None:
    pytest.skip(f"triton backend unavailable: {unavailable_reason('triton', DEVICE)}", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fastrnn.triton.common import _elman_activation, _elman_derivative, _tanh  # noqa: E402

BLOCK = 1024


@triton.jit
def _apply_kernel(x_ptr, y_ptr, N, WHICH: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    if WHICH == "tanh":
        y = _tanh(x)
    elif WHICH == "relu":
        y = _elman_activation(x, True)
    elif WHICH == "relu'":
        y = _elman_derivative(x, True)
    else:
        y = _elman_derivative(x, False)
    tl.store(y_ptr + offsets, y, mask=mask)


def _apply(which: str, x: torch.Tensor) -> torch.Tensor:
    y = torch.full_like(x, 12345.0)
    _apply_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, x.numel(), WHICH=which, BLOCK=BLOCK)
    return y


def _arguments(dtype):
    magnitudes = torch.logspace(-30, 1.5, 1500, dtype=torch.float64)
    special = torch.tensor([0.0, 20.0, 1e3, float("inf"), float("nan")], dtype=torch.float64)
    return torch.cat([-magnitudes, magnitudes, special, -special]).to(dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_tanh_is_accurate_relative_to_its_result(dtype):
    """Within a few units in the last place of torch.tanh (of the float64 answer), tiny results too, where
    2 sigmoid(2x) - 1 is off by ~1e-7 absolute; +-1 at the infinities, NaN kept."""
    x = _arguments(dtype)
    ours, exact = _apply("tanh", x).double(), torch.tanh(x.double())
    nonzero, zero = (exact != 0) & ~exact.isnan(), exact == 0
    relative = ((ours - exact).abs() / exact.abs())[nonzero]
    assert relative.max() <= 4 * torch.finfo(dtype).eps, relative.max()
    assert not ours[zero].any() and torch.equal(ours.isnan(), exact.isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_elman_activation_and_derivatives_are_torch_s(dtype):
    x = _arguments(dtype)
    relu = _apply("relu", x)
    assert torch.equal(relu.isnan(), x.isnan()) and torch.equal(relu[~x.isnan()], torch.relu(x)[~x.isnan()])
    h = torch.tanh(x[x.isfinite()])
    assert torch.equal(_apply("relu'", h), (h > 0).to(dtype))
    assert torch.equal(_apply("tanh'", h), 1 - h * h)
