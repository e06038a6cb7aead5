"""Batches: the order of each epoch (shuffled, sharded across processes, optionally length-bucketed)
and a collate function that tokenises and pads each batch to its own longest sequence."""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from .data import TextTable

BUCKET_SPAN = 50  # batches per bucketing window: long enough to group lengths, short enough to stay random


class TokenizingCollator:
    """Turns a list of examples (dicts from TextDataset) into model inputs padded to the batch's
    longest sequence (dynamic padding), plus `labels` and `index` tensors when present."""

    def __init__(self, tokenizer, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        tokenizer.padding_side = "right"  # the head packs the first `length` tokens of each row

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        texts = [example["text"] for example in examples]
        pairs = [example["text_pair"] for example in examples] if "text_pair" in examples[0] else None
        batch = dict(self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt"))
        batch["index"] = torch.tensor([example["index"] for example in examples])
        if "label" in examples[0]:
            batch["labels"] = torch.tensor([example["label"] for example in examples])
        return batch


def token_lengths(tokenizer, table: TextTable, max_length: int, chunk: int = 4096) -> list[int]:
    """Tokens per row after truncation (special tokens included): what bucketing sorts by."""
    lengths: list[int] = []
    for start in range(0, len(table), chunk):
        texts = table.texts[start:start + chunk]
        pairs = table.pairs[start:start + chunk] if table.pairs is not None else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
        lengths.extend(len(ids) for ids in encoded)
    return lengths


def epoch_batches(num_examples: int, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                  world_size: int = 1, lengths: list[int] | None = None) -> list[list[int]]:
    """This process's batches of example indices for one epoch; a pure function of its arguments,
    so a resumed run rebuilds (and checks) the same order.

    Shuffled and sharded by DistributedSampler (every process gets the same number of batches);
    with `lengths`, each window of BUCKET_SPAN batches is sorted by length before it is cut into
    batches, and the batch order is shuffled again, so batches hold similar lengths (less padding)."""
    sampler = DistributedSampler(range(num_examples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    if lengths is None:
        return _chunks(indices, batch_size)
    window = batch_size * BUCKET_SPAN
    batches: list[list[int]] = []
    for start in range(0, len(indices), window):
        block = sorted(indices[start:start + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(_chunks(block, batch_size))
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return [batches[i] for i in order.tolist()]


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """All indices in batches of similar length, longest first: the fastest order for inference
    (callers put results back in input order by index)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return _chunks(order, batch_size)


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[start:start + size] for start in range(0, len(indices), size)]
