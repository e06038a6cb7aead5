"""What a layer or cell returns owns its memory, as nn's results do: the output, h_n and c_n share no storage
with each other, with the input or with the given states, on every road a forward takes (one step, the
inference short road, the general road, packed input, a projection; with and without a gradient recorded).
Otherwise an in-place op on one result (out.relu_(), h.zero_()) would silently change another."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import backends

BACKENDS = ["reference", "aten"] + (["cpp"] if backends.unavailable_reason("cpp", "cpu") is None else [])
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

LAYERS = {"LSTM": (fastrnn.LSTM, {}), "GRU": (fastrnn.GRU, {}), "RNN_RELU": (fastrnn.RNN, {"nonlinearity": "relu"}),
          "LSTM_PROJ": (fastrnn.LSTM, {"proj_size": 3})}


def storages(tensors):
    return [t.untyped_storage().data_ptr() for t in tensors]


def assert_owns_its_memory(results, given):
    ptrs = storages(results)
    assert len(set(ptrs)) == len(ptrs), "two returned tensors share storage"
    assert not set(ptrs) & set(storages(given)), "a returned tensor shares storage with the input or hx"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("steps, packed", [(1, False), (4, False), (4, True)])
@pytest.mark.parametrize("grad", [False, True])
def test_a_layer_s_output_and_final_states_are_separate_tensors(backend, kind, steps, packed, grad):
    module_type, extra = LAYERS[kind]
    for layers, bidirectional, batch_first, given in itertools.product((1, 2), (False, True), (False, True),
                                                                        (False, True)):
        module = module_type(4, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                             backend=backend, **extra)
        x = torch.randn((2, steps, 4) if batch_first else (steps, 2, 4))
        count = layers * (2 if bidirectional else 1)
        out_size = extra.get("proj_size", 5)
        hx = None
        if given:
            hx = (torch.randn(count, 2, out_size), torch.randn(count, 2, 5)) if module.mode == "LSTM" else \
                torch.randn(count, 2, 5)
        states_in = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
        data = pack_padded_sequence(x, [steps, steps - 1 if steps > 1 else 1], batch_first=batch_first) if packed else x
        with torch.set_grad_enabled(grad):
            output, final = module(data, hx)
        finals = list(final) if isinstance(final, tuple) else [final]
        output = output.data if packed else output
        assert_owns_its_memory([output, *finals], [x, *states_in])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [fastrnn.LSTMCell, fastrnn.GRUCell, fastrnn.RNNCell])
@pytest.mark.parametrize("grad", [False, True])
def test_a_cell_s_new_states_are_separate_tensors(backend, cell, grad):
    module = cell(4, 5, backend=backend)
    x = torch.randn(2, 4)
    for hx in (None, (torch.randn(2, 5), torch.randn(2, 5)) if cell is fastrnn.LSTMCell else torch.randn(2, 5)):
        with torch.set_grad_enabled(grad):
            new = module(x, hx)
        states_in = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
        assert_owns_its_memory(list(new) if isinstance(new, tuple) else [new], [x, *states_in])
