"""AdamW with separate learning rates for the encoder and the head, and the warm-up/decay schedule."""

from __future__ import annotations

import torch

from .encoder import embeddings_module, transformer_layers
from .errors import OptionError
from .model import BertRNNClassifier


def parameter_groups(model: BertRNNClassifier, encoder_lr: float, head_lr: float, weight_decay: float,
                     layer_lr_decay: float = 1.0) -> list[dict]:
    """Trainable parameters grouped by learning rate and by (decayed | not decayed).

    Biases and normalisation weights (every parameter of fewer than 2 dimensions: BERT's LayerNorm,
    the RNN's biases) are not decayed; frozen parameters are left out. With layer_lr_decay < 1 the
    encoder's learning rate shrinks with depth below the top: layer i of L trains at
    encoder_lr * layer_lr_decay**(L-1-i) and the embeddings at encoder_lr * layer_lr_decay**L, so the
    lower, more general layers move less (layer-wise learning-rate decay)."""
    if not 0.0 < layer_lr_decay <= 1.0:
        raise OptionError(f"layer_lr_decay must be in (0, 1] (1: the same rate for every encoder layer), got {layer_lr_decay}")
    depth = _depth_below_top(model) if layer_lr_decay != 1.0 else {}
    buckets: dict[tuple[str, int, bool], list] = {}  # (part, layers below the top, decayed) -> parameters
    for part, named in (("encoder", model.encoder_parameters()), ("head", model.head_parameters())):
        for _, p in named:
            if p.requires_grad:
                buckets.setdefault((part, depth.get(id(p), 0), p.ndim >= 2), []).append(p)
    if not buckets:
        raise OptionError("the model has no trainable parameters (is everything frozen?)")
    groups = []
    for (part, below_top, decayed), params in buckets.items():
        lr = (encoder_lr * layer_lr_decay ** below_top) if part == "encoder" else head_lr
        where = f"{part}/{below_top}-below-top" if below_top else part  # a name starts with its part
        groups.append({"params": params, "lr": lr, "weight_decay": weight_decay if decayed else 0.0,
                       "name": f"{where}/{'decay' if decayed else 'no_decay'}"})
    return groups


def _depth_below_top(model: BertRNNClassifier) -> dict[int, int]:
    """id(parameter) -> how many layers below the encoder's top layer it sits (embeddings: one below the lowest)."""
    layers = transformer_layers(model.encoder)
    depth = {id(p): len(layers) for p in embeddings_module(model.encoder).parameters()}
    for index, layer in enumerate(layers):
        depth.update({id(p): len(layers) - 1 - index for p in layer.parameters()})
    return depth


def build_optimizer(model: BertRNNClassifier, encoder_lr: float, head_lr: float, weight_decay: float,
                    layer_lr_decay: float = 1.0) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, encoder_lr, head_lr, weight_decay, layer_lr_decay))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up from 0 to each group's learning rate over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))
