"""The cells' weight gradients summed once per backward pass (fastrnn/weight_tap.py): on every way a training
loop differentiates a decoder, the same gradients as nn's cells, stepping the same tensors."""

import threading

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import backends, weight_tap

KINDS = {"LSTM": (nn.LSTMCell, fastrnn.LSTMCell), "GRU": (nn.GRUCell, fastrnn.GRUCell),
         "RNN": (nn.RNNCell, fastrnn.RNNCell)}
STEPS, BATCH, INPUT, HIDDEN = 5, 3, 7, 6


@pytest.fixture(params=["cpp", "reference"])
def backend(request):
    if backends.unavailable_reason(request.param, "cpu"):
        pytest.skip(backends.unavailable_reason(request.param, "cpu"))
    return request.param


def twins(kind, backend, bias=True):
    torch.manual_seed(0)
    theirs = KINDS[kind][0](INPUT, HIDDEN, bias=bias, dtype=torch.float64)
    ours = KINDS[kind][1](INPUT, HIDDEN, bias=bias, dtype=torch.float64, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def run(cell, xs, state=None):
    """A decoder loop: the hidden output of each step, and the last state."""
    outputs = []
    for x in xs:
        state = cell(x, state)
        outputs.append(state[0] if isinstance(state, tuple) else state)
    return torch.stack(outputs), state


def inputs(seed=1):
    torch.manual_seed(seed)
    return torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64, requires_grad=True)


def grads(module):
    return [p.grad.clone() if p.grad is not None else None for p in module.parameters()]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def assert_same_on_both(kind, backend, procedure, bias=True):
    """procedure(cell) -> tensors, on nn's cell and on ours: the same tensors."""
    theirs, ours = twins(kind, backend, bias)
    assert_same(procedure(theirs), procedure(ours))
    return ours


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_loop_gradients_match_nn(kind, bias, backend):
    def procedure(cell):
        xs = inputs()
        run(cell, xs)[0].sin().sum().backward()
        return [xs.grad, *grads(cell)]

    ours = assert_same_on_both(kind, backend, procedure, bias)
    if backend == "cpp":  # the kernel backends' steps share a tap; reference runs plain differentiable ops
        assert "tap" in ours._packed


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_frozen_bias_is_left_out_and_the_rest_still_match(kind, backend):
    def procedure(cell):
        cell.bias_hh.requires_grad_(False)
        run(cell, inputs())[0].sum().backward()
        return grads(cell)

    assert_same_on_both(kind, backend, procedure)


@pytest.mark.parametrize("kind", KINDS)
def test_a_gradient_of_the_inputs_only_leaves_nothing_for_the_next_pass(kind, backend):
    def procedure(cell):
        xs = inputs()
        out, _ = run(cell, xs)
        (d_x,) = torch.autograd.grad(out.sum(), xs, retain_graph=True)  # the weights are not asked for
        assert all(p.grad is None for p in cell.parameters())
        out.square().sum().backward()
        return [d_x, *grads(cell)]

    assert_same_on_both(kind, backend, procedure)


@pytest.mark.parametrize("kind", KINDS)
def test_retained_graph_backward_twice_accumulates_twice(kind, backend):
    def procedure(cell):
        loss = run(cell, inputs())[0].cos().sum()
        loss.backward(retain_graph=True)
        loss.backward()
        return grads(cell)

    assert_same_on_both(kind, backend, procedure)


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_backpropagation_with_optimizer_steps(kind, backend):
    def procedure(cell):
        optimizer = torch.optim.SGD(cell.parameters(), lr=0.1)
        state, trace = None, []
        for chunk in range(3):
            out, state = run(cell, inputs(seed=chunk), state)
            optimizer.zero_grad()
            out.square().sum().backward()
            trace += grads(cell)
            optimizer.step()
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return trace + [p.detach().clone() for p in cell.parameters()]

    assert_same_on_both(kind, backend, procedure)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_from_midway_then_the_loop_goes_on(kind, backend):
    """A backward pass from an early output closes the tap; the later steps join a new one, and the final
    backward walks the steps of both."""
    def procedure(cell):
        xs = inputs()
        early, state = run(cell, xs[:2])
        early.sum().backward(retain_graph=True)
        first = grads(cell)
        late, _ = run(cell, xs[2:], state)
        late.tanh().sum().backward()
        return first + grads(cell) + [xs.grad]

    assert_same_on_both(kind, backend, procedure)


@pytest.mark.parametrize("kind", KINDS)
def test_create_graph_gradients_stay_differentiable(kind, backend):
    def procedure(cell):
        params = list(cell.parameters())
        first = torch.autograd.grad(run(cell, inputs())[0].sin().sum(), params, create_graph=True)
        penalty = sum(g.square().sum() for g in first)
        return [t.detach() for t in (*first, *torch.autograd.grad(penalty, params))]

    assert_same_on_both(kind, backend, procedure)


@pytest.mark.parametrize("kind", KINDS)
def test_weight_hooks_fire_as_often_as_nn(kind, backend):
    counts = []
    for cell in twins(kind, backend):
        count = [0]
        cell.weight_hh.register_hook(lambda grad: count.__setitem__(0, count[0] + 1))
        out, _ = run(cell, inputs())
        out.sum().backward()
        counts.append(count[0])
    assert counts[0] == counts[1] == 1


def test_an_in_place_weight_change_mid_graph_raises_as_nn(backend):
    for cell in twins("GRU", backend):
        out, _ = run(cell, inputs())
        with torch.no_grad():
            cell.weight_hh.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


def test_threads_do_not_share_a_tap(backend):
    """Two threads running the same module's loops and backward passes at once: each pass gets its own steps'
    gradients (the tap is per thread)."""
    theirs, ours = twins("LSTM", backend)
    expected = []
    for seed in (1, 2):
        theirs.zero_grad()
        out, _ = run(theirs, inputs(seed))
        expected.append(torch.autograd.grad(out.sum(), list(theirs.parameters())))
    found, sequences = [None, None], [inputs(1), inputs(2)]
    barrier = threading.Barrier(2)

    def work(index):
        xs = sequences[index]
        barrier.wait()
        out, _ = run(ours, xs)
        barrier.wait()
        found[index] = torch.autograd.grad(out.sum(), list(ours.parameters()))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for want, got in zip(expected, found):
        assert_same(list(want), list(got))


@pytest.mark.skipif(backends.unavailable_reason("cpp", "cpu") is not None, reason="the cpp backend is unavailable")
def test_a_step_per_backward_pass_opens_no_tap_and_a_loop_does():
    _, ours = twins("GRU", "cpp")
    state = None
    for x in inputs():
        state = ours(x, state.detach() if state is not None else None)
        state.sum().backward()
        assert ours._packed["tap"][2] is None  # untapped: one step per backward pass
    state = None
    for x in inputs():
        state = ours(x, state)
    assert ours._packed["tap"][2] is not None  # the second step before a backward opened a tap


@pytest.mark.skipif(backends.unavailable_reason("cpp", "cpu") is not None, reason="the cpp backend is unavailable")
@pytest.mark.parametrize("chunk_rows", [1, 7])
@pytest.mark.parametrize("kind", KINDS)
def test_the_deferred_sums_over_several_chunks(kind, chunk_rows, monkeypatch):
    """Chunks of one step and of two steps with a shorter last one (B = 3, 5 steps): the same sums."""
    monkeypatch.setattr(weight_tap, "CHUNK_ROWS", chunk_rows)

    def procedure(cell):
        xs = inputs()
        run(cell, xs)[0].sin().sum().backward()
        return [xs.grad, *grads(cell)]

    assert_same_on_both(kind, "cpp", procedure)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_checkpointed_chunks_of_the_loop(kind, reentrant, backend):
    """torch.utils.checkpoint recomputes some chunks of steps in the backward (inside it, with use_reentrant,
    as a backward pass of their own) while the other steps share the loop's tap."""
    from torch.utils.checkpoint import checkpoint

    def procedure(cell):
        xs = inputs()

        def chunk(x0, x1, *state):
            state = cell(x1, cell(x0, state if len(state) == 2 else state[0]))
            return state if isinstance(state, tuple) else (state,)

        state, outputs = (torch.zeros(BATCH, HIDDEN, dtype=torch.float64),) * (2 if kind == "LSTM" else 1), []
        for t in range(0, STEPS - 1, 2):
            state = checkpoint(chunk, xs[t], xs[t + 1], *state, use_reentrant=reentrant) if t == 2 else \
                chunk(xs[t], xs[t + 1], *state)
            outputs.append(state[0])
        torch.stack(outputs).sin().sum().backward()
        return [xs.grad, *grads(cell)]

    assert_same_on_both(kind, backend, procedure)
