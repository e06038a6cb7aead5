"""One layer in one direction: input projection GEMM, fused recurrence, weight-gradient GEMMs.

The recurrence is a pair of `torch.library` custom ops per cell (forward and backward, opaque to
torch.compile through their fake implementations) dispatched to a kernel backend, joined by a thin
`torch.autograd.Function`. Only the sequential part runs in the backend: the input projection of all
T steps, and every weight gradient, are single large GEMMs here, shared by all backends.

Tensors are time-major: x (T, B, I), states (B, H). `lengths` is None (every sequence runs all T
steps) or a CPU int64 tensor (B,) sorted non-increasing; sequence b then runs only t < lengths[b],
its outputs past that are 0 and its final state is the one at its last step.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from . import cell_math, projection
from .backends import cpp, kernels


# --- custom ops: the recurrence, forward and backward ---------------------------------------


@torch.library.custom_op("fastrnn::lstm_forward", mutates_args=())
def lstm_forward(
    xp: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """LSTM recurrence. xp (T, B, 4H) = x W_ih^T + b_ih + b_hh; h0 (B, R); c0 (B, H); w_hh (4H, R);
    w_hr (R, H) or None (then R = H). Returns y (T, B, R), h_n, c_n, and for the backward the
    activated gates (T, B, 4H) and cell states (T, B, H)."""
    return kernels(backend).lstm_forward(xp, h0, c0, w_hh, w_hr, lengths, reverse)


@lstm_forward.register_fake
def _(xp, h0, c0, w_hh, w_hr, lengths, reverse, backend):
    seq_len, batch, _ = xp.shape
    return (
        xp.new_empty(seq_len, batch, h0.shape[-1]),
        torch.empty_like(h0),
        torch.empty_like(c0),
        torch.empty_like(xp),
        xp.new_empty(seq_len, batch, c0.shape[-1]),
    )


@torch.library.custom_op("fastrnn::lstm_backward", mutates_args=())
def lstm_backward(
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    c_prev: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    gates: Tensor,
    c_all: Tensor,
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reverse LSTM recurrence. c_prev (T, B, H) is the cell state entering each step. Returns the
    pre-activation gate gradients (T, B, 4H) (= dxp), the gradient of each step's hidden output
    before the carry into the previous step (T, B, R; empty without projection), dh0 and dc0."""
    return kernels(backend).lstm_backward(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse)


@lstm_backward.register_fake
def _(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse, backend):
    dh_all = torch.empty_like(dy) if w_hr is not None else dy.new_empty(0)
    return torch.empty_like(gates), dh_all, torch.empty_like(dh_n), torch.empty_like(dc_n)


@torch.library.custom_op("fastrnn::gru_forward", mutates_args=())
def gru_forward(
    xp: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """GRU recurrence. xp (T, B, 3H) = x W_ih^T + b_ih + (b_hr, b_hz, 0); h0 (B, H); w_hh (3H, H);
    b_hn (H,) or None. Returns y (T, B, H), h_n and, for the backward, r, z, n and h W_hn^T + b_hn
    of every step (T, B, 4H)."""
    return kernels(backend).gru_forward(xp, h0, w_hh, b_hn, lengths, reverse)


@gru_forward.register_fake
def _(xp, h0, w_hh, b_hn, lengths, reverse, backend):
    seq_len, batch, hidden = xp.shape[0], xp.shape[1], h0.shape[-1]
    return xp.new_empty(seq_len, batch, hidden), torch.empty_like(h0), xp.new_empty(seq_len, batch, 4 * hidden)


@torch.library.custom_op("fastrnn::gru_backward", mutates_args=())
def gru_backward(
    dy: Tensor,
    dh_n: Tensor,
    h_prev: Tensor,
    w_hh: Tensor,
    saved: Tensor,
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse GRU recurrence. h_prev (T, B, H) is the hidden state entering each step. Returns
    dxp (T, B, 3H), the gradient of h W_hn^T + b_hn (T, B, H), and dh0."""
    return kernels(backend).gru_backward(dy, dh_n, h_prev, w_hh, saved, lengths, reverse)


@gru_backward.register_fake
def _(dy, dh_n, h_prev, w_hh, saved, lengths, reverse, backend):
    seq_len, batch, hidden = dy.shape
    return dy.new_empty(seq_len, batch, 3 * hidden), torch.empty_like(dy), torch.empty_like(dh_n)


@torch.library.custom_op("fastrnn::rnn_forward", mutates_args=())
def rnn_forward(
    xp: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    relu: bool,
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Elman recurrence (tanh, or relu). xp (T, B, H) = x W_ih^T + b_ih + b_hh; h0 (B, H); w_hh (H, H).
    Returns y (T, B, H) and h_n; y is all the backward needs."""
    return kernels(backend).rnn_forward(xp, h0, w_hh, relu, lengths, reverse)


@rnn_forward.register_fake
def _(xp, h0, w_hh, relu, lengths, reverse, backend):
    return torch.empty_like(xp), torch.empty_like(h0)


@torch.library.custom_op("fastrnn::rnn_backward", mutates_args=())
def rnn_backward(
    dy: Tensor,
    dh_n: Tensor,
    y: Tensor,
    w_hh: Tensor,
    relu: bool,
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Reverse Elman recurrence from the forward's outputs y. Returns dxp (T, B, H) and dh0."""
    return kernels(backend).rnn_backward(dy, dh_n, y, w_hh, relu, lengths, reverse)


@rnn_backward.register_fake
def _(dy, dh_n, y, w_hh, relu, lengths, reverse, backend):
    return torch.empty_like(dy), torch.empty_like(dh_n)


# --- PackedSequence layout: padding and packing as custom ops ---------------------------------
#
# torch's pad_packed_sequence reads batch_sizes' values in Python, which torch.compile cannot trace.
# As custom ops, Dynamo sees only their fake shapes: (N, X) packed rows <-> (T, B, X) time-major padded,
# with T = len(batch_sizes), N = data.shape[0] and B given by the caller from a shape where one tells
# it (hx, sorted_indices), else a size known only at run time.


def _packed_rows(batch_sizes: Tensor, batch: int, device: torch.device) -> Tensor:
    """The flat (t * B + b) index, in the padded (T, B) layout, of every packed row, in packed order."""
    live = torch.arange(batch).unsqueeze(0) < batch_sizes.unsqueeze(1)  # (T, B): row b runs step t
    return live.flatten().nonzero().squeeze(1).to(device, non_blocking=True)


@torch.library.custom_op("fastrnn::pad_packed", mutates_args=())
def pad_packed(data: Tensor, batch_sizes: Tensor, batch: Optional[int]) -> tuple[Tensor, Tensor]:
    """Packed rows data (N, X) of a PackedSequence with batch_sizes (T,) (CPU int64) as a time-major,
    zero-padded (T, B, X) tensor in the packed (length-sorted) order, and the lengths (B,) (CPU int64).
    `batch` is B when the caller knows it from a shape (then it is checked), None otherwise."""
    actual = int(batch_sizes[0]) if len(batch_sizes) else 0
    if batch is not None and batch != actual:
        raise RuntimeError(f"Expected hidden states for {actual} sequences (the PackedSequence's batch_sizes[0]), "
                           f"got states for {batch}")
    padded = data.new_zeros(len(batch_sizes), actual, data.shape[-1])
    padded.view(-1, data.shape[-1]).index_copy_(0, _packed_rows(batch_sizes, actual, data.device), data)
    lengths = (torch.arange(actual).unsqueeze(0) < batch_sizes.unsqueeze(1)).sum(0)
    return padded, lengths


@pad_packed.register_fake
def _(data, batch_sizes, batch):
    if batch is None:
        batch = torch.library.get_ctx().new_dynamic_size()
    return data.new_empty(batch_sizes.shape[0], batch, data.shape[-1]), batch_sizes.new_empty(batch)


@torch.library.custom_op("fastrnn::pack_padded", mutates_args=())
def pack_padded(padded: Tensor, batch_sizes: Tensor, total: int) -> Tensor:
    """The inverse of pad_packed: the (total, X) packed rows of a (T, B, X) padded tensor."""
    rows = _packed_rows(batch_sizes, padded.shape[1], padded.device)
    return padded.reshape(-1, padded.shape[-1]).index_select(0, rows)


@pack_padded.register_fake
def _(padded, batch_sizes, total):
    return padded.new_empty(total, padded.shape[-1])


def _pad_packed_setup(ctx, inputs, output):
    data, batch_sizes, _ = inputs
    ctx.save_for_backward(batch_sizes)
    ctx.total = data.shape[0]


def _pad_packed_backward(ctx, grad_padded, grad_lengths):
    (batch_sizes,) = ctx.saved_tensors
    return pack_padded(grad_padded.contiguous(), batch_sizes, ctx.total), None, None


def _pack_padded_setup(ctx, inputs, output):
    padded, batch_sizes, _ = inputs
    ctx.save_for_backward(batch_sizes)
    ctx.batch = padded.shape[1]


def _pack_padded_backward(ctx, grad_packed):
    (batch_sizes,) = ctx.saved_tensors
    return pad_packed(grad_packed.contiguous(), batch_sizes, ctx.batch)[0], None, None


pad_packed.register_autograd(_pad_packed_backward, setup_context=_pad_packed_setup)
pack_padded.register_autograd(_pack_padded_backward, setup_context=_pack_padded_setup)


# --- torch's own recurrence, made opaque to torch.compile ---------------------------------------


@torch.library.custom_op("fastrnn::torch_rnn_inference", mutates_args=())
def torch_rnn_inference(x: Tensor, states: list[Tensor], weights: list[Tensor], mode: str, has_biases: bool,
                        num_layers: int, bidirectional: bool, batch_first: bool) -> list[Tensor]:
    """nn.LSTM/nn.GRU/nn.RNN's own forward (oneDNN's LSTM on a CPU) without autograd: what auto runs eagerly
    where torch's code is the fastest, as an op torch.compile can put in a graph (Dynamo cannot trace
    torch's RNN modules). `states`: [h0, c0] or [h0], each (L*D, B, size). Returns [output, *finals]."""
    if mode == "LSTM":
        results = torch._VF.lstm(x, states, weights, has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    else:
        run = {"GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh, "RNN_RELU": torch._VF.rnn_relu}[mode]
        results = run(x, states[0], weights, has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    # Contiguous, as the fake implementation says: torch's batch_first output is a transposed view, with
    # strides that differ between its code paths.
    return [t.contiguous() for t in results]


@torch_rnn_inference.register_fake
def _(x, states, weights, mode, has_biases, num_layers, bidirectional, batch_first):
    directions = 2 if bidirectional else 1
    output = x.new_empty(*x.shape[:2], directions * states[0].shape[-1])
    return [output, *(s.new_empty(s.shape) for s in states)]


# --- autograd ---------------------------------------------------------------------------------

_PLAIN = (Tensor, torch.nn.Parameter)


def _direct(*tensors: Tensor | None) -> bool:
    """Whether to call the backend directly instead of through its custom op. In eager mode, on plain
    tensors, the op's dispatch is pure overhead (tens of microseconds a call: most of the cost of a small
    layer); tracing (torch.compile, torch.jit.trace), fake tensors and tensor subclasses go through the op,
    which they record (a direct call would leave the trace with the kernel's empty outputs)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for tensor in tensors:  # a loop, not all(generator): this runs on every layer call
        if tensor is not None and type(tensor) not in _PLAIN:
            return False
    return True


def _recurrence(name: str, op, backend: str, cache: dict | None, *tensors: Tensor | None, **direct_options):
    """The recurrence `name` as the autograd Functions call it: the backend's function of that name on the plain
    eager `tensors` (with the layer-direction's cache and `direct_options`), else its custom op `op`, which traces
    record."""
    if _direct(*tensors):
        return functools.partial(getattr(kernels(backend), name), cache=cache, **direct_options)
    return lambda *args: op(*args, backend)


def _inference(x: Tensor | PackedRows, *tensors: Tensor | None) -> bool:
    """Whether a layer call is an eager inference on plain tensors, which runs the backend's functions directly
    with nothing kept for a backward."""
    rows = x.rows if isinstance(x, PackedRows) else x
    return not functorch_active() and not _needs_grad(rows, *tensors) and _direct(rows, *tensors)


def _needs_grad(*tensors: Tensor | None) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def functorch_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, jvp, functional_call under one) is running. Its
    wrapped tensors have no storage for a kernel to read: the recurrence then runs as the plain ops of
    `cell_math`, which every transform goes through."""
    return torch._C._are_functorch_transforms_active()


def _vmapped(*tensors: Tensor | None) -> bool:
    """Whether the backward runs under a vmap (autograd.grad(..., is_grads_batched=True) batches the
    incoming gradients with torch's legacy vmap, whose tensors have no storage either)."""
    return any(t is not None and (torch._C._functorch.is_legacy_batchedtensor(t) or torch._C._functorch.is_batchedtensor(t))
               for t in tensors)


def _backward_is_differentiated(*grads: Tensor) -> bool:
    """Whether a backward must be differentiable: create_graph=True (grad mode is on inside the backward) or
    batched incoming gradients. Never under torch.compile, whose AOTAutograd traces a once-differentiated
    backward (and says so itself when differentiated twice)."""
    return not torch.compiler.is_compiling() and (torch.is_grad_enabled() or _vmapped(*grads))


def previous_states(states: Tensor, initial: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """The state entering each step (T, B, X), from the states each step produced and the initial one.

    Forward in time that is the previous step's state (initial at t = 0); in reverse it is the next
    step's, except at each sequence's own last step t = lengths[b] - 1, where the reverse pass starts.
    """
    if not reverse:
        return torch.cat((initial.unsqueeze(0), states[:-1]))
    shifted = torch.cat((states[1:], initial.unsqueeze(0)))
    if lengths is None:
        return shifted
    steps = torch.arange(states.shape[0], device=states.device).unsqueeze(1)
    starts = (steps == lengths.to(states.device).unsqueeze(0) - 1).unsqueeze(-1)
    return torch.where(starts, initial.unsqueeze(0), shifted)


def _outer_sum(grads: Tensor | tuple[Tensor, ...], inputs: Tensor) -> Tensor:
    """sum over all steps and rows of grads_t^T inputs_t: one (G, T*B) x (T*B, X) GEMM. grads: (T, B, G), or a
    tuple of (T, B, G_i) whose gates side by side are G."""
    pieces = grads if isinstance(grads, tuple) else (grads,)
    return projection.transposed_product([g.flatten(0, 1) for g in pieces], inputs.flatten(0, 1))


def _differentiable_backward(ctx, recurrence, inputs: tuple[Tensor | None, ...], lengths: Tensor | None,
                             grads: tuple[Tensor, ...]):
    """The backward as a function autograd can differentiate again: the recurrence re-run as the plain ops of
    `cell_math` and differentiated by autograd. Taken when the backward is itself being differentiated
    (create_graph=True: gradient penalties, Hessian-vector products, MAML) or batched (is_grads_batched).

    inputs: the Function's tensor inputs, the projected input first. The kernels' backward never needs
    that input, so it is not saved: `ctx.xp_source` recomputes it from the layer's input and weights, which
    connects the result to them for the next differentiation. Each input enters the re-run through an alias
    of its own, so that its gradient counts only its direct use by this recurrence (the outer graph carries
    whatever else it feeds, the projected input included)."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xp = ctx.xp_source() if inputs[0] is None else inputs[0]
        aliases = [None if t is None else t.view_as(t) for t in (xp, *inputs[1:])]
        outputs = recurrence(*aliases, lengths, ctx.reverse)
        wanted = [a for a, need in zip(aliases, ctx.needs_input_grad) if need and a is not None]
        found = iter(torch.autograd.grad(outputs, wanted, grads, create_graph=create_graph, allow_unused=True,
                                         materialize_grads=True))
    return tuple(next(found) if need and a is not None else None for a, need in zip(aliases, ctx.needs_input_grad))


def _lstm_kernel_backward(backend, reverse, saved, dy, dh_n, dc_n, cache=None):
    """The fused backward of the LSTM recurrence: (dxp, dh0, dc0, dw_hh, dw_hr) from what the forward saved."""
    h0, c0, w_hh, w_hr, lengths, y, gates, c_all = saved
    c_prev = previous_states(c_all, c0, lengths, reverse)
    dy, dh_n, dc_n = dy.contiguous(), dh_n.contiguous(), dc_n.contiguous()
    op = _recurrence("lstm_backward", lstm_backward, backend, cache, dy, dh_n, dc_n, gates)
    dgates, dh_all, dh0, dc0 = op(dy, dh_n, dc_n, c_prev, w_hh, w_hr, gates, c_all, lengths, reverse)
    dw_hh = _outer_sum(dgates, previous_states(y, h0, lengths, reverse))
    dw_hr = None
    if w_hr is not None:
        hidden = c_all.shape[-1]
        dw_hr = _outer_sum(dh_all, gates[..., 3 * hidden :] * torch.tanh(c_all))
    return dgates, dh0, dc0, dw_hh, dw_hr


def _gru_kernel_backward(backend, reverse, saved, dy, dh_n, cache=None):
    """The fused backward of the GRU recurrence: (dxp, dh0, dw_hh, db_hn) from what the forward saved."""
    h0, w_hh, b_hn, lengths, y, acts = saved
    h_prev = previous_states(y, h0, lengths, reverse)
    dy, dh_n = dy.contiguous(), dh_n.contiguous()
    op = _recurrence("gru_backward", gru_backward, backend, cache, dy, dh_n, acts)
    dxp, dhn, dh0 = op(dy, dh_n, h_prev, w_hh, acts, lengths, reverse)
    hidden = h0.shape[-1]
    dw_hh = _outer_sum((dxp[..., : 2 * hidden], dhn), h_prev)
    db_hn = dhn.sum((0, 1)) if b_hn is not None else None
    return dxp, dh0, dw_hh, db_hn


def _rnn_kernel_backward(backend, reverse, relu, saved, dy, dh_n, cache=None):
    """The fused backward of the Elman recurrence: (dxp, dh0, dw_hh) from what the forward saved."""
    h0, w_hh, lengths, y = saved
    dy, dh_n = dy.contiguous(), dh_n.contiguous()
    op = _recurrence("rnn_backward", rnn_backward, backend, cache, dy, dh_n, y)
    dxp, dh0 = op(dy, dh_n, y, w_hh, relu, lengths, reverse)
    return dxp, dh0, _outer_sum(dxp, previous_states(y, h0, lengths, reverse))


class LSTMRecurrence(torch.autograd.Function):
    """The LSTM recurrence as one autograd node: the backend's fused forward and backward, with a backward that
    can itself be differentiated (see _differentiable_backward). xp_source: a callable returning xp computed
    afresh from what it was computed from (None: xp is saved instead). cache: the layer-direction's dict for the
    backend's prepared weights (backends/__init__.py), or None."""

    @staticmethod
    def forward(ctx, xp, h0, c0, w_hh, w_hr, lengths, reverse, backend, xp_source=None, cache=None):
        # With xp_source, xp is the layer's own projection, read by nothing after this forward: the saved gates
        # may overwrite it (scratch_xp), which spares a (T, B, 4H) buffer.
        op = _recurrence("lstm_forward", lstm_forward, backend, cache, xp, h0, c0, w_hh, w_hr,
                         scratch_xp=xp_source is not None)
        y, h_n, c_n, gates, c_all = op(xp, h0, c0, w_hh, w_hr, lengths, reverse)
        ctx.save_for_backward(h0, c0, w_hh, w_hr, lengths, y, gates, c_all, None if xp_source else xp)
        ctx.reverse, ctx.backend, ctx.xp_source, ctx.cache = reverse, backend, xp_source, cache
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        *saved, xp = ctx.saved_tensors
        if _backward_is_differentiated(dy, dh_n, dc_n):
            h0, c0, w_hh, w_hr, lengths = saved[:5]
            return (*_differentiable_backward(ctx, cell_math.lstm_recurrence, (xp, h0, c0, w_hh, w_hr), lengths,
                                              (dy, dh_n, dc_n)), None, None, None, None, None)
        return (*_lstm_kernel_backward(ctx.backend, ctx.reverse, saved, dy, dh_n, dc_n, ctx.cache),
                None, None, None, None, None)


class GRURecurrence(torch.autograd.Function):
    """The GRU recurrence as one autograd node; as LSTMRecurrence."""

    @staticmethod
    def forward(ctx, xp, h0, w_hh, b_hn, lengths, reverse, backend, xp_source=None, cache=None):
        op = _recurrence("gru_forward", gru_forward, backend, cache, xp, h0, w_hh, b_hn)
        y, h_n, acts = op(xp, h0, w_hh, b_hn, lengths, reverse)
        ctx.save_for_backward(h0, w_hh, b_hn, lengths, y, acts, None if xp_source else xp)
        ctx.reverse, ctx.backend, ctx.xp_source, ctx.cache = reverse, backend, xp_source, cache
        return y, h_n

    @staticmethod
    def backward(ctx, dy, dh_n):
        *saved, xp = ctx.saved_tensors
        if _backward_is_differentiated(dy, dh_n):
            h0, w_hh, b_hn, lengths = saved[:4]
            return (*_differentiable_backward(ctx, cell_math.gru_recurrence, (xp, h0, w_hh, b_hn), lengths,
                                              (dy, dh_n)), None, None, None, None, None)
        return (*_gru_kernel_backward(ctx.backend, ctx.reverse, saved, dy, dh_n, ctx.cache), None, None, None, None, None)


class RNNRecurrence(torch.autograd.Function):
    """The Elman recurrence as one autograd node; as LSTMRecurrence."""

    @staticmethod
    def forward(ctx, xp, h0, w_hh, relu, lengths, reverse, backend, xp_source=None, cache=None):
        op = _recurrence("rnn_forward", rnn_forward, backend, cache, xp, h0, w_hh)
        y, h_n = op(xp, h0, w_hh, relu, lengths, reverse)
        ctx.save_for_backward(h0, w_hh, lengths, y, None if xp_source else xp)
        ctx.reverse, ctx.backend, ctx.relu, ctx.xp_source, ctx.cache = reverse, backend, relu, xp_source, cache
        return y, h_n

    @staticmethod
    def backward(ctx, dy, dh_n):
        *saved, xp = ctx.saved_tensors
        if _backward_is_differentiated(dy, dh_n):
            h0, w_hh, lengths = saved[:3]
            grads = _differentiable_backward(ctx, functools.partial(cell_math.rnn_recurrence, relu=ctx.relu),
                                             (xp, h0, w_hh), lengths, (dy, dh_n))
            return (*grads, None, None, None, None, None, None)
        return (*_rnn_kernel_backward(ctx.backend, ctx.reverse, ctx.relu, saved, dy, dh_n, ctx.cache),
                None, None, None, None, None, None)


# --- the custom ops' own autograd: what a torch.export program differentiates -------------------
#
# Eager and torch.compile code differentiates the recurrence through the Functions above. A program saved by
# torch.export holds the forward ops themselves, so they carry the same fused backward (once: a gradient
# penalty through an exported program is refused rather than computed as if the backward were constant).


def _refuse_double_backward(name: str) -> None:
    if torch.is_grad_enabled():
        raise RuntimeError(f"fastrnn::{name}: backward with create_graph=True (for second derivatives) through a "
                           "torch.export program is not supported: its fused backward is differentiable once; "
                           "differentiate the eager module instead")


def _unused_outputs(name: str, *grads: Tensor | None) -> None:
    if any(g is not None and bool(g.ne(0).any()) for g in grads):
        raise RuntimeError(f"fastrnn::{name}: gradients reached the outputs kept for the backward (gates, cell "
                           "states), which are not differentiable; use y and the final states")


def _lstm_op_setup(ctx, inputs, output):
    xp, h0, c0, w_hh, w_hr, lengths, reverse, backend = inputs
    y, _, _, gates, c_all = output
    ctx.save_for_backward(h0, c0, w_hh, w_hr, lengths, y, gates, c_all)
    ctx.reverse, ctx.backend = reverse, backend


def _lstm_op_backward(ctx, dy, dh_n, dc_n, dgates, dc_all):
    _refuse_double_backward("lstm_forward")
    _unused_outputs("lstm_forward", dgates, dc_all)
    return (*_lstm_kernel_backward(ctx.backend, ctx.reverse, ctx.saved_tensors, dy, dh_n, dc_n), None, None, None)


def _gru_op_setup(ctx, inputs, output):
    xp, h0, w_hh, b_hn, lengths, reverse, backend = inputs
    y, _, acts = output
    ctx.save_for_backward(h0, w_hh, b_hn, lengths, y, acts)
    ctx.reverse, ctx.backend = reverse, backend


def _gru_op_backward(ctx, dy, dh_n, dacts):
    _refuse_double_backward("gru_forward")
    _unused_outputs("gru_forward", dacts)
    return (*_gru_kernel_backward(ctx.backend, ctx.reverse, ctx.saved_tensors, dy, dh_n), None, None, None)


def _rnn_op_setup(ctx, inputs, output):
    xp, h0, w_hh, relu, lengths, reverse, backend = inputs
    ctx.save_for_backward(h0, w_hh, lengths, output[0])
    ctx.reverse, ctx.backend, ctx.relu = reverse, backend, relu


def _rnn_op_backward(ctx, dy, dh_n):
    _refuse_double_backward("rnn_forward")
    return (*_rnn_kernel_backward(ctx.backend, ctx.reverse, ctx.relu, ctx.saved_tensors, dy, dh_n),
            None, None, None, None)


lstm_forward.register_autograd(_lstm_op_backward, setup_context=_lstm_op_setup)
gru_forward.register_autograd(_gru_op_backward, setup_context=_gru_op_setup)
rnn_forward.register_autograd(_rnn_op_backward, setup_context=_rnn_op_setup)


# --- one layer, one direction -----------------------------------------------------------------


class PackedRows(NamedTuple):
    """A layer's input given as the real rows of a PackedSequence (N, I), in packed order, instead of the
    padded (T, B, I) tensor: the input projection then runs on the N rows only (forward and backward),
    and its result is padded for the recurrence. With ragged lengths much of the padded layout is padding."""

    rows: Tensor
    batch_sizes: Tensor  # (T,) CPU int64
    batch: int


def input_projection(x: Tensor | PackedRows, w_ih: Tensor, bias: Tensor | None, cache: dict | None = None,
                     bias2: Tensor | None = None) -> Tensor:
    """x W_ih^T + bias + bias2 for every step, as (T, B, G); zero at the padding of a PackedRows input. cache:
    the layer-direction's dict (lstm_layer), where the projection may keep W_ih prepared."""
    if isinstance(x, PackedRows):
        return pad_packed(projection.linear(x.rows, w_ih, bias, cache, bias2), x.batch_sizes, x.batch)[0]
    return projection.linear(x, w_ih, bias, cache, bias2)


_MASKS: dict[tuple, Tensor] = {}


def _reset_update_mask(hidden: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(1,)*2H + (0,)*H: selects b_hr and b_hz out of a GRU's b_hh. Cached in eager mode (one op per call
    instead of four); a traced graph builds it (constant-folded) itself."""
    key = (hidden, dtype, device)
    mask = None if torch.compiler.is_compiling() else _MASKS.get(key)
    if mask is None:
        mask = torch.cat((torch.ones(2 * hidden, dtype=dtype, device=device),
                          torch.zeros(hidden, dtype=dtype, device=device)))
        if not torch.compiler.is_compiling():
            _MASKS[key] = mask
    return mask


# An inference whose projected input (T, B, G) would exceed this many elements runs in chunks of steps: each
# chunk's projection, then its steps, the state carried from one chunk to the next. A buffer that large is a
# fresh mapping from the allocator on every call (glibc maps anything over 32 MB itself), whose page faults
# cost as much as a third of the call (measured on a Zen 5 core, 1 thread: writing a fresh 64 MB buffer 29 ms
# of thread CPU time, a reused 16 MB one 0.3 ms); a chunk's buffer is reused, and still in cache when its
# steps read it.
CHUNK_ELEMENTS = 2**21


def _projects_in_steps(backend: str, mode: str, x: Tensor | PackedRows, w_hh: Tensor) -> bool:
    """Whether a layer's inference runs on the cpp kernels with its projection inside the steps (padded input;
    cpp.projects_in_steps's rule)."""
    return backend == "cpp" and type(x) is Tensor and cpp.projects_in_steps(
        mode, x.dtype, x.shape[1], x.shape[2], w_hh.shape[1], torch.get_num_threads())


def _run_inference(x: Tensor | PackedRows, project, run, states: tuple[Tensor, ...], lengths: Tensor | None,
                   reverse: bool, width: int):
    """An inference's projection and steps, run(project(x), *states, lengths) -> (y, *final states): in one go,
    or where the projected input (T, B, width) exceeds CHUNK_ELEMENTS, over chunks of the steps in the order the
    recurrence walks them, each chunk's lengths relative to it and clamped to it (a row that ended before the
    chunk keeps its state through it, as the kernels keep a row past its length)."""
    if type(x) is not Tensor or x.shape[0] <= 1 or x.shape[0] * x.shape[1] * width <= CHUNK_ELEMENTS:
        return run(project(x), *states, lengths)
    steps = x.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // max(1, x.shape[1] * width))
    starts = list(range(0, steps, chunk))
    outputs = [None] * len(starts)
    for index in (reversed(range(len(starts))) if reverse else range(len(starts))):
        first = starts[index]
        last = min(steps, first + chunk)
        part = None if lengths is None else (lengths - first).clamp_(0, last - first)
        outputs[index], *states = run(project(x[first:last]), *states, part)
    return (torch.cat(outputs), *states)


def lstm_layer(
    x: Tensor | PackedRows,
    h0: Tensor,
    c0: Tensor,
    weights: tuple[Tensor | None, ...],
    lengths: Tensor | None,
    reverse: bool,
    backend: str,
    cache: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """x (T, B, I) or its PackedRows; weights (w_ih, w_hh, b_ih, b_hh, w_hr), biases and w_hr may be None.
    cache: the layer-direction's dict for the backend's prepared weights, kept by the caller (None: none kept).
    Returns (y (T, B, R), h_n, c_n)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights

    def project(rows: Tensor | PackedRows) -> Tensor:
        return input_projection(rows, w_ih, b_ih, cache, b_hh)  # b_ih + b_hh: summed where it is added

    w_hh, w_hr = w_hh.contiguous(), None if w_hr is None else w_hr.contiguous()
    h0, c0 = h0.contiguous(), c0.contiguous()
    if _inference(x, h0, c0, w_ih, b_ih, b_hh, w_hh, w_hr):
        # No autograd node, and nothing kept for a backward (the gates and cell states).
        if w_hr is None and _projects_in_steps(backend, "LSTM", x, w_hh):
            return cpp.lstm_forward_projecting(x.contiguous(), w_ih.contiguous(), b_ih, b_hh, h0, c0, w_hh, lengths,
                                               reverse, cache)

        def run(xp, h, c, part):
            return kernels(backend).lstm_forward(xp, h, c, w_hh, w_hr, part, reverse, save=False, cache=cache)[:3]
        return _run_inference(x, project, run, (h0, c0), lengths, reverse, w_hh.shape[0])
    xp = project(x)
    if functorch_active():
        return cell_math.lstm_recurrence(xp, h0, c0, w_hh, w_hr, lengths, reverse)
    return LSTMRecurrence.apply(xp, h0, c0, w_hh, w_hr, lengths, reverse, backend, lambda: project(x), cache)


def gru_layer(
    x: Tensor | PackedRows,
    h0: Tensor,
    weights: tuple[Tensor | None, ...],
    lengths: Tensor | None,
    reverse: bool,
    backend: str,
    cache: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """x (T, B, I) or its PackedRows; weights (w_ih, w_hh, b_ih, b_hh), biases may be None; cache as lstm_layer.
    Returns (y (T, B, H), h_n)."""
    w_ih, w_hh, b_ih, b_hh = weights
    # b_hr and b_hz add to the input projection; b_hn must stay inside the reset product.
    bias = None if b_ih is None else torch.addcmul(b_ih, b_hh, _reset_update_mask(w_hh.shape[-1], b_hh.dtype,
                                                                                   b_hh.device))

    def project(rows: Tensor | PackedRows) -> Tensor:
        return input_projection(rows, w_ih, bias, cache)

    b_hn = None if b_hh is None else b_hh[2 * w_hh.shape[-1] :].contiguous()
    w_hh, h0 = w_hh.contiguous(), h0.contiguous()
    if _inference(x, h0, w_ih, w_hh, bias, b_hn):
        if _projects_in_steps(backend, "GRU", x, w_hh):
            return cpp.gru_forward_projecting(x.contiguous(), w_ih.contiguous(), b_ih, b_hh, h0, w_hh, lengths,
                                              reverse, cache)

        def run(xp, h, part):
            return kernels(backend).gru_forward(xp, h, w_hh, b_hn, part, reverse, save=False, cache=cache)[:2]
        return _run_inference(x, project, run, (h0,), lengths, reverse, w_hh.shape[0])
    xp = project(x)
    if functorch_active():
        return cell_math.gru_recurrence(xp, h0, w_hh, b_hn, lengths, reverse)
    return GRURecurrence.apply(xp, h0, w_hh, b_hn, lengths, reverse, backend, lambda: project(x), cache)


def rnn_layer(
    x: Tensor | PackedRows,
    h0: Tensor,
    weights: tuple[Tensor | None, ...],
    lengths: Tensor | None,
    reverse: bool,
    backend: str,
    cache: dict | None = None,
    *,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    """The Elman layer (tanh, or relu): x (T, B, I) or its PackedRows; weights (w_ih, w_hh, b_ih, b_hh),
    biases may be None; cache as lstm_layer. Returns (y (T, B, H), h_n)."""
    w_ih, w_hh, b_ih, b_hh = weights

    def project(rows: Tensor | PackedRows) -> Tensor:
        return input_projection(rows, w_ih, b_ih, cache, b_hh)  # b_ih + b_hh: summed where it is added

    w_hh, h0 = w_hh.contiguous(), h0.contiguous()
    if _inference(x, h0, w_ih, w_hh, b_ih, b_hh):
        if _projects_in_steps(backend, "RNN_RELU" if relu else "RNN_TANH", x, w_hh):
            return cpp.rnn_forward_projecting(x.contiguous(), w_ih.contiguous(), b_ih, b_hh, h0, w_hh, relu, lengths,
                                              reverse, cache)

        def run(xp, h, part):
            return kernels(backend).rnn_forward(xp, h, w_hh, relu, part, reverse, save=False, cache=cache)
        return _run_inference(x, project, run, (h0,), lengths, reverse, w_hh.shape[0])
    xp = project(x)
    if functorch_active():
        return cell_math.rnn_recurrence(xp, h0, w_hh, lengths, reverse, relu)
    return RNNRecurrence.apply(xp, h0, w_hh, relu, lengths, reverse, backend, lambda: project(x), cache)


# The layer function of each cell (cells.Cell.mode), as the layer stack calls it.
LAYERS = {
    "LSTM": lstm_layer,
    "GRU": gru_layer,
    "RNN_TANH": functools.partial(rnn_layer, relu=False),
    "RNN_RELU": functools.partial(rnn_layer, relu=True),
}
