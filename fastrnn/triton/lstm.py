"""Triton LSTM recurrence, forward and backward, in two launch strategies that share their tiles.

A step of the recurrence is a few phases, each a grid of independent (batch rows x units) tiles:

    forward:  cell      gates = h_{t-1} W_hh^T + xp_t, the cell, saved gates and c_t  (tiles over H)
              project   y_t = (o * tanh(c_t)) W_hr^T                    (proj_size only; tiles over R)
    backward: dh_sum    dh_t = dy_t + carry                               (proj_size only; over R)
              cell      the cell's pointwise backward -> dG_t, dc          (tiles over H)
              carry     carry = dG_t W_hh                                 (tiles over R)

Each phase reads what the one before wrote for *every* unit of a row, so phases are separated by a
barrier. The two strategies differ only in what that barrier is:

- persistent (`lstm_forward_kernel`, `lstm_backward_kernel`): one launch per layer-direction; each
  program owns BLOCK_B batch rows and walks all their steps, visiting every unit tile of each phase
  itself, so the barrier is a program-local tl.debug_barrier() and no program waits on another.
- stepwise (`lstm_*_step_kernel`): one launch per phase and step over a (batch tiles x unit tiles)
  grid, so a step uses many SMs even at batch 1; the barrier is the launch boundary. The host loop
  launches only the steps and batch tiles that still have live rows (lengths are sorted).

B, T, H and R are runtime arguments (nothing recompiles per batch size or length); only tile sizes,
dtypes and flags are compile-time. Accumulation and the carried cell state are fp32 (fp64 for fp64
inputs). A row is live at step t while t < lengths[row]; finished rows are masked out of every store,
so their state is carried unchanged and their outputs stay 0.
"""

import triton
import triton.language as tl

from .common import _copy_rows, _matmul_rows, _program_rows, _step_index, _step_tile, _store_step_output, _tanh

# --- tiles: one phase of one step for (rows x units) ------------------------------------------------


@triton.jit
def _lstm_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_ptr, c_ptr, w_hh_ptr, gates_ptr, c_all_ptr, B, H, R,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gates of hidden units `cols` from h_{t-1} (h_ptr, B x R), the cell update (c in place), saved
    activated gates and c_t. Returns o * tanh(c_t) for the tile."""
    pre_i = _matmul_rows(h_ptr, R, rows, live, w_hh_ptr + 0 * H * R, 1, R, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    pre_f = _matmul_rows(h_ptr, R, rows, live, w_hh_ptr + 1 * H * R, 1, R, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    pre_g = _matmul_rows(h_ptr, R, rows, live, w_hh_ptr + 2 * H * R, 1, R, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    pre_o = _matmul_rows(h_ptr, R, rows, live, w_hh_ptr + 3 * H * R, 1, R, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    mask = live[:, None] & col_ok[None, :]
    gate_offsets = t * B * 4 * H + rows[:, None] * 4 * H + cols[None, :]
    i = tl.sigmoid(pre_i + tl.load(xp_ptr + gate_offsets + 0 * H, mask=mask, other=0.0).to(ACC))
    f = tl.sigmoid(pre_f + tl.load(xp_ptr + gate_offsets + 1 * H, mask=mask, other=0.0).to(ACC))
    g = _tanh(pre_g + tl.load(xp_ptr + gate_offsets + 2 * H, mask=mask, other=0.0).to(ACC))
    o = tl.sigmoid(pre_o + tl.load(xp_ptr + gate_offsets + 3 * H, mask=mask, other=0.0).to(ACC))
    state_offsets = rows[:, None] * H + cols[None, :]
    c_new = f * tl.load(c_ptr + state_offsets, mask=mask, other=0.0) + i * g
    tl.store(c_ptr + state_offsets, c_new, mask=mask)
    tl.store(c_all_ptr + t * B * H + state_offsets, c_new, mask=mask)
    tl.store(gates_ptr + gate_offsets + 0 * H, i, mask=mask)
    tl.store(gates_ptr + gate_offsets + 1 * H, f, mask=mask)
    tl.store(gates_ptr + gate_offsets + 2 * H, g, mask=mask)
    tl.store(gates_ptr + gate_offsets + 3 * H, o, mask=mask)
    return o * _tanh(c_new)


@triton.jit
def _lstm_dh_sum_tile(t, rows, live, r_cols, r_ok, dy_ptr, dh_ptr, dh_all_ptr, B, R, ACC: tl.constexpr):
    """proj_size: dh_t = dy_t + carry, kept in dh_all (the projection's weight gradient needs it too)."""
    mask = live[:, None] & r_ok[None, :]
    offsets = rows[:, None] * R + r_cols[None, :]
    dh_t = tl.load(dy_ptr + t * B * R + offsets, mask=mask, other=0.0).to(ACC) + tl.load(dh_ptr + offsets, mask=mask, other=0.0).to(ACC)
    tl.store(dh_all_ptr + t * B * R + offsets, dh_t, mask=mask)


@triton.jit
def _lstm_cell_backward_tile(t, rows, live, cols, col_ok, dy_ptr, dh_ptr, dh_all_ptr, w_hr_ptr, c_prev_ptr, gates_ptr,
                             c_all_ptr, dc_ptr, dgates_ptr, B, H, R,
                             HAS_PROJ: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                             BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """The cell's pointwise backward for hidden units `cols`: dG_t, and the cell-state carry dc in place."""
    mask = live[:, None] & col_ok[None, :]
    state_offsets = rows[:, None] * H + cols[None, :]
    if HAS_PROJ:  # gradient of o * tanh(c_t): dh_t W_hr
        dhu = _matmul_rows(dh_all_ptr + t * B * R, R, rows, live, w_hr_ptr, H, 1, cols, col_ok, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
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


@triton.jit
def _lstm_carry_tile(t, rows, live, r_cols, r_ok, dgates_ptr, w_hh_ptr, dh_ptr, B, H, R,
                     ACC: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """dh_{t-1} = dG_t W_hh for recurrent inputs `r_cols`: every gate of every hidden unit feeds each one."""
    dh_prev = _matmul_rows(dgates_ptr + t * B * 4 * H, 4 * H, rows, live, w_hh_ptr, R, 1, r_cols, r_ok, 4 * H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    tl.store(dh_ptr + rows[:, None] * R + r_cols[None, :], dh_prev, mask=live[:, None] & r_ok[None, :])


# --- persistent: one launch per layer-direction -------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def lstm_forward_kernel(
    xp_ptr, h_ptr, c_ptr, w_hh_ptr, w_hr_ptr, hu_ptr, len_ptr,  # inputs; h, c: carried state (in/out)
    y_ptr, gates_ptr, c_all_ptr,  # outputs
    T, B, H, R,
    HAS_PROJ: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    steps = tl.max(lengths)  # steps past every row's length are padding: not walked at all
    for s in range(0, steps):
        t = _step_index(s, steps, REVERSE)
        live = row_ok & (t < lengths)
        y_t = y_ptr + t * B * R
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            h_new = _lstm_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_ptr, c_ptr, w_hh_ptr, gates_ptr, c_all_ptr,
                                    B, H, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            mask = live[:, None] & col_ok[None, :]
            if HAS_PROJ:
                tl.store(hu_ptr + rows[:, None] * H + cols[None, :], h_new, mask=mask)
            else:
                tl.store(y_t + rows[:, None] * R + cols[None, :], h_new, mask=mask)
        tl.debug_barrier()
        if HAS_PROJ:
            for r_start in range(0, R, BLOCK_H):
                r_cols = r_start + tl.arange(0, BLOCK_H)
                r_ok = r_cols < R
                h_proj = _matmul_rows(hu_ptr, H, rows, live, w_hr_ptr, 1, H, r_cols, r_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
                tl.store(y_t + rows[:, None] * R + r_cols[None, :], h_proj, mask=live[:, None] & r_ok[None, :])
            tl.debug_barrier()
        _copy_rows(y_t, h_ptr, rows, live, R, BLOCK_B, BLOCK_H)  # h_{t-1} is read by every tile: update last
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def lstm_backward_kernel(
    dy_ptr, c_prev_ptr, w_hh_ptr, w_hr_ptr, gates_ptr, c_all_ptr, len_ptr,  # inputs
    dh_ptr, dc_ptr,  # carried gradients (in: dh_n, dc_n; out: dh0, dc0)
    dgates_ptr, dh_all_ptr,  # outputs (zero-initialised)
    T, B, H, R,
    HAS_PROJ: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    steps = tl.max(lengths)
    for s in range(0, steps):
        t = _step_index(s, steps, not REVERSE)  # walk the forward's steps backwards
        live = row_ok & (t < lengths)
        if HAS_PROJ:
            for r_start in range(0, R, BLOCK_H):
                r_cols = r_start + tl.arange(0, BLOCK_H)
                _lstm_dh_sum_tile(t, rows, live, r_cols, r_cols < R, dy_ptr, dh_ptr, dh_all_ptr, B, R, ACC)
            tl.debug_barrier()
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            _lstm_cell_backward_tile(t, rows, live, cols, cols < H, dy_ptr, dh_ptr, dh_all_ptr, w_hr_ptr, c_prev_ptr,
                                     gates_ptr, c_all_ptr, dc_ptr, dgates_ptr, B, H, R,
                                     HAS_PROJ, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        tl.debug_barrier()
        for r_start in range(0, R, BLOCK_H):
            r_cols = r_start + tl.arange(0, BLOCK_H)
            _lstm_carry_tile(t, rows, live, r_cols, r_cols < R, dgates_ptr, w_hh_ptr, dh_ptr, B, H, R,
                             ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        tl.debug_barrier()


# --- stepwise: one launch per phase and step, grid (batch tiles, unit tiles) ----------------------------


@triton.jit(do_not_specialize=["t", "B"])
def lstm_cell_step_kernel(
    xp_ptr, h_in_ptr, h_out_ptr, c_ptr, w_hh_ptr, hu_ptr, len_ptr, y_ptr, gates_ptr, c_all_ptr,
    t, B, H, R,
    HAS_PROJ: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t, rows, row_ok, live, cols, col_ok = _step_tile(len_ptr, t, B, H, BLOCK_B, BLOCK_H)
    h_new = _lstm_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_in_ptr, c_ptr, w_hh_ptr, gates_ptr, c_all_ptr,
                            B, H, R, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    if HAS_PROJ:
        tl.store(hu_ptr + rows[:, None] * H + cols[None, :], h_new, mask=live[:, None] & col_ok[None, :])
    else:
        _store_step_output(y_ptr + t * B * R, h_in_ptr, h_out_ptr, h_new, rows, row_ok, live, cols, col_ok, R)


@triton.jit(do_not_specialize=["t", "B"])
def lstm_project_step_kernel(
    hu_ptr, w_hr_ptr, h_in_ptr, h_out_ptr, len_ptr, y_ptr,
    t, B, H, R,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t, rows, row_ok, live, r_cols, r_ok = _step_tile(len_ptr, t, B, R, BLOCK_B, BLOCK_H)
    h_proj = _matmul_rows(hu_ptr, H, rows, live, w_hr_ptr, 1, H, r_cols, r_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    _store_step_output(y_ptr + t * B * R, h_in_ptr, h_out_ptr, h_proj, rows, row_ok, live, r_cols, r_ok, R)


@triton.jit(do_not_specialize=["t", "B"])
def lstm_dh_sum_step_kernel(dy_ptr, dh_ptr, dh_all_ptr, len_ptr, t, B, R, ACC: tl.constexpr,
                            BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    t, rows, row_ok, live, r_cols, r_ok = _step_tile(len_ptr, t, B, R, BLOCK_B, BLOCK_H)
    _lstm_dh_sum_tile(t, rows, live, r_cols, r_ok, dy_ptr, dh_ptr, dh_all_ptr, B, R, ACC)


@triton.jit(do_not_specialize=["t", "B"])
def lstm_cell_backward_step_kernel(
    dy_ptr, dh_ptr, dh_all_ptr, w_hr_ptr, c_prev_ptr, gates_ptr, c_all_ptr, len_ptr, dc_ptr, dgates_ptr,
    t, B, H, R,
    HAS_PROJ: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t, rows, row_ok, live, cols, col_ok = _step_tile(len_ptr, t, B, H, BLOCK_B, BLOCK_H)
    _lstm_cell_backward_tile(t, rows, live, cols, col_ok, dy_ptr, dh_ptr, dh_all_ptr, w_hr_ptr,
                             c_prev_ptr, gates_ptr, c_all_ptr, dc_ptr, dgates_ptr, B, H, R,
                             HAS_PROJ, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)


@triton.jit(do_not_specialize=["t", "B"])
def lstm_carry_step_kernel(
    dgates_ptr, w_hh_ptr, dh_ptr, len_ptr,
    t, B, H, R,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t, rows, row_ok, live, r_cols, r_ok = _step_tile(len_ptr, t, B, R, BLOCK_B, BLOCK_H)
    _lstm_carry_tile(t, rows, live, r_cols, r_ok, dgates_ptr, w_hh_ptr, dh_ptr, B, H, R,
                     ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
