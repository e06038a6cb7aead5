"""The error bound of the GPU tests (tests/tolerance.py), checked on the CPU: TF32 rounding as modelled,
the rounding mode reaching every product of the reference recurrence, and a bound that accepts TF32
arithmetic while rejecting an error ten times as large."""

from __future__ import annotations

import math

import pytest
import torch

from fastrnn import functional
from fastrnn.backends import reference

from conftest import rel_error
from cuda_checks import _cast, _lengths, _randn
from tolerance import (U_TF32_NEAREST, allowed_error, assert_bounded, reference as in_kernel_arithmetic,
                       round_to_tf32, runs_tf32, tf32_matmuls, tf32_switch)

# For mantissas spread log-uniformly over [1, 2) (as those of normal samples are): E[1/m] = 1/(2 ln 2),
# E[1/m^2] = 3/(8 ln 2). Relative rounding error of one element, u = 2**-11:
#   nearest:  uniform in +-u*2^e/x, rms u * sqrt(E[1/m^2] / 3)                            = 0.425 u
#   truncate: uniform in (-2u*2^e/x, 0], rms 2u * sqrt(E[1/m^2] / 3) = 0.850 u, mean -u E[1/m] = -0.721 u
INV_M, INV_M2 = 1 / (2 * math.log(2)), 3 / (8 * math.log(2))
RMS_NEAREST = U_TF32_NEAREST * math.sqrt(INV_M2 / 3)
RMS_TRUNCATE, MEAN_TRUNCATE = 2 * RMS_NEAREST, U_TF32_NEAREST * INV_M
# A product of two rounded operands: relative error d_a + d_b. Over a long dot product of random terms the
# independent parts average out relative to the result and the bias does not: the relative error of
# C = A B is sqrt(2) rms for nearest, sqrt(4 mean^2 + 2 (rms^2 - mean^2)) for truncation.
GEMM_NEAREST = math.sqrt(2) * RMS_NEAREST
GEMM_TRUNCATE = math.sqrt(4 * MEAN_TRUNCATE ** 2 + 2 * (RMS_TRUNCATE ** 2 - MEAN_TRUNCATE ** 2))


def test_round_to_tf32_keeps_ten_mantissa_bits():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0))
    for mode, limit in (("nearest", U_TF32_NEAREST), ("truncate", 2 * U_TF32_NEAREST)):
        r = round_to_tf32(x, mode)
        assert (r.view(torch.int32) & 0x1FFF == 0).all(), mode  # the 13 dropped bits are zero
        assert torch.equal(round_to_tf32(r, mode), r), mode  # TF32 values are fixed points
        relative = ((r.double() - x.double()) / x.double()).abs()
        assert 0.9 * limit < relative.max() <= limit, (mode, relative.max())
    assert (round_to_tf32(x, "truncate").abs() <= x.abs()).all()
    assert round_to_tf32(torch.tensor([1 + 2.0 ** -11]), "nearest").item() == 1 + 2.0 ** -10  # a tie rounds away
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0])
    assert torch.equal(round_to_tf32(special)[:2], special[:2]) and round_to_tf32(special)[2].isnan()
    doubles = torch.randn(5, dtype=torch.float64)
    assert round_to_tf32(doubles) is doubles


@pytest.mark.parametrize("mode,rms,mean", [("nearest", RMS_NEAREST, 0.0), ("truncate", RMS_TRUNCATE, -MEAN_TRUNCATE)])
def test_element_rounding_error_is_as_modelled(mode, rms, mean):
    x = torch.randn(200000, generator=torch.Generator().manual_seed(1))
    relative = (round_to_tf32(x, mode).double() - x.double()) / x.double()
    assert relative.pow(2).mean().sqrt().item() == pytest.approx(rms, rel=0.05)
    assert relative.mean().item() == pytest.approx(mean, abs=0.05 * rms)


@pytest.mark.parametrize("mode,predicted", [("nearest", GEMM_NEAREST), ("truncate", GEMM_TRUNCATE)])
def test_tf32_gemm_differs_from_ieee_float32_by_the_predicted_order(mode, predicted):
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(64, 512, generator=gen, dtype=torch.float64), torch.randn(512, 128, generator=gen, dtype=torch.float64)
    exact = a @ b
    with tf32_matmuls(mode):
        tf32 = a.float() @ b.float()
    ieee = rel_error(a.float() @ b.float(), exact)
    assert rel_error(tf32, exact) == pytest.approx(predicted, rel=0.15)
    assert ieee < predicted / 100  # IEEE float32 is orders of magnitude closer


def test_the_mode_rounds_exactly_the_matrix_operands():
    gen = torch.Generator().manual_seed(3)
    bias, a, b = (torch.randn(4, 6, generator=gen), torch.randn(4, 5, generator=gen), torch.randn(5, 6, generator=gen))
    ra, rb = round_to_tf32(a), round_to_tf32(b)
    with tf32_matmuls():
        assert torch.equal(a @ b, ra @ rb)
        assert torch.equal(torch.addmm(bias, a, b), torch.addmm(bias, ra, rb))  # the added term stays float32
        assert torch.equal(torch.nn.functional.linear(a, b.T), ra @ rb)
        assert torch.equal(a.double() @ b.double(), a.double() @ b.double())
    assert not torch.equal(a @ b, ra @ rb)  # outside the block, IEEE float32


def _lstm_inputs(seed=6, seq_len=5, batch=19, hidden=37, proj=11):
    """The shape of test_cuda_gpu.py's compute-sanitizer test, where an IEEE bound failed TF32."""
    gen = torch.Generator().manual_seed(seed)
    exact_in = (_randn(gen, seq_len, batch, 4 * hidden), _randn(gen, batch, proj), _randn(gen, batch, hidden),
                _randn(gen, 4 * hidden, proj, scale=proj ** -0.5), _randn(gen, proj, hidden, scale=hidden ** -0.5))
    return exact_in, _lengths(batch, seq_len, True, gen), gen


def _lstm_backward(outputs, grads, w_hh, w_hr, c0, lengths):
    y, h_n, c_n, gates, c_all = outputs
    c_prev = functional.previous_states(c_all, c0, lengths, True)
    return reference.lstm_backward(*grads, c_prev, w_hh, w_hr, gates, c_all, lengths, True)


@pytest.mark.parametrize("kernel_mode", ["nearest", "truncate"])
def test_bound_accepts_tf32_and_rejects_ten_times_its_error(kernel_mode):
    """A stand-in kernel computing in TF32 (rounding to nearest as the CUDA kernels do, or truncating as an
    unconverted tensor-core operand is) passes the TF32 bound forward and backward; the same result with
    its error scaled by ten fails it, and the TF32 result fails the IEEE bound a TF32-off test uses."""
    exact_in, lengths, gen = _lstm_inputs()
    low = _cast(exact_in, torch.float32)
    exact = reference.lstm_forward(*exact_in, lengths, True)
    with tf32_matmuls(kernel_mode):
        ours = reference.lstm_forward(*low, lengths, True)
    tf32_reference = in_kernel_arithmetic(reference.lstm_forward, *low, lengths, True, tf32=True)
    ieee_reference = in_kernel_arithmetic(reference.lstm_forward, *low, lengths, True, tf32=False)
    assert_bounded(ours, tf32_reference, exact, torch.float32, "forward")
    worse = [(e + 10 * (a.double() - e)).float() for a, e in zip(ours, exact)]
    with pytest.raises(AssertionError, match="forward result 0: error"):
        assert_bounded(worse, tf32_reference, exact, torch.float32, "forward")
    with pytest.raises(AssertionError, match="forward result 0: error"):
        assert_bounded(ours, ieee_reference, exact, torch.float32, "forward")

    grads = [_randn(gen, *t.shape) for t in exact[:3]]
    low_grads = _cast(grads, torch.float32)
    exact_grads = _lstm_backward(exact, grads, exact_in[3], exact_in[4], exact_in[2], lengths)
    with tf32_matmuls(kernel_mode):
        ours_grads = _lstm_backward(ours, low_grads, low[3], low[4], low[2], lengths)
    reference_grads = in_kernel_arithmetic(_lstm_backward, tf32_reference, low_grads, low[3], low[4], low[2], lengths,
                                           tf32=True)
    assert_bounded(ours_grads, reference_grads, exact_grads, torch.float32, "backward")
    worse = [(e + 10 * (a.double() - e)).float() for a, e in zip(ours_grads, exact_grads)]
    with pytest.raises(AssertionError, match="backward result"):
        assert_bounded(worse, reference_grads, exact_grads, torch.float32, "backward")


def test_the_bound_at_the_shape_an_ieee_bound_failed():
    """At test_small_shapes_for_compute_sanitizer's LSTM the TF32 error (3.5e-4 rounding to nearest) is
    ~3000x the IEEE float32 one: an IEEE bound (2 x that + 1e-6, ~1.3e-6) cannot hold, the TF32 bound does."""
    exact_in, lengths, _ = _lstm_inputs()
    low = _cast(exact_in, torch.float32)
    exact = reference.lstm_forward(*exact_in, lengths, True)[0]
    ieee = rel_error(reference.lstm_forward(*low, lengths, True)[0], exact)
    with tf32_matmuls("nearest"):
        nearest = rel_error(reference.lstm_forward(*low, lengths, True)[0], exact)
    bound = allowed_error(torch.float32, rel_error(in_kernel_arithmetic(reference.lstm_forward, *low, lengths, True,
                                                                        tf32=True)[0], exact))
    assert allowed_error(torch.float32, ieee) < 2e-6 < 1e-4 < nearest < bound / 2 < 2e-3, (ieee, nearest, bound)


def test_the_switch_is_the_one_the_backends_read():
    with tf32_switch(True):
        assert torch.backends.cudnn.allow_tf32 and runs_tf32(torch.float32) and not runs_tf32(torch.float16)
    with tf32_switch(False):
        assert not torch.backends.cudnn.allow_tf32 and not runs_tf32(torch.float32)
