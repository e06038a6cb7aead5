"""AdamW with separate learning rates for the encoder and the head, and the warm-up/decay schedule."""

from __future__ import annotations

import torch

from .errors import OptionError
from .model import BertRNNClassifier


def parameter_groups(model: BertRNNClassifier, encoder_lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """Trainable parameters in up to four groups: (encoder | head) x (decayed | not decayed).

    Biases and normalisation weights (every parameter of fewer than 2 dimensions: BERT's LayerNorm,
    the RNN's biases) are not decayed; frozen parameters are left out."""
    groups = []
    for part, lr, named in (("encoder", encoder_lr, model.encoder_parameters()), ("head", head_lr, model.head_parameters())):
        trainable = [(name, p) for name, p in named if p.requires_grad]
        decayed = [p for _, p in trainable if p.ndim >= 2]
        plain = [p for _, p in trainable if p.ndim < 2]
        for params, decay, kind in ((decayed, weight_decay, "decay"), (plain, 0.0, "no_decay")):
            if params:
                groups.append({"params": params, "lr": lr, "weight_decay": decay, "name": f"{part}/{kind}"})
    if not groups:
        raise OptionError("the model has no trainable parameters (is everything frozen?)")
    return groups


def build_optimizer(model: BertRNNClassifier, encoder_lr: float, head_lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, encoder_lr, head_lr, weight_decay))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up from 0 to each group's learning rate over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))
