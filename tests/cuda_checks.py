"""Checks shared by the CUDA kernels' tests: one kernel pair (forward and backward) against the reference
recurrence and float64, on the emulator's CPU tensors (tests/test_cuda_emulated.py) or on a GPU
(tests/test_cuda_gpu.py)."""

from __future__ import annotations

import torch

from fastrnn import cells, functional
from fastrnn.backends import reference

from tolerance import assert_bounded, reference as in_kernel_arithmetic

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _to(tensors, device):
    return [None if t is None else t.to(device) for t in tensors]


def _cpu(tensors):
    return [t.cpu() for t in tensors]


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def _lengths(batch, seq_len, ragged, gen):
    """None, or sorted lengths with the first at seq_len and, past two rows, the last empty."""
    if not ragged:
        return None
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen)
    lengths[0] = seq_len
    if batch > 2:
        lengths[-1] = 0
    return lengths.sort(descending=True).values


def _cast(tensors, dtype):
    return [None if t is None else t.to(dtype) for t in tensors]


def check_lstm(kernels, dtype, seq_len, batch, hidden, proj, reverse, ragged, seed=0, device="cpu", **knobs):
    """The LSTM kernels (kernels.lstm_forward_cuda, lstm_backward_cuda on `device`) against the reference:
    every output and gradient's error against float64 within tests/tolerance.py's bound, the reference
    run in `dtype` (with allow_tf32 and float32: on TF32-rounded operands, the kernels' arithmetic)."""
    knobs.setdefault("allow_tf32", False)
    tf32 = bool(knobs["allow_tf32"]) and dtype == torch.float32
    gen = torch.Generator().manual_seed(seed)
    state = proj or hidden
    exact_in = (_randn(gen, seq_len, batch, 4 * hidden), _randn(gen, batch, state), _randn(gen, batch, hidden),
                _randn(gen, 4 * hidden, state, scale=state ** -0.5),
                _randn(gen, state, hidden, scale=hidden ** -0.5) if proj else None)
    lengths = _lengths(batch, seq_len, ragged, gen)
    exact = reference.lstm_forward(*exact_in, lengths, reverse)
    low = _cast(exact_in, dtype)
    ours = _cpu(kernels.lstm_forward_cuda(*_to(low, device), lengths, reverse, **knobs))
    low_reference = in_kernel_arithmetic(reference.lstm_forward, *low, lengths, reverse, tf32=tf32)
    assert_bounded(ours, low_reference, exact, dtype, "forward")

    grads = [_randn(gen, *t.shape) for t in exact[:3]]

    def backward(impl, outputs, dtype_grads, w_hh, w_hr, c0, **kw):
        y, h_n, c_n, gates, c_all = outputs
        c_prev = functional.previous_states(c_all, c0, lengths, reverse)
        return impl(*dtype_grads, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse, **kw)

    exact_grads = backward(reference.lstm_backward, exact, grads, exact_in[3], exact_in[4], exact_in[2])
    low_grads = _cast(grads, dtype)
    ours_grads = _cpu(backward(kernels.lstm_backward_cuda, _to(ours, device), _to(low_grads, device),
                               *_to((low[3], low[4], low[2]), device), **knobs))
    reference_grads = in_kernel_arithmetic(backward, reference.lstm_backward, low_reference, low_grads, low[3], low[4],
                                           low[2], tf32=tf32)
    assert_bounded(ours_grads, reference_grads, exact_grads, dtype, "backward")


def check_gru(kernels, dtype, seq_len, batch, hidden, bias, reverse, ragged, seed=0, device="cpu", **knobs):
    """The GRU kernels against the reference, as check_lstm."""
    knobs.setdefault("allow_tf32", False)
    tf32 = bool(knobs["allow_tf32"]) and dtype == torch.float32
    gen = torch.Generator().manual_seed(seed)
    exact_in = (_randn(gen, seq_len, batch, 3 * hidden), _randn(gen, batch, hidden),
                _randn(gen, 3 * hidden, hidden, scale=hidden ** -0.5), _randn(gen, hidden) if bias else None)
    lengths = _lengths(batch, seq_len, ragged, gen)
    exact = reference.gru_forward(*exact_in, lengths, reverse)
    low = _cast(exact_in, dtype)
    ours = _cpu(kernels.gru_forward_cuda(*_to(low, device), lengths, reverse, **knobs))
    low_reference = in_kernel_arithmetic(reference.gru_forward, *low, lengths, reverse, tf32=tf32)
    assert_bounded(ours, low_reference, exact, dtype, "forward")

    grads = [_randn(gen, *t.shape) for t in exact[:2]]

    def backward(impl, outputs, dtype_grads, w_hh, h0, **kw):
        y, h_n, saved = outputs
        h_prev = functional.previous_states(y, h0, lengths, reverse)
        return impl(*dtype_grads, h_prev, w_hh, saved, lengths, reverse, **kw)

    exact_grads = backward(reference.gru_backward, exact, grads, exact_in[2], exact_in[1])
    low_grads = _cast(grads, dtype)
    ours_grads = _cpu(backward(kernels.gru_backward_cuda, _to(ours, device), _to(low_grads, device),
                               *_to((low[2], low[1]), device), **knobs))
    reference_grads = in_kernel_arithmetic(backward, reference.gru_backward, low_reference, low_grads, low[2], low[1],
                                           tf32=tf32)
    assert_bounded(ours_grads, reference_grads, exact_grads, dtype, "backward")


def check_rnn(kernels, dtype, seq_len, batch, hidden, relu, reverse, ragged, seed=0, device="cpu", **knobs):
    """The Elman kernels (tanh or relu) against the reference, as check_lstm."""
    knobs.setdefault("allow_tf32", False)
    tf32 = bool(knobs["allow_tf32"]) and dtype == torch.float32
    gen = torch.Generator().manual_seed(seed)
    exact_in = (_randn(gen, seq_len, batch, hidden), _randn(gen, batch, hidden),
                _randn(gen, hidden, hidden, scale=hidden ** -0.5))
    lengths = _lengths(batch, seq_len, ragged, gen)
    exact = reference.rnn_forward(*exact_in, relu, lengths, reverse)
    low = _cast(exact_in, dtype)
    ours = _cpu(kernels.rnn_forward_cuda(*_to(low, device), relu, lengths, reverse, **knobs))
    low_reference = in_kernel_arithmetic(reference.rnn_forward, *low, relu, lengths, reverse, tf32=tf32)
    assert_bounded(ours, low_reference, exact, dtype, "forward")

    # Both backwards read the reference forward's y in `dtype`: relu's act' at a pre-activation near 0 hangs on
    # the forward's last bit, which would make one flipped unit the whole difference.
    grads = [_randn(gen, *t.shape) for t in exact]
    exact_grads = reference.rnn_backward(*grads, exact[0], exact_in[2], relu, lengths, reverse)
    low_grads = _cast(grads, dtype)
    ours_grads = _cpu(kernels.rnn_backward_cuda(*_to((*low_grads, low_reference[0], low[2]), device), relu, lengths,
                                                reverse, **knobs))
    reference_grads = in_kernel_arithmetic(reference.rnn_backward, *low_grads, low_reference[0], low[2], relu, lengths,
                                           reverse, tf32=tf32)
    assert_bounded(ours_grads, reference_grads, exact_grads, dtype, "backward")


def check_cell(kernels, mode, dtype, batch, input_size, hidden, bias, seed=0, device="cpu", **knobs):
    """The fused cell step (kernels.cell_forward_cuda, cell_backward_cuda) against reference.cell_forward and
    cell_backward, as check_lstm: new states and what the step keeps, then the pointwise backward's gradients."""
    knobs.setdefault("allow_tf32", False)
    tf32 = bool(knobs["allow_tf32"]) and dtype == torch.float32
    gates = cells.cell(mode).gates
    lstm = mode == "LSTM"
    gen = torch.Generator().manual_seed(seed)
    x, h = _randn(gen, batch, input_size), _randn(gen, batch, hidden)
    states = (h, _randn(gen, batch, hidden)) if lstm else (h,)
    weights = (_randn(gen, gates * hidden, input_size, scale=input_size ** -0.5),
               _randn(gen, gates * hidden, hidden, scale=hidden ** -0.5),
               _randn(gen, gates * hidden) if bias else None, _randn(gen, gates * hidden) if bias else None)
    exact_new, exact_saved = reference.cell_forward(mode, x, states, *weights)
    low_x, low_states, low_weights = _cast([x], dtype)[0], _cast(states, dtype), _cast(weights, dtype)
    h_new, c_new, saved = _cpu(kernels.cell_forward_cuda(mode, *_to((low_x, low_states[0]), device),
                                                        _to(low_states[1:], device)[0] if lstm else None,
                                                        *_to(low_weights, device), True, **knobs))
    low_new, low_saved = in_kernel_arithmetic(reference.cell_forward, mode, low_x, tuple(low_states), *low_weights,
                                              tf32=tf32)
    assert saved.shape == exact_saved.shape and (lstm or c_new.numel() == 0), (saved.shape, c_new.shape)
    ours = [h_new, c_new] if lstm else [h_new]
    assert_bounded(ours + [saved], [*low_new, low_saved], [*exact_new, exact_saved], dtype, "cell forward")

    # The backward reads the reference forward's results (in `dtype`), as check_rnn's does.
    d_new = [_randn(gen, batch, hidden) for _ in states]
    exact_dgx, exact_dgh, exact_direct = reference.cell_backward(mode, d_new, states, exact_new, exact_saved)
    low_d = _cast(d_new, dtype)
    low_dgx, low_dgh, low_direct = reference.cell_backward(mode, low_d, tuple(low_states), low_new, low_saved)
    args = (low_d[0], low_d[1] if lstm else None, low_states[0], low_states[1] if lstm else None, low_new[0],
            low_new[1] if lstm else None, low_saved)
    dgx, dgh, direct, dc_prev = _cpu([t for t in kernels.cell_backward_cuda(
        mode, *[None if t is None else t.to(device) for t in args], threads=knobs.get("threads", 0))])
    ours, theirs, truth = [dgx, dgh], [low_dgx, low_dgh], [exact_dgx, exact_dgh]
    if lstm:
        ours, theirs, truth = ours + [dc_prev], theirs + [low_direct[1]], truth + [exact_direct[1]]
    elif mode == "GRU":
        ours, theirs, truth = ours + [direct], theirs + [low_direct[0]], truth + [exact_direct[0]]
    else:
        assert exact_direct == (None,) and direct.numel() == 0
    assert_bounded(ours, theirs, truth, dtype, "cell backward")
