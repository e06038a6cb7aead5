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


def twins(mode, dtype=torch.float64, hidden=7, **kwargs):
    theirs_type, ours_type, extra = LAYERS[mode]
    torch.manual_seed(0)
    theirs = theirs_type(5, hidden, dtype=dtype, **extra, **kwargs)
    ours = ours_type(5, hidden, dtype=dtype, backend="cpp", **extra, **kwargs)
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


def spy_on_the_one_call(monkeypatch):
    """Counts the calls of cpp.stack_inference, the short road's one call for the whole layer stack."""
    calls = []
    original = backends.cpp.stack_inference

    def counted(*args):
        calls.append(args[0])
        return original(*args)

    monkeypatch.setattr(backends.cpp, "stack_inference", counted)
    return calls


@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layers, bidirectional, batch_first, bias", [(1, False, False, True), (2, True, True, True),
                                                                      (3, False, True, False), (1, True, False, False)])
def test_the_whole_stack_in_one_call_equals_the_layer_by_layer_road_bit_for_bit(monkeypatch, mode, dtype, layers,
                                                                                bidirectional, batch_first, bias):
    """The short road runs the whole stack as one call of the cpp kernels (cpp.stack_inference): the same
    projections (float32: the own kernel; the other dtypes: torch's matmul) and recurrences as the layer functions,
    so the same bits as the layer road, with and without given states."""
    theirs, ours = twins(mode, dtype=dtype, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                         bias=bias)
    torch.manual_seed(2)
    batch, steps = 5, 7
    x = torch.randn((batch, steps, 5) if batch_first else (steps, batch, 5)).to(dtype)
    count = layers * (2 if bidirectional else 1)
    states = [torch.randn(count, batch, 7).to(dtype) for _ in range(2 if mode == "LSTM" else 1)]
    calls = spy_on_the_one_call(monkeypatch)
    for hx in (None, tuple(states) if mode == "LSTM" else states[0]):
        with torch.no_grad():
            one_call = flat(ours(x, hx))
            ours._one_call_plan = lambda *args: None  # the layer-by-layer road
            layer_by_layer = flat(ours(x, hx))
            del ours._one_call_plan
            expected = flat(theirs(x, hx))
        for a, b in zip(one_call, layer_by_layer, strict=True):
            assert a.dtype == dtype and torch.equal(a, b)
        for e, f in zip(expected, one_call, strict=True):
            tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 0.05}[dtype]
            torch.testing.assert_close(f, e, rtol=tolerance, atol=tolerance)
    assert calls == [mode, mode]


def test_the_one_call_keeps_its_panels_with_the_layer_road_s_and_drops_them_with_the_module_s_tensors(monkeypatch):
    theirs, ours = twins("GRU", dtype=torch.float32, num_layers=2, bidirectional=True)
    calls = spy_on_the_one_call(monkeypatch)
    x = torch.randn(6, 3, 5)
    with torch.no_grad():
        ours(x)
    assert calls == ["GRU"] and sorted(ours._layer_panels) == [0, 1, 2, 3]
    assert backends.cpp.packed_weight_bytes(ours) > 0  # W_ih's and W_hh's panels, accounted with the module's
    ours.double()  # new tensors: the panels of the old ones go
    assert backends.cpp.packed_weight_bytes(ours) == 0
    with torch.no_grad():
        found, expected = flat(ours(x.double())), flat(theirs.double()(x.double()))
    assert len(calls) == 2 and backends.cpp.packed_weight_bytes(ours) > 0
    for e, f in zip(expected, found, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-12, atol=1e-12)


def test_an_inference_whose_projected_input_runs_in_chunks_takes_the_layer_road(monkeypatch):
    """The layer road runs a projected input over functional.CHUNK_ELEMENTS in chunks of steps; the one call does not
    chunk, so such a stack goes layer by layer (where its projection does not run in the steps)."""
    theirs, ours = twins("LSTM", dtype=torch.float32)
    calls = spy_on_the_one_call(monkeypatch)
    monkeypatch.setattr(fastrnn.functional, "CHUNK_ELEMENTS", 4 * 28 * 3)  # 4 steps of (B 3, 4 * H 28) per chunk
    monkeypatch.setattr(backends.cpp, "projects_in_steps", lambda *args: False)
    x = torch.randn(10, 3, 5)
    with torch.no_grad():
        found, expected = flat(ours(x)), flat(theirs(x))
    assert calls == [] and ours.last_backend == "cpp"
    for e, f in zip(expected, found, strict=True):
        torch.testing.assert_close(f, e)


def test_the_one_call_s_argument_errors():
    kernels = fastrnn._ext.extension()
    w = torch.randn(28, 5)
    with pytest.raises(RuntimeError, match="4 weights and 2 panels per layer-direction"):
        kernels.stack_inference_cpu("LSTM", torch.randn(4, 2, 5), [], [w, w], [None, None], 1, False, False, 0)
    with pytest.raises(RuntimeError, match="both biases or neither"):
        kernels.stack_inference_cpu("LSTM", torch.randn(4, 2, 5), [], [w, torch.randn(28, 7), torch.randn(28), None],
                                    [None, None], 1, False, False, 0)
    with pytest.raises(RuntimeError, match="unknown cell mode 'LSTMX'"):
        kernels.stack_inference_cpu("LSTMX", torch.randn(4, 2, 5), [], [w, w, None, None], [None, None], 1, False,
                                    False, 0)


@pytest.mark.parametrize("mode", LAYERS)
@pytest.mark.parametrize("layers, batch_first, given_states", [(1, False, False), (2, True, True)])
def test_a_bidirectional_single_step_inference_takes_the_one_call(monkeypatch, mode, layers, batch_first, given_states):
    """The one-step road takes one-direction stacks only; a bidirectional T = 1 inference runs the one call (on the
    layer kernels' kept panels; measured on an Ice Lake core, LSTM(64) B 1: 95 -> 49 us a call), equal to nn's."""
    theirs, ours = twins(mode, dtype=torch.float32, num_layers=layers, bidirectional=True, batch_first=batch_first)
    calls = spy_on_the_one_call(monkeypatch)
    x = torch.randn((3, 1, 5) if batch_first else (1, 3, 5))
    hx = None
    if given_states:
        states = [torch.randn(2 * layers, 3, 7) for _ in range(2 if mode == "LSTM" else 1)]
        hx = tuple(states) if mode == "LSTM" else states[0]
    with torch.no_grad():
        found, expected = flat(ours(x, hx)), flat(theirs(x, hx))
    assert calls == [mode] and ours.last_backend == "cpp"
    for e, f in zip(expected, found, strict=True):
        assert f.shape == e.shape
        torch.testing.assert_close(f, e)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_the_one_call_under_inference_mode_on_two_threads(monkeypatch, mode):
    """torch.inference_mode() (tensors made without version counters) and two threads splitting each step's units:
    the one call runs, and equals the layer-by-layer road bit for bit and nn's layer."""
    theirs, ours = twins(mode, dtype=torch.float32, num_layers=2, bidirectional=True, hidden=40)
    calls = spy_on_the_one_call(monkeypatch)
    x = torch.randn(9, 16, 5)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            one_call = flat(ours(x))
            ours._one_call_plan = lambda *args: None
            layer_by_layer = flat(ours(x))
            del ours._one_call_plan
            expected = flat(theirs(x))
    finally:
        torch.set_num_threads(before)
    assert calls == [mode]
    for a, b, e in zip(one_call, layer_by_layer, expected, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, e)
