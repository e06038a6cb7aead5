"""Device helpers shared by the Triton kernels: the layers (LSTM, GRU, Elman) and the fused cell steps."""

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    """tanh to a few units in the last place, relative, small results included: e / (e + 2) with e = expm1(2|x|),
    expm1 by Kahan's (u - 1) * y / log(u), u = exp(y) (tl has no expm1 or tanh the interpreter runs). The
    shorter 2 sigmoid(2x) - 1 cancels: its error is absolute, ~1e-7 in float32, so relative 1e-4 at tanh ~ 1e-3.
    |x| is capped at 20, where tanh is 1 in float64 (and exp cannot overflow); NaN is kept."""
    a = tl.minimum(tl.abs(x), 20.0, propagate_nan=tl.PropagateNan.ALL)
    u = tl.exp(2 * a)
    exact = u == 1  # 2|x| below half an ulp of 1: expm1 is 2|x| itself (and log(u) 0, kept out of the division)
    e = tl.where(exact, 2 * a, (u - 1) * (2 * a) / tl.log(tl.where(exact, 2.0, u)))
    t = e / (e + 2)
    return tl.where(x < 0, -t, t)


@triton.jit
def _elman_activation(pre, RELU: tl.constexpr):
    """The Elman cell's nonlinearity: relu (NaN kept, as torch.relu keeps it) or tanh."""
    if RELU:
        return tl.maximum(pre, 0.0, propagate_nan=tl.PropagateNan.ALL)
    else:
        return _tanh(pre)


@triton.jit
def _elman_derivative(h_new, RELU: tl.constexpr):
    """act'(pre), read off the cell's output h' = act(pre) as the reference does: (h' > 0) or 1 - h'^2."""
    if RELU:
        return tl.where(h_new > 0, 1.0, 0.0).to(h_new.dtype)
    else:
        return 1 - h_new * h_new


@triton.jit
def _program_rows(len_ptr, B, BLOCK_B: tl.constexpr):
    """The batch rows this program owns (grid axis 0), which of them exist, and their sequence lengths."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    return rows, row_ok, tl.load(len_ptr + rows, mask=row_ok, other=0)


@triton.jit
def _step_tile(len_ptr, t, B, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """A stepwise program's tile at step t: t as int64, its batch rows (grid axis 0), which exist and
    which are live, and its columns (hidden or projected units, grid axis 1) and which exist."""
    rows, row_ok, lengths = _program_rows(len_ptr, B, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    t = t.to(tl.int64)
    return t, rows, row_ok, row_ok & (t < lengths), cols, cols < N


@triton.jit
def _step_index(s, T, REVERSE: tl.constexpr):
    """The time index of processing step s of T, as int64: offsets like t * B * 4H pass 2**31 on long sequences."""
    if REVERSE:
        t = T - 1 - s
    else:
        t = s
    return t.to(tl.int64)


@triton.jit
def _matmul_rows(a_ptr, a_stride, rows, row_ok, b_ptr, b_stride_k, b_stride_n, cols, col_ok, K,
                 ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """sum_k A[rows, k] * B[k, cols] over k < K, as a (BLOCK_B, BLOCK_N) tile in ACC."""
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_ptr + rows[:, None] * a_stride + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * b_stride_k + cols[None, :] * b_stride_n,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _copy_rows(src_ptr, dst_ptr, rows, mask_rows, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """dst[rows, :N] = src[rows, :N] for the rows in mask_rows (both row-major with stride N)."""
    for n_start in range(0, N, BLOCK_N):
        cols = n_start + tl.arange(0, BLOCK_N)
        mask = mask_rows[:, None] & (cols < N)[None, :]
        offsets = rows[:, None] * N + cols[None, :]
        tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=mask), mask=mask)


@triton.jit
def _store_step_output(y_t_ptr, h_in_ptr, h_out_ptr, h_new, rows, row_ok, live, cols, col_ok, N):
    """Stepwise launches: y_t = h_new for live rows; h_out = h_new for live rows and h_in for finished ones.

    h_in/h_out are two state buffers used in turn, so no program overwrites an h_{t-1} another still reads.
    """
    offsets = rows[:, None] * N + cols[None, :]
    tl.store(y_t_ptr + offsets, h_new, mask=live[:, None] & col_ok[None, :])
    mask = row_ok[:, None] & col_ok[None, :]
    carried = tl.load(h_in_ptr + offsets, mask=mask, other=0.0)
    tl.store(h_out_ptr + offsets, tl.where(live[:, None], h_new.to(carried.dtype), carried), mask=mask)
