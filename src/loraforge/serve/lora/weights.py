"""Batched LoRA for a mixed batch: `out += scale * (x @ A_i) @ B_i`, adapter i chosen per row.

All resident adapters live in stacked tensors, one per PEFT module (q_proj ... down_proj), one entry per
adapter that targets the module, ranks zero-padded to a common R, with the scale folded into B. An adapter
occupies only the modules it targets: PEFT's default q_proj/v_proj adapter costs q and v, not the five
others. Each step the rows are grouped by adapter (rows of base-only sequences are left out): when the batch
is sorted by adapter and the groups are equal, a group is a view of the batch; otherwise rows are gathered
into a padded `[adapters, rows, d]` block (and, when sorted, gathered back out of it: a scatter-add is ~10x
slower on CPU).
Every LoRA projection is then batched matmuls over all the adapters of the batch at once (the SGMV idea of
Punica/S-LoRA) — no Python loop over adapters, no merged weights. On CPU, sorted batches go to C++ kernels
instead (csrc/lora_cpu.cpp), which read each adapter's weights in place in the stacks, need no gather and
skip the modules an adapter does not target (benchmarks/cpu_kernels.py measures them against the matmuls).
The model's fused projections (QKV, gate-up) take one call each; each module expands into its slice of the
fused output.
"""

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import torch

from loraforge.serve.kernels.ops import TorchOps, ops_for
from loraforge.serve.lora.batch import LoRABatch
from loraforge.serve.model.huge_pages import huge_page_arena, populate
from loraforge.serve.model.projections import MODULE_TO_PROJECTION, PROJECTIONS

B_BLOCK = 64  # B is stored in blocks of this many output columns (the expand kernel's register block)
MODULES = tuple(MODULE_TO_PROJECTION)  # q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj


class LoRAWeights:
    """Stacked A and B of all resident adapters per module, indexed `[capacity, layers, ...]`: A
    `[capacity, layers, R, d_in]` (PEFT's lora_A layout) and B `[capacity, layers, d_out / 64, R, 64]`
    (lora_B transposed and cut into 64-column blocks, once, when installing; d_out is zero-padded to a
    multiple of 64). Both are what the CPU kernels read fastest: A row by row as dot products with x, and B
    one contiguous block per 64 outputs, as R scaled rows summed into the output.

    An adapter is known by its *adapter index* (0 means "no adapter"); in each module's stack it has an
    *entry* of its own only if it targets that module, given out lowest first (`entries`), so each stack's
    used entries are packed at its start whatever mix of targets the resident adapters have. On CPU the
    stacks lie in 2 MiB transparent huge pages (`_stack`): a decode step reads every batch adapter's entry
    of every layer, runs of 10-50 KiB at scattered places, and in 4 KiB pages a TLB miss and a stop of the
    hardware prefetchers at every page made that ~1.15x slower (serve_throughput.py row 7; across runs the
    kernel prefetches by itself, csrc/lora_cpu.cpp). Memory is only backed where written, a huge page at a
    time: the packed entries cost their own bytes plus at most one partly used huge page per stack, and the
    next free entry of each module is backed ahead of its install (`_back_next`)."""

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
        # Per installed adapter index, its entry in the stack of each module it targets (entry 0: none).
        self.entries: dict[int, dict[str, int]] = {}
        self._cache: dict | None = None
        self._cache_key: tuple | None = None
        self.rank = 0
        self.A: dict[str, torch.Tensor] = {}
        self.B: dict[str, torch.Tensor] = {}
        self.ops = ops or ops_for(device, dtype)
        self._views: dict[tuple[str, int], tuple] = {}  # (projection, layer) -> the kernel's weight views
        # (batch key, version), entries per module, modules some group lacks, the kernel's entries per
        # projection
        self._step_entries: tuple | None = None

    def _shape(self, module: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of one adapter's A and B of `module` (all layers) at `rank`."""
        proj, j = MODULE_TO_PROJECTION[module]
        d_in, d_out = self.dims[PROJECTIONS[proj].in_dim], self.dims[PROJECTIONS[proj].parts[j].out_dim]
        L = self.num_layers
        return (L, rank, d_in), (L, _blocks(d_out), rank, B_BLOCK)

    def ensure_rank(self, rank: int, live: list[int]) -> None:
        """Grow the common rank R when an adapter needs it (reallocate the stacks, keep the `live` ones)."""
        if rank <= self.rank:
            return
        old_a, old_b, old_r = self.A, self.B, self.rank
        kw = {"dtype": self.dtype, "device": self.device}
        self.A = {m: _stack(self.capacity, self._shape(m, rank)[0], kw) for m in MODULES}
        self.B = {m: _stack(self.capacity, self._shape(m, rank)[1], kw) for m in MODULES}
        self.rank = rank
        self.version += 1
        self._cache = self._cache_key = None
        self._views = {}
        self.entries = {index: self.entries[index] for index in live if index in self.entries}
        for placed in self.entries.values():
            for m, entry in placed.items():
                self.A[m][entry].zero_()
                self.A[m][entry, :, :old_r] = old_a[m][entry]
                self.B[m][entry].zero_()
                self.B[m][entry, :, :, :old_r] = old_b[m][entry]

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
        self.installed[index] = self.version
        self.entries.pop(index, None)  # the entries of the adapter this one replaces are free
        # Never None here: at most capacity - 1 other adapters are installed.
        placed = {m: self._free_entry(m) for m in {module for _, module in modules}}
        self.entries[index] = placed
        for m, entry in placed.items():  # rank padding, padding columns and left-out layers must be zero
            layers = sum(1 for layer, module in modules if module == m)
            if layers < self.num_layers or any(
                a.shape[0] < R for (_, mm), (a, _, _) in modules.items() if mm == m
            ):
                self.A[m][entry].zero_()
                self.B[m][entry].zero_()
            elif self.B[m].shape[2] * B_BLOCK != self._out_size(m):
                self.B[m][entry, :, -1].zero_()
        for (layer, module), (a, b, scale) in modules.items():
            r, entry = a.shape[0], placed[module]
            self.A[module][entry, layer, :r].copy_(a)
            blocked = self.B[module][entry, layer, :, :r]  # [d_out / 64, r, 64]
            full, tail = divmod(b.shape[0], B_BLOCK)
            bt = b.t() * scale  # [r, d_out]
            blocked[:full].copy_(bt[:, : full * B_BLOCK].view(r, full, B_BLOCK).transpose(0, 1))
            if tail:
                blocked[full, :, :tail].copy_(bt[:, full * B_BLOCK :])
        self._back_next(placed)

    def _free_entry(self, module: str) -> int | None:
        """The lowest entry of `module`'s stack no installed adapter holds (None when all are taken)."""
        taken = {placed[module] for placed in self.entries.values() if module in placed}
        return next((e for e in range(1, self.capacity) if e not in taken), None)

    def _back_next(self, modules) -> None:
        """Have memory back the entries the next install into `modules` will write, in the background: on CPU
        a first write of fresh pages (2 MiB ones above all) can take longer than the install itself, and
        would delay the request waiting for it (serve_throughput.py row 4). Costs at most one entry per
        module ahead of its use."""
        if self.device != "cpu":
            return
        free = {m: self._free_entry(m) for m in modules}
        ahead = [stack[m][e] for m, e in free.items() if e is not None for stack in (self.A, self.B)]
        if ahead:
            _backer().submit(lambda: [populate(t) for t in ahead])  # `ahead` keeps the stacks alive meanwhile

    def _out_size(self, module: str) -> int:
        proj, j = MODULE_TO_PROJECTION[module]
        return self.dims[PROJECTIONS[proj].parts[j].out_dim]

    def adapter_bytes_at(self, rank: int, modules: frozenset[str] | tuple[str, ...] = MODULES) -> int:
        """Memory of one adapter targeting `modules` once the common rank is `rank` (every adapter is padded
        to it)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        numel = 0
        for m in modules:
            a, b = self._shape(m, rank)
            numel += torch.Size(a).numel() + torch.Size(b).numel()
        return numel * itemsize

    def _module_entries(self, batch: LoRABatch) -> dict[str, torch.Tensor]:
        """Per module that an adapter of the batch targets, each group's entry in its stack, or 0 where that
        group's adapter does not target the module (computed once per step)."""
        key = (batch.key, self.version)
        if self._step_entries is None or self._step_entries[0] != key:
            entries, partial = {}, set()
            for m in MODULES:
                wanted = [self.entries.get(i, {}).get(m, 0) for i in batch.key]
                if any(wanted):
                    entries[m] = torch.tensor(wanted, dtype=torch.long, device=batch.indices.device)
                if 0 in wanted:
                    partial.add(m)
            by_projection = {
                p: [entries.get(part.module, _NO_ENTRIES) for part in proj.parts]
                for p, proj in PROJECTIONS.items()
                if any(part.module in entries for part in proj.parts)
            }
            self._step_entries = (key, entries, frozenset(partial), by_projection)
        return self._step_entries[1]

    def _projection_entries(self, batch: LoRABatch, proj: str) -> list[torch.Tensor] | None:
        """The kernel's entries of each module of `proj` (empty for a module no adapter of the batch targets);
        None when none of them is targeted."""
        self._module_entries(batch)
        return self._step_entries[3].get(proj)

    def _batch_weights(self, stacks: dict[str, torch.Tensor], module: str, batch: LoRABatch) -> torch.Tensor:
        """`stacks[module]`'s entries of the groups of `batch` (`[n, ...]`), zero for the groups whose adapter
        does not target the module."""
        entries = self._module_entries(batch).get(module)
        if entries is None:
            return stacks[module].new_zeros(batch.num_active, *stacks[module].shape[1:])
        weights = stacks[module][entries]
        if module not in self._step_entries[2]:
            return weights
        keep = (entries != 0).view(-1, *([1] * (weights.dim() - 1)))
        return torch.where(keep, weights, 0)  # not a product: entry 0 is never written, may hold NaN

    def _gathered(self, batch: LoRABatch) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]] | None:
        """For the batched-matmul path: the batch's adapters copied out of the stacks for all layers at once,
        kept while the batch's set of adapters is unchanged, so a steady batch copies weights only once."""
        key = (batch.key, self.version)
        if self._cache_key == key:
            return self._cache
        self._cache, self._cache_key = None, None  # free the old copy before making a new one
        if batch.num_active * self.adapter_bytes_at(self.rank) > self.cache_bytes:
            return None
        self._cache = {
            p: (self._fused_a(p, batch, None), self._dense_bs(p, batch, None)) for p in PROJECTIONS
        }
        self._cache_key = key
        return self._cache

    def _fused_a(self, proj: str, batch: LoRABatch, layer: int | None) -> torch.Tensor:
        """The batch's A of `proj`'s modules concatenated along the rank: `[layers, n, subs * R, d_in]`, or
        `[n, subs * R, d_in]` for one `layer`; zero where a group's adapter does not target a module."""
        parts = []
        for part in PROJECTIONS[proj].parts:
            a = self._batch_weights(self.A, part.module, batch)  # [n, L, R, d_in]
            parts.append(a if layer is None else a[:, layer])
        fused = torch.cat(parts, dim=-2)
        return fused if layer is not None else fused.transpose(0, 1).contiguous()

    def _dense_bs(self, proj: str, batch: LoRABatch, layer: int | None) -> list[torch.Tensor]:
        """Each module's B of the batch, from `[..., d_out / 64, R, 64]` blocks to `[..., R, d_out]` (the
        batched matmuls' layout): `[layers, n, R, d_out]`, or `[n, R, d_out]` for one `layer`."""
        out = []
        for part in PROJECTIONS[proj].parts:
            blocked = self._batch_weights(self.B, part.module, batch)  # [n, L, nb, R, 64]
            blocked = blocked if layer is None else blocked[:, layer]
            *lead, nb, r, w = blocked.shape
            dense = blocked.transpose(-3, -2).reshape(*lead, r, nb * w)[..., : self.dims[part.out_dim]]
            out.append(dense.contiguous() if layer is not None else dense.transpose(0, 1).contiguous())
        return out

    def _layer_views(self, proj: str, layer: int) -> tuple[list, list, list[int]]:
        """A and B of each module of `proj` at `layer` (`[capacity, ...]` views) and the modules' output
        widths: made once per stack allocation, as the kernel call's arguments."""
        key = (proj, layer)
        if key not in self._views:
            parts = PROJECTIONS[proj].parts
            self._views[key] = (
                [self.A[part.module][:, layer] for part in parts],
                [self.B[part.module][:, layer] for part in parts],
                [self.dims[part.out_dim] for part in parts],
            )
        return self._views[key]

    def targeted(self, batch: LoRABatch) -> frozenset[str]:
        """The projections at least one adapter of the batch targets."""
        self._module_entries(batch)
        return frozenset(self._step_entries[3])

    def add(self, layer: int, proj: str, x: torch.Tensor, out: torch.Tensor, batch: LoRABatch) -> None:
        """`out[t] += (x[t] @ A_i) @ B_i` for every row t that has an adapter (i: its adapter index)."""
        module_entries = self._projection_entries(batch, proj)
        if module_entries is None:
            return  # zeros for every adapter of the batch
        R, n, m = self.rank, batch.num_active, batch.rows_per_adapter
        if self.ops.lora_in_place and batch.row_start is not None:  # sorted by adapter: read in place
            a, b, widths = self._layer_views(proj, layer)
            self.ops.lora_add(x, a, b, widths, module_entries, batch.row_start, out)
            return
        cached = self._gathered(batch)
        if cached is not None:
            a, bs = cached[proj][0][layer], [b[layer] for b in cached[proj][1]]
        else:
            a, bs = self._fused_a(proj, batch, layer), self._dense_bs(proj, batch, layer)
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


_NO_ENTRIES = torch.empty(0, dtype=torch.long)  # a module no adapter of the batch targets: the kernel skips


def _stack(capacity: int, shape: tuple[int, ...], kw: dict) -> torch.Tensor:
    """`capacity` entries of one adapter's `shape` ([layers, ...]), each contiguous; on CPU in huge pages
    where the OS grants them. Uninitialized, and backed by memory only where written."""
    if kw["device"] == "cpu":
        numel = capacity * math.prod(shape)
        arena = huge_page_arena(numel * torch.empty((), dtype=kw["dtype"]).element_size())
        if arena is not None:
            return arena.view(kw["dtype"]).view(capacity, *shape)
    return torch.empty(capacity, *shape, **kw)


@cache
def _backer() -> ThreadPoolExecutor:
    """The one thread that backs entries ahead of their installs (`LoRAWeights._back_next`)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-backing", initializer=_lowest_priority)


def _lowest_priority() -> None:
    """The calling thread yields the CPU to the engine's (Linux: a thread's own nice value)."""
    with contextlib.suppress(AttributeError, OSError):  # not Unix, or not allowed: it competes a little more
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


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
