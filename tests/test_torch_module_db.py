"""fastrnn.LSTM / fastrnn.GRU driven by torch's own ModuleInfo entries for nn.LSTM / nn.GRU.

The installed torch ships, in torch.testing._internal.common_modules, the inputs its test_modules.py
runs nn.LSTM and nn.GRU on (module_inputs_func) and the bad inputs with the exception type and the
regular expression its error tests expect (module_error_inputs_func). Here every module input runs
through fastrnn's layer and the equal nn layer, on every CPU backend, in float64 and float32, in
training and eval mode: outputs, final states and the gradients of the inputs, the initial states and
every parameter must agree, and so must the unbatched result with torch's own batched reference.
Every error input must raise the same exception type, with a message torch's regex matches.

torch's test helpers import `expecttest` (in the `test` extra); without it this module is skipped.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

import fastrnn

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def _torch_module_db():
    """torch's common_modules, leaving torch.backends' global flags settable (importing torch's test
    utilities freezes them for the whole process, which other tests here must not inherit)."""
    frozen = torch.backends.flags_frozen()
    try:
        import torch.testing._internal.common_modules as common_modules
    except ImportError as error:  # expecttest missing
        pytest.skip(f"torch's ModuleInfo tests need {error.name or error} (pip install expecttest; in the test extra)",
                    allow_module_level=True)
    finally:
        if not frozen:  # undo torch.backends.disable_global_flags(), which has no public inverse
            torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
            assert not torch.backends.flags_frozen()
    return common_modules


common_modules = _torch_module_db()
INFOS = {info.module_cls.__name__: info for info in common_modules.module_db if info.module_cls in (nn.LSTM, nn.GRU)}
BACKENDS = ["auto", "cpp", "reference", "aten"]
DTYPES = [torch.float64, torch.float32]
# float64: the kernels and torch agree to rounding. float32: each result's error against float64 at
# most twice torch's own float32 error, plus a floor of a few float32 roundings of its magnitude.
FLOAT64 = dict(rtol=1e-10, atol=1e-12)
FLOAT32_FACTOR, FLOAT32_FLOOR = 2.0, 8 * torch.finfo(torch.float32).eps


def test_torch_has_module_infos_for_lstm_and_gru():
    assert set(INFOS) == {"LSTM", "GRU"}
    for info in INFOS.values():
        assert info.train_and_eval_differ  # so both modes are exercised below, as torch's tests do
        assert info.module_error_inputs_func is not None


def _module_inputs(cell, dtype, training, requires_grad=True):
    info = INFOS[cell]
    inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=requires_grad, training=training)
    assert len(inputs) >= 16, "torch's ModuleInfo gave fewer inputs than it has for years: check the entry"
    return inputs


def _pair(cell, constructor, dtype, backend, training):
    """(nn module, fastrnn module) built from torch's constructor input, with equal weights."""
    args, kwargs = constructor.args, constructor.kwargs
    theirs = getattr(nn, cell)(*args, **kwargs).to(dtype).train(training)
    ours = getattr(fastrnn, cell)(*args, **kwargs, backend=backend).to(dtype).train(training)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _fresh(value):
    """A leaf copy of every tensor (keeping requires_grad), so that each module gets its own graph."""
    return tree_map(lambda t: t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t,
                    value)


def _run(module, forward, args, grad_outputs=None):
    """Outputs, then the gradients of the inputs and initial states, then those of every parameter
    (by name), after a backward with `grad_outputs` (random when None; returned)."""
    out = module(*args, **forward.kwargs)
    outputs = tree_leaves(out)
    if grad_outputs is None:
        grad_outputs = [torch.randn_like(t) for t in outputs]
    torch.autograd.backward(outputs, [g.to(t.dtype) for g, t in zip(grad_outputs, outputs)])
    inputs = tree_leaves(args)
    assert all(t.requires_grad and t.grad is not None for t in inputs)
    params = sorted(module.named_parameters())
    assert all(p.grad is not None for _, p in params), "a parameter got no gradient"
    results = {f"output {i}": t.detach() for i, t in enumerate(outputs)}
    results.update({f"gradient of input {i}": t.grad for i, t in enumerate(inputs)})
    results.update({f"gradient of {name}": p.grad for name, p in params})
    return out, results, grad_outputs


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_module_inputs_match_nn(cell, backend, dtype, training):
    torch.manual_seed(0)
    for index, module_input in enumerate(_module_inputs(cell, dtype, training)):
        where = f"input {index}: {module_input.constructor_input.kwargs}"
        theirs, ours = _pair(cell, module_input.constructor_input, dtype, backend, training)
        forward = module_input.forward_input
        their_out, their_results, grad_outputs = _run(theirs, forward, _fresh(forward.args))
        our_out, our_results, _ = _run(ours, forward, _fresh(forward.args), grad_outputs)
        assert len(tree_leaves(our_out)) == (3 if cell == "LSTM" else 2), where
        assert our_results.keys() == their_results.keys(), where
        # torch's reference: the unbatched input run as a batch of one, then squeezed.
        torch.testing.assert_close(our_out, module_input.reference_fn(ours, *_fresh(forward.args), **forward.kwargs),
                                   rtol=0, atol=0, msg=lambda m: f"{where}, against the batched reference: {m}")
        if dtype == torch.float64:
            for key, value in our_results.items():
                torch.testing.assert_close(value, their_results[key], **FLOAT64, msg=lambda m: f"{where}, {key}: {m}")
            continue
        exact, _ = _pair(cell, module_input.constructor_input, torch.float64, "reference", training)
        exact.load_state_dict(theirs.state_dict())
        args64 = tree_map(lambda t: t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor)
                          else t, forward.args)
        _, exact_results, _ = _run(exact, forward, args64, grad_outputs)
        for key, value in our_results.items():
            truth = exact_results[key]
            ours_error = (value.double() - truth).abs().max().item()
            torchs_error = (their_results[key].double() - truth).abs().max().item()
            bound = FLOAT32_FACTOR * torchs_error + FLOAT32_FLOOR * max(1.0, truth.abs().max().item())
            assert ours_error <= bound, f"{where}, {key}: error {ours_error:.3g} against float64, torch's {torchs_error:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_error_inputs_raise_torch_type_and_text(cell, backend, dtype):
    info = INFOS[cell]
    error_inputs = info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=True)
    assert len(error_inputs) >= 10
    constructions = forwards = 0
    for error_input in error_inputs:
        module_input = error_input.module_error_input
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        if error_input.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                getattr(nn, cell)(*args, **kwargs)
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                getattr(fastrnn, cell)(*args, **kwargs, backend=backend)
            constructions += 1
        else:
            assert error_input.error_on == common_modules.ModuleErrorEnum.FORWARD_ERROR
            forward = module_input.forward_input
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                getattr(nn, cell)(*args, **kwargs)(*forward.args, **forward.kwargs)
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                getattr(fastrnn, cell)(*args, **kwargs, backend=backend)(*forward.args, **forward.kwargs)
            forwards += 1
    assert constructions and forwards
