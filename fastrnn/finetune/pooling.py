"""Turn token states into one vector per sequence, looking only at the real (unmasked) tokens."""

from __future__ import annotations

import torch
from torch import Tensor


def lengths_from_mask(attention_mask: Tensor) -> Tensor:
    """Number of real tokens per sequence, as a CPU int64 tensor (what pack_padded_sequence wants).

    The real tokens must come first (right padding): packing keeps the first `length` steps."""
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("a sequence in the batch has no real tokens (its attention_mask is all zeros)")
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not bool((mask == (positions < lengths[:, None])).all()):
        raise ValueError("attention_mask must be right-padded (real tokens first, then padding); "
                         "set tokenizer.padding_side = 'right'")
    return lengths.cpu()


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of states (B, T, H) over the positions where mask (B, T) is 1."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def masked_max(states: Tensor, mask: Tensor) -> Tensor:
    """Element-wise max of states (B, T, H) over the positions where mask (B, T) is 1."""
    fill = torch.finfo(states.dtype).min
    return states.masked_fill(~mask.bool().unsqueeze(-1), fill).amax(dim=1)


def final_states(h_n: Tensor, num_directions: int) -> Tensor:
    """The top layer's final hidden state of each direction, concatenated: (B, num_directions * H).

    h_n is (num_layers * num_directions, B, H); with packed input the forward direction's final
    state is taken at each sequence's own last real token and the backward one at its first."""
    top = h_n[-num_directions:]
    return torch.cat(list(top), dim=-1)
