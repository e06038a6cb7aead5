"""fastrnn.projection: the input projection on oneDNN where it measures faster, equal to F.linear within
float32 rounding, forward, backward and differentiated twice; F.linear wherever oneDNN may not run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_error
from fastrnn import projection

ONEDNN = pytest.mark.skipif(projection.choice() != "onednn",
                            reason=f"this CPU's measurement chose {projection.choice()!r} over oneDNN's linear")


def _problem(rows=370, features=29, outputs=211, seed=0, bias=True):  # above LINEAR_MIN_WORK
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, rows, features, generator=gen, dtype=torch.float64)
    weight = torch.randn(outputs, features, generator=gen, dtype=torch.float64) / features**0.5
    b = torch.randn(outputs, generator=gen, dtype=torch.float64) if bias else None
    return x, weight, b


def test_choice_is_measured_once_names_a_path_and_explain_says_it():
    import fastrnn

    assert projection.choice() in ("onednn", "matmul")
    assert projection.choice.cache_info().currsize == 1
    named = "oneDNN's linear, measured faster" if projection.choice() == "onednn" else "torch's matmul"
    assert f"weight-gradient GEMMs (float32, eager): {named}" in fastrnn.explain("cpu")


@ONEDNN
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_float64_as_closely_as_torch_matmul(bias):
    exact_inputs = [t.requires_grad_() if t is not None else None for t in _problem(bias=bias)]
    exact = F.linear(*exact_inputs)
    weights = torch.randn(exact.shape, dtype=torch.float64)
    exact_grads = torch.autograd.grad((exact * weights).sum(), [t for t in exact_inputs if t is not None])
    results = {}
    for name, fn in (("onednn", projection.linear), ("matmul", F.linear)):
        inputs = [t.detach().float().requires_grad_() if t is not None else None for t in exact_inputs]
        out = fn(*inputs)
        grads = torch.autograd.grad((out * weights.float()).sum(), [t for t in inputs if t is not None])
        results[name] = [rel_error(out, exact)] + [rel_error(g, e) for g, e in zip(grads, exact_grads)]
    for ours, torch_error in zip(results["onednn"], results["matmul"]):
        assert ours <= 2 * torch_error + 1e-7


@ONEDNN
def test_differentiated_twice_like_f_linear():
    inputs = [t.float().requires_grad_() for t in _problem()]

    def second_derivatives(fn):
        out = fn(*inputs)
        (d_x,) = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)
        return torch.autograd.grad(d_x.square().sum(), inputs)

    for ours, expected in zip(second_derivatives(projection.linear), second_derivatives(F.linear)):
        assert rel_error(ours, expected) < 1e-5


@pytest.mark.parametrize("case", ["float64", "functorch", "compiled"])
def test_f_linear_wherever_onednn_may_not_run(case, monkeypatch):
    x, weight, bias = _problem()
    called = []
    monkeypatch.setattr(projection, "_onednn_linear", lambda *args: called.append(args) or F.linear(*args))
    if case == "float64":
        out = projection.linear(x, weight, bias)
    elif case == "functorch":
        x, weight, bias = x.float(), weight.float(), bias.float()
        out = torch.func.vmap(lambda row: projection.linear(row, weight, bias))(x)
    else:
        x, weight, bias = x.float(), weight.float(), bias.float()
        out = torch.compile(projection.linear, backend="eager", fullgraph=True)(x, weight, bias)
    assert called == []
    assert rel_error(out, F.linear(x, weight, bias)) < 1e-6


@ONEDNN
def test_a_layer_runs_its_projection_on_onednn(monkeypatch):
    import fastrnn

    called = []
    real = projection._onednn_linear
    monkeypatch.setattr(projection, "_onednn_linear", lambda *args: called.append(args) or real(*args))
    fastrnn.GRU(64, 64, backend="cpp")(torch.randn(32, 16, 64))  # 6e6 multiply-adds: past LINEAR_MIN_WORK
    assert len(called) == 1


def test_matmul_of_the_weight_gradients_matches_torch():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(96, 1031, generator=gen, dtype=torch.float64)  # (G, T*B): large enough for oneDNN
    b = torch.randn(1031, 353, generator=gen, dtype=torch.float64)
    assert a.shape[0] * a.shape[1] * b.shape[1] >= projection.MATMUL_MIN_WORK
    exact = a @ b
    with torch.no_grad():  # as inside a backward
        ours, torch_ = projection.matmul(a.float(), b.float()), a.float() @ b.float()
    assert rel_error(ours, exact) <= 2 * rel_error(torch_, exact) + 1e-7
    with torch.enable_grad():  # create_graph=True: the product autograd records
        recorded = projection.matmul(a.float().requires_grad_(), b.float())
    assert recorded.grad_fn is not None and "Mm" in type(recorded.grad_fn).__name__


def test_matmul_of_transposed_operands_as_the_backward_passes_them():
    """The weight gradient sum_t dG_t^T X_t as the backward asks for it: a transposed view of the gate gradients
    times the inputs; on oneDNN both operands are copied transposed first (by the cpp kernels where built)."""
    gen = torch.Generator().manual_seed(4)
    grads = torch.randn(1031, 96, generator=gen, dtype=torch.float64)  # (T*B, G)
    inputs = torch.randn(1031, 353, generator=gen, dtype=torch.float64)
    exact = grads.T @ inputs
    with torch.no_grad():
        ours, torch_ = projection.matmul(grads.float().T, inputs.float()), grads.float().T @ inputs.float()
    assert rel_error(ours, exact) <= 2 * rel_error(torch_, exact) + 1e-7
    pieces = [grads[:, :70], torch.randn(1031, 40, generator=gen, dtype=torch.float64)]  # the GRU's two sources
    exact = torch.cat(pieces, dim=1).T @ inputs
    with torch.no_grad():
        ours = projection.transposed_product([p.float() for p in pieces], inputs.float())
    assert rel_error(ours, exact) <= 2 * rel_error(torch.cat(pieces, dim=1).float().T @ inputs.float(), exact) + 1e-7


@pytest.mark.parametrize("value", ["onednn", "matmul", "mkl"])
def test_the_environment_variable_fixes_the_choice(value, monkeypatch):
    monkeypatch.setenv(projection.ENVIRONMENT_VARIABLE, value)
    projection.choice.cache_clear()
    try:
        if value == "mkl":
            with pytest.raises(ValueError, match="FASTRNN_PROJECTION_GEMM must be 'onednn' or 'matmul', got 'mkl'"):
                projection.choice()
        elif value == "onednn" and not torch.backends.mkldnn.is_available():
            with pytest.raises(RuntimeError, match="has no oneDNN"):
                projection.choice()
        else:
            assert projection.choice() == value
    finally:
        projection.choice.cache_clear()


def test_small_products_stay_on_torch_matmul(monkeypatch):
    called = []
    monkeypatch.setattr(projection, "_onednn_linear", lambda *args: called.append(args) or F.linear(*args))
    x, weight, bias = (t.float() for t in _problem(rows=3, features=5, outputs=7))
    assert x.numel() * weight.shape[0] < projection.LINEAR_MIN_WORK
    assert rel_error(projection.linear(x, weight, bias), F.linear(x, weight, bias)) == 0.0
    assert called == []
