"""A decoder's loop of cell calls, the bench's workload for the cells: one call per step from Python, with
a layer's call signature so that the bench checks and times it like a layer."""

from __future__ import annotations

import torch
from torch import nn


class DecoderLoop(nn.Module):
    """T calls of `cell` (an nn or fastrnn LSTMCell/GRUCell/RNNCell), as a decoder, teacher-forced, makes
    them: x (T, B, I) -> (the new h of every step (T, B, H), the last state).

    The steps' inputs come from one `unbind`, not T indexings x[t]: each x[t]'s backward writes a zeroed
    gradient the size of all of x, which at T = 64 costs more than the cell step itself (5-7 of the 19 ms
    of a B=32, H=64 RNNCell training loop, measured) and is the same for every competitor, so it would
    only hide the cells' difference."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell
        self.input_size = cell.input_size

    def forward(self, x, hx=None):
        outputs = []
        for x_t in x.unbind(0):
            hx = self.cell(x_t, hx)
            outputs.append(hx[0] if isinstance(hx, tuple) else hx)
        return torch.stack(outputs), hx
