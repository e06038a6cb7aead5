"""torch.ao.quantization.quantize_dynamic on models holding fastrnn layers: a spec naming fastrnn's
classes (or a layer's name) quantizes them exactly as it quantizes the equal nn.LSTM / nn.GRU; a spec
that cannot select them (torch's default, {nn.LSTM, nn.GRU}) leaves them float with a warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

import fastrnn

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning"),
    pytest.mark.filterwarnings("ignore::fastrnn.QuantizationWarning"),  # asserted where it is the subject
]

INPUT, HIDDEN, BATCH, SEQ = 6, 5, 3, 7
DTYPES = [torch.qint8, torch.float16]
CONFIGS = [dict(), dict(num_layers=2, bidirectional=True), dict(num_layers=3, batch_first=True)]


class _Net(nn.Module):
    """An RNN layer and a linear head, as quantize_dynamic is usually given them."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        width = rnn.hidden_size * (2 if rnn.bidirectional else 1)
        self.head = nn.Linear(width, 2)

    def forward(self, x, hx=None):
        y, state = self.rnn(x, hx)
        return self.head(y), state


def _twins(cell: str, **config) -> tuple[_Net, _Net]:
    """(a model on nn.<cell>, the same model on fastrnn.<cell>) with equal weights."""
    reference = _Net(getattr(nn, cell)(INPUT, HIDDEN, **config))
    ours = _Net(getattr(fastrnn, cell)(INPUT, HIDDEN, **config))
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def _fresh_input(cell: str, num_layers: int = 1, bidirectional: bool = False, batch_first: bool = False):
    """A random input and initial state, drawn after quantization (the models never saw them)."""
    x = torch.randn(BATCH, SEQ, INPUT) if batch_first else torch.randn(SEQ, BATCH, INPUT)
    h = torch.randn(num_layers * (2 if bidirectional else 1), BATCH, HIDDEN)
    return x, ((h, torch.randn_like(h)) if cell == "LSTM" else h)


def _assert_equal_outputs(got, expected) -> None:
    (y, state), (y_ref, state_ref) = got, expected
    assert torch.equal(y, y_ref)
    for s, s_ref in zip(*(t if isinstance(t, tuple) else (t,) for t in (state, state_ref))):
        assert torch.equal(s, s_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=repr)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_spec_naming_fastrnn_quantizes_like_nn(cell, config, dtype):
    reference, ours = _twins(cell, **config)
    q_reference = quantize_dynamic(reference, {getattr(nn, cell), nn.Linear}, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastrnn.QuantizationWarning)  # named: no warning
        q_ours = quantize_dynamic(ours, {getattr(fastrnn, cell), nn.Linear}, dtype=dtype)

    assert type(q_ours.rnn) is type(q_reference.rnn) is getattr(nnqd, cell)
    assert q_ours.rnn.dtype == dtype and type(q_ours.head) is nnqd.Linear
    assert not hasattr(q_ours.rnn, "qconfig") and not hasattr(ours.rnn, "qconfig")
    assert type(ours.rnn) is getattr(fastrnn, cell)  # not inplace: the float model is untouched
    x, hx = _fresh_input(cell, **config)
    _assert_equal_outputs(q_ours(x, hx), q_reference(x, hx))
    _assert_equal_outputs(q_ours(x), q_reference(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spec_naming_the_layer_quantizes_it(dtype):
    reference, ours = _twins("LSTM", num_layers=2)
    q_reference = quantize_dynamic(reference, {"rnn"}, dtype=dtype)
    q_ours = quantize_dynamic(ours, {"rnn"}, dtype=dtype)
    assert type(q_ours.rnn) is nnqd.LSTM and type(q_ours.head) is nn.Linear
    x, hx = _fresh_input("LSTM", num_layers=2)
    _assert_equal_outputs(q_ours(x, hx), q_reference(x, hx))


def test_parametrized_weights_are_quantized_at_their_value():
    reference, ours = _twins("GRU")
    torch.nn.utils.parametrizations.weight_norm(ours.rnn, "weight_hh_l0")
    with torch.no_grad():
        reference.rnn.weight_hh_l0.copy_(ours.rnn.weight_hh_l0)
    q_reference = quantize_dynamic(reference, {nn.GRU})
    q_ours = quantize_dynamic(ours, {fastrnn.GRU})
    x, hx = _fresh_input("GRU")
    _assert_equal_outputs(q_ours(x, hx), q_reference(x, hx))


@pytest.mark.filterwarnings("default::fastrnn.QuantizationWarning")
@pytest.mark.parametrize("spec", ["default", "nn-types"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spec_that_cannot_select_fastrnn_warns_and_leaves_it_float(spec, dtype):
    model = nn.ModuleDict({"lstm": fastrnn.LSTM(INPUT, HIDDEN), "gru": fastrnn.GRU(INPUT, HIDDEN),
                           "head": nn.Linear(HIDDEN, 2)})
    qconfig_spec = None if spec == "default" else {nn.LSTM, nn.GRU, nn.Linear}
    with pytest.warns(fastrnn.QuantizationWarning) as record:
        quantized = quantize_dynamic(model, qconfig_spec, dtype=dtype)

    assert type(quantized["lstm"]) is fastrnn.LSTM and type(quantized["gru"]) is fastrnn.GRU
    assert type(quantized["head"]) is nnqd.Linear  # the rest of the model is quantized as asked
    messages = [str(w.message) for w in record if w.category is fastrnn.QuantizationWarning]
    assert len(messages) == 2
    for name, message in zip(("LSTM", "GRU"), sorted(messages, key=lambda m: "GRU" in m)):
        assert f"leaves fastrnn.{name}(" in message and "in floating point" in message
        assert f"{{nn.{name}}} name only nn's modules, which fastrnn's are not" in message
        assert f"quantize_dynamic(model, {{nn.Linear, fastrnn.{name}}}, dtype=torch.qint8)" in message


@pytest.mark.parametrize("config, reason", [
    (dict(proj_size=3), "has no projection"),
    (dict(bias=False), "need bias=True"),
])
def test_layers_torch_cannot_quantize_are_refused_with_the_way_out(config, reason):
    _, ours = _twins("LSTM", **config)
    with pytest.raises(ValueError, match=reason) as error:
        quantize_dynamic(ours, {fastrnn.LSTM})
    assert "Keep this layer float" in str(error.value) and "'path.to.layer': None" in str(error.value)
    # ... and the way out works: a name mapped to None keeps that layer float, the rest is quantized
    kept = quantize_dynamic(ours, {fastrnn.LSTM: default_dynamic_qconfig, nn.Linear: default_dynamic_qconfig,
                                   "rnn": None})
    assert type(kept.rnn) is fastrnn.LSTM and type(kept.head) is nnqd.Linear


def test_qconfig_is_a_plain_attribute():
    layer = fastrnn.GRU(INPUT, HIDDEN)
    assert not hasattr(layer, "qconfig")
    layer.qconfig = default_dynamic_qconfig
    assert layer.qconfig is default_dynamic_qconfig and "qconfig" not in layer.state_dict()
    del layer.qconfig
    assert not hasattr(layer, "qconfig")
    with pytest.raises(AttributeError, match="qconfig"):
        del layer.qconfig


@pytest.mark.parametrize("make, nn_type", [
    (lambda: fastrnn.LSTMCell(INPUT, HIDDEN), nn.LSTMCell),
    (lambda: fastrnn.GRUCell(INPUT, HIDDEN), nn.GRUCell),
    (lambda: fastrnn.RNNCell(INPUT, HIDDEN, nonlinearity="relu"), nn.RNNCell),
])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cells_quantize_exactly_as_nn_cells(make, nn_type, dtype):
    torch.manual_seed(0)
    ours = make()
    theirs = nn_type(INPUT, HIDDEN, **({"nonlinearity": ours.nonlinearity} if nn_type is nn.RNNCell else {}))
    theirs.load_state_dict(ours.state_dict())
    q_ours = quantize_dynamic(nn.Sequential(ours), {type(ours)}, dtype=dtype)
    q_theirs = quantize_dynamic(nn.Sequential(theirs), {nn_type}, dtype=dtype)
    assert type(q_ours[0]) is type(q_theirs[0])
    x = torch.randn(3, INPUT)
    got, expected = q_ours(x), q_theirs(x)
    got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    with pytest.warns(fastrnn.QuantizationWarning, match=f"leaves fastrnn.{nn_type.__name__}"):
        quantize_dynamic(nn.Sequential(make()), dtype=dtype)


def test_rnn_stays_float_without_a_warning_as_nn_rnn_does():
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastrnn.QuantizationWarning)
        quantized = quantize_dynamic(nn.Sequential(fastrnn.RNN(INPUT, HIDDEN)), dtype=torch.qint8)
    assert type(quantized[0]) is fastrnn.RNN
