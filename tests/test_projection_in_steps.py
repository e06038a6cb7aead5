"""Inferences whose input projection runs inside their steps (cpp.lstm_forward_projecting, gru_forward_projecting,
rnn_forward_projecting: each step's tile starts from the bias and adds x_t W_ih^T before h W_hh^T, no projected
input in memory): the kernels against the reference recurrence in float64, within twice the error of the same
recurrence run in the kernel's dtype; the layers' roads that take them (the one call for the stack, the layer
road) against nn's layers; their kept panels; their argument errors."""

import itertools

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import _ext, backends
from fastrnn.backends import reference

from tolerance import assert_bounded

pytestmark = pytest.mark.skipif(backends.unavailable_reason("cpp", "cpu") is not None,
                                reason=f"the cpp backend is unavailable: {backends.unavailable_reason('cpp', 'cpu')}")


GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def problem(mode, steps, batch, input_size, hidden, bias, lengths, seed=0):
    """(x, w_ih, b_ih, b_hh, h0, [c0,] w_hh) in float64, and lengths or None."""
    gen = torch.Generator().manual_seed(seed)
    scale, width = hidden ** -0.5, GATES[mode] * hidden

    def uniform(*shape):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale

    x = torch.randn(steps, batch, input_size, generator=gen, dtype=torch.float64)
    w_ih, w_hh = uniform(width, input_size), uniform(width, hidden)
    b_ih, b_hh = (uniform(width), uniform(width)) if bias else (None, None)
    states = [torch.randn(batch, hidden, generator=gen, dtype=torch.float64) for _ in range(2 if mode == "LSTM" else 1)]
    lengths = torch.randint(0, steps + 1, (batch,), generator=gen).sort(descending=True).values if lengths else None
    return (x, w_ih, b_ih, b_hh, *states, w_hh), lengths


def reference_forward(mode, x, w_ih, b_ih, b_hh, *rest, lengths, reverse):
    """The reference backend's recurrence on the projection computed ahead, in the tensors' dtype (a GRU's b_hn in
    the reset product)."""
    xp = x @ w_ih.T
    if mode == "LSTM":
        h0, c0, w_hh = rest
        if b_ih is not None:
            xp = xp + b_ih + b_hh
        return reference.lstm_forward(xp, h0, c0, w_hh, None, lengths, reverse, save=True)
    h0, w_hh = rest
    if mode.startswith("RNN"):
        if b_ih is not None:
            xp = xp + b_ih + b_hh
        return reference.rnn_forward(xp, h0, w_hh, mode == "RNN_RELU", lengths, reverse)
    hidden = w_hh.shape[1]
    b_hn = None
    if b_ih is not None:
        xp = xp + b_ih + torch.cat((b_hh[:2 * hidden], torch.zeros_like(b_hh[2 * hidden:])))
        b_hn = b_hh[2 * hidden:]
    return reference.gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True)


def projecting(mode):
    """The kernel as (x, w_ih, b_ih, b_hh, *states, w_hh, lengths, reverse, save) -> its results."""
    kernels = _ext.extension()
    if mode.startswith("RNN"):
        return lambda *args: kernels.rnn_forward_projecting_cpu(*args[:6], mode == "RNN_RELU", *args[6:8])
    return kernels.lstm_forward_projecting_cpu if mode == "LSTM" else kernels.gru_forward_projecting_cpu


CASES = list(itertools.product([(7, 5, 3, 37), (4, 13, 20, 16), (3, 9, 33, 100), (5, 2, 64, 64)], [False, True],
                               [False, True], [True, False]))


@pytest.mark.parametrize("mode", GATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, reverse, with_lengths, bias", CASES)
def test_the_kernel_is_bounded_by_the_reference_in_its_own_dtype(mode, dtype, threads, shape, reverse, with_lengths,
                                                                 bias):
    """Outputs, final states, and (save=True) what is kept for a backward (the LSTM's gates and cell states, the
    GRU's r, z, n, hn; the Elman cell keeps nothing more), on awkward sizes (unit blocks with ragged edges, depths that are no multiple of a vector),
    lengths, both directions, both thread counts (the units, and with them the projection, split between them)."""
    exact_args, lengths = problem(mode, *shape, bias, with_lengths)
    args = [None if t is None else t.to(dtype) for t in exact_args]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = projecting(mode)(*args, lengths, reverse, True)
    finally:
        torch.set_num_threads(before)
    low = reference_forward(mode, *args, lengths=lengths, reverse=reverse)
    exact = reference_forward(mode, *exact_args, lengths=lengths, reverse=reverse)
    assert_bounded(ours, low, exact, dtype, f"{mode} projecting {shape}")


@pytest.mark.parametrize("mode", GATES)
def test_the_kernel_matches_the_recurrence_on_a_projected_input(mode):
    """The same outputs, states and saved tensors as the kernel on x W_ih^T + b computed ahead, to float32's
    rounding (the sums are ordered differently: bias, x part, h part)."""
    args, lengths = problem(mode, 9, 11, 24, 40, True, True, seed=3)
    x, w_ih, b_ih, b_hh, *rest = [t.float() for t in args]
    kernels = _ext.extension()
    hidden = rest[-1].shape[1]
    if mode == "LSTM":
        xp = (x @ w_ih.T + b_ih + b_hh).contiguous()
        ahead = kernels.lstm_forward_cpu(xp, *rest, None, lengths, False, True)
    elif mode.startswith("RNN"):
        xp = (x @ w_ih.T + b_ih + b_hh).contiguous()
        ahead = kernels.rnn_forward_cpu(xp, *rest, mode == "RNN_RELU", lengths, False, True)
    else:
        rz = torch.cat((b_hh[:2 * hidden], torch.zeros(hidden)))
        xp = (x @ w_ih.T + b_ih + rz).contiguous()
        ahead = kernels.gru_forward_cpu(xp, *rest, b_hh[2 * hidden:].contiguous(), lengths, False, True)
    inside = projecting(mode)(x, w_ih, b_ih, b_hh, *rest, lengths, False, True)
    for a, b in zip(ahead, inside, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=2e-6)


LAYERS = {"LSTM": (nn.LSTM, fastrnn.LSTM, {}), "GRU": (nn.GRU, fastrnn.GRU, {}),
          "RNN_TANH": (nn.RNN, fastrnn.RNN, {}), "RNN_RELU": (nn.RNN, fastrnn.RNN, {"nonlinearity": "relu"})}


def twins(mode, batch_first=False, **kwargs):
    theirs_type, ours_type, extra = LAYERS[mode]
    torch.manual_seed(0)
    theirs = theirs_type(10, 24, **extra, **kwargs, batch_first=batch_first)
    ours = ours_type(10, 24, **extra, **kwargs, batch_first=batch_first, backend="cpp")
    ours.load_state_dict(theirs.state_dict())
    return theirs.eval(), ours.eval()


def spy(monkeypatch):
    """Records each one call's plan (its in_steps) and each layer-road call of a projecting kernel (x's shape)."""
    plans, layer_calls = [], []
    one_call = backends.cpp.stack_inference

    def counted_one_call(*args):
        plans.append(list(args[9]) if len(args) > 9 else [])
        return one_call(*args)

    monkeypatch.setattr(backends.cpp, "stack_inference", counted_one_call)
    for name in ("lstm_forward_projecting", "gru_forward_projecting", "rnn_forward_projecting"):
        kernel = getattr(backends.cpp, name)
        monkeypatch.setattr(backends.cpp, name,
                            lambda *args, kernel=kernel: layer_calls.append(tuple(args[0].shape)) or kernel(*args))
    return plans, layer_calls


def results(module, x, hx=None):
    output, final = module(x, hx)
    return (output, *final) if isinstance(final, tuple) else (output, final)


def initial_state(mode, count, batch):
    states = [torch.randn(count, batch, 24) for _ in range(2 if mode == "LSTM" else 1)]
    return tuple(states) if mode == "LSTM" else states[0]


@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("layers, bidirectional, batch_first", [(1, False, False), (2, True, True)])
def test_a_layer_stack_projects_in_its_steps_where_the_rule_says(monkeypatch, mode, layers, bidirectional,
                                                                 batch_first):
    theirs, ours = twins(mode, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    plans, _ = spy(monkeypatch)
    count = layers * (2 if bidirectional else 1)
    for batch in (1, 6):  # batch 1: the projection ahead (the rule's minimum batch is 2)
        x = torch.randn((batch, 8, 10) if batch_first else (8, batch, 10))
        hx = initial_state(mode, count, batch)
        with torch.no_grad():
            found, expected = results(ours, x, hx), results(theirs, x, hx)
        for f, e in zip(found, expected, strict=True):
            torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-5)
    assert plans == [[], [True] * count]


@pytest.mark.parametrize("mode", LAYERS)
def test_the_layer_road_projects_in_its_steps_too(monkeypatch, mode):
    """Where the one call declines, the layer functions take the same kernel: the same bits."""
    theirs, ours = twins(mode, num_layers=2)
    plans, layer_calls = spy(monkeypatch)
    x = torch.randn(8, 5, 10)
    with torch.no_grad():
        one_call = results(ours, x)
        ours._one_call_plan = lambda *args: None
        layer_by_layer = results(ours, x)
        del ours._one_call_plan
        expected = results(theirs, x)
    assert plans == [[True, True]] and layer_calls == [(8, 5, 10), (8, 5, 24)]
    for a, b, e in zip(one_call, layer_by_layer, expected, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", LAYERS)
def test_an_input_that_would_run_in_chunks_takes_the_one_call(monkeypatch, mode):
    """No projected input is made, so nothing is chunked: the one call takes a stack the layer road would chunk."""
    theirs, ours = twins(mode)
    plans, _ = spy(monkeypatch)
    monkeypatch.setattr(fastrnn.functional, "CHUNK_ELEMENTS", 96 * 4)
    x = torch.randn(12, 4, 10)
    with torch.no_grad():
        found, expected = results(ours, x), results(theirs, x)
    assert plans == [[True]]
    for f, e in zip(found, expected, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", LAYERS)
def test_its_panels_are_kept_accounted_and_follow_the_weight(mode):
    theirs, ours = twins(mode)
    x = torch.randn(6, 4, 10)
    with torch.no_grad():
        ours(x)
        kept = backends.cpp.packed_weight_bytes(ours)
        assert kept >= GATES[mode] * 24 * (10 + 24) * 4  # W_ih's and W_hh's panels, in float32
        ours(x)
        assert backends.cpp.packed_weight_bytes(ours) == kept  # read again, not packed again
        for module in (ours, theirs):  # an optimizer's step: the same tensors, changed in place
            module.weight_ih_l0.mul_(-0.5)
            module.bias_hh_l0.add_(0.25)
        found, expected = results(ours, x), results(theirs, x)
    for f, e in zip(found, expected, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-5)


def test_the_kernels_argument_errors():
    kernels = _ext.extension()
    args, _ = problem("LSTM", 3, 2, 5, 8, True, False)
    x, w_ih, b_ih, b_hh, h0, c0, w_hh = [t.float() for t in args]
    lstm = kernels.lstm_forward_projecting_cpu
    with pytest.raises(RuntimeError, match="takes float32 or float64, got BFloat16"):
        lstm(*[t.bfloat16() for t in (x, w_ih, b_ih, b_hh, h0, c0, w_hh)], None, False)
    with pytest.raises(RuntimeError, match=r"w_ih must have shape \[32, 5\], got \[32, 6\]"):
        lstm(x, torch.randn(32, 6), b_ih, b_hh, h0, c0, w_hh, None, False)
    with pytest.raises(RuntimeError, match="both biases or neither"):
        lstm(x, w_ih, b_ih, None, h0, c0, w_hh, None, False)
    with pytest.raises(RuntimeError, match=r"the bias must have shape \[32\]"):
        lstm(x, w_ih, b_ih[:16], b_hh[:16], h0, c0, w_hh, None, False)
    with pytest.raises(RuntimeError, match="x must be 3-D"):
        lstm(x[0], w_ih, b_ih, b_hh, h0, c0, w_hh, None, False)
    gru = kernels.gru_forward_projecting_cpu
    with pytest.raises(RuntimeError, match=r"a GRU's biases must both have shape \[3 \* hidden\]"):
        gru(x, w_ih[:24], b_ih[:24], b_hh[:12], h0, w_hh[:24], None, False)
    with pytest.raises(RuntimeError, match=r"w_hh must have shape \[24, 8\]"):
        gru(x, w_ih[:24], b_ih[:24], b_hh[:24], h0, w_hh, None, False)
    with pytest.raises(RuntimeError, match=r"in_steps holds one entry per layer-direction \(1\), got 2"):
        kernels.stack_inference_cpu("RNN_TANH", x, [], [torch.randn(8, 5), torch.randn(8, 8), None, None],
                                    [None, None], 1, False, False, 0, [True, True])
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        kernels.rnn_forward_projecting_cpu(x.transpose(0, 1).contiguous().transpose(0, 1), w_ih[:8], b_ih[:8],
                                           b_hh[:8], h0, w_hh[:8], False, None, False)


@pytest.mark.parametrize("mode, dtype, batch, hidden, threads, expected", [
    ("LSTM", torch.float32, 3, 64, 1, False),  # under the minimum batch
    ("LSTM", torch.float32, 4, 64, 1, True),
    ("GRU", torch.float64, 4, 128, 1, True),  # 3 x 128 x 256 x 8 bytes: 768 KB
    ("LSTM", torch.float32, 8, 256, 1, False),  # 2 MiB on one thread under batch 32
    ("LSTM", torch.float32, 8, 256, 2, True),  # 1 MiB a thread
    ("LSTM", torch.float32, 32, 256, 1, True),  # 2 MiB at batch 32
    ("LSTM", torch.float32, 128, 512, 1, False),  # 8 MiB
    ("RNN_RELU", torch.float32, 16, 256, 1, True),  # one gate: 512 KB
    ("LSTM", torch.bfloat16, 32, 64, 1, False),  # the GEMMs would not read the storage type
    ("LSTMX", torch.float32, 32, 64, 1, False),
])
def test_the_rule_for_projecting_in_the_steps(mode, dtype, batch, hidden, threads, expected):
    assert backends.cpp.projects_in_steps(mode, dtype, batch, hidden, hidden, threads) == expected
