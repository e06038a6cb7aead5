"""One step of a recurrent cell, fused, as the cell modules (fastrnn.LSTMCell, GRUCell, RNNCell) run it.

A backend's `cell_forward` does both gate GEMMs (x W_ih^T, h W_hh^T) and the pointwise cell in one call;
its `cell_backward` the pointwise backward (cells.Cell.step_backward's form), after which the four
gradient GEMMs run here, shared by the backends. `CellStep` joins the two as one autograd node; under
torch.compile the same pair runs as the custom ops `fastrnn::cell_forward` / `fastrnn::cell_backward`.
Everything is (B, ·): the cell modules add and remove the batch dimension of unbatched input.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import weight_tap
from .backends import kernels, reference
from .functional import _PLAIN, _backward_is_differentiated, _direct

# --- custom ops: what torch.compile records --------------------------------------------------------


@torch.library.custom_op("fastrnn::cell_forward", mutates_args=())
def cell_forward(mode: str, x: Tensor, states: list[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor], backend: str) -> list[Tensor]:
    """One step of cell `mode` (cells.Cell.mode). Returns [*new states, saved] (saved: for the backward)."""
    new, saved = kernels(backend).cell_forward(mode, x, tuple(states), w_ih, w_hh, b_ih, b_hh)
    return [*new, saved]


@cell_forward.register_fake
def _(mode, x, states, w_ih, w_hh, b_ih, b_hh, backend):
    saved = x.new_empty(0) if mode.startswith("RNN_") else x.new_empty(x.shape[0], 4 * states[0].shape[-1])
    return [*(torch.empty_like(s) for s in states), saved]


@torch.library.custom_op("fastrnn::cell_backward", mutates_args=())
def cell_backward(mode: str, d_new: list[Tensor], states: list[Tensor], new: list[Tensor], saved: Tensor,
                  backend: str) -> list[Tensor]:
    """The pointwise backward of a step. Returns [d gx, d gh, *direct state gradients (empty: none)]."""
    dgx, dgh, direct = kernels(backend).cell_backward(mode, tuple(d_new), tuple(states), tuple(new), saved)
    return [dgx, dgh.clone() if dgh is dgx else dgh, *(dgx.new_empty(0) if d is None else d for d in direct)]


@cell_backward.register_fake
def _(mode, d_new, states, new, saved, backend):
    hidden, batch = states[0].shape[-1], states[0].shape[0]
    gates = 1 if mode.startswith("RNN_") else 4 if mode == "LSTM" else 3
    dgx = states[0].new_empty(batch, gates * hidden)
    direct = [states[0].new_empty(0), torch.empty_like(states[1])] if mode == "LSTM" else \
        [torch.empty_like(states[0]) if mode == "GRU" else states[0].new_empty(0)]
    return [dgx, torch.empty_like(dgx), *direct]


# --- the step's backward ------------------------------------------------------------------------------


def _gradients(needs, dgx: Tensor, dgh: Tensor, direct, x: Tensor, states, w_ih: Tensor, w_hh: Tensor,
               has_bias: bool) -> tuple[Tensor | None, ...]:
    """(dx, dw_ih, dw_hh, db_ih, db_hh, *d states) from the gates' gradients; `needs` as ctx.needs_input_grad
    of (x, w_ih, w_hh, b_ih, b_hh, *states). A gradient nobody needs is not computed."""
    dx = dgx @ w_ih if needs[0] else None
    dw_ih = dgx.T @ x if needs[1] else None
    dw_hh = dgh.T @ states[0] if needs[2] else None
    db_ih = dgx.sum(0) if has_bias and needs[3] else None
    db_hh = dgh.sum(0) if has_bias and needs[4] else None
    d_states = []
    for index, extra in enumerate(direct):
        if not needs[5 + index]:
            d_states.append(None)
        elif index == 0:  # h: through W_hh, plus the cell's direct part
            d_states.append(dgh @ w_hh if extra is None or extra.numel() == 0 else torch.addmm(extra, dgh, w_hh))
        else:
            d_states.append(extra)
    return (dx, dw_ih, dw_hh, db_ih, db_hh, *d_states)


def _plain_step_gradients(ctx, needs, inputs: tuple[Tensor | None, ...], grads: tuple[Tensor, ...]):
    """The step's gradients as ops autograd can differentiate again (create_graph=True, batched gradients):
    the step re-run as cell_math's plain ops (reference.cell_forward) and differentiated by autograd. `needs`
    as _gradients'."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        aliases = [None if t is None else t.view_as(t) for t in inputs]
        x, w_ih, w_hh, b_ih, b_hh, *states = aliases
        new, _ = reference.cell_forward(ctx.mode, x, tuple(states), w_ih, w_hh, b_ih, b_hh, save=False)
        wanted = [a for a, need in zip(aliases, needs) if need and a is not None]
        found = iter(torch.autograd.grad(new, wanted, grads, create_graph=create_graph, allow_unused=True,
                                         materialize_grads=True))
    return tuple(next(found) if need and a is not None else None for a, need in zip(aliases, needs))


def _step_gradients(ctx, needs, x, w_ih, w_hh, b_ih, b_hh, states, new, saved, d_new):
    """A step's backward on its (B, ·) tensors: (dx, dw_ih, dw_hh, db_ih, db_hh, *d states), `needs` as
    _gradients'. Weight gradients go to the weight tap where the step came through one (ctx.pending)."""
    if _backward_is_differentiated(*d_new):
        return _plain_step_gradients(ctx, needs, (x, w_ih, w_hh, b_ih, b_hh, *states), d_new)
    d_new = tuple(d.contiguous() for d in d_new)
    if _direct(*d_new):
        dgx, dgh, direct = kernels(ctx.backend).cell_backward(ctx.mode, d_new, states, new, saved)
    else:
        dgx, dgh, *direct = cell_backward(ctx.mode, list(d_new), list(states), list(new), saved, ctx.backend)
    pending = ctx.pending
    if pending is not None and pending.node is None:
        pending.open = False  # an untapped step's backward has run: the module's next step starts afresh
    elif pending is not None:  # the weights come through a tap: their gradients are its to sum
        if pending.defers():
            pending.add(dgx, x, dgh, states[0])
        needs = (needs[0], False, False, False, False, *needs[5:])
    return _gradients(needs, dgx, dgh, direct, x, states, w_ih, w_hh, b_ih is not None)


class CellStep(torch.autograd.Function):
    """One fused step as one autograd node. Inputs (mode, backend, cache, pending, x, w_ih, w_hh, b_ih, b_hh,
    *states); outputs the new states. `cache`: the calling module's dict for prepacked weights (or None);
    `pending`: the weight_tap.Pending of the tap the weights come through (or None: no tap)."""

    @staticmethod
    def forward(ctx, mode, backend, cache, pending, x, w_ih, w_hh, b_ih, b_hh, *states):
        if _direct(x, w_ih, w_hh, b_ih, b_hh, *states):
            new, saved = kernels(backend).cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, True, cache)
        else:
            *new, saved = cell_forward(mode, x, list(states), w_ih, w_hh, b_ih, b_hh, backend)
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, *states, *new, saved)
        ctx.mode, ctx.backend, ctx.count, ctx.pending = mode, backend, len(states), pending
        return tuple(new)

    @staticmethod
    def backward(ctx, *d_new):
        x, w_ih, w_hh, b_ih, b_hh, *rest = ctx.saved_tensors
        count = ctx.count
        states, new, saved = tuple(rest[:count]), tuple(rest[count:2 * count]), rest[-1]
        return (None,) * 4 + _step_gradients(ctx, ctx.needs_input_grad[4:], x, w_ih, w_hh, b_ih, b_hh, states, new,
                                             saved, d_new)


class LayerStep(torch.autograd.Function):
    """CellStep in the shapes of a one-layer, one-direction layer's step (modules._forward_one_step), so that
    the layer adds no view or copy nodes of its own: x (1, B, I), or (B, 1, I) when batch_first, and states
    (1, B, H); outputs (output in x's layout, *new states), the output a copy of h_n, as nn's layers return
    two tensors. Inputs (mode, backend, cache, pending, batch_first, x, w_ih, w_hh, b_ih, b_hh, *states), plain
    tensors on the cpp kernels."""

    @staticmethod
    def forward(ctx, mode, backend, cache, pending, batch_first, x, w_ih, w_hh, b_ih, b_hh, *states):
        output, new, saved = kernels(backend).layer_step(mode, x, states, w_ih, w_hh, b_ih, b_hh, batch_first, True,
                                                         cache)
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, *states, *new, saved)
        ctx.mode, ctx.backend, ctx.count, ctx.pending = mode, backend, len(states), pending
        return (output, *new)

    @staticmethod
    def backward(ctx, d_output, *d_new):
        x, w_ih, w_hh, b_ih, b_hh, *rest = ctx.saved_tensors
        count = ctx.count
        batch, hidden = rest[0].shape[1], rest[0].shape[2]

        def rows(tensor):
            return tensor.reshape(batch, tensor.shape[-1])

        states, new = tuple(map(rows, rest[:count])), tuple(map(rows, rest[count:2 * count]))
        # The output is h_n's copy: both gradients reach h.
        d_new = (rows(d_new[0]) + rows(d_output), *map(rows, d_new[1:]))
        dx, *grads = _step_gradients(ctx, ctx.needs_input_grad[5:], rows(x), w_ih, w_hh, b_ih, b_hh, states, new,
                                     rest[-1], d_new)
        d_states = [None if d is None else d.view(1, batch, hidden) for d in grads[4:]]
        return (None,) * 5 + (None if dx is None else dx.view(x.shape), *grads[:4], *d_states)


# --- the custom op's own autograd: what a torch.compile'd or exported step differentiates ----------


def _cell_op_setup(ctx, inputs, output):
    mode, x, states, w_ih, w_hh, b_ih, b_hh, backend = inputs
    ctx.save_for_backward(x, w_ih, w_hh, *states, *output)
    ctx.mode, ctx.backend, ctx.count, ctx.has_bias = mode, backend, len(states), b_ih is not None


def _cell_op_backward(ctx, d_outputs):
    x, w_ih, w_hh, *rest = ctx.saved_tensors
    count = ctx.count
    states, new, saved = rest[:count], rest[count:2 * count], rest[-1]
    dgx, dgh, *direct = cell_backward(ctx.mode, [d.contiguous() for d in d_outputs[:count]], list(states), list(new),
                                      saved, ctx.backend)
    needs = (True,) * (5 + count)
    dx, dw_ih, dw_hh, db_ih, db_hh, *d_states = _gradients(needs, dgx, dgh, direct, x, states, w_ih, w_hh, ctx.has_bias)
    return None, dx, d_states, dw_ih, dw_hh, db_ih, db_hh, None


cell_forward.register_autograd(_cell_op_backward, setup_context=_cell_op_setup)


def _plain(tensors) -> bool:
    """Whether every tensor given is a plain tensor or Parameter (no subclass, no fake or traced tensor), outside
    tracing: what a kernel may be called on directly. functional._direct's question, unrolled for the cells'
    per-call budget."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for tensor in tensors:
        if tensor is not None and type(tensor) not in _PLAIN:
            return False
    return True


def _requires_grad(tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    for tensor in tensors:
        if tensor is not None and tensor.requires_grad:
            return True
    return False


def layer_step(mode: str, backend: str, cache: dict, x: Tensor, states: tuple[Tensor, ...], w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None, b_hh: Tensor | None, batch_first: bool) -> tuple[Tensor, ...]:
    """One step of a one-layer, one-direction layer in its own shapes (LayerStep's), on plain tensors eagerly
    (the caller, modules._forward_one_step, checks): (output, *new states). The kernel alone when nothing needs
    a gradient, else the autograd node, on weights through the module's tap as `step` gives them."""
    tensors = (x, w_ih, w_hh, b_ih, b_hh, *states)
    if not _requires_grad(tensors):
        output, new, _ = kernels(backend).layer_step(mode, x, states, w_ih, w_hh, b_ih, b_hh, batch_first, False, cache)
        return (output, *new)
    (w_ih, w_hh, b_ih, b_hh), pending = weight_tap.tapped(cache, (w_ih, w_hh, b_ih, b_hh))
    return LayerStep.apply(mode, backend, cache, pending, batch_first, x, w_ih, w_hh, b_ih, b_hh, *states)


def step(mode: str, backend: str, cache: dict | None, x: Tensor, states: tuple[Tensor, ...], w_ih: Tensor,
         w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor, ...]:
    """One step of cell `mode` on a kernel backend: the new states. The shortest path that is correct for
    what is asked: the kernel alone when nothing needs a gradient, the autograd node when something does,
    the custom op (with its own autograd) for tracing, fake tensors and tensor subclasses."""
    tensors = (x, w_ih, w_hh, b_ih, b_hh, *states)
    if not _plain(tensors):
        return tuple(cell_forward(mode, x, list(states), w_ih, w_hh, b_ih, b_hh, backend)[:-1])
    if _requires_grad(tensors):
        pending = None
        if cache is not None:
            (w_ih, w_hh, b_ih, b_hh), pending = weight_tap.tapped(cache, (w_ih, w_hh, b_ih, b_hh))
        return CellStep.apply(mode, backend, cache, pending, x, w_ih, w_hh, b_ih, b_hh, *states)
    return kernels(backend).cell_forward(mode, x, states, w_ih, w_hh, b_ih, b_hh, False, cache)[0]
