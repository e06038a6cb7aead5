"""The competitors: each builds a module with nn.LSTM's call signature from the torch reference
module of a case (sharing its Parameters), or says why it cannot run here."""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import torch
from torch import nn

import fastrnn
from fastrnn import backends, cells
from fastrnn.backends import reference

from .cases import Case
from .decoder import DecoderLoop


class Implementation:
    name: str = ""
    description: str = ""
    inference_only: bool = False  # forward rows only; its train rows are listed as skipped
    bar_dtype: torch.dtype | None = None  # checked against nn's own error in this dtype instead of the case's

    def unavailable_reason(self, case: Case, device: torch.device) -> str | None:
        return None

    def scope(self) -> contextlib.AbstractContextManager:
        """Entered around this competitor's check and timings (forward and backward)."""
        return contextlib.nullcontext()

    def build(self, torch_module: nn.RNNBase) -> nn.Module:
        raise NotImplementedError


class TorchRNN(Implementation):
    name = "nn"
    description = "torch.nn.LSTM/GRU/RNN (cuDNN on GPU, ATen on CPU), or the loop of nn's cell: the baseline of every ratio"

    def build(self, torch_module):
        return torch_module


class FastRNN(Implementation):
    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"fastrnn-{backend}"
        self.description = f"fastrnn.{{LSTM,GRU,RNN}} or its cells (backend={backend!r})"

    def unavailable_reason(self, case, device):
        reason = backends.unavailable_reason(self.backend, device)
        if reason is None and case.decoder and self.backend in backends.KERNEL_BACKENDS \
                and self.backend not in backends.CELL_STEP_BACKENDS:
            return f"backend {self.backend!r} has no fused cell kernels yet"
        if reason is None and case.mode not in backends.CELLS_OF.get(self.backend, (case.mode,)):
            return f"backend {self.backend!r} has no {case.mode} kernels yet"
        if reason is None and self.backend == "triton":
            from fastrnn.backends import triton as triton_backend  # imports triton, known by now to be there

            reason = triton_backend.dtype_unavailable_reason(case.torch_dtype)
        return reason

    def build(self, torch_module):
        if isinstance(torch_module, DecoderLoop):
            cell = torch_module.cell
            return DecoderLoop(getattr(fastrnn, type(cell).__name__).from_torch(cell, backend=self.backend))
        twin = getattr(fastrnn, cells.cell(torch_module.mode).name)
        return twin.from_torch(torch_module, backend=self.backend)


class TritonStrategy(FastRNN):
    """The Triton backend held to one launch strategy (tiles still tuned), to show what each contributes."""

    def __init__(self, strategy: str):
        super().__init__("triton")
        self.strategy = strategy
        self.name = f"fastrnn-triton-{strategy}"
        self.description = f"fastrnn backend='triton', {strategy} launch plans only"

    def scope(self):
        from fastrnn.triton import plans

        return plans.only(self.strategy)


class CompiledFastRNN(FastRNN):
    """fastrnn's default module under torch.compile: what a user who compiles the whole model gets."""

    def __init__(self):
        super().__init__("auto")
        self.name = "fastrnn-auto-compiled"
        self.description = "torch.compile(fastrnn.{LSTM,GRU}(backend='auto'))"

    def build(self, torch_module):
        return torch.compile(super().build(torch_module))


class CellLoop(Implementation):
    """The naive way: one nn.LSTMCell/GRUCell-equivalent step per time step, from Python."""

    def __init__(self, compiled: bool):
        self.compiled = compiled
        self.name = "cell-loop-compiled" if compiled else "cell-loop"
        self.description = ("torch.compile of the per-step cell, looped in Python" if compiled
                            else "the cell stepped in a Python loop (as nn.LSTMCell)")

    def unavailable_reason(self, case, device):
        if case.min_length_fraction is not None:
            return "a plain cell loop takes no PackedSequence"
        if case.decoder:
            return "the case is a loop of cell calls already (nn's is the baseline)"
        return None

    def build(self, torch_module):
        return _CellLoopRNN(torch_module, self.compiled)


class _CellLoopRNN(nn.Module):
    def __init__(self, torch_module: nn.RNNBase, compiled: bool):
        super().__init__()
        self.rnn = torch_module
        step = functools.partial(_step, torch_module.mode)
        self.step = torch.compile(step, dynamic=True) if compiled else step  # one compile for every shape

    def forward(self, x, hx=None):
        rnn = self.rnn
        directions = 2 if rnn.bidirectional else 1
        batch = x.shape[1]
        finals = []
        layer_input = x
        for layer in range(rnn.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                weights = [getattr(rnn, f"{name}{suffix}") if rnn.bias or "bias" not in name else None
                           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                state = [x.new_zeros(batch, rnn.hidden_size) for _ in cells.cell(rnn.mode).states]
                steps = range(x.shape[0] - 1, -1, -1) if direction else range(x.shape[0])
                ys = [None] * x.shape[0]
                for t in steps:
                    state = self.step(layer_input[t], state, weights)
                    ys[t] = state[0]
                outputs.append(torch.stack(ys))
                finals.append(state)
            layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
        stacked = [torch.stack([f[i] for f in finals]) for i in range(len(finals[0]))]
        return layer_input, (tuple(stacked) if len(stacked) == 2 else stacked[0])


def _step(mode, x, state, weights):
    """One step of the cell in plain ops (cell_math's, as nn's cells compute it)."""
    return list(reference.cell_forward(mode, x, tuple(state), *weights, save=False)[0])


class NotAdapted(Implementation):
    """Another fast RNN library: timed only where an adapter for its API exists."""

    def __init__(self, name: str, module: str):
        self.name, self.module = name, module
        self.description = f"{name} (python package {module})"

    def unavailable_reason(self, case, device):
        if importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed"
        return f"{self.module} is installed, but this version of the bench has no adapter for its weight layout"


def all_implementations() -> list[Implementation]:
    from .peers import all_peers  # peers subclasses Implementation: imported here, not at the top

    return [
        TorchRNN(),
        FastRNN("auto"),
        CompiledFastRNN(),
        *(FastRNN(b) for b in ("cpp", "triton", "cuda", "reference")),
        *(TritonStrategy(s) for s in ("persistent", "stepwise")),
        CellLoop(compiled=False),
        CellLoop(compiled=True),
        NotAdapted("flashrnn", "flashrnn"),
        NotAdapted("haste", "haste_pytorch"),
        *all_peers(),
    ]
