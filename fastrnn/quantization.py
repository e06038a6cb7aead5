"""fastrnn layers and cells under torch.ao.quantization.quantize_dynamic.

quantize_dynamic picks modules by exact type twice: the qconfig_spec gives a qconfig to the types it
names (its default names nn.LSTM and nn.GRU, never fastrnn's layers, which are not subclasses of
them), and the mapping then swaps each module that has a qconfig for the class its type maps to.

- The mapping: register() adds fastrnn.LSTM / GRU / LSTMCell / GRUCell / RNNCell to torch's default
  dynamic mapping (the dict get_default_dynamic_quant_module_mappings() hands quantize_dynamic), so a spec
  that names fastrnn's classes, or a module's name, quantizes it exactly as quantize_dynamic quantizes the
  nn module with the same weights (the result is torch's dynamic quantized module). torch quantizes no
  nn.RNN, and neither a fastrnn.RNN.
- The spec: torch offers no way to make its default spec, or {nn.LSTM, nn.GRU}, select another type.
  What it does do is assign every module the qconfig it resolved; QConfigSlot, the layers' `qconfig`
  attribute, warns when that is None, naming the spec that would quantize the layer.
"""

from __future__ import annotations

import warnings

from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantization_mappings


class QuantizationWarning(UserWarning):
    """torch.ao.quantization left a fastrnn layer in floating point."""


class QConfigSlot:
    """The `qconfig` attribute of fastrnn's layers and cells: a plain attribute (absent until set, as on any
    nn.Module) that warns when torch.ao.quantization sets it to None, i.e. leaves a quantizable one float."""

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        try:
            return layer.__dict__["qconfig"]
        except KeyError:
            raise AttributeError(f"'{type(layer).__name__}' object has no attribute 'qconfig'") from None

    def __set__(self, layer, qconfig) -> None:
        layer.__dict__["qconfig"] = qconfig
        if qconfig is None and _target(layer) is not None:
            warnings.warn(_left_float_message(layer), QuantizationWarning, stacklevel=3)

    def __delete__(self, layer) -> None:
        if layer.__dict__.pop("qconfig", _MISSING) is _MISSING:
            raise AttributeError(f"'{type(layer).__name__}' object has no attribute 'qconfig'")


_MISSING = object()


def _left_float_message(layer) -> str:
    kind = type(layer).__name__
    return (
        f"torch.ao.quantization leaves fastrnn.{kind}({layer.extra_repr()}) in floating point: its qconfig_spec "
        f"gave it no qconfig. The spec selects modules by exact type or by name, and torch's default spec and "
        f"{{nn.{kind}}} name only nn's modules, which fastrnn's are not. To quantize it, name fastrnn's classes: "
        f"quantize_dynamic(model, {{nn.Linear, fastrnn.{kind}}}, dtype=torch.qint8) (or dtype=torch.float16). "
        f"If it is meant to stay float, filter fastrnn.QuantizationWarning."
    )


class _DynamicQuantizedFromFastrnn:
    """A dynamic-quantization mapping target for a fastrnn module: from_float builds torch's dynamic
    quantized module from the nn module carrying the fastrnn one's weights and qconfig, which is what
    quantize_dynamic builds for that nn module."""

    @classmethod
    def from_float(cls, module, use_precomputed_fake_quant: bool = False):
        _check_quantizable(module)
        return _target(module).from_float(_as_torch(module), use_precomputed_fake_quant=use_precomputed_fake_quant)


# torch's dynamic quantized (layer, cell) of each cell mode; nn.RNN has no quantized layer.
_TARGETS = {"LSTM": (nnqd.LSTM, nnqd.LSTMCell), "GRU": (nnqd.GRU, nnqd.GRUCell),
            "RNN_TANH": (None, nnqd.RNNCell), "RNN_RELU": (None, nnqd.RNNCell)}


def _target(module) -> type | None:
    """torch's dynamic quantized class for a fastrnn layer or cell; None for fastrnn.RNN."""
    from .modules import _RNNBase  # modules imports this module

    return _TARGETS[module.mode][0 if isinstance(module, _RNNBase) else 1]


def _check_quantizable(layer) -> None:
    """Refuse what torch's dynamic quantized RNNs cannot represent (they would fail, or fail later)."""
    name = f"fastrnn.{type(layer).__name__}({layer.extra_repr()})"
    leave_out = ("leave it out of the spec (give it qconfig None by name: "
                 "quantize_dynamic(model, {fastrnn.LSTM: default_dynamic_qconfig, 'path.to.layer': None}))")
    if getattr(layer, "proj_size", 0):
        raise ValueError(f"{name} cannot be dynamically quantized: torch's dynamic quantized LSTM has no "
                         f"projection (weight_hr); for an nn.LSTM with proj_size quantize_dynamic builds a "
                         f"module whose first forward fails. Keep this layer float: {leave_out}")
    if not layer.bias:
        raise ValueError(f"{name} cannot be dynamically quantized: torch's dynamic quantized RNNs need "
                         f"bias=True (quantize_dynamic refuses an nn.LSTM/nn.GRU without bias too). Keep this "
                         f"layer float: {leave_out}")


def _as_torch(layer) -> nn.Module:
    """The nn layer or cell with the module's configuration, weights (their current values, parametrized
    ones computed) and qconfig, for torch's from_float."""
    from .modules import _RNNBase, _constructor_args  # modules imports this module

    if isinstance(layer, _RNNBase):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nn's dropout warning was already given by the layer's constructor
            twin = layer._cell.torch_layer(**_constructor_args(layer), device="meta")
        names = layer._flat_weights_names
    else:
        extra = {"nonlinearity": layer.nonlinearity} if layer.mode.startswith("RNN_") else {}
        twin = layer._cell.torch_cell(layer.input_size, layer.hidden_size, layer.bias, device="meta", **extra)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    for name in names:
        setattr(twin, name, nn.Parameter(getattr(layer, name).detach(), requires_grad=False))
    twin.qconfig = layer.qconfig
    return twin.train(layer.training)


def register(*modules: type) -> None:
    """Map fastrnn's layers and cells in torch's default dynamic-quantization mapping."""
    mapping = quantization_mappings.get_default_dynamic_quant_module_mappings()
    for module in modules:
        mapping.setdefault(module, _DynamicQuantizedFromFastrnn)
