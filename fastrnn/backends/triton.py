"""Triton backend: the recurrence contract of `fastrnn.backends.reference`, on fused Triton kernels.

The layers (LSTM, GRU, Elman tanh/relu): each call picks a launch plan (fastrnn/triton/plans.py:
persistent or stepwise, and tile sizes) for its shape, then runs the kernels of fastrnn/triton/lstm.py,
gru.py or rnn.py. The cells (cell_forward, cell_backward, for fastrnn.LSTMCell, GRUCell, RNNCell): one
launch of fastrnn/triton/cell_step.py per step and pass. Runs on CUDA tensors, and on CPU tensors under
TRITON_INTERPRET=1 (how CI exercises it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import BackendUnavailableError, cell_tf32_enabled, tf32_enabled
from .. import cells
from ..triton import cell_step as cell_kernels
from ..triton import gru as gru_kernels
from ..triton import lstm as lstm_kernels
from ..triton import plans
from ..triton import rnn as rnn_kernels
from .reference import live_steps

# Triton decides at kernel definition (import) whether they are compiled or interpreted (TRITON_INTERPRET=1).
INTERPRETED = type(lstm_kernels.lstm_forward_kernel).__name__ == "InterpretedFunction"


def dtype_unavailable_reason(dtype: torch.dtype) -> str | None:
    """Why the kernels refuse `dtype` here, or None. Triton's interpreter gets bfloat16 matrix products
    wrong (errors of order 1, not rounding: a wrong answer, so it is refused rather than returned)."""
    if INTERPRETED and dtype == torch.bfloat16:
        return ("the Triton kernels refuse bfloat16 under TRITON_INTERPRET=1: Triton's interpreter computes "
                "bfloat16 matrix products wrongly (errors of order 1). Run bfloat16 on a CUDA GPU; in the "
                "interpreter use float32, float16 or float64, or backend='reference'")
    return None


def _check_dtype(dtype: torch.dtype) -> None:
    reason = dtype_unavailable_reason(dtype)
    if reason is not None:
        raise BackendUnavailableError(f"backend='triton' cannot run: {reason}")


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation and carried cell state, fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_TRITON_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 matmuls follow the switch nn.LSTM obeys: TF32 while cudnn.allow_tf32 is on (the default)."""
    return "tf32" if tf32_enabled(dtype) else "ieee"


def _flags(dtype: torch.dtype) -> dict:
    return {"ACC": _TRITON_DTYPE[_accumulator(dtype)], "PRECISION": _dot_precision(dtype)}


def _device_lengths(lengths: torch.Tensor | None, seq_len: int, batch: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), seq_len, dtype=torch.int32, device=device)
    return lengths.to(device=device, dtype=torch.int32)


def _plan(cell, pass_, hidden, state, dtype, batch, device, run) -> plans.Plan:
    prob = plans.problem(cell, pass_, hidden, state, dtype, _dot_precision(dtype), batch, device)
    return plans.choose(prob, run)


def _persistent(kernel, plan: plans.Plan, batch: int, *args, **flags) -> None:
    if batch:
        kernel[(triton.cdiv(batch, plan.block_b),)](*args, **flags, BLOCK_B=plan.block_b, BLOCK_H=plan.block_h,
                                                   BLOCK_K=plan.block_k, num_warps=plan.num_warps)


class _Steps:
    """Host side of the stepwise strategy: the steps that have live rows, in processing order, and a
    launcher whose grid covers only the batch tiles holding live rows (lengths are sorted)."""

    def __init__(self, plan: plans.Plan, lengths: torch.Tensor | None, seq_len: int, batch: int, reverse: bool):
        self.plan = plan
        self.forward_order = live_steps(lengths, seq_len, batch, reverse)

    def launch(self, kernel, live: int, units: int, *args, tiles_k: bool = True, **flags) -> None:
        plan = self.plan
        grid = (triton.cdiv(live, plan.block_b), triton.cdiv(units, plan.block_h))
        extra = {"BLOCK_K": plan.block_k} if tiles_k else {}
        kernel[grid](*args, **flags, BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, num_warps=plan.num_warps, **extra)


def _final_state(y, h_buffers, steps: _Steps, h0, lengths, lens, reverse):
    """h_n after a stepwise forward. Without lengths it is the last-written buffer. With lengths, tiles of
    finished rows stop being launched, so a row's final state is read from y at its last step instead
    (`lens`: the lengths already on the device)."""
    if lengths is None:
        return h_buffers[len(steps.forward_order) % 2]
    lens = lens.long()
    last = torch.zeros_like(lens) if reverse else (lens - 1).clamp(min=0)
    final = y[last, torch.arange(y.shape[1], device=y.device)]
    return torch.where((lens > 0)[:, None], final, h0)


def _single_state_forward(plan, persistent_kernel, step_kernel, xp, h0, weights, outputs, lengths, reverse, **flags):
    """The forward launches of a cell whose only state is h (GRU, Elman), in either strategy; returns h_n.
    The kernels take (xp, h, *weights, lens, *outputs, T, B, H) (persistent) and (xp, h_in, h_out, *weights,
    lens, *outputs, t, B, H) (stepwise); outputs[0] is y, zero-initialised."""
    seq_len, batch, _ = xp.shape
    hidden = h0.shape[-1]
    lens = _device_lengths(lengths, seq_len, batch, xp.device)
    if plan.strategy == "persistent":
        h = h0.clone()
        _persistent(persistent_kernel, plan, batch, xp, h, *weights, lens, *outputs, seq_len, batch, hidden,
                    REVERSE=reverse, **flags)
        return h
    steps = _Steps(plan, lengths, seq_len, batch, reverse)
    h_buffers = (h0.clone(), h0.clone())
    for s, (t, live) in enumerate(steps.forward_order):
        steps.launch(step_kernel, live, hidden, xp, h_buffers[s % 2], h_buffers[(s + 1) % 2], *weights, lens, *outputs,
                     t, batch, hidden, **flags)
    return _final_state(outputs[0], h_buffers, steps, h0, lengths, lens, reverse)


# --- LSTM ------------------------------------------------------------------------------------------


def lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse, save=True, cache=None, scratch_xp=False):
    _check_dtype(xp.dtype)
    seq_len, batch, gate_size = xp.shape
    hidden, state = gate_size // 4, h0.shape[-1]
    plan = _plan("lstm", "forward", hidden, state, xp.dtype, batch, xp.device,
                 lambda p: _lstm_forward(p, xp, h0, c0, w_hh, w_hr, lengths, reverse))
    y, h_n, c_n, gates, c_all = _lstm_forward(plan, xp, h0, c0, w_hh, w_hr, lengths, reverse)
    if not save:  # an inference call: the kernels still write them, the caller keeps nothing
        gates = c_all = xp.new_empty(0)
    return y, h_n, c_n, gates, c_all


def _lstm_forward(plan, xp, h0, c0, w_hh, w_hr, lengths, reverse):
    seq_len, batch, gate_size = xp.shape
    hidden, state = gate_size // 4, h0.shape[-1]
    y = xp.new_zeros(seq_len, batch, state)
    gates = torch.zeros_like(xp)
    c_all = xp.new_zeros(seq_len, batch, hidden)
    c = c0.to(_accumulator(xp.dtype), copy=True)  # the carried cell state stays in fp32 whatever the dtype
    hu = xp.new_empty(batch, hidden) if w_hr is not None else xp.new_empty(0)
    w_hr_arg = w_hr if w_hr is not None else xp.new_empty(0)
    lens = _device_lengths(lengths, seq_len, batch, xp.device)
    flags = _flags(xp.dtype)
    if plan.strategy == "persistent":
        h = h0.clone()
        _persistent(lstm_kernels.lstm_forward_kernel, plan, batch,
                    xp, h, c, w_hh, w_hr_arg, hu, lens, y, gates, c_all, seq_len, batch, hidden, state,
                    HAS_PROJ=w_hr is not None, REVERSE=reverse, **flags)
    else:
        steps = _Steps(plan, lengths, seq_len, batch, reverse)
        h_buffers = (h0.clone(), h0.clone())
        for s, (t, live) in enumerate(steps.forward_order):
            h_in, h_out = h_buffers[s % 2], h_buffers[(s + 1) % 2]
            steps.launch(lstm_kernels.lstm_cell_step_kernel, live, hidden,
                         xp, h_in, h_out, c, w_hh, hu, lens, y, gates, c_all, t, batch, hidden, state,
                         HAS_PROJ=w_hr is not None, **flags)
            if w_hr is not None:
                steps.launch(lstm_kernels.lstm_project_step_kernel, live, state,
                             hu, w_hr, h_in, h_out, lens, y, t, batch, hidden, state, **flags)
        h = _final_state(y, h_buffers, steps, h0, lengths, lens, reverse)
    return y, h, c.to(c0.dtype), gates, c_all


def lstm_backward(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse, cache=None):
    _check_dtype(dy.dtype)
    batch, hidden, state = dy.shape[1], c_all.shape[-1], dy.shape[-1]
    args = (dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse)
    plan = _plan("lstm", "backward", hidden, state, dy.dtype, batch, dy.device, lambda p: _lstm_backward(p, *args))
    return _lstm_backward(plan, *args)


def _lstm_backward(plan, dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse):
    seq_len, batch, state = dy.shape
    hidden = c_all.shape[-1]
    dgates = torch.zeros_like(gates)
    dh_all = torch.zeros_like(dy) if w_hr is not None else dy.new_empty(0)
    w_hr_arg = w_hr if w_hr is not None else dy.new_empty(0)
    dh = dh_n.clone()
    dc = dc_n.to(_accumulator(dy.dtype), copy=True)
    lens = _device_lengths(lengths, seq_len, batch, dy.device)
    flags = _flags(dy.dtype)
    if plan.strategy == "persistent":
        _persistent(lstm_kernels.lstm_backward_kernel, plan, batch,
                    dy, c_prev, w_hh, w_hr_arg, gates, c_all, lens, dh, dc, dgates, dh_all,
                    seq_len, batch, hidden, state, HAS_PROJ=w_hr is not None, REVERSE=reverse, **flags)
    else:
        steps = _Steps(plan, lengths, seq_len, batch, reverse)
        for t, live in reversed(steps.forward_order):
            if w_hr is not None:
                steps.launch(lstm_kernels.lstm_dh_sum_step_kernel, live, state,
                             dy, dh, dh_all, lens, t, batch, state, ACC=flags["ACC"], tiles_k=False)
            steps.launch(lstm_kernels.lstm_cell_backward_step_kernel, live, hidden,
                         dy, dh, dh_all, w_hr_arg, c_prev, gates, c_all, lens, dc, dgates, t, batch, hidden, state,
                         HAS_PROJ=w_hr is not None, **flags)
            steps.launch(lstm_kernels.lstm_carry_step_kernel, live, state,
                         dgates, w_hh, dh, lens, t, batch, hidden, state, **flags)
    return dgates, dh_all, dh, dc.to(dc_n.dtype)


# --- GRU -------------------------------------------------------------------------------------------


def gru_forward(xp, h0, w_hh, b_hn, lengths, reverse, save=True, cache=None):
    _check_dtype(xp.dtype)
    batch, hidden = xp.shape[1], h0.shape[-1]
    plan = _plan("gru", "forward", hidden, hidden, xp.dtype, batch, xp.device,
                 lambda p: _gru_forward(p, xp, h0, w_hh, b_hn, lengths, reverse))
    y, h_n, saved = _gru_forward(plan, xp, h0, w_hh, b_hn, lengths, reverse)
    return y, h_n, saved if save else xp.new_empty(0)


def _gru_forward(plan, xp, h0, w_hh, b_hn, lengths, reverse):
    seq_len, batch, _ = xp.shape
    hidden = h0.shape[-1]
    y = xp.new_zeros(seq_len, batch, hidden)
    saved = xp.new_zeros(seq_len, batch, 4 * hidden)
    b_hn_arg = b_hn if b_hn is not None else xp.new_empty(0)
    h = _single_state_forward(plan, gru_kernels.gru_forward_kernel, gru_kernels.gru_cell_step_kernel, xp, h0,
                              (w_hh, b_hn_arg), (y, saved), lengths, reverse, HAS_BIAS=b_hn is not None,
                              **_flags(xp.dtype))
    return y, h, saved


def gru_backward(dy, dh_n, h_prev, w_hh, saved, lengths, reverse, cache=None):
    _check_dtype(dy.dtype)
    batch, hidden = dy.shape[1], dy.shape[-1]
    args = (dy, dh_n, h_prev, w_hh, saved, lengths, reverse)
    plan = _plan("gru", "backward", hidden, hidden, dy.dtype, batch, dy.device, lambda p: _gru_backward(p, *args))
    return _gru_backward(plan, *args)


def _gru_backward(plan, dy, dh_n, h_prev, w_hh, saved, lengths, reverse):
    seq_len, batch, hidden = dy.shape
    dxp = dy.new_zeros(seq_len, batch, 3 * hidden)
    dhn = torch.zeros_like(dy)
    dh = dh_n.clone()
    lens = _device_lengths(lengths, seq_len, batch, dy.device)
    flags = _flags(dy.dtype)
    if plan.strategy == "persistent":
        _persistent(gru_kernels.gru_backward_kernel, plan, batch,
                    dy, h_prev, w_hh, saved, lens, dh, dxp, dhn, seq_len, batch, hidden, REVERSE=reverse, **flags)
    else:
        steps = _Steps(plan, lengths, seq_len, batch, reverse)
        for t, live in reversed(steps.forward_order):
            steps.launch(gru_kernels.gru_cell_backward_step_kernel, live, hidden,
                         dy, dh, h_prev, saved, lens, dxp, dhn, t, batch, hidden, ACC=flags["ACC"], tiles_k=False)
            steps.launch(gru_kernels.gru_carry_step_kernel, live, hidden,
                         dxp, dhn, w_hh, dh, lens, t, batch, hidden, **flags)
    return dxp, dhn, dh


# --- Elman -----------------------------------------------------------------------------------------


def _check_rnn_arguments(xp, h0, w_hh, lengths) -> None:
    """The shapes the Elman kernels index by, checked before a launch could read past a tensor."""
    if xp.dim() != 3 or h0.dim() != 2 or w_hh.dim() != 2:
        raise RuntimeError(f"triton rnn_forward: expected xp (T, B, H), h0 (B, H), w_hh (H, H); got "
                           f"{tuple(xp.shape)}, {tuple(h0.shape)}, {tuple(w_hh.shape)}")
    batch, hidden = xp.shape[1], xp.shape[2]
    if h0.shape != (batch, hidden) or w_hh.shape != (hidden, hidden):
        raise RuntimeError(f"triton rnn_forward: xp {tuple(xp.shape)} needs h0 ({batch}, {hidden}) and w_hh "
                           f"({hidden}, {hidden}); got {tuple(h0.shape)}, {tuple(w_hh.shape)}")
    if lengths is not None and lengths.shape != (batch,):
        raise RuntimeError(f"triton rnn_forward: lengths must be ({batch},); got {tuple(lengths.shape)}")


def rnn_forward(xp, h0, w_hh, relu, lengths, reverse, save=True, cache=None):
    """reference.rnn_forward: (y, h_n). The backward needs nothing but y, so `save` changes nothing."""
    _check_dtype(xp.dtype)
    _check_rnn_arguments(xp, h0, w_hh, lengths)
    args = (xp.contiguous(), h0.contiguous(), w_hh.contiguous(), bool(relu), lengths, reverse)
    hidden = h0.shape[-1]
    plan = _plan("rnn", "forward", hidden, hidden, xp.dtype, xp.shape[1], xp.device, lambda p: _rnn_forward(p, *args))
    return _rnn_forward(plan, *args)


def _rnn_forward(plan, xp, h0, w_hh, relu, lengths, reverse):
    y = torch.zeros_like(xp)
    h = _single_state_forward(plan, rnn_kernels.rnn_forward_kernel, rnn_kernels.rnn_cell_step_kernel, xp, h0,
                              (w_hh,), (y,), lengths, reverse, RELU=relu, **_flags(xp.dtype))
    return y, h


def rnn_backward(dy, dh_n, y, w_hh, relu, lengths, reverse, cache=None):
    """reference.rnn_backward: (dxp, dh0), act' read off the forward's outputs y."""
    _check_dtype(dy.dtype)
    _check_rnn_arguments(y, dh_n, w_hh, lengths)
    if dy.shape != y.shape:
        raise RuntimeError(f"triton rnn_backward: dy {tuple(dy.shape)} must have y's shape {tuple(y.shape)}")
    args = (dy.contiguous(), dh_n.contiguous(), y.contiguous(), w_hh.contiguous(), bool(relu), lengths, reverse)
    hidden = y.shape[-1]
    plan = _plan("rnn", "backward", hidden, hidden, dy.dtype, dy.shape[1], dy.device, lambda p: _rnn_backward(p, *args))
    return _rnn_backward(plan, *args)


def _rnn_backward(plan, dy, dh_n, y, w_hh, relu, lengths, reverse):
    seq_len, batch, hidden = dy.shape
    dxp = torch.zeros_like(dy)
    dh = dh_n.clone()
    lens = _device_lengths(lengths, seq_len, batch, dy.device)
    flags = _flags(dy.dtype)
    if plan.strategy == "persistent":
        _persistent(rnn_kernels.rnn_backward_kernel, plan, batch,
                    dy, y, w_hh, lens, dh, dxp, seq_len, batch, hidden, RELU=relu, REVERSE=reverse, **flags)
    else:
        steps = _Steps(plan, lengths, seq_len, batch, reverse)
        for t, live in reversed(steps.forward_order):
            steps.launch(rnn_kernels.rnn_cell_backward_step_kernel, live, hidden,
                         dy, dh, y, lens, dxp, t, batch, hidden, RELU=relu, ACC=flags["ACC"], tiles_k=False)
            steps.launch(rnn_kernels.rnn_carry_step_kernel, live, hidden, dxp, w_hh, dh, lens, t, batch, hidden, **flags)
    return dxp, dh


# --- the cells: one fused step per call, for the cell modules ----------------------------------------

# Tiles of the cell kernels: rows x hidden units per program, and the GEMMs' reduction chunk (tl.dot needs >= 16).
CELL_BLOCK_B, CELL_BLOCK_H, CELL_BLOCK_K = 16, 32, 32
_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _cell_precision(dtype: torch.dtype) -> str:
    """fp32 cell GEMMs on TF32 only where nn's cells' would be (backends.cell_tf32_enabled)."""
    return "tf32" if cell_tf32_enabled(dtype) else "ieee"


def _empty(shape, like: torch.Tensor) -> torch.Tensor:
    """A cell kernel's output, every element of which the kernel writes."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _check_cell_arguments(cell: cells.Cell, x, states, w_ih, w_hh, b_ih, b_hh) -> None:
    """The shapes, dtypes and devices the cell kernels index by, checked before a launch could read past a tensor."""
    if len(states) != len(cell.states):
        raise RuntimeError(f"triton cell_forward: {cell.mode} takes states {cell.states}; got {len(states)}")
    if x.dim() != 2 or states[0].dim() != 2:
        raise RuntimeError(f"triton cell_forward: expected x (B, I) and states (B, H); got {tuple(x.shape)}, "
                           f"{tuple(states[0].shape)}")
    if x.dtype not in _FLOATING:
        raise RuntimeError(f"triton cell_forward: the kernels take {', '.join(map(str, _FLOATING))}; got {x.dtype}")
    (batch, inputs), hidden = x.shape, states[0].shape[1]
    gate_rows = cell.gates * hidden
    expected = [("w_ih", w_ih, (gate_rows, inputs)), ("w_hh", w_hh, (gate_rows, hidden))]
    expected += [(f"state {name}", state, (batch, hidden)) for name, state in zip(cell.states, states)]
    if (b_ih is None) != (b_hh is None):
        raise RuntimeError("triton cell_forward: b_ih and b_hh are both given or both None")
    if b_ih is not None:
        expected += [("b_ih", b_ih, (gate_rows,)), ("b_hh", b_hh, (gate_rows,))]
    for name, tensor, shape in expected:
        if tensor.shape != shape or tensor.dtype != x.dtype or tensor.device != x.device:
            raise RuntimeError(f"triton cell_forward: {cell.mode} with x {tuple(x.shape)} {x.dtype} on {x.device} needs "
                               f"{name} of shape {shape} in that dtype and device; got {tuple(tensor.shape)} "
                               f"{tensor.dtype} on {tensor.device}")


def _cell_grid(batch: int, hidden: int) -> tuple[int, int]:
    return triton.cdiv(batch, CELL_BLOCK_B), triton.cdiv(hidden, CELL_BLOCK_H)


def cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, save=True, cache=None):
    """reference.cell_forward in one launch: both gate GEMMs and the cell (fastrnn/triton/cell_step.py). The
    kernel reads the weights as they are, so `cache` (the module's dict for prepacked weights) is unused."""
    cell = cells.cell(mode)
    _check_dtype(x.dtype)
    _check_cell_arguments(cell, x, states, w_ih, w_hh, b_ih, b_hh)
    batch, hidden = x.shape[0], states[0].shape[1]
    lstm = len(cell.states) == 2
    h_new = _empty((batch, hidden), x)
    c_new = _empty((batch, hidden), x) if lstm else x.new_empty(0)
    saved = _empty((batch, 4 * hidden), x) if save and cell.gates > 1 else x.new_empty(0)
    if batch:
        unused = x.new_empty(0)
        cell_kernels.cell_forward_kernel[_cell_grid(batch, hidden)](
            x.contiguous(), states[0].contiguous(), states[1].contiguous() if lstm else unused,
            w_ih.contiguous(), w_hh.contiguous(), unused if b_ih is None else b_ih.contiguous(),
            unused if b_hh is None else b_hh.contiguous(), h_new, c_new, saved, batch, x.shape[1], hidden,
            MODE=mode, HAS_BIAS=b_ih is not None, SAVE=saved.numel() > 0, ACC=_TRITON_DTYPE[_accumulator(x.dtype)],
            PRECISION=_cell_precision(x.dtype), BLOCK_B=CELL_BLOCK_B, BLOCK_H=CELL_BLOCK_H, BLOCK_K=CELL_BLOCK_K)
    return ((h_new, c_new) if lstm else (h_new,)), saved


def cell_backward(mode, d_new, states, new, saved):
    """reference.cell_backward as one pointwise launch: (d gx, d gh, the direct part of each state's gradient,
    None where a state reaches the result only through W_hh). d gh is d gx itself but for the GRU."""
    cell = cells.cell(mode)
    _check_dtype(d_new[0].dtype)
    h = states[0]
    batch, hidden = h.shape
    lstm, gru = mode == "LSTM", mode == "GRU"
    dgx = _empty((batch, cell.gates * hidden), h)
    dgh = _empty((batch, 3 * hidden), h) if gru else dgx
    direct = _empty((batch, hidden), h) if lstm or gru else h.new_empty(0)
    if batch:
        unused = h.new_empty(0)
        cell_kernels.cell_backward_kernel[_cell_grid(batch, hidden)](
            d_new[0].contiguous(), d_new[1].contiguous() if lstm else unused, h.contiguous(),
            states[1].contiguous() if lstm else unused, new[0].contiguous(), new[1].contiguous() if lstm else unused,
            saved.contiguous(), dgx, dgh, direct, batch, hidden,
            MODE=mode, ACC=_TRITON_DTYPE[_accumulator(h.dtype)], BLOCK_B=CELL_BLOCK_B, BLOCK_H=CELL_BLOCK_H)
    if lstm:
        return dgx, dgh, (None, direct)
    return dgx, dgh, (direct if gru else None,)
