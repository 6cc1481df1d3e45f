"""Paged KV blocks and the scheduler: blocks follow lengths, budgets hold, preemption frees and resumes."""

from loraforge.serve.engine.block_manager import BlockManager
from loraforge.serve.engine.scheduler import Scheduler
from loraforge.serve.engine.sequence import SamplingParams, Sequence, SequenceStatus


def _seq(n, first=1):
    return Sequence(list(range(first, first + n)), SamplingParams())


def test_blocks_follow_sequence_length():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = _seq(5)
    bm.allocate(s)
    assert len(s.blocks) == 2 and bm.num_free == 6
    for _ in range(3):  # tokens 6..8 fit in the second block
        s.output_ids.append(0)
        bm.append(s)
    assert len(s.blocks) == 2
    s.output_ids.append(0)
    bm.append(s)
    assert len(s.blocks) == 3 and bm.num_free == 5
    bm.release(s)
    assert bm.num_free == 8 and not s.blocks


def test_prefill_respects_the_token_budget_and_seq_limit():
    sched = Scheduler(BlockManager(100, 4), max_num_seqs=3, max_num_batched_tokens=10)
    for n in (4, 4, 4, 4, 30):
        sched.add(_seq(n))
    batch, prefill = sched.schedule()
    assert prefill and [len(s) for s in batch] == [4, 4]  # a third would exceed 10 tokens
    batch, prefill = sched.schedule()
    assert prefill and len(batch) == 1  # max_num_seqs = 3
    batch, prefill = sched.schedule()
    assert not prefill and len(batch) == 3


def test_a_sequence_waits_for_blocks_the_batch_computes_only_when_they_are_most_of_its_work():
    sched = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=1000)
    first, same = _seq(20), _seq(20)
    short = Sequence([1, 2, 3, 4, *range(50, 66)], SamplingParams())  # shares one block of 20 tokens
    for seq in (first, same, short):
        sched.add(seq)
    batch, prefill = sched.schedule()
    # `same` would compute 16 of its 20 tokens twice: it waits, and `short`, behind it, fills the batch.
    assert prefill and batch == [first, short] and list(sched.waiting) == [same]
    for seq in batch:
        seq.num_cached = len(seq)  # the step ran
    batch, prefill = sched.schedule()
    assert prefill and batch == [same] and same.num_cached == 16  # from the cache; its last block computed


def test_a_waiting_sequence_keeps_its_slot_and_one_wanting_prompt_logprobs_never_waits():
    sched = Scheduler(BlockManager(100, 4), max_num_seqs=2, max_num_batched_tokens=1000)
    first, same, behind = _seq(20), _seq(20), _seq(8, first=50)
    for seq in (first, same, behind):
        sched.add(seq)
    batch, _ = sched.schedule()
    assert batch == [first] and list(sched.waiting) == [same, behind]  # `behind` may not take same's slot
    sched = Scheduler(BlockManager(100, 4), max_num_seqs=4, max_num_batched_tokens=1000)
    echo = Sequence(list(range(1, 21)), SamplingParams(logprobs=0, prompt_logprobs=True))
    for seq in (_seq(20), echo):
        sched.add(seq)
    batch, _ = sched.schedule()
    assert len(batch) == 2  # it could never take the blocks from the cache: waiting would only cost a step


def test_a_prompt_over_budget_runs_alone():
    sched = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=10)
    sched.add(_seq(30))
    batch, prefill = sched.schedule()
    assert prefill and len(batch) == 1


def test_decode_preempts_the_newest_when_blocks_run_out():
    sched = Scheduler(BlockManager(4, 4), max_num_seqs=8, max_num_batched_tokens=100)
    a, b = _seq(8), _seq(8, first=100)  # distinct prompts: nothing to share
    sched.add(a)
    sched.add(b)
    assert len(sched.schedule()[0]) == 2  # both prefilled: all 4 blocks used
    a.output_ids.append(0)
    b.output_ids.append(0)
    batch, prefill = sched.schedule()  # each needs a 3rd block: b is preempted, its blocks go to a
    assert not prefill and batch == [a] and b.status == SequenceStatus.WAITING and not b.blocks
    assert sched.waiting[0] is b and sched.num_preemptions == 1
    sched.finish(a)
    batch, prefill = sched.schedule()
    assert prefill and batch == [b] and len(b.blocks) == 3  # resumed with prompt + its output so far
