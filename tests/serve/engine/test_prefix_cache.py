"""Prefix cache: blocks shared by (adapter, token prefix), reference-counted, kept LRU, evicted on demand; the
engine's greedy outputs are the same with and without it (fp32, tiny model)."""

import pytest

from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from loraforge.serve.engine.block_manager import BlockManager
from loraforge.serve.engine.sequence import Sequence

MAX_NEW = 6


def _seq(tokens, key=b""):
    seq = Sequence(list(tokens), SamplingParams())
    seq.key = key
    return seq


def _manager(num_blocks=8, block_size=4, **kw):
    return BlockManager(num_blocks, block_size, adapter_key=lambda s: s.key, **kw)


def _prefill(bm, seq):
    """What a prefill step does to the bookkeeping: allocate (sharing the cached start), compute, commit."""
    hits = bm.lookup(seq)
    bm.allocate(seq, hits)
    seq.num_cached = len(seq)
    bm.commit(seq)
    return hits


def test_a_shared_start_is_shared_and_reference_counted():
    bm = _manager()
    a = _seq(range(1, 11))  # 10 tokens: 2 full blocks + 2 tokens
    assert _prefill(bm, a) == [] and bm.num_cached_blocks == 2
    b = _seq([*range(1, 9), 50, 51, 52])  # the same 8 first tokens
    assert _prefill(bm, b) == a.blocks[:2]
    assert b.blocks[:2] == a.blocks[:2] and b.blocks[2] != a.blocks[2]
    assert bm.ref[a.blocks[0]] == 2 and bm.num_free == 8 - 3 - 1
    bm.release(a)
    assert bm.ref[b.blocks[0]] == 1  # still b's
    bm.release(b)
    assert bm.num_free == 8  # cached blocks nobody uses count as free
    assert bm.stats.hit_tokens == 8 and bm.stats.hit_blocks == 2 and bm.stats.queried_blocks == 4


def test_the_block_of_the_last_token_is_never_taken_from_the_cache():
    bm = _manager()
    a = _seq(range(1, 9))  # exactly 2 full blocks
    _prefill(bm, a)
    again = _seq(range(1, 9))
    assert bm.lookup(again) == a.blocks[:1]  # the last token (in block 2) must be computed for its logits


def test_other_adapters_and_other_starts_do_not_share():
    bm = _manager()
    _prefill(bm, _seq(range(1, 11), key=b"1:1"))
    assert bm.lookup(_seq(range(1, 11), key=b"2:2")) == []  # same text, other adapter
    assert bm.lookup(_seq(range(1, 11), key=b"")) == []  # same text, base model
    assert bm.lookup(_seq([9, *range(2, 11)], key=b"1:1")) == []  # the chain breaks at the first block
    assert len(bm.lookup(_seq(range(1, 11), key=b"1:1"))) == 2


def test_unused_cached_blocks_are_evicted_least_recently_used_first_only_when_needed():
    bm = _manager(num_blocks=6)
    a, b = _seq(range(1, 9)), _seq(range(100, 108))
    _prefill(bm, a)
    _prefill(bm, b)
    a_blocks = a.blocks
    bm.release(a)
    bm.release(b)
    assert bm.num_cached_blocks == 4 and bm.num_free == 6
    c = _seq(range(200, 212))  # 3 blocks: 2 never-cached free blocks, then the LRU cached one (a's tail)
    _prefill(bm, c)
    assert bm.num_cached_blocks == 4 - 1 + 3 and bm.stats.evicted_blocks == 1  # one of a's, then c's 3
    assert bm.lookup(_seq(range(1, 9))) == a_blocks[:1]  # a's head survived its tail
    assert len(bm.lookup(_seq(range(100, 108)))) == 1


def test_off_means_nothing_is_shared():
    bm = _manager(prefix_cache=False)
    _prefill(bm, _seq(range(1, 11)))
    assert bm.lookup(_seq(range(1, 11))) == [] and bm.num_cached_blocks == 0


# ---- the engine -----------------------------------------------------------------------------------------

SHARED = "You are a helpful banking assistant. Answer with one intent name only, nothing else. Message: "
TAILS = ["my card is lost", "where is my transfer", "how do I top up", "exchange rate please", "abc"]


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return [tok(SHARED + t).input_ids for t in TAILS]


def _engine(model_dir, adapter_dir, prefix_cache, **kw) -> Engine:
    config = EngineConfig(
        model=str(model_dir), precision="fp32", adapter_dir=adapter_dir, prefix_cache=prefix_cache, **kw
    )
    return Engine(config)


def _run(engine, prompts, adapters):
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0)
    return [s.output_ids for s in engine.generate(prompts, params, adapters)]


@pytest.fixture(scope="module")
def uncached(tiny_model_dir, adapter_dir, prompts):
    """Outputs without the cache: prompts alone, with adapter alpha, with beta."""
    engine = _engine(tiny_model_dir, adapter_dir, False, block_size=4, num_kv_blocks=256)
    runs = {a: _run(engine, prompts, [a] * len(prompts)) for a in (None, "alpha", "beta")}
    assert engine.blocks.stats.queried_tokens == 0  # off: nothing looked up
    return runs


def test_outputs_equal_with_and_without_the_cache(tiny_model_dir, adapter_dir, prompts, uncached):
    engine = _engine(tiny_model_dir, adapter_dir, True, block_size=4, num_kv_blocks=256)
    mixed = [None, "alpha", "beta", "alpha", None]
    expected = [uncached[a][i] for i, a in enumerate(mixed)]
    assert _run(engine, prompts, mixed) == expected  # cold: rows share the start within an adapter
    assert _run(engine, prompts, mixed) == expected  # warm: every row starts from the cache
    for adapter in (None, "alpha", "beta"):
        assert _run(engine, prompts, [adapter] * len(prompts)) == uncached[adapter]
    stats = engine.blocks.stats
    assert stats.hit_tokens > stats.queried_tokens / 2  # most prompt tokens came from the cache
    # The adapters really change the outputs, so sharing blocks across adapters would be caught.
    assert uncached["alpha"] != uncached["beta"] != uncached[None]


def test_adapters_never_share_blocks_of_the_same_text(tiny_model_dir, adapter_dir, prompts, uncached):
    engine = _engine(tiny_model_dir, adapter_dir, True, block_size=4, num_kv_blocks=256)
    assert _run(engine, prompts[:1], ["alpha"]) == [uncached["alpha"][0]]
    before = engine.blocks.stats.hit_tokens
    assert _run(engine, prompts[:1], ["beta"]) == [uncached["beta"][0]]
    assert _run(engine, prompts[:1], [None]) == [uncached[None][0]]
    assert engine.blocks.stats.hit_tokens == before  # the same text under another adapter: no hit
    assert _run(engine, prompts[:1], ["alpha"]) == [uncached["alpha"][0]]
    assert engine.blocks.stats.hit_tokens > before


def test_a_fully_cached_prompt_still_computes_its_last_token(tiny_model_dir, adapter_dir, prompts, uncached):
    engine = _engine(tiny_model_dir, adapter_dir, True, block_size=4, num_kv_blocks=256)
    prompt = prompts[0][: len(prompts[0]) // 4 * 4]  # whole blocks: every block of it gets registered
    first = _run(engine, [prompt], [None])
    engine.blocks.stats.hit_tokens = 0
    assert _run(engine, [prompt], [None]) == first
    assert engine.blocks.stats.hit_tokens == len(prompt) - 4  # all but the block of the last token
    off = _engine(tiny_model_dir, adapter_dir, False, block_size=4, num_kv_blocks=256)
    assert _run(off, [prompt], [None]) == first


def test_eviction_under_memory_pressure_keeps_outputs(tiny_model_dir, adapter_dir, prompts, uncached):
    # 24 blocks of 4 tokens: a few sequences at a time, so cached blocks are evicted (and some preempted).
    engine = _engine(tiny_model_dir, adapter_dir, True, block_size=4, num_kv_blocks=24)
    for adapter in ("alpha", None, "beta", "alpha"):
        assert _run(engine, prompts, [adapter] * len(prompts)) == uncached[adapter]
    assert engine.blocks.stats.evicted_blocks > 0
    assert engine.blocks.num_free == 24  # nothing leaked: every block is free or evictable
    assert sum(engine.blocks.ref) == 0


def test_a_prompt_asking_for_its_logprobs_is_computed_whole(tiny_model_dir, adapter_dir, prompts):
    """`echo` with `logprobs` needs every prompt position's logits: such a prompt never starts from cached
    blocks, and its prompt logprobs equal those of an engine without the cache."""

    def prompt_logprobs(engine):
        params = SamplingParams(max_tokens=2, temperature=0, logprobs=2, prompt_logprobs=True)
        (seq,) = engine.generate([prompts[0]], params, [None])
        return [(e.token, round(e.logprob, 4)) for e in seq.prompt_logprobs]

    expected = prompt_logprobs(_engine(tiny_model_dir, adapter_dir, False, block_size=4, num_kv_blocks=256))
    engine = _engine(tiny_model_dir, adapter_dir, True, block_size=4, num_kv_blocks=256)
    _run(engine, prompts[:1], [None])  # the prompt's blocks are now cached
    hits = engine.blocks.stats.hit_tokens
    assert prompt_logprobs(engine) == expected
    assert engine.blocks.stats.hit_tokens == hits  # nothing was taken from the cache
    assert len(expected) == len(prompts[0]) - 1
