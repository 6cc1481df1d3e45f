"""Paged KV cache bookkeeping: which cache blocks each sequence owns (the tensor: model/kv_cache.py), and the
prefix cache that lets sequences with the same start share the blocks of that start.

Prefix cache: a full block's K/V depend on every token up to its end and on the adapter (LoRA changes K and
V), so a block is named by a chain hash: hash(parent block's hash, tokens of the block), the chain rooted in
the adapter's identity (`adapter_key`). A block is registered under its hash once its K/V are computed
(`commit`); a later sequence whose prompt starts with the same blocks under the same adapter takes references
on them (`lookup` + `allocate`) and is prefilled from the first uncached token on. Only full blocks are
shared, and a sequence only ever writes past its cached prefix, so a shared block is never written.
Released blocks that hold a registered hash are kept, least recently used first, and reused for new
allocations only when no never-cached block is free: the cache costs no memory anyone else needs.
"""

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from loraforge.serve.engine.sequence import Sequence


@dataclass
class PrefixCacheStats:
    """Counters since start: what admitted sequences looked up in the prefix cache and found (every
    admission counts, a preempted sequence's return included)."""

    queried_tokens: int = 0  # tokens of admitted sequences
    hit_tokens: int = 0  # of them, taken from the cache
    queried_blocks: int = 0  # full blocks that could have been taken (all but the one holding the last token)
    hit_blocks: int = 0
    evicted_blocks: int = 0  # cached blocks reused for something else


def _base_key(_seq: Sequence) -> bytes:
    return b""


class BlockManager:
    """Allocator of cache blocks with reference counts; a sequence owns ceil(len / block_size) blocks, of
    which the cached prefix is shared. `prefix_cache=False` turns sharing off (every block private)."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        prefix_cache: bool = True,
        adapter_key: Callable[[Sequence], bytes] = _base_key,
    ):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.prefix_cache = prefix_cache
        # What makes a sequence's K/V differ besides its tokens: its adapter, as loaded (engine.py).
        self.adapter_key = adapter_key
        self.free: deque[int] = deque(range(num_blocks))  # blocks holding nothing worth keeping
        self.ref = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # chain hash -> block holding those K/V
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody uses, LRU first
        self.stats = PrefixCacheStats()

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take: free ones and cached ones nobody uses (evicted on demand)."""
        return len(self.free) + len(self.evictable)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix cache ------------------------------------------------------------------------------
    def _hashes(self, seq: Sequence, count: int) -> list[bytes]:
        """The chain hashes of `seq`'s first `count` full blocks (memoized on the sequence: its tokens only
        ever grow, and its adapter does not change while it holds it)."""
        hashes, bs = seq.block_hashes, self.block_size
        if len(hashes) < count:
            tokens = seq.token_ids
            parent = hashes[-1] if hashes else hashlib.blake2b(self.adapter_key(seq), digest_size=16).digest()
            for i in range(len(hashes), count):
                block = array("l", tokens[i * bs : (i + 1) * bs]).tobytes()
                parent = hashlib.blake2b(parent + block, digest_size=16).digest()
                hashes.append(parent)
        return hashes[:count]

    def shareable_blocks(self, seq: Sequence) -> int:
        """How many of `seq`'s leading full blocks it could take from the cache: all but the block of its
        last token (that token must be computed, for its logits); none for a prompt that wants its prompt
        logprobs (`echo` with `logprobs`: those need every prompt position's hidden state)."""
        if not self.prefix_cache or (seq.params.prompt_logprobs and seq.prompt_logprobs is None):
            return 0
        return (len(seq) - 1) // self.block_size

    def lookup(self, seq: Sequence) -> list[int]:
        """The cached blocks `seq` can start from: the longest start of its `shareable_blocks` found in the
        cache."""
        hits = []
        for h in self._hashes(seq, self.shareable_blocks(seq)):
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def uncached_hashes(self, seq: Sequence, hits: list[int]) -> list[bytes]:
        """Hashes of the full blocks `seq` will compute after its cached ones (the scheduler lets a sequence
        that needs one of them wait a step, to take them from the cache instead of computing them twice)."""
        if not self.prefix_cache:
            return []
        return self._hashes(seq, len(seq) // self.block_size)[len(hits) :]

    def commit(self, seq: Sequence) -> None:
        """Register the full blocks whose K/V `seq` now has (`num_cached`), so later sequences can share
        them. A block whose content another block already holds stays private."""
        if not self.prefix_cache:
            return
        full = min(seq.num_cached // self.block_size, len(seq.blocks))
        if full <= seq.num_registered:
            return
        hashes = self._hashes(seq, full)
        for i in range(seq.num_registered, full):
            block, h = seq.blocks[i], hashes[i]
            if self.block_hash[block] is None and h not in self.cached:
                self.cached[h] = block
                self.block_hash[block] = h
        seq.num_registered = full

    # ---- allocation --------------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence, hits: list[int] | None = None) -> bool:
        hits = hits or []
        # A hit on a block nobody uses takes it out of the evictable pool too.
        taken = sum(1 for b in hits if self.ref[b] == 0)
        return self.blocks_needed(len(seq)) - len(hits) + taken <= self.num_free

    def allocate(self, seq: Sequence, hits: list[int] | None = None) -> None:
        """Give a waiting sequence blocks for all its tokens (prompt + output kept over a preemption): the
        cached `hits` (from `lookup`) shared, the rest new; `seq.num_cached` says how many tokens are done."""
        assert not seq.blocks
        hits = hits or []
        for block in hits:
            if self.ref[block] == 0:
                del self.evictable[block]
            self.ref[block] += 1
        seq.blocks = hits + [self._take() for _ in range(self.blocks_needed(len(seq)) - len(hits))]
        seq.num_cached = seq.num_registered = len(hits)
        seq.num_cached *= self.block_size
        if self.prefix_cache:
            st = self.stats
            st.queried_tokens += len(seq)
            st.hit_tokens += seq.num_cached
            st.queried_blocks += (len(seq) - 1) // self.block_size
            st.hit_blocks += len(hits)

    def _take(self) -> int:
        if self.free:
            block = self.free.popleft()
        else:  # evict the least recently used cached block
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.block_hash[block]]
            self.block_hash[block] = None
            self.stats.evicted_blocks += 1
        self.ref[block] = 1
        return block

    def release(self, seq: Sequence) -> None:
        """Drop `seq`'s references; what it computed stays cached (a finished prompt's blocks serve the next
        request with the same start, a preempted sequence's serve its own return)."""
        self.commit(seq)
        # Last block first: of a released chain, its tail becomes the least recently used (evicted first),
        # so the shared head, which more sequences can use, stays longest.
        for block in reversed(seq.blocks):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                if self.block_hash[block] is None:
                    self.free.append(block)
                else:
                    self.evictable[block] = None
        seq.blocks = []
        seq.num_cached = seq.num_registered = 0

    def can_append(self, seq: Sequence) -> bool:
        """Whether the next decode step (which stores the newest token) has room."""
        return len(seq) <= len(seq.blocks) * self.block_size or self.num_free > 0

    def append(self, seq: Sequence) -> None:
        if len(seq) > len(seq.blocks) * self.block_size:
            seq.blocks.append(self._take())
