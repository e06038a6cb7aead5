"""fastrnn layers under torch.ao.quantization.quantize_dynamic.

quantize_dynamic picks modules by exact type twice: the qconfig_spec gives a qconfig to the types it
names (its default names nn.LSTM and nn.GRU, never fastrnn's layers, which are not subclasses of
them), and the mapping then swaps each module that has a qconfig for the class its type maps to.

- The mapping: register() adds fastrnn.LSTM / fastrnn.GRU to torch's default dynamic mapping (the
  dict get_default_dynamic_quant_module_mappings() hands quantize_dynamic), so a spec that names
  fastrnn's classes, or a layer's name, quantizes it exactly as quantize_dynamic quantizes an
  nn.LSTM / nn.GRU with the same weights (the result is torch's dynamic quantized LSTM / GRU).
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
    """The `qconfig` attribute of fastrnn.LSTM / fastrnn.GRU: a plain attribute (absent until set, as on
    any nn.Module) that warns when torch.ao.quantization sets it to None, i.e. leaves the layer float."""

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        try:
            return layer.__dict__["qconfig"]
        except KeyError:
            raise AttributeError(f"'{type(layer).__name__}' object has no attribute 'qconfig'") from None

    def __set__(self, layer, qconfig) -> None:
        layer.__dict__["qconfig"] = qconfig
        if qconfig is None:
            warnings.warn(_left_float_message(layer), QuantizationWarning, stacklevel=3)

    def __delete__(self, layer) -> None:
        if layer.__dict__.pop("qconfig", _MISSING) is _MISSING:
            raise AttributeError(f"'{type(layer).__name__}' object has no attribute 'qconfig'")


_MISSING = object()


def _left_float_message(layer) -> str:
    name = f"fastrnn.{type(layer).__name__}"
    return (
        f"torch.ao.quantization leaves {name}({layer.extra_repr()}) in floating point: its qconfig_spec gave "
        f"it no qconfig. The spec selects modules by exact type or by name, and torch's default spec and "
        f"{{nn.LSTM, nn.GRU}} name only nn.LSTM and nn.GRU, which fastrnn's layers are not. To quantize it, "
        f"name fastrnn's classes: quantize_dynamic(model, {{nn.Linear, fastrnn.LSTM, fastrnn.GRU}}, "
        f"dtype=torch.qint8) (or dtype=torch.float16). If it is meant to stay float, filter "
        f"fastrnn.QuantizationWarning."
    )


class _DynamicQuantizedFromFastrnn:
    """A dynamic-quantization mapping target for a fastrnn layer: from_float builds torch's dynamic
    quantized layer (`target`) from an nn.LSTM / nn.GRU carrying the layer's weights and qconfig, which
    is what quantize_dynamic builds for that nn.LSTM / nn.GRU."""

    target: type[nnqd.LSTM] | type[nnqd.GRU]

    @classmethod
    def from_float(cls, layer, use_precomputed_fake_quant: bool = False):
        _check_quantizable(layer)
        return cls.target.from_float(_as_torch(layer), use_precomputed_fake_quant=use_precomputed_fake_quant)


class DynamicQuantizedLSTM(_DynamicQuantizedFromFastrnn):
    """fastrnn.LSTM's mapping target: builds torch.ao.nn.quantized.dynamic.LSTM."""

    target = nnqd.LSTM


class DynamicQuantizedGRU(_DynamicQuantizedFromFastrnn):
    """fastrnn.GRU's mapping target: builds torch.ao.nn.quantized.dynamic.GRU."""

    target = nnqd.GRU


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


def _as_torch(layer) -> nn.RNNBase:
    """An nn.LSTM / nn.GRU with the layer's configuration, weights (their current values, parametrized
    ones computed) and qconfig, for torch's from_float."""
    from .modules import _constructor_args  # modules imports this module

    twin_type = nn.LSTM if layer.mode == "LSTM" else nn.GRU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nn's dropout warning was already given by the layer's constructor
        twin = twin_type(**_constructor_args(layer), device="meta")
    for name in layer._flat_weights_names:
        setattr(twin, name, nn.Parameter(getattr(layer, name).detach(), requires_grad=False))
    twin.qconfig = layer.qconfig
    return twin.train(layer.training)


def register(lstm: type, gru: type) -> None:
    """Map fastrnn.LSTM / fastrnn.GRU in torch's default dynamic-quantization mapping."""
    mapping = quantization_mappings.get_default_dynamic_quant_module_mappings()
    mapping.setdefault(lstm, DynamicQuantizedLSTM)
    mapping.setdefault(gru, DynamicQuantizedGRU)
