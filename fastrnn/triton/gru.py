"""Triton GRU recurrence, forward and backward: one launch per layer-direction.

Same batch-persistent design as fastrnn/triton/lstm.py (read its docstring first). Gate order r, z, n;
b_hn stays inside the reset product: n = tanh(xp_n + r * (h W_hn^T + b_hn)).
"""

import triton
import triton.language as tl

from .common import _copy_rows, _matmul_rows, _program_rows, _step_index, _tanh


@triton.jit(do_not_specialize=["T", "B"])  # one compiled kernel for every batch size and length
def gru_forward_kernel(
    xp_ptr, h_ptr, w_hh_ptr, b_hn_ptr, len_ptr,  # inputs; h: carried state (in/out)
    y_ptr, saved_ptr,  # outputs: y (T, B, H); saved (T, B, 4H) = r, z, n, h W_hn^T + b_hn
    T, B, H,
    HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    for s in range(0, T):
        t = _step_index(s, T, REVERSE)
        live = row_ok & (t < lengths)
        y_t = y_ptr + t * B * H
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            hr = _matmul_rows(h_ptr, H, rows, row_ok, w_hh_ptr + 0 * H * H, 1, H, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            hz = _matmul_rows(h_ptr, H, rows, row_ok, w_hh_ptr + 1 * H * H, 1, H, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            hn = _matmul_rows(h_ptr, H, rows, row_ok, w_hh_ptr + 2 * H * H, 1, H, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            if HAS_BIAS:
                hn += tl.load(b_hn_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
            mask = live[:, None] & col_ok[None, :]
            x_offsets = t * B * 3 * H + rows[:, None] * 3 * H + cols[None, :]
            r = tl.sigmoid(hr + tl.load(xp_ptr + x_offsets + 0 * H, mask=mask, other=0.0).to(ACC))
            z = tl.sigmoid(hz + tl.load(xp_ptr + x_offsets + 1 * H, mask=mask, other=0.0).to(ACC))
            n = _tanh(tl.load(xp_ptr + x_offsets + 2 * H, mask=mask, other=0.0).to(ACC) + r * hn)
            state_offsets = rows[:, None] * H + cols[None, :]
            h_prev = tl.load(h_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
            tl.store(y_t + state_offsets, (1 - z) * n + z * h_prev, mask=mask)
            saved_offsets = t * B * 4 * H + rows[:, None] * 4 * H + cols[None, :]
            tl.store(saved_ptr + saved_offsets + 0 * H, r, mask=mask)
            tl.store(saved_ptr + saved_offsets + 1 * H, z, mask=mask)
            tl.store(saved_ptr + saved_offsets + 2 * H, n, mask=mask)
            tl.store(saved_ptr + saved_offsets + 3 * H, hn, mask=mask)
        tl.debug_barrier()
        _copy_rows(y_t, h_ptr, rows, live, H, BLOCK_B, BLOCK_H)  # h_{t-1} is read by every chunk: update last
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
    for s in range(0, T):
        t = _step_index(s, T, not REVERSE)  # walk the forward's steps backwards
        live = row_ok & (t < lengths)
        # Pointwise backward per chunk; the carry keeps only its direct part dh_t * z for now.
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            mask = live[:, None] & (cols < H)[None, :]
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
        tl.debug_barrier()
        # dh_{t-1} = dh_t * z + [dr, dz, dhn] W_hh: the r, z gradients sit in dxp, the n one in dhn.
        for h_start in range(0, H, BLOCK_H):
            cols = h_start + tl.arange(0, BLOCK_H)
            col_ok = cols < H
            from_rz = _matmul_rows(dxp_ptr + t * B * 3 * H, 3 * H, rows, row_ok, w_hh_ptr, H, 1, cols, col_ok, 2 * H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            from_n = _matmul_rows(dhn_ptr + t * B * H, H, rows, row_ok, w_hh_ptr + 2 * H * H, H, 1, cols, col_ok, H, ACC, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
            mask = live[:, None] & col_ok[None, :]
            state_offsets = rows[:, None] * H + cols[None, :]
            direct = tl.load(dh_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
            tl.store(dh_ptr + state_offsets, direct + from_rz + from_n, mask=mask)
        tl.debug_barrier()
