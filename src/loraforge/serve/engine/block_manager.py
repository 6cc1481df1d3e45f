"""Paged KV cache bookkeeping: which cache blocks each sequence owns (the tensor: model/kv_cache.py)."""

from collections import deque

from loraforge.serve.engine.sequence import Sequence


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
