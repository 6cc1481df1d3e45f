"""Paged KV cache: fixed-size blocks in one preallocated tensor, handed out to sequences as they grow."""

from collections import deque

import torch

from loraforge.serve.engine.cpu_kernels import kernels_for
from loraforge.serve.engine.sequence import Sequence


class KVCache:
    """K and V for every layer in fixed-size blocks; a token's slot is `block * block_size + offset`.

    V is `[layers, blocks, block_size, kv_heads, head_dim]` (token rows). K is stored transposed within each
    block, `[layers, blocks, kv_heads, head_dim, block_size]`: decode attention then computes a query's
    scores against a whole block as multiply-adds into a vector over the block's tokens (as vLLM's paged
    attention kernels lay keys out), with no per-token horizontal sum."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str = "cpu",
    ):
        self.k = torch.zeros(
            (num_layers, num_blocks, num_kv_heads, head_dim, block_size), dtype=dtype, device=device
        )
        self.v = torch.zeros(
            (num_layers, num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device
        )
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.kernels = kernels_for(self.k.device, dtype)  # C++ write (csrc/kv_cache_cpu.cpp) on CPU

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype) -> int:
        return (
            2
            * num_layers
            * block_size
            * num_kv_heads
            * head_dim
            * torch.empty((), dtype=dtype).element_size()
        )

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V of new tokens (`[tokens, kv_heads, head_dim]`) at flat slot ids."""
        if self.kernels is not None:  # one pass instead of ~6 ops a layer
            self.kernels.kv_write(self.k[layer], self.v[layer], slots, k, v)
            return
        # Advanced indices around slices: the indexed result is [tokens, kv_heads, head_dim], like k.
        self.k[layer][slots // self.block_size, :, :, slots % self.block_size] = k
        n, kvh, d = self.v.shape[1] * self.v.shape[2], self.v.shape[3], self.v.shape[4]
        self.v[layer].view(n, kvh, d).index_copy_(0, slots, v)

    def gather(self, layer: int, block_tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of whole sequences via block tables: `[batch, blocks * block_size, kv_heads, head_dim]`."""
        b, nb = block_tables.shape
        shape = (b, nb * self.block_size, *self.v.shape[3:])
        k = self.k[layer][block_tables].permute(0, 1, 4, 2, 3).reshape(shape)  # keys back to token rows
        return k, self.v[layer][block_tables].view(shape)


class BlockManager:
    """Free-list allocator of cache blocks; a sequence owns ceil(len / block_size) blocks."""

    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence) -> bool:
        return self.blocks_needed(len(seq)) <= len(self.free)

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens (prompt + output kept over a preemption)."""
        assert not seq.blocks
        seq.blocks = [self.free.popleft() for _ in range(self.blocks_needed(len(seq)))]

    def release(self, seq: Sequence) -> None:
        self.free.extend(seq.blocks)
        seq.blocks = []
        seq.num_cached = 0

    def can_append(self, seq: Sequence) -> bool:
        """Whether the next decode step (which stores the newest token) has room."""
        return len(seq) <= len(seq.blocks) * self.block_size or len(self.free) > 0

    def append(self, seq: Sequence) -> None:
        if len(seq) > len(seq.blocks) * self.block_size:
            seq.blocks.append(self.free.popleft())
