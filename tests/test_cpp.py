"""The fused C++ CPU kernels (backend "cpp", csrc/cpu/) against the reference recurrence, op by op.

Module-level agreement with nn.LSTM/nn.GRU on every layer option is in tests/test_conformance.py; here
the kernels' own axes: every instruction-set variant this CPU can run, one and two threads, shapes that
cut the register tiles and the threads' unit blocks unevenly, ragged and empty sequences, and the
errors of the binding.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import _ext, backends, functional
from fastrnn.backends import reference, unavailable_reason

from conftest import CPU_INSTRUCTION_SETS, compare, detached, make_pair, random_inputs, rel_error, run

REASON = unavailable_reason("cpp", "cpu") or _ext.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpp backend unavailable: {REASON}")

from fastrnn.backends import cpp  # noqa: E402

def _randn(gen, *shape, scale=1.0, dtype=torch.float64):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _lstm_args(seq_len, batch, hidden, proj, lengths, reverse, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    state = proj or hidden
    return (_randn(gen, seq_len, batch, 4 * hidden, dtype=dtype), _randn(gen, batch, state, dtype=dtype),
            _randn(gen, batch, hidden, dtype=dtype), _randn(gen, 4 * hidden, state, scale=state ** -0.5, dtype=dtype),
            _randn(gen, state, hidden, scale=hidden ** -0.5, dtype=dtype) if proj else None, lengths, reverse)


def _gru_args(seq_len, batch, hidden, bias, lengths, reverse, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (_randn(gen, seq_len, batch, 3 * hidden, dtype=dtype), _randn(gen, batch, hidden, dtype=dtype),
            _randn(gen, 3 * hidden, hidden, scale=hidden ** -0.5, dtype=dtype),
            _randn(gen, hidden, dtype=dtype) if bias else None, lengths, reverse)


def _lstm_backward_args(args, outputs, seed):
    xp, h0, c0, w_hh, w_hr, lengths, reverse = args
    y, h_n, c_n, gates, c_all = outputs
    gen = torch.Generator().manual_seed(seed)
    c_prev = functional.previous_states(c_all, c0, lengths, reverse)
    grads = [_randn(gen, *t.shape, dtype=t.dtype) for t in (y, h_n, c_n)]
    return (*grads, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse)


def _gru_backward_args(args, outputs, seed):
    xp, h0, w_hh, b_hn, lengths, reverse = args
    y, h_n, saved = outputs
    gen = torch.Generator().manual_seed(seed)
    h_prev = functional.previous_states(y, h0, lengths, reverse)
    return (_randn(gen, *y.shape, dtype=y.dtype), _randn(gen, *h_n.shape, dtype=y.dtype), h_prev, w_hh, saved,
            lengths, reverse)


# Batch 13 and hidden 37 are cut unevenly by every register tile (rows) and vector width (units) the
# variants use, and into uneven unit blocks between two threads; proj 11 likewise for the state columns.
SHAPES = [dict(seq_len=9, batch=13, hidden=37), dict(seq_len=5, batch=2, hidden=3)]
LENGTHS = {"full": None, "ragged": [9, 9, 7, 7, 7, 5, 4, 4, 3, 2, 1, 1, 1], "with_empty": [5, 3, 0]}


def _lengths(name, shape):
    lengths = LENGTHS[name]
    if lengths is None:
        return None
    lengths = [min(n, shape["seq_len"]) for n in lengths][: shape["batch"]]
    lengths += [lengths[-1]] * (shape["batch"] - len(lengths))
    return torch.tensor(lengths)


def _assert_close(ours, exact, tolerance, what):
    for index, (a, b) in enumerate(zip(ours, exact)):
        if b.numel():
            assert rel_error(a, b) < tolerance, f"{what} result {index}: error {rel_error(a, b):.2e}"


@pytest.mark.parametrize("shape", SHAPES, ids=["13x37", "2x3"])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("proj", [0, 11])
def test_lstm_kernels_equal_the_reference_in_float64(isa, threads, shape, lengths, reverse, proj):
    if proj >= shape["hidden"]:
        proj = 1
    args = _lstm_args(**shape, proj=proj, lengths=_lengths(lengths, shape), reverse=reverse, seed=1)
    ours, exact = cpp.lstm_forward(*args), reference.lstm_forward(*args)
    _assert_close(ours, exact, 1e-12, "forward")
    backward = _lstm_backward_args(args, exact, seed=2)
    _assert_close(cpp.lstm_backward(*backward), reference.lstm_backward(*backward), 1e-12, "backward")


@pytest.mark.parametrize("shape", SHAPES, ids=["13x37", "2x3"])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_kernels_equal_the_reference_in_float64(isa, threads, shape, lengths, reverse, bias):
    args = _gru_args(**shape, bias=bias, lengths=_lengths(lengths, shape), reverse=reverse, seed=3)
    ours, exact = cpp.gru_forward(*args), reference.gru_forward(*args)
    _assert_close(ours, exact, 1e-12, "forward")
    backward = _gru_backward_args(args, exact, seed=4)
    _assert_close(cpp.gru_backward(*backward), reference.gru_backward(*backward), 1e-12, "backward")


def test_every_batch_size_is_tiled_whole(isa):
    """Each batch size from 1 to 20 meets a different cut into register tiles of rows (6, 4, 2, 1, and the last 8
    of a remainder of 2 as 4 + 4): every row computed, forward and backward, against the reference."""
    for batch in range(1, 21):
        args = _lstm_args(3, batch, 19, 0, None, False, seed=batch)
        exact = reference.lstm_forward(*args)
        _assert_close(cpp.lstm_forward(*args), exact, 1e-12, f"LSTM forward, batch {batch}")
        backward = _lstm_backward_args(args, exact, seed=batch)
        _assert_close(cpp.lstm_backward(*backward), reference.lstm_backward(*backward), 1e-12, f"LSTM backward, batch {batch}")
        args = _gru_args(3, batch, 19, True, None, False, seed=batch)
        exact = reference.gru_forward(*args)
        _assert_close(cpp.gru_forward(*args), exact, 1e-12, f"GRU forward, batch {batch}")
        backward = _gru_backward_args(args, exact, seed=batch)
        _assert_close(cpp.gru_backward(*backward), reference.gru_backward(*backward), 1e-12, f"GRU backward, batch {batch}")


def _assert_as_accurate_as_the_reference(cell, lengths, reverse, dtype, floor, seed):
    """Each result of the kernels in `dtype` (outputs, states, every gradient) has an error against float64
    of at most twice the reference backend's own in `dtype`, plus `floor`."""
    shape = SHAPES[0]
    if cell == "LSTM":
        make, forward, backward, make_backward, extra = _lstm_args, "lstm_forward", "lstm_backward", _lstm_backward_args, dict(proj=11)
    else:
        make, forward, backward, make_backward, extra = _gru_args, "gru_forward", "gru_backward", _gru_backward_args, dict(bias=True)

    def low(args):
        return [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in args]

    exact_args = make(**shape, **extra, lengths=lengths, reverse=reverse, seed=seed)
    low_args = low(exact_args)
    exact = getattr(reference, forward)(*exact_args)
    for a, b, e in zip(getattr(cpp, forward)(*low_args), getattr(reference, forward)(*low_args), exact):
        assert a.dtype == dtype
        assert rel_error(a, e) <= 2 * rel_error(b, e) + floor, (rel_error(a, e), rel_error(b, e))
    exact_backward = make_backward(exact_args, exact, seed=seed + 1)
    low_backward = low(exact_backward)
    exact_grads = getattr(reference, backward)(*exact_backward)
    for a, b, e in zip(getattr(cpp, backward)(*low_backward), getattr(reference, backward)(*low_backward), exact_grads):
        if e.numel():
            assert rel_error(a, e) <= 2 * rel_error(b, e) + floor, (rel_error(a, e), rel_error(b, e))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_float32_kernels_are_as_accurate_as_the_float32_reference(isa, threads, cell):
    """Each result's error against float64 is at most twice the reference backend's own in float32."""
    _assert_as_accurate_as_the_reference(cell, _lengths("ragged", SHAPES[0]), True, torch.float32, 1e-6, seed=5)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_two_layer_bidirectional_packed_module_matches_torch_on_every_variant(isa, cell):
    torch.manual_seed(8)
    ours, theirs = make_pair(cell, "cpp", input_size=6, hidden_size=21, num_layers=2, bidirectional=True)
    x, hx = random_inputs(ours, 11, 8, lengths=[8, 3, 8, 1, 5, 5, 2, 7, 6, 8, 4], seed=9)
    errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_compiled_module_runs_the_cpp_kernels_without_a_graph_break(cell):
    """Under torch.compile auto runs the cpp kernels (a custom op Dynamo traces), not the slow loop."""
    torch.manual_seed(0)
    ours, theirs = make_pair(cell, "auto", dtype=torch.float32, input_size=3, hidden_size=5, num_layers=2,
                             bidirectional=True)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x, hx = random_inputs(ours, 4, 6, dtype=torch.float32, seed=1)
    errors = compare(run(compiled, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert max(errors.values()) < 1e-5, errors
    assert ours.last_backend == "cpp"


def test_concurrent_calls_from_several_python_threads_agree_with_torch():
    """Each call has its own parallel region and barrier: calls from several threads at once don't mix."""
    torch.manual_seed(0)
    ours, theirs = make_pair("GRU", "cpp", input_size=4, hidden_size=40)
    inputs = [random_inputs(ours, 3, 5, seed=seed) for seed in range(4)]
    results = [None] * len(inputs)

    def work(index):
        with torch.no_grad():
            results[index] = ours(*inputs[index])[0]

    workers = [threading.Thread(target=work, args=(index,)) for index in range(len(inputs))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    with torch.no_grad():
        expected = [theirs(*x)[0] for x in inputs]
    assert all(r is not None and rel_error(r, e) < 1e-10 for r, e in zip(results, expected))


def test_float16_is_refused_with_a_clear_error():
    args = _lstm_args(3, 2, 4, 0, None, False, seed=0, dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"float32, float64 or bfloat16, got Half.*backend='aten'"):
        cpp.lstm_forward(*args)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("lengths", ["full", "ragged"])
def test_bfloat16_kernels_are_as_accurate_as_the_bfloat16_reference(isa, threads, cell, lengths):
    """bfloat16 storage, float32 arithmetic: each result's error against float64 is at most twice the
    reference backend's own in bfloat16 (which rounds every intermediate to bfloat16)."""
    _assert_as_accurate_as_the_reference(cell, _lengths(lengths, SHAPES[0]), False, torch.bfloat16, 1e-3, seed=7)


def test_bad_shapes_and_lengths_are_refused_with_clear_errors():
    xp, h0, c0, w_hh, w_hr, _, reverse = _lstm_args(4, 3, 5, 0, None, False, seed=0)
    with pytest.raises(RuntimeError, match=r"w_hh must have shape \[20, 5\], got \[20, 4\]"):
        cpp.lstm_forward(xp, h0, c0, w_hh[:, :4].contiguous(), None, None, reverse)
    with pytest.raises(RuntimeError, match=r"h0 must be contiguous"):
        cpp.lstm_forward(xp, h0.t().contiguous().t(), c0, w_hh, None, None, reverse)
    with pytest.raises(RuntimeError, match=r"c0 has dtype Float but xp has Double"):
        cpp.lstm_forward(xp, h0, c0.float(), w_hh, None, None, reverse)
    with pytest.raises(RuntimeError, match=r"lengths must be sorted non-increasing"):
        cpp.lstm_forward(xp, h0, c0, w_hh, None, torch.tensor([1, 4, 2]), reverse)
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[0, 4\], got 5"):
        cpp.lstm_forward(xp, h0, c0, w_hh, None, torch.tensor([5, 4, 2]), reverse)
    gru_xp, gru_h0, gru_w, b_hn, _, _ = _gru_args(4, 3, 5, True, None, False, seed=0)
    with pytest.raises(RuntimeError, match=r"b_hn must have shape \[5\], got \[4\]"):
        cpp.gru_forward(gru_xp, gru_h0, gru_w, b_hn[:4].contiguous(), None, False)


@pytest.mark.parametrize("proj", [0, 11])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_gates_written_over_xp_equal_those_in_a_buffer_of_their_own(isa, threads, proj, reverse):
    """scratch_xp: the saved gates go into xp's memory (each step reads a unit block's xp before writing its gates
    there); every output equals the run with a gates buffer of its own, bit for bit."""
    args = _lstm_args(9, 21, 37, proj, None, reverse, seed=11, dtype=torch.float32)
    own = cpp.lstm_forward(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    xp = args[0].clone()
    over = cpp.lstm_forward(xp, *args[1:], scratch_xp=True)
    assert over[3].data_ptr() == xp.data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(own, over))


def test_lstm_gates_over_xp_is_refused_with_lengths():
    xp, h0, c0, w_hh, w_hr, _, reverse = _lstm_args(4, 3, 5, 0, None, False, seed=0)
    with pytest.raises(RuntimeError, match="scratch_xp takes padded input"):
        _ext.extension().lstm_forward_cpu(xp, h0, c0, w_hh, None, torch.tensor([4, 3, 1]), reverse, scratch_xp=True)


@pytest.mark.parametrize("rows, columns", [(1, 1), (1, 40), (37, 1), (16, 16), (33, 47), (515, 260), (1031, 96)])
def test_transposed_copies_exactly(isa, threads, rows, columns):
    """The weight gradients' transposed operands: bit for bit torch's copy, on full tiles and ragged edges, for
    contiguous rows and rows of a wider matrix (a row stride past the width)."""
    kernels = _ext.extension()
    wide = torch.randn(rows, columns + 5, generator=torch.Generator().manual_seed(rows * columns))
    for matrix in (wide[:, :columns].contiguous(), wide[:, 3 : 3 + columns]):
        out = kernels.transposed_cpu([matrix])
        assert out.is_contiguous() and torch.equal(out, matrix.T.contiguous())
    pieces = [wide[:, :2], wide[:, 2:2], wide[:, 2 : 3 + columns]]  # column ranges side by side, one empty
    assert torch.equal(kernels.transposed_cpu(pieces), torch.cat(pieces, dim=1).T.contiguous())


def test_transposed_refuses_what_it_cannot_copy():
    kernels = _ext.extension()
    for bad, what in [([torch.randn(4, 5).T], r"contiguous rows, got Float \[5, 4\] with strides \[1, 5\]"),
                      ([torch.randn(4, 5, dtype=torch.float64)], "float32 CPU tensors with contiguous rows, got Double"),
                      ([torch.randn(2, 3, 4)], r"2-D float32 CPU tensors with contiguous rows, got Float \[2, 3, 4\]"),
                      ([torch.randn(4, 5), torch.randn(3, 5)], r"must have the same rows \(4\), got \[3, 5\]"),
                      ([], "at least one matrix")]:
        with pytest.raises(RuntimeError, match=what):
            kernels.transposed_cpu(bad)


@pytest.mark.parametrize("rows, depth, columns", [(1, 1, 1), (1, 64, 256), (7, 3, 17), (13, 29, 211), (370, 64, 96),
                                                  (129, 130, 67), (13, 2050, 211), (5, 130, 2000)])  # (the last two: depth blocks; W in chunks)
def test_projection_matches_float64_as_closely_as_torch(isa, threads, rows, depth, columns):
    """linear_cpu, a small layer's input projection: x w^T + bias (+ bias2) within twice torch's own float32 error
    against float64, with each bias or none, on panels packed for the call and on kept ones."""
    gen = torch.Generator().manual_seed(rows * depth + columns)
    x, w = torch.randn(rows, depth, generator=gen), torch.randn(columns, depth, generator=gen) / depth**0.5
    b1, b2 = torch.randn(columns, generator=gen), torch.randn(columns, generator=gen)
    kernels, panels = _ext.extension(), _ext.extension().CpuWeightPanels()
    for bias, bias2 in ((b1, b2), (b1, None), (None, b2), (None, None)):
        summed = sum(b for b in (bias, bias2) if b is not None)
        exact = x.double() @ w.double().T + (0 if isinstance(summed, int) else summed.double())
        torch_error = rel_error(torch.nn.functional.linear(x, w, None if isinstance(summed, int) else summed), exact)
        for kept in (None, panels, panels):
            out = kernels.linear_cpu(x, w, bias, bias2, kept)
            assert out.shape == (rows, columns) and rel_error(out, exact) <= 2 * torch_error + 1e-7
    assert panels.nbytes >= columns * depth * 4


def test_projection_repacks_a_changed_weight():
    """Kept panels follow the weight: an in-place change (an optimizer step) or another tensor repacks."""
    kernels, panels = _ext.extension(), _ext.extension().CpuWeightPanels()
    x, w = torch.randn(5, 19), torch.randn(23, 19)
    assert torch.allclose(kernels.linear_cpu(x, w, None, None, panels), x @ w.T, atol=1e-5)
    with torch.no_grad():
        w.mul_(-2)
    assert torch.allclose(kernels.linear_cpu(x, w, None, None, panels), x @ w.T, atol=1e-5)
    other = torch.randn(23, 19)
    assert torch.allclose(kernels.linear_cpu(x, other, None, None, panels), x @ other.T, atol=1e-5)


def test_projection_of_no_depth_is_the_biases():
    kernels = _ext.extension()
    b1, b2 = torch.randn(6), torch.randn(6)
    assert torch.equal(kernels.linear_cpu(torch.randn(4, 0), torch.randn(6, 0), b1, b2), (b1 + b2).expand(4, 6))
    assert torch.equal(kernels.linear_cpu(torch.randn(4, 0), torch.randn(6, 0)), torch.zeros(4, 6))
    assert kernels.linear_cpu(torch.randn(0, 3), torch.randn(6, 3), b1).shape == (0, 6)


def test_projection_refuses_what_it_cannot_multiply():
    kernels = _ext.extension()
    for args, what in [((torch.randn(4, 5).T, torch.randn(6, 4)), r"contiguous 2-D float32 CPU tensors x \(rows, depth\)"),
                       ((torch.randn(4, 5, dtype=torch.float64), torch.randn(6, 5)), "got x Double"),
                       ((torch.randn(4, 5), torch.randn(6, 4)), r"x is \(rows, 5\) but w is \[6, 4\]"),
                       ((torch.randn(4, 5), torch.randn(6, 5), torch.randn(5)), r"vectors of 6 \(w's rows\), got Float \[5\]")]:
        with pytest.raises(RuntimeError, match=what):
            kernels.linear_cpu(*args)


@pytest.mark.parametrize("cell", ["GRU", "RNN_TANH", "RNN_RELU"])
def test_bfloat16_layers_auto_runs_here_are_as_accurate_as_nn_in_bfloat16(isa, cell):
    """auto gives bfloat16 GRU and Elman layers to the cpp kernels (backends/auto.py): outputs, states and
    every gradient of a 2-layer bidirectional packed module are within twice nn's own bfloat16 error
    against float64, plus bfloat16's floor."""
    torch.manual_seed(12)
    ours, exact = make_pair(cell, "auto", input_size=6, hidden_size=37, num_layers=2, bidirectional=True)
    ours.bfloat16()
    low = copy.deepcopy(exact).bfloat16()
    x, hx = random_inputs(exact, 11, 9, lengths=[9, 3, 9, 1, 5, 5, 2, 7, 6, 9, 4], seed=13)
    x_low, hx_low = random_inputs(low, 11, 9, lengths=[9, 3, 9, 1, 5, 5, 2, 7, 6, 9, 4], seed=13, dtype=torch.bfloat16)
    assert ours.selected_backend(input=x_low) == "cpp"
    want = run(exact, *detached(x, hx))
    theirs, mine = run(low, *detached(x_low, hx_low)), run(ours, *detached(x_low, hx_low))
    for name, value in want.items():
        assert mine[name].dtype == torch.bfloat16
        assert rel_error(mine[name], value) <= 2 * rel_error(theirs[name], value) + 1e-3, name


@pytest.mark.skipif(not backends.auto.pair_products_are_fast(),
                    reason="auto keeps bfloat16 LSTMs on nn's code where vdpbf16ps is slower than fp32 FMAs (or absent)")
@pytest.mark.parametrize("batch, proj_size", [(1, 0), (8, 0), (5, 7)])
def test_bfloat16_lstm_training_auto_runs_here_is_as_accurate_as_nn_in_bfloat16(batch, proj_size):
    """Where the pair products are fast, auto trains padded bfloat16 LSTMs of up to 8 rows on the cpp kernels
    (backends/auto.py): outputs, states and every gradient of a 2-layer bidirectional module within twice nn's
    own bfloat16 error against float64, plus bfloat16's floor."""
    torch.manual_seed(14)
    ours, exact = make_pair("LSTM", "auto", input_size=6, hidden_size=37, num_layers=2, bidirectional=True,
                            proj_size=proj_size)
    ours.bfloat16()
    low = copy.deepcopy(exact).bfloat16()
    x, hx = random_inputs(exact, batch, 9, seed=15)
    x_low, hx_low = random_inputs(low, batch, 9, seed=15, dtype=torch.bfloat16)
    assert ours.selected_backend(input=x_low) == "cpp"
    want = run(exact, *detached(x, hx))
    theirs, mine = run(low, *detached(x_low, hx_low)), run(ours, *detached(x_low, hx_low))
    assert ours.last_backend == "cpp"
    for name, value in want.items():
        assert mine[name].dtype == torch.bfloat16
        assert rel_error(mine[name], value) <= 2 * rel_error(theirs[name], value) + 1e-3, name


@pytest.mark.skipif("avx512_bf16" not in CPU_INSTRUCTION_SETS, reason="this CPU has no AVX512_BF16")
@pytest.mark.parametrize("batch, hidden", [(1, 40), (16, 40), (1, 300)])
def test_auto_runs_bfloat16_on_one_of_the_variants(batch, hidden):
    """'auto' is the default, and a bfloat16 layer call under it runs exactly what one of the two AVX-512
    variants computes (which one, a model fed by this core's measured rates decides per shape)."""
    kernels = _ext.extension()
    assert kernels.cpu_instruction_set() == "auto"
    args = [a.bfloat16() if isinstance(a, torch.Tensor) else a
            for a in _gru_args(6, batch, hidden, True, None, False, seed=21)]
    by_variant = {}
    try:
        for isa in ("avx512_bf16", "avx512"):
            kernels.set_cpu_instruction_set(isa)
            by_variant[isa] = cpp.gru_forward(*args)[0]
    finally:
        kernels.set_cpu_instruction_set("auto")
    assert not torch.equal(by_variant["avx512_bf16"], by_variant["avx512"])  # they do compute differently
    y = cpp.gru_forward(*args)[0]
    assert any(torch.equal(y, other) for other in by_variant.values())


def test_explain_says_how_bfloat16_step_gemms_run_here():
    """The measured vdpbf16ps/FMA ratio is 0 exactly where the CPU has no AVX512_BF16, positive elsewhere,
    and explain() states the choice it leads to."""
    ratio = _ext.extension().cpu_pair_products_per_fma()
    assert (ratio > 0) == ("avx512_bf16" in CPU_INSTRUCTION_SETS)
    line = next(line for line in fastrnn.explain("cpu").splitlines() if "bfloat16 on the cpp kernels" in line)
    assert ("vdpbf16ps" in line) == (ratio > 0)


def test_unknown_instruction_set_is_refused():
    with pytest.raises(RuntimeError, match=r"instruction set 'sse9' is not available here; this CPU and build support: "):
        _ext.extension().set_cpu_instruction_set("sse9")


def test_module_on_cpp_backend_matches_nn_on_a_long_sequence():
    torch.manual_seed(3)
    ours, theirs = make_pair("LSTM", "cpp", input_size=4, hidden_size=19, proj_size=5, bidirectional=True)
    x, hx = random_inputs(ours, 3, 600, seed=5)
    errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("options", [dict(), dict(proj_size=3, batch_first=True), dict(bias=False)])
def test_compiled_inference_runs_torchs_lstm_where_auto_runs_it_eagerly(options):
    """A padded LSTM that auto gives to oneDNN eagerly (inference: batch > 8, weights too large to project inside
    the steps, on any number of threads) runs torch's own code
    under torch.compile as well when nothing needs a gradient (an opaque op): nn's answer (bit for bit
    where oneDNN runs it; torch's generic code, for proj_size, differs in the last bits between the
    traced and the eager call). With gradients it runs the cpp kernels, which have a backward."""
    torch.manual_seed(0)
    ours, theirs = make_pair("LSTM", "auto", dtype=torch.float32, input_size=3, hidden_size=400, num_layers=2,
                             bidirectional=True, **options)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x, hx = random_inputs(ours, 33, 6, dtype=torch.float32, seed=1)
    with torch.no_grad():
        got, want = compiled(x, hx), theirs(x, hx)
    assert ours.last_backend == "aten"
    tolerance = 1e-6 if options.get("proj_size") else 0.0
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        assert (a - b).abs().max().item() <= tolerance
    with torch.no_grad():
        got, want = compiled(x), theirs(x)  # no initial states
    assert (got[0] - want[0]).abs().max().item() <= tolerance
    errors = compare(run(compiled, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert ours.last_backend == "cpp" and max(errors.values()) < 1e-5, errors


def test_torch_rnn_inference_op_passes_opcheck():
    torch.manual_seed(0)
    for cell, states in (("LSTM", [torch.zeros(2, 3, 4), torch.randn(2, 3, 5)]), ("GRU", [torch.randn(2, 3, 5)])):
        module = (nn.LSTM(6, 5, bidirectional=True, proj_size=4) if cell == "LSTM" else nn.GRU(6, 5, bidirectional=True))
        weights = [w.detach() for w in module._flat_weights]
        torch.library.opcheck(functional.torch_rnn_inference,
                              (torch.randn(7, 3, 6), states, weights, cell, True, 1, True, False))
