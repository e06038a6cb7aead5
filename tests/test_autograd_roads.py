"""The autograd roads a model takes beyond one backward, on every kernel backend, against nn.LSTM/nn.GRU:
second derivatives (gradient penalties, Hessian-vector products), torch.func transforms (jacrev, vmap,
jvp), batched gradients, in-place ops on the output, pruned weights and shape inference on meta tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as prune
from torch.func import functional_call, jacrev, jvp, vmap
from torch.nn.utils.rnn import PackedSequence

from conftest import CUDA_SKIP, detached, make_pair, random_inputs, rel_error, skip_unavailable
from fastrnn import functional

BACKENDS = ["reference", "cpp", "triton", pytest.param("cuda", marks=CUDA_SKIP)]
CONFIGS = [
    ("LSTM", dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)),
    ("LSTM", dict(input_size=4, hidden_size=5, proj_size=2, batch_first=True)),
    ("GRU", dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)),
    ("GRU", dict(input_size=4, hidden_size=3, bias=False, batch_first=True)),
]
IDS = [cell + "-" + "-".join(f"{k}={v}" for k, v in config.items()) for cell, config in CONFIGS]


def _device(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def _pair(backend: str, cell: str, **config):
    """A fastrnn layer on `backend` and the nn layer with equal weights, on the backend's device (skipped with
    the reason where the backend cannot run)."""
    skip_unavailable(backend, _device(backend))
    return make_pair(cell, backend, device=_device(backend), **config)


def _data(x):
    return x.data if isinstance(x, PackedSequence) else x


def _penalty_gradients(module, x, hx):
    """A gradient penalty (the squared norm of d loss / d input) and its gradient with respect to the input,
    the initial states and every parameter: second derivatives through the recurrence."""
    leaves = [_data(x), *((hx if isinstance(hx, tuple) else (hx,)) if hx is not None else ())]
    for t in leaves:
        t.requires_grad_(True)
    output, _ = module(x, hx)
    out = _data(output)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    (d_input,) = torch.autograd.grad((out * out * weights).sum(), leaves[0], create_graph=True)
    penalty = d_input.square().sum()
    return [penalty, *torch.autograd.grad(penalty, leaves + list(module.parameters()))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_second_derivatives_equal_nn(backend, cell, config, packed):
    ours, theirs = _pair(backend, cell, **config)
    lengths = [6, 2, 5] if packed else None
    x, hx = random_inputs(ours, 3, 6, lengths=lengths, device=_device(backend), seed=7)
    expected = _penalty_gradients(theirs, *detached(x, hx))
    got = _penalty_gradients(ours, *detached(x, hx))
    for name, a, b in zip(["penalty", "d_input", "d_h0", "d_c0"] + [n for n, _ in ours.named_parameters()], got, expected):
        assert rel_error(a, b) < 1e-10, name


# Without Triton: gradgradcheck runs the forward hundreds of times, minutes in Triton's interpreter; the
# second-derivative test above covers the Triton forward under the same backward.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([4, 3, 1], True)], ids=["full", "ragged-reverse"])
def test_gradgradcheck_of_the_layer(backend, cell, lengths, reverse):
    skip_unavailable(backend, _device(backend))
    config = dict(input_size=2, hidden_size=3, proj_size=2) if cell == "LSTM" else dict(input_size=2, hidden_size=3)
    ours, _ = make_pair(cell, backend, device=_device(backend), bidirectional=reverse, **config)
    x, hx = random_inputs(ours, 3, 4, device=_device(backend), seed=3)
    states = list(hx) if isinstance(hx, tuple) else [hx]

    def layer(x, *states):
        packed = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths))
        output, finals = ours(packed, tuple(states) if cell == "LSTM" else states[0])
        finals = finals if isinstance(finals, tuple) else (finals,)
        return (_data(output), *finals)

    inputs = [t.requires_grad_() for t in (x, *states)]
    assert torch.autograd.gradgradcheck(layer, inputs)


def test_the_backward_of_a_kernel_backend_is_differentiated_by_autograd_not_treated_as_constant():
    """The bug this guards against: d(penalty)/d(weight_ih) came out wrong without an error because the
    backward was once_differentiable. Finite differences are the independent judge here."""
    skip_unavailable("cpp")
    ours, _ = make_pair("LSTM", "cpp", input_size=2, hidden_size=3)
    x, _ = random_inputs(ours, 2, 4, seed=11)
    weight = ours.weight_ih_l0

    def penalty():
        xi = x.detach().requires_grad_()
        (d_input,) = torch.autograd.grad(ours(xi)[0].square().sum(), xi, create_graph=True)
        return d_input.square().sum()

    (analytic,) = torch.autograd.grad(penalty(), weight)
    numeric = torch.zeros_like(weight)
    flat = weight.data.view(-1)
    for index in range(weight.numel()):
        flat[index] += 1e-6
        plus = penalty().item()
        flat[index] -= 2e-6
        minus = penalty().item()
        flat[index] += 1e-6
        numeric.view(-1)[index] = (plus - minus) / 2e-6
    assert rel_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,config", CONFIGS, ids=IDS)
def test_jacrev_over_parameters_equals_nn(backend, cell, config):
    ours, theirs = _pair(backend, cell, **config)
    x, hx = random_inputs(ours, 2, 4, device=_device(backend), seed=5)

    def jacobian(module):
        params = dict(module.named_parameters())
        return jacrev(lambda p: functional_call(module, p, (x, hx))[0])(params)

    expected, got = jacobian(theirs), jacobian(ours)
    for name in expected:
        assert rel_error(got[name], expected[name]) < 1e-10, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,config", CONFIGS, ids=IDS)
def test_vmap_and_jvp_equal_nn(backend, cell, config):
    """nn.LSTM/nn.GRU have no batching rule for vmap: the judge is nn called on each sample, and for jvp nn's
    Jacobian (reverse mode) applied to the tangent."""
    ours, theirs = _pair(backend, cell, **config)
    batch = torch.randn(4, 6, config["input_size"], dtype=torch.float64, device=_device(backend))  # 4 unbatched sequences
    mapped = vmap(lambda s: ours(s)[0])(batch)
    for sample, got in zip(batch, mapped):
        assert rel_error(got, theirs(sample)[0]) < 1e-10
    tangent = torch.randn_like(batch[0])
    _, ours_tangent = jvp(lambda s: ours(s)[0], (batch[0],), (tangent,))
    jacobian = torch.autograd.functional.jacobian(lambda s: theirs(s)[0], batch[0])
    nn_tangent = (jacobian.flatten(0, 1).flatten(1) @ tangent.flatten()).view_as(ours_tangent)
    assert rel_error(ours_tangent, nn_tangent) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell,config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_batched_gradients_equal_nn(backend, cell, config, packed):
    ours, theirs = _pair(backend, cell, **config)
    x, hx = random_inputs(ours, 3, 5, lengths=[5, 3, 4] if packed else None, device=_device(backend), seed=2)
    results = []
    for module in (ours, theirs):
        xi, hi = detached(x, hx)
        _data(xi).requires_grad_()
        out = _data(module(xi, hi)[0])
        grads = torch.randn(6, *out.shape, dtype=out.dtype, device=out.device, generator=torch.Generator().manual_seed(1))
        results.append(torch.autograd.grad(out, [_data(xi), *module.parameters()], grads, is_grads_batched=True))
    for got, expected in zip(*results):
        assert rel_error(got, expected) < 1e-10


def test_torch_compile_backward_still_traces_the_fused_kernels():
    """The differentiable backward is an eager road only: torch.compile traces the fused one, without a break."""
    skip_unavailable("cpp")
    ours, theirs = make_pair("GRU", "cpp", input_size=3, hidden_size=4)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    x, hx = random_inputs(ours, 2, 5, seed=4)
    (xa, ha), (xb, hb) = detached(x, hx), detached(x, hx)
    xa.requires_grad_(), xb.requires_grad_()
    torch.autograd.backward(compiled(xa, ha)[0].sum())
    torch.autograd.backward(theirs(xb, hb)[0].sum())
    assert rel_error(xa.grad, xb.grad) < 1e-10


@pytest.mark.parametrize("backend", ["auto", "aten", *BACKENDS])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_in_place_op_on_the_output_before_backward(backend, cell, layout):
    """nn.ReLU(inplace=True) after the layer, as nn.LSTM/nn.GRU allow it: same gradients."""
    ours, theirs = _pair(backend, cell, input_size=3, hidden_size=4,
                             batch_first=layout == "batch_first")
    x, hx = random_inputs(ours, 2, 5, unbatched=layout == "unbatched", device=_device(backend), seed=9)
    grads = []
    for module in (ours, theirs):
        xi, hi = detached(x, hx)
        xi.requires_grad_()
        out = module(xi, hi)[0]
        torch.nn.functional.relu(out, inplace=True)
        grads.append(torch.autograd.grad((out * out).sum(), [xi, *module.parameters()]))
    for got, expected in zip(*grads):
        assert rel_error(got, expected) < 1e-10


@pytest.mark.parametrize("backend", ["auto", "aten", *BACKENDS])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_pruned_recurrent_weight(backend, cell):
    """torch.nn.utils.prune replaces weight_hh_l0 by weight_hh_l0_orig * mask, recomputed before each forward."""
    ours, theirs = _pair(backend, cell, input_size=3, hidden_size=4, num_layers=2)
    for module in (ours, theirs):
        prune.l1_unstructured(module, "weight_hh_l0", amount=0.5)
    theirs.weight_hh_l0_orig.data.copy_(ours.weight_hh_l0_orig)
    theirs.weight_hh_l0_mask.copy_(ours.weight_hh_l0_mask)
    x, hx = random_inputs(ours, 2, 5, device=_device(backend), seed=6)
    results = []
    for module in (ours, theirs):
        out = module(*detached(x, hx))[0]
        results.append([out, *torch.autograd.grad(out.square().sum(), [module.weight_hh_l0_orig, module.weight_ih_l1])])
    for got, expected in zip(*results):
        assert rel_error(got, expected) < 1e-10
    assert bool((results[0][1][ours.weight_hh_l0_mask == 0] == 0).all())  # the pruned entries get no gradient


@pytest.mark.parametrize("backend", ["auto", "aten", "reference"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_meta_tensors_infer_nn_shapes(backend, cell):
    ours, theirs = make_pair(cell, backend, device="meta", input_size=3, hidden_size=4, num_layers=2,
                             bidirectional=True, batch_first=True)
    x = torch.empty(2, 7, 3, device="meta", dtype=torch.float64)
    got, expected = ours(x), theirs(x)
    assert got[0].device.type == "meta" and got[0].shape == expected[0].shape
    finals = got[1] if cell == "LSTM" else (got[1],)
    nn_finals = expected[1] if cell == "LSTM" else (expected[1],)
    assert [f.shape for f in finals] == [f.shape for f in nn_finals]


def test_batched_gradients_are_detected():
    """The guard behind is_grads_batched: a batched gradient reaching the backward (it has no storage for a
    kernel to read) is recognised as one."""
    grads = torch.randn(3, 4)
    assert not functional._vmapped(grads)
    seen = []
    vmap(lambda g: seen.append(functional._vmapped(g)) or g)(grads)
    assert seen == [True]
