"""fastrnn.LSTM / fastrnn.GRU as drop-ins: state_dict, parameters, initialisation, repr, convert(),
deepcopy / pickle and dtype conversion, compared with nn.LSTM / nn.GRU."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import fastrnn

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

BACKENDS = ["reference", "aten"]

INPUT, HIDDEN, BATCH, SEQ = 13, 7, 3, 11

CONFIGS = {
    "LSTM": [
        dict(),
        dict(num_layers=3),
        dict(bidirectional=True),
        dict(bias=False),
        dict(proj_size=3),
        dict(num_layers=3, bidirectional=True, proj_size=4),
        dict(num_layers=2, bias=False, bidirectional=True, batch_first=True),
    ],
    "GRU": [
        dict(),
        dict(num_layers=3),
        dict(bidirectional=True),
        dict(bias=False),
        dict(num_layers=3, bidirectional=True, bias=False),
        dict(num_layers=2, bidirectional=True, batch_first=True),
    ],
}


def _id(cell, config):
    return cell + ("-" + "-".join(f"{k}={v}" for k, v in config.items()) if config else "-default")


CASES = [pytest.param(cell, config, id=_id(cell, config)) for cell, configs in CONFIGS.items() for config in configs]


def _make(cell, config, backend="reference", **kwargs):
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, **config, **kwargs, backend=backend)
    theirs = getattr(nn, cell)(INPUT, HIDDEN, **config, **kwargs)
    return ours, theirs


def _input(config, dtype=torch.float64, batch=BATCH, seq=SEQ):
    shape = (batch, seq, INPUT) if config.get("batch_first") else (seq, batch, INPUT)
    return torch.randn(*shape, dtype=dtype)


def _hx(cell, config, dtype=torch.float64, batch=BATCH):
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    h = torch.randn(layers, batch, config.get("proj_size") or HIDDEN, dtype=dtype)
    if cell == "LSTM":
        return (h, torch.randn(layers, batch, HIDDEN, dtype=dtype))
    return h


def _assert_same_outputs(a, b, **tol):
    out_a, hid_a = a
    out_b, hid_b = b
    assert_close(out_a, out_b, **tol)
    if isinstance(hid_a, tuple):
        assert isinstance(hid_b, tuple) and len(hid_a) == len(hid_b) == 2
        for x, y in zip(hid_a, hid_b):
            assert_close(x, y, **tol)
    else:
        assert isinstance(hid_a, torch.Tensor) and isinstance(hid_b, torch.Tensor)
        assert_close(hid_a, hid_b, **tol)


# --- state_dict and parameters ----------------------------------------------------------------


@pytest.mark.parametrize("cell, config", CASES)
def test_state_dict_keys_shapes_dtypes(cell, config):
    for dtype in (torch.float32, torch.float64):
        ours, theirs = _make(cell, config, dtype=dtype)
        ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
        assert list(ours_sd) == list(theirs_sd)
        for key in theirs_sd:
            assert ours_sd[key].shape == theirs_sd[key].shape, key
            assert ours_sd[key].dtype == theirs_sd[key].dtype == dtype, key
        assert len(list(ours.buffers())) == len(list(theirs.buffers())) == 0


@pytest.mark.parametrize("cell, config", CASES)
def test_load_torch_state_dict_then_outputs_equal(cell, config):
    ours, theirs = _make(cell, config, dtype=torch.float64)
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, param in theirs.named_parameters():
        assert torch.equal(getattr(ours, name), param), name
    x, hx = _input(config), _hx(cell, config)
    _assert_same_outputs(ours(x, hx), theirs(x, hx))
    _assert_same_outputs(ours(x), theirs(x))
    assert ours.last_backend == "reference"


@pytest.mark.parametrize("cell, config", CASES)
def test_load_fastrnn_state_dict_into_torch_then_outputs_equal(cell, config):
    ours, theirs = _make(cell, config, dtype=torch.float64)
    result = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x, hx = _input(config), _hx(cell, config)
    _assert_same_outputs(ours(x, hx), theirs(x, hx))


@pytest.mark.parametrize("cell, config", CASES)
def test_state_dict_round_trip_between_modules(cell, config):
    """fastrnn -> nn -> fresh fastrnn gives back exactly the same tensors."""
    ours, theirs = _make(cell, config)
    theirs.load_state_dict(ours.state_dict())
    again = getattr(fastrnn, cell)(INPUT, HIDDEN, **config, backend="aten")
    again.load_state_dict(theirs.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_load_state_dict_strict_rejects_mismatch():
    ours = fastrnn.LSTM(INPUT, HIDDEN, num_layers=2, backend="reference")
    one_layer = nn.LSTM(INPUT, HIDDEN, num_layers=1).state_dict()
    with pytest.raises(RuntimeError, match=r"Missing key"):
        ours.load_state_dict(one_layer, strict=True)
    with_proj = nn.LSTM(INPUT, HIDDEN, num_layers=2, proj_size=3).state_dict()
    with pytest.raises(RuntimeError):
        ours.load_state_dict(with_proj, strict=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_unchanged_by_forward(backend):
    """The aten backend keeps a private torch twin; it must not leak into state_dict or children."""
    ours, theirs = _make("LSTM", dict(num_layers=2, bidirectional=True), backend=backend)
    ours(_input({}, dtype=torch.float32))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert list(ours.children()) == []
    assert len(list(ours.parameters())) == len(list(theirs.parameters()))


@pytest.mark.parametrize("cell, config", CASES)
def test_named_parameters_order(cell, config):
    ours, theirs = _make(cell, config)
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    assert all(p.requires_grad for p in ours.parameters())


@pytest.mark.parametrize("cell, config", CASES)
def test_all_weights_structure(cell, config):
    ours, theirs = _make(cell, config)
    ours_names = {id(p): name for name, p in ours.named_parameters()}
    theirs_names = {id(p): name for name, p in theirs.named_parameters()}
    ours_struct = [[ours_names[id(p)] for p in group] for group in ours.all_weights]
    theirs_struct = [[theirs_names[id(p)] for p in group] for group in theirs.all_weights]
    assert ours_struct == theirs_struct
    assert [[p.shape for p in group] for group in ours.all_weights] == [[p.shape for p in group] for group in theirs.all_weights]
    assert all(isinstance(p, nn.Parameter) for group in ours.all_weights for p in group)
    assert ours._flat_weights_names == theirs._flat_weights_names


# --- initialisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1234])
@pytest.mark.parametrize("cell, config", CASES)
def test_init_identical_to_torch_for_same_seed(cell, config, seed):
    torch.manual_seed(seed)
    ours = getattr(fastrnn, cell)(INPUT, HIDDEN, **config, backend="reference")
    after_ours = torch.rand(4)
    torch.manual_seed(seed)
    theirs = getattr(nn, cell)(INPUT, HIDDEN, **config)
    after_theirs = torch.rand(4)
    for (name, p), (tname, tp) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert name == tname
        assert torch.equal(p, tp), name
    # Same RNG consumption: the generator is left in the same state.
    assert torch.equal(after_ours, after_theirs)


def test_reset_parameters_bounds():
    module = fastrnn.GRU(INPUT, 25, num_layers=2, backend="reference")
    bound = 1 / 5
    values = torch.cat([p.detach().flatten() for p in module.parameters()])
    assert values.abs().max() <= bound
    assert values.abs().max() > 0.9 * bound  # really spread over the range, not all zeros
    before = [p.detach().clone() for p in module.parameters()]
    module.reset_parameters()
    assert not any(torch.equal(a, b) for a, b in zip(before, module.parameters()))


# --- repr -------------------------------------------------------------------------------------


def test_repr_contains_arguments():
    module = fastrnn.LSTM(INPUT, HIDDEN, num_layers=2, bias=False, batch_first=True, dropout=0.25,
                          bidirectional=True, proj_size=3, backend="reference")
    text = repr(module)
    assert text.startswith("LSTM(")
    for piece in (f"{INPUT}, {HIDDEN}", "num_layers=2", "bias=False", "batch_first=True", "dropout=0.25",
                  "bidirectional=True", "proj_size=3", "backend='reference'"):
        assert piece in text, piece
    # Every argument torch shows, we show too.
    torch_text = repr(nn.LSTM(INPUT, HIDDEN, num_layers=2, bias=False, batch_first=True, dropout=0.25,
                              bidirectional=True, proj_size=3))
    inner = torch_text[len("LSTM("):-1]
    for piece in inner.split(", "):
        assert piece in text, piece


def test_repr_defaults():
    text = repr(fastrnn.GRU(3, 5, backend="aten"))
    assert text.startswith("GRU(") and "3, 5" in text and "backend='aten'" in text
    assert "num_layers" not in text and "dropout" not in text


# --- convert ----------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, INPUT)
        self.lstm = nn.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, batch_first=True, dropout=0.3)
        self.block = nn.Sequential(nn.Tanh(), nn.Sequential(nn.GRU(2 * HIDDEN, 5, batch_first=True)))
        self.head = nn.Linear(5, 4)

    def forward(self, tokens):
        y, _ = self.lstm(self.embed(tokens))
        y = self.block[0](y)
        y, h = self.block[1][0](y)
        return self.head(y), h


def _tokens():
    return torch.randint(0, 20, (BATCH, SEQ))


def test_convert_model_swaps_rnns_and_shares_parameters():
    model = _Net().double().eval()
    params_before = dict(model.named_parameters())
    lstm, gru, embed, head = model.lstm, model.block[1][0], model.embed, model.head
    tokens = _tokens()
    with torch.no_grad():
        expected = model(tokens)

    converted = fastrnn.convert(model, backend="reference")

    assert converted is model
    assert type(model.lstm) is fastrnn.LSTM
    assert type(model.block[1][0]) is fastrnn.GRU
    assert model.embed is embed and model.head is head
    assert model.lstm.backend == model.block[1][0].backend == "reference"
    # configuration carried over
    assert (model.lstm.num_layers, model.lstm.bidirectional, model.lstm.batch_first, model.lstm.dropout) == (2, True, True, 0.3)
    assert model.block[1][0].batch_first is True and model.block[1][0].hidden_size == 5
    # the very same Parameter objects
    params_after = dict(model.named_parameters())
    assert list(params_after) == list(params_before)
    for name, param in params_before.items():
        assert params_after[name] is param, name
    for name, param in lstm.named_parameters():
        assert getattr(model.lstm, name) is param
    for name, param in gru.named_parameters():
        assert getattr(model.block[1][0], name) is param
    # training mode, dtype, device preserved
    assert not model.training and not model.lstm.training and not model.block[1][0].training
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    # same outputs
    with torch.no_grad():
        got = model(tokens)
    assert model.lstm.last_backend == "reference" and model.block[1][0].last_backend == "reference"
    assert got[0].dtype == torch.float64
    assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_preserves_train_mode(backend):
    model = _Net().train()
    fastrnn.convert(model, backend=backend)
    assert model.lstm.training and model.block[1][0].training
    model.eval()
    assert not model.lstm.training and not model.block[1][0].training


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_created_before_convert_still_trains(backend):
    model = _Net().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fastrnn.convert(model, backend=backend)
    lstm, gru = model.lstm, model.block[1][0]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    optimizer.zero_grad()
    out, h = model(_tokens())
    (out.square().sum() + h.sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    optimizer.step()

    assert lstm.last_backend == backend and gru.last_backend == backend
    for prefix, module in (("lstm.", lstm), ("block.1.0.", gru)):
        for name, param in module.named_parameters():
            full = prefix + name
            assert full in grads and grads[full].abs().sum() > 0, full
            assert not torch.equal(param.detach(), before[full]), full
            assert_close(param.detach(), before[full] - 0.1 * grads[full])


def test_convert_float64_model_stays_float64():
    model = _Net().to(torch.float64)
    fastrnn.convert(model, backend="aten")
    assert all(p.dtype == torch.float64 for p in model.lstm.parameters())
    assert model.lstm.weight_ih_l0.dtype == torch.float64
    out, h = model(_tokens())
    assert out.dtype == h.dtype == torch.float64


def test_convert_meta_device_preserved():
    model = _Net().to("meta")
    fastrnn.convert(model, backend="reference")
    assert type(model.lstm) is fastrnn.LSTM
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_convert_bare_module_returns_fastrnn(cell):
    kwargs = dict(num_layers=2, bidirectional=True, dtype=torch.float64)
    if cell == "LSTM":
        kwargs["proj_size"] = 3
    source = getattr(nn, cell)(INPUT, HIDDEN, **kwargs).eval()
    result = fastrnn.convert(source, backend="reference")
    assert type(result) is getattr(fastrnn, cell)
    assert result is not source
    for name, param in source.named_parameters():
        assert getattr(result, name) is param
    assert not result.training
    if cell == "LSTM":
        assert result.proj_size == 3
    x = _input({})
    _assert_same_outputs(result(x), source(x))


def test_from_torch_single_swap_and_wrong_type():
    source = nn.GRU(INPUT, HIDDEN, num_layers=2, dtype=torch.float64)
    swapped = fastrnn.GRU.from_torch(source, backend="reference")
    assert type(swapped) is fastrnn.GRU
    assert all(getattr(swapped, n) is p for n, p in source.named_parameters())
    x = _input({})
    _assert_same_outputs(swapped(x), source(x))
    with pytest.raises(TypeError):
        fastrnn.LSTM.from_torch(source)


def test_convert_model_without_rnns_unchanged():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 2)))
    children = list(model.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = fastrnn.convert(model, backend="reference")
    assert result is model
    assert list(model.modules()) == children
    assert all(a is b for a, b in zip(model.modules(), children))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_convert_leaves_fastrnn_modules_alone():
    inner = fastrnn.LSTM(3, 5, backend="aten")
    model = nn.Sequential(inner)
    fastrnn.convert(model, backend="reference")
    assert model[0] is inner and inner.backend == "aten"


# --- deepcopy, pickle, dtype conversion -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_deepcopy(cell, backend):
    module = getattr(fastrnn, cell)(INPUT, HIDDEN, num_layers=2, bidirectional=True, dtype=torch.float64, backend=backend)
    x = _input({})
    expected = module(x)  # after a forward, so any cached state is copied too
    clone = copy.deepcopy(module)
    assert type(clone) is type(module) and clone.backend == backend
    assert all(a is not b for a, b in zip(clone.parameters(), module.parameters()))
    _assert_same_outputs(clone(x), expected)
    # the copy is independent of the original
    with torch.no_grad():
        clone.weight_hh_l0.add_(1.0)
    _assert_same_outputs(module(x), expected)
    assert not torch.allclose(clone(x)[0], expected[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_pickle_round_trip(cell, backend):
    module = getattr(fastrnn, cell)(INPUT, HIDDEN, num_layers=2, batch_first=True, dtype=torch.float64, backend=backend)
    x = _input(dict(batch_first=True))
    expected = module(x)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(module)
    assert loaded.backend == backend and loaded.batch_first
    assert list(loaded.state_dict()) == list(module.state_dict())
    _assert_same_outputs(loaded(x), expected)
    assert loaded.last_backend == backend
    # loaded parameters are real leaves that train
    loaded(x)[0].sum().backward()
    assert all(p.grad is not None for p in loaded.parameters())


@pytest.mark.parametrize("forward_first", [False, True], ids=["fresh", "after-forward"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_to_float64_then_forward(cell, backend, forward_first):
    config = dict(num_layers=2, bidirectional=True, proj_size=3) if cell == "LSTM" else dict(num_layers=2, bidirectional=True)
    ours, theirs = _make(cell, config, backend=backend)
    theirs.load_state_dict(ours.state_dict())
    if forward_first:  # the aten backend caches a torch twin; it must follow the conversion
        ours(_input(config, dtype=torch.float32))
    result = ours.to(torch.float64)
    assert result is ours
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    theirs.to(torch.float64)
    x, hx = _input(config), _hx(cell, config)
    got = ours(x, hx)
    assert got[0].dtype == torch.float64
    assert ours.last_backend == backend
    _assert_same_outputs(got, theirs(x, hx))
    with pytest.raises(ValueError, match=r"dtype"):
        ours(x.float())
