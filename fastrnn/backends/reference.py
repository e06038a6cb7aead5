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

from ..cell_math import gru_pointwise, lstm_pointwise


def unavailable_reason(device: torch.device) -> str | None:
    return None


def live_rows(lengths: Tensor | None, seq_len: int, batch: int) -> list[int]:
    if lengths is None:
        return [batch] * seq_len
    steps = torch.arange(seq_len, device=lengths.device).unsqueeze(1)
    return (lengths.unsqueeze(0) > steps).sum(1).tolist()


def step_order(seq_len: int, reverse: bool) -> range:
    return range(seq_len - 1, -1, -1) if reverse else range(seq_len)


def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True):
    seq_len, batch, _ = xp.shape
    hidden = c0.shape[-1]
    y = xp.new_zeros(seq_len, batch, h0.shape[-1])
    gates = xp.new_zeros(seq_len, batch, 4 * hidden)
    c_all = xp.new_zeros(seq_len, batch, hidden)
    h, c = h0.clone(), c0.clone()
    live = live_rows(lengths, seq_len, batch)
    for t in step_order(seq_len, reverse):
        n = live[t]
        if n == 0:
            continue
        acts, c_new, h_new = lstm_pointwise(torch.addmm(xp[t, :n], h[:n], w_hh.T), c[:n])
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        h[:n], c[:n] = h_new, c_new
        y[t, :n], gates[t, :n], c_all[t, :n] = h_new, acts, c_new
    if not save:  # an inference call: nothing is kept for a backward
        gates = c_all = xp.new_empty(0)
    return y, h, c, gates, c_all


def lstm_backward(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse):
    seq_len, batch, _ = dy.shape
    dgates = torch.zeros_like(gates)
    dh_all = torch.zeros_like(dy) if w_hr is not None else dy.new_empty(0)
    dh, dc = dh_n.clone(), dc_n.clone()
    live = live_rows(lengths, seq_len, batch)
    for t in reversed(step_order(seq_len, reverse)):
        n = live[t]
        if n == 0:
            continue
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


def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True):
    seq_len, batch, _ = xp.shape
    hidden = h0.shape[-1]
    y = xp.new_zeros(seq_len, batch, hidden)
    saved = xp.new_zeros(seq_len, batch, 4 * hidden)
    h_bias = None if b_hn is None else torch.cat((b_hn.new_zeros(2 * hidden), b_hn))
    h = h0.clone()
    live = live_rows(lengths, seq_len, batch)
    for t in step_order(seq_len, reverse):
        n = live[t]
        if n == 0:
            continue
        h_gates = h[:n] @ w_hh.T if h_bias is None else torch.addmm(h_bias, h[:n], w_hh.T)
        acts, h_new = gru_pointwise(xp[t, :n], h_gates, h[:n])
        h[:n] = h_new
        y[t, :n], saved[t, :n] = h_new, acts
    return y, h, saved if save else xp.new_empty(0)


def gru_backward(dy, dh_n, h_prev, w_hh, saved, lengths, reverse):
    seq_len, batch, hidden = dy.shape
    dxp = dy.new_zeros(seq_len, batch, 3 * hidden)
    dhn = torch.zeros_like(dy)
    dh = dh_n.clone()
    live = live_rows(lengths, seq_len, batch)
    w_rz, w_n = w_hh[: 2 * hidden], w_hh[2 * hidden :]
    for t in reversed(step_order(seq_len, reverse)):
        n = live[t]
        if n == 0:
            continue
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
