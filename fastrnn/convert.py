"""fastrnn.convert: swap every nn.LSTM / nn.GRU / nn.RNN and nn cell inside a model for its fastrnn twin."""

from __future__ import annotations

import functools
import warnings

from torch import nn
from torch.nn.utils import parametrize

from .cell_modules import GRUCell, LSTMCell, RNNCell
from .modules import GRU, LSTM, RNN

_TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}
_CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# What a subclass of nn.LSTM / nn.GRU may define and still be converted: Python's bookkeeping, and a
# constructor (whatever it leaves on the instance is checked separately).
_BOOKKEEPING = frozenset({
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__slots__", "__annotations__",
    "__annotate__", "__annotate_func__", "__annotations_cache__", "__firstlineno__", "__static_attributes__",
    "__orig_bases__", "__parameters__", "__abstractmethods__", "_abc_impl", "__init__",
})


class ConvertWarning(UserWarning):
    """fastrnn.convert left recurrent modules as they were."""


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace, in place, every nn.LSTM / nn.GRU / nn.RNN / nn.LSTMCell / nn.GRUCell / nn.RNNCell by its
    fastrnn twin sharing its parameters (same device, dtype, Parameter objects and training mode), and
    every subclass of them that keeps nn's forward and adds nothing a fastrnn module would lose.

    Returns the model; if `model` itself is replaced the replacement is returned. A ConvertWarning names
    each recurrent module left as it was, and why: a subclass that overrides forward or adds methods or
    state. One with parametrized weights (weight_norm, ...) is refused with a
    ValueError that says what to do.
    """
    skipped: list[str] = []
    result = _convert(model, backend, "", skipped)
    if skipped:
        warnings.warn(f"fastrnn.convert left {len(skipped)} recurrent module(s) as they were:\n  " + "\n  ".join(skipped),
                      ConvertWarning, stacklevel=2)
    return result


def _convert(module: nn.Module, backend: str, path: str, skipped: list[str]) -> nn.Module:
    kind = parametrize.type_before_parametrizations(module)  # a parametrized nn.LSTM is a subclass
    torch_type = _torch_type(kind)
    if torch_type is not None:
        reason = None if kind is torch_type else _why_not_convertible(module, kind, torch_type)
        if reason is None:
            return _TWINS[torch_type].from_torch(module, backend=backend)
        skipped.append(f"{_where(path, kind)}: {reason}")
    elif isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        skipped.append(f"{_where(path, kind)}: {_no_counterpart(kind)}")  # a bare base class
    for name, child in module.named_children():
        replacement = _convert(child, backend, f"{path}.{name}" if path else name, skipped)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def _torch_type(kind: type) -> type | None:
    """The nn recurrent class (in _TWINS) `kind` is or derives from; None for anything else."""
    return next((torch_type for torch_type in _TWINS if issubclass(kind, torch_type)), None)


def _why_not_convertible(module: nn.Module, kind: type, torch_type: type) -> str | None:
    """Why a subclass of an nn recurrent module cannot become the fastrnn one, and what to do instead; None
    when nothing would be lost: it keeps nn's forward and adds no methods or state."""
    twin = f"fastrnn.{_TWINS[torch_type].__name__}"
    reasons = []
    if kind.forward is not torch_type.forward:
        reasons.append(f"overrides forward ({twin} would run nn.{torch_type.__name__}'s)")
    members = _added_members(kind, torch_type)
    if members:
        reasons.append(f"defines {', '.join(members)} ({twin} would lose {_them(members)})")
    state = _added_state(module, torch_type)
    if state:
        reasons.append(f"holds {', '.join(state)} ({twin} would lose {_them(state)})")
    if not reasons:
        return None
    return (f"{'; '.join(reasons)}. To run it on fastrnn, derive its class from {twin} instead of "
            f"nn.{torch_type.__name__} (same constructor and forward)")


def _them(things: list[str]) -> str:
    return "it" if len(things) == 1 else "them"


def _added_members(kind: type, torch_type: type) -> list[str]:
    """The methods and class attributes that the classes between `kind` and `torch_type` define
    (forward aside, reported on its own)."""
    ours = [cls for cls in kind.__mro__ if cls not in torch_type.__mro__]
    names = {name for cls in ours for name in vars(cls)} - _BOOKKEEPING - {"forward"}
    return sorted(names)


def _added_state(module: nn.Module, torch_type: type) -> list[str]:
    """What an instance holds beyond an nn.LSTM / nn.GRU of its class: attributes, parameters other
    than the RNN weights, buffers, submodules (a parametrization's aside)."""
    state = [f"attribute {name}" for name in sorted(set(vars(module)) - _plain_attributes(torch_type))]
    weights = module._flat_weights_names if isinstance(module, nn.RNNBase) else _CELL_WEIGHTS
    state += [f"parameter {name}" for name in module._parameters if name not in weights]
    state += [f"buffer {name}" for name in module._buffers]
    state += [f"submodule {name}" for name in module._modules if name != "parametrizations"]
    return state


@functools.cache
def _plain_attributes(torch_type: type) -> frozenset[str]:
    """The instance attributes of a freshly built nn recurrent module of `torch_type`."""
    return frozenset(vars(torch_type(1, 1, device="meta")))


def _no_counterpart(kind: type) -> str:
    """Why a recurrent module fastrnn has no twin of stays: named by the nn class it is."""
    torch_class = next(cls for cls in kind.__mro__ if cls.__module__.startswith("torch.nn."))
    return (f"fastrnn has no counterpart of nn.{torch_class.__name__} (it replaces "
            f"{', '.join('nn.' + cls.__name__ for cls in _TWINS)})")


def _where(path: str, kind: type) -> str:
    """How a skipped module is named in the warning: its path in the model and its class."""
    label = repr(path) if path else "the model itself"
    return f"{label} ({kind.__module__}.{kind.__qualname__})"
