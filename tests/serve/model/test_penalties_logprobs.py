"""OpenAI's logit processors and logprobs in the engine, against a plain-torch reference on the tiny model:
logit_bias, presence/frequency penalties, the logprobs of the distribution sampled from, prompt logprobs,
and rows of a batch that never change each other's output."""

import pytest
import torch

from loraforge.serve.engine import Engine, EngineConfig, RequestError, SamplingParams

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapter_dir):
    return Engine(EngineConfig(model=str(tiny_model_dir), precision="fp32", adapter_dir=adapter_dir))


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _ids(engine, text=PROMPT):
    return engine.tokenizer(text).input_ids


def _processed(logits: torch.Tensor, out: list[int], p: SamplingParams) -> torch.Tensor:
    """OpenAI's processors written out plainly, one row: bias, then penalties on the completion's counts."""
    logits = logits.clone()
    for t, b in (p.logit_bias or {}).items():
        logits[t] += b
    counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0]).float()
    return logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).float()


def _reference(hf, prompt: list[int], out: list[int], p: SamplingParams) -> list[torch.Tensor]:
    """Per output position, the log-probabilities the token was chosen from (see model/logprobs.py)."""
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + out])).logits[0].float()
    dists = []
    for j in range(len(out)):
        row = _processed(logits[len(prompt) - 1 + j], out[:j], p)
        if not p.greedy:
            row = row / p.temperature
            if p.top_k:
                row[row < row.topk(p.top_k).values[-1]] = float("-inf")
        dists.append(row.log_softmax(-1))
    return dists


def test_greedy_with_penalties_and_bias_matches_the_reference(engine, hf):
    prompt = _ids(engine)
    p = SamplingParams(
        max_tokens=12,
        temperature=0,
        ignore_eos=True,
        presence_penalty=0.7,
        frequency_penalty=1.3,
        logit_bias={5: 2.5, 382: -4.0},
        logprobs=4,
    )
    seq = engine.generate([prompt], p)[0]
    dists = _reference(hf, prompt, seq.output_ids, p)
    for j, (token, entry, dist) in enumerate(zip(seq.output_ids, seq.logprobs, dists, strict=True)):
        assert token == int(dist.argmax()), j  # the penalized greedy choice
        assert entry.token == token and entry.logprob == pytest.approx(float(dist[token]), abs=1e-4)
        top = dist.topk(4)
        assert [t for t, _ in entry.top] == top.indices.tolist()
        assert [v for _, v in entry.top] == pytest.approx(top.values.tolist(), abs=1e-4)
    plain = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    assert plain.output_ids != seq.output_ids and not plain.logprobs


def test_sampled_logprobs_are_of_the_distribution_sampled_from(engine, hf):
    prompt = _ids(engine)
    p = SamplingParams(
        max_tokens=10, temperature=0.8, top_k=6, seed=3, ignore_eos=True, frequency_penalty=0.5, logprobs=8
    )
    seq = engine.generate([prompt], p)[0]
    dists = _reference(hf, prompt, seq.output_ids, p)
    for token, entry, dist in zip(seq.output_ids, seq.logprobs, dists, strict=True):
        assert entry.logprob == pytest.approx(float(dist[token]), abs=1e-4)
        # top-k removed all but 6 tokens: the 7th and 8th alternatives have no probability left.
        assert [v for _, v in entry.top[6:]] == [float("-inf")] * 2
        assert torch.tensor([v for _, v in entry.top[:6]]).exp().sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("chunk", [256, 3])  # the prompt's logits at once, or 3 positions at a time
def test_prompt_logprobs_are_the_raw_model_distribution(engine, hf, chunk, monkeypatch):
    monkeypatch.setattr("loraforge.serve.engine.model_runner.PROMPT_LOGITS_CHUNK", chunk)
    prompt = _ids(engine, "The quick brown fox jumps over the lazy dog")
    p = SamplingParams(max_tokens=2, temperature=0, logprobs=2, prompt_logprobs=True, ignore_eos=True)
    seq = engine.generate([prompt], p)[0]
    with torch.no_grad():
        logp = hf(torch.tensor([prompt])).logits[0].float().log_softmax(-1)
    assert [e.token for e in seq.prompt_logprobs] == prompt[1:]
    for j, entry in enumerate(seq.prompt_logprobs):
        assert entry.logprob == pytest.approx(float(logp[j, prompt[j + 1]]), abs=1e-4)
        assert [t for t, _ in entry.top] == logp[j].topk(2).indices.tolist()


def test_bias_forces_and_bans_tokens(engine):
    prompt = _ids(engine)
    forced = SamplingParams(max_tokens=6, temperature=1.0, seed=0, logit_bias={77: 100.0}, logprobs=0)
    seq = engine.generate([prompt], forced)[0]
    assert seq.output_ids == [77] * 6 and all(e.logprob > -1e-3 and e.top == () for e in seq.logprobs)
    free = engine.generate([prompt], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    banned = SamplingParams(
        max_tokens=6, temperature=0, ignore_eos=True, logit_bias={free.output_ids[0]: -100}
    )
    assert engine.generate([prompt], banned)[0].output_ids[0] != free.output_ids[0]


def test_a_rows_output_is_unchanged_by_its_neighbours(engine):
    """Mixed settings and adapters in one batch: each row as when it runs alone."""
    prompts = [_ids(engine, t) for t in (PROMPT, "Hello there", "One two three", "A B C D")]
    adapters = ["alpha", None, "gamma", "alpha"]
    params = [
        SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, frequency_penalty=2.0, logprobs=2),
        SamplingParams(max_tokens=10, temperature=0, ignore_eos=True),
        SamplingParams(max_tokens=10, temperature=0.9, seed=5, ignore_eos=True, logit_bias={10: 5.0}),
        SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, presence_penalty=-2.0),
    ]
    batch = engine.generate(prompts, [SamplingParams(**vars(p)) for p in params], adapters)
    for prompt, p, adapter, seq in zip(prompts, params, adapters, batch, strict=True):
        alone = engine.generate([prompt], [SamplingParams(**vars(p))], [adapter])[0]
        assert seq.output_ids == alone.output_ids
        assert [e.logprob for e in seq.logprobs] == pytest.approx(
            [e.logprob for e in alone.logprobs], abs=1e-5
        )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"logit_bias": {10**9: 1.0}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {3: 101.0}}, "logit_bias"),
        ({"logprobs": 21}, "logprobs"),
        ({"prompt_logprobs": True}, "logprobs"),
    ],
)
def test_invalid_settings_are_request_errors(engine, change, field):
    with pytest.raises(RequestError) as err:
        engine.add_request(_ids(engine), SamplingParams(**change))
    assert err.value.param == field
