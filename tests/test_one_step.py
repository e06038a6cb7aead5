"""One-step layer calls (T = 1, a streaming or decoding loop calling fastrnn.LSTM/GRU/RNN step by step) run as
the fused cell step on weights packed once (modules._run_one_step): the same outputs, states and gradients
as nn's layers, and the layer kernels wherever that path does not apply."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fastrnn
from fastrnn import backends

from conftest import spy_on_road

pytestmark = pytest.mark.skipif(backends.unavailable_reason("cpp", "cpu") is not None,
                                reason=f"the cpp backend is unavailable: {backends.unavailable_reason('cpp', 'cpu')}")

LAYERS = {"LSTM": (nn.LSTM, fastrnn.LSTM, {}), "GRU": (nn.GRU, fastrnn.GRU, {}),
          "RNN_TANH": (nn.RNN, fastrnn.RNN, {}), "RNN_RELU": (nn.RNN, fastrnn.RNN, {"nonlinearity": "relu"})}


def twins(mode, backend="cpp", **kwargs):
    theirs_type, ours_type, extra = LAYERS[mode]
    torch.manual_seed(0)
    theirs = theirs_type(5, 4, dtype=torch.float64, **extra, **kwargs)
    ours = ours_type(5, 4, dtype=torch.float64, backend=backend, **extra, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def states_of(result):
    return list(result) if isinstance(result, tuple) else [result]


def run(module, x, hx):
    """Forward, then the gradients of a loss over outputs and final states w.r.t. input, states and weights."""
    y, final = module(x, hx)
    loss = y.sin().sum() + sum(s.square().sum() for s in states_of(final))
    leaves = [x, *states_of(hx), *module.parameters()]
    return [y, *states_of(final), *torch.autograd.grad(loss, leaves)]


def assert_close(expected, found):
    for e, f in zip(expected, found, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("layers, bidirectional, batch_first", [(1, False, False), (2, True, True), (3, False, True)])
def test_one_step_matches_nn_and_runs_as_the_cell_step(mode, layers, bidirectional, batch_first):
    theirs, ours = twins(mode, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    torch.manual_seed(1)
    shape = (3, 1, 5) if batch_first else (1, 3, 5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    count = layers * (2 if bidirectional else 1)
    hx = [torch.randn(count, 3, 4, dtype=torch.float64, requires_grad=True) for _ in (0, 1)[:2 if mode == "LSTM" else 1]]
    hx = tuple(hx) if mode == "LSTM" else hx[0]
    assert_close(run(theirs, x, hx), run(ours, x, hx))
    assert len(ours._step_packs) == count  # every layer-direction ran as a cell step


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_unbatched_and_default_states(mode):
    theirs, ours = twins(mode)
    x = torch.randn(1, 5, dtype=torch.float64)
    with torch.no_grad():
        expected, found = theirs(x), ours(x)
    assert_close([expected[0], *states_of(expected[1])], [found[0], *states_of(found[1])])
    assert ours._step_packs


def test_a_streaming_loop_matches_nn_over_many_calls():
    theirs, ours = twins("GRU", num_layers=2)
    torch.manual_seed(2)
    xs = torch.randn(6, 1, 2, 5, dtype=torch.float64)
    results = []
    for module in (theirs, ours):
        h, outputs = None, []
        for x in xs:
            y, h = module(x, h)
            outputs.append(y)
        loss = torch.stack(outputs).sum()
        results.append([loss.detach(), *torch.autograd.grad(loss, list(module.parameters()))])
    assert_close(*results)


def test_dropout_between_layers_draws_nn_s_mask():
    theirs, ours = twins("LSTM", num_layers=3, dropout=0.5)
    x = torch.randn(1, 4, 5, dtype=torch.float64)
    torch.manual_seed(3)
    expected = theirs(x)[0]
    torch.manual_seed(3)
    found = ours(x)[0]
    torch.testing.assert_close(found, expected, rtol=1e-12, atol=1e-12)
    assert ours._step_packs


def test_where_the_one_step_path_does_not_apply_the_layer_kernels_run():
    _, projected = twins("LSTM", proj_size=2)
    projected(torch.randn(1, 3, 5, dtype=torch.float64))
    _, packed = twins("GRU")
    packed(pack_sequence([torch.randn(1, 5, dtype=torch.float64)] * 2))
    _, longer = twins("GRU")
    longer(torch.randn(2, 3, 5, dtype=torch.float64))
    _, reference = twins("GRU", backend="reference")
    reference(torch.randn(1, 3, 5, dtype=torch.float64))
    for module in (projected, packed, longer, reference):
        assert not module.__dict__.get("_step_packs")


def test_auto_gives_one_step_calls_to_the_cpp_kernels():
    _, ours = twins("LSTM", backend="auto")
    ours = ours.float()
    ours(torch.randn(1, 64, 5))  # B x H beyond the padded-LSTM threshold: oneDNN for longer sequences
    assert ours.last_backend == "cpp" and ours._step_packs
    ours(torch.randn(4, 64, 5))
    assert ours.last_backend == "aten"


def test_a_weight_update_between_calls_is_seen():
    theirs, ours = twins("GRU")
    x = torch.randn(1, 3, 5, dtype=torch.float64)
    for module in (theirs, ours):
        with torch.no_grad():
            module(x)
            module.weight_hh_l0.mul_(0.5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-12, atol=1e-12)


# --- the short road: one layer, one direction, in the layer's own shapes (cell_step.layer_step) ----------------

def spy_on_the_short_road(module):
    return spy_on_road(module, "_forward_one_step")


def initial_states(mode, batch, requires_grad):
    count = 2 if mode == "LSTM" else 1
    hx = [torch.randn(1, batch, 4, dtype=torch.float64, requires_grad=requires_grad) for _ in range(count)]
    return tuple(hx) if mode == "LSTM" else hx[0]


@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_a_one_layer_streaming_loop_trains_as_nn_s(mode, batch_first):
    """Every step on the short road, the weights through the module's tap; both the outputs' and the final
    states' gradients reach h (the output is h_n's copy)."""
    theirs, ours = twins(mode, batch_first=batch_first)
    taken = spy_on_the_short_road(ours)
    torch.manual_seed(2)
    xs = torch.randn(5, 3, 1, 5, dtype=torch.float64) if batch_first else torch.randn(5, 1, 3, 5, dtype=torch.float64)
    hx = initial_states(mode, 3, requires_grad=True)
    results = []
    for module in (theirs, ours):
        state, loss = hx, 0
        for x in xs:
            y, state = module(x, state)
            loss = loss + y.sin().sum()
        loss = loss + sum(s.square().sum() for s in states_of(state))
        results.append([loss.detach(), *torch.autograd.grad(loss, [*states_of(hx), *module.parameters()])])
    assert_close(*results)
    assert taken == [True] * len(xs)


@pytest.mark.parametrize("mode", LAYERS)
def test_the_short_road_s_inference_is_the_cell_step_s_bit_for_bit(mode):
    _, ours = twins(mode)
    x = torch.randn(1, 3, 5, dtype=torch.float64)
    hx = initial_states(mode, 3, requires_grad=False)
    with torch.no_grad():
        found = ours(x, hx)
        general = ours._run_one_step(x, [s for s in states_of(hx)], ours._weights_now(), "cpp", torch.float64)
    assert torch.equal(found[0], general[0])
    for f, g in zip(states_of(found[1]), general[1], strict=True):
        assert torch.equal(f, g)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_a_gradient_to_the_initial_states_of_a_frozen_layer_is_recorded(mode):
    theirs, ours = twins(mode)
    for module in (theirs, ours):
        module.requires_grad_(False)
    x = torch.randn(1, 2, 5, dtype=torch.float64)
    hx = initial_states(mode, 2, requires_grad=True)
    grads = [torch.autograd.grad(module(x, hx)[0].sum(), states_of(hx)) for module in (theirs, ours)]
    assert_close(*grads)


@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_the_short_road_differentiates_twice(mode, batch_first):
    _, ours = twins(mode, batch_first=batch_first)
    taken = spy_on_the_short_road(ours)
    x = torch.randn((2, 1, 5) if batch_first else (1, 2, 5), dtype=torch.float64, requires_grad=True)
    hx = initial_states(mode, 2, requires_grad=True)

    def flat(x, *hx):
        y, final = ours(x, tuple(hx) if mode == "LSTM" else hx[0])
        return (y, *states_of(final))

    torch.autograd.gradgradcheck(flat, (x, *states_of(hx)))
    assert all(taken)


def test_non_contiguous_states_take_the_general_road():
    theirs, ours = twins("LSTM")
    taken = spy_on_the_short_road(ours)
    x = torch.randn(1, 3, 5, dtype=torch.float64)
    hx = tuple(torch.randn(1, 4, 3, dtype=torch.float64).transpose(1, 2) for _ in range(2))
    with torch.no_grad():
        expected, found = theirs(x, hx), ours(x, hx)
    assert_close([expected[0], *expected[1]], [found[0], *found[1]])
    assert taken == [False]


@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("given", [False, True])
def test_a_stack_of_layers_takes_the_short_road_layer_by_layer(mode, given):
    theirs, ours = twins(mode, num_layers=3, batch_first=True)
    taken = spy_on_the_short_road(ours)
    x = torch.randn(2, 1, 5, dtype=torch.float64)
    hx = None
    if given:
        hx = tuple(torch.randn(3, 2, 4, dtype=torch.float64) for _ in range(2)) if mode == "LSTM" else \
            torch.randn(3, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        expected, found = theirs(x, hx), ours(x, hx)
    assert_close([expected[0], *states_of(expected[1])], [found[0], *states_of(found[1])])
    assert taken == [True]


def test_a_layer_whose_weight_differs_in_dtype_takes_the_general_road():
    _, ours = twins("GRU", num_layers=2)
    ours.weight_hh_l1.data = ours.weight_hh_l1.data.float()
    taken = spy_on_the_short_road(ours)
    with torch.no_grad():
        output, _ = ours(torch.randn(1, 2, 5, dtype=torch.float64))  # the general road computes in the input's dtype
    assert taken == [False] and output.dtype == torch.float64 and output.isfinite().all()
