"""C++ CPU backend: the recurrence contract of `fastrnn.backends.reference`, on the fused CPU kernels of
fastrnn._C (csrc/cpu/): the whole T-step loop in C++, per step a register-blocked GEMM with the cell in
its epilogue, one parallel region per layer-direction; float32, float64 and bfloat16 (computed in float32)
on CPU tensors."""

from __future__ import annotations

import torch

from .. import _ext

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the cpp backend runs on CPU tensors; got a {device.type} tensor"
    return _ext.build_reason()


def _kernels():
    module = _ext.extension()
    if module is None:
        raise RuntimeError(f"fastrnn's C++ kernels are unavailable: {_ext.unavailable_reason()}")
    return module


def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True):
    return _kernels().lstm_forward_cpu(xp, h0, c0, w_hh, w_hr, lengths, reverse, save)


def lstm_backward(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse):
    return _kernels().lstm_backward_cpu(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse)


def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True):
    return _kernels().gru_forward_cpu(xp, h0, w_hh, b_hn, lengths, reverse, save)


def gru_backward(dy, dh_n, h_prev, w_hh, saved, lengths, reverse):
    return _kernels().gru_backward_cpu(dy, dh_n, h_prev, w_hh, saved, lengths, reverse)
