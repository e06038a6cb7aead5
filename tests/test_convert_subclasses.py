"""fastrnn.convert on subclasses of nn.LSTM / nn.GRU and on the recurrent modules fastrnn has no twin
of: what it converts, what it leaves, and the ConvertWarning that names each module left and why."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import fastrnn

INPUT, HIDDEN = 4, 5


class _PlainLSTM(nn.LSTM):
    pass


class _ConfiguredGRU(nn.GRU):
    """Only a constructor with its own defaults: nothing a fastrnn.GRU would lose."""

    def __init__(self, size: int) -> None:
        super().__init__(size, HIDDEN, num_layers=2, bidirectional=True, batch_first=True)


class _ForecastingRNN(ABC, nn.RNNBase):
    """The shape of pytorch-forecasting's RNN base: abstract helpers and a forward of its own."""

    @abstractmethod
    def init_hidden_state(self, x): ...

    def forward(self, x, hx=None, lengths=None):
        return super().forward(x, hx)


class _ForecastingLSTM(_ForecastingRNN, nn.LSTM):
    def init_hidden_state(self, x):
        return None


class _OwnFlatten(nn.LSTM):
    def flatten_parameters(self):
        super().flatten_parameters()


class _OwnReset(nn.GRU):
    def reset_parameters(self):
        for weight in self.parameters():
            nn.init.zeros_(weight)


class _Encoder(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn


def _convert_quietly(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastrnn.ConvertWarning)
        return fastrnn.convert(model, backend="reference")


def _convert_warning(model: nn.Module) -> str:
    with pytest.warns(fastrnn.ConvertWarning) as record:
        fastrnn.convert(model, backend="reference")
    messages = [str(w.message) for w in record if w.category is fastrnn.ConvertWarning]
    assert len(messages) == 1  # one report per call
    return messages[0]


@pytest.mark.parametrize("make, twin", [
    (lambda: _PlainLSTM(INPUT, HIDDEN, proj_size=2), fastrnn.LSTM),
    (lambda: _ConfiguredGRU(INPUT), fastrnn.GRU),
])
def test_subclass_with_nns_forward_and_nothing_added_is_converted(make, twin):
    source = make().double().eval()
    model = _Encoder(source)
    x = torch.randn(3, 6, INPUT, dtype=torch.float64)
    expected = source(x)

    _convert_quietly(model)

    assert type(model.rnn) is twin
    for name, param in source.named_parameters():
        assert getattr(model.rnn, name) is param
    assert (model.rnn.batch_first, model.rnn.bidirectional, model.rnn.num_layers) == (
        source.batch_first, source.bidirectional, source.num_layers)
    got = model.rnn(x)
    assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)


def test_subclass_overriding_forward_is_left_with_its_path_and_reason():
    layer = _ForecastingLSTM(INPUT, HIDDEN)
    model = nn.ModuleDict({"encoder": _Encoder(layer)})
    message = _convert_warning(model)

    assert model["encoder"].rnn is layer
    assert "left 1 recurrent module(s)" in message
    assert f"'encoder.rnn' ({__name__}._ForecastingLSTM)" in message
    assert "overrides forward (fastrnn.LSTM would run nn.LSTM's)" in message
    assert "defines init_hidden_state (fastrnn.LSTM would lose it)" in message
    assert "derive its class from fastrnn.LSTM instead of nn.LSTM" in message


@pytest.mark.parametrize("cls, method", [(_OwnFlatten, "flatten_parameters"), (_OwnReset, "reset_parameters")])
def test_subclass_overriding_other_methods_is_left(cls, method):
    layer = cls(INPUT, HIDDEN)
    model = _Encoder(layer)
    message = _convert_warning(model)
    assert model.rnn is layer
    assert f"'rnn' ({__name__}.{cls.__name__}): defines {method} (" in message
    assert "overrides forward" not in message


@pytest.mark.parametrize("add, named", [
    (lambda m: setattr(m, "scale", 2.0), "attribute scale"),
    (lambda m: setattr(m, "h0", nn.Parameter(torch.zeros(HIDDEN))), "parameter h0"),
    (lambda m: m.register_buffer("steps", torch.zeros(())), "buffer steps"),
    (lambda m: setattr(m, "norm", nn.LayerNorm(HIDDEN)), "submodule norm"),
])
def test_subclass_instance_holding_more_state_is_left(add, named):
    layer = _PlainLSTM(INPUT, HIDDEN)
    add(layer)
    model = _Encoder(layer)
    message = _convert_warning(model)
    assert model.rnn is layer
    assert f"holds {named} (fastrnn.LSTM would lose it)" in message


@pytest.mark.parametrize("make, name", [
    (lambda: nn.RNN(INPUT, HIDDEN), "RNN"),
    (lambda: nn.RNN(INPUT, HIDDEN, nonlinearity="relu"), "RNN"),
    (lambda: nn.LSTMCell(INPUT, HIDDEN), "LSTMCell"),
    (lambda: nn.GRUCell(INPUT, HIDDEN, bias=False), "GRUCell"),
    (lambda: nn.RNNCell(INPUT, HIDDEN, nonlinearity="relu"), "RNNCell"),
])
def test_rnn_and_cells_are_converted_sharing_their_parameters(make, name):
    module = make()
    model = _Encoder(module)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastrnn.ConvertWarning)
        fastrnn.convert(model)
    assert type(model.rnn) is getattr(fastrnn, name)
    assert all(a is b for a, b in zip(model.rnn.parameters(), module.parameters()))
    assert getattr(model.rnn, "nonlinearity", None) == getattr(module, "nonlinearity", None)


class _StepCounter(nn.GRUCell):
    def forward(self, input, hx=None):
        return super().forward(input, hx)


def test_one_report_lists_every_module_left_and_the_rest_is_converted():
    model = nn.ModuleDict({"lstm": nn.LSTM(INPUT, HIDDEN), "plain": _PlainLSTM(INPUT, HIDDEN),
                           "forecast": _ForecastingLSTM(INPUT, HIDDEN), "rnn": nn.RNN(INPUT, HIDDEN),
                           "cell": _StepCounter(INPUT, HIDDEN)})
    message = _convert_warning(model)
    assert type(model["lstm"]) is type(model["plain"]) is fastrnn.LSTM
    assert type(model["rnn"]) is fastrnn.RNN
    assert "left 2 recurrent module(s)" in message
    assert all(f"'{name}' (" in message for name in ("forecast", "cell"))
    assert "overrides forward (fastrnn.GRUCell would run nn.GRUCell's)" in message
    assert "'lstm'" not in message and "'plain'" not in message and "'rnn'" not in message


def test_the_model_itself_left_is_named_so():
    module = _StepCounter(INPUT, HIDDEN)
    with pytest.warns(fastrnn.ConvertWarning, match=r"the model itself \(.*_StepCounter\)"):
        assert fastrnn.convert(module) is module


def test_a_cell_converted_as_the_model_itself_is_returned():
    module = nn.LSTMCell(INPUT, HIDDEN)
    converted = fastrnn.convert(module)
    assert type(converted) is fastrnn.LSTMCell and converted.weight_ih is module.weight_ih


def test_model_without_recurrent_modules_gives_no_warning():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    assert _convert_quietly(model) is model


def test_parametrized_convertible_subclass_is_refused_like_nn_lstm():
    layer = _PlainLSTM(INPUT, HIDDEN)
    torch.nn.utils.parametrizations.weight_norm(layer, "weight_hh_l0")
    with pytest.raises(ValueError, match="parametrized weights"):
        fastrnn.convert(_Encoder(layer))
