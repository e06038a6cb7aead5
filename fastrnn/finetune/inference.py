"""Run a classifier over a dataset: logits in input order, dev-set metrics, label predictions."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .batching import TokenizingCollator, sorted_batches, token_lengths
from .data import TextDataset
from .metrics import classification_metrics


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on a GPU (precision auto or bf16), or anywhere when bf16 is asked for; else none."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def move(batch: dict, device: torch.device) -> dict:
    return {name: value.to(device, non_blocking=True) for name, value in batch.items()}


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@torch.no_grad()
def predict_logits(model, dataset: TextDataset, collator: TokenizingCollator, *, batch_size: int,
                   device: torch.device, precision: str = "auto", lengths: list[int] | None = None) -> torch.Tensor:
    """float32 logits (N, num_labels) in dataset order. Batches run longest first, grouped by length."""
    if lengths is None:
        lengths = token_lengths(collator.tokenizer, dataset.table, collator.max_length)
    was_training = model.training
    model.eval()
    logits = None
    try:
        for indices in sorted_batches(lengths, batch_size):
            batch = move(collator([dataset[i] for i in indices]), device)
            with autocast_for(device, precision):
                out = model(**{name: batch[name] for name in MODEL_INPUTS if name in batch}).float()
            if logits is None:
                logits = torch.empty(len(dataset), out.shape[1])
            logits[batch["index"].cpu()] = out.cpu()
    finally:
        model.train(was_training)
    return logits


def evaluate(model, dataset: TextDataset, collator: TokenizingCollator, *, batch_size: int, device: torch.device,
             precision: str = "auto", lengths: list[int] | None = None) -> dict:
    """Metrics (see metrics.classification_metrics) plus mean cross-entropy `loss` and wall `seconds`."""
    if dataset.label_ids is None:
        raise ValueError("evaluation needs labelled data")
    start = time.perf_counter()
    logits = predict_logits(model, dataset, collator, batch_size=batch_size, device=device, precision=precision, lengths=lengths)
    targets = torch.tensor(dataset.label_ids)
    metrics = classification_metrics(logits.argmax(dim=1), targets, logits.shape[1])
    metrics["loss"] = F.cross_entropy(logits, targets).item()
    metrics["seconds"] = time.perf_counter() - start
    return metrics
