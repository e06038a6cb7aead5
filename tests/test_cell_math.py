"""The math and the explicit-backward algorithm, proven on the CPU in float64.

- the cells of fastrnn.cell_math equal nn.LSTMCell / nn.GRUCell;
- the recurrence op's explicit backward (the algorithm every kernel follows) equals autograd through
  the plain step loop of fastrnn.cell_math, with lengths and in reverse;
- torch.autograd.gradcheck on the recurrence, torch.library.opcheck on the custom ops.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastrnn import cell_math, functional
from fastrnn.backends import unavailable_reason

from conftest import rel_error

F64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_matches_torch(proj_size, bias):
    torch.manual_seed(0)
    cell = nn.LSTMCell(5, 7, bias=bias, **F64)
    x, h, c = torch.randn(3, 5, **F64), torch.randn(3, 7, **F64), torch.randn(3, 7, **F64)
    h1, c1 = cell_math.lstm_cell(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    h2, c2 = cell(x, (h, c))
    assert rel_error(h1, h2) < 1e-14 and rel_error(c1, c2) < 1e-14
    if proj_size:  # projection: h' = (o * tanh(c')) W_hr^T, checked against a 1-step nn.LSTM
        lstm = nn.LSTM(5, 7, proj_size=proj_size, bias=bias, **F64)
        w = dict(lstm.named_parameters())
        hp = torch.randn(3, proj_size, **F64)
        h1, c1 = cell_math.lstm_cell(x, hp, c, w["weight_ih_l0"], w["weight_hh_l0"], w.get("bias_ih_l0"),
                                     w.get("bias_hh_l0"), w["weight_hr_l0"])
        _, (h2, c2) = lstm(x.unsqueeze(0), (hp.unsqueeze(0), c.unsqueeze(0)))
        assert rel_error(h1, h2[0]) < 1e-14 and rel_error(c1, c2[0]) < 1e-14


@pytest.mark.parametrize("bias", [True, False])
def test_gru_cell_matches_torch(bias):
    torch.manual_seed(1)
    cell = nn.GRUCell(5, 7, bias=bias, **F64)
    x, h = torch.randn(3, 5, **F64), torch.randn(3, 7, **F64)
    ours = cell_math.gru_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    assert rel_error(ours, cell(x, h)) < 1e-14


def _lstm_weights(input_size, hidden, proj, bias):
    rows, state = 4 * hidden, proj or hidden
    return [torch.randn(rows, input_size, **F64), torch.randn(rows, state, **F64),
            torch.randn(rows, **F64) if bias else None, torch.randn(rows, **F64) if bias else None,
            torch.randn(proj, hidden, **F64) if proj else None]


def _gru_weights(input_size, hidden, bias):
    rows = 3 * hidden
    return [torch.randn(rows, input_size, **F64), torch.randn(rows, hidden, **F64),
            torch.randn(rows, **F64) if bias else None, torch.randn(rows, **F64) if bias else None]


def _grads(outputs, tensors, seed=0):
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, **F64)).sum() for o in outputs)
    return torch.autograd.grad(loss, tensors)


LENGTHS = [None, [6, 6, 3, 1]]


@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "ragged"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [0, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_explicit_backward_equals_autograd_of_the_loop(lengths, reverse, proj, bias):
    torch.manual_seed(2)
    hidden, batch = 5, 4
    weights = [w.requires_grad_() if w is not None else None for w in _lstm_weights(3, hidden, proj, bias)]
    x = torch.randn(6, batch, 3, **F64, requires_grad=True)
    h0 = torch.randn(batch, proj or hidden, **F64, requires_grad=True)
    c0 = torch.randn(batch, hidden, **F64, requires_grad=True)
    lengths = None if lengths is None else torch.tensor(lengths)
    tensors = [x, h0, c0] + [w for w in weights if w is not None]
    ours = functional.lstm_layer(x, h0, c0, tuple(weights), lengths, reverse, "reference")
    oracle = cell_math.lstm_layer(x, h0, c0, tuple(weights), lengths, reverse)
    for a, b in zip(ours, oracle):
        assert rel_error(a, b) < 1e-13
    for a, b in zip(_grads(ours, tensors), _grads(oracle, tensors)):
        assert rel_error(a, b) < 1e-12


@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "ragged"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_explicit_backward_equals_autograd_of_the_loop(lengths, reverse, bias):
    torch.manual_seed(3)
    hidden, batch = 5, 4
    weights = [w.requires_grad_() if w is not None else None for w in _gru_weights(3, hidden, bias)]
    x = torch.randn(6, batch, 3, **F64, requires_grad=True)
    h0 = torch.randn(batch, hidden, **F64, requires_grad=True)
    lengths = None if lengths is None else torch.tensor(lengths)
    tensors = [x, h0] + [w for w in weights if w is not None]
    ours = functional.gru_layer(x, h0, tuple(weights), lengths, reverse, "reference")
    oracle = cell_math.gru_layer(x, h0, tuple(weights), lengths, reverse)
    for a, b in zip(ours, oracle):
        assert rel_error(a, b) < 1e-13
    for a, b in zip(_grads(ours, tensors), _grads(oracle, tensors)):
        assert rel_error(a, b) < 1e-12


def _recurrence_args(cell, proj, reverse, lengths, requires_grad=True, backend="reference"):
    torch.manual_seed(4)
    seq_len, batch, hidden = 4, 3, 2
    state = proj or hidden
    lengths = None if lengths is None else torch.tensor(lengths)
    rg = dict(requires_grad=requires_grad)
    if cell == "LSTM":
        return (torch.randn(seq_len, batch, 4 * hidden, **F64, **rg), torch.randn(batch, state, **F64, **rg),
                torch.randn(batch, hidden, **F64, **rg), torch.randn(4 * hidden, state, **F64, **rg),
                torch.randn(proj, hidden, **F64, **rg) if proj else None, lengths, reverse, backend)
    return (torch.randn(seq_len, batch, 3 * hidden, **F64, **rg), torch.randn(batch, hidden, **F64, **rg),
            torch.randn(3 * hidden, hidden, **F64, **rg), torch.randn(hidden, **F64, **rg) if proj else None,
            lengths, reverse, backend)


# The backends whose backward is an explicit algorithm of its own (aten is torch's, tested in conformance).
EXPLICIT_BACKENDS = ["reference", pytest.param("cpp", marks=pytest.mark.skipif(
    unavailable_reason("cpp", "cpu") is not None, reason=f"cpp backend unavailable: {unavailable_reason('cpp', 'cpu')}"))]


# For GRU the `proj` axis toggles b_hn (bias) instead, the GRU's only optional recurrent tensor.
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("proj", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["full", "ragged"])
@pytest.mark.parametrize("backend", EXPLICIT_BACKENDS)
def test_gradcheck_recurrence(cell, proj, reverse, lengths, backend):
    function = functional.LSTMRecurrence if cell == "LSTM" else functional.GRURecurrence
    assert torch.autograd.gradcheck(function.apply, _recurrence_args(cell, proj, reverse, lengths, backend=backend))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("lengths", [None, [4, 2, 1]], ids=["full", "ragged"])
@pytest.mark.parametrize("backend", EXPLICIT_BACKENDS)
def test_custom_ops_pass_opcheck(cell, lengths, backend):
    """Schema, fake (meta) implementations and dispatch of the four custom ops are consistent."""
    args = _recurrence_args(cell, 1, True, lengths, requires_grad=False, backend=backend)
    forward = functional.lstm_forward if cell == "LSTM" else functional.gru_forward
    torch.library.opcheck(forward, args)
    outputs = forward(*args)
    if cell == "LSTM":
        xp, h0, c0, w_hh, w_hr, lengths, reverse, backend = args
        y, h_n, c_n, gates, c_all = outputs
        c_prev = functional.previous_states(c_all, c0, lengths, reverse)
        backward_args = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), c_prev, w_hh, w_hr,
                         gates, c_all, lengths, reverse, backend)
        torch.library.opcheck(functional.lstm_backward, backward_args)
    else:
        xp, h0, w_hh, b_hn, lengths, reverse, backend = args
        y, h_n, saved = outputs
        h_prev = functional.previous_states(y, h0, lengths, reverse)
        backward_args = (torch.randn_like(y), torch.randn_like(h_n), h_prev, w_hh, saved, lengths, reverse, backend)
        torch.library.opcheck(functional.gru_backward, backward_args)


@pytest.mark.parametrize("lengths", [[5, 3, 3, 1], [2], [4, 4]])
def test_packing_ops_match_torch_and_pass_opcheck(lengths):
    """pad_packed / pack_padded (the PackedSequence layout as custom ops, for torch.compile) equal torch's
    pad_packed_sequence / pack_padded_sequence, are each other's inverse and adjoint, and pass opcheck."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(len(lengths))
    packed = pack_padded_sequence(torch.randn(max(lengths), len(lengths), 3, **F64), torch.tensor(lengths))
    padded, got_lengths = functional.pad_packed(packed.data, packed.batch_sizes, len(lengths))
    expected, expected_lengths = pad_packed_sequence(packed)
    assert torch.equal(padded, expected) and torch.equal(got_lengths, expected_lengths)
    assert torch.equal(functional.pack_padded(padded, packed.batch_sizes, packed.data.shape[0]), packed.data)
    data = packed.data.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: functional.pad_packed(d, packed.batch_sizes, None)[0], (data,))
    assert torch.autograd.gradcheck(lambda p: functional.pack_padded(p, packed.batch_sizes, data.shape[0]),
                                    (expected.clone().requires_grad_(True),))
    for batch in (len(lengths), None):  # None: the batch size is known only at run time
        torch.library.opcheck(functional.pad_packed, (data, packed.batch_sizes, batch))
    torch.library.opcheck(functional.pack_padded, (expected.clone().requires_grad_(True), packed.batch_sizes,
                                                   data.shape[0]))
