"""Backend registry: which implementations of the recurrence exist, which can run, which `auto` picks.

A kernel backend is a module with `unavailable_reason(device)` and the recurrence functions of
`fastrnn.backends.reference` (lstm_forward/backward, gru_forward/backward, rnn_forward/backward; only those of
its cells where CELLS_OF lists them), same arguments and results; those in CELL_STEP_BACKENDS also have the
fused cell step (cell_forward, cell_backward). The forwards also take `save` (default True); save=False is an inference call,
which returns empty tensors for what only the backward needs (LSTM gates and cell states, GRU saved). Every recurrence
function also takes `cache` (default None): a dict the caller keeps for one layer-direction across calls, where a
backend may keep what it prepares from the weights (the cpp kernels' packed W_hh); None keeps nothing. lstm_forward
also takes `scratch_xp` (default False): the caller will not read xp again, so a backend may write the saved gates
over it (the cpp kernels do, for padded input) instead of into a buffer of their own. `aten` is not a module here: it is torch's own nn.LSTM/nn.GRU code path
(cuDNN on GPU), run whole by the layer modules.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from .. import _build_report, _ext
from . import auto
from .auto import Workload

KERNEL_BACKENDS = ("cuda", "triton", "cpp", "reference")
BACKENDS = ("auto", *KERNEL_BACKENDS, "aten")

# The cells (cells.Cell.mode) each kernel backend has layer kernels for, where it lacks some (a backend not
# listed has them all: today every one); auto never picks a backend for a cell it lacks.
CELLS_OF: dict[str, tuple[str, ...]] = {}
# The kernel backends with fused cell steps (cell_forward, cell_backward) for the cell modules.
CELL_STEP_BACKENDS = ("cuda", "triton", "cpp", "reference")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


def tf32_enabled(dtype: torch.dtype) -> bool:
    """Whether the kernel backends (cuda, triton) run float32 matrix products on TF32 tensor cores: while
    torch.backends.cudnn.allow_tf32 is on (torch's default), the switch nn.LSTM/nn.GRU's cuDNN obeys, so
    both run the recurrence in the same arithmetic. torch.backends.cuda.matmul.allow_tf32 (off by default)
    governs torch's own GEMMs, the input projection and the weight gradients among them."""
    return dtype == torch.float32 and torch.backends.cudnn.allow_tf32


def cell_tf32_enabled(dtype: torch.dtype) -> bool:
    """The same for the fused cell steps, which follow the switch nn's cells obey: their GEMMs are torch's
    matmul, so TF32 only while torch.backends.cuda.matmul.allow_tf32 is on (off by default)."""
    return dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32


def check_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    return backend


def _triton_reason(device: torch.device) -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError:
        return "triton is not installed (pip install triton)"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"Triton kernels run on CUDA tensors (or on the CPU under TRITON_INTERPRET=1); got a {device.type} tensor"
    return None


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """None if `backend` can run on `device`, otherwise the reason it cannot."""
    device = torch.device(device)
    if check_name(backend) in ("auto", "aten", "reference"):
        return None
    if backend == "cpp":
        return kernels("cpp").unavailable_reason(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors; got a {device.type} tensor"
        return _ext.cuda_build_reason()
    return _triton_reason(device)


def resolve(backend: str, device: torch.device | str, workload: Workload | None = None, compiling: bool = False) -> str:
    """The concrete backend that runs for a request on `device` (auto: by the rule of backends/auto.py,
    for `workload` and whether torch.compile is tracing); raises if an explicit one can't run."""
    device = torch.device(device)
    if check_name(backend) == "auto":
        return auto.choose(device, workload, compiling, lambda name: runs(name, device))
    reason = unavailable_reason(backend, device)
    if reason is None and backend in ("cpp", "cuda"):
        # compiles the kernels now if pip did not
        reason = _ext.unavailable_reason() if backend == "cpp" else _ext.cuda_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend={backend!r} cannot run: {reason}")
    return backend


def check_cell(backend: str, mode: str, what: str) -> str:
    """`backend`, if it has kernels for the cell `mode`; else BackendUnavailableError naming what runs it."""
    supported = CELLS_OF.get(backend)
    if supported is not None and mode not in supported:
        raise BackendUnavailableError(
            f"backend={backend!r} has no kernels for {what} yet (it has them for {', '.join(supported)}); "
            "use backend='aten' (torch's own code, cuDNN on a GPU), 'auto', or 'reference'")
    return backend


def resolve_while_compiling(backend: str, device: str) -> str:
    """The backend a forward traced by torch.compile runs: resolve() without a workload, decided once
    while tracing and kept out of the graph (Dynamo treats the result as a constant)."""
    return resolve(backend, device, None, compiling=True)


# What torch.compiler.assume_constant_result(resolve_while_compiling) does, without its cost: that function
# imports torch._dynamo (about a second, and triton with it) only to set this attribute, which Dynamo reads
# when it traces a call (tests/test_backends.py checks the two agree).
resolve_while_compiling._dynamo_marked_constant = True


def runs(backend: str, device: torch.device) -> bool:
    """Whether a kernel backend can run on `device`, compiling fastrnn._C first if it needs it."""
    if unavailable_reason(backend, device) is not None:
        return False
    if backend == "cuda":
        return _ext.cuda_unavailable_reason() is None
    return backend != "cpp" or _ext.unavailable_reason() is None


_KERNEL_MODULES: dict[str, ModuleType] = {}


def kernels(backend: str) -> ModuleType:
    """The module implementing the recurrence for a resolved kernel backend (imported on first use)."""
    module = _KERNEL_MODULES.get(backend)
    if module is None:
        if backend not in KERNEL_BACKENDS:
            raise ValueError(f"{backend!r} is not a kernel backend ({', '.join(KERNEL_BACKENDS)})")
        module = _KERNEL_MODULES[backend] = importlib.import_module(f".{backend}", __name__)
    return module


AUTO_HEADER = ("workload", "eager", "compiled: training", "compiled: inference")


def auto_lines(device: torch.device) -> list[str]:
    """What auto runs on `device` for each kind of workload, as a table computed by the rule of
    backends/auto.py with the backends available here (columns: eager, training and inference alike;
    under torch.compile, training; under torch.compile, inference)."""
    picks = auto.picks(device, lambda name: unavailable_reason(name, device) is None)
    rows = [AUTO_HEADER] + [(pick.kind, pick.eager, pick.compiled_training, pick.compiled_inference) for pick in picks]
    widths = [max(len(row[column]) for row in rows) for column in range(len(AUTO_HEADER))]
    lines = [f"  auto on {device.type}, by workload (the rule of fastrnn/backends/auto.py, with the backends available here):"]
    lines += ["    " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += ["    eager: training and inference alike, except in rows that say training (a forward that records a backward)",
              "    or inference (one that records nothing). compiled: under torch.compile (inference: of the row's shape);",
              "    an inference there is a forward with nothing requiring a gradient, no",
              "    autocast and no training-mode dropout. aten: torch's own code (oneDNN on a CPU, cuDNN on a GPU), under",
              "    torch.compile as the opaque op fastrnn::torch_rnn_inference."]
    return lines


def _pair_products_line() -> str:
    """How the cpp kernels' bfloat16 step GEMMs run on this CPU (csrc/cpu/dispatch.cpp's model)."""
    ratio = auto.pair_products_per_fma()
    if ratio == 0:
        return "the step GEMMs on float32 panels (no AVX512_BF16 here)"
    if auto.pair_products_are_fast():  # dispatch.cpp runs them on every shape from the same ratio on
        return f"the step GEMMs on vdpbf16ps pair products ({ratio:.2f}x the fp32 FMA rate here), every shape"
    return (f"the step GEMMs on vdpbf16ps pair products where few rows make moving W_hh the bound (at "
            f"{ratio:.2f}x the fp32 FMA rate here: up to {int(4 * ratio)} rows, {int(16 * ratio)} once a thread's fp32 "
            "panels exceed L2), float32 panels otherwise")


def explain(device: torch.device | str | None = None) -> str:
    """A short report: each backend on `device` (default: cuda if present, else cpu), and what auto picks
    there for each kind of workload."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    lines = [f"fastrnn backends on {device}:"]
    for name in (*KERNEL_BACKENDS, "aten"):
        reason = unavailable_reason(name, device)
        lines.append(f"  {name:<9} {'available' if reason is None else 'unavailable: ' + reason}")
    built = _build_report.summary() if _ext.prebuilt() else None
    if built is not None:
        lines.append(f"  build: {built}")
    lines += auto_lines(device)
    lines.append("  cells (fastrnn.LSTMCell, GRUCell, RNNCell): auto runs "
                 + ("the cpp kernels' fused step in float32/float64 (weights prepacked once), nn's own code otherwise"
                    if device.type == "cpu" else "nn's own code (backend='cuda' or 'triton' runs their fused cell "
                    "step; auto leaves them until they are measured faster than nn's cells on a GPU)"))
    if device.type == "cpu":
        from .. import projection

        how = {"onednn": "oneDNN's linear, measured faster than torch's matmul on this CPU",
               "matmul": "torch's matmul (oneDNN's linear was not measured faster on this CPU)"}[projection.choice()]
        own = projection.own_max_work()
        lines.append("  input projections (float32, eager): " + (
            f"the cpp kernels' own up to 2^{own.bit_length() - 1} multiply-adds (csrc/cpu/projection.h), beyond "
            f"that {how}" if own else how))
        if unavailable_reason("cpp", device) is None:
            from . import cpp

            lines.append("  inferences on the cpp kernels (float32/float64, padded input, no proj_size): the "
                         "projection inside the steps where W_ih and W_hh take at most "
                         f"{cpp.IN_STEPS_RESIDENT_BYTES >> 20} MiB per thread and the batch is "
                         f"{cpp.IN_STEPS_MIN_BATCH} or more, or {cpp.IN_STEPS_LARGE_BATCH_BYTES >> 20} MiB at batch "
                         f"{cpp.IN_STEPS_LARGE_BATCH} or more; ahead of them otherwise")
        lines.append(f"  weight-gradient GEMMs (float32, eager): {how}")
        if unavailable_reason("cpp", device) is None:
            lines.append(f"  bfloat16 on the cpp kernels: {_pair_products_line()}")
    cuda = kernels("cuda")
    lines += cuda.explain_lines() if unavailable_reason("cuda", device) is None else [f"  cuda-kernels: {cuda.VERIFIED}"]
    if unavailable_reason("triton", device) is None:
        from ..triton import plans

        lines.append(f"  triton launch plans: on a GPU measured per problem on first use, cached in {plans.cache_path()} "
                     "(FASTRNN_TRITON_STRATEGY / FASTRNN_TRITON_AUTOTUNE override; see fastrnn/triton/plans.py)")
    return "\n".join(lines)
