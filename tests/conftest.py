"""Shared helpers: build a fastrnn layer and its torch twin with equal weights, run both, compare."""

from __future__ import annotations

import functools
import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter; it must be chosen before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn

CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_SKIP)]
CELLS = {"LSTM": (fastrnn.LSTM, nn.LSTM), "GRU": (fastrnn.GRU, nn.GRU),
         "RNN_TANH": (functools.partial(fastrnn.RNN, nonlinearity="tanh"), functools.partial(nn.RNN, nonlinearity="tanh")),
         "RNN_RELU": (functools.partial(fastrnn.RNN, nonlinearity="relu"), functools.partial(nn.RNN, nonlinearity="relu"))}

# The shape grid of the GPU-only kernel tests (tests/test_cuda_gpu.py, tests/test_triton.py). "full" by
# default; FASTRNN_GPU_GRID=bounded keeps the edge sizes (1, odd, past a tile) at lengths whose CPU
# references stay cheap: what bench/gpu_suite.sh runs inside its time budget.
GPU_GRIDS = {
    "full": dict(seq_len=[1, 7, 256], hidden=[1, 17, 64, 256, 1024], batch=[1, 3, 64, 257]),
    "bounded": dict(seq_len=[1, 33], hidden=[1, 17, 256], batch=[1, 64]),
}
GPU_GRID = GPU_GRIDS[os.environ.get("FASTRNN_GPU_GRID", "full") or "full"]


def _cpu_instruction_sets() -> list[str]:
    """The instruction-set variants of the cpp kernels this CPU runs (none where the kernels are unavailable)."""
    if fastrnn.backends.unavailable_reason("cpp", "cpu") or fastrnn._ext.unavailable_reason():
        return []
    return fastrnn._ext.extension().cpu_supported_instruction_sets().split(",")


CPU_INSTRUCTION_SETS = _cpu_instruction_sets()


@pytest.fixture(params=CPU_INSTRUCTION_SETS)
def isa(request):
    """Run the test on one instruction-set variant of the cpp kernels, then go back to the one before."""
    kernels = fastrnn._ext.extension()
    before = kernels.cpu_instruction_set()
    kernels.set_cpu_instruction_set(request.param)
    yield request.param
    kernels.set_cpu_instruction_set(before)


@pytest.fixture(params=[1, 2])
def threads(request):
    """Run the test with torch (and so the kernels) on 1, then 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN/inf anywhere make it inf, so they never pass."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def skip_unavailable(backend: str, device: str = "cpu", cell: str | None = None) -> None:
    """Skip the test, saying why, where `backend` cannot run on `device` (or has no kernels for `cell`)."""
    reason = fastrnn.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable on {device}: {reason}")
    supported = fastrnn.backends.CELLS_OF.get(backend)
    if cell is not None and supported is not None and cell not in supported:
        pytest.skip(f"backend {backend!r} has no {cell} kernels yet (it has {', '.join(supported)})")


def make_pair(cell: str, backend: str, device="cpu", dtype=torch.float64, **config):
    """A fastrnn layer and an nn layer of the same config holding equal weights."""
    ours_cls, torch_cls = CELLS[cell]
    ours = ours_cls(device=device, dtype=dtype, backend=backend, **config)
    theirs = torch_cls(device=device, dtype=dtype, **config)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def random_inputs(module: nn.Module, batch: int, seq_len: int, *, lengths=None, unbatched=False,
                  with_state=True, enforce_sorted=False, device="cpu", dtype=torch.float64, seed=None):
    """Fresh random (input, hx) for `module`; input is a PackedSequence when lengths are given."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    layers = module.num_layers * (2 if module.bidirectional else 1)
    h_size = getattr(module, "proj_size", 0) or module.hidden_size
    if unbatched:
        x = randn(seq_len, module.input_size)
        state_shapes = [(layers, h_size), (layers, module.hidden_size)]
    else:
        shape = (batch, seq_len) if module.batch_first else (seq_len, batch)
        x = randn(*shape, module.input_size)
        state_shapes = [(layers, batch, h_size), (layers, batch, module.hidden_size)]
    if lengths is not None:
        x = pack_padded_sequence(x, torch.tensor(lengths), batch_first=module.batch_first, enforce_sorted=enforce_sorted)
    hx = None
    if with_state:
        states = [randn(*shape) for shape in state_shapes[: 2 if module.mode == "LSTM" else 1]]
        hx = tuple(states) if module.mode == "LSTM" else states[0]
    return x, hx


def leaves(x, hx) -> list[torch.Tensor]:
    """Mark input and states as requiring grad; returns them (the tensors gradients are taken of)."""
    tensors = [x.data if isinstance(x, PackedSequence) else x]
    if hx is not None:
        tensors += list(hx) if isinstance(hx, tuple) else [hx]
    for t in tensors:
        t.requires_grad_(True)
    return tensors


def run(module: nn.Module, x, hx, seed: int = 0) -> dict[str, torch.Tensor]:
    """Output, final states and the gradient of every input, state and parameter under a random
    linear loss (so every output element and state contributes with its own weight)."""
    inputs = leaves(x, hx)
    output, states = module(x, hx)
    states = list(states) if isinstance(states, tuple) else [states]
    out = output.data if isinstance(output, PackedSequence) else output
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)).sum() for t in [out, *states])
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, inputs + params, allow_unused=False)
    result = {"output": out, **{f"state{i}": s for i, s in enumerate(states)}}
    # A torch.compile wrapper prefixes parameter names with "_orig_mod."; compare by the layer's own names.
    names = ["d_input", "d_h0", "d_c0"][: len(inputs)] + [
        f"d_{n.removeprefix('_orig_mod.')}" for n, _ in module.named_parameters()
    ]
    result.update(zip(names, grads))
    return result


def detached(x, hx):
    """Copies of (x, hx) that are independent leaves, so two modules can each take gradients."""
    if isinstance(x, PackedSequence):
        x = PackedSequence(x.data.detach().clone(), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    else:
        x = x.detach().clone()
    if hx is not None:
        hx = tuple(h.detach().clone() for h in hx) if isinstance(hx, tuple) else hx.detach().clone()
    return x, hx


def compare(ours: dict, theirs: dict) -> dict[str, float]:
    assert ours.keys() == theirs.keys()
    return {name: rel_error(ours[name], theirs[name]) for name in theirs}


def spy_on_road(module: nn.Module, road: str) -> list[bool]:
    """Counts the forwards a short road of `module` (its method `road`, e.g. "_forward_inference") finished: one
    entry per call, True where it returned a result rather than None (and the general road ran)."""
    taken = []
    method = getattr(module, road)

    def counted(*args):
        result = method(*args)
        taken.append(result is not None)
        return result

    setattr(module, road, counted)
    return taken

