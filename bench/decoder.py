"""A decoder's loop of cell calls, the bench's workload for the cells: one call per step from Python, with
a layer's call signature so that the bench checks and times it like a layer."""

from __future__ import annotations

import torch
from torch import nn


class DecoderLoop(nn.Module):
    """T calls of `cell` (an nn or fastrnn LSTMCell/GRUCell/RNNCell), as a decoder, teacher-forced, makes
    them: x (T, B, I) -> (the new h of every step (T, B, H), the last state)."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell
        self.input_size = cell.input_size

    def forward(self, x, hx=None):
        outputs = []
        for t in range(x.shape[0]):
            hx = self.cell(x[t], hx)
            outputs.append(hx[0] if isinstance(hx, tuple) else hx)
        return torch.stack(outputs), hx
