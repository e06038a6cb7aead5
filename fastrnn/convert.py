"""fastrnn.convert: swap every nn.LSTM / nn.GRU inside a model for its fastrnn twin."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from .modules import GRU, LSTM

_TWINS = {nn.LSTM: LSTM, nn.GRU: GRU}


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace, in place, every module whose type is exactly nn.LSTM or nn.GRU by fastrnn.LSTM /
    fastrnn.GRU sharing its parameters (same device, dtype, Parameter objects and training mode).

    Returns the model; if `model` itself is an nn.LSTM/nn.GRU the replacement is returned. One with
    parametrized weights (weight_norm, ...) is refused with a ValueError that says what to do.
    """
    twin = _TWINS.get(parametrize.type_before_parametrizations(model))  # a parametrized nn.LSTM is a subclass
    if twin is not None:
        return twin.from_torch(model, backend=backend)
    for name, child in model.named_children():
        replacement = convert(child, backend)
        if replacement is not child:
            setattr(model, name, replacement)
    return model
