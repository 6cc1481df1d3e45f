"""Batched LoRA for a mixed batch: `out += scale * (x @ A_i) @ B_i`, adapter i chosen per row.

All resident adapters live in stacked tensors, one slot per adapter, ranks zero-padded to a common R, with
the scale folded into B. Each step the rows are grouped by adapter (rows of base-only sequences are left
out): when the batch is sorted by adapter and the groups are equal, a group is a view of the batch;
otherwise rows are gathered into a padded `[adapters, rows, d]` block. Every LoRA projection is then
batched matmuls over all the adapters of the batch at once (the SGMV idea of Punica/S-LoRA) — no Python
loop over adapters, no merged weights. The fused QKV and gate-up projections share one shrink (their A
matrices concatenated along the rank) and expand each sub-projection into its slice of the output.
"""

from dataclasses import dataclass

import torch

# Fused projection -> (input size attribute, [(PEFT module name, output size attribute)])
PROJECTIONS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "qkv": ("hidden_size", [("q_proj", "q_size"), ("k_proj", "kv_size"), ("v_proj", "kv_size")]),
    "o": ("q_size", [("o_proj", "hidden_size")]),
    "gate_up": ("hidden_size", [("gate_proj", "intermediate_size"), ("up_proj", "intermediate_size")]),
    "down": ("intermediate_size", [("down_proj", "hidden_size")]),
}
MODULE_TO_PROJECTION = {m: (p, j) for p, (_, subs) in PROJECTIONS.items() for j, (m, _) in enumerate(subs)}


@dataclass
class LoRABatch:
    """Rows of a flat batch grouped by adapter: built once per step, used by every LoRA projection.

    When the rows are sorted by adapter (the model runner sorts its batch) and every adapter has the same
    number of rows, the groups are plain views of the batch (`start`, `rows_per_adapter`): no gather or
    scatter at all. Otherwise rows are gathered into a padded block and scattered back."""

    slots: torch.Tensor  # [n] stack slot of each adapter present in the batch
    key: tuple[int, ...]  # the same, as a cache key
    num_active: int
    start: int = -1  # contiguous case: first LoRA row (rows before it are base-only)
    rows_per_adapter: int = 0
    gather_index: torch.Tensor | None = None  # [n, m] flat row; padding points at an extra zero row
    scatter_index: torch.Tensor | None = None  # [n * m] row to add into; padding adds zeros into row 0

    @classmethod
    def build(cls, row_slots: list[int], device: str = "cpu") -> "LoRABatch":
        """`row_slots[t]` is the adapter slot of flat row t (0 = base model, no LoRA)."""
        groups: dict[int, list[int]] = {}
        for row, slot in enumerate(row_slots):
            if slot:
                groups.setdefault(slot, []).append(row)
        n, m = len(groups), max((len(r) for r in groups.values()), default=0)
        key = tuple(groups)
        slots = torch.tensor(key, dtype=torch.long, device=device)
        start = len(row_slots) - n * m
        rows = [r for g in groups.values() for r in g]
        if all(len(g) == m for g in groups.values()) and rows == list(range(start, len(row_slots))):
            return cls(slots, key, n, start=start, rows_per_adapter=m)
        pad = len(row_slots)
        gather = torch.full((n, m), pad, dtype=torch.long)
        for g, rows in enumerate(groups.values()):
            gather[g, : len(rows)] = torch.tensor(rows)
        scatter = torch.where(gather == pad, 0, gather).flatten()
        return cls(slots, key, n, gather_index=gather.to(device), scatter_index=scatter.to(device))


class LoRAWeights:
    """Stacked A and B of all adapter slots per fused projection, in PEFT's layout (so installing is a plain
    copy): A `[layers, slots, subs * R, d_in]`, B `[layers, slots, d_out, R]` per sub-projection.
    Slot 0 is reserved for "no adapter"."""

    def __init__(
        self,
        dims: dict[str, int],
        num_layers: int,
        num_slots: int,
        dtype: torch.dtype,
        device: str,
        cache_bytes: int = 512 << 20,
    ):
        self.dims, self.num_layers, self.num_slots = dims, num_layers, num_slots
        self.dtype, self.device = dtype, device
        self.cache_bytes = cache_bytes  # most memory for the copy of a batch's adapters (see _gathered)
        self.version = 0  # bumped whenever slot contents change
        self._cache: dict | None = None
        self._cache_key: tuple | None = None
        self.rank = 0
        self.A: dict[str, torch.Tensor] = {}
        self.B: dict[str, list[torch.Tensor]] = {}

    def ensure_rank(self, rank: int, live_slots: list[int]) -> None:
        """Grow the common rank R when an adapter needs it (reallocate the stacks, keep live slots)."""
        if rank <= self.rank:
            return
        old_a, old_b, old_r = self.A, self.B, self.rank
        self.A, self.B = {}, {}
        L, S, kw = self.num_layers, self.num_slots, {"dtype": self.dtype, "device": self.device}
        # torch.empty: slots never written stay unbacked by RAM; a slot is fully written when installed.
        for p, (din, subs) in PROJECTIONS.items():
            self.A[p] = torch.empty(L, S, len(subs) * rank, self.dims[din], **kw)
            self.B[p] = [torch.empty(L, S, self.dims[d], rank, **kw) for _, d in subs]
        self.rank = rank
        self.version += 1
        self._cache = self._cache_key = None
        for slot in live_slots:
            for p, (_, subs) in PROJECTIONS.items():
                self.A[p][:, slot].zero_()
                for j in range(len(subs)):
                    self.A[p][:, slot, j * rank : j * rank + old_r] = old_a[p][
                        :, slot, j * old_r : (j + 1) * old_r
                    ]
                    self.B[p][j][:, slot].zero_()
                    self.B[p][j][:, slot, :, :old_r] = old_b[p][j][:, slot]

    def install(
        self, slot: int, modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]
    ) -> None:
        """Install an adapter: `modules[(layer, module)] = (lora_A [r, in], lora_B [out, r], scale)`."""
        R = self.rank
        self.version += 1
        covered = len(modules) == self.num_layers * len(MODULE_TO_PROJECTION)
        if not (covered and all(a.shape[0] == R for a, _, _ in modules.values())):
            for p, (_, subs) in PROJECTIONS.items():  # rank padding and untargeted modules must be zero
                self.A[p][:, slot].zero_()
                for j in range(len(subs)):
                    self.B[p][j][:, slot].zero_()
        for (layer, module), (a, b, scale) in modules.items():
            p, j = MODULE_TO_PROJECTION[module]
            r = a.shape[0]
            self.A[p][layer, slot, j * R : j * R + r].copy_(a)
            self.B[p][j][layer, slot, :, :r].copy_(b).mul_(scale)

    @property
    def slot_bytes(self) -> int:
        return sum(
            t[:, 0].numel() * t.element_size()
            for a, bs in ((self.A[p], self.B[p]) for p in self.A)
            for t in (a, *bs)
        )

    def _gathered(self, batch: LoRABatch) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]] | None:
        """The batch's adapters copied out of the stacks for all layers at once, kept while the batch's set
        of adapters is unchanged (every decode step of a steady batch), so no step copies weights again."""
        key = (batch.key, self.version)
        if self._cache_key == key:
            return self._cache
        self._cache, self._cache_key = None, None  # free the old copy before making a new one
        if batch.num_active * self.slot_bytes > self.cache_bytes:
            return None
        idx = batch.slots
        self._cache = {p: (self.A[p][:, idx], [b[:, idx] for b in self.B[p]]) for p in PROJECTIONS}
        self._cache_key = key
        return self._cache

    def add(self, layer: int, proj: str, x: torch.Tensor, out: torch.Tensor, batch: LoRABatch) -> None:
        """`out[t] += (x[t] @ A_slot(t)) @ B_slot(t)` for every row t that has an adapter."""
        R, n, m = self.rank, batch.num_active, batch.rows_per_adapter
        cached = self._gathered(batch)
        if cached is not None:
            a, bs = cached[proj][0][layer], [b[layer] for b in cached[proj][1]]
        else:
            a, bs = self.A[proj][layer][batch.slots], [b[layer][batch.slots] for b in self.B[proj]]
        contiguous = batch.start >= 0
        if contiguous:
            xs = x[batch.start :].view(n, m, x.shape[1])
        else:
            xs = torch.cat([x, x.new_zeros(1, x.shape[1])])[batch.gather_index]  # [n, m, d_in]
        h = torch.bmm(xs, a.transpose(1, 2))  # [n, m, subs * R]
        offset = 0
        for j, b in enumerate(bs):
            y = torch.bmm(
                h if len(bs) == 1 else h[..., j * R : (j + 1) * R], b.transpose(1, 2)
            )  # [n, m, out_j]
            width = y.shape[-1]
            target = out if len(bs) == 1 else out[:, offset : offset + width]
            if contiguous:
                target[batch.start :].view(n, m, width).add_(y)
            else:
                target.index_add_(0, batch.scatter_index, y.view(-1, width))
            offset += width
