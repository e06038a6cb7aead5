"""Triton fused cell steps for fastrnn.LSTMCell, GRUCell and RNNCell (tanh, relu): one step per launch, over a
(batch tiles x hidden-unit tiles) grid.

forward   a program computes, for its rows and hidden units, every gate block of those units from both sides,
          gx = x W_ih^T + b_ih and gh = h W_hh^T + b_hh, and the cell on them, so the gates' pre-activations
          never reach memory; it writes the new states and what the backward keeps (`saved`, the layout of
          cells.Cell.step: LSTM i, f, g, o; GRU r, z, n, h W_hn^T + b_hn; Elman nothing).
backward  the step's pointwise backward (cells.Cell.step_backward's form): the new states' gradients to those
          of gx and gh and the direct part of the previous states'; the GEMMs that follow are torch's
          (fastrnn/cell_step.py).

MODE (the cell's nn mode: "LSTM", "GRU", "RNN_TANH", "RNN_RELU") is compile-time; B is not specialised, so one
compiled kernel serves every batch size. Accumulation in fp32 (fp64 for fp64 inputs).
"""

import triton
import triton.language as tl

from .common import _elman_activation, _elman_derivative, _matmul_rows, _tanh


@triton.jit
def _tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's batch rows (grid axis 0) and hidden units (grid axis 1), and which of them exist."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    return rows, rows < B, cols, cols < H


@triton.jit
def _gate_sides(gate, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """(gx, gh) of gate block `gate` for hidden units `cols`: x W_ih^T + b_ih and h W_hh^T + b_hh."""
    gx = _matmul_rows(x_ptr, I, rows, row_ok, w_ih_ptr + gate * H * I, 1, I, cols, col_ok, I, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    gh = _matmul_rows(h_ptr, H, rows, row_ok, w_hh_ptr + gate * H * H, 1, H, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    if HAS_BIAS:
        gx += tl.load(b_ih_ptr + gate * H + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
        gh += tl.load(b_hh_ptr + gate * H + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    return gx, gh


@triton.jit(do_not_specialize=["B"])  # one compiled kernel for every batch size
def cell_forward_kernel(
    x_ptr, h_ptr, c_in_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr,  # inputs; c (LSTM only), biases may be unused
    h_out_ptr, c_out_ptr, saved_ptr,  # outputs: h' (B, H); c' (LSTM); saved (B, 4H) (LSTM, GRU; when SAVE)
    B, I, H,
    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, cols, col_ok = _tile(B, H, BLOCK_B, BLOCK_H)
    mask = row_ok[:, None] & col_ok[None, :]
    state_offsets = rows[:, None] * H + cols[None, :]
    saved_offsets = rows[:, None] * 4 * H + cols[None, :]
    if MODE == "LSTM":
        gx, gh = _gate_sides(0, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                             HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        i = tl.sigmoid(gx + gh)
        gx, gh = _gate_sides(1, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                             HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        f = tl.sigmoid(gx + gh)
        gx, gh = _gate_sides(2, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                             HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        g = _tanh(gx + gh)
        gx, gh = _gate_sides(3, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                             HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        o = tl.sigmoid(gx + gh)
        c_new = f * tl.load(c_in_ptr + state_offsets, mask=mask, other=0.0).to(ACC) + i * g
        h_new = o * _tanh(c_new)
        tl.store(c_out_ptr + state_offsets, c_new, mask=mask)
        if SAVE:
            tl.store(saved_ptr + saved_offsets + 0 * H, i, mask=mask)
            tl.store(saved_ptr + saved_offsets + 1 * H, f, mask=mask)
            tl.store(saved_ptr + saved_offsets + 2 * H, g, mask=mask)
            tl.store(saved_ptr + saved_offsets + 3 * H, o, mask=mask)
    elif MODE == "GRU":
        gx, gh = _gate_sides(0, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                             HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        r = tl.sigmoid(gx + gh)
        gx, gh = _gate_sides(1, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                             HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        z = tl.sigmoid(gx + gh)
        gx, hn = _gate_sides(2, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                             HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        n = _tanh(gx + r * hn)
        h_new = (1 - z) * n + z * tl.load(h_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
        if SAVE:
            tl.store(saved_ptr + saved_offsets + 0 * H, r, mask=mask)
            tl.store(saved_ptr + saved_offsets + 1 * H, z, mask=mask)
            tl.store(saved_ptr + saved_offsets + 2 * H, n, mask=mask)
            tl.store(saved_ptr + saved_offsets + 3 * H, hn, mask=mask)
    else:  # the Elman cell keeps nothing: its backward reads act' off h'
        gx, gh = _gate_sides(0, x_ptr, h_ptr, w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr, rows, row_ok, cols, col_ok, I, H,
                             HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        h_new = _elman_activation(gx + gh, MODE == "RNN_RELU")
    tl.store(h_out_ptr + state_offsets, h_new, mask=mask)


@triton.jit(do_not_specialize=["B"])  # one compiled kernel for every batch size
def cell_backward_kernel(
    dh_new_ptr, dc_new_ptr, h_ptr, c_in_ptr, h_new_ptr, c_new_ptr, saved_ptr,  # inputs (dc', c, c': LSTM only)
    dgx_ptr, dgh_ptr, direct_ptr,  # outputs: d gx (B, G*H); d gh (GRU; the others' equals d gx); direct (LSTM dc, GRU dh)
    B, H,
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, row_ok, cols, col_ok = _tile(B, H, BLOCK_B, BLOCK_H)
    mask = row_ok[:, None] & col_ok[None, :]
    state_offsets = rows[:, None] * H + cols[None, :]
    saved_offsets = rows[:, None] * 4 * H + cols[None, :]
    dh = tl.load(dh_new_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    if MODE == "LSTM":
        i = tl.load(saved_ptr + saved_offsets + 0 * H, mask=mask, other=0.0).to(ACC)
        f = tl.load(saved_ptr + saved_offsets + 1 * H, mask=mask, other=0.0).to(ACC)
        g = tl.load(saved_ptr + saved_offsets + 2 * H, mask=mask, other=0.0).to(ACC)
        o = tl.load(saved_ptr + saved_offsets + 3 * H, mask=mask, other=0.0).to(ACC)
        tanh_c = _tanh(tl.load(c_new_ptr + state_offsets, mask=mask, other=0.0).to(ACC))
        dc = tl.load(dc_new_ptr + state_offsets, mask=mask, other=0.0).to(ACC) + dh * o * (1 - tanh_c * tanh_c)
        c = tl.load(c_in_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
        gate_offsets = rows[:, None] * 4 * H + cols[None, :]
        tl.store(dgx_ptr + gate_offsets + 0 * H, dc * g * i * (1 - i), mask=mask)
        tl.store(dgx_ptr + gate_offsets + 1 * H, dc * c * f * (1 - f), mask=mask)
        tl.store(dgx_ptr + gate_offsets + 2 * H, dc * i * (1 - g * g), mask=mask)
        tl.store(dgx_ptr + gate_offsets + 3 * H, dh * tanh_c * o * (1 - o), mask=mask)
        tl.store(direct_ptr + state_offsets, dc * f, mask=mask)
    elif MODE == "GRU":
        r = tl.load(saved_ptr + saved_offsets + 0 * H, mask=mask, other=0.0).to(ACC)
        z = tl.load(saved_ptr + saved_offsets + 1 * H, mask=mask, other=0.0).to(ACC)
        n = tl.load(saved_ptr + saved_offsets + 2 * H, mask=mask, other=0.0).to(ACC)
        hn = tl.load(saved_ptr + saved_offsets + 3 * H, mask=mask, other=0.0).to(ACC)
        h = tl.load(h_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
        d_n = dh * (1 - z) * (1 - n * n)
        d_r = d_n * hn * r * (1 - r)
        d_z = dh * (h - n) * z * (1 - z)
        gate_offsets = rows[:, None] * 3 * H + cols[None, :]
        tl.store(dgx_ptr + gate_offsets + 0 * H, d_r, mask=mask)
        tl.store(dgx_ptr + gate_offsets + 1 * H, d_z, mask=mask)
        tl.store(dgx_ptr + gate_offsets + 2 * H, d_n, mask=mask)
        tl.store(dgh_ptr + gate_offsets + 0 * H, d_r, mask=mask)
        tl.store(dgh_ptr + gate_offsets + 1 * H, d_z, mask=mask)
        tl.store(dgh_ptr + gate_offsets + 2 * H, d_n * r, mask=mask)
        tl.store(direct_ptr + state_offsets, dh * z, mask=mask)
    else:
        h_new = tl.load(h_new_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
        tl.store(dgx_ptr + state_offsets, dh * _elman_derivative(h_new, MODE == "RNN_RELU"), mask=mask)
