"""Triton backend: the recurrence contract of `fastrnn.backends.reference`, on fused Triton kernels.

One launch per layer-direction and pass (see fastrnn/triton/lstm.py for the kernel design). Runs on
CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (how CI exercises it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton import gru as gru_kernels
from ..triton import lstm as lstm_kernels

# Tile sizes: tl.dot needs every dimension >= 16. Autotuning per (cell, H, dtype, arch) comes with GPU timing.
BLOCK_B, BLOCK_H, BLOCK_K = 16, 32, 32


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation and carried cell state, fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_TRITON_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 matmuls follow the switch nn.LSTM obeys: TF32 while cudnn.allow_tf32 is on (the default)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def _lengths(lengths: torch.Tensor | None, seq_len: int, batch: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), seq_len, dtype=torch.int32, device=device)
    return lengths.to(device=device, dtype=torch.int32)


def _launch(kernel, batch: int, *args, **flags) -> None:
    if batch:
        kernel[(triton.cdiv(batch, BLOCK_B),)](*args, **flags, BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K)


def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse):
    seq_len, batch, gate_size = xp.shape
    hidden, state = gate_size // 4, h0.shape[-1]
    acc_dtype = _accumulator(xp.dtype)
    y = xp.new_zeros(seq_len, batch, state)
    gates = torch.zeros_like(xp)
    c_all = xp.new_zeros(seq_len, batch, hidden)
    h = h0.clone()
    c = c0.to(acc_dtype, copy=True)  # the carried cell state stays in fp32 whatever the dtype
    hu = xp.new_empty(batch, hidden) if w_hr is not None else xp.new_empty(0)
    _launch(lstm_kernels.lstm_forward_kernel, batch,
            xp, h, c, w_hh, w_hr if w_hr is not None else xp.new_empty(0), hu,
            _lengths(lengths, seq_len, batch, xp.device), y, gates, c_all,
            seq_len, batch, hidden, state,
            HAS_PROJ=w_hr is not None, REVERSE=reverse, ACC=_TRITON_DTYPE[acc_dtype], PRECISION=_dot_precision(xp.dtype))
    return y, h, c.to(c0.dtype), gates, c_all


def lstm_backward(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse):
    seq_len, batch, state = dy.shape
    hidden = c_all.shape[-1]
    acc_dtype = _accumulator(dy.dtype)
    dgates = torch.zeros_like(gates)
    dh_all = torch.zeros_like(dy) if w_hr is not None else dy.new_empty(0)
    dhu = dy.new_empty(batch, hidden, dtype=acc_dtype) if w_hr is not None else dy.new_empty(0)
    dh = dh_n.clone()
    dc = dc_n.to(acc_dtype, copy=True)
    _launch(lstm_kernels.lstm_backward_kernel, batch,
            dy, c_prev, w_hh, w_hr if w_hr is not None else dy.new_empty(0), gates, c_all,
            _lengths(lengths, seq_len, batch, dy.device), dh, dc, dgates, dh_all, dhu,
            seq_len, batch, hidden, state,
            HAS_PROJ=w_hr is not None, REVERSE=reverse, ACC=_TRITON_DTYPE[acc_dtype], PRECISION=_dot_precision(dy.dtype))
    return dgates, dh_all, dh, dc.to(dc_n.dtype)


def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse):
    seq_len, batch, _ = xp.shape
    hidden = h0.shape[-1]
    y = xp.new_zeros(seq_len, batch, hidden)
    saved = xp.new_zeros(seq_len, batch, 4 * hidden)
    h = h0.clone()
    _launch(gru_kernels.gru_forward_kernel, batch,
            xp, h, w_hh, b_hn if b_hn is not None else xp.new_empty(0),
            _lengths(lengths, seq_len, batch, xp.device), y, saved, seq_len, batch, hidden,
            HAS_BIAS=b_hn is not None, REVERSE=reverse, ACC=_TRITON_DTYPE[_accumulator(xp.dtype)], PRECISION=_dot_precision(xp.dtype))
    return y, h, saved


def gru_backward(dy, dh_n, h_prev, w_hh, saved, lengths, reverse):
    seq_len, batch, hidden = dy.shape
    dxp = dy.new_zeros(seq_len, batch, 3 * hidden)
    dhn = torch.zeros_like(dy)
    dh = dh_n.clone()
    _launch(gru_kernels.gru_backward_kernel, batch,
            dy, h_prev, w_hh, saved, _lengths(lengths, seq_len, batch, dy.device), dh, dxp, dhn,
            seq_len, batch, hidden,
            REVERSE=reverse, ACC=_TRITON_DTYPE[_accumulator(dy.dtype)], PRECISION=_dot_precision(dy.dtype))
    return dxp, dhn, dh
