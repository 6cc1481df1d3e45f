"""One bad request never harms the others: ids checked up front, a failing sequence fails alone."""

import pytest

from loraforge.serve.engine import Engine, EngineConfig, RequestError, SamplingParams

PROMPTS = [[5, 6, 7], [8, 9, 10, 11], [12, 13]]
POISON = 13  # a prompt holding this token makes the (patched) model fail


def _params():
    return SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(EngineConfig(model=str(tiny_model_dir), precision="fp32"))


@pytest.mark.parametrize("bad", [[999_999_999], [-5], [5, 6, 10**6]])
def test_token_ids_outside_the_vocabulary_are_refused(engine, bad):
    with pytest.raises(RequestError, match="outside the vocabulary") as exc:
        engine.add_request(bad, _params())
    assert exc.value.param == "prompt"
    assert not engine.has_work()


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": ["x" * 257]}, "stop"),
        ({"max_tokens": 10**9}, "max_tokens"),
    ],
)
def test_request_limits(engine, params, param):
    with pytest.raises(RequestError) as exc:
        engine.add_request([5, 6], SamplingParams(**params))
    assert exc.value.param == param


def _alone(engine):
    return [s.output_ids for s in engine.generate(PROMPTS, _params())]


def test_a_sequence_that_fails_in_the_model_fails_alone(engine, monkeypatch):
    reference = _alone(engine)
    real = engine.runner.run

    def flaky(seqs, is_prefill):
        if any(POISON in s.prompt_ids for s in seqs):
            raise IndexError("index out of range in self")
        return real(seqs, is_prefill)

    monkeypatch.setattr(engine.runner, "run", flaky)
    seqs = engine.generate(PROMPTS, _params())
    assert isinstance(seqs[2].error, IndexError) and seqs[2].finish_reason.value == "abort"
    assert [s.output_ids for s in seqs[:2]] == reference[:2]
    assert all(s.error is None for s in seqs[:2])
    assert not engine.has_work() and engine.blocks.num_free == engine.blocks.num_blocks
    monkeypatch.setattr(engine.runner, "run", real)
    assert _alone(engine) == reference  # and the engine goes on


def test_a_sequence_that_fails_after_the_model_fails_alone(engine, monkeypatch):
    reference = _alone(engine)
    real = engine.detok.step

    def flaky(seq):
        if POISON in seq.prompt_ids:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte")
        return real(seq)

    monkeypatch.setattr(engine.detok, "step", flaky)
    seqs = engine.generate(PROMPTS, _params())
    assert isinstance(seqs[2].error, UnicodeDecodeError)
    assert [s.output_ids for s in seqs[:2]] == reference[:2]
