"""Triton Elman (nn.RNN) recurrence, forward and backward, in the two launch strategies of
fastrnn/triton/lstm.py (read its docstring first): h_t = act(xp_t + h_{t-1} W_hh^T), act tanh or relu
(the constexpr RELU), xp = x W_ih^T + b_ih + b_hh.

Phases of a step:  forward   cell   h_t = act(xp_t + h_{t-1} W_hh^T)
                   backward  cell   dxp_t = (dy_t + dh_t) * act'(y_t)   (act' read off y_t, as the reference)
                             carry  dh_{t-1} = dxp_t W_hh
All phases tile over hidden units. Nothing but y is kept for the backward.
"""

import triton
import triton.language as tl

from .common import (_copy_rows, _elman_activation, _elman_derivative, _matmul_rows, _program_rows, _step_index,
                     _step_tile, _store_step_output)

# --- tiles: one phase of one step for (rows x hidden units) --------------------------------------------


@triton.jit
def _rnn_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_ptr, w_hh_ptr, B, H,
                   RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """h_t of hidden units `cols` from h_{t-1} (h_ptr, B x H)."""
    pre = _matmul_rows(h_ptr, H, rows, live, w_hh_ptr, 1, H, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    offsets = t * B * H + rows[:, None] * H + cols[None, :]
    pre += tl.load(xp_ptr + offsets, mask=live[:, None] & col_ok[None, :], other=0.0).to(ACC)
    return _elman_activation(pre, RELU)


@triton.jit
def _rnn_cell_backward_tile(t, rows, live, cols, col_ok, dy_ptr, dh_ptr, y_ptr, dxp_ptr, B, H,
                            RELU: tl.constexpr, ACC: tl.constexpr):
    """dxp_t = (dy_t + dh_t) * act'(y_t) for hidden units `cols`."""
    mask = live[:, None] & col_ok[None, :]
    state_offsets = rows[:, None] * H + cols[None, :]
    step_offsets = t * B * H + state_offsets
    dh_t = tl.load(dy_ptr + step_offsets, mask=mask, other=0.0).to(ACC) + tl.load(dh_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    y_t = tl.load(y_ptr + step_offsets, mask=mask, other=0.0).to(ACC)
    tl.store(dxp_ptr + step_offsets, dh_t * _elman_derivative(y_t, RELU), mask=mask)


@triton.jit
def _rnn_carry_tile(t, rows, live, cols, col_ok, dxp_ptr, w_hh_ptr, dh_ptr, B, H,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """dh_{t-1} = dxp_t W_hh for hidden units `cols`: every unit's pre-activation feeds each one."""
    dh_prev = _matmul_rows(dxp_ptr + t * B * H, H, rows, live, w_hh_ptr, H, 1, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    tl.store(dh_ptr + rows[:, None] * H + cols[None, :], dh_prev, mask=live[:, None] & col_ok[None, :])


# --- persistent: one launch per layer-direction -------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def rnn_forward_kernel(
    xp_ptr, h_ptr, w_hh_ptr, len_ptr,  # inputs; h: carried state (in/out)
    y_ptr,  # output y (T, B, H)
    T, B, H,
    RELU: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    steps = tl.max(lengths)  # steps past every row's length are padding: not walked at all
    for s in range(0, steps):
        t = _step_index(s, steps, REVERSE)
        live = row_ok & (t < lengths)
        y_t = y_ptr + t * B * H
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            h_new = _rnn_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_ptr, w_hh_ptr, B, H,
                                   RELU, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            tl.store(y_t + rows[:, None] * H + cols[None, :], h_new, mask=live[:, None] & col_ok[None, :])
        tl.debug_barrier()
        _copy_rows(y_t, h_ptr, rows, live, H, BLOCK_B, BLOCK_H)  # h_{t-1} is read by every tile: update last
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def rnn_backward_kernel(
    dy_ptr, y_ptr, w_hh_ptr, len_ptr,  # inputs
    dh_ptr,  # carried gradient (in: dh_n; out: dh0)
    dxp_ptr,  # output (zero-initialised): dxp (T, B, H)
    T, B, H,
    RELU: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    steps = tl.max(lengths)
    for s in range(0, steps):
        t = _step_index(s, steps, not REVERSE)  # walk the forward's steps backwards
        live = row_ok & (t < lengths)
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            _rnn_cell_backward_tile(t, rows, live, cols, cols < H, dy_ptr, dh_ptr, y_ptr, dxp_ptr, B, H, RELU, ACC)
        tl.debug_barrier()
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            _rnn_carry_tile(t, rows, live, cols, cols < H, dxp_ptr, w_hh_ptr, dh_ptr, B, H,
                            ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        tl.debug_barrier()


# --- stepwise: one launch per phase and step, grid (batch tiles, hidden tiles) --------------------------


@triton.jit(do_not_specialize=["t", "B"])
def rnn_cell_step_kernel(
    xp_ptr, h_in_ptr, h_out_ptr, w_hh_ptr, len_ptr, y_ptr,
    t, B, H,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t, rows, row_ok, live, cols, col_ok = _step_tile(len_ptr, t, B, H, BLOCK_B, BLOCK_H)
    h_new = _rnn_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_in_ptr, w_hh_ptr, B, H,
                           RELU, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    _store_step_output(y_ptr + t * B * H, h_in_ptr, h_out_ptr, h_new, rows, row_ok, live, cols, col_ok, H)


@triton.jit(do_not_specialize=["t", "B"])
def rnn_cell_backward_step_kernel(dy_ptr, dh_ptr, y_ptr, len_ptr, dxp_ptr, t, B, H,
                                  RELU: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    t, rows, row_ok, live, cols, col_ok = _step_tile(len_ptr, t, B, H, BLOCK_B, BLOCK_H)
    _rnn_cell_backward_tile(t, rows, live, cols, col_ok, dy_ptr, dh_ptr, y_ptr, dxp_ptr, B, H, RELU, ACC)


@triton.jit(do_not_specialize=["t", "B"])
def rnn_carry_step_kernel(
    dxp_ptr, w_hh_ptr, dh_ptr, len_ptr,
    t, B, H,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t, rows, row_ok, live, cols, col_ok = _step_tile(len_ptr, t, B, H, BLOCK_B, BLOCK_H)
    _rnn_carry_tile(t, rows, live, cols, col_ok, dxp_ptr, w_hh_ptr, dh_ptr, B, H,
                    ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
