"""Batched LoRA for a mixed batch: `out += scale * (x @ A_i) @ B_i`, adapter i chosen per row.

All resident adapters live in stacked tensors, one index per adapter, ranks zero-padded to a common R, with
the scale folded into B. Each step the rows are grouped by adapter (rows of base-only sequences are left
out): when the batch is sorted by adapter and the groups are equal, a group is a view of the batch;
otherwise rows are gathered into a padded `[adapters, rows, d]` block (and, when sorted, gathered back
out of it: a scatter-add is ~10x slower on CPU). Every LoRA projection is then
batched matmuls over all the adapters of the batch at once (the SGMV idea of Punica/S-LoRA) — no Python
loop over adapters, no merged weights. On CPU, sorted batches go to C++ kernels instead
(csrc/lora_cpu.cpp), which read each adapter's weights in place in the stacks and need no gather: about 3x
faster than the batched matmuls at 32 adapters x 2 rows (decode), as fast at 32 x 60 rows (prefill) before
counting the gather. The fused QKV and gate-up projections share one shrink
(their A matrices concatenated along the rank) and expand each sub-projection into its slice of the output.
"""

from dataclasses import dataclass

import torch

from loraforge.serve.kernels.ops import TorchOps, ops_for
from loraforge.serve.lora.batch import LoRABatch
from loraforge.serve.model.projections import MODULE_TO_PROJECTION, PROJECTIONS

B_BLOCK = 64  # B is stored in blocks of this many output columns (the expand kernel's register block)


class LoRAWeights:
    """Stacked A and B of all resident adapters per fused projection: A `[layers, capacity, subs * R, d_in]`
    (PEFT's lora_A layout) and B `[layers, capacity, d_out / 64, R, 64]` per sub-projection (lora_B
    transposed and cut into 64-column blocks, once, when installing; d_out is zero-padded to a multiple of
    64). Both are what
    the CPU kernels read fastest: A row by row as dot products with x, and B one contiguous block per 64
    outputs, as R scaled rows summed into the output. An adapter's place in the stacks is its *adapter index*;
    index 0 means "no adapter"."""

    def __init__(
        self,
        dims: dict[str, int],
        num_layers: int,
        capacity: int,
        dtype: torch.dtype,
        device: str,
        cache_bytes: int = 512 << 20,
        ops: TorchOps | None = None,
    ):
        self.dims, self.num_layers, self.capacity = dims, num_layers, capacity
        self.dtype, self.device = dtype, device
        self.cache_bytes = cache_bytes  # most memory for the copy of a batch's adapters (see _gathered)
        self.version = 0  # bumped whenever the stacks' contents change
        # Per adapter index, the version its adapter was installed at: names one load of an adapter (the
        # prefix cache keys K/V by it, so a reload under the same index never reuses the old K/V).
        self.installed = [0] * capacity
        self._cache: dict | None = None
        self._cache_key: tuple | None = None
        self.rank = 0
        self.A: dict[str, torch.Tensor] = {}
        self.B: dict[str, list[torch.Tensor]] = {}
        self.ops = ops or ops_for(device, dtype)
        # The projections each installed adapter targets: a batch skips a projection none of its adapters
        # targets (PEFT's default q_proj/v_proj adapters need the QKV projection only).
        self.targets: dict[int, frozenset[str]] = {}
        self._targeted: tuple[tuple, frozenset[str]] | None = None  # (batch key, version) -> projections

    def ensure_rank(self, rank: int, live: list[int]) -> None:
        """Grow the common rank R when an adapter needs it (reallocate the stacks, keep the `live` ones)."""
        if rank <= self.rank:
            return
        old_a, old_b, old_r = self.A, self.B, self.rank
        self.A, self.B = {}, {}
        L, S, kw = self.num_layers, self.capacity, {"dtype": self.dtype, "device": self.device}
        # torch.empty: indices never written stay unbacked by RAM; an index is fully written when installed.
        for p, proj in PROJECTIONS.items():
            self.A[p] = torch.empty(L, S, len(proj.parts) * rank, self.dims[proj.in_dim], **kw)
            self.B[p] = [torch.empty(L, S, _blocks(self.dims[d]), rank, B_BLOCK, **kw) for _, d in proj.parts]
        self.rank = rank
        self.version += 1
        self._cache = self._cache_key = None
        for index in live:
            for p, proj in PROJECTIONS.items():
                self.A[p][:, index].zero_()
                for j in range(len(proj.parts)):
                    self.A[p][:, index, j * rank : j * rank + old_r] = old_a[p][
                        :, index, j * old_r : (j + 1) * old_r
                    ]
                    self.B[p][j][:, index].zero_()
                    self.B[p][j][:, index, :, :old_r] = old_b[p][j][:, index]

    def cache_key(self, index: int) -> bytes:
        """What makes K/V computed with the adapter at `index` differ (the prefix cache's key): its index
        and when it was installed there; b"" for the base model."""
        return f"{index}:{self.installed[index]}".encode() if index else b""

    def install(
        self, index: int, modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]
    ) -> None:
        """Install an adapter at `index`; modules: (layer, module) -> (lora_A [r, in], lora_B [out, r], scale)
        as read from its file."""
        R = self.rank
        self.version += 1
        self.targets[index] = frozenset(MODULE_TO_PROJECTION[module][0] for _, module in modules)
        self.installed[index] = self.version
        covered = len(modules) == self.num_layers * len(MODULE_TO_PROJECTION)
        if not (covered and all(a.shape[0] == R for a, _, _ in modules.values())):
            for p, proj in PROJECTIONS.items():  # rank padding and untargeted modules must be zero
                self.A[p][:, index].zero_()
                for j in range(len(proj.parts)):
                    self.B[p][j][:, index].zero_()
        for (layer, module), (a, b, scale) in modules.items():
            p, j = MODULE_TO_PROJECTION[module]
            r = a.shape[0]
            self.A[p][layer, index, j * R : j * R + r].copy_(a)
            out_size = b.shape[0]
            blocked = self.B[p][j][layer, index, :, :r]  # [d_out / 64, r, 64]
            if out_size % B_BLOCK:
                blocked.zero_()  # the padding columns past d_out
            full, tail = divmod(out_size, B_BLOCK)
            bt = b.t() * scale  # [r, d_out]
            blocked[:full].copy_(bt[:, : full * B_BLOCK].view(r, full, B_BLOCK).transpose(0, 1))
            if tail:
                blocked[full, :, :tail].copy_(bt[:, full * B_BLOCK :])

    def adapter_bytes_at(self, rank: int) -> int:
        """Memory of one adapter once the common rank is `rank` (every adapter is padded to it)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per_layer = sum(
            len(p.parts) * rank * self.dims[p.in_dim]
            + sum(_blocks(self.dims[d]) * rank * B_BLOCK for _, d in p.parts)
            for p in PROJECTIONS.values()
        )
        return self.num_layers * per_layer * itemsize

    @property
    def adapter_bytes(self) -> int:
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
        if batch.num_active * self.adapter_bytes > self.cache_bytes:
            return None
        idx = batch.indices
        self._cache = {p: (self.A[p][:, idx], self._dense_bs(p, lambda b: b[:, idx])) for p in PROJECTIONS}
        self._cache_key = key
        return self._cache

    def _dense_bs(self, proj: str, select) -> list[torch.Tensor]:
        """`select(B)` of each sub-projection, from `[..., d_out / 64, R, 64]` blocks to `[..., R, d_out]`
        (the batched matmuls' layout)."""
        out = []
        for b, (_, d) in zip(self.B[proj], PROJECTIONS[proj].parts, strict=True):
            *lead, nb, r, w = (blocked := select(b)).shape
            out.append(blocked.transpose(-3, -2).reshape(*lead, r, nb * w)[..., : self.dims[d]].contiguous())
        return out

    def targeted(self, batch: LoRABatch) -> frozenset[str]:
        """The projections at least one adapter of the batch targets (computed once per step)."""
        key = (batch.key, self.version)
        if self._targeted is None or self._targeted[0] != key:
            every = frozenset(PROJECTIONS)
            self._targeted = (key, frozenset().union(*(self.targets.get(i, every) for i in batch.key)))
        return self._targeted[1]

    def add(self, layer: int, proj: str, x: torch.Tensor, out: torch.Tensor, batch: LoRABatch) -> None:
        """`out[t] += (x[t] @ A_i) @ B_i` for every row t that has an adapter (i: its adapter index)."""
        if proj not in self.targeted(batch):
            return  # zeros for every adapter of the batch
        R, n, m = self.rank, batch.num_active, batch.rows_per_adapter
        if self.ops.lora_in_place and batch.row_start is not None:  # sorted by adapter: read in place
            bs = [b[layer] for b in self.B[proj]]
            widths = [self.dims[d] for _, d in PROJECTIONS[proj].parts]
            self.ops.lora_add(x, self.A[proj][layer], bs, widths, batch.indices, batch.row_start, out)
            return
        cached = self._gathered(batch)
        if cached is not None:
            a, bs = cached[proj][0][layer], [b[layer] for b in cached[proj][1]]
        else:
            a = self.A[proj][layer][batch.indices]
            bs = self._dense_bs(proj, lambda b: b[layer][batch.indices])
        a, bs = a.to(x.dtype), [b.to(x.dtype) for b in bs]  # bf16 adapters under fp32 activations
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


@dataclass(frozen=True)
class LoRAStep:
    """The LoRA of one step, as the model sees it: the stacked weights and this batch's grouping of rows by
    adapter. `add` is a no-op for a batch without adapters (`NO_LORA`)."""

    weights: LoRAWeights | None = None
    batch: LoRABatch | None = None

    def add(self, layer: int, proj: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """`out += LoRA(x)` of projection `proj` of `layer`, for the rows that have an adapter."""
        if self.batch is not None:
            self.weights.add(layer, proj, x, out, self.batch)


NO_LORA = LoRAStep()
