"""Greedy outputs of the engine equal transformers (+ PEFT) token for token, in one mixed batch, in fp32."""

import pytest

from loraforge.models.tiny_adapters import EQUALITY_ADAPTERS, EQUALITY_MAX_NEW, EQUALITY_PROMPTS
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from tests.serve.conftest import hf_greedy, make_adapter

PROMPTS, ADAPTERS, MAX_NEW = EQUALITY_PROMPTS, EQUALITY_ADAPTERS, EQUALITY_MAX_NEW


@pytest.fixture(scope="module")
def reference(tiny_model_dir, adapter_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = [tok(p).input_ids for p in PROMPTS]
    paths = [adapter_dir / a if a else None for a in ADAPTERS]
    return ids, hf_greedy(tiny_model_dir, ids, paths, MAX_NEW)


def _engine(model_dir, adapter_dir, **kw) -> Engine:
    return Engine(EngineConfig(model=str(model_dir), precision="fp32", adapter_dir=adapter_dir, **kw))


def test_mixed_batch_equals_hf_and_peft(tiny_model_dir, adapter_dir, reference):
    ids, expected = reference
    engine = _engine(tiny_model_dir, adapter_dir, block_size=4, num_kv_blocks=256)
    # Adapters load on a background thread: loaded first, all rows are admitted together whatever the
    # machine's load (a late load would stagger them, and the one-batch check below would depend on timing).
    names = sorted({a for a in ADAPTERS if a})
    engine.generate([ids[0]] * len(names), SamplingParams(max_tokens=1, temperature=0), names)
    batches = []
    run = engine.runner.run

    def recording_run(seqs, is_prefill):
        batches.append((is_prefill, len(seqs), {s.adapter_index for s in seqs}))
        return run(seqs, is_prefill)

    engine.runner.run = recording_run
    got = engine.generate(ids, SamplingParams(max_tokens=MAX_NEW, temperature=0), ADAPTERS)
    assert [s.output_ids for s in got] == expected
    # Decode steps ran base rows and four adapters of ranks 2-16 (some repeated) in one forward pass.
    assert any(not pre and n == len(PROMPTS) and len(slots) == 5 for pre, n, slots in batches)
    # Adapters really change the output (otherwise this test could not catch a dropped LoRA term).
    assert len({tuple(e) for e in expected}) == len(expected)


def test_preemption_under_a_small_cache_gives_the_same_outputs(tiny_model_dir, adapter_dir, reference):
    ids, expected = reference
    # 10 blocks of 4 tokens cannot hold eight sequences of ~20 tokens: the scheduler must preempt and resume.
    engine = _engine(tiny_model_dir, adapter_dir, block_size=4, num_kv_blocks=10)
    got = engine.generate(ids, SamplingParams(max_tokens=MAX_NEW, temperature=0), ADAPTERS)
    assert engine.scheduler.num_preemptions > 0
    assert [s.output_ids for s in got] == expected
    assert engine.blocks.num_free == 10


def test_big_model_mode_holds_only_packed_weights_with_the_same_outputs(
    tiny_model_dir, adapter_dir, reference, monkeypatch
):
    """Where two copies of the weights would not fit, only oneDNN's packed copy is kept (linear.py)."""
    import loraforge.serve.model.llama as llama

    ids, expected = reference
    monkeypatch.setattr(llama, "keep_plain_copy", lambda nbytes: False)
    engine = _engine(tiny_model_dir, adapter_dir)
    if engine.model.layers[0].attn.qkv.packed is None:
        pytest.skip("this torch build cannot pack weights for oneDNN")
    assert all(ly.attn.qkv.weight is None and ly.mlp.down.weight is None for ly in engine.model.layers)
    got = engine.generate(ids, SamplingParams(max_tokens=MAX_NEW, temperature=0), ADAPTERS)
    assert [s.output_ids for s in got] == expected
    one = engine.generate(ids[:1], SamplingParams(max_tokens=MAX_NEW, temperature=0), ADAPTERS[:1])
    assert one[0].output_ids == expected[0]  # batch 1: the packed form instead of the 1-2 row kernel


def test_small_token_budget_splits_prefills(tiny_model_dir, adapter_dir, reference):
    ids, expected = reference
    engine = _engine(tiny_model_dir, adapter_dir, max_num_batched_tokens=16, max_num_seqs=3)
    got = engine.generate(ids, SamplingParams(max_tokens=MAX_NEW, temperature=0), ADAPTERS)
    assert [s.output_ids for s in got] == expected


EVEN = ["alpha", "beta", "gamma", "delta", "alpha", "beta", "gamma", "delta"]


@pytest.fixture(scope="module")
def reference_even(tiny_model_dir, adapter_dir, reference):
    ids, _ = reference
    return ids, hf_greedy(tiny_model_dir, ids, [adapter_dir / a for a in EVEN], MAX_NEW)


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])
def test_equal_groups_per_adapter_equal_hf_and_peft(tiny_model_dir, adapter_dir, reference_even, cache_bytes):
    """Two requests per adapter and no base rows: decode groups are views of the batch (no gather)."""
    ids, expected = reference_even
    engine = _engine(tiny_model_dir, adapter_dir)
    engine.lora.cache_bytes = (
        cache_bytes  # 0: gather the adapters' weights per layer instead of once per batch
    )
    got = engine.generate(ids, SamplingParams(max_tokens=MAX_NEW, temperature=0), EVEN)
    assert [s.output_ids for s in got] == expected


@pytest.mark.slow
def test_smollm2_mixed_batch_equals_hf_and_peft(tmp_path):
    from loraforge.models import load_tokenizer, resolve_model
    from tests.serve.conftest import write_random_adapter

    model = resolve_model("smollm2-135m")
    reg = tmp_path / "adapters"
    make_adapter(model.path, reg / "a", r=8, targets=["q_proj", "v_proj", "down_proj"], seed=11, std=0.03)
    write_random_adapter(model.path, reg / "b", r=16, seed=12, std=0.02)
    write_random_adapter(model.path, reg / "c", r=4, seed=13, std=0.03)
    tok = load_tokenizer(model)
    chats = ["What is the capital of France?", "Write a haiku about the sea.", "List three colors."]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
        for c in chats
    ]
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts] * 2
    adapters = [None, "a", "b", "c", "b", None]
    expected = hf_greedy(model.path, ids, [reg / a if a else None for a in adapters], 12)
    engine = Engine(EngineConfig(model="smollm2-135m", precision="fp32", adapter_dir=reg))
    got = engine.generate(ids, SamplingParams(max_tokens=12, temperature=0), adapters)
    assert [s.output_ids for s in got] == expected
    assert len({tuple(e) for e in expected}) >= 5  # the adapters change the answers


def test_the_plain_pytorch_fallback_equals_hf_and_peft(tiny_model_dir, adapter_dir, reference, monkeypatch):
    """What runs without a C++ toolchain (or with LORAFORGE_NO_KERNELS=1), on any CPU."""
    from loraforge.serve.kernels.loader import cpu_kernels
    from loraforge.serve.kernels.ops import TORCH_OPS

    ids, expected = reference
    monkeypatch.setenv("LORAFORGE_NO_KERNELS", "1")
    cpu_kernels.cache_clear()
    try:
        engine = _engine(tiny_model_dir, adapter_dir, block_size=4, num_kv_blocks=256)
        assert engine.model.ops is TORCH_OPS and engine.lora.ops is TORCH_OPS
        got = engine.generate(ids, SamplingParams(max_tokens=MAX_NEW, temperature=0), ADAPTERS)
    finally:
        cpu_kernels.cache_clear()
    assert [s.output_ids for s in got] == expected
