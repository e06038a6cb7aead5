"""Error behaviour of fastrnn.LSTM / fastrnn.GRU compared with nn.LSTM / nn.GRU.

Every bad input must raise the same exception type as torch's module does (where torch raises a
proper error), and our message must name the problem.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

BACKENDS = ["reference", "aten", "cpp"]
CELLS = ["LSTM", "GRU"]

INPUT, HIDDEN, LAYERS, BATCH, SEQ = 3, 5, 2, 3, 4


@pytest.fixture(params=CELLS)
def cell(request):
    return request.param


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def pair(cell, backend):
    """(torch module, fastrnn module) with identical weights."""
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, num_layers=LAYERS, backend=backend)
    theirs = getattr(nn, cell)(INPUT, HIDDEN, num_layers=LAYERS)
    theirs.load_state_dict(ours.state_dict())
    return theirs, ours


def _state(cell, shape, **kwargs):
    """An hx of the right structure for `cell` with every tensor of `shape`."""
    if cell == "LSTM":
        return (torch.randn(*shape, **kwargs), torch.randn(*shape, **kwargs))
    return torch.randn(*shape, **kwargs)


def _both_raise(theirs, ours, exc, match, *args):
    """torch's module raises `exc`; ours raises `exc` with a message matching `match`."""
    with pytest.raises(exc):
        theirs(*args)
    with pytest.raises(exc, match=match) as info:
        ours(*args)
    return info


def _same_text_as_torch(theirs, ours, exc, match, *args):
    """Both raise `exc` with messages matching `match`: ours contains torch's text (test suites
    match torch's messages with regular expressions), whatever detail it adds."""
    with pytest.raises(exc, match=match):
        theirs(*args)
    with pytest.raises(exc, match=match) as info:
        ours(*args)
    return info


def _hidden_size_text(cell, index, expected, got):
    """torch's message for a state of the wrong shape, as a regular expression."""
    name = f"hidden[{index}]" if cell == "LSTM" else "hidden"
    return re.escape(f"Expected {name} size {tuple(expected)}, got {list(got)}")


# --- input shape ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(INPUT,), (2, SEQ, BATCH, INPUT)], ids=["1d", "4d"])
def test_input_rank(pair, cell, shape):
    theirs, ours = pair
    info = _both_raise(theirs, ours, ValueError, r"Expected input to be 2D or 3D", torch.randn(*shape))
    assert f"got {len(shape)}D" in str(info.value)
    assert cell in str(info.value)


def test_wrong_feature_size(pair):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT + 10)
    info = _both_raise(theirs, ours, RuntimeError, r"input\.size\(-1\) must be equal to input_size", x)
    assert f"Expected {INPUT}, got {INPUT + 10}" in str(info.value)


def test_sequence_length_zero(pair):
    theirs, ours = pair
    _same_text_as_torch(theirs, ours, RuntimeError, r"Expected sequence length to be larger than 0 in RNN",
                        torch.randn(0, BATCH, INPUT))


# --- hidden state shape and structure ---------------------------------------------------------


def test_wrong_h0_shape(pair, cell):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = _state(cell, (LAYERS, BATCH + 1, HIDDEN))
    info = _same_text_as_torch(theirs, ours, RuntimeError,
                               _hidden_size_text(cell, 0, (LAYERS, BATCH, HIDDEN), (LAYERS, BATCH + 1, HIDDEN)), x, hx)
    assert "h_0" in str(info.value)


def test_wrong_h0_num_layers(pair, cell):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = _state(cell, (LAYERS + 1, BATCH, HIDDEN))
    _same_text_as_torch(theirs, ours, RuntimeError,
                        _hidden_size_text(cell, 0, (LAYERS, BATCH, HIDDEN), (LAYERS + 1, BATCH, HIDDEN)), x, hx)


def test_wrong_c0_shape(backend):
    ours = fastrnn.LSTM(INPUT, HIDDEN, num_layers=LAYERS, backend=backend)
    theirs = nn.LSTM(INPUT, HIDDEN, num_layers=LAYERS)
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = (torch.randn(LAYERS, BATCH, HIDDEN), torch.randn(LAYERS, BATCH, HIDDEN + 2))
    info = _same_text_as_torch(theirs, ours, RuntimeError,
                               _hidden_size_text("LSTM", 1, (LAYERS, BATCH, HIDDEN), (LAYERS, BATCH, HIDDEN + 2)), x, hx)
    assert "c_0" in str(info.value)


def test_wrong_c0_shape_with_projection(backend):
    """With proj_size, h_0 has the projected size and c_0 the hidden size: swapping them is an error."""
    ours = fastrnn.LSTM(INPUT, HIDDEN, num_layers=LAYERS, proj_size=2, backend=backend)
    theirs = nn.LSTM(INPUT, HIDDEN, num_layers=LAYERS, proj_size=2)
    x = torch.randn(SEQ, BATCH, INPUT)
    good = (torch.randn(LAYERS, BATCH, 2), torch.randn(LAYERS, BATCH, HIDDEN))
    assert ours(x, good)[0].shape == theirs(x, good)[0].shape == (SEQ, BATCH, 2)
    swapped = (good[1], good[0])
    _same_text_as_torch(theirs, ours, RuntimeError,
                        _hidden_size_text("LSTM", 0, (LAYERS, BATCH, 2), (LAYERS, BATCH, HIDDEN)), x, swapped)
    both_hidden = (good[1], good[1])
    _same_text_as_torch(theirs, ours, RuntimeError,
                        _hidden_size_text("LSTM", 0, (LAYERS, BATCH, 2), (LAYERS, BATCH, HIDDEN)), x, both_hidden)


def test_2d_hx_with_3d_input(pair, cell):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = _state(cell, (LAYERS, HIDDEN))
    text = "hx and cx should also be 3-D but got (2-D, 2-D) tensors" if cell == "LSTM" else "hx should also be 3-D but got 2-D tensor"
    _same_text_as_torch(theirs, ours, RuntimeError, re.escape(f"For batched 3-D input, {text}"), x, hx)


def test_3d_hx_with_2d_input(pair, cell):
    theirs, ours = pair
    x = torch.randn(SEQ, INPUT)
    hx = _state(cell, (LAYERS, 1, HIDDEN))
    text = "hx and cx should also be 2-D but got (3-D, 3-D) tensors" if cell == "LSTM" else "hx should also be 2-D but got 3-D tensor"
    _same_text_as_torch(theirs, ours, RuntimeError, re.escape(f"For unbatched 2-D input, {text}"), x, hx)


def test_lstm_hx_bare_tensor(backend):
    ours = fastrnn.LSTM(INPUT, HIDDEN, num_layers=LAYERS, backend=backend)
    x = torch.randn(SEQ, BATCH, INPUT)
    with pytest.raises(RuntimeError, match=r"hx must be a tuple \(h_0, c_0\).*got a Tensor"):
        ours(x, torch.randn(LAYERS, BATCH, HIDDEN))


@pytest.mark.parametrize("count", [1, 3])
def test_lstm_hx_wrong_tuple_length(backend, count):
    ours = fastrnn.LSTM(INPUT, HIDDEN, num_layers=LAYERS, backend=backend)
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = tuple(torch.randn(LAYERS, BATCH, HIDDEN) for _ in range(count))
    with pytest.raises(RuntimeError, match=rf"hx must be a tuple \(h_0, c_0\).*tuple of {count}"):
        ours(x, hx)


def test_lstm_hx_tuple_with_non_tensor(backend):
    ours = fastrnn.LSTM(INPUT, HIDDEN, num_layers=LAYERS, backend=backend)
    x = torch.randn(SEQ, BATCH, INPUT)
    with pytest.raises(RuntimeError, match=r"hx must be a tuple \(h_0, c_0\) of two tensors"):
        ours(x, (torch.randn(LAYERS, BATCH, HIDDEN), None))


@pytest.mark.parametrize("count", [1, 2])
def test_gru_hx_tuple(backend, count):
    ours = fastrnn.GRU(INPUT, HIDDEN, num_layers=LAYERS, backend=backend)
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = tuple(torch.randn(LAYERS, BATCH, HIDDEN) for _ in range(count))
    with pytest.raises(RuntimeError, match=r"GRU: hx must be a tensor h_0.*tuple"):
        ours(x, hx)


def test_packed_input_wrong_h0(pair, cell):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT)
    packed = pack_padded_sequence(x, [SEQ, SEQ - 1, 2])
    hx = _state(cell, (LAYERS, BATCH + 1, HIDDEN))
    # torch's LSTM leaves a packed input's states to ATen, whose message differs; ours is nn.GRU's text.
    _both_raise(theirs, ours, RuntimeError,
                _hidden_size_text(cell, 0, (LAYERS, BATCH, HIDDEN), (LAYERS, BATCH + 1, HIDDEN)), packed, hx)


# --- dtypes and devices -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.int32], ids=["float64", "int64", "int32"])
def test_input_dtype_differs_from_weights(pair, dtype):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT).mul(3).to(dtype)
    info = _same_text_as_torch(theirs, ours, ValueError, r"RNN input dtype .* does not match weight dtype .* "
                               r"Convert input: input\.to\(.*\), or convert model: model\.to\(.*\)", x)
    assert str(dtype) in str(info.value)
    assert "torch.float32" in str(info.value)


def test_input_dtype_float64_model_float32_input(cell, backend):
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, dtype=torch.float64, backend=backend)
    theirs = getattr(nn, cell)(INPUT, HIDDEN, dtype=torch.float64)
    _same_text_as_torch(theirs, ours, ValueError, r"RNN input dtype \(torch\.float32\) does not match weight dtype \(torch\.float64\)",
                        torch.randn(SEQ, BATCH, INPUT))


def test_h0_dtype_differs_from_input(pair, cell):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = _state(cell, (LAYERS, BATCH, HIDDEN), dtype=torch.float64)
    # torch raises a RuntimeError with an unhelpful message; ours must name the dtype problem.
    info = _both_raise(theirs, ours, RuntimeError, r"dtype", x, hx)
    assert "h_0" in str(info.value) and "torch.float64" in str(info.value)


def test_c0_dtype_differs_from_input(backend):
    ours = fastrnn.LSTM(INPUT, HIDDEN, num_layers=LAYERS, backend=backend)
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = (torch.randn(LAYERS, BATCH, HIDDEN), torch.randn(LAYERS, BATCH, HIDDEN, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"c_0 has dtype torch\.float64"):
        ours(x, hx)


def test_h0_on_other_device(pair, cell):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT)
    hx = _state(cell, (LAYERS, BATCH, HIDDEN), device="meta")
    info = _both_raise(theirs, ours, RuntimeError, r"not at the same device", x, hx)
    assert "meta" in str(info.value) and "cpu" in str(info.value)


def test_input_on_other_device(pair):
    theirs, ours = pair
    x = torch.randn(SEQ, BATCH, INPUT, device="meta")
    info = _same_text_as_torch(theirs, ours, RuntimeError, r"Input and parameter tensors are not at the same device, "
                               r"found input tensor at meta and parameter tensor at cpu", x)
    assert "device" in str(info.value).lower() or "model.to" in str(info.value)


# --- constructor ------------------------------------------------------------------------------


CONSTRUCTOR_ERRORS = [
    (dict(dropout=-0.1), ValueError, r"dropout should be a number in range \[0, 1\] representing the probability"),
    (dict(dropout=1.5), ValueError, r"dropout should be a number in range \[0, 1\]"),
    (dict(dropout=True), ValueError, r"dropout should be a number in range \[0, 1\]"),
    (dict(dropout="0.5"), ValueError, r"dropout should be a number in range \[0, 1\]"),
    (dict(hidden_size=0), ValueError, r"hidden_size must be greater than zero"),
    (dict(input_size=0), ValueError, r"input_size must be greater than zero"),
    (dict(num_layers=0), ValueError, r"num_layers must be greater than zero"),
    (dict(input_size=2.5), TypeError, r"input_size should be of type int"),
    (dict(hidden_size=5.0), TypeError, r"hidden_size should be of type int"),
    (dict(bias="yes"), TypeError, r"bias should be of type bool"),
    (dict(batch_first=1), TypeError, r"batch_first should be of type bool"),
]

LSTM_ONLY_CONSTRUCTOR_ERRORS = [
    (dict(proj_size=5), ValueError, r"proj_size has to be smaller than hidden_size"),
    (dict(proj_size=6), ValueError, r"proj_size has to be smaller than hidden_size"),
    (dict(proj_size=-1), ValueError, r"proj_size should be a positive integer or zero"),
]


def _ids(cases):
    return ["-".join(f"{k}={v!r}" for k, v in kwargs.items()) for kwargs, _, _ in cases]


@pytest.mark.parametrize("kwargs, exc, match", CONSTRUCTOR_ERRORS, ids=_ids(CONSTRUCTOR_ERRORS))
def test_constructor_errors(cell, kwargs, exc, match):
    args = dict(input_size=INPUT, hidden_size=HIDDEN)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        getattr(nn, cell)(**args)
    with pytest.raises(exc, match=match):
        getattr(fastrnn, cell)(**args, backend="reference")


@pytest.mark.parametrize("kwargs, exc, match", LSTM_ONLY_CONSTRUCTOR_ERRORS, ids=_ids(LSTM_ONLY_CONSTRUCTOR_ERRORS))
def test_lstm_constructor_proj_size_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nn.LSTM(INPUT, HIDDEN, **kwargs)
    with pytest.raises(exc, match=match):
        fastrnn.LSTM(INPUT, HIDDEN, **kwargs, backend="reference")


@pytest.mark.parametrize("proj_size", [2, 0])
def test_gru_proj_size_same_text_as_torch(proj_size):
    """nn.GRU refuses any proj_size keyword, 0 included."""
    text = r"proj_size argument is only supported for LSTM, not RNN or GRU"
    with pytest.raises(ValueError, match=text):
        nn.GRU(INPUT, HIDDEN, proj_size=proj_size)
    with pytest.raises(ValueError, match=text):
        fastrnn.GRU(INPUT, HIDDEN, proj_size=proj_size)


@pytest.mark.parametrize("dropout", [0.0, 1.0, 0.5], ids=["zero", "one", "half"])
def test_constructor_accepts_dropout_bounds(cell, dropout):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = getattr(fastrnn, cell)(INPUT, HIDDEN, num_layers=2, dropout=dropout, backend="reference")
    assert module.dropout == dropout


def test_dropout_with_one_layer_warns(cell):
    text = r"non-zero dropout expects num_layers greater than 1, but got dropout=0.3 and num_layers=1"
    with pytest.warns(UserWarning, match=text):
        getattr(nn, cell)(INPUT, HIDDEN, num_layers=1, dropout=0.3)
    with pytest.warns(UserWarning, match=text):
        getattr(fastrnn, cell)(INPUT, HIDDEN, num_layers=1, dropout=0.3, backend="reference")


def test_dropout_with_several_layers_does_not_warn(cell):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = getattr(fastrnn, cell)(INPUT, HIDDEN, num_layers=2, dropout=0.3, backend="reference")
    assert module.dropout == 0.3


# --- backends ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cpu", "CUDA", "", None, "torch"])
def test_unknown_backend_name(cell, name):
    with pytest.raises(ValueError, match=r"backend must be one of"):
        getattr(fastrnn, cell)(INPUT, HIDDEN, backend=name)


_UNAVAILABLE = {
    "cuda": r"cuda.*(cpu tensor|CUDA tensors)",
    "triton": r"triton is not installed|cpu tensor",
}


@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_unavailable_backend_raises_at_forward(cell, name, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # on the CPU triton runs only in its interpreter
    module = getattr(fastrnn, cell)(INPUT, HIDDEN, backend=name)  # construction succeeds
    assert module.backend == name
    x = torch.randn(SEQ, BATCH, INPUT)
    with pytest.raises(fastrnn.BackendUnavailableError, match=_UNAVAILABLE[name]) as info:
        module(x)
    assert isinstance(info.value, RuntimeError)
    assert f"backend={name!r}" in str(info.value)
    with pytest.raises(fastrnn.BackendUnavailableError, match=_UNAVAILABLE[name]):
        module.selected_backend()
    with pytest.raises(fastrnn.BackendUnavailableError, match=_UNAVAILABLE[name]):
        module.selected_backend("cpu")


def test_cuda_backend_message_names_cpu(cell):
    module = getattr(fastrnn, cell)(INPUT, HIDDEN, backend="cuda")
    with pytest.raises(fastrnn.BackendUnavailableError, match=r"got a cpu tensor"):
        module(torch.randn(SEQ, BATCH, INPUT))


def test_backend_unavailable_error_is_runtime_error():
    assert issubclass(fastrnn.BackendUnavailableError, RuntimeError)


def test_explain_cpu_reports_reasons(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # on the CPU triton runs only in its interpreter
    report = fastrnn.explain("cpu")
    assert "cpu" in report
    lines = {line.split()[0]: line for line in report.splitlines()[1:]}
    assert "unavailable" in lines["cuda"] and "cpu" in lines["cuda"]
    assert "unavailable" in lines["triton"]
    assert "available" in lines["reference"] and "unavailable" not in lines["reference"]
    assert "available" in lines["aten"] and "unavailable" not in lines["aten"]
    gru = next(line for line in report.splitlines() if line.strip().startswith("GRU,"))
    assert gru.split()[-3] == ("cpp" if lines["cpp"].split()[1] == "available" else "aten")  # auto's eager pick
    assert "auto on cpu, by workload" in report  # what auto picks is stated per kind of workload


def test_available_backends_record_last_backend(cell, backend):
    module = getattr(fastrnn, cell)(INPUT, HIDDEN, backend=backend)
    assert module.last_backend is None
    assert module.selected_backend() == backend
    module(torch.randn(SEQ, BATCH, INPUT))
    assert module.last_backend == backend


def test_failed_forward_raises_before_any_computation(cell):
    """A bad input never leaves the module half-run: a good forward afterwards still matches torch."""
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, backend="reference", dtype=torch.float64)
    theirs = getattr(nn, cell)(INPUT, HIDDEN, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    with pytest.raises(RuntimeError):
        ours(torch.randn(SEQ, BATCH, INPUT + 1, dtype=torch.float64))
    x = torch.randn(SEQ, BATCH, INPUT, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


# --- batch size 0 -----------------------------------------------------------------------------


def _shapes(out):
    output, hidden = out
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    return output.shape, tuple(h.shape for h in hidden)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_batch_size_zero(cell, batch_first, bidirectional):
    kwargs = dict(num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, backend="reference", **kwargs)
    theirs = getattr(nn, cell)(INPUT, HIDDEN, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(0, SEQ, INPUT) if batch_first else torch.randn(SEQ, 0, INPUT)
    out_ours, out_theirs = ours(x), theirs(x)
    assert _shapes(out_ours) == _shapes(out_theirs)
    directions = 2 if bidirectional else 1
    assert out_ours[0].shape == ((0, SEQ, directions * HIDDEN) if batch_first else (SEQ, 0, directions * HIDDEN))
    assert out_ours[0].dtype == out_theirs[0].dtype
    assert ours.last_backend == "reference"


def test_batch_size_zero_with_hx(cell):
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, num_layers=2, backend="reference")
    theirs = getattr(nn, cell)(INPUT, HIDDEN, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(SEQ, 0, INPUT)
    hx = _state(cell, (2, 0, HIDDEN))
    assert _shapes(ours(x, hx)) == _shapes(theirs(x, hx))


def test_batch_size_zero_backward(cell):
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, num_layers=2, backend="reference")
    x = torch.randn(SEQ, 0, INPUT, requires_grad=True)
    output, _ = ours(x)
    output.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.count_nonzero(ours.weight_hh_l0.grad) == 0
