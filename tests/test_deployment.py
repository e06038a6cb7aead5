"""The deployment roads of a trained model, against nn.LSTM/nn.GRU/nn.RNN: torch.jit.trace (saved, loaded, on new
shapes), torch.jit.script's refusal, torch.export (saved, loaded, differentiated) and torch.compile of an
inference auto gives to torch's own code. ONNX export: test_onnx_export.py."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from conftest import CELLS, CUDA_SKIP, make_pair, rel_error, skip_unavailable

ALL_CELLS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]

# auto and every CPU kernel backend: under tracing and export each runs torch's own code, whatever was asked.
BACKENDS = ["auto", "cpp", "reference"]
CONFIGS = [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, batch_first=True),
]
IDS = ["1-layer", "2-layer-bidirectional-batch_first"]


def _inputs(module, batch: int, seq_len: int, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, seq_len) if module.batch_first else (seq_len, batch)
    device = module.weight_ih_l0.device
    return torch.randn(*shape, module.input_size, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _pair(cell, backend, config, dtype=torch.float32):
    device = "cuda" if backend in GPU_BACKENDS else "cpu"
    skip_unavailable(backend, device, cell)
    return make_pair(cell, backend, device=device, dtype=dtype, **config)


# The GPU kernel backends, for the road that keeps fastrnn's kernels in the program (torch.export).
GPU_BACKENDS = ("cuda", "triton")


# --- torch.jit.trace ---------------------------------------------------------------------------


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_trace_holds_torch_rnn_op_and_runs_new_shapes_after_save_and_load(grad, backend, cell, config):
    ours, theirs = _pair(cell, backend, config)
    example = _inputs(ours, 3, 4, seed=0)
    others = [_inputs(ours, 5, 9, seed=1), _inputs(ours, 1, 2, seed=2)]
    with torch.set_grad_enabled(grad), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # check_inputs: torch re-traces on each and compares the graphs (equal across invocations).
        traced = torch.jit.trace(ours, (example,), check_inputs=[(x,) for x in others])
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert f"aten::{cell.lower()}" in kinds and "prim::PythonOp" not in kinds
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for x in others:
        got, expected = loaded(x), theirs(x)
        assert rel_error(got[0], expected[0]) < 1e-6
        finals = got[1] if cell == "LSTM" else (got[1],)
        nn_finals = expected[1] if cell == "LSTM" else (expected[1],)
        for a, b in zip(finals, nn_finals):
            assert rel_error(a, b) < 1e-6


def test_a_traced_module_trains_like_nn():
    ours, theirs = _pair("LSTM", "cpp", dict(input_size=3, hidden_size=4))
    x = _inputs(ours, 2, 5, seed=3)
    traced = torch.jit.trace(ours, (x,))
    grads = [torch.autograd.grad(m(x)[0].square().sum(), list(m.parameters())) for m in (traced, theirs)]
    for got, expected in zip(*grads):
        assert rel_error(got, expected) < 1e-6


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_script_refuses_with_the_alternatives(cell):
    model = nn.Sequential(CELLS[cell][0](3, 4))
    with pytest.raises(RuntimeError, match=r"torch.jit.script cannot compile fastrnn\..*torch\.jit\.trace"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's own deprecation notice
            torch.jit.script(model)


# --- torch.export and torch.compile --------------------------------------------------------------


@pytest.mark.parametrize("backend", [*BACKENDS, *(pytest.param(b, marks=CUDA_SKIP) for b in GPU_BACKENDS)])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_torch_export_saves_loads_and_differentiates(backend, cell):
    ours, theirs = _pair(cell, backend, CONFIGS[1], dtype=torch.float64)
    example = _inputs(ours, 3, 4, seed=0, dtype=torch.float64)
    batch, steps = torch.export.Dim("batch"), torch.export.Dim("steps")
    program = torch.export.export(ours, (example,), dynamic_shapes=({0: batch, 1: steps},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    exported = torch.export.load(buffer).module()
    x = _inputs(ours, 5, 7, seed=1, dtype=torch.float64)
    assert rel_error(exported(x)[0], theirs(x)[0]) < 1e-10
    results = []
    for module in (exported, theirs):
        xi = x.clone().requires_grad_()
        loss = module(xi)[0].square().sum()
        results.append(torch.autograd.grad(loss, [xi, *module.parameters()]))
    for got, expected in zip(*results):
        assert rel_error(got, expected) < 1e-10
    xi = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="create_graph=True .* through a torch.export program is not supported"):
        torch.autograd.grad(exported(xi)[0].square().sum(), xi, create_graph=True)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_compiled_inference_with_batch_first(cell):
    """The shapes where auto runs torch's own code eagerly (oneDNN's LSTM) included: torch's batch_first
    output is a strided view, which the op's fake implementation must describe."""
    ours, theirs = _pair(cell, "auto", dict(input_size=4, hidden_size=32, batch_first=True))
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    x = _inputs(ours, 8, 5, seed=0)
    with torch.no_grad():
        got, expected = compiled(x), theirs(x)
    assert rel_error(got[0], expected[0]) < 1e-6
