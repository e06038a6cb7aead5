"""The recurrent cell as one description: what the layers, the cell modules, the autograd functions, the
backends, the tests and the benchmark read to tell LSTM, GRU and the Elman RNN (tanh, relu) apart.

A cell is: its nn names (the layer's `mode`, the classes it stands in for), the number of gate blocks in
its weights (G = gates * H rows), its states (LSTM: h and c; the others: h), and its math, one step in
the uniform form of `fastrnn.cell_math` (`step`, `step_backward`). Adding a cell is one entry here, its
math in cell_math.py and csrc/cell.h, and its kernels per backend.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from torch import nn

from . import cell_math


@dataclasses.dataclass(frozen=True)
class Cell:
    mode: str  # nn.RNNBase.mode: "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
    name: str  # the layer's class name in nn and fastrnn: "LSTM", "GRU", "RNN"
    gates: int  # gate blocks: weight_ih is (gates * hidden_size, input_size)
    states: tuple[str, ...]  # the states' names, ("h", "c") or ("h",)
    relu: bool  # the Elman cell's nonlinearity is relu (else tanh); False for LSTM and GRU
    step: Callable  # cell_math's step: (gx, gh, states) -> (new states, saved)
    step_backward: Callable  # (d new states, states, new states, saved) -> (d gx, d gh, direct d states)
    torch_layer: type[nn.RNNBase]
    torch_cell: type[nn.RNNCellBase]

    @property
    def nonlinearity(self) -> str | None:
        """nn.RNN's `nonlinearity` argument ("tanh" or "relu"); None for LSTM and GRU."""
        return None if self.name != "RNN" else "relu" if self.relu else "tanh"

    @property
    def cell_name(self) -> str:
        """The cell module's class name: LSTMCell, GRUCell, RNNCell."""
        return self.name + "Cell"


def _elman(relu: bool) -> Cell:
    return Cell(f"RNN_{'RELU' if relu else 'TANH'}", "RNN", 1, ("h",), relu,
                functools.partial(cell_math.rnn_step, relu=relu), functools.partial(cell_math.rnn_step_backward, relu=relu),
                nn.RNN, nn.RNNCell)


CELLS: dict[str, Cell] = {
    "LSTM": Cell("LSTM", "LSTM", 4, ("h", "c"), False, cell_math.lstm_step, cell_math.lstm_step_backward,
                 nn.LSTM, nn.LSTMCell),
    "GRU": Cell("GRU", "GRU", 3, ("h",), False, cell_math.gru_step, cell_math.gru_step_backward, nn.GRU, nn.GRUCell),
    "RNN_TANH": _elman(relu=False),
    "RNN_RELU": _elman(relu=True),
}


def cell(mode: str) -> Cell:
    """The description of a cell by nn's mode name."""
    try:
        return CELLS[mode]
    except KeyError:
        raise ValueError(f"unknown cell mode {mode!r}; expected one of {', '.join(map(repr, CELLS))}") from None


def elman(nonlinearity: str) -> Cell:
    """nn.RNN's cell for its `nonlinearity` argument, with nn's error for any other value."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return CELLS["RNN_RELU" if nonlinearity == "relu" else "RNN_TANH"]
