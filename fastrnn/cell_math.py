"""The recurrent cells' math, stated once, in plain PyTorch (any dtype, float64 included): LSTM, GRU and the
Elman RNN (tanh or relu).

Gate order and bias layout are PyTorch's, so weights are interchangeable with nn.LSTM/nn.GRU:

LSTM (gates i, f, g, o)::

    gates = x W_ih^T + b_ih + h W_hh^T + b_hh
    i, f, o = sigmoid(.) ; g = tanh(.)
    c' = f * c + i * g
    h' = o * tanh(c')              (with proj_size: h' = (o * tanh(c')) W_hr^T)

GRU (gates r, z, n; b_hn sits inside the reset product)::

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
    h' = (1 - z) * n + z * h

Elman RNN (nn.RNN, nn.RNNCell)::

    h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),   act = tanh or relu

Every cell is also stated as one *step* of the uniform form the cell modules and their backends read
(`lstm_step`, `gru_step`, `rnn_step`): from the input side gx = x W_ih^T + b_ih and the hidden side
gh = h W_hh^T + b_hh (both (B, G)) and the states entering the step to the new states and what the
backward keeps; and its backward (`*_step_backward`) from the new states' gradients to the gradients of
gx and gh and the direct part of the previous states' (the rest reaches h through W_hh).

The pointwise parts (`lstm_pointwise`, `gru_pointwise`, `rnn_pointwise`) are shared by the reference backend; the
cells and the single-layer loops below are the plain autograd-differentiated statement of the
math that the tests use as an independent oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM cell after the matmuls.

    gates: pre-activations (..., 4H) in order i, f, g, o; c: previous cell state (..., H).
    Returns (activated gates (..., 4H), new cell state, unprojected hidden state o * tanh(c')).
    """
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    return torch.cat((i, f, g, o), dim=-1), c_new, o * torch.tanh(c_new)


def gru_pointwise(x_gates: Tensor, h_gates: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """GRU cell after the matmuls.

    x_gates: x W_ih^T + b_ih (..., 3H); h_gates: h W_hh^T + b_hh (..., 3H), both in order r, z, n;
    h: previous hidden state (..., H).
    Returns (activated r, z, n and the reset operand h W_hn^T + b_hn, as (..., 4H); new hidden state).
    """
    xr, xz, xn = x_gates.chunk(3, dim=-1)
    hr, hz, hn = h_gates.chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h_new = (1 - z) * n + z * h
    return torch.cat((r, z, n, hn), dim=-1), h_new


def rnn_pointwise(pre: Tensor, relu: bool) -> Tensor:
    """Elman cell after the matmuls: act(pre), act = relu or tanh."""
    return torch.relu(pre) if relu else torch.tanh(pre)


def rnn_derivative(h_new: Tensor, relu: bool) -> Tensor:
    """act'(pre), from the cell's output h' = act(pre): (h' > 0) for relu, 1 - h'^2 for tanh."""
    return (h_new > 0).to(h_new.dtype) if relu else 1 - h_new * h_new


# --- one step in the uniform form of the cells (see the module docstring) ----------------------


def lstm_step(gx: Tensor, gh: Tensor, states: tuple[Tensor, ...]) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """states (h, c) -> ((h', c'), activated gates (B, 4H))."""
    acts, c_new, h_new = lstm_pointwise(gx + gh, states[1])
    return (h_new, c_new), acts


def lstm_step_backward(d_new: tuple[Tensor, Tensor], states: tuple[Tensor, ...], new: tuple[Tensor, ...],
                       saved: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor | None, Tensor]]:
    """(dh', dc') -> (d gx, d gh, (direct dh: None, dc)): both sides share the gates' gradient."""
    dh, dc = d_new
    i, f, g, o = saved.chunk(4, dim=-1)
    tanh_c = torch.tanh(new[1])
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    dgates = torch.cat((dc_total * g * i * (1 - i), dc_total * states[1] * f * (1 - f),
                        dc_total * i * (1 - g * g), dh * tanh_c * o * (1 - o)), dim=-1)
    return dgates, dgates, (None, dc_total * f)


def gru_step(gx: Tensor, gh: Tensor, states: tuple[Tensor, ...]) -> tuple[tuple[Tensor], Tensor]:
    """states (h,) -> ((h',), r, z, n and the reset operand hn as (B, 4H))."""
    acts, h_new = gru_pointwise(gx, gh, states[0])
    return (h_new,), acts


def gru_step_backward(d_new: tuple[Tensor], states: tuple[Tensor, ...], new: tuple[Tensor, ...],
                      saved: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor]]:
    """(dh',) -> (d gx (d_r, d_z, d_n), d gh (d_r, d_z, d_hn), (direct dh = dh' z,))."""
    (dh,) = d_new
    r, z, n, hn = saved.chunk(4, dim=-1)
    d_n = dh * (1 - z) * (1 - n * n)
    d_r = d_n * hn * r * (1 - r)
    d_z = dh * (states[0] - n) * z * (1 - z)
    return torch.cat((d_r, d_z, d_n), dim=-1), torch.cat((d_r, d_z, d_n * r), dim=-1), (dh * z,)


def rnn_step(gx: Tensor, gh: Tensor, states: tuple[Tensor, ...], relu: bool) -> tuple[tuple[Tensor], Tensor]:
    """states (h,) -> ((h',), nothing saved: the backward reads act' off h')."""
    return (rnn_pointwise(gx + gh, relu),), gx.new_empty(0)


def rnn_step_backward(d_new: tuple[Tensor], states: tuple[Tensor, ...], new: tuple[Tensor, ...], saved: Tensor,
                      relu: bool) -> tuple[Tensor, Tensor, tuple[None]]:
    """(dh',) -> (d pre, d pre, (None,)): h reaches the previous state only through W_hh."""
    d_pre = d_new[0] * rnn_derivative(new[0], relu)
    return d_pre, d_pre, (None,)


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step: returns (h', c')."""
    gates = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    _, c_new, h_new = lstm_pointwise(gates, c)
    if w_hr is not None:
        h_new = h_new @ w_hr.T
    return h_new, c_new


def gru_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> Tensor:
    """One GRU step: returns h'."""
    x_gates = x @ w_ih.T
    h_gates = h @ w_hh.T
    if b_ih is not None:
        x_gates = x_gates + b_ih
        h_gates = h_gates + b_hh
    return gru_pointwise(x_gates, h_gates, h)[1]


def rnn_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """One Elman step: returns h'."""
    pre = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        pre = pre + b_ih + b_hh
    return rnn_pointwise(pre, relu)


def _time_steps(lengths: Tensor | None, seq_len: int, reverse: bool):
    """Yield (t, mask) over the steps in processing order; mask (B, 1) marks live sequences."""
    order = range(seq_len - 1, -1, -1) if reverse else range(seq_len)
    for t in order:
        yield t, None if lengths is None else (lengths > t).unsqueeze(-1)


def lstm_recurrence(
    xp: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM recurrence of one layer-direction from its projected input xp (T, B, 4H) = x W_ih^T + b_ih + b_hh,
    as the composition of plain differentiable ops (no in-place writes), so that autograd differentiates it to
    any order and torch.func transforms (vmap, jacrev, jvp) go through it. lengths (B,): sequence b only runs
    steps t < lengths[b]; its output there is 0 and its state is carried unchanged.
    Returns (outputs (T, B, R), h_n, c_n)."""
    h, c, outputs = h0, c0, [None] * xp.shape[0]
    for t, live in _time_steps(lengths.to(xp.device) if lengths is not None else None, xp.shape[0], reverse):
        _, c_new, h_new = lstm_pointwise(xp[t] + h @ w_hh.T, c)
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        if live is not None:
            h_new, c_new = torch.where(live, h_new, h), torch.where(live, c_new, c)
        h, c = h_new, c_new
        outputs[t] = h if live is None else h * live
    return torch.stack(outputs), h, c


def gru_recurrence(
    xp: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hn: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """The GRU recurrence from xp (T, B, 3H) = x W_ih^T + b_ih + (b_hr, b_hz, 0), b_hn inside the reset product;
    plain differentiable ops, as `lstm_recurrence`. Returns (outputs (T, B, H), h_n)."""
    hidden = h0.shape[-1]
    h_bias = None if b_hn is None else torch.cat((b_hn.new_zeros(2 * hidden), b_hn))

    def step(x_t: Tensor, h: Tensor) -> Tensor:
        return gru_pointwise(x_t, h @ w_hh.T if h_bias is None else h @ w_hh.T + h_bias, h)[1]

    return _hidden_state_recurrence(xp, h0, step, lengths, reverse)


def _hidden_state_recurrence(xp: Tensor, h0: Tensor, step, lengths: Tensor | None,
                             reverse: bool) -> tuple[Tensor, Tensor]:
    """The loop of a cell whose only state is h: h = step(xp_t, h) at each step in order, held where a
    sequence has ended (its outputs there 0). Returns (outputs (T, B, H), h_n)."""
    h, outputs = h0, [None] * xp.shape[0]
    for t, live in _time_steps(lengths.to(xp.device) if lengths is not None else None, xp.shape[0], reverse):
        h_new = step(xp[t], h)
        h = h_new if live is None else torch.where(live, h_new, h)
        outputs[t] = h if live is None else h * live
    return torch.stack(outputs), h


def lstm_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: tuple[Tensor | None, ...],
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over a time-major sequence x (T, B, I).

    weights: (w_ih, w_hh, b_ih, b_hh, w_hr), biases and w_hr may be None. lengths (B,): as in
    `lstm_recurrence`. Returns (outputs (T, B, R), h_n, c_n).
    """
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    xp = x @ w_ih.T if b_ih is None else x @ w_ih.T + b_ih + b_hh
    return lstm_recurrence(xp, h0, c0, w_hh, w_hr, lengths, reverse)


def gru_layer(
    x: Tensor,
    h0: Tensor,
    weights: tuple[Tensor | None, ...],
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """One GRU layer in one direction; as `lstm_layer`, weights (w_ih, w_hh, b_ih, b_hh).

    Returns (outputs (T, B, H), h_n).
    """
    w_ih, w_hh, b_ih, b_hh = weights
    if b_ih is None:
        return gru_recurrence(x @ w_ih.T, h0, w_hh, None, lengths, reverse)
    hidden = h0.shape[-1]
    xp = x @ w_ih.T + b_ih + torch.cat((b_hh[: 2 * hidden], b_hh.new_zeros(hidden)))
    return gru_recurrence(xp, h0, w_hh, b_hh[2 * hidden :], lengths, reverse)


def rnn_recurrence(
    xp: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    lengths: Tensor | None = None,
    reverse: bool = False,
    relu: bool = False,
) -> tuple[Tensor, Tensor]:
    """The Elman recurrence from xp (T, B, H) = x W_ih^T + b_ih + b_hh; plain differentiable ops, as
    `lstm_recurrence`. Returns (outputs (T, B, H), h_n)."""
    return _hidden_state_recurrence(xp, h0, lambda x_t, h: rnn_pointwise(x_t + h @ w_hh.T, relu), lengths, reverse)


def rnn_layer(
    x: Tensor,
    h0: Tensor,
    weights: tuple[Tensor | None, ...],
    lengths: Tensor | None = None,
    reverse: bool = False,
    relu: bool = False,
) -> tuple[Tensor, Tensor]:
    """One Elman layer in one direction; as `lstm_layer`, weights (w_ih, w_hh, b_ih, b_hh).

    Returns (outputs (T, B, H), h_n).
    """
    w_ih, w_hh, b_ih, b_hh = weights
    xp = x @ w_ih.T if b_ih is None else x @ w_ih.T + b_ih + b_hh
    return rnn_recurrence(xp, h0, w_hh, lengths, reverse, relu)
