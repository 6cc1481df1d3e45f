"""Hostile and malformed requests get a clear OpenAI-shaped 4xx naming what is wrong, never a 500;
unimplemented OpenAI fields are refused by name, neutral values of them accepted."""

import json

import httpx
import pytest

from loraforge.serve.limits import ServeLimits
from tests.serve.api.conftest import API_KEY
from tests.serve.api.test_errors import AUTH, assert_error, post

LIM = ServeLimits()


def completion(live, **fields):
    return post(live, "/v1/completions", {"model": live.engine.model_name, "max_tokens": 2, **fields})


def chat(live, **fields):
    body = {"model": live.engine.model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return post(live, "/v1/chat/completions", {**body, **fields})


@pytest.mark.parametrize("prompt", [[999_999_999], [-5], [[1, 2, 999_999]]])
def test_token_ids_outside_the_vocabulary_are_400(live, prompt):
    err = assert_error(completion(live, prompt=prompt), 400, "prompt")
    assert "vocabulary" in err["message"]


def test_token_id_prompts_alone_or_in_a_list(live):
    flat = completion(live, prompt=[5, 6, 7], temperature=0)
    nested = completion(live, prompt=[[5, 6, 7]], temperature=0)
    assert flat.status_code == nested.status_code == 200
    assert flat.json()["choices"][0]["text"] == nested.json()["choices"][0]["text"]
    assert_error(completion(live, prompt=[[5, 6], [7]]), 400, "prompt")
    assert_error(completion(live, prompt=["a", "b"]), 400, "prompt")
    assert_error(completion(live, prompt=[1.5]), 400, "prompt")


def test_seed_out_of_range_is_400(live):
    assert_error(completion(live, prompt="x", seed=2**70), 400, "seed")
    assert completion(live, prompt="x", seed=-(2**63)).status_code == 200


def test_stop_strings_are_bounded(live):
    assert_error(completion(live, prompt="x", stop=["a"] * (LIM.max_stop_sequences + 1)), 400, "stop")
    assert_error(completion(live, prompt="x", stop=["a" * (LIM.max_stop_chars + 1)]), 400, "stop")
    assert_error(completion(live, prompt="x", stop=["a" * 1000] * 1000), 400, "stop")
    assert completion(live, prompt="x", stop=["a"] * LIM.max_stop_sequences).status_code == 200


def test_max_tokens_past_the_context_is_400(live):
    context = live.engine.engine.max_model_len
    r = completion(live, prompt="hello there", max_tokens=context)
    err = assert_error(r, 400, "max_tokens", "context_length_exceeded")
    assert str(context) in err["message"]
    assert_error(completion(live, prompt="x", max_tokens=2**40), 400, "max_tokens")


def test_body_over_the_limit_is_413(live):
    r = completion(live, prompt="x" * (LIM.max_body_bytes + 10))
    err = assert_error(r, 413, code="request_too_large")
    assert "--max-body-bytes" in err["message"]


def test_body_over_the_limit_without_a_length_is_413(live):
    def chunks():
        yield b'{"model": "m", "prompt": "'
        for _ in range(LIM.max_body_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    r = httpx.post(live.url + "/v1/completions", content=chunks(), headers=AUTH, timeout=30)
    assert_error(r, 413)


@pytest.mark.parametrize("depth", [100_000, 900])
def test_deeply_nested_json_is_400(live, depth):
    body = '{"model": "m", "prompt": "x", "metadata": ' + "[" * depth + "]" * depth + "}"
    headers = {**AUTH, "Content-Type": "application/json"}
    r = httpx.post(live.url + "/v1/completions", content=body, headers=headers, timeout=30)
    assert_error(r, 400)


def test_non_ascii_authorization_is_401(live):
    body = json.dumps({"model": live.engine.model_name, "prompt": "x", "max_tokens": 1}).encode()
    for value in ["Bearer clé-ünïcode".encode("latin-1"), "Bearer ключ".encode(), b"Bearer \xff\xfe"]:
        headers = [(b"authorization", value), (b"content-type", b"application/json")]
        r = httpx.post(live.url + "/v1/completions", content=body, headers=headers, timeout=30)
        assert_error(r, 401, code="invalid_api_key")


def test_the_bearer_scheme_is_case_insensitive(live):
    def models(auth):
        return httpx.get(live.url + "/v1/models", headers={"Authorization": auth}).status_code

    assert models(f"bearer {API_KEY}") == 200
    assert models(f"Basic {API_KEY}") == 401


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("functions", [{"name": "f"}]),
        ("audio", {"voice": "alloy"}),
        ("no_such_field", 1),
    ],
)
def test_unimplemented_chat_fields_are_400_naming_them(live, field, value):
    err = assert_error(chat(live, **{field: value}), 400, field)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("field", "value"),
    [("best_of", 3), ("suffix", "end"), ("tools", [{"type": "function"}])],
)
def test_unimplemented_completion_fields_are_400_naming_them(live, field, value):
    assert_error(completion(live, prompt="x", **{field: value}), 400, field)


def test_non_text_content_parts_are_400(live):
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, image]}]
    err = assert_error(chat(live, messages=messages), 400, "messages.0.content")
    assert "image_url" in err["message"]
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}]}]
    assert chat(live, messages=messages).status_code == 200


def test_neutral_values_of_unimplemented_fields_are_accepted(live):
    neutral = {
        "n": 1,
        "logprobs": False,
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "logit_bias": {},
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "user": "u-1",
        "metadata": {"task": "support"},
        "stream_options": None,
        "parallel_tool_calls": True,
    }
    r = chat(live, **neutral)
    assert r.status_code == 200, r.text


def test_echo_returns_the_prompt_first(live):
    plain = completion(live, prompt="The quick brown", temperature=0).json()["choices"][0]["text"]
    echoed = completion(live, prompt="The quick brown", temperature=0, echo=True).json()["choices"][0]["text"]
    assert echoed == "The quick brown" + plain
    ids = live.engine.engine.tokenizer("The quick brown").input_ids
    by_ids = completion(live, prompt=ids, temperature=0, echo=True).json()["choices"][0]["text"]
    assert by_ids == live.engine.engine.tokenizer.decode(ids) + plain
    body = {"model": live.engine.model_name, "prompt": "The quick brown", "max_tokens": 2, "temperature": 0}
    with httpx.stream(
        "POST", live.url + "/v1/completions", json={**body, "echo": True, "stream": True}, headers=AUTH
    ) as r:
        data = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in data) == "The quick brown" + plain


def test_the_official_client_sends_nothing_that_is_refused(client, live):
    """The openai client omits unset fields, so plain calls keep working with unknown fields refused."""
    out = client.chat.completions.create(
        model=live.engine.model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert out.choices[0].finish_reason in ("stop", "length")
    out = client.completions.create(model=live.engine.model_name, prompt="hi", max_tokens=2)
    assert out.usage.completion_tokens >= 1


def test_limits_are_configurable(tiny_model_dir):
    from tests.serve.api.conftest import start_server

    limits = ServeLimits(max_prompt_tokens=8, max_tokens=5, max_body_bytes=2000)
    srv = start_server(tiny_model_dir, None, api_key=None, limits=limits)
    try:
        url, model = srv.url + "/v1/completions", srv.engine.model_name
        r = httpx.post(url, json={"model": model, "prompt": list(range(5, 15)), "max_tokens": 1})
        assert_error(r, 400, "prompt", "context_length_exceeded")
        r = httpx.post(url, json={"model": model, "prompt": "x", "max_tokens": 6})
        assert_error(r, 400, "max_tokens")
        assert_error(httpx.post(url, json={"model": model, "prompt": "x" * 3000}), 413)
        r = httpx.post(url, json={"model": model, "prompt": list(range(5, 13)), "max_tokens": 5})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 8
    finally:
        srv.stop()
