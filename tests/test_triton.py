"""The Triton kernels against the reference recurrence and float64, op by op.

Without a GPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1) on tiny shapes.
The full shape grid, bf16, the no-recompile check and the 4096-step run need the GPU and skip here.
(Module-level agreement with nn.LSTM/nn.GRU/nn.RNN on every layer option: tests/test_conformance.py.)
"""

from __future__ import annotations

import os

import pytest
import torch

from fastrnn import functional
from fastrnn.backends import reference, unavailable_reason

from conftest import CUDA_SKIP, GPU_GRID, compare, detached, make_pair, random_inputs, rel_error, run
from tolerance import assert_bounded, precisions, reference as in_kernel_arithmetic, tf32_switch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if unavailable_reason("triton", DEVICE) is not None:
    pytest.skip(f"triton backend unavailable: {unavailable_reason('triton', DEVICE)}", allow_module_level=True)

from fastrnn.backends import triton as triton_backend  # noqa: E402
from fastrnn.triton import plans  # noqa: E402


@pytest.fixture(params=plans.STRATEGIES)
def strategy(request):
    """Run the test under each launch strategy, with its default tiles."""
    with plans.forced(request.param):
        yield request.param

BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    INTERPRETED, reason="Triton's interpreter computes bf16 tl.dot wrongly (a 16x16 product comes out ~1e10 off); "
                        "bf16 is checked on the GPU"))
# float32 twice: TF32 explicitly off and on (the interpreter ignores the precision and computes IEEE
# float32 either way; on a GPU the tf32 run uses TF32 tensor cores and is held to the TF32 bound).
PRECISIONS = precisions([torch.float64, torch.float32, torch.float16, BF16])


def _seeded_randn(seed):
    """randn(*shape, scale=1) drawing float64 values from one seeded generator, on DEVICE."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE)

    return randn


def _lstm_case(seq_len, batch, hidden, proj, seed):
    randn, state = _seeded_randn(seed), proj or hidden
    return (randn(seq_len, batch, 4 * hidden), randn(batch, state), randn(batch, hidden),
            randn(4 * hidden, state, scale=state ** -0.5), randn(state, hidden, scale=hidden ** -0.5) if proj else None)


def _gru_case(seq_len, batch, hidden, bias, seed):
    randn = _seeded_randn(seed)
    return (randn(seq_len, batch, 3 * hidden), randn(batch, hidden), randn(3 * hidden, hidden, scale=hidden ** -0.5),
            randn(hidden) if bias else None)


def _rnn_case(seq_len, batch, hidden, seed):
    randn = _seeded_randn(seed)
    return randn(seq_len, batch, hidden), randn(batch, hidden), randn(hidden, hidden, scale=hidden ** -0.5)


def _cast(tensors, dtype):
    return [None if t is None else t.to(dtype) for t in tensors]


def _lengths(batch, seq_len, ragged, seed):
    if not ragged:
        return None
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen)
    lengths[0] = seq_len
    return lengths.sort(descending=True).values


def check_lstm(dtype, seq_len, batch, hidden, proj, reverse, ragged, seed=0, tf32=False):
    """The LSTM kernels against the reference, within tests/tolerance.py's bound; `tf32` sets the switch the
    kernels follow for float32 (and then the reference runs on TF32-rounded operands)."""
    with tf32_switch(tf32):
        _check_lstm(dtype, seq_len, batch, hidden, proj, reverse, ragged, seed, tf32 and dtype == torch.float32)


def _check_lstm(dtype, seq_len, batch, hidden, proj, reverse, ragged, seed, tf32):
    xp, h0, c0, w_hh, w_hr = _lstm_case(seq_len, batch, hidden, proj, seed)
    lengths = _lengths(batch, seq_len, ragged, seed)
    exact = reference.lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse)
    low = _cast((xp, h0, c0, w_hh, w_hr), dtype)
    ours = triton_backend.lstm_forward(*low, lengths, reverse)
    low_reference = in_kernel_arithmetic(reference.lstm_forward, *low, lengths, reverse, tf32=tf32)
    assert_bounded(ours, low_reference, exact, dtype, "forward")

    gen = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE) for t in exact[:3]]

    def run_backward(impl, outputs, dtype_grads, w_hh, w_hr, c0):
        y, h_n, c_n, gates, c_all = outputs
        c_prev = functional.previous_states(c_all, c0, lengths, reverse)
        return impl.lstm_backward(*dtype_grads, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse)

    exact_grads = run_backward(reference, exact, grads, w_hh, w_hr, c0)
    low_grads = _cast(grads, dtype)
    ours_grads = run_backward(triton_backend, ours, low_grads, low[3], low[4], low[2])
    reference_grads = in_kernel_arithmetic(run_backward, reference, low_reference, low_grads, low[3], low[4], low[2],
                                           tf32=tf32)
    assert_bounded(ours_grads, reference_grads, exact_grads, dtype, "backward")


def check_gru(dtype, seq_len, batch, hidden, bias, reverse, ragged, seed=0, tf32=False):
    """The GRU kernels against the reference, as check_lstm."""
    with tf32_switch(tf32):
        _check_gru(dtype, seq_len, batch, hidden, bias, reverse, ragged, seed, tf32 and dtype == torch.float32)


def _check_gru(dtype, seq_len, batch, hidden, bias, reverse, ragged, seed, tf32):
    xp, h0, w_hh, b_hn = _gru_case(seq_len, batch, hidden, bias, seed)
    lengths = _lengths(batch, seq_len, ragged, seed)
    exact = reference.gru_forward(xp, h0, w_hh, b_hn, lengths, reverse)
    low = _cast((xp, h0, w_hh, b_hn), dtype)
    ours = triton_backend.gru_forward(*low, lengths, reverse)
    low_reference = in_kernel_arithmetic(reference.gru_forward, *low, lengths, reverse, tf32=tf32)
    assert_bounded(ours, low_reference, exact, dtype, "forward")

    gen = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE) for t in exact[:2]]

    def run_backward(impl, outputs, dtype_grads, w_hh, h0):
        y, h_n, saved = outputs
        h_prev = functional.previous_states(y, h0, lengths, reverse)
        return impl.gru_backward(*dtype_grads, h_prev, w_hh, saved, lengths, reverse)

    exact_grads = run_backward(reference, exact, grads, w_hh, h0)
    low_grads = _cast(grads, dtype)
    ours_grads = run_backward(triton_backend, ours, low_grads, low[2], low[1])
    reference_grads = in_kernel_arithmetic(run_backward, reference, low_reference, low_grads, low[2], low[1],
                                           tf32=tf32)
    assert_bounded(ours_grads, reference_grads, exact_grads, dtype, "backward")


def check_rnn(dtype, seq_len, batch, hidden, relu, reverse, ragged, seed=0, tf32=False):
    """The Elman kernels against the reference, as check_lstm; save=False returns the same."""
    with tf32_switch(tf32):
        _check_rnn(dtype, seq_len, batch, hidden, relu, reverse, ragged, seed, tf32 and dtype == torch.float32)


def _check_rnn(dtype, seq_len, batch, hidden, relu, reverse, ragged, seed, tf32):
    xp, h0, w_hh = _rnn_case(seq_len, batch, hidden, seed)
    lengths = _lengths(batch, seq_len, ragged, seed)
    exact = reference.rnn_forward(xp, h0, w_hh, relu, lengths, reverse)
    low = _cast((xp, h0, w_hh), dtype)
    ours = triton_backend.rnn_forward(*low, relu, lengths, reverse)
    low_reference = in_kernel_arithmetic(reference.rnn_forward, *low, relu, lengths, reverse, tf32=tf32)
    assert_bounded(ours, low_reference, exact, dtype, "forward")
    inference = triton_backend.rnn_forward(*low, relu, lengths, reverse, save=False)
    assert all(torch.equal(a, b) for a, b in zip(inference, ours, strict=True))

    gen = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE) for t in exact]
    exact_grads = reference.rnn_backward(*grads, exact[0], w_hh, relu, lengths, reverse)
    low_grads = _cast(grads, dtype)
    ours_grads = triton_backend.rnn_backward(*low_grads, ours[0], low[2], relu, lengths, reverse)
    reference_grads = in_kernel_arithmetic(reference.rnn_backward, *low_grads, low_reference[0], low[2], relu, lengths,
                                           reverse, tf32=tf32)
    assert_bounded(ours_grads, reference_grads, exact_grads, dtype, "backward")
    if lengths is not None:  # padding: outputs and their gradients stay 0 past each row's length
        padding = torch.arange(seq_len)[:, None] >= lengths[None, :]
        assert not ours[0][padding.to(DEVICE)].any() and not ours_grads[0][padding.to(DEVICE)].any()


@pytest.mark.skipif(not INTERPRETED, reason="checks what the Triton interpreter refuses; kernels are compiled here")
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_RELU"])
def test_bf16_in_the_interpreter_is_refused_not_answered_wrongly(cell):
    """The interpreter's bf16 products are wrong by order 1: the backend must refuse bf16 there, saying
    why and what to run instead."""
    import fastrnn

    ours, _ = make_pair(cell, "triton", dtype=torch.bfloat16, input_size=4, hidden_size=5)
    x, hx = random_inputs(ours, 3, 4, dtype=torch.bfloat16, seed=9)
    with pytest.raises(fastrnn.BackendUnavailableError,
                       match=r"bfloat16 under TRITON_INTERPRET=1.*wrongly.*CUDA GPU.*float32.*backend='reference'"):
        ours(x, hx)
    assert triton_backend.dtype_unavailable_reason(torch.float16) is None  # fp16 is computed correctly there


# --- tiny shapes: in CI under the interpreter, and on the GPU --------------------------------------


@pytest.mark.parametrize("dtype,tf32", PRECISIONS)
@pytest.mark.parametrize("proj", [0, 3])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_lstm_kernels_match_reference(strategy, dtype, tf32, proj, reverse, ragged):
    check_lstm(dtype, seq_len=7, batch=5, hidden=19, proj=proj, reverse=reverse, ragged=ragged, tf32=tf32)


@pytest.mark.parametrize("dtype,tf32", PRECISIONS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_gru_kernels_match_reference(strategy, dtype, tf32, bias, reverse, ragged):
    check_gru(dtype, seq_len=7, batch=5, hidden=19, bias=bias, reverse=reverse, ragged=ragged, tf32=tf32)


@pytest.mark.parametrize("dtype,tf32", PRECISIONS)
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_rnn_kernels_match_reference(strategy, dtype, tf32, relu, reverse, ragged):
    check_rnn(dtype, seq_len=7, batch=5, hidden=19, relu=relu, reverse=reverse, ragged=ragged, tf32=tf32)


def _every_candidate():
    prob = plans.problem("lstm", "forward", 64, 64, torch.float32, "ieee", 64, torch.device("cpu"))
    return [pytest.param(plan, id=str(plan)) for plan in plans.candidates(prob)]


@pytest.mark.parametrize("plan", _every_candidate())
def test_every_tuning_candidate_is_correct(plan):
    """Whatever tuning picks must be right: each candidate plan, on batch and hidden sizes past one tile
    (several programs, unit tiles and reduction chunks), ragged, with a projection."""
    with plans.forced(plan):
        check_lstm(torch.float64, seq_len=3, batch=70, hidden=37, proj=33, reverse=False, ragged=True)
        check_gru(torch.float64, seq_len=3, batch=70, hidden=37, bias=True, reverse=True, ragged=True)
        check_rnn(torch.float64, seq_len=3, batch=70, hidden=37, relu=False, reverse=True, ragged=True)


@pytest.mark.parametrize("cell,config", [
    ("LSTM", dict(input_size=5, hidden_size=19, proj_size=3, num_layers=2, bidirectional=True)),
    ("GRU", dict(input_size=5, hidden_size=19, num_layers=2, bidirectional=True, batch_first=True)),
    ("RNN_TANH", dict(input_size=7, hidden_size=5, num_layers=2, bidirectional=True)),
    ("RNN_RELU", dict(input_size=7, hidden_size=5, num_layers=2, bidirectional=True, batch_first=True)),
])
def test_module_matches_torch_under_each_strategy(strategy, cell, config):
    """The layer modules end to end (stacked, both directions, packed unsorted, initial states)."""
    torch.manual_seed(2)
    ours, theirs = make_pair(cell, "triton", DEVICE, torch.float64, **config)
    x, hx = random_inputs(ours, 4, 9, lengths=[7, 9, 1, 4], device=DEVICE, seed=2)
    errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_long_sequence_does_not_drift(strategy, cell):
    torch.manual_seed(3)
    # In Triton's interpreter each step costs ~0.1 s: 64 steps still carry the state through many launches
    # (stepwise) and many loop iterations (persistent); a GPU runs the long sequence.
    seq_len = 4096 if DEVICE == "cuda" else 64
    ours, theirs = make_pair(cell, "triton", DEVICE, torch.float64, input_size=4, hidden_size=6)
    x, hx = random_inputs(ours, 2, seq_len, device=DEVICE, seed=5)
    errors = compare(run(ours, *detached(x, hx)), run(theirs, *detached(x, hx)))
    assert max(errors.values()) < 1e-10, errors


# --- the GPU grid ----------------------------------------------------------------------------------

GPU_PRECISIONS = precisions([torch.float64, torch.float32, torch.float16, torch.bfloat16])


@CUDA_SKIP
@pytest.mark.parametrize("dtype,tf32", GPU_PRECISIONS)
@pytest.mark.parametrize("batch", GPU_GRID["batch"])
@pytest.mark.parametrize("hidden", GPU_GRID["hidden"])
@pytest.mark.parametrize("seq_len", GPU_GRID["seq_len"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_RELU"])
def test_gpu_grid(strategy, cell, seq_len, hidden, batch, dtype, tf32):
    """The shape grid (conftest.GPU_GRID), float32 with TF32 off and on."""
    if cell == "LSTM":
        check_lstm(dtype, seq_len, batch, hidden, proj=0, reverse=False, ragged=batch > 1, seed=seq_len + hidden,
                   tf32=tf32)
    elif cell == "RNN_RELU":
        check_rnn(dtype, seq_len, batch, hidden, relu=True, reverse=True, ragged=batch > 1, seed=seq_len + hidden,
                  tf32=tf32)
    else:
        check_gru(dtype, seq_len, batch, hidden, bias=True, reverse=True, ragged=batch > 1, seed=seq_len + hidden,
                  tf32=tf32)


@CUDA_SKIP
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_float32_follows_the_cudnn_tf32_switch(strategy, cell):
    """On a GPU float32 runs on TF32 while torch.backends.cudnn.allow_tf32 is on (its error then above the
    IEEE bound, within the TF32 one) and in IEEE float32 while it is off."""
    from tolerance import allowed_error

    randn = _seeded_randn(4)
    if cell == "LSTM":
        args = (randn(8, 6, 256), randn(6, 64), randn(6, 64), randn(256, 64, scale=0.125), None)
        run_kernel, run_reference = triton_backend.lstm_forward, reference.lstm_forward
    else:
        args = (randn(8, 6, 192), randn(6, 64), randn(192, 64, scale=0.125), randn(64))
        run_kernel, run_reference = triton_backend.gru_forward, reference.gru_forward
    exact = run_reference(*args, None, False)[0]
    low = _cast(args, torch.float32)
    ieee = rel_error(run_reference(*low, None, False)[0], exact)
    tf32 = rel_error(in_kernel_arithmetic(run_reference, *low, None, False, tf32=True)[0], exact)
    errors = {}
    for allowed in (False, True):
        with tf32_switch(allowed):
            errors[allowed] = rel_error(run_kernel(*low, None, False)[0], exact)
    assert errors[False] <= allowed_error(torch.float32, ieee) < errors[True] <= allowed_error(torch.float32, tf32), \
        (errors, ieee, tf32)


def _compiled_variants(kernel) -> int:
    caches = getattr(kernel, "device_caches", None)
    if caches is not None:
        return sum(len(entry[0]) for entry in caches.values())
    if hasattr(kernel, "cache"):
        return sum(len(entry) for entry in kernel.cache.values())
    pytest.skip("this Triton version exposes no kernel cache to count")


@CUDA_SKIP
def test_no_recompile_across_batch_and_length(strategy):
    from fastrnn.triton import lstm as lstm_kernels
    from fastrnn.triton import rnn as rnn_kernels

    kernels = [getattr(module, name) for module in (lstm_kernels, rnn_kernels) for name in dir(module)
               if name.endswith("_kernel")]
    check_lstm(torch.float32, seq_len=5, batch=3, hidden=64, proj=0, reverse=False, ragged=True)
    check_rnn(torch.float32, seq_len=5, batch=3, hidden=64, relu=False, reverse=False, ragged=True)
    before = sum(_compiled_variants(kernel) for kernel in kernels)
    for seq_len, batch in [(9, 7), (33, 64), (2, 257)]:
        check_lstm(torch.float32, seq_len=seq_len, batch=batch, hidden=64, proj=0, reverse=False, ragged=True)
        check_rnn(torch.float32, seq_len=seq_len, batch=batch, hidden=64, relu=False, reverse=False, ragged=True)
    assert sum(_compiled_variants(kernel) for kernel in kernels) == before


@CUDA_SKIP
def test_offsets_past_two_to_the_31(strategy):
    """T * B * 4H > 2**31 elements: every per-step offset must be computed in 64 bits."""
    seq_len, batch, hidden = 2100, 257, 1024
    assert seq_len * batch * 4 * hidden > 2**31
    xp, h0, c0, w_hh, _ = _lstm_case(seq_len, batch, hidden, 0, seed=9)
    xp, h0, c0, w_hh = _cast((xp, h0, c0, w_hh), torch.bfloat16)
    y, h_n, c_n, gates, c_all = triton_backend.lstm_forward(xp, h0, c0, w_hh, None, None, False)
    tail = reference.lstm_forward(xp[-3:].float(), y[-4].float(), c_all[-4].float(), w_hh.float(), None, None, False)
    assert rel_error(y[-3:], tail[0]) < 2e-2 and rel_error(c_n, tail[2]) < 2e-2


@CUDA_SKIP
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_replays_from_a_cuda_graph(strategy, cell):
    """Dense inputs run under CUDA-graph capture (no host sync, no tuning inside a capture): the stepwise
    strategy's per-step launches are then replayed as one graph."""
    torch.manual_seed(4)
    ours = make_pair(cell, "triton", "cuda", torch.float32, input_size=16, hidden_size=64, num_layers=2)[0]
    static_x = torch.randn(33, 5, 16, device="cuda")
    with torch.no_grad():
        ours(static_x)  # warm-up outside the capture: compiles the kernels, tunes the plan
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out, _ = ours(static_x)
        for _ in range(2):
            static_x.copy_(torch.randn_like(static_x))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(static_out, ours(static_x)[0])  # same kernels, same plan: bit for bit
