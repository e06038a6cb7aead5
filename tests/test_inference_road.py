"""Padded inferences (grad mode off, T > 1) on the cpp kernels take the layer's short road
(modules._forward_inference), which skips the general forward's checks for the cases it takes: the same
outputs and final states as the general road, bit for bit, and as nn's layers; every case it does not take,
a wrong input included, goes the general road (and gets its error)."""

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import backends

from conftest import spy_on_road

pytestmark = pytest.mark.skipif(backends.unavailable_reason("cpp", "cpu") is not None,
                                reason=f"the cpp backend is unavailable: {backends.unavailable_reason('cpp', 'cpu')}")

LAYERS = {"LSTM": (nn.LSTM, fastrnn.LSTM, {}), "GRU": (nn.GRU, fastrnn.GRU, {}),
          "RNN_TANH": (nn.RNN, fastrnn.RNN, {}), "RNN_RELU": (nn.RNN, fastrnn.RNN, {"nonlinearity": "relu"})}


def twins(mode, dtype=torch.float64, **kwargs):
    theirs_type, ours_type, extra = LAYERS[mode]
    torch.manual_seed(0)
    theirs = theirs_type(5, 7, dtype=dtype, **extra, **kwargs)
    ours = ours_type(5, 7, dtype=dtype, backend="cpp", **extra, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs.eval(), ours.eval()


def flat(result):
    output, final = result
    return [output, *(final if isinstance(final, tuple) else (final,))]


def spy_on_the_short_road(module):
    return spy_on_road(module, "_forward_inference")


@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("layers, bidirectional, batch_first", [(1, False, False), (2, True, True), (3, False, True),
                                                                (1, True, False)])
@pytest.mark.parametrize("given_states", [False, True])
def test_the_short_road_gives_the_general_road_s_results_bit_for_bit(mode, layers, bidirectional, batch_first,
                                                                   given_states):
    theirs, ours = twins(mode, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    torch.manual_seed(1)
    batch, steps = 3, 6
    x = torch.randn((batch, steps, 5) if batch_first else (steps, batch, 5), dtype=torch.float64)
    count = layers * (2 if bidirectional else 1)
    hx = None
    if given_states:
        states = [torch.randn(count, batch, 7, dtype=torch.float64) for _ in range(2 if mode == "LSTM" else 1)]
        hx = tuple(states) if mode == "LSTM" else states[0]
    taken = spy_on_the_short_road(ours)
    with torch.no_grad():
        short = flat(ours(x, hx))
    assert taken == [True]
    ours.requires_grad_(False)
    general = flat(ours(x, hx))  # grad mode on, nothing requiring a gradient: the general road's inference
    assert taken == [True, False]  # grad mode on: the short road declined
    for a, b in zip(short, general, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        expected = flat(theirs(x, hx))
    for e, f in zip(expected, short, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-12, atol=1e-12)
    assert ours.last_backend == "cpp"


def test_the_short_road_runs_float32_on_the_cpp_kernels_and_keeps_their_packed_weights():
    theirs, ours = twins("LSTM", dtype=torch.float32)
    taken = spy_on_the_short_road(ours)
    x = torch.randn(9, 4, 5)
    with torch.no_grad():
        first = flat(ours(x))
        second = flat(ours(x))
        expected = flat(theirs(x))
    assert taken == [True, True]
    for a, b, e in zip(first, second, expected, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, e)
    assert set(ours._layer_panels) == {0}  # the layer's cache of prepared weights, kept between calls


def test_an_optimizer_step_between_inferences_is_seen():
    theirs, ours = twins("GRU")
    x = torch.randn(5, 2, 5, dtype=torch.float64)
    with torch.no_grad():
        ours(x)
        for module in (theirs, ours):
            module.weight_hh_l0.add_(0.25)
            module.bias_ih_l0.mul_(-1)
        expected, found = flat(theirs(x)), flat(ours(x))
    for e, f in zip(expected, found, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["one step", "unbatched", "projection", "training dropout", "wrong width",
                                  "wrong state batch", "state list", "float32 input", "empty batch"])
def test_cases_the_short_road_does_not_take_go_the_general_road(case):
    kwargs = {"proj_size": 3} if case == "projection" else {"num_layers": 2, "dropout": 0.5} \
        if case == "training dropout" else {}
    theirs, ours = twins("LSTM", **kwargs)
    x = torch.randn(1 if case == "one step" else 4, 0 if case == "empty batch" else 3, 5, dtype=torch.float64)
    hx = None
    if case == "unbatched":
        x = x[:, 0]
    elif case == "wrong width":
        x = torch.randn(4, 3, 6, dtype=torch.float64)
    elif case == "wrong state batch":
        hx = (torch.zeros(1, 2, 7, dtype=torch.float64),) * 2
    elif case == "state list":
        hx = [torch.zeros(1, 3, 7, dtype=torch.float64)] * 2
    elif case == "float32 input":
        x = x.float()
    elif case == "training dropout":
        ours.train()
    taken = spy_on_the_short_road(ours)
    with torch.no_grad():
        try:
            expected = theirs(x, hx)
        except Exception as error:  # noqa: BLE001  (nn's own refusal: ours must refuse alike)
            with pytest.raises(type(error)):
                ours(x, hx)
        else:
            found = ours(x, hx)
            if case != "training dropout":  # random masks: only the road is compared
                for e, f in zip(flat(expected), flat(found), strict=True):
                    torch.testing.assert_close(f, e, rtol=1e-12, atol=1e-12)
    assert True not in taken
