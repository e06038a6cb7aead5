"""fastrnn.projection: the input projection on the cpp kernels' own for small products and on oneDNN where it
measures faster, equal to F.linear within float32 rounding, forward, backward and differentiated twice; F.linear
wherever neither may run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_error
from fastrnn import _ext, projection

ONEDNN = pytest.mark.skipif(projection.choice() != "onednn",
                            reason=f"this CPU's measurement chose {projection.choice()!r} over oneDNN's linear")
OWN = pytest.mark.skipif(projection.own_max_work() == 0,
                         reason="the cpp kernels' projection does not run here (not built, an instruction set "
                         "without AVX-512, or FASTRNN_PROJECTION_GEMM=matmul)")


def _forget_choice():
    """Makes the next call read FASTRNN_PROJECTION_GEMM and measure again (both are kept for the process)."""
    projection.choice.cache_clear()
    projection._forced.cache_clear()


def _spy(monkeypatch):
    """Records the products that run on oneDNN's linear and on the cpp kernels' projection."""
    projection.choice()  # measured (on oneDNN's linear too) before the spying starts
    called = {"onednn": [], "cpp": []}
    real_onednn, real_own = projection._onednn_linear, projection._own_projection
    monkeypatch.setattr(projection, "_onednn_linear", lambda *args: called["onednn"].append(args) or real_onednn(*args))
    monkeypatch.setattr(projection, "_own_projection",
                        lambda work: (lambda k: k is not None and called["cpp"].append(work) or k)(real_own(work)))
    return called


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
@pytest.mark.parametrize("rows", [370, 40000])  # the cpp projection's size, and oneDNN's (past OWN_MAX_WORK)
def test_forward_and_gradients_match_float64_as_closely_as_torch_matmul(bias, rows, monkeypatch):
    called = _spy(monkeypatch)
    exact_inputs = [t.requires_grad_() if t is not None else None for t in _problem(rows=rows, bias=bias)]
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
    # (the backward's weight gradients may run on oneDNN at either size)
    assert bool(called["cpp"]) == (rows == 370 and projection.own_max_work() > 0) and (rows == 370 or called["onednn"])


@OWN
def test_two_biases_are_added_as_one_with_their_gradients():
    x, weight, bias = (t.float().requires_grad_() for t in _problem(rows=31))
    bias2 = torch.randn_like(bias).requires_grad_()
    ours = projection.linear(x, weight, bias, None, bias2)
    expected = F.linear(x, weight, bias + bias2)
    assert rel_error(ours, expected) < 1e-6
    grads = torch.autograd.grad(ours.square().sum(), [x, weight, bias, bias2])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, weight, bias, bias2])
    assert all(rel_error(g, e) < 1e-5 for g, e in zip(grads, expected_grads))


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
def test_f_linear_wherever_onednn_and_the_cpp_projection_may_not_run(case, monkeypatch):
    x, weight, bias = _problem()
    spied = _spy(monkeypatch)
    if case == "float64":
        out = projection.linear(x, weight, bias)
    elif case == "functorch":
        x, weight, bias = x.float(), weight.float(), bias.float()
        out = torch.func.vmap(lambda row: projection.linear(row, weight, bias))(x)
    else:
        x, weight, bias = x.float(), weight.float(), bias.float()
        out = torch.compile(projection.linear, backend="eager", fullgraph=True)(x, weight, bias)
    assert spied == {"onednn": [], "cpp": []}
    assert rel_error(out, F.linear(x, weight, bias)) < 1e-6


@ONEDNN
def test_a_large_layer_runs_its_projection_on_onednn(monkeypatch):
    import fastrnn

    called = _spy(monkeypatch)
    fastrnn.GRU(128, 128, backend="cpp")(torch.randn(64, 96, 128))  # 3e8 multiply-adds: past OWN_MAX_WORK
    assert len(called["onednn"]) == 1 and called["cpp"] == []


@OWN
def test_a_small_layer_runs_its_projection_on_the_cpp_kernels_with_its_weight_kept(monkeypatch):
    import fastrnn
    from fastrnn.backends import cpp

    called = _spy(monkeypatch)
    layer = fastrnn.LSTM(64, 64, backend="cpp")
    x = torch.randn(128, 1, 64)
    layer(x)  # 2e6 multiply-adds: oneDNN's fixed cost would be as much again
    assert called["onednn"] == [] and called["cpp"] == [128 * 64 * 256]
    assert cpp.packed_weight_bytes(layer) >= 2 * 256 * 64 * 4  # W_hh's panels and W_ih's
    with torch.no_grad():  # an inference: the whole stack in one call, which projects on the same kept panels
        kept = cpp.packed_weight_bytes(layer)
        layer(x)
    assert called["onednn"] == [] and cpp.packed_weight_bytes(layer) == kept


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
    _forget_choice()
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
        _forget_choice()


@OWN
def test_the_cpp_projection_runs_on_avx512_only():
    """Measured on the AVX2 and portable variants it lost to oneDNN's linear at every size: they keep oneDNN."""
    kernels = _ext.extension()
    for isa in [name for name in kernels.cpu_supported_instruction_sets().split(",") if not name.startswith("avx512")]:
        kernels.set_cpu_instruction_set(isa)
        try:
            assert projection.own_max_work() == 0 and projection._own_projection(1) is None
        finally:
            kernels.set_cpu_instruction_set("auto")
    assert projection.own_max_work() == projection.OWN_MAX_WORK[kernels.cpu_supported_instruction_sets().split(",")[0]]


@OWN
def test_small_products_run_on_the_cpp_projection_whichever_gemm_was_measured(monkeypatch):
    """A CPU whose measurement kept torch's matmul (MKL running well, as on Intel cores) still runs the small
    products on the cpp kernels', which beat both there."""
    called = _spy(monkeypatch)
    monkeypatch.setattr(projection, "choice", lambda: "matmul")
    x, weight, bias = (t.float() for t in _problem(rows=31))
    assert rel_error(projection.linear(x, weight, bias), F.linear(x, weight, bias)) < 1e-6
    assert called["cpp"] and not called["onednn"]


def test_small_products_stay_off_onednn(monkeypatch):
    called = _spy(monkeypatch)
    x, weight, bias = (t.float() for t in _problem(rows=3, features=5, outputs=7))
    assert x.numel() * weight.shape[0] < projection.LINEAR_MIN_WORK
    assert rel_error(projection.linear(x, weight, bias), F.linear(x, weight, bias)) < 1e-6
    assert called["onednn"] == []


def test_matmul_forced_keeps_every_projection_on_torch_matmul(monkeypatch):
    monkeypatch.setenv(projection.ENVIRONMENT_VARIABLE, "matmul")
    _forget_choice()
    try:
        called = _spy(monkeypatch)
        x, weight, bias = (t.float() for t in _problem(rows=3, features=5, outputs=7))
        assert torch.equal(projection.linear(x, weight, bias), F.linear(x, weight, bias))
        assert called == {"onednn": [], "cpp": []}
    finally:
        _forget_choice()
