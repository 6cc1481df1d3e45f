"""Continuous batching: each step prefills newly admitted sequences or decodes one token for all running.

Prefills are packed up to a token budget of uncached tokens: a prompt whose start is in the prefix cache
(block_manager.py) costs only the rest. A sequence that would compute blocks another sequence of the same
batch computes waits one step (keeping its slot) and takes them from the cache instead, when they are at
least half of its work (a long shared system prompt); the sequences behind it fill the batch meanwhile. A
short shared start (a block or two of a chat template) is cheaper to compute twice than to wait a step for.
When the KV cache runs out during decode, the most recently admitted sequence is preempted: its blocks are
freed and it goes back to the front of the queue, to be recomputed (prompt + tokens so far, from what is
still cached) when memory frees up. Nothing is ever dropped.
"""

from collections import deque

from loraforge.serve.engine.block_manager import BlockManager
from loraforge.serve.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    """Decides what each step runs: admits waiting sequences into a prefill batch (within the token budget,
    `max_num_seqs` and the free KV blocks), else decodes one token for every running sequence, preempting
    the newest ones when their next token has no block. Sequences wait and run in arrival order, except one
    that waits a step for blocks the batch computes (it keeps its slot, and runs first next step)."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """Pick the sequences of the next step; returns (sequences, is_prefill)."""
        for seq in self.running:  # what the last step computed becomes shareable
            self.blocks.commit(seq)
        batch: list[Sequence] = []
        num_tokens = 0
        computing: set[bytes] = set()  # hashes of the full blocks this batch computes
        deferred: list[Sequence] = []  # wait a step to take blocks this batch computes from the cache
        # A deferred sequence keeps its place: it runs next step, not after a slot frees up.
        while self.waiting and len(self.running) + len(batch) + len(deferred) < self.max_num_seqs:
            seq = self.waiting.popleft()
            hits = self.blocks.lookup(seq)
            new_tokens = len(seq) - len(hits) * self.blocks.block_size
            # One prompt longer than the budget still runs, alone, so that no request can starve.
            if (
                batch and num_tokens + new_tokens > self.max_num_batched_tokens
            ) or not self.blocks.can_allocate(seq, hits):
                self.waiting.appendleft(seq)
                break
            todo = self.blocks.uncached_hashes(seq, hits)
            if batch and self._worth_waiting(seq, len(hits), todo, computing):
                deferred.append(seq)  # the sequences behind it still fill this batch
                continue
            self.blocks.allocate(seq, hits)
            computing.update(todo)
            seq.status = SequenceStatus.RUNNING
            batch.append(seq)
            num_tokens += new_tokens
        self.waiting.extendleft(reversed(deferred))
        if batch:
            self.running.extend(batch)
            return batch, True

        while self.running:
            seq = self.running.popleft()
            while not self.blocks.can_append(seq):
                if self.running:
                    self._preempt(self.running.pop())
                else:
                    self._preempt(seq)
                    break
            else:
                self.blocks.append(seq)
                batch.append(seq)
        self.running.extendleft(reversed(batch))
        return batch, False

    def _worth_waiting(self, seq: Sequence, hits: int, todo: list[bytes], computing: set[bytes]) -> bool:
        """Whether at least half of what `seq` would prefill is blocks this batch computes and `seq` could
        take from the cache next step: its uncached blocks `todo` from the first on, as far as
        `shareable_blocks` goes."""
        bs = self.blocks.block_size
        can_hit, run = self.blocks.shareable_blocks(seq) - hits, 0  # todo holds at least that many
        while run < can_hit and todo[run] in computing:
            run += 1
        return 2 * run * bs >= len(seq) - hits * bs

    def _preempt(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.blocks.release(seq)
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Drop a finished (or aborted) sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
