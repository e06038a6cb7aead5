"""Triton GRU recurrence, forward and backward, in the two launch strategies of fastrnn/triton/lstm.py
(read its docstring first). Gate order r, z, n; b_hn stays inside the reset product:
n = tanh(xp_n + r * (h W_hn^T + b_hn)).

Phases of a step:  forward   cell   gates from h_{t-1}, the update, saved r, z, n, h W_hn^T + b_hn
                   backward  cell   pointwise backward -> dxp_t, dhn_t, and the direct carry dh_t * z
                             carry  dh_{t-1} = dh_t * z + [dr, dz, dhn] W_hh
All phases tile over hidden units.
"""

import triton
import triton.language as tl

from .common import _copy_rows, _matmul_rows, _program_rows, _step_index, _step_tile, _store_step_output, _tanh

# --- tiles: one phase of one step for (rows x hidden units) --------------------------------------------


@triton.jit
def _gru_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_ptr, w_hh_ptr, b_hn_ptr, saved_ptr, B, H,
                   HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gates of hidden units `cols` from h_{t-1} (h_ptr, B x H) and the saved activations; returns h_t."""
    hr = _matmul_rows(h_ptr, H, rows, live, w_hh_ptr + 0 * H * H, 1, H, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    hz = _matmul_rows(h_ptr, H, rows, live, w_hh_ptr + 1 * H * H, 1, H, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    hn = _matmul_rows(h_ptr, H, rows, live, w_hh_ptr + 2 * H * H, 1, H, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    if HAS_BIAS:
        hn += tl.load(b_hn_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    mask = live[:, None] & col_ok[None, :]
    x_offsets = t * B * 3 * H + rows[:, None] * 3 * H + cols[None, :]
    r = tl.sigmoid(hr + tl.load(xp_ptr + x_offsets + 0 * H, mask=mask, other=0.0).to(ACC))
    z = tl.sigmoid(hz + tl.load(xp_ptr + x_offsets + 1 * H, mask=mask, other=0.0).to(ACC))
    n = _tanh(tl.load(xp_ptr + x_offsets + 2 * H, mask=mask, other=0.0).to(ACC) + r * hn)
    h_prev = tl.load(h_ptr + rows[:, None] * H + cols[None, :], mask=mask, other=0.0).to(ACC)
    saved_offsets = t * B * 4 * H + rows[:, None] * 4 * H + cols[None, :]
    tl.store(saved_ptr + saved_offsets + 0 * H, r, mask=mask)
    tl.store(saved_ptr + saved_offsets + 1 * H, z, mask=mask)
    tl.store(saved_ptr + saved_offsets + 2 * H, n, mask=mask)
    tl.store(saved_ptr + saved_offsets + 3 * H, hn, mask=mask)
    return (1 - z) * n + z * h_prev


@triton.jit
def _gru_cell_backward_tile(t, rows, live, cols, col_ok, dy_ptr, dh_ptr, h_prev_ptr, saved_ptr, dxp_ptr, dhn_ptr, B, H,
                            ACC: tl.constexpr):
    """Pointwise backward for hidden units `cols`; the carry keeps only its direct part dh_t * z for now."""
    mask = live[:, None] & col_ok[None, :]
    state_offsets = rows[:, None] * H + cols[None, :]
    dh_t = tl.load(dy_ptr + t * B * H + state_offsets, mask=mask, other=0.0).to(ACC) + tl.load(dh_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    saved_offsets = t * B * 4 * H + rows[:, None] * 4 * H + cols[None, :]
    r = tl.load(saved_ptr + saved_offsets + 0 * H, mask=mask, other=0.0).to(ACC)
    z = tl.load(saved_ptr + saved_offsets + 1 * H, mask=mask, other=0.0).to(ACC)
    n = tl.load(saved_ptr + saved_offsets + 2 * H, mask=mask, other=0.0).to(ACC)
    hn = tl.load(saved_ptr + saved_offsets + 3 * H, mask=mask, other=0.0).to(ACC)
    h_prev = tl.load(h_prev_ptr + t * B * H + state_offsets, mask=mask, other=0.0).to(ACC)
    dn = dh_t * (1 - z) * (1 - n * n)
    x_offsets = t * B * 3 * H + rows[:, None] * 3 * H + cols[None, :]
    tl.store(dxp_ptr + x_offsets + 0 * H, dn * hn * r * (1 - r), mask=mask)
    tl.store(dxp_ptr + x_offsets + 1 * H, dh_t * (h_prev - n) * z * (1 - z), mask=mask)
    tl.store(dxp_ptr + x_offsets + 2 * H, dn, mask=mask)
    tl.store(dhn_ptr + t * B * H + state_offsets, dn * r, mask=mask)
    tl.store(dh_ptr + state_offsets, dh_t * z, mask=mask)


@triton.jit
def _gru_carry_tile(t, rows, live, cols, col_ok, dxp_ptr, dhn_ptr, w_hh_ptr, dh_ptr, B, H,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """dh_{t-1} = dh_t * z + [dr, dz, dhn] W_hh: the r, z gradients sit in dxp, the n one in dhn."""
    from_rz = _matmul_rows(dxp_ptr + t * B * 3 * H, 3 * H, rows, live, w_hh_ptr, H, 1, cols, col_ok, 2 * H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    from_n = _matmul_rows(dhn_ptr + t * B * H, H, rows, live, w_hh_ptr + 2 * H * H, H, 1, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    mask = live[:, None] & col_ok[None, :]
    state_offsets = rows[:, None] * H + cols[None, :]
    direct = tl.load(dh_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    tl.store(dh_ptr + state_offsets, direct + from_rz + from_n, mask=mask)


# --- persistent: one launch per layer-direction -------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def gru_forward_kernel(
    xp_ptr, h_ptr, w_hh_ptr, b_hn_ptr, len_ptr,  # inputs; h: carried state (in/out)
    y_ptr, saved_ptr,  # outputs: y (T, B, H); saved (T, B, 4H) = r, z, n, h W_hn^T + b_hn
    T, B, H,
    HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
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
            h_new = _gru_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_ptr, w_hh_ptr, b_hn_ptr, saved_ptr, B, H,
                                   HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            tl.store(y_t + rows[:, None] * H + cols[None, :], h_new, mask=live[:, None] & col_ok[None, :])
        tl.debug_barrier()
        _copy_rows(y_t, h_ptr, rows, live, H, BLOCK_B, BLOCK_H)  # h_{t-1} is read by every tile: update last
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def gru_backward_kernel(
    dy_ptr, h_prev_ptr, w_hh_ptr, saved_ptr, len_ptr,  # inputs
    dh_ptr,  # carried gradient (in: dh_n; out: dh0)
    dxp_ptr, dhn_ptr,  # outputs (zero-initialised): dxp (T, B, 3H); dhn (T, B, H), grad of h W_hn^T + b_hn
    T, B, H,
    REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    steps = tl.max(lengths)
    for s in range(0, steps):
        t = _step_index(s, steps, not REVERSE)  # walk the forward's steps backwards
        live = row_ok & (t < lengths)
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            _gru_cell_backward_tile(t, rows, live, cols, cols < H, dy_ptr, dh_ptr, h_prev_ptr, saved_ptr, dxp_ptr, dhn_ptr,
                                    B, H, ACC)
        tl.debug_barrier()
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            _gru_carry_tile(t, rows, live, cols, cols < H, dxp_ptr, dhn_ptr, w_hh_ptr, dh_ptr, B, H,
                            ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
        tl.debug_barrier()


# --- stepwise: one launch per phase and step, grid (batch tiles, hidden tiles) --------------------------


@triton.jit(do_not_specialize=["t", "B"])
def gru_cell_step_kernel(
    xp_ptr, h_in_ptr, h_out_ptr, w_hh_ptr, b_hn_ptr, len_ptr, y_ptr, saved_ptr,
    t, B, H,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t, rows, row_ok, live, cols, col_ok = _step_tile(len_ptr, t, B, H, BLOCK_B, BLOCK_H)
    h_new = _gru_cell_tile(t, rows, live, cols, col_ok, xp_ptr, h_in_ptr, w_hh_ptr, b_hn_ptr, saved_ptr, B, H,
                           HAS_BIAS, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    _store_step_output(y_ptr + t * B * H, h_in_ptr, h_out_ptr, h_new, rows, row_ok, live, cols, col_ok, H)


@triton.jit(do_not_specialize=["t", "B"])
def gru_cell_backward_step_kernel(dy_ptr, dh_ptr, h_prev_ptr, saved_ptr, len_ptr, dxp_ptr, dhn_ptr, t, B, H,
                                  ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    t, rows, row_ok, live, cols, col_ok = _step_tile(len_ptr, t, B, H, BLOCK_B, BLOCK_H)
    _gru_cell_backward_tile(t, rows, live, cols, col_ok, dy_ptr, dh_ptr, h_prev_ptr, saved_ptr,
                            dxp_ptr, dhn_ptr, B, H, ACC)


@triton.jit(do_not_specialize=["t", "B"])
def gru_carry_step_kernel(
    dxp_ptr, dhn_ptr, w_hh_ptr, dh_ptr, len_ptr,
    t, B, H,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t, rows, row_ok, live, cols, col_ok = _step_tile(len_ptr, t, B, H, BLOCK_B, BLOCK_H)
    _gru_carry_tile(t, rows, live, cols, col_ok, dxp_ptr, dhn_ptr, w_hh_ptr, dh_ptr, B, H,
                    ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
