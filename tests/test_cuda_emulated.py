"""The CUDA kernels (csrc/cuda/) against the reference recurrence and float64, run on the CPU.

No GPU is needed: the same .cu sources are compiled by g++ against the project's SIMT emulator
(csrc/emulation/simt.h: one OS thread per CUDA thread, block and grid barriers, dynamic shared memory,
wmma as warp-collective operations) together with the binding's CUDA section, into an extension whose
*_cuda functions take CPU tensors (tests/simt_build.py). The emulator fails a kernel that reaches a
barrier divergently, deadlocks, or touches shared memory out of range or misaligned; the binding fills
every output with NaN before a kernel runs, so an element it does not write fails the comparison.

Every kernel, both launch strategies (persistent with 1 to 4 CTAs, stepwise), every dtype (float64,
float32 exact and on TF32, float16, bfloat16), projections, biases, ragged lengths (empty sequences
included), reverse, and sizes that cut the tiles unevenly; then the layer modules end to end with the
backend swapped for the emulated kernels. Sanitizer runs: tests/test_cuda_sanitizers.py; the nvcc
build and its resource report: tests/test_cuda_compiles.py; the same checks on a GPU: tests/test_cuda_gpu.py.
"""

from __future__ import annotations

import re

import pytest
import torch

import fastrnn
from fastrnn import _ext, backends
from fastrnn.backends import cuda as cuda_backend
from fastrnn.backends import reference

import simt_build
from conftest import compare, detached, make_pair, random_inputs, rel_error, run
from cuda_checks import DTYPES, _cast, _randn
from cuda_checks import check_gru as _check_gru
from cuda_checks import check_lstm as _check_lstm
from cuda_checks import check_cell as _check_cell
from cuda_checks import check_rnn as _check_rnn

REASON = simt_build.skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"SIMT emulator unavailable: {REASON}")

# Launch plans: (strategy, ctas); 64 threads (2 warps) per CTA keep the emulated thread count small.
PLANS = {"persistent-1cta": dict(strategy=1, ctas=1), "persistent-3ctas": dict(strategy=1, ctas=3),
         "stepwise": dict(strategy=2)}


@pytest.fixture(scope="module")
def emulated():
    return simt_build.extension()


def check_lstm(*args, **knobs):
    knobs.setdefault("threads", 64)  # 2 warps per CTA keep the emulated thread count small
    _check_lstm(*args, **knobs)


def check_gru(*args, **knobs):
    knobs.setdefault("threads", 64)
    _check_gru(*args, **knobs)


def check_rnn(*args, **knobs):
    knobs.setdefault("threads", 64)
    _check_rnn(*args, **knobs)


def check_cell(*args, **knobs):
    knobs.setdefault("threads", 64)
    _check_cell(*args, **knobs)


# --- every kernel, dtype, plan and option, on tiny awkward shapes ----------------------------------


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("proj", [0, 3])
@pytest.mark.parametrize("reverse,ragged", [(False, False), (True, True), (False, True)])
def test_lstm_kernels_match_reference(emulated, plan, dtype, proj, reverse, ragged):
    check_lstm(emulated, dtype, seq_len=6, batch=5, hidden=7, proj=proj, reverse=reverse, ragged=ragged, **PLANS[plan])


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reverse,ragged", [(False, False), (True, True), (False, True)])
def test_gru_kernels_match_reference(emulated, plan, dtype, bias, reverse, ragged):
    check_gru(emulated, dtype, seq_len=6, batch=5, hidden=7, bias=bias, reverse=reverse, ragged=ragged, **PLANS[plan])


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu,reverse,ragged", [(False, False, False), (True, True, True), (False, True, True),
                                                 (True, False, True)], ids=["tanh", "relu-reverse-ragged",
                                                                           "tanh-reverse-ragged", "relu-ragged"])
def test_rnn_kernels_match_reference(emulated, plan, dtype, relu, reverse, ragged):
    check_rnn(emulated, dtype, seq_len=6, batch=5, hidden=7, relu=relu, reverse=reverse, ragged=ragged, **PLANS[plan])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("knobs", [
    dict(strategy=1, ctas=2, threads=32, row_tile=16, k_chunk=16),   # one warp, 3 row tiles, several k chunks
    dict(strategy=1, ctas=4, threads=128, row_tile=32, k_chunk=32),  # idle warps split the reduction
    dict(strategy=2, threads=96, row_tile=16, k_chunk=16),           # stepwise: 3 row blocks, streamed W chunks
], ids=["persistent-2ctas-1warp", "persistent-4ctas-4warps", "stepwise-3warps"])
def test_tiles_that_do_not_divide(emulated, dtype, knobs):
    """Batch 37 and hidden 19 (projection 11) cut every tile unevenly: several row tiles, reduction chunks
    with a ragged last one, CTAs owning slices of different widths, split reductions."""
    check_lstm(emulated, dtype, seq_len=4, batch=37, hidden=19, proj=11, reverse=True, ragged=True, seed=1, **knobs)
    check_gru(emulated, dtype, seq_len=4, batch=37, hidden=19, bias=True, reverse=False, ragged=True, seed=2, **knobs)
    check_rnn(emulated, dtype, seq_len=4, batch=37, hidden=19, relu=True, reverse=True, ragged=True, seed=3, **knobs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,input_size", [(16, 16), (10, 6)], ids=["16-byte", "8-and-4-byte"])
def test_staging_in_every_copy_width(emulated, dtype, hidden, input_size):
    """Widths whose rows the A staging copies in 16-byte vectors (hidden 16 in every dtype; the cell's x | h
    boundary at 16 elements) or in 8- and 4-byte ones (hidden 10: 20 or 40 bytes a row); hidden 7 and
    19 in the tests above take 4-byte copies in float32 and element by element in the 16-bit types. Two
    row tiles (batch 20), a k chunk of 16 (several chunks), both strategies."""
    for strategy in (1, 2):
        knobs = dict(strategy=strategy, ctas=2, row_tile=16, k_chunk=16)
        check_lstm(emulated, dtype, seq_len=3, batch=20, hidden=hidden, proj=0, reverse=False, ragged=True, seed=7, **knobs)
        check_gru(emulated, dtype, seq_len=3, batch=20, hidden=hidden, bias=True, reverse=True, ragged=True, seed=8, **knobs)
        check_rnn(emulated, dtype, seq_len=3, batch=20, hidden=hidden, relu=False, reverse=False, ragged=False, seed=9,
                  **knobs)
    for mode in CELL_MODES:
        check_cell(emulated, mode, dtype, batch=20, input_size=input_size, hidden=hidden, bias=True, seed=10,
                   row_tile=16, k_chunk=16)


def test_more_ctas_than_units(emulated):
    """4 CTAs for 3 units: the idle CTA still meets the others at every grid barrier."""
    check_lstm(emulated, torch.float64, seq_len=5, batch=3, hidden=3, proj=2, reverse=False, ragged=True, strategy=1, ctas=4)
    check_gru(emulated, torch.float64, seq_len=5, batch=3, hidden=3, bias=True, reverse=True, ragged=True, strategy=1, ctas=4)
    check_rnn(emulated, torch.float64, seq_len=5, batch=3, hidden=3, relu=False, reverse=False, ragged=True, strategy=1,
              ctas=4)


def test_batch_of_one_and_single_step(emulated):
    check_lstm(emulated, torch.float32, seq_len=1, batch=1, hidden=1, proj=0, reverse=False, ragged=False, strategy=1, ctas=1)
    check_gru(emulated, torch.float32, seq_len=1, batch=1, hidden=1, bias=True, reverse=True, ragged=False, strategy=2)
    check_rnn(emulated, torch.float32, seq_len=1, batch=1, hidden=1, relu=True, reverse=False, ragged=False, strategy=1,
              ctas=1)
    check_rnn(emulated, torch.float16, seq_len=1, batch=1, hidden=1, relu=False, reverse=True, ragged=False, strategy=2)


def test_rnn_on_tf32(emulated):
    """float32 with allow_tf32: the Elman kernels' products on TF32, against the TF32-rounded reference."""
    for strategy in (1, 2):
        check_rnn(emulated, torch.float32, seq_len=5, batch=6, hidden=20, relu=False, reverse=False, ragged=True,
                  seed=4, strategy=strategy, ctas=2, allow_tf32=True)


@pytest.mark.parametrize("plan", PLANS)
def test_inference_call_keeps_nothing_for_a_backward(emulated, plan):
    """save=False: the same outputs and final states, bit for bit, and no gates, cell states or saved
    activations written or returned."""
    gen = torch.Generator().manual_seed(8)
    lengths = torch.tensor([5, 3, 0])
    knobs = dict(threads=64, **PLANS[plan])
    lstm = (_randn(gen, 5, 3, 28), _randn(gen, 3, 4), _randn(gen, 3, 7), _randn(gen, 28, 4), _randn(gen, 4, 7))
    kept = emulated.lstm_forward_cuda(*lstm, lengths, True, True, **knobs)
    light = emulated.lstm_forward_cuda(*lstm, lengths, True, False, **knobs)
    assert all(torch.equal(a, b) for a, b in zip(kept[:3], light[:3]))
    assert light[3].numel() == light[4].numel() == 0 and kept[3].numel() > 0
    gru = (_randn(gen, 5, 3, 21), _randn(gen, 3, 7), _randn(gen, 21, 7), _randn(gen, 7))
    kept = emulated.gru_forward_cuda(*gru, lengths, False, True, **knobs)
    light = emulated.gru_forward_cuda(*gru, lengths, False, False, **knobs)
    assert torch.equal(kept[0], light[0]) and torch.equal(kept[1], light[1]) and light[2].numel() == 0
    rnn = (_randn(gen, 5, 3, 7), _randn(gen, 3, 7), _randn(gen, 7, 7))
    kept = emulated.rnn_forward_cuda(*rnn, True, lengths, True, True, **knobs)
    light = emulated.rnn_forward_cuda(*rnn, True, lengths, True, False, **knobs)
    assert len(light) == 2 and torch.equal(kept[0], light[0]) and torch.equal(kept[1], light[1])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_empty_problems(emulated, cell):
    """T = 0 or B = 0: nothing to launch; the final states are the initial ones."""
    for seq_len, batch in [(0, 3), (4, 0)]:
        gen = torch.Generator().manual_seed(3)
        if cell == "lstm":
            args = (_randn(gen, seq_len, batch, 8), _randn(gen, batch, 2), _randn(gen, batch, 2), _randn(gen, 8, 2))
            y, h_n, c_n, gates, c_all = emulated.lstm_forward_cuda(*args, None, None, False)
            assert y.shape == (seq_len, batch, 2) and torch.equal(h_n, args[1]) and torch.equal(c_n, args[2])
        elif cell == "gru":
            args = (_randn(gen, seq_len, batch, 6), _randn(gen, batch, 2), _randn(gen, 6, 2))
            y, h_n, saved = emulated.gru_forward_cuda(*args, None, None, False)
            assert saved.shape == (seq_len, batch, 8) and torch.equal(h_n, args[1])
        else:
            args = (_randn(gen, seq_len, batch, 2), _randn(gen, batch, 2), _randn(gen, 2, 2))
            y, h_n = emulated.rnn_forward_cuda(*args, False, None, False)
            assert y.shape == (seq_len, batch, 2) and torch.equal(h_n, args[1])
            dxp, dh0 = emulated.rnn_backward_cuda(y, h_n, y, args[2], False, None, False)
            assert dxp.shape == (seq_len, batch, 2) and torch.equal(dh0, h_n)


# --- the fused cell step -------------------------------------------------------------------------------

CELL_MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", CELL_MODES)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_step_matches_reference(emulated, mode, dtype, bias):
    check_cell(emulated, mode, dtype, batch=5, input_size=6, hidden=7, bias=bias, seed=len(mode))


@pytest.mark.parametrize("mode", CELL_MODES)
@pytest.mark.parametrize("knobs", [dict(threads=32, row_tile=16, k_chunk=16), dict(threads=96, allow_tf32=True)],
                         ids=["1warp-16x16", "3warps-tf32"])
def test_cell_step_tiles_that_do_not_divide(emulated, mode, knobs):
    """Batch 37, input 21, hidden 19: several row blocks and unit slices, the x|h boundary inside a reduction
    chunk, a ragged last chunk; float32 exact and on TF32."""
    check_cell(emulated, mode, torch.float32, batch=37, input_size=21, hidden=19, bias=True, seed=5, **knobs)


def test_cell_step_of_one_row_and_one_unit(emulated):
    for mode in CELL_MODES:
        check_cell(emulated, mode, torch.float64, batch=1, input_size=1, hidden=1, bias=True)


@pytest.mark.parametrize("mode", CELL_MODES)
def test_cell_step_without_save_keeps_nothing(emulated, mode):
    gen = torch.Generator().manual_seed(9)
    gates = 4 if mode == "LSTM" else 3 if mode == "GRU" else 1
    x, h, c = _randn(gen, 3, 4), _randn(gen, 3, 5), _randn(gen, 3, 5) if mode == "LSTM" else None
    weights = (_randn(gen, gates * 5, 4), _randn(gen, gates * 5, 5), _randn(gen, gates * 5), _randn(gen, gates * 5))
    kept = emulated.cell_forward_cuda(mode, x, h, c, *weights, True, threads=64)
    light = emulated.cell_forward_cuda(mode, x, h, c, *weights, False, threads=64)
    assert torch.equal(kept[0], light[0]) and torch.equal(kept[1], light[1]) and light[2].shape == (0,)
    assert kept[2].shape == ((3, 20) if gates > 1 else (0,))


def test_cell_step_of_an_empty_batch_or_no_units(emulated):
    """B = 0 or H = 0: nothing to launch, outputs of the right (empty) shapes."""
    h_new, c_new, saved = emulated.cell_forward_cuda("GRU", torch.randn(0, 4), torch.randn(0, 5), None,
                                                     torch.randn(15, 4), torch.randn(15, 5), None, None)
    assert h_new.shape == (0, 5) and saved.shape == (0, 20) and c_new.shape == (0,)
    h_new, c_new, saved = emulated.cell_forward_cuda("LSTM", torch.randn(3, 4), torch.randn(3, 0), torch.randn(3, 0),
                                                     torch.randn(0, 4), torch.randn(0, 0), None, None)
    assert h_new.shape == c_new.shape == (3, 0) and saved.shape == (3, 0)
    dgx, dgh, direct, dc_prev = emulated.cell_backward_cuda("RNN_TANH", torch.randn(0, 5), None, torch.randn(0, 5),
                                                            None, torch.randn(0, 5), None, torch.randn(0))
    assert dgx.shape == (0, 5) and direct.shape == dc_prev.shape == (0,)


@pytest.mark.parametrize("call,message", [
    (lambda m: m.cell_forward_cuda("LSTMX", *_cell_inputs()), "mode must be LSTM, GRU, RNN_TANH or RNN_RELU"),
    (lambda m: m.cell_forward_cuda("LSTM", *_cell_inputs()[:2], None, *_cell_inputs()[3:]), "needs the cell state c"),
    (lambda m: m.cell_forward_cuda("GRU", *_cell_inputs()), "has no cell state"),
    (lambda m: m.cell_forward_cuda("LSTM", *_cell_inputs()[:3], torch.randn(8, 3, dtype=torch.float64),
                                   *_cell_inputs()[4:]), r"w_ih must have shape \[8, 4\]"),
    (lambda m: m.cell_forward_cuda("LSTM", *_cell_inputs()[:6], None), "b_ih and b_hh come together"),
    (lambda m: m.cell_forward_cuda("LSTM", _cell_inputs()[0][0], *_cell_inputs()[1:]), "x must be 2-D"),
])
def test_cell_step_bad_inputs_raise_clear_errors(emulated, call, message):
    with pytest.raises(RuntimeError, match=message):
        call(emulated)


def _cell_inputs():
    """An LSTM cell's arguments, B=2, I=4, H=2: x, h, c, w_ih, w_hh, b_ih, b_hh."""
    gen = torch.Generator().manual_seed(1)
    return [_randn(gen, 2, 4), _randn(gen, 2, 2), _randn(gen, 2, 2), _randn(gen, 8, 4), _randn(gen, 8, 2),
            _randn(gen, 8), _randn(gen, 8)]


# --- TF32 and low precision over many steps ----------------------------------------------------------


def test_float32_runs_on_tf32_when_allowed(emulated):
    """With allow_tf32 the float32 products are rounded to TF32 (10-bit mantissa): the error is larger than
    the exact path's, and smaller than a bfloat16 (7-bit) computation's."""
    gen = torch.Generator().manual_seed(4)
    xp, h0, c0, w_hh = (_randn(gen, 8, 6, 64), _randn(gen, 6, 16), _randn(gen, 6, 16), _randn(gen, 64, 16, scale=0.25))
    exact = reference.lstm_forward(xp, h0, c0, w_hh, None, None, False)[0]
    args = _cast((xp, h0, c0, w_hh), torch.float32)
    tf32 = emulated.lstm_forward_cuda(*args, None, None, False, allow_tf32=True, threads=64)[0]
    ieee = emulated.lstm_forward_cuda(*args, None, None, False, allow_tf32=False, threads=64)[0]
    bf16 = reference.lstm_forward(*_cast((xp, h0, c0, w_hh), torch.bfloat16), None, None, False)[0]
    assert rel_error(ieee, exact) < rel_error(tf32, exact) < rel_error(bf16, exact)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_teacher_forced(emulated, dtype):
    """Over 24 steps feedback amplifies rounding, so each step is judged on its own: started from the
    kernel's own previous state, the float64 step and the kernel's step differ by at most twice what the
    reference's own step in `dtype` does (plus the rounding of the carried state)."""
    seq_len, batch, hidden = 24, 4, 24
    gen = torch.Generator().manual_seed(5)
    xp, h0, c0 = _randn(gen, seq_len, batch, 4 * hidden), _randn(gen, batch, hidden), _randn(gen, batch, hidden)
    w_hh = _randn(gen, 4 * hidden, hidden, scale=hidden ** -0.5)
    low = _cast((xp, h0, c0, w_hh), dtype)
    y, h_n, c_n, gates, c_all = emulated.lstm_forward_cuda(*low, None, None, False, strategy=1, ctas=3, threads=64)
    h_prev, c_prev = low[1], low[2]
    for t in range(seq_len):
        step = (xp[t:t + 1], h_prev.double(), c_prev.double(), w_hh)
        exact = reference.lstm_forward(*step, None, None, False)
        mine = reference.lstm_forward(*_cast(step, dtype), None, None, False)
        for ours, theirs, truth, name in [(y[t], mine[0][0], exact[0][0], "h"), (c_all[t], mine[4][0], exact[4][0], "c")]:
            bound = 2 * rel_error(theirs, truth) + torch.finfo(dtype).eps
            assert rel_error(ours, truth) <= bound, (t, name, rel_error(ours, truth), bound)
        h_prev, c_prev = y[t], c_all[t]


# --- the layer modules end to end, on the emulated kernels --------------------------------------------


@pytest.fixture
def cuda_backend_on_cpu(monkeypatch, emulated):
    """backend="cuda" runs the emulated kernels on CPU tensors (the registry is told it may)."""
    real = backends.unavailable_reason
    monkeypatch.setattr(backends, "unavailable_reason",
                        lambda name, device: None if name == "cuda" else real(name, device))
    monkeypatch.setattr(_ext, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(cuda_backend, "_kernels", lambda: emulated)
    with cuda_backend.forced(threads=64, ctas=2):
        yield


@pytest.mark.parametrize("cell,config", [
    ("LSTM", dict(input_size=5, hidden_size=7, proj_size=3, num_layers=2, bidirectional=True)),
    ("LSTM", dict(input_size=4, hidden_size=9, num_layers=2, batch_first=True)),
    ("GRU", dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(input_size=3, hidden_size=6, bias=False, bidirectional=True)),
    ("RNN_TANH", dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True, batch_first=True)),
    ("RNN_RELU", dict(input_size=3, hidden_size=6, bias=False, num_layers=2)),
])
@pytest.mark.parametrize("strategy", ["persistent", "stepwise"])
def test_modules_match_torch(cuda_backend_on_cpu, cell, config, strategy):
    """Stacked, both directions, packed unsorted with an initial state: output, final states and every
    gradient against nn.LSTM / nn.GRU / nn.RNN, in float64."""
    torch.manual_seed(2)
    ours, theirs = make_pair(cell, "cuda", "cpu", torch.float64, **config)
    x, hx = random_inputs(ours, 4, 9, lengths=[7, 9, 1, 4], seed=2)
    with cuda_backend.forced(strategy, threads=64, ctas=2):
        errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert ours.last_backend == "cuda"
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("mode", CELL_MODES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_modules_match_torch(cuda_backend_on_cpu, mode, unbatched):
    """fastrnn.LSTMCell / GRUCell / RNNCell on backend="cuda", a few decoder steps with autograd: outputs and
    every gradient against nn's cells, in float64."""
    torch.manual_seed(4)
    kind = {"LSTM": "LSTMCell", "GRU": "GRUCell"}.get(mode, "RNNCell")
    extra = {} if kind != "RNNCell" else {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"}
    ours = getattr(fastrnn, kind)(5, 7, backend="cuda", dtype=torch.float64, **extra)
    theirs = getattr(torch.nn, kind)(5, 7, dtype=torch.float64, **extra)
    theirs.load_state_dict(ours.state_dict())
    xs = torch.randn(3, 5, dtype=torch.float64) if unbatched else torch.randn(3, 4, 5, dtype=torch.float64)

    def unroll(cell):
        state, outputs = None, []
        for x in xs:
            state = cell(x, state)
            outputs.append(state[0] if mode == "LSTM" else state)
        loss = sum((o * (i + 1)).sum() for i, o in enumerate(outputs)) + (state[1].sum() if mode == "LSTM" else 0)
        grads = torch.autograd.grad(loss, list(cell.parameters()))
        return [o.detach() for o in outputs], grads

    (ours_out, ours_grads), (their_out, their_grads) = unroll(ours), unroll(theirs)
    assert ours.last_backend == "cuda"
    for a, b in zip(ours_out + list(ours_grads), their_out + list(their_grads)):
        assert rel_error(a, b) < 1e-12


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_modules_under_no_grad_match_torch(cuda_backend_on_cpu, cell):
    """Inference (no autograd): the layers call the kernels with save=False."""
    torch.manual_seed(3)
    ours, theirs = make_pair(cell, "cuda", "cpu", torch.float64, input_size=4, hidden_size=6, num_layers=2,
                             bidirectional=True, **({"proj_size": 3} if cell == "LSTM" else {}))
    x, hx = random_inputs(ours, 3, 7, lengths=[7, 2, 5], seed=4)
    with torch.no_grad():
        out, states = ours(x, hx)
        expected, expected_states = theirs(x, hx)
    assert ours.last_backend == "cuda"
    assert rel_error(out.data, expected.data) < 1e-10
    for mine, reference_state in zip(states if cell == "LSTM" else [states], expected_states if cell == "LSTM" else [expected_states]):
        assert rel_error(mine, reference_state) < 1e-10


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_modules_in_float32_bounded_by_torch(cuda_backend_on_cpu, monkeypatch, cell):
    """Exact float32 (TF32 off, as torch's CPU code is): error against float64 at most about torch's own."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(7)
    config = dict(input_size=5, hidden_size=11, num_layers=2, bidirectional=True)
    ours, theirs = make_pair(cell, "cuda", "cpu", torch.float32, **config)
    oracle = make_pair(cell, "reference", "cpu", torch.float64, **config)[1]
    oracle.load_state_dict(theirs.state_dict())
    x, hx = random_inputs(oracle, 3, 8, seed=11)
    exact = run(oracle, *detached(x, hx))
    x32, hx32 = x.float(), hx.float() if cell == "GRU" else tuple(h.float() for h in hx)
    ours_err = compare(run(ours, *detached(x32, hx32)), exact)
    torch_err = compare(run(theirs, *detached(x32, hx32)), exact)
    for name in exact:
        assert ours_err[name] <= 2 * torch_err[name] + 1e-6, (name, ours_err[name], torch_err[name])


# --- plans ---------------------------------------------------------------------------------------------


# The shapes DESIGN.md section 3 measured cuDNN on (single layer, T = 256): the persistent kernels must fit
# an H100 (the emulator's modelled device: 132 SMs, 227 KB of shared memory per CTA). In float32 the LSTM
# backward's slice of W_hh (4H rows by a 16-column tile) outgrows shared memory at H = 1024: that one runs
# stepwise, and must say why.
ANCHORS = [(cell, dtype, batch, hidden) for cell in ("lstm", "gru", "rnn") for dtype in ("float16", "bfloat16", "float32")
           for batch in (16, 64) for hidden in (256, 512, 1024)]


@pytest.mark.parametrize("cell,dtype,batch,hidden", ANCHORS)
def test_anchor_shapes_run_persistent_on_an_h100(emulated, cell, dtype, batch, hidden):
    for index, kernel in enumerate(cuda_backend.KERNELS):
        if not kernel.startswith(cell):
            continue
        plan = emulated.cuda_describe_plan(index, 256, batch, hidden, hidden, False, dtype)
        print(f"{kernel} {dtype} B={batch} H={hidden}: {plan}")
        if (kernel, dtype, hidden) == ("lstm_backward", "float32", 1024):
            assert plan.startswith("stepwise") and "not persistent: the resident slice of W needs" in plan, plan
            continue
        assert plan.startswith("persistent"), plan
        ctas = int(plan.split("launch of ")[1].split(" CTAs")[0])
        assert ctas <= 132, plan
        _check_cost_model(plan, "barrier", 1.1)  # no projection: one phase kind, one grid barrier per step


def _check_cost_model(plan: str, sync: str, sync_us: float) -> None:
    """The plan ends with the cost model's step (csrc/README.md): its total is the sum of its parts and its
    synchronisation is the grid barriers (1.1 us each) or the launches (2.5 us each) of a step's phases."""
    found = re.search(r"expected ([\d.]+) us per step on an H100/H200 \((barrier|launch) ([\d.]+), staging ([\d.]+), "
                      r"MMA ([\d.]+), epilogue ([\d.]+), L2 traffic ([\d.]+): a model, not a measurement\)", plan)
    assert found and found.group(2) == sync, plan
    total, *parts = (float(found.group(i)) for i in (1, 3, 4, 5, 6, 7))
    assert abs(total - sum(parts)) <= 0.26, plan  # each figure rounded to 0.1
    assert parts[0] == pytest.approx(sync_us), plan


def test_shapes_too_large_for_shared_memory_go_stepwise(emulated):
    plan = emulated.cuda_describe_plan(0, 16, 64, 8192, 8192, False, "float64")
    assert plan.startswith("stepwise") and "not persistent" in plan and "shared memory" in plan, plan
    _check_cost_model(plan, "launch", 2.5)
    projected = emulated.cuda_describe_plan(0, 16, 16, 256, 128, True, "float16")  # units, then the projection
    assert projected.startswith("persistent"), projected
    _check_cost_model(projected, "barrier", 2.2)
    with pytest.raises(RuntimeError, match="persistent lstm forward kernel cannot run"):
        emulated.cuda_describe_plan(0, 16, 64, 8192, 8192, False, "float64", strategy=1)
    with pytest.raises(RuntimeError, match="cannot all be resident"):
        emulated.cuda_describe_plan(2, 16, 4, 512, 512, False, "float32", strategy=1, ctas=5000)


def test_explain_names_the_plan_of_the_latest_call(cuda_backend_on_cpu):
    model = fastrnn.GRU(3, 5, backend="cuda", dtype=torch.float64)
    model(torch.randn(4, 2, 3, dtype=torch.float64))
    lines = "\n".join(cuda_backend.explain_lines())
    assert "gru_forward T=4 B=2 H=5" in lines and "persistent: one cooperative launch of 2 CTAs x 64 threads" in lines


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel,args,message", [
    ("rnn_forward_cuda", lambda: (torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64),
                                  torch.randn(4, 5, dtype=torch.float64)), r"w_hh must have shape \[4, 4\]"),
    ("rnn_forward_cuda", lambda: (torch.randn(3, 2, 5, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64),
                                  torch.randn(4, 4, dtype=torch.float64)), r"xp must have shape \[3, 2, 4\]"),
    ("rnn_backward_cuda", lambda: (torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64),
                                   torch.randn(3, 2, 4), torch.randn(4, 4, dtype=torch.float64)),
     "y has dtype Float but the other inputs have Double"),
])
def test_rnn_bad_inputs_raise_clear_errors(emulated, kernel, args, message):
    with pytest.raises(RuntimeError, match=message):
        getattr(emulated, kernel)(*args(), False, None, False)


def _lstm_inputs(dtype=torch.float64):
    gen = torch.Generator().manual_seed(6)
    return [_randn(gen, 3, 2, 12).to(dtype), _randn(gen, 2, 3).to(dtype), _randn(gen, 2, 3).to(dtype),
            _randn(gen, 12, 3).to(dtype)]


@pytest.mark.parametrize("change,message", [
    (lambda a: a.__setitem__(0, a[0].long()), "float64, float32, float16 or bfloat16"),
    (lambda a: a.__setitem__(1, a[1].float()), "has dtype Float but the other inputs have Double"),
    (lambda a: a.__setitem__(2, a[2][:1]), r"c0 must have shape \[2, 3\]"),
    (lambda a: a.__setitem__(3, a[3].t().contiguous().t()), "w_hh must be contiguous"),
    (lambda a: a.__setitem__(0, a[0][0]), "xp must be 3-D"),
])
def test_bad_inputs_raise_clear_errors(emulated, change, message):
    args = _lstm_inputs()
    change(args)
    with pytest.raises(RuntimeError, match=message):
        emulated.lstm_forward_cuda(*args, None, None, False)


@pytest.mark.parametrize("lengths,message", [
    (torch.tensor([1, 3]), "sorted non-increasing"),
    (torch.tensor([4, 1]), r"lie in \[0, 3\]"),
    (torch.tensor([3, 1], dtype=torch.int32), "CPU int64 tensor"),
])
def test_bad_lengths_raise(emulated, lengths, message):
    with pytest.raises(RuntimeError, match=message):
        emulated.lstm_forward_cuda(*_lstm_inputs(), None, lengths, False)


@pytest.mark.parametrize("knobs,message", [
    (dict(threads=48), "threads must be a multiple of 32"),
    (dict(threads=512), "threads must be a multiple of 32 up to 256"),
    (dict(k_chunk=8), "multiples of 16"),
    (dict(strategy=3), "strategy must be"),
])
def test_bad_launch_options_raise(emulated, knobs, message):
    with pytest.raises((RuntimeError, ValueError), match=message):
        emulated.lstm_forward_cuda(*_lstm_inputs(), None, None, False, **knobs)
