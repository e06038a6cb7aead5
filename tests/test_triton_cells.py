"""The Triton fused cell steps (fastrnn/triton/cell_step.py) against the reference backend, op by op, and through
fastrnn.LSTMCell / GRUCell / RNNCell(backend="triton") against nn's cells: new states, what the step saves, and
every gradient. Shapes cut the tiles unevenly (several row tiles, unit tiles and reduction chunks, and one of
each); outputs are poisoned with NaN, so an element a kernel forgets to write fails the comparison.

Without a GPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1) on CPU tensors.
(nn's float32 error as the bound, opcheck and torch.compile: tests/test_cells.py, which runs triton too.)
"""

from __future__ import annotations

import os

import pytest
import torch

import fastrnn
from fastrnn import cells
from fastrnn.backends import reference, unavailable_reason

from conftest import CUDA_SKIP
from test_cells import compare, make_pair, random_inputs, run
from tolerance import assert_bounded

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if unavailable_reason("triton", DEVICE) is not None:
    pytest.skip(f"triton backend unavailable: {unavailable_reason('triton', DEVICE)}", allow_module_level=True)

from fastrnn.backends import triton as triton_backend  # noqa: E402
from test_triton import _compiled_variants  # noqa: E402

MODES = list(cells.CELLS)
# float16 too: the interpreter computes its products right (bfloat16's it does not: refused, below).
DTYPES = [torch.float64, torch.float32, torch.float16]
# (batch, input, hidden, dtype, bias): every dtype with and without biases on an awkward small shape; one of
# everything; past a tile in rows (16), units (32) and the reduction chunk (32) of both GEMMs (the interpreter's
# cost grows with the tiles, so that shape runs twice).
STEP_CASES = [(3, 7, 5, dtype, bias) for dtype in DTYPES for bias in (True, False)]
STEP_CASES += [(1, 1, 1, torch.float64, True), (17, 40, 33, torch.float64, True), (17, 40, 33, torch.float32, False)]
STEP_IDS = [f"B{b}-I{i}-H{h}-{str(d).removeprefix('torch.')}-{'bias' if bias else 'no_bias'}"
            for b, i, h, d, bias in STEP_CASES]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every output the cell kernels write starts as NaN."""
    monkeypatch.setattr(triton_backend, "_empty",
                        lambda shape, like: torch.full(shape, float("nan"), dtype=like.dtype, device=like.device))


def _step_case(mode, batch, inputs, hidden, bias, seed):
    """x, states, w_ih, w_hh, b_ih, b_hh in float64 on DEVICE, weights scaled as nn initialises them."""
    gen = torch.Generator().manual_seed(seed)
    gates = cells.CELLS[mode].gates * hidden

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE)

    scale = hidden ** -0.5
    biases = (randn(gates, scale=scale), randn(gates, scale=scale)) if bias else (None, None)
    states = tuple(randn(batch, hidden) for _ in cells.CELLS[mode].states)
    return randn(batch, inputs), states, randn(gates, inputs, scale=scale), randn(gates, hidden, scale=scale), *biases


def _cast(value, dtype):
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return None if value is None else value.to(dtype)


def _flat(result):
    """cell_forward's (new states, saved) or cell_backward's (d gx, d gh, direct) as a flat list, None dropped."""
    first, second, *rest = result
    flat = list(first) if isinstance(first, tuple) else [first]
    flat += list(second) if isinstance(second, tuple) else [second]
    for part in rest:
        flat += [t for t in part if t is not None]
    return flat


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch,inputs,hidden,dtype,bias", STEP_CASES, ids=STEP_IDS)
def test_cell_kernels_match_reference(mode, batch, inputs, hidden, dtype, bias):
    """Forward (new states and saved, and save=False's empty saved) and the pointwise backward, each within
    tests/tolerance.py's bound of the reference run in the same dtype."""
    shape = (batch, inputs, hidden)
    case = _step_case(mode, *shape, bias, seed=sum(shape) + bias)
    low = _cast(case, dtype)
    exact = reference.cell_forward(mode, *case)
    ours = triton_backend.cell_forward(mode, *low)
    low_reference = reference.cell_forward(mode, *low)
    assert_bounded(_flat(ours), _flat(low_reference), _flat(exact), dtype, "forward")
    new, saved = triton_backend.cell_forward(mode, *low, save=False)
    assert saved.shape == (0,) and all(torch.equal(a, b) for a, b in zip(new, ours[0], strict=True))

    gen = torch.Generator().manual_seed(sum(shape))
    d_new = tuple(torch.randn(s.shape, generator=gen, dtype=torch.float64).to(DEVICE) for s in exact[0])
    states = case[1]
    exact_grads = reference.cell_backward(mode, d_new, states, *exact)
    ours_grads = triton_backend.cell_backward(mode, _cast(d_new, dtype), low[1], *ours)
    reference_grads = reference.cell_backward(mode, _cast(d_new, dtype), low[1], *low_reference)
    assert [d is None for d in ours_grads[2]] == [d is None for d in exact_grads[2]]
    assert (ours_grads[0] is ours_grads[1]) == (exact_grads[0] is exact_grads[1])  # one tensor where both sides share it
    assert_bounded(_flat(ours_grads), _flat(reference_grads), _flat(exact_grads), dtype, "backward")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["batched", "no_state", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_cell_modules_match_nn_in_float64(mode, form, bias):
    """fastrnn's cells on backend="triton": states and the gradient of the input, states and every parameter."""
    torch.manual_seed(len(form) + bias)
    ours, theirs = make_pair(mode, "triton", 7, 5, bias, device=DEVICE)
    x, hx = random_inputs(ours, 3, form, seed=11, device=DEVICE)
    errors = compare(run(ours, x, hx), run(theirs, x, hx))
    assert ours.last_backend == "triton"
    assert max(errors.values()) < 1e-12, errors


@pytest.mark.parametrize("mode", MODES)
def test_decoder_loop_past_every_tile_matches_nn(mode):
    """A loop of steps (the states fed back, one autograd node per step) at a batch and sizes past one tile."""
    torch.manual_seed(4)
    ours, theirs = make_pair(mode, "triton", 40, 33, device=DEVICE)

    def decode(cell, xs):
        hx, outputs = None, []
        for x in xs:
            hx = cell(x, hx)
            outputs.append(hx[0] if isinstance(hx, tuple) else hx)
        return torch.stack(outputs)

    xs = torch.randn(2, 17, 40, dtype=torch.float64, device=DEVICE)
    got, expected = decode(ours, xs), decode(theirs, xs)
    grads = torch.autograd.grad(got.square().sum(), list(ours.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(theirs.parameters()))
    assert max(compare(dict(enumerate((got, *grads))), dict(enumerate((expected, *expected_grads)))).values()) < 1e-12


def test_bad_arguments_are_refused_before_a_launch():
    """The kernel checks what it indexes by (a wrong shape would read past a tensor on a GPU); through a cell
    module the refusal shows torch's own message."""
    x, states, w_ih, w_hh, b_ih, b_hh = _step_case("GRU", 3, 7, 5, True, seed=2)
    with pytest.raises(RuntimeError, match=r"needs w_hh of shape \(15, 5\) in that dtype and device; got \(15, 4\)"):
        triton_backend.cell_forward("GRU", x, states, w_ih, w_hh[:, :4], b_ih, b_hh)
    with pytest.raises(RuntimeError, match=r"needs state h of shape \(3, 5\) .*; got \(2, 5\)"):
        triton_backend.cell_forward("GRU", x, (states[0][:2],), w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="b_ih and b_hh are both given or both None"):
        triton_backend.cell_forward("GRU", x, states, w_ih, w_hh, b_ih, None)
    with pytest.raises(RuntimeError, match=r"needs b_hh of shape \(15,\) .*; got \(15,\) torch.float32"):
        triton_backend.cell_forward("GRU", x, states, w_ih, w_hh, b_ih, b_hh.float())
    with pytest.raises(ValueError, match="unknown cell mode 'RNN'"):
        triton_backend.cell_forward("RNN", x, states, w_ih, w_hh, b_ih, b_hh)
    cell = fastrnn.LSTMCell(4, 3, backend="triton", device=DEVICE)
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 5 expected 4"):
        cell(torch.randn(2, 5, device=DEVICE))


@pytest.mark.skipif(not INTERPRETED, reason="checks what the Triton interpreter refuses; kernels are compiled here")
def test_bf16_in_the_interpreter_is_refused_not_answered_wrongly():
    cell = fastrnn.GRUCell(4, 3, backend="triton", dtype=torch.bfloat16)
    with pytest.raises(fastrnn.BackendUnavailableError, match=r"bfloat16 under TRITON_INTERPRET=1"):
        cell(torch.randn(2, 4, dtype=torch.bfloat16))


@CUDA_SKIP
@pytest.mark.parametrize("mode", MODES)
def test_no_recompile_across_batch_sizes(mode):
    from fastrnn.triton import cell_step as cell_kernels

    kernels = (cell_kernels.cell_forward_kernel, cell_kernels.cell_backward_kernel)
    ours = make_pair(mode, "triton", 24, 40, device="cuda", dtype=torch.float32)[0]

    def step(batch):
        x = torch.randn(batch, 24, device="cuda", requires_grad=True)
        out = ours(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    step(3)
    before = sum(_compiled_variants(kernel) for kernel in kernels)
    for batch in (1, 17, 64, 257):
        step(batch)
    assert sum(_compiled_variants(kernel) for kernel in kernels) == before
