"""What to time: one Case per (cell, dtype, shape, layout), and the named presets of the CLI."""

from __future__ import annotations

import dataclasses
import itertools

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

# The bench's names of what it times, each by its cell's mode (fastrnn.cells): the layers, and the decoder
# loops of T calls of a cell ("...cell").
LAYER_CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}
STEP_CELLS = {"lstmcell": "LSTM", "grucell": "GRU", "rnncell": "RNN_TANH"}
ALL_CELLS = {**LAYER_CELLS, **STEP_CELLS}


@dataclasses.dataclass(frozen=True)
class Case:
    cell: str  # a key of ALL_CELLS
    dtype: str  # a key of DTYPES
    batch: int
    seq_len: int
    hidden: int
    input_size: int
    layers: int = 1
    bidirectional: bool = False
    # Variable-length batch: lengths drawn uniformly from [min_fraction * seq_len, seq_len] (PackedSequence).
    min_length_fraction: float | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def mode(self) -> str:
        """The cell's mode (fastrnn.cells.Cell.mode)."""
        return ALL_CELLS[self.cell]

    @property
    def decoder(self) -> bool:
        """Whether the case is a decoder loop of cell calls rather than a layer."""
        return self.cell in STEP_CELLS

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def label(self) -> str:
        parts = [self.cell, self.dtype, f"B={self.batch}", f"T={self.seq_len}", f"H={self.hidden}", f"I={self.input_size}"]
        if self.layers != 1:
            parts.append(f"L={self.layers}")
        if self.bidirectional:
            parts.append("bidir")
        if self.min_length_fraction is not None:
            parts.append(f"varlen>={self.min_length_fraction:g}T")
        return " ".join(parts)


# Each preset: lists per axis (input size None = the hidden size). "paper" is the grid of the issues.
# Axes a preset does not name take grid()'s defaults: input size = hidden, 1 layer, one direction, padded.
PRESETS: dict[str, dict] = {
    "quick": dict(cells=["lstm", "gru"], dtypes=["float32"], batch=[4, 16], seq_len=[32], hidden=[64]),
    "paper": dict(cells=["lstm", "gru"], dtypes=["bfloat16", "float16", "float32"], batch=[1, 16, 64, 256],
                  seq_len=[256, 1024], hidden=[256, 512, 1024]),
    # The CPU grid of bench/RESULTS.md (run once per thread count, --threads 1 and --threads 2).
    "cpu": dict(cells=["lstm", "gru"], dtypes=["float32"], batch=[1, 8, 32, 128], seq_len=[128],
                hidden=[64, 256, 512]),
    "varlen": dict(cells=["lstm", "gru"], dtypes=["bfloat16", "float32"], batch=[16, 64], seq_len=[256],
                   hidden=[256, 1024], min_length_fraction=[0.25]),
    # The Elman layers and the decoder loops of the cells, on the grid of their targets (issue 20).
    "family": dict(cells=["rnn_tanh", "rnn_relu", "lstmcell", "grucell", "rnncell"], dtypes=["float32"],
                   batch=[1, 8, 32], seq_len=[64], hidden=[64, 256]),
}


# What each preset is for, in --help.
PRESET_PURPOSES = {
    "quick": "a first look, on whatever device is present",
    "paper": "the full GPU grid",
    "cpu": "the CPU grid of bench/RESULTS.md (bash bench/cpu_suite.sh OUT runs it at 1 and 2 threads)",
    "varlen": "PackedSequence batches, lengths drawn uniformly from [fraction x T, T]",
    "family": "nn.RNN's twin and decoder loops of T cell calls (fastrnn's cells against nn's)",
}

# How grid()'s axes are spelled on the command line.
AXIS_OPTIONS = {"cells": "--cells", "dtypes": "--dtypes", "batch": "--batch", "seq_len": "--seq-len",
                "hidden": "--hidden", "input_size": "--input-size", "layers": "--layers",
                "bidirectional": "--bidirectional", "min_length_fraction": "--min-length-fraction"}


def describe_preset(name: str) -> str:
    """One line: what the preset is for, the axes it sets and how many cases they make."""
    axes = PRESETS[name]
    shown = "; ".join(f"{AXIS_OPTIONS[axis]} {' '.join(map(str, values))}" for axis, values in axes.items())
    return f"{PRESET_PURPOSES[name]}: {shown} ({len(grid(**axes))} cases)"


def grid(cells, dtypes, batch, seq_len, hidden, input_size=(None,), layers=(1,), bidirectional=(False,),
         min_length_fraction=(None,)) -> list[Case]:
    """Every combination of the axes, as Cases (input size None means equal to the hidden size)."""
    cases = []
    for cell, dtype, b, t, h, i, layer, bidir, fraction in itertools.product(
        cells, dtypes, batch, seq_len, hidden, input_size, layers, bidirectional, min_length_fraction
    ):
        cases.append(Case(cell, dtype, b, t, h, h if i is None else i, layer, bidir, fraction))
    return cases
