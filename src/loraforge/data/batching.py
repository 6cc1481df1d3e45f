"""Length-grouped batches: examples of similar length share a batch, so padding wastes almost nothing."""

import random

import torch

from loraforge.data.tokenize import IGNORE_INDEX, TokenizedExample


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_factor: int = 32
) -> list[list[int]]:
    """Deterministic batches of example indices for one epoch.

    Shuffle, cut into groups of `group_factor` batches, sort each group by length, slice into batches, then
    shuffle the batch order: random like plain shuffling at the group level, but near-uniform lengths inside a
    batch. The same (seed, epoch) always yields the same order, which is what lets `--resume` replay exactly.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch."""
    width = max(len(example) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of computed positions that are padding, for reporting."""
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - real / padded if padded else 0.0
