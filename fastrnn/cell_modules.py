"""fastrnn.LSTMCell, GRUCell and RNNCell: drop-in nn.LSTMCell / nn.GRUCell / nn.RNNCell whose step is one
fused kernel call (both gate GEMMs and the cell), with the weights prepacked once and reused across calls.

Same constructor arguments, parameter names, shapes, initialisation, state_dict, inputs (batched or
unbatched, optional state) and outputs as nn's cells. A decoder calls a cell once per step at a small
batch, where nn's cells spend nearly all their time dispatching a dozen separate ops: the forward here is
kept short on purpose (measured per layer of the call: see bench/RESULTS.md, cells).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import backends, cell_step, cells
from .backends import reference
from .quantization import QConfigSlot

# What auto runs a cell on, per device type and dtype (the cpp kernels take float32 and float64).
_CPP_DTYPES = (torch.float32, torch.float64)


class _CellBase(nn.Module):
    mode: str  # the cell's mode (cells.Cell.mode), set by the subclass or the RNNCell's constructor
    qconfig = QConfigSlot()  # torch.ao.quantization's attribute; warns when it leaves the cell float

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 backend: str = "auto", *, mode: str | None = None) -> None:
        super().__init__()
        if mode is not None:
            self.mode = mode
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be greater than zero, got {value}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = backends.check_name(backend)
        factory = {"device": device, "dtype": dtype}
        gates = self._cell.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()
        # Plain attributes (no nn.Module bookkeeping on the hot path): the backend each (device, dtype)
        # resolved to, and the cpp kernels' prepacked weights (keyed by each weight's identity and version).
        self.__dict__["_resolved"] = {}
        self.__dict__["_packed"] = {}
        self.__dict__["last_backend"] = None

    @property
    def _cell(self) -> cells.Cell:
        return cells.CELLS[self.mode]

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as nn's cells."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            text += f", bias={self.bias}"
        if self._cell.relu:
            text += ", nonlinearity=relu"
        return f"{text}, backend={self.backend!r}"

    def _apply(self, fn, recurse=True):
        self.__dict__["_packed"] = {}  # .to(), .half(), ...: the packed copies belong to the old tensors
        self.__dict__["_resolved"] = {}
        return super()._apply(fn, recurse)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_packed", {})
        self.__dict__.setdefault("_resolved", {})

    @classmethod
    def from_torch(cls, module: nn.RNNCellBase, backend: str = "auto"):
        """A fastrnn cell sharing `module`'s parameters (the same Parameter objects)."""
        mode = _cell_mode(module)
        if mode is None or cells.CELLS[mode].cell_name != cls.__name__:
            raise TypeError(f"fastrnn.{cls.__name__}.from_torch needs an nn.{cls.__name__}, got {type(module).__name__}")
        if parametrize.is_parametrized(module):
            raise ValueError(f"{type(module).__name__} has parametrized weights ({', '.join(module.parametrizations)}), "
                             "which cannot be shared: convert the model first, then register the parametrizations "
                             "on the fastrnn cell")
        extra = {"nonlinearity": module.nonlinearity} if mode.startswith("RNN_") else {}
        new = cls(module.input_size, module.hidden_size, module.bias, device="meta", dtype=module.weight_ih.dtype,
                  backend=backend, **extra)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            new.register_parameter(name, getattr(module, name))
        return new.train(module.training)

    def selected_backend(self, input: Tensor) -> str:
        """The backend a forward of `input` runs (backend="auto": by its device and dtype)."""
        return self._backend_for(input)

    def _backend_for(self, x: Tensor) -> str:
        if torch.compiler.is_compiling():
            return _resolve(self.backend, str(x.device), x.dtype, self._cell.cell_name)
        key = (x.device, x.dtype)
        backend = self._resolved.get(key)
        if backend is None:
            backend = self._resolved[key] = _resolve(self.backend, str(x.device), x.dtype, self._cell.cell_name)
        return backend

    # --- forward -----------------------------------------------------------------------------------

    def forward(self, input: Tensor, hx=None):
        cell = cells.CELLS[self.mode]
        if input.dim() != 2:
            if input.dim() != 1:
                raise ValueError(f"{cell.cell_name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
            states = self._checked_states(input, hx, cell, batched=False)
            input = input.unsqueeze(0)
            states = tuple(s.unsqueeze(0) for s in states)
            return self._returned(self._step(input, states, cell), squeeze=True)
        return self._returned(self._step(input, self._checked_states(input, hx, cell, batched=True), cell), False)

    def _returned(self, new: tuple[Tensor, ...], squeeze: bool):
        if squeeze:
            new = tuple(s.squeeze(0) for s in new)
        return new if len(new) == 2 else new[0]

    def _checked_states(self, input: Tensor, hx, cell: cells.Cell, batched: bool) -> tuple[Tensor, ...]:
        """hx as a tuple of states (zeros when None), each checked as nn's cells check it."""
        if type(hx) is Tensor and hx.dim() == 2 and len(cell.states) == 1:  # the common cases first, cheaply
            return (hx,)
        if type(hx) is tuple and len(hx) == 2 and len(cell.states) == 2 and type(hx[0]) is type(hx[1]) is Tensor \
                and hx[0].dim() == hx[1].dim() == 2:
            return hx
        if hx is None:
            zeros = input.new_zeros(input.shape[0] if batched else self.hidden_size,
                                    *((self.hidden_size,) if batched else ()))
            return (zeros, zeros) if len(cell.states) == 2 else (zeros,)
        if len(cell.states) == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(s, Tensor) for s in hx):
                raise RuntimeError(f"{cell.cell_name}: hx must be a tuple (h_0, c_0) of two tensors, got "
                                   f"{type(hx).__name__}")
            for index, state in enumerate(hx):
                if state.dim() not in (1, 2):
                    raise ValueError(f"{cell.cell_name}: Expected hx[{index}] to be 1D or 2D, got {state.dim()}D instead")
            return tuple(hx)
        if not isinstance(hx, Tensor):
            raise RuntimeError(f"{cell.cell_name}: hx must be a tensor h_0, got {type(hx).__name__}")
        if hx.dim() not in (1, 2):
            raise ValueError(f"{cell.cell_name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        return (hx,)

    def _check_shapes(self, x: Tensor, states: tuple[Tensor, ...]) -> None:
        """torch's checks of the fused cell ops (the same messages), and devices and dtypes."""
        if x.shape[1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} expected {self.input_size}")
        for index, state in enumerate(states):
            if state.dim() != 2 or state.shape[0] != x.shape[0]:
                raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{index} batch size "
                                   f"{state.shape[0] if state.dim() else 0}")
            if state.shape[1] != self.hidden_size:
                raise RuntimeError(f"hidden{index} has inconsistent hidden_size: got {state.shape[1]}, expected "
                                   f"{self.hidden_size}")
            if state.dtype != x.dtype or state.device != x.device:
                raise RuntimeError(f"{self._cell.cell_name}: hidden{index} is {state.dtype} on {state.device} but the "
                                   f"input is {x.dtype} on {x.device}; pass states like the input")
        weight = self._weights()[0]
        if weight.dtype != x.dtype or weight.device != x.device:
            raise RuntimeError(f"{self._cell.cell_name}: the input is {x.dtype} on {x.device} but the weights are "
                               f"{weight.dtype} on {weight.device}: convert the input (input.to({weight.dtype})) or the "
                               f"module (module.to({x.dtype}))")

    def _weights(self) -> tuple[Tensor | None, ...]:
        """(weight_ih, weight_hh, bias_ih, bias_hh): read from the parameter dict (nn.Module's attribute lookup costs
        a microsecond for four), or as attributes where one is computed (parametrized, pruned)."""
        params = self._parameters
        try:
            return params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"]
        except KeyError:
            return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _step(self, x: Tensor, states: tuple[Tensor, ...], cell: cells.Cell) -> tuple[Tensor, ...]:
        backend = self._backend_for(x)
        if torch._C._is_any_autocast_enabled() and self.backend == "auto" and torch.is_autocast_enabled(x.device.type):
            backend = "aten"  # autocast casts nn's cells' inner ops (RNNCell's on a CPU too): compute as they do
        self.__dict__["last_backend"] = backend
        if backend == "aten":
            return self._step_aten(x, states, cell)
        weights = self._weights()
        if backend == "reference" or torch._C._are_functorch_transforms_active():
            self._check_shapes(x, states)  # plain ops would broadcast a batch of one silently
            return reference.cell_forward(cell.mode, x, states, *weights, save=False)[0]
        try:
            # The kernels check every argument themselves; only when they refuse one do our checks run, for
            # torch's own message.
            states = (states[0].contiguous(),) if len(states) == 1 else (states[0].contiguous(), states[1].contiguous())
            return cell_step.step(cell.mode, backend, self._packed, x.contiguous(), states, *weights)
        except RuntimeError:
            self._check_shapes(x, states)
            raise

    def _step_aten(self, x: Tensor, states: tuple[Tensor, ...], cell: cells.Cell) -> tuple[Tensor, ...]:
        """torch's own fused cell ops, which nn's cells call (they check their arguments themselves)."""
        args = self._weights()
        if cell.mode == "LSTM":
            return tuple(torch._VF.lstm_cell(x, states, *args))
        run = {"GRU": torch._VF.gru_cell, "RNN_TANH": torch._VF.rnn_tanh_cell, "RNN_RELU": torch._VF.rnn_relu_cell}
        return (run[cell.mode](x, states[0], *args),)


def _resolve(backend: str, device: str, dtype: torch.dtype, cell_name: str) -> str:
    """The backend a cell's forward on `device` in `dtype` runs."""
    device = torch.device(device)
    if backend == "auto":
        # On a GPU nn's own code: the cuda and Triton cell steps run when asked for by name, not picked by auto
        # before they are measured faster than nn's cells there; so do the dtypes the cpp kernels leave.
        return "cpp" if device.type == "cpu" and dtype in _CPP_DTYPES and backends.runs("cpp", device) else "aten"
    backend = backends.resolve(backend, device)
    if backend not in (*backends.CELL_STEP_BACKENDS, "aten"):
        raise backends.BackendUnavailableError(
            f"backend={backend!r} has no fused nn.{cell_name} kernel yet; use backend='aten' (nn's own code), "
            "'auto' or 'reference'")
    return backend


# Decided once while torch.compile traces, and kept out of the graph (see backends.resolve_while_compiling).
_resolve._dynamo_marked_constant = True


def _cell_mode(module: nn.Module) -> str | None:
    """The mode of an nn cell (cells.Cell.mode), or None for any other module."""
    if isinstance(module, nn.LSTMCell):
        return "LSTM"
    if isinstance(module, nn.GRUCell):
        return "GRU"
    if isinstance(module, nn.RNNCell):
        return cells.elman(module.nonlinearity).mode
    return None


class LSTMCell(_CellBase):
    """Drop-in nn.LSTMCell: forward(input, (h, c)=None) -> (h', c'). Extra keyword: backend = "auto" | "cpp"
    | "cuda" | "triton" | "reference" | "aten" (auto: the cpp kernels on a CPU in float32/float64, nn's own code
    elsewhere; "cuda", "triton": their fused step, on CUDA tensors, Triton's also under TRITON_INTERPRET=1)."""

    mode = "LSTM"


class GRUCell(_CellBase):
    """Drop-in nn.GRUCell: forward(input, h=None) -> h'. Extra keyword: backend, as fastrnn.LSTMCell."""

    mode = "GRU"


class RNNCell(_CellBase):
    """Drop-in nn.RNNCell (nonlinearity "tanh" or "relu"): forward(input, h=None) -> h'. Extra keyword:
    backend, as fastrnn.LSTMCell."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype, backend, mode=cells.elman(nonlinearity).mode)
        self.nonlinearity = nonlinearity
