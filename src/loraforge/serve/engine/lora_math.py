"""Batched LoRA for a mixed batch: `out += scale * (x @ A_i) @ B_i`, adapter i chosen per row.

All resident adapters live in stacked tensors, one slot per adapter, ranks zero-padded to a common R, with
the scale folded into B. Each step the rows are grouped by adapter (rows of base-only sequences are left
out): when the batch is sorted by adapter and the groups are equal, a group is a view of the batch;
otherwise rows are gathered into a padded `[adapters, rows, d]` block (and, when sorted, gathered back
out of it: a scatter-add is ~10x slower on CPU). Every LoRA projection is then
batched matmuls over all the adapters of the batch at once (the SGMV idea of Punica/S-LoRA) — no Python
loop over adapters, no merged weights. On CPU, sorted batches go to C++ kernels instead
(csrc/lora_cpu.cpp), which read each adapter's weights in place in its slot and need no gather: about 3x
faster than the batched matmuls at 32 adapters x 2 rows (decode), as fast at 32 x 60 rows (prefill) before
counting the gather. The fused QKV and gate-up projections share one shrink
(their A matrices concatenated along the rank) and expand each sub-projection into its slice of the output.
"""

from dataclasses import dataclass
from itertools import accumulate

import torch

from loraforge.serve.engine.cpu_kernels import kernels_for

# Fused projection -> (input size attribute, [(PEFT module name, output size attribute)])
PROJECTIONS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "qkv": ("hidden_size", [("q_proj", "q_size"), ("k_proj", "kv_size"), ("v_proj", "kv_size")]),
    "o": ("q_size", [("o_proj", "hidden_size")]),
    "gate_up": ("hidden_size", [("gate_proj", "intermediate_size"), ("up_proj", "intermediate_size")]),
    "down": ("intermediate_size", [("down_proj", "hidden_size")]),
}
B_BLOCK = 64  # B is stored in blocks of this many output columns (the expand kernel's register block)
MODULE_TO_PROJECTION = {m: (p, j) for p, (_, subs) in PROJECTIONS.items() for j, (m, _) in enumerate(subs)}


@dataclass
class LoRABatch:
    """Rows of a flat batch grouped by adapter: built once per step, used by every LoRA projection.

    The model runner sorts its batch by adapter, so the LoRA rows are one contiguous run from `start`. When
    every adapter has the same number of rows (a decode step), the groups are plain views of that run: no
    gather at all. Otherwise (prefills of different lengths) rows are gathered into a padded block and the
    results gathered back in row order. Unsorted rows (not produced by the runner) fall back to a scatter."""

    slots: torch.Tensor  # [n] stack slot of each adapter present in the batch
    key: tuple[int, ...]  # the same, as a cache key
    num_active: int
    start: int = -1  # sorted case: first LoRA row (rows before it are base-only)
    rows_per_adapter: int = 0
    gather_index: torch.Tensor | None = None  # [n, m] flat row; padding points at an extra zero row
    unpad_index: torch.Tensor | None = None  # sorted, unequal groups: [LoRA rows] index into [n * m]
    scatter_index: torch.Tensor | None = None  # unsorted: [n * m] row to add into; padding adds into row 0
    row_start: torch.Tensor | None = None  # sorted: [n + 1] first row of each group, then the end (kernels)

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
        rows = [r for g in groups.values() for r in g]
        start = len(row_slots) - len(rows)
        is_sorted = rows == list(range(start, len(row_slots)))
        sizes = [len(g) for g in groups.values()]
        row_start = torch.tensor(list(accumulate(sizes, initial=start))) if is_sorted else None
        if is_sorted and all(size == m for size in sizes):
            return cls(slots, key, n, start=start, rows_per_adapter=m, row_start=row_start)
        pad = len(row_slots)
        gather = torch.full((n, m), pad, dtype=torch.long)
        for g, members in enumerate(groups.values()):
            gather[g, : len(members)] = torch.tensor(members)
        if is_sorted:
            unpad = [g * m + j for g, members in enumerate(groups.values()) for j in range(len(members))]
            return cls(
                slots,
                key,
                n,
                start=start,
                rows_per_adapter=m,
                gather_index=gather.to(device),
                unpad_index=torch.tensor(unpad, device=device),
                row_start=row_start,
            )
        scatter = torch.where(gather == pad, 0, gather).flatten()
        return cls(slots, key, n, gather_index=gather.to(device), scatter_index=scatter.to(device))


class LoRAWeights:
    """Stacked A and B of all adapter slots per fused projection: A `[layers, slots, subs * R, d_in]` (PEFT's
    lora_A layout) and B `[layers, slots, d_out / 64, R, 64]` per sub-projection (lora_B transposed and cut
    into 64-column blocks, once, when installing; d_out is zero-padded to a multiple of 64). Both are what
    the CPU kernels read fastest: A row by row as dot products with x, and B one contiguous block per 64
    outputs, as R scaled rows summed into the output. Slot 0 means "no adapter"."""

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
        self.kernels = kernels_for(device, dtype)

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
            self.B[p] = [torch.empty(L, S, _blocks(self.dims[d]), rank, B_BLOCK, **kw) for _, d in subs]
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
            out_size = b.shape[0]
            blocked = self.B[p][j][layer, slot, :, :r]  # [d_out / 64, r, 64]
            if out_size % B_BLOCK:
                blocked.zero_()  # the padding columns past d_out
            full, tail = divmod(out_size, B_BLOCK)
            bt = b.t() * scale  # [r, d_out]
            blocked[:full].copy_(bt[:, : full * B_BLOCK].view(r, full, B_BLOCK).transpose(0, 1))
            if tail:
                blocked[full, :, :tail].copy_(bt[:, full * B_BLOCK :])

    def slot_bytes_at(self, rank: int) -> int:
        """Memory of one slot once the common rank is `rank` (every slot is padded to it)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per_layer = sum(
            len(subs) * rank * self.dims[din] + sum(_blocks(self.dims[d]) * rank * B_BLOCK for _, d in subs)
            for din, subs in PROJECTIONS.values()
        )
        return self.num_layers * per_layer * itemsize

    @property
    def slot_bytes(self) -> int:
        return sum(
            t[:, 0].numel() * t.element_size()
            for a, bs in ((self.A[p], self.B[p]) for p in self.A)
            for t in (a, *bs)
        )

    def _gathered(self, batch: LoRABatch) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]] | None:
        """For the batched-matmul path: the batch's adapters copied out of the stacks for all layers at once,
        kept while the batch's set of adapters is unchanged, so a steady batch copies weights only once."""
        key = (batch.key, self.version)
        if self._cache_key == key:
            return self._cache
        self._cache, self._cache_key = None, None  # free the old copy before making a new one
        if batch.num_active * self.slot_bytes > self.cache_bytes:
            return None
        idx = batch.slots
        self._cache = {p: (self.A[p][:, idx], self._dense_bs(p, lambda b: b[:, idx])) for p in PROJECTIONS}
        self._cache_key = key
        return self._cache

    def _dense_bs(self, proj: str, select) -> list[torch.Tensor]:
        """`select(B)` of each sub-projection, from `[..., d_out / 64, R, 64]` blocks to `[..., R, d_out]`
        (the batched matmuls' layout)."""
        out = []
        for b, (_, d) in zip(self.B[proj], PROJECTIONS[proj][1], strict=True):
            *lead, nb, r, w = (blocked := select(b)).shape
            out.append(blocked.transpose(-3, -2).reshape(*lead, r, nb * w)[..., : self.dims[d]].contiguous())
        return out

    def add(self, layer: int, proj: str, x: torch.Tensor, out: torch.Tensor, batch: LoRABatch) -> None:
        """`out[t] += (x[t] @ A_slot(t)) @ B_slot(t)` for every row t that has an adapter."""
        R, n, m = self.rank, batch.num_active, batch.rows_per_adapter
        subs = PROJECTIONS[proj][1]
        if self.kernels is not None and batch.row_start is not None:
            bs = [b[layer] for b in self.B[proj]]
            widths = [self.dims[d] for _, d in subs]
            self.kernels.lora_add(x, self.A[proj][layer], bs, widths, batch.slots, batch.row_start, out)
            return
        cached = self._gathered(batch)
        if cached is not None:
            a, bs = cached[proj][0][layer], [b[layer] for b in cached[proj][1]]
        else:
            a = self.A[proj][layer][batch.slots]
            bs = self._dense_bs(proj, lambda b: b[layer][batch.slots])
        if batch.gather_index is None:  # equal groups: views of the batch
            xs = x[batch.start :].view(n, m, x.shape[1])
        else:
            xs = torch.cat([x, x.new_zeros(1, x.shape[1])])[batch.gather_index]  # [n, m, d_in]
        h = torch.bmm(xs, a.transpose(1, 2))  # [n, m, subs * R]
        offset = 0
        for j, b in enumerate(bs):
            hj = h if len(bs) == 1 else h[..., j * R : (j + 1) * R]
            width = b.shape[-1]
            target = out if len(bs) == 1 else out[:, offset : offset + width]
            if batch.gather_index is None:  # in place, one kernel: on CUDA a launch costs more than its math
                target[batch.start :].view(n, m, width).baddbmm_(hj, b)
            elif batch.unpad_index is not None:
                target[batch.start :].add_(torch.bmm(hj, b).view(n * m, width)[batch.unpad_index])
            else:
                target.index_add_(0, batch.scatter_index, torch.bmm(hj, b).view(-1, width))
            offset += width


def _blocks(size: int) -> int:
    return -(-size // B_BLOCK)
