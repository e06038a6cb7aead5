"""Triton LSTM recurrence, forward and backward: one launch per layer-direction.

Batch-persistent design: the batch rows of an RNN never interact, so each program owns BLOCK_B
rows and walks all T steps itself, computing every hidden unit of its rows per step (the recurrent
GEMM chunk by chunk, the cell as its epilogue). No program waits on another, so there is no grid
barrier, and the kernel runs unchanged under TRITON_INTERPRET=1. Inside a program, phases of a step
that read what another phase wrote are separated by tl.debug_barrier().

B, T, H and R are runtime arguments (nothing recompiles per batch size or length); only the tile
sizes, the dtypes and the flags are compile-time. Accumulation and the carried cell state are fp32
(fp64 for fp64 inputs). `lengths[b]` bounds the steps of row b: a finished row is masked out of every
store, so its state is carried unchanged and its outputs stay 0.
"""

import triton
import triton.language as tl

from .common import _copy_rows, _matmul_rows, _program_rows, _step_index, _tanh


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def lstm_forward_kernel(
    xp_ptr, h_ptr, c_ptr, w_hh_ptr, w_hr_ptr, hu_ptr, len_ptr,  # inputs; h, c: carried state (in/out)
    y_ptr, gates_ptr, c_all_ptr,  # outputs
    T, B, H, R,
    HAS_PROJ: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    for s in range(0, T):
        t = _step_index(s, T, REVERSE)
        live = row_ok & (t < lengths)
        y_t = y_ptr + t * B * R
        # Gates of every hidden chunk: h_{t-1} W_hh^T (one GEMM per gate) + xp, then the cell.
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            pre_i = _matmul_rows(h_ptr, R, rows, row_ok, w_hh_ptr + 0 * H * R, 1, R, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            pre_f = _matmul_rows(h_ptr, R, rows, row_ok, w_hh_ptr + 1 * H * R, 1, R, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            pre_g = _matmul_rows(h_ptr, R, rows, row_ok, w_hh_ptr + 2 * H * R, 1, R, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            pre_o = _matmul_rows(h_ptr, R, rows, row_ok, w_hh_ptr + 3 * H * R, 1, R, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            mask = live[:, None] & col_ok[None, :]
            gate_offsets = t * B * 4 * H + rows[:, None] * 4 * H + cols[None, :]
            i = tl.sigmoid(pre_i + tl.load(xp_ptr + gate_offsets + 0 * H, mask=mask, other=0.0).to(ACC))
            f = tl.sigmoid(pre_f + tl.load(xp_ptr + gate_offsets + 1 * H, mask=mask, other=0.0).to(ACC))
            g = _tanh(pre_g + tl.load(xp_ptr + gate_offsets + 2 * H, mask=mask, other=0.0).to(ACC))
            o = tl.sigmoid(pre_o + tl.load(xp_ptr + gate_offsets + 3 * H, mask=mask, other=0.0).to(ACC))
            state_offsets = rows[:, None] * H + cols[None, :]
            c_new = f * tl.load(c_ptr + state_offsets, mask=mask, other=0.0) + i * g
            h_new = o * _tanh(c_new)
            tl.store(c_ptr + state_offsets, c_new, mask=mask)
            tl.store(c_all_ptr + t * B * H + state_offsets, c_new, mask=mask)
            tl.store(gates_ptr + gate_offsets + 0 * H, i, mask=mask)
            tl.store(gates_ptr + gate_offsets + 1 * H, f, mask=mask)
            tl.store(gates_ptr + gate_offsets + 2 * H, g, mask=mask)
            tl.store(gates_ptr + gate_offsets + 3 * H, o, mask=mask)
            if HAS_PROJ:
                tl.store(hu_ptr + state_offsets, h_new, mask=mask)
            else:
                tl.store(y_t + state_offsets, h_new, mask=mask)
        tl.debug_barrier()
        if HAS_PROJ:  # y_t = (o * tanh(c)) W_hr^T
            for r_start in range(0, R, BLOCK_H):
                r_cols = r_start + tl.arange(0, BLOCK_H)
                r_ok = r_cols < R
                h_proj = _matmul_rows(hu_ptr, H, rows, row_ok, w_hr_ptr, 1, H, r_cols, r_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
                tl.store(y_t + rows[:, None] * R + r_cols[None, :], h_proj, mask=live[:, None] & r_ok[None, :])
            tl.debug_barrier()
        _copy_rows(y_t, h_ptr, rows, live, R, BLOCK_B, BLOCK_H)  # h_{t-1} is read by every chunk: update last
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def lstm_backward_kernel(
    dy_ptr, c_prev_ptr, w_hh_ptr, w_hr_ptr, gates_ptr, c_all_ptr, len_ptr,  # inputs
    dh_ptr, dc_ptr,  # carried gradients (in: dh_n, dc_n; out: dh0, dc0)
    dgates_ptr, dh_all_ptr, dhu_ptr,  # outputs (zero-initialised), dhu: scratch (B, H)
    T, B, H, R,
    HAS_PROJ: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    for s in range(0, T):
        t = _step_index(s, T, not REVERSE)  # walk the forward's steps backwards
        live = row_ok & (t < lengths)
        if HAS_PROJ:  # dh_t = dy_t + carry (R wide), then through the projection: dhu = dh_t W_hr
            for r_start in range(0, R, BLOCK_H):
                r_cols = r_start + tl.arange(0, BLOCK_H)
                mask = live[:, None] & (r_cols < R)[None, :]
                offsets = rows[:, None] * R + r_cols[None, :]
                dh_t = tl.load(dy_ptr + t * B * R + offsets, mask=mask, other=0.0).to(ACC) + tl.load(dh_ptr + offsets, mask=mask, other=0.0).to(ACC)
                tl.store(dh_all_ptr + t * B * R + offsets, dh_t, mask=mask)
            tl.debug_barrier()
            for h_start in range(0, H, BLOCK_H):
                cols = h_start + tl.arange(0, BLOCK_H)
                col_ok = cols < H
                dhu = _matmul_rows(dh_all_ptr + t * B * R, R, rows, row_ok, w_hr_ptr, H, 1, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
                tl.store(dhu_ptr + rows[:, None] * H + cols[None, :], dhu, mask=live[:, None] & col_ok[None, :])
            tl.debug_barrier()
        # The cell's pointwise backward, chunk by chunk; the cell-state gradient stays in its chunk.
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            mask = live[:, None] & (cols < H)[None, :]
            state_offsets = rows[:, None] * H + cols[None, :]
            if HAS_PROJ:
                dhu = tl.load(dhu_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
            else:
                dhu = tl.load(dy_ptr + t * B * H + state_offsets, mask=mask, other=0.0).to(ACC) + tl.load(dh_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
            gate_offsets = t * B * 4 * H + rows[:, None] * 4 * H + cols[None, :]
            i = tl.load(gates_ptr + gate_offsets + 0 * H, mask=mask, other=0.0).to(ACC)
            f = tl.load(gates_ptr + gate_offsets + 1 * H, mask=mask, other=0.0).to(ACC)
            g = tl.load(gates_ptr + gate_offsets + 2 * H, mask=mask, other=0.0).to(ACC)
            o = tl.load(gates_ptr + gate_offsets + 3 * H, mask=mask, other=0.0).to(ACC)
            tanh_c = _tanh(tl.load(c_all_ptr + t * B * H + state_offsets, mask=mask, other=0.0).to(ACC))
            c_prev = tl.load(c_prev_ptr + t * B * H + state_offsets, mask=mask, other=0.0).to(ACC)
            dc = tl.load(dc_ptr + state_offsets, mask=mask, other=0.0) + dhu * o * (1 - tanh_c * tanh_c)
            tl.store(dgates_ptr + gate_offsets + 0 * H, dc * g * i * (1 - i), mask=mask)
            tl.store(dgates_ptr + gate_offsets + 1 * H, dc * c_prev * f * (1 - f), mask=mask)
            tl.store(dgates_ptr + gate_offsets + 2 * H, dc * i * (1 - g * g), mask=mask)
            tl.store(dgates_ptr + gate_offsets + 3 * H, dhu * tanh_c * o * (1 - o), mask=mask)
            tl.store(dc_ptr + state_offsets, dc * f, mask=mask)
        tl.debug_barrier()
        # dh_{t-1} = dG_t W_hh: every gate of every hidden unit feeds each recurrent input.
        for r_start in range(0, R, BLOCK_H):
            r_cols = r_start + tl.arange(0, BLOCK_H)
            r_ok = r_cols < R
            dh_prev = _matmul_rows(dgates_ptr + t * B * 4 * H, 4 * H, rows, row_ok, w_hh_ptr, R, 1, r_cols, r_ok, 4 * H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            tl.store(dh_ptr + rows[:, None] * R + r_cols[None, :], dh_prev, mask=live[:, None] & r_ok[None, :])
        tl.debug_barrier()
