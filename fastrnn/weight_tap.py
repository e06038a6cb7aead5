"""The weight gradients of a loop of cell steps, summed once per backward pass instead of once per step.

A decoder calls its cell T times with the same weights. Differentiated step by step, each step writes a
full-size dW = dG^T x (a rank-B outer product: at B = 1 nothing but memory traffic) and autograd adds it
into the gradient: 3T passes over every weight matrix, most of a training step's time once W no longer
fits in cache. Instead the cell steps of one module share a `tap`: one autograd node that hands the weights
to every step as aliases. A step's backward gives no weight gradient of its own but leaves its (dG, x, h)
with the tap; the engine runs the tap's backward after every step that reaches it in that backward pass,
and there the gradients are one GEMM each over all the steps: dW_ih = [dGx_1 .. dGx_T]^T [x_1 .. x_T].

A step defers only where that is exactly equivalent: grad mode off inside the backward (not
create_graph=True, whose gradients must stay differentiable) and the engine going to run the tap in this
pass (torch.autograd.grad for other inputs does not: then the step defers nothing, as it needs no weight
gradient anyway). A tap serves new steps until its backward has run, or a weight changes (an optimizer
step, load_state_dict), or grad mode, thread or weights differ; then the next step opens a new one.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor


# Rows (steps x batch) per GEMM of the deferred sums. Stacking costs a copy of operands that have gone cold
# since their step, and dW is read back once per chunk, in place (addmm_; dW_ih and dW_hh of an H = 256 cell
# fit in L2). Measured (GRU/LSTM cell, H = 64-256, B = 1-32, T = 64): 16-64 rows alike, 256 up to 1.4x slower
# at B = 32 (where 32 rows is one step, no copy at all); at B = 1 a chunk of 32 steps still amortises dW.
CHUNK_ROWS = 32


class Pending:
    """What the steps of one tap have left for its backward: the running sums [dW_ih, dW_hh(, db_ih, db_hh)]
    and the steps' (dgx, x, dgh, h) not yet folded into them. Without a node, the marker of an untapped step
    (see `tapped`)."""

    __slots__ = ("terms", "rows", "sums", "with_biases", "open", "node")

    def __init__(self, with_biases: bool = False) -> None:
        self.terms: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.rows = 0  # the rows (batch rows of the steps) in terms
        self.sums: list[Tensor] | None = None
        self.with_biases = with_biases
        self.open = True  # new steps may join; closed once the tap's (or the marked step's) backward has run
        self.node = None  # the tap's autograd node, which the steps' backward asks the engine about

    def defers(self) -> bool:
        """Inside a step's backward: whether to leave its weight gradients to the tap."""
        return not torch.is_grad_enabled() and torch._C._will_engine_execute_node(self.node)

    def add(self, dgx: Tensor, x: Tensor, dgh: Tensor, h: Tensor) -> None:
        """A step's share: folded into the sums a chunk of about CHUNK_ROWS rows at a time, so that no more
        than a chunk of the steps' gradients waits for the tap's backward."""
        self.terms.append((dgx, x, dgh, h))
        self.rows += dgx.shape[0]
        if self.rows >= CHUNK_ROWS:
            self._fold()

    def drain(self) -> list[Tensor] | None:
        """The sums over every step added since the last drain (None: no step was), and a fresh start."""
        self._fold()
        sums, self.sums = self.sums, None
        return sums

    def _fold(self) -> None:
        terms, self.terms, self.rows = self.terms, [], 0
        if not terms:
            return
        dgx = _stacked([t[0] for t in terms])
        dgh = dgx if all(t[0] is t[2] for t in terms) else _stacked([t[2] for t in terms])  # LSTM, Elman: dgh is dgx
        x, h = _stacked([t[1] for t in terms]), _stacked([t[3] for t in terms])
        if self.with_biases:
            db_ih = dgx.sum(0)
            db_hh = db_ih if dgh is dgx else dgh.sum(0)
        if self.sums is None:
            self.sums = [dgx.T @ x, dgh.T @ h] + ([db_ih, db_hh.clone() if db_hh is db_ih else db_hh]
                                                   if self.with_biases else [])
            return
        self.sums[0].addmm_(dgx.T, x)
        self.sums[1].addmm_(dgh.T, h)
        if self.with_biases:
            self.sums[2].add_(db_ih)
            self.sums[3].add_(db_hh)


def _stacked(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class _Tap(torch.autograd.Function):
    """Identity on the weights (w_ih, w_hh[, b_ih, b_hh]) forward; backward adds the deferred gradients."""

    @staticmethod
    def forward(ctx, pending, *weights):
        ctx.pending = pending
        ctx.set_materialize_grads(False)
        return tuple(w.detach() for w in weights)  # aliases: the steps read the weights themselves

    @staticmethod
    def backward(ctx, *grads):
        pending = ctx.pending
        pending.open = False
        deferred = pending.drain()
        if deferred is None:
            return (None, *grads)
        return (None, *(d if g is None else g + d for g, d in zip(grads, deferred)))


def tapped(cache: dict, weights: tuple[Tensor | None, ...]) -> tuple[tuple[Tensor | None, ...], Pending | None]:
    """The weights (w_ih, w_hh, b_ih, b_hh) as a step of the module owning `cache` is to use them, and the
    Pending its backward reports to. A step after which a backward has run (or the first one) is not tapped:
    one step per backward pass gains nothing from the tap and would pay for its node. Its Pending (node None)
    only records whether its backward has run; if not, by the next step, the module is in a loop, and that
    step opens a tap which the steps that follow share. No tap where a weight does not require a gradient
    (the tap sums all four gradients or none)."""
    if not all(w is None or w.requires_grad for w in weights):
        return weights, None
    present = weights if weights[2] is not None else weights[:2]
    key = (threading.get_ident(), *((id(w), w._version) for w in present))
    entry = cache.get("tap")
    if entry is not None and entry[0] == key and entry[1].open:
        if entry[2] is not None:
            return entry[2], entry[1]
        pending = Pending(with_biases=len(present) == 4)
        views = _Tap.apply(pending, *present)
        pending.node = views[0].grad_fn
        views = (*views, None, None) if len(views) == 2 else views
        # The entry holds the weights (through the views), so the ids in its key cannot be reused meanwhile.
        cache["tap"] = (key, pending, views)
        return views, pending
    marker = Pending()
    cache["tap"] = (key, marker, None, weights)  # holds the weights, as above
    return weights, marker
