"""The cpp backend's Elman layer kernels and its fused cells (csrc/cpu/rnn.h, csrc/cpu/cell_step.h) against
the reference backend, op by op: float64 to 1e-12, float32 and bfloat16 within tests/tolerance.py's bound
of the reference run in the same dtype; every instruction-set variant this CPU can run, one and two
threads, sizes that cut the vector width and the threads' unit blocks unevenly, and outputs poisoned
with NaN so that an element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import pytest
import torch

from fastrnn import _ext, cells, functional
from fastrnn.backends import reference, unavailable_reason

from conftest import rel_error
from tolerance import assert_bounded

REASON = unavailable_reason("cpp", "cpu") or _ext.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpp backend unavailable: {REASON}")

from fastrnn.backends import cpp  # noqa: E402
from conftest import CPU_INSTRUCTION_SETS as ISAS  # noqa: E402
from test_cpp import _randn  # noqa: E402



@pytest.fixture(autouse=True)
def poisoned_outputs():
    kernels = _ext.extension()
    kernels.cpu_set_poison_outputs(True)
    yield
    kernels.cpu_set_poison_outputs(False)


def _low(args, dtype):
    return [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in args]


def _assert_close(ours, exact, tolerance, what):
    assert len(ours) == len(exact), what
    for index, (a, b) in enumerate(zip(ours, exact)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what} result {index}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        if b.numel():
            assert rel_error(a, b) < tolerance, f"{what} result {index}: error {rel_error(a, b):.2e}"


# --- the Elman layer ---------------------------------------------------------------------------------

# Hidden 1, 5, 17, 33, 37 and 100 leave a ragged last vector on every variant (4, 8 or 16 floats; 2, 4 or 8
# doubles); batch 13 and 9 cut the register tiles unevenly; 13 x 37 and 9 x 100 are split between two threads.
SHAPES = [dict(seq_len=9, batch=13, hidden=37), dict(seq_len=5, batch=2, hidden=1), dict(seq_len=4, batch=3, hidden=5),
          dict(seq_len=6, batch=5, hidden=17), dict(seq_len=4, batch=4, hidden=33), dict(seq_len=3, batch=9, hidden=100)]
SHAPE_IDS = [f"{s['batch']}x{s['hidden']}" for s in SHAPES]
LENGTHS = {"full": None, "ragged": [9, 9, 7, 7, 7, 5, 4, 4, 3, 2, 1, 1, 1], "with_zeros": [5, 3, 0]}


def _lengths(name, shape):
    lengths = LENGTHS[name]
    if lengths is None:
        return None
    lengths = [min(n, shape["seq_len"]) for n in lengths][: shape["batch"]]
    lengths += [lengths[-1]] * (shape["batch"] - len(lengths))
    return torch.tensor(lengths)


def _rnn_args(seq_len, batch, hidden, relu, lengths, reverse, seed):
    gen = torch.Generator().manual_seed(seed)
    return (_randn(gen, seq_len, batch, hidden), _randn(gen, batch, hidden),
            _randn(gen, hidden, hidden, scale=hidden ** -0.5), relu, lengths, reverse)


def _rnn_backward_args(args, outputs, seed):
    _, _, w_hh, relu, lengths, reverse = args
    y, h_n = outputs
    gen = torch.Generator().manual_seed(seed)
    return (_randn(gen, *y.shape), _randn(gen, *h_n.shape), y, w_hh, relu, lengths, reverse)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
def test_elman_layer_equals_the_reference_in_float64(isa, threads, shape, lengths, reverse, relu):
    args = _rnn_args(**shape, relu=relu, lengths=_lengths(lengths, shape), reverse=reverse, seed=1)
    exact = reference.rnn_forward(*args)
    _assert_close(cpp.rnn_forward(*args), exact, 1e-12, "forward")
    _assert_close(cpp.rnn_forward(*args, save=False), exact, 1e-12, "forward without save")
    backward = _rnn_backward_args(args, exact, seed=2)
    _assert_close(cpp.rnn_backward(*backward), reference.rnn_backward(*backward), 1e-12, "backward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("lengths", ["full", "ragged"])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
def test_elman_layer_in_low_precision_is_as_accurate_as_the_reference(isa, threads, dtype, lengths, relu):
    """float32, and bfloat16 storage computed in float32: each result's error against float64 within the
    bound of the reference backend's own error in the dtype (which rounds every intermediate to it)."""
    shape = SHAPES[0]
    exact_args = _rnn_args(**shape, relu=relu, lengths=_lengths(lengths, shape), reverse=True, seed=3)
    low_args = _low(exact_args, dtype)
    exact = reference.rnn_forward(*exact_args)
    assert_bounded(cpp.rnn_forward(*low_args), reference.rnn_forward(*low_args), exact, dtype, "forward")
    exact_backward = _rnn_backward_args(exact_args, exact, seed=4)
    low_backward = _low(exact_backward, dtype)
    assert_bounded(cpp.rnn_backward(*low_backward), reference.rnn_backward(*low_backward),
                   reference.rnn_backward(*exact_backward), dtype, "backward")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_elman_layer_of_no_steps_returns_the_initial_state(reverse):
    args = _rnn_args(0, 3, 5, False, None, reverse, seed=5)
    _assert_close(cpp.rnn_forward(*args), reference.rnn_forward(*args), 1e-15, "forward")
    dy, dh_n = torch.zeros(0, 3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    _assert_close(cpp.rnn_backward(dy, dh_n, dy, args[2], False, None, reverse),
                  reference.rnn_backward(dy, dh_n, dy, args[2], False, None, reverse), 1e-15, "backward")


def test_elman_layer_through_functional_previous_states_matches_autograd():
    """The layer's gradient as the module will build it (dxp from the kernels, dW_hh = sum dxp^T h_prev)
    equals autograd through cell_math's plain recurrence."""
    from fastrnn import cell_math

    gen = torch.Generator().manual_seed(6)
    xp, h0, w_hh = _randn(gen, 7, 4, 9), _randn(gen, 4, 9), _randn(gen, 9, 9, scale=1 / 3)
    lengths = torch.tensor([7, 5, 5, 2])
    leaves = [t.clone().requires_grad_(True) for t in (xp, h0, w_hh)]
    y, h_n = cell_math.rnn_recurrence(*leaves, lengths, True, relu=True)
    dy, dh_n = _randn(gen, *y.shape), _randn(gen, *h_n.shape)
    expected = torch.autograd.grad((y * dy).sum() + (h_n * dh_n).sum(), leaves)
    y_ours, h_ours = cpp.rnn_forward(xp, h0, w_hh, True, lengths, True)
    dxp, dh0 = cpp.rnn_backward(dy, dh_n, y_ours, w_hh, True, lengths, True)
    h_prev = functional.previous_states(y_ours, h0, lengths, True)
    dw = torch.einsum("tbi,tbj->ij", dxp, h_prev)
    for ours, theirs in zip((dxp, dh0, dw), expected):
        assert rel_error(ours, theirs) < 1e-12


def test_elman_layer_refuses_bad_shapes_and_dtypes():
    xp, h0, w_hh, relu, _, reverse = _rnn_args(4, 3, 5, False, None, False, seed=0)
    with pytest.raises(RuntimeError, match=r"w_hh must have shape \[5, 5\], got \[5, 4\]"):
        cpp.rnn_forward(xp, h0, w_hh[:, :4].contiguous(), relu, None, reverse)
    with pytest.raises(RuntimeError, match=r"float32, float64 or bfloat16, got Half"):
        cpp.rnn_forward(xp.half(), h0.half(), w_hh.half(), relu, None, reverse)
    with pytest.raises(RuntimeError, match=r"lengths must be sorted non-increasing"):
        cpp.rnn_forward(xp, h0, w_hh, relu, torch.tensor([1, 4, 2]), reverse)


# --- the cells ---------------------------------------------------------------------------------------

MODES = list(cells.CELLS)
CELL_SIZES = [(batch, hidden) for batch in (1, 3, 9) for hidden in (1, 7, 33, 70)]


def _cell_args(mode, batch, hidden, bias, seed, dtype=torch.float64, input_size=None):
    gen = torch.Generator().manual_seed(seed)
    input_size = input_size or hidden + 4
    g = cells.CELLS[mode].gates * hidden
    x = _randn(gen, batch, input_size, dtype=dtype)
    states = tuple(_randn(gen, batch, hidden, dtype=dtype) for _ in cells.CELLS[mode].states)
    w_ih = _randn(gen, g, input_size, scale=input_size ** -0.5, dtype=dtype)
    w_hh = _randn(gen, g, hidden, scale=hidden ** -0.5, dtype=dtype)
    b_ih, b_hh = (_randn(gen, g, dtype=dtype), _randn(gen, g, dtype=dtype)) if bias else (None, None)
    return x, states, w_ih, w_hh, b_ih, b_hh


def _flat_forward(result):
    new, saved = result
    return [*new, saved]


def _flat_backward(result):
    dgx, dgh, direct = result
    return [dgx, dgh, *(d for d in direct if d is not None)]


def _directs_match(ours, theirs):
    return [d is None for d in ours[2]] == [d is None for d in theirs[2]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("save", [True, False], ids=["save", "no_save"])
def test_cell_forward_equals_the_reference_in_float64(isa, threads, mode, bias, save):
    for batch, hidden in CELL_SIZES:
        x, states, w_ih, w_hh, b_ih, b_hh = _cell_args(mode, batch, hidden, bias, seed=batch * 100 + hidden)
        ours = cpp.cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, save)
        exact = reference.cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, save)
        assert len(ours[0]) == len(exact[0])
        _assert_close(_flat_forward(ours), _flat_forward(exact), 1e-12, f"{mode} B={batch} H={hidden}")


@pytest.mark.parametrize("mode", MODES)
def test_cell_backward_equals_the_reference_in_float64(isa, threads, mode):
    for batch, hidden in CELL_SIZES:
        x, states, w_ih, w_hh, b_ih, b_hh = _cell_args(mode, batch, hidden, True, seed=batch * 100 + hidden)
        new, saved = reference.cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh)
        gen = torch.Generator().manual_seed(hidden)
        d_new = tuple(_randn(gen, *s.shape) for s in new)
        ours = cpp.cell_backward(mode, d_new, states, new, saved)
        exact = reference.cell_backward(mode, d_new, states, new, saved)
        assert _directs_match(ours, exact)
        _assert_close(_flat_backward(ours), _flat_backward(exact), 1e-12, f"{mode} B={batch} H={hidden}")


@pytest.mark.parametrize("mode", MODES)
def test_cell_step_and_backward_give_autograds_gradients(mode):
    """Forward, pointwise backward and the caller's GEMMs (d x = dgx W_ih, d h = dgh W_hh + direct, dW_ih =
    dgx^T x, ...) equal autograd through the reference cell."""
    x, states, w_ih, w_hh, b_ih, b_hh = _cell_args(mode, 3, 7, True, seed=11, input_size=5)
    leaves = [t.clone().requires_grad_(True) for t in (x, *states, w_ih, w_hh, b_ih, b_hh)]
    n = len(states)
    new, _ = reference.cell_forward(mode, leaves[0], tuple(leaves[1:1 + n]), *leaves[1 + n:])
    gen = torch.Generator().manual_seed(12)
    d_new = tuple(_randn(gen, *s.shape) for s in new)
    expected = torch.autograd.grad(sum((s * d).sum() for s, d in zip(new, d_new)), leaves)
    ours_new, saved = cpp.cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh)
    dgx, dgh, direct = cpp.cell_backward(mode, d_new, states, ours_new, saved)
    dh = dgh @ w_hh + (direct[0] if direct[0] is not None else 0)
    grads = [dgx @ w_ih, dh, *([direct[1]] if n == 2 else []), dgx.T @ x, dgh.T @ states[0], dgx.sum(0), dgh.sum(0)]
    for index, (ours, theirs) in enumerate(zip(grads, expected)):
        assert rel_error(ours, theirs) < 1e-12, index


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("mode", MODES)
def test_cell_in_low_precision_is_as_accurate_as_the_reference(isa, threads, dtype, mode):
    for batch, hidden in ((3, 33), (9, 70)):
        exact_args = _cell_args(mode, batch, hidden, True, seed=hidden)
        low_args = _low(exact_args[:1], dtype) + [tuple(_low(exact_args[1], dtype))] + _low(exact_args[2:], dtype)
        exact = reference.cell_forward(mode, *exact_args)
        ours = cpp.cell_forward(mode, *low_args)
        low = reference.cell_forward(mode, *low_args)
        assert_bounded(_flat_forward(ours), _flat_forward(low), _flat_forward(exact), dtype, f"{mode} forward")
        gen = torch.Generator().manual_seed(hidden)
        d_new = tuple(_randn(gen, *s.shape) for s in exact[0])
        exact_grads = reference.cell_backward(mode, d_new, exact_args[1], *exact)
        low_inputs = (tuple(_low(d_new, dtype)), low_args[1], tuple(_low(exact[0], dtype)), exact[1].to(dtype))
        assert_bounded(_flat_backward(cpp.cell_backward(mode, *low_inputs)),
                       _flat_backward(reference.cell_backward(mode, *low_inputs)), _flat_backward(exact_grads), dtype,
                       f"{mode} backward")


def test_cell_backward_takes_no_cell_gradient_as_zero():
    x, states, w_ih, w_hh, b_ih, b_hh = _cell_args("LSTM", 3, 7, True, seed=13)
    new, saved = reference.cell_forward("LSTM", x, states, w_ih, w_hh, b_ih, b_hh)
    dh = torch.randn(3, 7, dtype=torch.float64)
    ours = cpp.cell_backward("LSTM", (dh, None), states, new, saved)
    exact = reference.cell_backward("LSTM", (dh, torch.zeros_like(dh)), states, new, saved)
    _assert_close(_flat_backward(ours), _flat_backward(exact), 1e-12, "LSTM without dc")


# --- the packed-weight cache -------------------------------------------------------------------------


def _cached_step(mode, args, cache):
    x, states, w_ih, w_hh, b_ih, b_hh = args
    return cpp.cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, cache=cache)


def _assert_step_is_right(mode, args, cache):
    _assert_close(_flat_forward(_cached_step(mode, args, cache)), _flat_forward(reference.cell_forward(mode, *args)),
                  1e-12, mode)


@pytest.mark.parametrize("mode", MODES)
def test_cache_is_reused_while_the_weights_are_unchanged_and_repacked_after_an_in_place_change(mode):
    args = _cell_args(mode, 3, 33, True, seed=14)
    w_ih, w_hh = args[2], args[3]
    cache = {}
    _assert_step_is_right(mode, args, cache)
    first = {slot: entry[1] for slot, entry in cache.items()}
    assert set(first) == {"ih", "hh"}
    _assert_step_is_right(mode, args, cache)
    assert all(cache[slot][1] is packed for slot, packed in first.items()), "an unchanged weight was packed again"
    with torch.no_grad():
        w_hh.add_(1)  # an optimizer step: in place, bumps the version
    _assert_step_is_right(mode, args, cache)
    assert cache["ih"][1] is first["ih"] and cache["hh"][1] is not first["hh"]
    moved = (*args[:2], w_ih.clone(), *args[3:])  # as .to() would: new storage, same values
    _assert_step_is_right(mode, moved, cache)
    assert cache["ih"][1] is not first["ih"]


def test_cache_follows_load_state_dict_and_parameters():
    module = torch.nn.GRUCell(6, 5, dtype=torch.float64)
    other = torch.nn.GRUCell(6, 5, dtype=torch.float64)
    x, h = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    cache = {}

    def step():
        with torch.no_grad():
            (h_new,), _ = cpp.cell_forward("GRU", x, (h,), module.weight_ih, module.weight_hh, module.bias_ih,
                                           module.bias_hh, cache=cache)
            return h_new, module(x, h)

    ours, theirs = step()
    assert rel_error(ours, theirs) < 1e-12
    module.load_state_dict(other.state_dict())  # copy_ into the same storage: a new version
    ours, theirs = step()
    assert rel_error(ours, theirs) < 1e-12


def test_cache_repacks_for_each_instruction_set():
    kernels = _ext.extension()
    before = kernels.cpu_instruction_set()
    args = _cell_args("LSTM", 3, 33, True, seed=15)
    cache = {}
    try:
        for isa in ISAS:
            kernels.set_cpu_instruction_set(isa)
            _assert_step_is_right("LSTM", args, cache)
            lanes = _vector_bytes(isa)
            assert cache["ih"][1].shape[-1] == lanes // 8 and cache["hh"][1].shape[-1] == lanes // 8
    finally:
        kernels.set_cpu_instruction_set(before)
    _assert_step_is_right("LSTM", args, cache)


def _vector_bytes(isa):
    return 64 if isa.startswith("avx512") else 32 if isa == "avx2" else 16


# The first variant here and the first of another vector width (the AVX-512 variants share theirs).
WIDER = ISAS[0] if ISAS else None
NARROWER = next((isa for isa in ISAS if _vector_bytes(isa) != _vector_bytes(ISAS[0])), None)


@pytest.mark.skipif(NARROWER is None, reason="needs two instruction sets of different vector widths")
def test_a_packing_for_another_vector_width_is_refused():
    kernels = _ext.extension()
    before = kernels.cpu_instruction_set()
    x, (h, c), w_ih, w_hh, b_ih, b_hh = _cell_args("LSTM", 2, 9, True, seed=16, dtype=torch.float32)
    kernels.set_cpu_instruction_set(WIDER)
    try:
        packed = kernels.cell_pack_cpu(w_ih, 4), kernels.cell_pack_cpu(w_hh, 4)
        kernels.cell_forward_cpu("LSTM", x, h, c, *packed, b_ih, b_hh, True)
        kernels.set_cpu_instruction_set(NARROWER)
        with pytest.raises(RuntimeError, match=r"packed_ih was packed for vectors of \d+ lanes, but the instruction "
                                               r"set in use \(" + NARROWER + r"\) has \d+: pack the weight again"):
            kernels.cell_forward_cpu("LSTM", x, h, c, *packed, b_ih, b_hh, True)
    finally:
        kernels.set_cpu_instruction_set(before)


def test_cell_refuses_mismatched_packings_and_arguments():
    kernels = _ext.extension()
    x, (h, c), w_ih, w_hh, b_ih, b_hh = _cell_args("LSTM", 2, 9, True, seed=17, dtype=torch.float32)
    p_ih, p_hh = kernels.cell_pack_cpu(w_ih, 4), kernels.cell_pack_cpu(w_hh, 4)
    kernels.cell_forward_cpu("LSTM", x, h, c, p_ih, p_hh, b_ih, b_hh, True)
    with pytest.raises(RuntimeError, match=r"packed_ih is a packing of shape .* but this call needs a weight of shape "
                                           r"\[36, 13\] \(4 gates of 9 units\)"):
        kernels.cell_forward_cpu("LSTM", x, h, c, p_hh, p_hh, b_ih, b_hh, True)
    with pytest.raises(RuntimeError, match=r"packed_hh is a packing of shape .* \(3 gates of 9 units\)"):
        kernels.cell_forward_cpu("GRU", x, h, None, kernels.cell_pack_cpu(w_ih[:27], 3), p_hh, None, None, True)
    with pytest.raises(RuntimeError, match=r"packed_ih must be a weight packed by cell_pack_cpu for Double"):
        kernels.cell_forward_cpu("LSTM", x.double(), h.double(), c.double(), p_ih, p_hh, None, None, True)
    with pytest.raises(RuntimeError, match=r"the LSTM cell needs the cell state c"):
        kernels.cell_forward_cpu("LSTM", x, h, None, p_ih, p_hh, b_ih, b_hh, True)
    with pytest.raises(RuntimeError, match=r"the GRU cell has no cell state: c must be None"):
        kernels.cell_forward_cpu("GRU", x, h, c, p_ih, p_hh, None, None, True)
    with pytest.raises(RuntimeError, match=r"unknown cell mode 'LSTMX'"):
        kernels.cell_forward_cpu("LSTMX", x, h, c, p_ih, p_hh, b_ih, b_hh, True)
    with pytest.raises(RuntimeError, match=r"b_hh must have shape \[36\], got \[35\]"):
        kernels.cell_forward_cpu("LSTM", x, h, c, p_ih, p_hh, b_ih, b_hh[:35].contiguous(), True)
    with pytest.raises(RuntimeError, match=r"h has dtype Double but x has Float"):
        kernels.cell_forward_cpu("LSTM", x, h.double(), c, p_ih, p_hh, b_ih, b_hh, True)
    with pytest.raises(RuntimeError, match=r"cell_pack_cpu takes a weight of shape \(gates \* hidden, depth\) with "
                                           r"gates = 4, got \[35, 9\]"):
        kernels.cell_pack_cpu(w_hh[:35], 4)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("save", [False, True])
def test_a_layer_s_step_is_the_cell_step_in_the_layer_s_shapes(mode, batch_first, save):
    kernels = _ext.extension()
    x, states, w_ih, w_hh, b_ih, b_hh = _cell_args(mode, 3, 9, True, seed=18, dtype=torch.float32)
    gates = cells.CELLS[mode].gates
    packed = kernels.cell_pack_cpu(w_ih, gates), kernels.cell_pack_cpu(w_hh, gates)
    c = states[1] if mode == "LSTM" else None
    h_new, c_new, saved = kernels.cell_forward_cpu(mode, x, states[0], c, *packed, b_ih, b_hh, save)
    x3 = x.unsqueeze(1) if batch_first else x.unsqueeze(0)
    output, h_n, c_n, saved3 = kernels.layer_step_cpu(mode, x3, states[0].unsqueeze(0),
                                                      None if c is None else c.unsqueeze(0), *packed, b_ih, b_hh,
                                                      batch_first, save)
    assert output.shape == ((3, 1, 9) if batch_first else (1, 3, 9))
    assert torch.equal(output.view(3, 9), h_new) and torch.equal(h_n, h_new.unsqueeze(0))
    assert output.data_ptr() != h_n.data_ptr()
    assert (torch.equal(c_n, c_new.unsqueeze(0)) if mode == "LSTM" else c_n.numel() == 0)
    assert torch.equal(saved3, saved)


def test_a_layer_s_step_refuses_what_is_not_one_step_in_the_layer_s_shapes():
    kernels = _ext.extension()
    x, (h, c), w_ih, w_hh, b_ih, b_hh = _cell_args("LSTM", 2, 9, True, seed=19, dtype=torch.float32)
    packed = kernels.cell_pack_cpu(w_ih, 4), kernels.cell_pack_cpu(w_hh, 4)
    with pytest.raises(RuntimeError, match=r"layer_step_cpu takes one step of x \(1, B, features\) and h \(1, B, "
                                           r"hidden\), got \[2, 1, \d+\] and \[1, 2, 9\]"):
        kernels.layer_step_cpu("LSTM", x.unsqueeze(1), h[None], c[None], *packed, b_ih, b_hh, False, False)
    with pytest.raises(RuntimeError, match=r"layer_step_cpu takes one step of x \(B, 1, features\)"):
        kernels.layer_step_cpu("LSTM", x, h, c, *packed, b_ih, b_hh, True, False)
    with pytest.raises(RuntimeError, match=r"c must have shape \[1, 2, 9\], got \[2, 9\]"):
        kernels.layer_step_cpu("LSTM", x[None], h[None], c, *packed, b_ih, b_hh, False, False)
    with pytest.raises(RuntimeError, match=r"h must be contiguous"):
        wide = torch.randn(1, 9, 2).transpose(1, 2)
        kernels.layer_step_cpu("LSTM", x[None], wide, c[None], *packed, b_ih, b_hh, False, False)
