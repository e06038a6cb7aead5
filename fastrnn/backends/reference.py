"""Reference backend: the recurrence and its explicit backward as a plain PyTorch step loop.

This is the algorithm every kernel backend implements (see `fastrnn.backends` for the contract):
the forward walks the T steps, the backward walks them in reverse producing the gate gradients,
and the caller turns those into weight gradients with large GEMMs over all steps.

Sequences are time-major and padded; `lengths` (sorted non-increasing, or None for all T) makes
sequence b run only steps t < lengths[b]. Because lengths are sorted, the live sequences at any
step are a prefix of the batch, so each step works on rows [:live] and never touches padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import cells
from ..cell_math import gru_pointwise, lstm_pointwise, rnn_derivative, rnn_pointwise


def unavailable_reason(device: torch.device) -> str | None:
    return None


def live_rows(lengths: Tensor | None, seq_len: int, batch: int) -> list[int]:
    if lengths is None:
        return [batch] * seq_len
    steps = torch.arange(seq_len, device=lengths.device).unsqueeze(1)
    return (lengths.unsqueeze(0) > steps).sum(1).tolist()


def live_steps(lengths: Tensor | None, seq_len: int, batch: int, reverse: bool) -> list[tuple[int, int]]:
    """(t, n) for each step that has live rows, in processing order: its live rows are the first n (lengths
    are sorted in decreasing order)."""
    live = live_rows(lengths, seq_len, batch)
    return [(t, live[t]) for t in step_order(seq_len, reverse) if live[t]]


def step_order(seq_len: int, reverse: bool) -> range:
    return range(seq_len - 1, -1, -1) if reverse else range(seq_len)


def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True, cache=None, scratch_xp=False):
    seq_len, batch, _ = xp.shape
    hidden = c0.shape[-1]
    y = xp.new_zeros(seq_len, batch, h0.shape[-1])
    gates = xp.new_zeros(seq_len, batch, 4 * hidden)
    c_all = xp.new_zeros(seq_len, batch, hidden)
    h, c = h0.clone(), c0.clone()
    for t, n in live_steps(lengths, seq_len, batch, reverse):
        acts, c_new, h_new = lstm_pointwise(torch.addmm(xp[t, :n], h[:n], w_hh.T), c[:n])
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        h[:n], c[:n] = h_new, c_new
        y[t, :n], gates[t, :n], c_all[t, :n] = h_new, acts, c_new
    if not save:  # an inference call: nothing is kept for a backward
        gates = c_all = xp.new_empty(0)
    return y, h, c, gates, c_all


def lstm_backward(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse, cache=None):
    seq_len, batch, _ = dy.shape
    dgates = torch.zeros_like(gates)
    dh_all = torch.zeros_like(dy) if w_hr is not None else dy.new_empty(0)
    dh, dc = dh_n.clone(), dc_n.clone()
    for t, n in reversed(live_steps(lengths, seq_len, batch, reverse)):
        i, f, g, o = gates[t, :n].chunk(4, dim=-1)
        tanh_c = torch.tanh(c_all[t, :n])
        dh_t = dy[t, :n] + dh[:n]
        if w_hr is not None:
            dh_all[t, :n] = dh_t
            dh_t = dh_t @ w_hr
        dc_t = dc[:n] + dh_t * o * (1 - tanh_c * tanh_c)
        dgate = torch.cat(
            (
                dc_t * g * i * (1 - i),
                dc_t * c_prev[t, :n] * f * (1 - f),
                dc_t * i * (1 - g * g),
                dh_t * tanh_c * o * (1 - o),
            ),
            dim=-1,
        )
        dgates[t, :n] = dgate
        dh[:n] = dgate @ w_hh
        dc[:n] = dc_t * f
    return dgates, dh_all, dh, dc


def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True, cache=None):
    seq_len, batch, _ = xp.shape
    hidden = h0.shape[-1]
    y = xp.new_zeros(seq_len, batch, hidden)
    saved = xp.new_zeros(seq_len, batch, 4 * hidden)
    h_bias = None if b_hn is None else torch.cat((b_hn.new_zeros(2 * hidden), b_hn))
    h = h0.clone()
    for t, n in live_steps(lengths, seq_len, batch, reverse):
        h_gates = h[:n] @ w_hh.T if h_bias is None else torch.addmm(h_bias, h[:n], w_hh.T)
        acts, h_new = gru_pointwise(xp[t, :n], h_gates, h[:n])
        h[:n] = h_new
        y[t, :n], saved[t, :n] = h_new, acts
    return y, h, saved if save else xp.new_empty(0)


def gru_backward(dy, dh_n, h_prev, w_hh, saved, lengths, reverse, cache=None):
    seq_len, batch, hidden = dy.shape
    dxp = dy.new_zeros(seq_len, batch, 3 * hidden)
    dhn = torch.zeros_like(dy)
    dh = dh_n.clone()
    w_rz, w_n = w_hh[: 2 * hidden], w_hh[2 * hidden :]
    for t, n in reversed(live_steps(lengths, seq_len, batch, reverse)):
        r, z, cand, hn = saved[t, :n].chunk(4, dim=-1)
        dh_t = dy[t, :n] + dh[:n]
        dcand = dh_t * (1 - z) * (1 - cand * cand)
        d_rz = torch.cat(
            (dcand * hn * r * (1 - r), dh_t * (h_prev[t, :n] - cand) * z * (1 - z)), dim=-1
        )
        dhn_t = dcand * r
        dxp[t, :n] = torch.cat((d_rz, dcand), dim=-1)
        dhn[t, :n] = dhn_t
        dh[:n] = dh_t * z + d_rz @ w_rz + dhn_t @ w_n
    return dxp, dhn, dh


def rnn_forward(xp, h0, w_hh, relu, lengths, reverse, save=True, cache=None):
    """Elman recurrence: xp (T, B, H) = x W_ih^T + b_ih + b_hh. Returns y (T, B, H) and h_n; the backward
    needs nothing more than y (act' is read off h'), so `save` changes nothing here."""
    seq_len, batch, _ = xp.shape
    y = xp.new_zeros(seq_len, batch, h0.shape[-1])
    h = h0.clone()
    for t, n in live_steps(lengths, seq_len, batch, reverse):
        h[:n] = y[t, :n] = rnn_pointwise(torch.addmm(xp[t, :n], h[:n], w_hh.T), relu)
    return y, h


def rnn_backward(dy, dh_n, y, w_hh, relu, lengths, reverse, cache=None):
    """Reverse Elman recurrence from the forward's outputs y. Returns dxp (T, B, H) and dh0."""
    seq_len, batch, _ = dy.shape
    dxp = torch.zeros_like(dy)
    dh = dh_n.clone()
    for t, n in reversed(live_steps(lengths, seq_len, batch, reverse)):
        dxp[t, :n] = d_pre = (dy[t, :n] + dh[:n]) * rnn_derivative(y[t, :n], relu)
        dh[:n] = d_pre @ w_hh
    return dxp, dh


# --- the cells: one fused step (x and h in, the new states out), for the cell modules --------------


def cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, save=True, cache=None):
    """One step of cell `mode` from x (B, I) and its states ((h, c) or (h,), each (B, H)). Returns (the new
    states, saved): saved is what the cell's step keeps for the backward (empty when save is False). `cache`:
    where a backend may keep prepacked weights between calls (a dict owned by the calling module); unused here."""
    gx = x @ w_ih.T if b_ih is None else torch.addmm(b_ih, x, w_ih.T)
    gh = states[0] @ w_hh.T if b_hh is None else torch.addmm(b_hh, states[0], w_hh.T)
    new, saved = cells.cell(mode).step(gx, gh, states)
    return new, saved if save else x.new_empty(0)


def cell_backward(mode, d_new, states, new, saved):
    """The pointwise part of a step's backward: the new states' gradients (each (B, H)) -> (d gx, d gh (B, G),
    the direct part of the states' gradients (None where a state reaches the result only through W_hh))."""
    return cells.cell(mode).step_backward(d_new, states, new, saved)
