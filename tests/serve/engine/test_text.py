"""One path for text: the deltas a server streams join up to exactly the text offline `Engine.generate`
returns, cut before a stop string, and no delta ever holds a part of the stop string."""

import pytest

from loraforge.serve.engine import Engine, EngineConfig, FinishReason, SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(EngineConfig(model=str(tiny_model_dir), precision="fp32"))


def _stream(engine, ids, params) -> tuple[list[str], object]:
    seq = engine.add_request(ids, params)
    deltas = []
    while not seq.is_finished:
        deltas += [out.delta for out in engine.step() if out.seq is seq]
    return deltas, seq


def test_streamed_deltas_equal_the_offline_text_cut_at_a_stop_string(engine):
    ids = engine.tokenizer("The quick brown fox").input_ids
    free = engine.generate([ids], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0]
    text = free.output_text
    assert len(text) >= 8, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # occurs in the free text: generation must stop there
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, stop=[stop, "never-there"])
    offline = engine.generate([ids], params)[0]
    assert offline.finish_reason is FinishReason.STOP and offline.output_text == text[: text.find(stop)]
    deltas, streamed = _stream(engine, ids, SamplingParams(**{**vars(params), "stop": [stop, "never-there"]}))
    assert "".join(deltas) == streamed.output_text == offline.output_text
    assert not any(stop in d for d in deltas)


def test_empty_stop_strings_are_ignored_the_same_way_everywhere(engine):
    ids = engine.tokenizer("abc").input_ids
    plain = engine.generate([ids], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    with_empty = engine.generate(
        [ids], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, stop=[""])
    )
    assert (
        with_empty[0].output_text == plain.output_text and with_empty[0].finish_reason is FinishReason.LENGTH
    )
