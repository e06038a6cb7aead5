"""fastrnn.LSTM, fastrnn.GRU and fastrnn.RNN: drop-in nn.LSTM / nn.GRU / nn.RNN whose recurrence runs on a
chosen backend.

Same constructor arguments, parameter names, shapes, initialisation, state_dict, inputs and outputs
as nn's layers. They are plain nn.Modules rather than subclasses because Dynamo refuses to trace
any instance of nn.RNN/nn.GRU/nn.LSTM (see README, "Use"); the `aten` backend runs torch's own
code on a private, unregistered twin that shares these Parameter objects. One layer stack serves every
cell: what differs between them is read from the cell's description (fastrnn/cells.py).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from . import backends, cell_step, cells, functional, projection
from .backends import cpp
from .quantization import QConfigSlot


class _RNNBase(nn.Module):
    mode: str  # nn's mode: "LSTM", "GRU" (set by the subclass), "RNN_TANH" or "RNN_RELU" (by the RNN's constructor)
    qconfig = QConfigSlot()  # torch.ao.quantization's attribute; warns when it leaves the layer float

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        backend: str = "auto",
        *,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        if mode is not None:
            self.mode = cells.cell(mode).mode
        _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backends.check_name(backend)
        self.last_backend: str | None = None  # the backend that ran the latest forward

        factory = {"device": device, "dtype": dtype}
        gate_size = self._cell.gates * hidden_size
        state_size = proj_size or hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                suffix = f"_l{layer}{'_reverse' if direction else ''}"
                layer_input = input_size if layer == 0 else state_size * self.num_directions
                shapes = {"weight_ih": (gate_size, layer_input), "weight_hh": (gate_size, state_size)}
                if bias:
                    shapes.update(bias_ih=(gate_size,), bias_hh=(gate_size,))
                if proj_size:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                names = [name + suffix for name in shapes]
                for name, shape in zip(names, shapes.values()):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    @property
    def _cell(self) -> cells.Cell:
        """The description of this layer's cell (fastrnn/cells.py)."""
        return cells.CELLS[self.mode]

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as nn.LSTM/nn.GRU."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        defaults = dict(proj_size=0, num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False)
        parts += [f"{key}={getattr(self, key)}" for key, default in defaults.items() if getattr(self, key) != default]
        return ", ".join([*parts, f"backend={self.backend!r}"])

    @classmethod
    def from_torch(cls, module: nn.RNNBase, backend: str = "auto"):
        """A fastrnn layer sharing `module`'s parameters (the same Parameter objects, so an
        optimizer built on `module` keeps training the new layer)."""
        if not isinstance(module, nn.RNNBase) or cells.cell(module.mode).name != cls.__name__:
            raise TypeError(f"fastrnn.{cls.__name__}.from_torch needs an nn.{cls.__name__}, got {type(module).__name__}")
        if parametrize.is_parametrized(module):
            raise ValueError(f"{type(module).__name__} has parametrized weights ({', '.join(module.parametrizations)}), "
                             "which cannot be shared: convert the model first, then register the parametrizations "
                             "on the fastrnn layer (they work there on every backend)")
        new = cls(**_constructor_args(module), device="meta", dtype=module.weight_ih_l0.dtype, backend=backend)
        for name in new._flat_weights_names:
            new.register_parameter(name, getattr(module, name))
        return new.train(module.training)

    def selected_backend(self, device: torch.device | str | None = None, input: Tensor | PackedSequence | None = None) -> str:
        """The backend a forward on `device` (default: the parameters' device) would run, for `input` if
        given (backend="auto" chooses by the input's shape; see fastrnn/backends/auto.py)."""
        device = torch.device(device) if device is not None else self._parameter_device()
        return self._backend_for(device, input)

    def _parameter_device(self) -> torch.device:
        first = next(iter(self._parameters.values()), None)  # cheap; parametrized weights live elsewhere
        return (first if first is not None else next(self.parameters())).device

    def _backend_for(self, device: torch.device, input=None) -> str:
        if torch.compiler.is_compiling():
            return self._checked_cell(backends.resolve_while_compiling(self.backend, str(device)))
        if self.backend != "auto":
            return self._checked_cell(backends.resolve(self.backend, device))
        if type(input) is not Tensor or input.dim() != 3:
            return backends.resolve("auto", device, None if input is None else self._workload(input, device))
        # auto's choice for a padded batch, by all that it depends on (the rest is the module's own): kept, as
        # building the workload and asking the rule cost more than a small layer's kernel.
        batch, steps = (input.shape[0], input.shape[1]) if self.batch_first else (input.shape[1], input.shape[0])
        key = (device, input.dtype, batch, steps == 1, _autocast_enabled(device.type), self._records_backward(input),
               torch.get_num_threads())
        choices = self.__dict__.setdefault("_auto_choices", {})
        choice = choices.get(key)
        if choice is None:
            choice = choices[key] = backends.resolve("auto", device, self._workload(input, device))
        return choice

    def _weights_now(self) -> dict[str, Tensor]:
        """Every weight by name, read once for this forward: from the parameter dict (nn.Module's attribute
        lookup costs a microsecond each), or as attributes where one is computed (parametrized, pruned: a
        parametrized one is computed anew on every read, and spectral_norm steps its power iteration)."""
        params = self._parameters
        try:
            return {name: params[name] for name in self._flat_weights_names}
        except KeyError:
            return {name: getattr(self, name) for name in self._flat_weights_names}

    def _checked_cell(self, backend: str) -> str:
        return backends.check_cell(backend, self.mode, f"nn.{self._cell.name}") if self.mode not in ("LSTM", "GRU") else backend

    def _workload(self, input, device: torch.device) -> backends.Workload:
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if packed:
            batch, steps = int(input.batch_sizes[0]), len(input.batch_sizes)
        elif data.dim() < 3:
            batch, steps = 1, data.shape[0] if data.dim() else 0
        else:
            batch, steps = data.shape[0 if self.batch_first else 1], data.shape[1 if self.batch_first else 0]
        dtype = _compute_dtype(data, self._cell) if data.is_floating_point() else self.weight_ih_l0.dtype
        return backends.Workload(self.mode, dtype, batch, self.hidden_size, packed, steps,
                                 bool(getattr(self, "proj_size", 0)), self._records_backward(data),
                                 backends.auto.threads_now(), self._widest_input())

    def _widest_input(self) -> int:
        """The widest input of the stack's layers: the first layer's, or the directions' outputs side by side."""
        return max(self.input_size, self.hidden_size * self.num_directions if self.num_layers > 1 else 0)

    def _records_backward(self, data: Tensor) -> bool:
        """Whether a forward now records a backward: grad mode is on and the weights (the first standing for all,
        as freezing a module freezes them together) or the input require gradients."""
        if not torch.is_grad_enabled():
            return False
        weight = self._parameters.get("weight_ih_l0")
        if weight is None:
            weight = self.weight_ih_l0  # parametrized
        return weight.requires_grad or data.requires_grad

    def _apply(self, fn, recurse=True):
        twin = self.__dict__.get("_twin")
        if twin is not None:
            # The twin holds weak references to our Parameters (nn.RNNBase._flat_weight_refs), and
            # torch.utils.swap_tensors (torch.__future__.set_swap_module_params_on_conversion) refuses
            # a tensor with one; nn.RNNBase._apply drops its own the same way. _torch_twin re-points the
            # twin, and so makes them anew, at its next use.
            twin._flat_weight_refs = []
            self.__dict__.pop("_twin_param_ids", None)
        self.__dict__["_step_packs"] = {}  # the one-step path's packed weights belong to the old tensors
        self.__dict__["_layer_panels"] = {}  # and so do the layer kernels'
        self.__dict__["_auto_choices"] = {}
        result = super()._apply(fn, recurse)
        self.flatten_parameters()  # as nn.RNNBase does after .cuda()/.to(): cuDNN wants one weight buffer
        return result

    def flatten_parameters(self) -> None:
        """Pack the parameters into one buffer for cuDNN (backend "aten" on a GPU); no-op elsewhere."""
        if self.weight_ih_l0.is_cuda:
            self._torch_twin().flatten_parameters()

    def _torch_twin(self) -> nn.RNNBase:
        """An nn.LSTM/nn.GRU holding this module's Parameter objects, kept out of the module tree.

        Re-pointed at our Parameters only when they have been replaced (.to(), load_state_dict with
        assign=True, ...), so that the aten path costs next to nothing over calling nn.LSTM. A
        parametrized or pruned weight is no Parameter of ours: _forward_aten hands the twin
        its value on every call."""
        twin = self.__dict__.get("_twin")
        if twin is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nn's dropout warning was already given by our constructor
                twin = self._cell.torch_layer(**_constructor_args(self), device="meta")
            self.__dict__["_twin"] = twin
        param_ids = tuple(map(id, self._parameters.values()))
        if self.__dict__.get("_twin_param_ids") != param_ids:
            for name in self._flat_weights_names:
                if name in self._parameters:
                    twin._parameters[name] = self._parameters[name]
            twin._init_flat_weights()
            self.__dict__["_twin_param_ids"] = param_ids
        if twin.training != self.training or twin.dropout != self.dropout:
            twin.dropout = self.dropout
            twin.train(self.training)
        return twin

    # --- forward ---------------------------------------------------------------------------------

    def forward(self, input, hx=None):
        if type(input) is Tensor and input.dim() == 3:
            short = self._forward_one_step(input, hx) if input.shape[1 if self.batch_first else 0] == 1 else None
            if short is None:
                short = self._forward_inference(input, hx)
            if short is not None:
                return short
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        # Chosen for where the parameters are: an input elsewhere is reported by the input checks.
        backend = self._backend_for(self._parameter_device(), input)
        if torch.jit.is_tracing() or _exporting_to_onnx():
            backend = self._backend_for_torch_graph()
        self.__dict__["last_backend"] = backend  # plain attribute; skips nn.Module.__setattr__ on the hot path
        batch_sizes = input.batch_sizes if packed else None
        if backend == "aten":
            return self._forward_aten(input, data, hx, batch_sizes)
        if torch.compiler.is_compiling() and not packed and self._compiled_inference_prefers_torch(data, hx):
            return self._forward_torch_op(input, data, hx)
        # Each weight is read once per forward: a parametrized one is computed anew on every read (and
        # spectral_norm steps its power iteration each time).
        weights = self._weights_now()
        states, batched_input, batch = self._checked_states(input, data, hx, batch_sizes, weights["weight_ih_l0"])

        if packed:
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            # Padded in the packed (length-sorted) order, so the live sequences are a prefix at every step.
            x, lengths = functional.pad_packed(data, batch_sizes, batch)
            packing = _Packing(batch_sizes, lengths, data.shape[0], data)
        else:
            sorted_indices = unsorted_indices = packing = None
            x = batched_input.transpose(0, 1) if self.batch_first else batched_input
        if states is None:
            states = [x.new_zeros(self.num_layers * self.num_directions, x.shape[1], size) for size in self._state_sizes()]
        states = _permute(states, sorted_indices)

        dtype = _compute_dtype(x, self._cell)
        # The dtype is chosen once here; autocast must not re-cast the layer's own matmuls.
        with torch.autocast(x.device.type, enabled=False) if _autocast_enabled(x.device.type) else _NO_AUTOCAST:
            output, finals = self._run_layers(_as_dtype(x, dtype).contiguous(), [_as_dtype(s, dtype) for s in states],
                                              weights, packing, backend, dtype)

        if packed:
            output = PackedSequence(functional.pack_padded(output, batch_sizes, packing.total), batch_sizes,
                                    sorted_indices, unsorted_indices)
        else:
            steps = output
            if self.batch_first:
                output = output.transpose(0, 1).contiguous()
            if input.dim() == 2:
                output = output.squeeze(0 if self.batch_first else 1)
                finals = [s.squeeze(1) for s in finals]
            if output.requires_grad and (output is steps or output._base is steps) and not torch.compiler.is_compiling():
                # The recurrence keeps its output for the backward: hand out a copy, so that an in-place op on
                # it (nn.ReLU(inplace=True)) does not invalidate the backward, as it does not with nn.LSTM/nn.GRU.
                output = output.clone()
        finals = _permute(finals, unsorted_indices)
        return output, self._returned_states(finals)

    def _forward_one_step(self, input: Tensor, hx):
        """A streaming call's short road: one step (T = 1) of a one-direction layer stack without a projection (nor
        training-mode dropout between layers), on the cpp kernels' fused cell step, checked as cheaply as the
        cases it takes allow. Everything else, an input or state that is in any way wrong included, returns None
        and takes the general road (which gives the errors). The same cell step and weight packing as
        _run_one_step, in the layer's own shapes (cell_step.layer_step): measured on the CPU, the general road's
        Python cost was several times the step's (80 us a call against 14 at H=64, B=1), and the views and copies
        between the layer's shapes and the cell's cost as much again with a gradient recorded (21 us)."""
        layers = self.num_layers
        if self.bidirectional or self.__dict__.get("proj_size") or not input.is_contiguous() or \
                (layers > 1 and self.dropout and self.training):
            return None
        if not self._short_roads_open(input) or input.dtype not in backends.auto.CPP_DTYPES or \
                input.shape[2] != self.input_size:
            return None
        weights = self._plain_weights(input)
        if weights is None:
            return None
        batch_first = self.batch_first
        batch, hidden = input.shape[0 if batch_first else 1], self.hidden_size
        two = len(self._cell.states) == 2
        if hx is None:
            zeros = input.new_zeros(1, batch, hidden)
            states = (zeros, zeros) if two else (zeros,)
        else:
            states = self._short_road_states(input, hx, batch)
            if states is None:
                return None
        backend = self._backend_for(input.device, input)
        if backend != "cpp":
            return None
        self.__dict__["last_backend"] = backend
        caches = self.__dict__.setdefault("_step_packs", {})
        output, finals = input, [[] for _ in states]
        for layer in range(layers):
            initial = states if hx is None or layers == 1 else tuple(state[layer:layer + 1] for state in states)
            output, *new = cell_step.layer_step(self.mode, backend, caches.setdefault(layer, {}), output, initial,
                                                *weights[4 * layer:4 * layer + 4], batch_first)
            for collected, state in zip(finals, new):
                collected.append(state)
        finals = [collected[0] if layers == 1 else torch.cat(collected) for collected in finals]
        return output, tuple(finals) if two else finals[0]

    def _forward_inference(self, input: Tensor, hx):
        """An inference's short road: padded input (T = 1 too, where the one-step road declines it: a bidirectional
        stack), no gradient recorded (grad mode off), every layer and direction on the cpp kernels, checked only as
        cheaply as the cases it takes allow: the whole stack as one call (cpp.stack_inference) where it projects as
        the layer functions would, else layer by layer as _run_layers runs them. Anything else, an input or state
        that is in any way wrong included, returns None and takes the general road (which gives the errors).
        Measured on the CPU, the general road's Python cost was ~70 us a call, a quarter of an LSTM's at B = 1,
        H = 64, T = 128; layer by layer ~50 us; the one call ~15 (Ice Lake core, 1 thread: 215 -> 167 us a call)."""
        if torch.is_grad_enabled() or self.__dict__.get("proj_size") or (self.dropout and self.training):
            return None
        batch_first = self.batch_first
        batch, steps = (input.shape[0], input.shape[1]) if batch_first else (input.shape[1], input.shape[0])
        if batch == 0 or steps == 0 or input.shape[2] != self.input_size or not self._short_roads_open(input):
            return None
        count = len(self._cell.states)
        states = None if hx is None else self._short_road_states(input, hx, batch)
        if hx is not None and states is None:
            return None
        backend = self._backend_for(input.device, input)
        if backend != "cpp":
            return None
        self.__dict__["last_backend"] = backend
        plan = self._one_call_plan(input.dtype, batch, steps)
        weights = None if plan is None else self._plain_weights(input)
        if weights is not None:
            output, finals = cpp.stack_inference(self.mode, input, states or (), weights, self._stack_panels(),
                                                 self.num_layers, self.bidirectional, batch_first, *plan)
        elif steps == 1:
            return None  # the general road's one-step stack (_run_one_step)
        else:
            x = input.transpose(0, 1).contiguous() if batch_first else input.contiguous()
            output, finals = self._run_layers(x, states, self._weights_now(), None, backend, input.dtype)
            if batch_first:
                output = output.transpose(0, 1).contiguous()
        return output, tuple(finals) if count == 2 else finals[0]

    def _one_call_plan(self, dtype: torch.dtype, batch: int, steps: int) -> tuple[int, list[bool]] | None:
        """Whether an inference's whole layer stack runs as one call of the cpp kernels (cpp.stack_inference), which
        projects as the layer road would: inside an LSTM's steps where cpp.projects_in_steps says so, else by the
        own kernel for float32 products up to its limit, else by torch's matmul (fastrnn/projection.py). Returns
        the own projection's limit and, per layer-direction, whether it projects in its steps; None where the
        layer road would do otherwise for a layer that projects ahead (oneDNN's linear for a large float32
        product; a projected input large enough to run in chunks)."""
        hidden, width, threads = self.hidden_size, self._cell.gates * self.hidden_size, torch.get_num_threads()
        own = projection.own_max_work()
        in_steps = []
        for layer in range(self.num_layers):
            input_size = self.input_size if layer == 0 else hidden * self.num_directions
            here = cpp.projects_in_steps(self.mode, dtype, batch, input_size, hidden, threads)
            if not here:
                if steps * batch * width > functional.CHUNK_ELEMENTS:
                    return None
                work = steps * batch * width * input_size
                if dtype == torch.float32 and work > own and work >= projection.LINEAR_MIN_WORK and \
                        projection.choice() != "matmul":
                    return None
            in_steps += [here] * self.num_directions
        return own, in_steps if any(in_steps) else []

    def _stack_panels(self) -> list:
        """(W_ih's, W_hh's) kept panels of each layer-direction, for cpp.stack_inference: the objects the layer road
        keeps in _layer_panels (which _apply replaces with the module's tensors)."""
        caches = self.__dict__.setdefault("_layer_panels", {})
        return cpp.stack_panels([caches.setdefault(index, {}) for index in range(self.num_layers * self.num_directions)])

    def _plain_weights(self, input: Tensor) -> list[Tensor | None] | None:
        """(w_ih, w_hh, b_ih, b_hh) of each layer-direction, in nn's order (_flat_weights_names; biases None in a
        layer without them), for the short roads of a layer without a projection: each a plain tensor of the input's
        dtype and on its device, or None, for the general road (a parametrized weight, or one of another dtype)."""
        params, bias, weights = self._parameters, self.bias, []
        for position, name in enumerate(self._flat_weights_names):
            tensor = params.get(name)
            if type(tensor) not in functional._PLAIN or tensor.dtype != input.dtype or tensor.device != input.device:
                return None
            weights.append(tensor)
            if not bias and position % 2:
                weights += (None, None)
        return weights

    def _short_roads_open(self, input: Tensor) -> bool:
        """What both short roads (_forward_one_step, _forward_inference) need first: weights read from the parameter
        dict in the input's dtype and on its device (else parametrized weights, or a mismatch for the general
        road to report), and a plain eager call: none of the general road's own choices (torch's graph when
        tracing or exporting; autocast's dtype; the layer's traceable ops under torch.compile and torch.func)."""
        weight = self._parameters.get("weight_ih_l0")
        if weight is None or input.dtype != weight.dtype or input.device != weight.device:
            return False
        return not (torch._C._get_tracing_state() or torch.compiler.is_compiling()
                    or torch._C._is_any_autocast_enabled() or torch._C._are_functorch_transforms_active()
                    or _exporting_to_onnx())

    def _short_road_states(self, input: Tensor, hx, batch: int) -> tuple[Tensor, ...] | None:
        """hx as the short roads take it: a plain contiguous tensor (an LSTM: a tuple of two) of exactly (L*D, B, H),
        in the input's dtype and on its device; None for anything else, which the general road checks and reports."""
        if len(self._cell.states) == 2:
            if type(hx) is not tuple or len(hx) != 2:
                return None
            states = hx
        else:
            states = (hx,)
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        for state in states:
            if type(state) is not Tensor or state.shape != shape or state.dtype != input.dtype or \
                    state.device != input.device or not state.is_contiguous():
                return None
        return states

    def _returned_states(self, finals: list[Tensor]):
        """nn's form of the final states: (h_n, c_n) for an LSTM, h_n for the others."""
        return tuple(finals) if len(self._cell.states) == 2 else finals[0]

    def _backend_for_torch_graph(self) -> str:
        """Under torch.jit.trace and torch.onnx.export (both exporters), torch's own code: the trace then holds
        aten::lstm / aten::gru, which a saved TorchScript module runs without fastrnn and which the exporters
        turn into ONNX's standard LSTM/GRU operators (a kernel call would be opaque to them, or recorded as
        its empty outputs)."""
        if self.proj_size and _exporting_to_onnx():
            raise RuntimeError(
                f"LSTM with proj_size={self.proj_size} cannot be exported to ONNX: ONNX's LSTM operator has no "
                "projection (torch's exporters refuse nn.LSTM with proj_size, or write a file ONNX Runtime rejects). "
                "Export a model without proj_size, or deploy with torch.jit.trace / torch.export instead")
        return "aten"

    def __prepare_scriptable__(self):
        """torch.jit.script calls this on every submodule before compiling: say at once what to do instead."""
        raise RuntimeError(
            f"torch.jit.script cannot compile fastrnn.{type(self).__name__}, whose forward dispatches to kernels "
            f"from Python. Use torch.jit.trace(model, example_inputs) instead: under tracing the layer runs torch's "
            f"own nn.{self._cell.name} code, so the trace holds aten::{self.mode.lower()} (saveable, loadable without "
            f"fastrnn, correct on other batch sizes and lengths); or torch.export.export / torch.compile")

    def _forward_aten(self, input, data: Tensor, hx, batch_sizes):
        """torch's own code, which validates its arguments itself; only when it rejects them do our
        checks run, to replace its message with a clearer one (same exception type)."""
        try:
            twin = self._torch_twin()
            # A weight that is not a Parameter of ours (a parametrization, torch.nn.utils.prune's masked
            # weight) is computed on every read; nn.LSTM/nn.GRU take one only through functional_call.
            computed = {name: getattr(self, name) for name in self._flat_weights_names if name not in self._parameters}
            if not computed:
                return twin.forward(input, hx)
            return torch.func.functional_call(twin, computed, (input, hx))
        except Exception:
            try:
                self._checked_states(input, data, hx, batch_sizes)
            except (ValueError, RuntimeError) as clearer:
                raise clearer from None
            raise

    def _compiled_inference_prefers_torch(self, data: Tensor, hx) -> bool:
        """Under torch.compile, whether this forward runs torch's own recurrence as an opaque op: when auto
        would run it eagerly (a CPU, the shape where oneDNN beats the cpp kernels) and nothing needs a
        gradient, dropout or autocast (the op has no backward; training keeps the cpp kernels)."""
        # Unbatched input is one sequence, which auto gives to the cpp kernels.
        if self.backend != "auto" or data.dim() != 3 or data.dtype != self.weight_ih_l0.dtype:
            return False
        if torch.is_autocast_enabled("cpu") or (self.training and self.dropout):
            return False
        states = [] if hx is None else list(hx) if isinstance(hx, (tuple, list)) else [hx]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (data, *states, *self.parameters())):
            return False
        workload = backends.Workload(self.mode, data.dtype, data.shape[0 if self.batch_first else 1], self.hidden_size,
                                     False, data.shape[1 if self.batch_first else 0], bool(getattr(self, "proj_size", 0)),
                                     threads=backends.auto.threads_now(), input_size=self._widest_input())
        return backends.auto.compiled_inference_runs_torch(data.device, workload)

    def _forward_torch_op(self, input: Tensor, data: Tensor, hx):
        self.__dict__["last_backend"] = "aten"
        weights = [getattr(self, name) for name in self._flat_weights_names]
        states, batched, batch = self._checked_states(input, data, hx, None, weights[0])
        if states is None:
            states = [batched.new_zeros(self.num_layers * self.num_directions, batch, size) for size in self._state_sizes()]
        output, *finals = functional.torch_rnn_inference(batched, states, weights, self.mode, self.bias,
                                                         self.num_layers, self.bidirectional, self.batch_first)
        return output, self._returned_states(finals)

    def _checked_states(self, input, data: Tensor, hx, batch_sizes, weight: Tensor | None = None):
        """Validate input and hx as nn.LSTM/nn.GRU do (same exception types), plus devices and dtypes.

        Returns the initial states as 3-D tensors (L*D, B, size), in the caller's batch order (None
        when hx is None), the input with a batch dimension, and for packed input the batch size B
        (None when only batch_sizes' values tell it, under torch.compile: see _packed_batch). `weight`:
        weight_ih_l0's value when the caller has read it already."""
        if batch_sizes is None:
            if data.dim() not in (2, 3):
                raise ValueError(f"{self._cell.name}: Expected input to be 2D or 3D, got {data.dim()}D instead")
            batched = data if data.dim() == 3 else data.unsqueeze(0 if self.batch_first else 1)
            batch = batched.shape[0 if self.batch_first else 1]
            if batched.shape[1 if self.batch_first else 0] == 0:
                raise RuntimeError(f"{self._cell.name}: Expected sequence length to be larger than 0 in RNN, got input of shape {tuple(data.shape)}")
        else:
            if data.dim() != 2:
                raise RuntimeError(f"{self._cell.name}: input must have 2 dimensions, got {data.dim()} (the data of a PackedSequence is (rows, input_size))")
            batched, batch = data, _packed_batch(input)
        weight = self.weight_ih_l0 if weight is None else weight
        if data.dtype != weight.dtype and not _autocast_enabled(data.device.type):
            raise ValueError(self._dtype_mismatch(data, weight))
        self._check_input_size(data)
        if weight.device != data.device:
            raise RuntimeError(
                f"{self._cell.name}: Input and parameter tensors are not at the same device, found input tensor at "
                f"{data.device} and parameter tensor at {weight.device}; move the input (input.to('{weight.device}')) "
                f"or the model (model.to('{data.device}'))"
            )

        names = tuple(f"{state}_0" for state in self._cell.states)
        if hx is None:
            return None, batched, batch
        if len(names) == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(s, Tensor) for s in hx):
                raise RuntimeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {_describe(hx)}")
            states = list(hx)
        else:
            if not isinstance(hx, Tensor):
                raise RuntimeError(f"{self._cell.name}: hx must be a tensor h_0, got {_describe(hx)}")
            states = [hx]
        want_dim = 2 if (batch_sizes is None and data.dim() == 2) else 3
        if any(s.dim() != want_dim for s in states):
            # torch's wording: "For batched 3-D input, hx and cx should also be 3-D but got (2-D, 3-D) tensors"
            kind = "a PackedSequence" if batch_sizes is not None else "unbatched 2-D" if want_dim == 2 else "batched 3-D"
            which, got = ("hx and cx", f"({', '.join(f'{s.dim()}-D' for s in states)}) tensors") if len(names) == 2 \
                else ("hx", f"{states[0].dim()}-D tensor")
            raise RuntimeError(f"{self._cell.name}: For {kind} input, {which} should also be {want_dim}-D but got {got} "
                               f"({', '.join(names)})")
        if want_dim == 2:
            states = [s.unsqueeze(1) for s in states]
        if batch is None:
            batch = states[0].shape[1]  # the padding op checks it against batch_sizes[0] when it runs
        expected = [(self.num_layers * self.num_directions, batch, size) for size in self._state_sizes()]
        for index, (name, state, shape) in enumerate(zip(names, states, expected)):
            if tuple(state.shape) != shape:
                raise RuntimeError(f"{self._cell.name}: {self._hidden_size_message(index).format(shape, list(state.shape))} "
                                   f"({name} is (num_layers * num_directions, batch, {self._state_size_names()[index]}))")
            if state.device != data.device:
                raise RuntimeError(f"{self._cell.name}: Input and hidden tensors are not at the same device, found input tensor at {data.device} and {name} at {state.device}")
            if state.dtype != data.dtype and not _autocast_enabled(data.device.type):
                raise RuntimeError(f"{self._cell.name}: {name} has dtype {state.dtype} but the input has dtype {data.dtype}; pass {name}.to({data.dtype})")
        return states, batched, batch

    def _state_sizes(self) -> tuple[int, ...]:
        """The last dimension of h (and c) states: (R,) for GRU, (R, H) for LSTM (R = proj_size or H)."""
        sizes = (self.proj_size or self.hidden_size, self.hidden_size)
        return sizes[: len(self._cell.states)]

    def _state_size_names(self) -> tuple[str, ...]:
        names = ("proj_size" if self.proj_size else "hidden_size", "hidden_size")
        return names[: len(self._cell.states)]

    def _hidden_size_message(self, index: int) -> str:
        """torch's message for a state of the wrong shape, with {} for the expected and actual sizes."""
        return f"Expected hidden[{index}] size {{}}, got {{}}" if len(self._cell.states) == 2 else "Expected hidden size {}, got {}"

    def _dtype_mismatch(self, data: Tensor, weight: Tensor) -> str:
        return (f"{self._cell.name}: RNN input dtype ({data.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: model.to({data.dtype})")

    def _check_input_size(self, data: Tensor) -> None:
        if data.shape[-1] != self.input_size:
            raise RuntimeError(f"{self._cell.name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, got {data.shape[-1]}")

    # --- nn.RNNBase's helpers, for code that calls them on an RNN layer --------------------------

    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """The weights in _flat_weights_names order, as nn.RNNBase keeps them (None for a deleted one).
        Computed on each read, so it follows reassigned and parametrized weights."""
        return [getattr(self, name) if hasattr(self, name) else None for name in self._flat_weights_names]

    @_flat_weights.setter
    def _flat_weights(self, value) -> None:
        raise AttributeError(f"fastrnn.{type(self).__name__}._flat_weights is read from the named weights, which "
                             f"the forward reads: assign a weight by name instead (layer.{self._flat_weights_names[0]} = ...)")

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        """As nn.RNNBase.check_input: `input` is batched (3-D), or a PackedSequence's 2-D data when
        batch_sizes is given; raises ValueError for a dtype other than the weights', else RuntimeError."""
        weight = getattr(self, self._flat_weights_names[0])  # _flat_weights[0], without computing the others
        if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(self._dtype_mismatch(input, weight))
        expected_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_dim:
            raise RuntimeError(f"{self._cell.name}: input must have {expected_dim} dimensions, got {input.dim()}")
        self._check_input_size(input)

    def get_expected_hidden_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """As nn.RNNBase: the shape of h_0 for a batched input (or a PackedSequence's data and batch_sizes)."""
        if batch_sizes is not None:
            batch = int(batch_sizes[0])
        else:
            batch = input.size(0) if self.batch_first else input.size(1)
        return (self.num_layers * self.num_directions, batch, self.proj_size or self.hidden_size)

    def check_hidden_size(self, hx: Tensor, expected_hidden_size: tuple[int, int, int],
                          msg: str = "Expected hidden size {}, got {}") -> None:
        """As nn.RNNBase: RuntimeError(msg.format(expected, actual)) when hx has another shape."""
        if hx.size() != expected_hidden_size:
            raise RuntimeError(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input: Tensor, hidden: Tensor, batch_sizes: Tensor | None) -> None:
        """As nn.GRU: check a batched input and a 3-D h_0 (nn.LSTM's form, for a tuple, is on LSTM)."""
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))

    def permute_hidden(self, hx: Tensor, permutation: Tensor | None) -> Tensor:
        """As nn.RNNBase: hx with its batch dimension (1) reordered by `permutation` (None: unchanged)."""
        return _permute([hx], permutation)[0]

    # --- the layer stack -------------------------------------------------------------------------

    def _layer_weights(self, weights: dict[str, Tensor], layer: int, direction: int,
                       dtype: torch.dtype) -> tuple[Tensor | None, ...]:
        suffix = f"_l{layer}{'_reverse' if direction else ''}"

        def get(name: str) -> Tensor:
            return _as_dtype(weights[name + suffix], dtype)

        biases = (get("bias_ih"), get("bias_hh")) if self.bias else (None, None)
        tensors = (get("weight_ih"), get("weight_hh"), *biases)
        if self._cell.mode != "LSTM":
            return tensors
        return (*tensors, get("weight_hr") if self.proj_size else None)

    def _run_layers(self, x: Tensor, states: list[Tensor] | None, weights: dict[str, Tensor], packing: _Packing | None,
                    backend: str, dtype: torch.dtype):
        if packing is None and x.shape[0] == 1 and self._steps_as_cell(backend, dtype, x):
            return self._run_one_step(x, states, weights, backend, dtype)
        lengths = packing.lengths if packing is not None else None
        layer_fn = functional.LAYERS[self.mode]
        # Per layer-direction, what the backend prepares from the weights and keeps between calls (the cpp
        # kernels' packed W_hh); it goes with the module.
        caches = self.__dict__.setdefault("_layer_panels", {})
        count = len(self._cell.states)
        # states None: every layer-direction starts from zeros, one (B, H) tensor that the kernels only read.
        zeros = (x.new_zeros(x.shape[1], self.hidden_size),) * count if states is None else None
        finals: list[list[Tensor]] = [[] for _ in range(count)]
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            # With ragged lengths, project only the packed rows (the first layer's are the input's own).
            projected = layer_input
            if packing is not None and _mostly_padding(packing, x.shape[0], x.shape[1]):
                if layer == 0:
                    rows = _as_dtype(packing.rows, dtype)
                else:
                    rows = functional.pack_padded(layer_input, packing.batch_sizes, packing.total)
                projected = functional.PackedRows(rows, packing.batch_sizes, x.shape[1])
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                initial = zeros or [s[index] for s in states]
                y, *last = layer_fn(projected, *initial, self._layer_weights(weights, layer, direction, dtype), lengths,
                                    bool(direction), backend, caches.setdefault(index, {}))
                outputs.append(y)
                for collected, state in zip(finals, last):
                    collected.append(state)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = self._dropout_between_layers(layer_input, packing)
        return layer_input, [_stacked(collected) for collected in finals]

    def _steps_as_cell(self, backend: str, dtype: torch.dtype, x: Tensor) -> bool:
        """Whether a one-step forward runs as the fused cell step (see backends/auto.py, is_one_step): on
        the cpp kernels, in their dtypes, without a projection, eagerly on plain tensors (the custom ops of
        the layer are what torch.compile, tracing and torch.func see)."""
        # proj_size from the instance's dict: only an LSTM has one, and getattr's miss on the others raises an
        # AttributeError inside nn.Module.__getattr__ on every call.
        return (backend == "cpp" and dtype in backends.auto.CPP_DTYPES and not self.__dict__.get("proj_size", 0)
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
                and not torch._C._are_functorch_transforms_active() and type(x) in functional._PLAIN)

    def _run_one_step(self, x: Tensor, states: list[Tensor], weights: dict[str, Tensor], backend: str,
                      dtype: torch.dtype):
        """_run_layers for T = 1: each layer and direction (one step is the same in both) as the fused cell
        step on weights packed once per module and kept between calls, where the layer kernel would pack
        W_hh on every call (a streaming loop makes one such call per step)."""
        packs = self.__dict__.setdefault("_step_packs", {})
        finals: list[list[Tensor]] = [[] for _ in states]
        layer_input = x[0]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                w_ih, w_hh, b_ih, b_hh = self._layer_weights(weights, layer, direction, dtype)[:4]
                new = cell_step.step(self.mode, backend, packs.setdefault(index, {}), layer_input.contiguous(),
                                     tuple(s[index].contiguous() for s in states), w_ih, w_hh, b_ih, b_hh)
                outputs.append(new[0])
                for collected, state in zip(finals, new):
                    collected.append(state)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = self._dropout_between_layers(layer_input.unsqueeze(0), None)[0]
        return layer_input.unsqueeze(0), [_stacked(collected) for collected in finals]

    def _dropout_between_layers(self, layer_input: Tensor, packing: _Packing | None) -> Tensor:
        """The dropout of torch's CPU code (aten/src/ATen/native/RNN.cpp, apply_layer_stack): at::dropout
        of each layer's time-major output, or of the packed rows for packed input, so that the same
        seed draws the same mask from the same random stream as nn.LSTM/nn.GRU on the CPU."""
        if packing is None:
            return F.dropout(layer_input, self.dropout, training=True)
        keep = F.dropout(layer_input.new_ones(packing.total, layer_input.shape[-1]), self.dropout, training=True)
        return layer_input * functional.pad_packed(keep, packing.batch_sizes, layer_input.shape[1])[0]


class _Packing(NamedTuple):
    """How a PackedSequence's rows map to the padded layout the layers run on."""

    batch_sizes: Tensor  # (T,) CPU int64, as in the PackedSequence
    lengths: Tensor  # (B,) CPU int64, non-increasing (packed order)
    total: int  # N, the number of packed rows
    rows: Tensor  # the input's packed rows (N, I)


def _mostly_padding(packing: _Packing, steps, batch) -> bool:
    """Whether to run the input projections on the packed rows rather than the padded layout: when a
    tenth or more of the layout is padding (gathering and scattering the rows costs less than GEMM work
    on padding). While tracing, always: a branch on sizes known only at run time cannot be traced."""
    return torch.compiler.is_compiling() or packing.total < 0.9 * steps * batch


def _packed_batch(input: PackedSequence) -> int | None:
    """The number of sequences in a PackedSequence: batch_sizes[0], read from shapes under torch.compile
    (which traces shapes, not values): sorted_indices' length, or None when no shape tells it."""
    if not torch.compiler.is_compiling():
        return int(input.batch_sizes[0])
    return input.sorted_indices.shape[0] if input.sorted_indices is not None else None


class LSTM(_RNNBase):
    """Drop-in nn.LSTM. Extra keyword: backend = "auto" | "cuda" | "triton" | "reference" | "aten"."""

    mode = "LSTM"

    def get_expected_cell_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """As nn.LSTM: the shape of c_0 for a batched input (or a PackedSequence's data and batch_sizes)."""
        layers, batch, _ = self.get_expected_hidden_size(input, batch_sizes)
        return (layers, batch, self.hidden_size)

    def check_forward_args(self, input: Tensor, hidden: tuple[Tensor, Tensor], batch_sizes: Tensor | None) -> None:
        """As nn.LSTM: check a batched input and the pair (h_0, c_0), each 3-D."""
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes), self._hidden_size_message(0))
        self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes), self._hidden_size_message(1))

    def permute_hidden(self, hx: tuple[Tensor, Tensor], permutation: Tensor | None) -> tuple[Tensor, Tensor]:
        """As nn.LSTM: (h, c) with the batch dimension (1) of each reordered by `permutation`."""
        return hx if permutation is None else tuple(_permute(list(hx), permutation))


class GRU(_RNNBase):
    """Drop-in nn.GRU. Extra keyword: backend = "auto" | "cuda" | "triton" | "reference" | "aten"."""

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, backend: str = "auto", *, proj_size: int | None = None) -> None:
        if proj_size is not None:
            raise ValueError(f"proj_size argument is only supported for LSTM, not RNN or GRU (fastrnn.GRU got proj_size={proj_size})")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend)


class RNN(_RNNBase):
    """Drop-in nn.RNN (Elman, nonlinearity "tanh" or "relu"). Extra keyword: backend = "auto" | "cpp" | "cuda" |
    "triton" | "reference" | "aten" (on a GPU auto runs cuDNN: the cuda and Triton kernels are not yet measured
    against it)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, backend: str = "auto", *, proj_size: int | None = None) -> None:
        if proj_size is not None:
            raise ValueError(f"proj_size argument is only supported for LSTM, not RNN or GRU (fastrnn.RNN got proj_size={proj_size})")
        cell = cells.elman(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend, mode=cell.mode)
        self.nonlinearity = nonlinearity

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.nonlinearity == "tanh" else text.replace(", backend=", ", nonlinearity='relu', backend=")


def _exporting_to_onnx() -> bool:
    """torch.onnx.is_in_onnx_export(), as the dynamo exporter's strict capture needs it too: Dynamo folds that
    function to False, so the exporter's own flag is read (its module is loaded only once an export began)."""
    flags = sys.modules.get("torch.onnx._internal.exporter._flags")
    if flags is not None and getattr(flags, "_is_onnx_exporting", False):
        return True
    return torch.jit.is_tracing() and torch.onnx.is_in_onnx_export()  # the TorchScript exporter traces


def _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size) -> None:
    """The constructor checks of nn.RNNBase, with the same exception types."""
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout should be a number in range [0, 1] representing the probability of an element being zeroed, got {dropout!r}")
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            f"dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects num_layers greater than 1, "
            f"but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=3,
        )
    for name, value, kind in (("bias", bias, bool), ("batch_first", batch_first, bool),
                              ("input_size", input_size, int), ("hidden_size", hidden_size, int),
                              ("num_layers", num_layers, int), ("proj_size", proj_size, int)):
        if not isinstance(value, kind):
            raise TypeError(f"{name} should be of type {kind.__name__}, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero, got {value}")
    if proj_size < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {proj_size}")
    if proj_size >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size}, hidden_size={hidden_size}")


def _constructor_args(module) -> dict:
    """The constructor arguments that rebuild an RNN layer's shape (nn's layers or ours)."""
    names = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"]
    if module.mode == "LSTM":
        names.append("proj_size")
    elif module.mode.startswith("RNN_"):
        names.append("nonlinearity")
    return {name: getattr(module, name) for name in names}


def _compute_dtype(x: Tensor, cell: cells.Cell) -> torch.dtype:
    """The dtype the layer computes in: as torch does for nn's layers, autocast's low-precision
    dtype where autocast lists the op (every RNN on CUDA; on the CPU the LSTM and the Elman RNN but not
    the GRU), otherwise the input's dtype."""
    device = x.device.type
    if _autocast_enabled(device) and x.is_floating_point() and (device != "cpu" or cell.mode != "GRU"):
        return torch.get_autocast_dtype(device)
    return x.dtype


_NO_AUTOCAST = contextlib.nullcontext()


def _autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled for any device type: False where autocast does not exist (meta tensors,
    for shape inference), where torch raises instead."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def _as_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """tensor.to(dtype), without the call when it is a no-op (the forward makes a dozen of them)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _stacked(tensors: list[Tensor]) -> Tensor:
    """torch.stack, without its cost for one tensor (a layer of one direction)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _permute(states: list[Tensor], indices: Tensor | None) -> list[Tensor]:
    """Reorder the batch dimension (1) of each state, as nn.RNNBase.permute_hidden does."""
    return states if indices is None else [s.index_select(1, indices) for s in states]


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"
