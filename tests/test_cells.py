"""fastrnn.LSTMCell / GRUCell / RNNCell against nn's cells and float64: outputs, new states and the gradient
of the input, the states and every parameter, on every backend; their autograd node, custom ops, prepacked
weights, error messages and the roads a cell takes (compile, torch.func, double backward)."""

from __future__ import annotations

import functools
import zlib

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import cell_step, cells

from conftest import CUDA_SKIP, rel_error, skip_unavailable
from tolerance import allowed_error

TWINS = {
    "LSTM": (fastrnn.LSTMCell, nn.LSTMCell),
    "GRU": (fastrnn.GRUCell, nn.GRUCell),
    "RNN_TANH": (functools.partial(fastrnn.RNNCell, nonlinearity="tanh"), functools.partial(nn.RNNCell, nonlinearity="tanh")),
    "RNN_RELU": (functools.partial(fastrnn.RNNCell, nonlinearity="relu"), functools.partial(nn.RNNCell, nonlinearity="relu")),
}
MODES = list(TWINS)
BACKENDS = ["reference", "aten", "cpp"]
SIZES = [(1, 1), (5, 7), (13, 17), (70, 33)]  # (input, hidden): 1, primes, nothing a multiple of a vector
FORMS = ["batched", "no_state", "unbatched"]


def make_pair(mode, backend, input_size, hidden_size, bias=True, dtype=torch.float64, device="cpu"):
    ours_cls, torch_cls = TWINS[mode]
    ours = ours_cls(input_size, hidden_size, bias=bias, dtype=dtype, device=device, backend=backend)
    theirs = torch_cls(input_size, hidden_size, bias=bias, dtype=dtype, device=device)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def random_inputs(module, batch, form, seed, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shape = () if form == "unbatched" else (batch,)

    def randn(*size):
        return torch.randn(*shape, *size, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    x = randn(module.input_size)
    if form == "no_state":
        return x, None
    states = [randn(module.hidden_size) for _ in cells.CELLS[module.mode].states]
    return x, tuple(states) if len(states) == 2 else states[0]


def run(module, x, hx, seed=0):
    """New states and the gradient of the input, the given states and every parameter under a random linear loss."""
    x = x.detach().clone().requires_grad_(True)
    given = [] if hx is None else [s.detach().clone().requires_grad_(True) for s in (hx if isinstance(hx, tuple) else (hx,))]
    out = module(x, None if hx is None else (tuple(given) if isinstance(hx, tuple) else given[0]))
    out = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)).sum() for t in out)
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, [x, *given, *params])
    result = {f"state{i}": t for i, t in enumerate(out)}
    names = ["d_input"] + [f"d_state{i}" for i in range(len(given))] + [f"d_{n}" for n, _ in module.named_parameters()]
    result.update(zip(names, grads))
    return result


def compare(ours, theirs):
    assert ours.keys() == theirs.keys()
    return {name: rel_error(ours[name], theirs[name]) for name in theirs}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("input_size,hidden_size", SIZES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 9])
def test_matches_nn_in_float64(backend, mode, input_size, hidden_size, form, bias, batch):
    skip_unavailable(backend)
    seed = zlib.crc32(repr((mode, input_size, hidden_size, form, bias, batch)).encode())
    torch.manual_seed(seed)
    ours, theirs = make_pair(mode, backend, input_size, hidden_size, bias)
    x, hx = random_inputs(ours, batch, form, seed)
    errors = compare(run(ours, x, hx), run(theirs, x, hx))
    assert ours.last_backend == backend
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("backend", [*BACKENDS, "triton"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 6])
def test_float32_error_bounded_by_nn_error(backend, mode, batch):
    """In float32 each result's error against the float64 answer is at most about nn's own."""
    skip_unavailable(backend)
    torch.manual_seed(5)
    ours, theirs = make_pair(mode, backend, 37, 45, dtype=torch.float32)
    shaped_like, oracle = make_pair(mode, "reference", 37, 45)  # nn's cell in float64 is the oracle
    oracle.load_state_dict(theirs.state_dict())
    x, hx = random_inputs(shaped_like, batch, "batched", seed=9)
    exact = run(oracle, x, hx)
    x32, hx32 = x.float(), tuple(s.float() for s in hx) if isinstance(hx, tuple) else hx.float()
    ours_err, nn_err = compare(run(ours, x32, hx32), exact), compare(run(theirs, x32, hx32), exact)
    for name in exact:
        assert ours_err[name] <= allowed_error(torch.float32, nn_err[name]), (name, ours_err[name], nn_err[name])


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
def test_step_gradcheck_and_gradgradcheck(backend, mode, bias):
    skip_unavailable(backend)
    torch.manual_seed(1)
    gates = cells.CELLS[mode].gates * 4
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(gates, 5, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(gates, 4, dtype=torch.float64, requires_grad=True)
    biases = [torch.randn(gates, dtype=torch.float64, requires_grad=True) for _ in range(2)] if bias else [None, None]
    states = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in cells.CELLS[mode].states]
    if mode == "RNN_RELU":  # keep the pre-activations away from relu's kink, where finite differences disagree
        with torch.no_grad():
            x.mul_(0.1)
    inputs = (x, w_ih, w_hh, *biases, *states)

    def fused(*tensors):
        return cell_step.CellStep.apply(mode, backend, None, None, *tensors)

    assert torch.autograd.gradcheck(fused, inputs)
    assert torch.autograd.gradgradcheck(fused, inputs)

    def tapped(x, w_ih, w_hh, b_ih, b_hh, *states):  # the weights through a tap (fastrnn/weight_tap.py)
        return cell_step.step(mode, backend, {}, x, tuple(states), w_ih, w_hh, b_ih, b_hh)

    assert torch.autograd.gradcheck(tapped, inputs)
    assert torch.autograd.gradgradcheck(tapped, inputs)

    def through_op(x, w_ih, w_hh, b_ih, b_hh, *states):
        return tuple(cell_step.cell_forward(mode, x, list(states), w_ih, w_hh, b_ih, b_hh, backend)[:-1])

    assert torch.autograd.gradcheck(through_op, inputs)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("mode", MODES)
def test_custom_ops_pass_opcheck(backend, mode):
    skip_unavailable(backend)
    torch.manual_seed(2)
    gates = cells.CELLS[mode].gates * 6
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(gates, 3, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(gates, 6, dtype=torch.float64, requires_grad=True)
    b_ih, b_hh = torch.randn(gates, dtype=torch.float64), torch.randn(gates, dtype=torch.float64)
    states = [torch.randn(4, 6, dtype=torch.float64) for _ in cells.CELLS[mode].states]
    torch.library.opcheck(cell_step.cell_forward, (mode, x, states, w_ih, w_hh, b_ih, b_hh, backend))
    *new, saved = cell_step.cell_forward(mode, x.detach(), states, w_ih.detach(), w_hh.detach(), b_ih, b_hh, backend)
    d_new = [torch.randn_like(s) for s in new]
    torch.library.opcheck(cell_step.cell_backward, (mode, d_new, states, new, saved, backend))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["auto", "cpp", "reference", "triton"])
def test_compiled_decoder_loop_matches_nn(mode, backend):
    """A decoder loop of cell calls under torch.compile(fullgraph=True): the same states and gradients as nn's."""
    skip_unavailable("cpp" if backend == "auto" else backend)
    torch.manual_seed(3)
    ours, theirs = make_pair(mode, backend, 6, 5)

    def decode(cell, x, hx):
        outputs = []
        for t in range(x.shape[0]):
            hx = cell(x[t], hx)
            outputs.append(hx[0] if isinstance(hx, tuple) else hx)
        return torch.stack(outputs)

    x = torch.randn(4, 3, 6, dtype=torch.float64)
    torch._dynamo.reset()  # every case compiles the same code object: start each from a clean cache
    compiled = torch.compile(functools.partial(decode, ours), fullgraph=True, backend="aot_eager")
    got, expected = compiled(x, None), decode(theirs, x, None)
    assert rel_error(got, expected) < 1e-10
    grads = torch.autograd.grad(got.square().sum(), list(ours.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(theirs.parameters()))
    assert all(rel_error(a, b) < 1e-10 for a, b in zip(grads, expected_grads))


@pytest.mark.parametrize("mode", MODES)
def test_prepacked_weights_follow_every_change(mode):
    """The cpp kernels' packed weights are reused only while the weights are unchanged: an optimizer step,
    load_state_dict, an in-place edit and .to() are each seen by the next call, as by nn's cell."""
    skip_unavailable("cpp")
    torch.manual_seed(4)
    ours, theirs = make_pair(mode, "cpp", 9, 11)
    x, hx = random_inputs(ours, 2, "batched", seed=3)

    def agree():
        with torch.no_grad():
            a, b = ours(x, hx), theirs(x, hx)
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        return max(rel_error(p, q) for p, q in zip(a, b))

    assert agree() < 1e-12
    assert ours._packed  # the weights were packed once
    for module in (ours, theirs):  # the same SGD step on both
        for p in module.parameters():
            p.grad = torch.ones_like(p)
        torch.optim.SGD(module.parameters(), lr=0.5).step()
    assert agree() < 1e-12
    theirs.load_state_dict({k: torch.randn_like(v) for k, v in theirs.state_dict().items()})
    ours.load_state_dict(theirs.state_dict())
    assert agree() < 1e-12
    with torch.no_grad():
        ours.weight_hh.mul_(0.5)
        theirs.weight_hh.mul_(0.5)
    assert agree() < 1e-12
    ours.float(), theirs.float()
    x, hx = x.float(), tuple(s.float() for s in hx) if isinstance(hx, tuple) else hx.float()
    assert agree() < 1e-5


def test_errors_carry_torch_text():
    cell = fastrnn.LSTMCell(4, 3, backend="cpp" if fastrnn.backends.runs("cpp", torch.device("cpu")) else "reference")
    cases = [
        ((torch.randn(2, 5),), RuntimeError, "input has inconsistent input_size: got 5 expected 4"),
        ((torch.randn(2, 4), (torch.randn(3, 3), torch.randn(3, 3))), RuntimeError,
         "Input batch size 2 doesn't match hidden0 batch size 3"),
        ((torch.randn(2, 4), (torch.randn(2, 3), torch.randn(2, 5))), RuntimeError,
         "hidden1 has inconsistent hidden_size: got 5, expected 3"),
        ((torch.randn(1, 2, 4),), ValueError, "LSTMCell: Expected input to be 1D or 2D, got 3D instead"),
        ((torch.randn(2, 4), (torch.randn(()), torch.randn(2, 3))), ValueError, "Expected hx[0] to be 1D or 2D, got 0D"),
        ((torch.randn(2, 4), torch.randn(2, 3)), RuntimeError, "hx must be a tuple (h_0, c_0) of two tensors"),
        ((torch.randn(2, 4, dtype=torch.float64),), RuntimeError, "convert the input (input.to(torch.float32))"),
    ]
    for args, kind, text in cases:
        with pytest.raises(kind) as caught:
            cell(*args)
        assert text in str(caught.value)
    with pytest.raises(ValueError, match="Expected hidden to be 1D or 2D, got 3D"):
        fastrnn.GRUCell(4, 3)(torch.randn(2, 4), torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fastrnn.RNNCell(4, 3, nonlinearity="gelu")


def test_a_kernel_backend_without_fused_cells_is_refused(monkeypatch):
    """A kernel backend outside backends.CELL_STEP_BACKENDS is refused, naming what runs the cell instead."""
    skip_unavailable("triton")
    monkeypatch.setattr(fastrnn.backends, "CELL_STEP_BACKENDS", ("cpp", "reference"))
    with pytest.raises(fastrnn.BackendUnavailableError,
                       match="backend='triton' has no fused nn.GRUCell kernel yet; use backend='aten'"):
        fastrnn.GRUCell(4, 3, backend="triton")(torch.randn(2, 4))


@pytest.mark.parametrize("mode", MODES)
def test_parameters_state_dict_and_initialisation_are_nn_s(mode):
    ours_cls, torch_cls = TWINS[mode]
    ours, theirs = ours_cls(20, 30), torch_cls(20, 30)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    bound = 30 ** -0.5
    assert all(p.abs().max() <= bound and p.std() > bound / 3 for p in ours.parameters())
    assert not list(ours_cls(2, 3, bias=False).state_dict().keys() - {"weight_ih", "weight_hh"})
    theirs.load_state_dict(ours.state_dict())
    assert getattr(ours, "nonlinearity", None) == getattr(theirs, "nonlinearity", None)


@pytest.mark.parametrize("mode", MODES)
def test_torch_func_transforms(mode):
    """vmap and jacrev run the cell's plain ops (a transform's tensors have no storage for a kernel)."""
    torch.manual_seed(6)
    ours, theirs = make_pair(mode, "auto", 3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    got = torch.func.vmap(lambda xs: first(ours(xs)))(x)
    expected = torch.stack([first(theirs(xs)) for xs in x])  # nn.LSTMCell has no batching rule for vmap
    assert rel_error(got, expected) < 1e-12
    jac = torch.func.jacrev(lambda xs: first(ours(xs)))(x[0])
    expected_jac = torch.autograd.functional.jacobian(lambda xs: first(theirs(xs)), x[0])
    assert rel_error(jac, expected_jac) < 1e-12


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_SKIP)])
@pytest.mark.parametrize("mode", MODES)
def test_auto_runs_the_fused_kernel_where_it_has_one(device, mode):
    """auto: the cpp kernels on a CPU in float32/float64, nn's own code elsewhere (it picks no GPU cell step yet)
    and under autocast (which casts nn's cells' inner ops)."""
    ours = TWINS[mode][0](3, 4, device=device)
    x = torch.randn(2, 3, device=device)
    ours(x)
    cpu_kernels = fastrnn.backends.runs("cpp", torch.device("cpu"))
    assert ours.last_backend == ("cpp" if device == "cpu" and cpu_kernels else "aten")
    ours.bfloat16()(x.bfloat16())
    assert ours.last_backend == "aten"
    with torch.autocast(device):
        ours.float()(x)
    assert ours.last_backend == "aten"
