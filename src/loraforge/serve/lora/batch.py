"""The rows of one step's flat batch grouped by adapter, built once per step for every LoRA projection."""

from dataclasses import dataclass
from itertools import accumulate

import torch


@dataclass
class LoRABatch:
    """Rows of a flat batch grouped by adapter: built once per step, used by every LoRA projection.

    The model runner sorts its batch by adapter, so the LoRA rows are one contiguous run from `start`. When
    every adapter has the same number of rows (a decode step), the groups are plain views of that run: no
    gather at all. Otherwise (prefills of different lengths) rows are gathered into a padded block and the
    results gathered back in row order. Unsorted rows (not produced by the runner) fall back to a scatter."""

    indices: torch.Tensor  # [n] adapter index (place in the LoRA stacks) of each adapter in the batch
    key: tuple[int, ...]  # the same, as a cache key
    num_active: int
    start: int = -1  # sorted case: first LoRA row (rows before it are base-only)
    rows_per_adapter: int = 0
    gather_index: torch.Tensor | None = None  # [n, m] flat row; padding points at an extra zero row
    unpad_index: torch.Tensor | None = None  # sorted, unequal groups: [LoRA rows] index into [n * m]
    scatter_index: torch.Tensor | None = None  # unsorted: [n * m] row to add into; padding adds into row 0
    row_start: torch.Tensor | None = None  # sorted: [n + 1] first row of each group, then the end (kernels)

    @classmethod
    def build(cls, row_adapters: list[int], device: str = "cpu") -> "LoRABatch":
        """`row_adapters[t]` is the adapter index of flat row t (0 = base model, no LoRA)."""
        groups: dict[int, list[int]] = {}
        for row, index in enumerate(row_adapters):
            if index:
                groups.setdefault(index, []).append(row)
        n, m = len(groups), max((len(r) for r in groups.values()), default=0)
        key = tuple(groups)
        indices = torch.tensor(key, dtype=torch.long, device=device)
        rows = [r for g in groups.values() for r in g]
        start = len(row_adapters) - len(rows)
        is_sorted = rows == list(range(start, len(row_adapters)))
        sizes = [len(g) for g in groups.values()]
        row_start = torch.tensor(list(accumulate(sizes, initial=start))) if is_sorted else None
        if is_sorted and all(size == m for size in sizes):
            return cls(indices, key, n, start=start, rows_per_adapter=m, row_start=row_start)
        pad = len(row_adapters)
        gather = torch.full((n, m), pad, dtype=torch.long)
        for g, members in enumerate(groups.values()):
            gather[g, : len(members)] = torch.tensor(members)
        if is_sorted:
            unpad = [g * m + j for g, members in enumerate(groups.values()) for j in range(len(members))]
            return cls(
                indices,
                key,
                n,
                start=start,
                rows_per_adapter=m,
                gather_index=gather.to(device),
                unpad_index=torch.tensor(unpad, device=device),
                row_start=row_start,
            )
        scatter = torch.where(gather == pad, 0, gather).flatten()
        return cls(indices, key, n, gather_index=gather.to(device), scatter_index=scatter.to(device))
