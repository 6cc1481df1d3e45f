"""Sampling settings and stop conditions: seeds, top-k/top-p limits, stop strings, max_tokens, EOS."""

import pytest
import torch

from loraforge.serve.engine import Engine, EngineConfig, FinishReason, SamplingParams
from loraforge.serve.engine.sequence import Sequence
from loraforge.serve.model.sampler import sample


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(EngineConfig(model=str(tiny_model_dir), precision="fp32"))


def _ids(engine, text="The quick brown fox"):
    return engine.tokenizer(text).input_ids


def _run(engine, params, text="The quick brown fox"):
    return engine.generate([_ids(engine, text)], params)[0]


def test_seed_reproduces_whatever_else_is_in_the_batch(engine):
    params = SamplingParams(max_tokens=16, temperature=1.5, seed=123, ignore_eos=True)
    alone = _run(engine, params).output_ids
    others = [SamplingParams(max_tokens=16, temperature=1.0, ignore_eos=True) for _ in range(3)]
    batch = engine.generate([_ids(engine)] * 4, [params, *others])
    assert batch[0].output_ids == alone
    different = _run(engine, SamplingParams(max_tokens=16, temperature=1.5, seed=124, ignore_eos=True))
    assert different.output_ids != alone


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    greedy = _run(engine, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)).output_ids
    k1 = _run(
        engine, SamplingParams(max_tokens=12, temperature=2.0, top_k=1, seed=1, ignore_eos=True)
    ).output_ids
    p0 = _run(engine, SamplingParams(max_tokens=12, temperature=2.0, top_p=1e-6, seed=1, ignore_eos=True))
    assert k1 == greedy and p0.output_ids == greedy


def test_top_k_and_top_p_only_draw_from_the_allowed_tokens():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(400, 1)
    params = SamplingParams(temperature=1.0, top_k=2)
    seqs = [Sequence([1], params) for _ in range(400)]
    assert set(sample(logits, seqs)) == {0, 1}
    params = SamplingParams(temperature=1.0, top_p=0.9)  # probs .64 .24 .09 ...: the first three reach 0.9
    seqs = [Sequence([1], params) for _ in range(400)]
    assert set(sample(logits, seqs)) == {0, 1, 2}


def test_max_tokens_and_eos(engine):
    seq = _run(engine, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    assert len(seq.output_ids) == 5 and seq.finish_reason == FinishReason.LENGTH
    free = _run(engine, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    # Treat the token generated third as the end-of-sequence token: generation must stop at its first use.
    eos = free.output_ids[2]
    saved, engine.eos_ids = engine.eos_ids, {eos}
    try:
        stopped = _run(engine, SamplingParams(max_tokens=12, temperature=0))
        ignored = _run(engine, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    finally:
        engine.eos_ids = saved
    assert stopped.output_ids == free.output_ids[: free.output_ids.index(eos) + 1]
    assert stopped.finish_reason == FinishReason.STOP and ignored.output_ids == free.output_ids
    assert tiny_eos_in(engine)


def tiny_eos_in(engine) -> bool:
    """The tokenizer's EOS (<|im_end|>) is among the engine's stop tokens."""
    return engine.tokenizer.convert_tokens_to_ids("<|im_end|>") in engine.eos_ids


def test_stop_string_cuts_the_text(engine):
    full = _run(engine, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
    stop = full.output_text[4:6]
    assert full.output_text.find(stop) == 4
    cut = _run(engine, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, stop=[stop]))
    assert cut.output_text == full.output_text[:4] and cut.finish_reason == FinishReason.STOP
    assert len(cut.output_ids) < 16


def test_requests_that_cannot_fit_are_refused(engine):
    from loraforge.serve.engine import RequestError

    with pytest.raises(RequestError, match="context"):
        engine.add_request([5] * engine.max_model_len, SamplingParams())
    with pytest.raises(RequestError, match="empty"):
        engine.add_request([], SamplingParams())
    seq = engine.add_request(
        [5] * (engine.max_model_len - 3), SamplingParams(max_tokens=100, ignore_eos=True)
    )
    while engine.has_work():
        engine.step()
    assert len(seq.output_ids) == 3 and seq.finish_reason == FinishReason.LENGTH
