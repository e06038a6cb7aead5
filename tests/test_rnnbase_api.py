"""The nn.RNNBase helpers that user code and libraries call on an RNN layer, compared with nn's.

`_flat_weights`, `check_input`, `get_expected_hidden_size` (and nn.LSTM's `get_expected_cell_size`),
`check_hidden_size`, `check_forward_args` and `permute_hidden`: same signatures, same results, same
exception types, and messages that contain torch's.
"""

from __future__ import annotations

import inspect
import itertools
import re

import pytest
import torch
from torch import nn

import fastrnn

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

INPUT, HIDDEN, LAYERS, BATCH, SEQ = 3, 5, 2, 4, 6

CONFIGS = [dict(bias=b, batch_first=f, bidirectional=d) for b, f, d in itertools.product((True, False), repeat=3)]
CASES = [("GRU", c) for c in CONFIGS] + [("LSTM", dict(c, proj_size=p)) for c in CONFIGS for p in (0, 2)]


def _ids(case):
    cell, config = case
    return cell + "-" + "-".join(f"{k}={int(v)}" for k, v in config.items())


@pytest.fixture(params=CASES, ids=[_ids(c) for c in CASES])
def pair(request):
    """(nn module, fastrnn module) of one configuration, with equal weights."""
    cell, config = request.param
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, LAYERS, **config, backend="reference")
    theirs = getattr(nn, cell)(INPUT, HIDDEN, LAYERS, **config)
    theirs.load_state_dict(ours.state_dict())
    return theirs, ours


def _raises_alike(theirs_call, ours_call):
    """Both raise the same exception type, and our message contains torch's."""
    with pytest.raises(Exception) as theirs:
        theirs_call()
    with pytest.raises(type(theirs.value)) as ours:
        ours_call()
    assert type(ours.value) is type(theirs.value)
    assert str(theirs.value) in str(ours.value)
    return ours.value


METHODS = ["check_input", "get_expected_hidden_size", "check_hidden_size", "check_forward_args", "permute_hidden"]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("method", METHODS + ["get_expected_cell_size"])
def test_same_signature_as_nn(cell, method):
    theirs = getattr(nn, cell)
    if not hasattr(theirs, method):
        assert not hasattr(getattr(fastrnn, cell), method)
        return
    ours = getattr(getattr(fastrnn, cell), method)
    assert list(inspect.signature(ours).parameters) == list(inspect.signature(getattr(theirs, method)).parameters)
    defaults = {name: p.default for name, p in inspect.signature(getattr(theirs, method)).parameters.items()}
    assert {name: p.default for name, p in inspect.signature(ours).parameters.items()} == defaults


def test_flat_weights_match_nn(pair):
    theirs, ours = pair
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert len(ours._flat_weights) == len(theirs._flat_weights)
    for mine, torchs, name in zip(ours._flat_weights, theirs._flat_weights, ours._flat_weights_names):
        assert mine is getattr(ours, name)
        torch.testing.assert_close(mine, torchs, rtol=0, atol=0)


def test_flat_weights_follow_a_replaced_and_a_deleted_weight():
    """nn keeps _flat_weights current through __setattr__ (a deleted weight reads as None there once
    re-initialised); ours is computed on each read."""
    ours = fastrnn.LSTM(INPUT, HIDDEN, LAYERS, backend="reference")
    new = nn.Parameter(torch.zeros_like(ours.weight_hh_l1))
    ours.weight_hh_l1 = new
    assert ours._flat_weights[ours._flat_weights_names.index("weight_hh_l1")] is new
    del ours.weight_ih_l0
    assert ours._flat_weights[0] is None


def test_flat_weights_cannot_be_assigned():
    """nn's forward reads an assigned _flat_weights; fastrnn's reads the weights by name, so assigning
    the list would be silently ignored: it is refused, with the way to do it."""
    ours = fastrnn.GRU(INPUT, HIDDEN, backend="reference")
    with pytest.raises(AttributeError, match=r"assign a weight by name instead \(layer\.weight_ih_l0 = \.\.\.\)"):
        ours._flat_weights = [torch.zeros_like(w) for w in ours._flat_weights]


def test_flat_weights_follow_to(pair):
    _, ours = pair
    ours.double()
    assert all(w.dtype == torch.float64 for w in ours._flat_weights)
    assert [id(w) for w in ours._flat_weights] == [id(getattr(ours, n)) for n in ours._flat_weights_names]


def test_flat_weights_of_a_parametrized_weight_are_its_value():
    ours = fastrnn.GRU(INPUT, HIDDEN, backend="reference")
    torch.nn.utils.parametrizations.weight_norm(ours, "weight_hh_l0")
    value = ours._flat_weights[ours._flat_weights_names.index("weight_hh_l0")]
    torch.testing.assert_close(value, ours.weight_hh_l0)
    assert not isinstance(value, nn.Parameter)


def _batched(module, batch=BATCH, dtype=torch.float32, features=INPUT):
    shape = (batch, SEQ, features) if module.batch_first else (SEQ, batch, features)
    return torch.randn(*shape, dtype=dtype)


def _hidden(module, batch=BATCH):
    layers = LAYERS * (2 if module.bidirectional else 1)
    h = torch.randn(layers, batch, module.proj_size or module.hidden_size) if module.mode == "LSTM" \
        else torch.randn(layers, batch, module.hidden_size)
    return (h, torch.randn(layers, batch, module.hidden_size)) if module.mode == "LSTM" else h


def test_expected_sizes_match_nn(pair):
    theirs, ours = pair
    x = _batched(ours)
    assert ours.get_expected_hidden_size(x, None) == theirs.get_expected_hidden_size(x, None)
    batch_sizes = torch.tensor([3, 2, 2, 1])
    data = torch.randn(int(batch_sizes.sum()), INPUT)
    assert ours.get_expected_hidden_size(data, batch_sizes) == theirs.get_expected_hidden_size(data, batch_sizes)
    if ours.mode == "LSTM":
        assert ours.get_expected_cell_size(x, None) == theirs.get_expected_cell_size(x, None)
        assert ours.get_expected_cell_size(data, batch_sizes) == theirs.get_expected_cell_size(data, batch_sizes)


def test_check_forward_args_accepts_what_nn_accepts(pair):
    theirs, ours = pair
    x, hx = _batched(ours), _hidden(ours)
    assert theirs.check_forward_args(x, hx, None) is None
    assert ours.check_forward_args(x, hx, None) is None
    assert ours.check_input(x, None) is None


def test_check_forward_args_refuses_what_nn_refuses(pair):
    theirs, ours = pair
    x, hx = _batched(ours), _hidden(ours)
    bad_inputs = [_batched(ours, dtype=torch.float64), _batched(ours, features=INPUT + 1), x[0]]
    for bad in bad_inputs:
        _raises_alike(lambda: theirs.check_forward_args(bad, hx, None), lambda: ours.check_forward_args(bad, hx, None))
        _raises_alike(lambda: theirs.check_input(bad, None), lambda: ours.check_input(bad, None))
    wrong = _hidden(ours, batch=BATCH + 1)
    states = [(wrong[0], hx[1]), (hx[0], wrong[1])] if ours.mode == "LSTM" else [wrong]
    for bad in states:
        error = _raises_alike(lambda: theirs.check_forward_args(x, bad, None), lambda: ours.check_forward_args(x, bad, None))
        assert re.search(r"Expected hidden(\[\d\])? size \(\d+, \d+, \d+\), got \[\d+, \d+, \d+\]", str(error))


def test_check_input_of_packed_data(pair):
    theirs, ours = pair
    batch_sizes = torch.tensor([3, 2, 1])
    data = torch.randn(6, INPUT)
    assert ours.check_input(data, batch_sizes) is None
    _raises_alike(lambda: theirs.check_input(data[None], batch_sizes), lambda: ours.check_input(data[None], batch_sizes))


def test_check_hidden_size_formats_the_caller_message():
    ours, theirs = fastrnn.GRU(INPUT, HIDDEN, backend="reference"), nn.GRU(INPUT, HIDDEN)
    hx = torch.zeros(1, 2, 19)
    for args in [((1, 2, 20),), ((1, 2, 20), "Expected hidden[0] size {}, got {}")]:
        with pytest.raises(RuntimeError) as mine:
            ours.check_hidden_size(hx, *args)
        with pytest.raises(RuntimeError) as torchs:
            theirs.check_hidden_size(hx, *args)
        assert str(mine.value) == str(torchs.value)
    assert "Expected hidden[0] size (1, 2, 20), got [1, 2, 19]" == str(mine.value)
    assert ours.check_hidden_size(torch.zeros(1, 2, 20), (1, 2, 20)) is None


def test_permute_hidden_matches_nn(pair):
    theirs, ours = pair
    hx = _hidden(ours)
    permutation = torch.tensor([2, 0, 3, 1])
    assert ours.permute_hidden(hx, None) is hx
    mine, torchs = ours.permute_hidden(hx, permutation), theirs.permute_hidden(hx, permutation)
    assert type(mine) is type(torchs)
    for a, b in zip(mine if ours.mode == "LSTM" else [mine], torchs if ours.mode == "LSTM" else [torchs]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["aten", "reference", "cpp"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_conversion_by_swapping_tensors_after_a_forward(cell, backend):
    """With torch.__future__.set_swap_module_params_on_conversion(True), .to() swaps each Parameter's
    contents in place (torch.utils.swap_tensors), which fails for a tensor that has a weak reference:
    the aten backend's private nn twin must not keep any past .to()."""
    torch.manual_seed(0)
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, LAYERS, backend=backend)
    theirs = getattr(nn, cell)(INPUT, HIDDEN, LAYERS)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(SEQ, BATCH, INPUT)
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        ours(x)[0].sum().backward()
        ids = [id(p) for p in ours.parameters()]
        ours.to(dtype=torch.float64)
        assert [id(p) for p in ours.parameters()] == ids and all(p.dtype == torch.float64 for p in ours.parameters())
        ours.to(dtype=torch.float32)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours.last_backend == backend
