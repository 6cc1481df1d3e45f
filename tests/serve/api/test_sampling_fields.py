"""The OpenAI sampling fields through the official client: logprobs / top_logprobs (chat), logprobs and echo
(completions), n > 1, presence/frequency penalties and logit_bias; whole answers and streams agree."""

import httpx
import pytest
import torch

from loraforge.serve.api.logprobs import _BYTE_OF
from tests.serve.api.conftest import API_KEY

MSG = [{"role": "user", "content": "How do I activate my card?"}]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _chat_ids(live) -> list[int]:
    tok = live.engine.tokenizer
    text = tok.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


def test_chat_logprobs_match_the_model(client, live, hf):
    base = live.engine.model_name
    r = client.chat.completions.create(
        model=base, messages=MSG, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 8
    assert b"".join(bytes(e.bytes) for e in content).decode() == r.choices[0].message.content
    prompt = _chat_ids(live)
    # Each token back to its id through its exact bytes (the byte-level alphabet), then the plain model.
    char_of = {b: c for c, b in _BYTE_OF.items()}
    tok = live.engine.tokenizer
    out = [tok.convert_tokens_to_ids("".join(char_of[b] for b in e.bytes)) for e in content]
    with torch.no_grad():
        logp = hf(torch.tensor([prompt + out])).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
    for j, entry in enumerate(content):
        assert entry.logprob == pytest.approx(float(logp[j, out[j]]), abs=1e-4)
        top = logp[j].topk(3).values.tolist()
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top, abs=1e-4)
    for entry in content:
        assert (
            len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        )
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the most likely


def test_chat_logprobs_stream_like_the_whole_answer(client, live):
    kw = {
        "model": "ad01",
        "messages": MSG,
        "max_tokens": 10,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = client.chat.completions.create(**kw).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    streamed = [
        e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in whole]
    # The second request's prompt start comes from the prefix cache, whose prefill attends through another
    # kernel (ops.paged_prefill): equal up to float rounding.
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-5)
    plain = client.chat.completions.create(model="ad01", messages=MSG, max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_and_echo(client, live):
    base = live.engine.model_name
    prompt = "The quick brown fox"
    r = client.completions.create(model=base, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top[token] == logprob and 2 <= len(top) <= 3  # the chosen token is always listed
    echoed = client.completions.create(
        model=base, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    e = echoed.choices[0]
    prompt_ids = live.engine.tokenizer(prompt).input_ids
    n = len(prompt_ids)
    assert e.text == prompt + r.choices[0].text
    assert e.logprobs.token_logprobs[0] is None and e.logprobs.top_logprobs[0] is None
    assert all(isinstance(x, float) for x in e.logprobs.token_logprobs[1:])
    assert e.logprobs.tokens[n:] == lp.tokens and e.logprobs.token_logprobs[n:] == lp.token_logprobs
    assert len(e.logprobs.tokens) == n + 6
    streamed = list(
        client.completions.create(
            model=base, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == e.text
    tokens = [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == e.logprobs.tokens


def test_n_choices(client, live):
    base = live.engine.model_name
    greedy = client.completions.create(model=base, prompt="Hello", max_tokens=8, temperature=0, n=3)
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert len({c.text for c in greedy.choices}) == 1
    assert greedy.usage.completion_tokens == 24
    kw = {"model": "ad02", "messages": MSG, "max_tokens": 12, "temperature": 1.0, "n": 4, "seed": 11}
    whole = client.chat.completions.create(**kw)
    one = [c.message.content for c in whole.choices]
    two = [c.message.content for c in client.chat.completions.create(**kw).choices]
    assert one == two and len(set(one)) > 1  # seeded: reproducible, and each choice its own draw
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    texts = ["", "", "", ""]
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == one
    finishes = [ch.index for c in chunks for ch in c.choices if ch.finish_reason]
    assert sorted(finishes) == [0, 1, 2, 3] and chunks[-1].usage == whole.usage


def test_penalties_and_bias_change_the_answer(client, live):
    base = live.engine.model_name
    kw = {"model": base, "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0}
    plain = client.completions.create(**kw).choices[0].text
    penalized = client.completions.create(frequency_penalty=2.0, presence_penalty=1.0, **kw).choices[0].text
    assert penalized != plain
    forced = client.completions.create(logit_bias={"77": 100}, logprobs=0, **kw).choices[0].logprobs
    token = live.engine.tokenizer.convert_ids_to_tokens(77)
    assert len(set(forced.tokens)) == 1 and forced.token_logprobs[0] > -1e-3, token


def test_logit_bias_outside_the_vocabulary_is_400_and_harms_no_other_request(live):
    url = live.url + "/v1/completions"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    bad = {"model": live.engine.model_name, "prompt": "x", "max_tokens": 2, "logit_bias": {"1000000": 5}}
    r = httpx.post(url, json=bad, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
    ok = {"model": live.engine.model_name, "prompt": "x", "max_tokens": 2}
    assert httpx.post(url, json=ok, headers=headers, timeout=30).status_code == 200
    chat = {"model": live.engine.model_name, "messages": MSG, "top_logprobs": 2}
    r = httpx.post(live.url + "/v1/chat/completions", json=chat, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
