"""Hostile and malformed bodies get a 4xx with an OpenAI-shaped body; OpenAI fields pass through untouched."""

import json
import threading

import httpx
import pytest

from loraforge.gateway.settings import MAX_JSON_DEPTH
from tests.gateway.conftest import Gateway, start_gateway

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
PREFIX = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "deep": '


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.fixture
def small_gateway(tmp_path, upstream):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings, app, server = start_gateway(tmp_path, url, upstream.url, max_body_bytes=4096)
    with server:
        yield Gateway(server.url, None, settings, app)


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(small_gateway, upstream):
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    r = httpx.post(f"{small_gateway.url}/v1/chat/completions", content=big)
    assert assert_openai_error(r, 413)["code"] == "request_too_large"

    def chunks():  # no content-length: the gateway must stop reading at the limit, not buffer it all
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = httpx.post(f"{small_gateway.url}/v1/chat/completions", content=chunks())
    assert_openai_error(r, 413)
    r = httpx.post(f"{small_gateway.url}/v1/feedback", content=b'{"call_id": "' + b"c" * 5000 + b'"}')
    assert_openai_error(r, 413)
    assert upstream.requests == []
    assert httpx.post(f"{small_gateway.url}/v1/chat/completions", json=CHAT, timeout=20).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        PREFIX + b"[" * 200_000 + b"]" * 200_000 + b"}",  # deeper than the parser's recursion limit
        PREFIX + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",  # past our limit only
        PREFIX + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        PREFIX + b"NaN}",
        PREFIX + b"-Infinity}",
        PREFIX + b"1e999}",
        PREFIX + b"9" * 5000 + b"}",  # more digits than Python converts
        PREFIX + b'"\\ud800 lone surrogate"}',
        PREFIX + b'"\xff\xfe not utf-8"}',
        b'["not", "an", "object"]',
        b'{"model": "m", "messages": [',
        b"",
    ],
    ids=[
        "recursion",
        "depth",
        "deep-objects",
        "nan",
        "infinity",
        "overflow",
        "huge-int",
        "surrogate",
        "utf8",
        "array",
        "truncated",
        "empty",
    ],
)
def test_malformed_bodies_are_400_and_harm_no_one(gateway, upstream, raw):
    errors: list[int] = []

    def normal_calls() -> None:  # alongside: a normal client must be served throughout
        for _ in range(3):
            errors.append(httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=20).status_code)

    other = threading.Thread(target=normal_calls)
    other.start()
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=raw, timeout=20)
    other.join(30)
    assert assert_openai_error(r, 400)["type"] == "invalid_request_error"
    assert errors == [200, 200, 200]
    assert all("deep" not in body for body in upstream.requests)
    r = httpx.post(f"{gateway.url}/v1/feedback", content=raw, timeout=20)
    assert_openai_error(r, 400)


def test_openai_fields_the_gateway_does_not_use_are_forwarded(gateway, upstream):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    body = {
        **CHAT,
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "logit_bias": {"50256": -100},
        "seed": 2**70,
        "n": 2,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a \U0001f600 is sent as an escaped pair"}]}
        ],
    }
    raw = json.dumps(body).encode()  # ASCII-escaped: the emoji travels as \ud83d\ude00, a valid pair
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=raw, timeout=20)
    assert r.status_code == 200, r.text
    forwarded = upstream.requests[-1]
    for key in ("tools", "tool_choice", "response_format", "logit_bias", "seed", "n", "messages"):
        assert forwarded[key] == body[key]
    assert gateway.store.get_call(r.headers["x-loraforge-call-id"]).request_body["seed"] == 2**70


def test_a_non_ascii_authorization_header_is_401_not_500(tmp_path, upstream):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _, _, server = start_gateway(tmp_path, url, upstream.url, api_key="gw-key")
    with server:
        headers = [(b"authorization", "Bearer clé-ü".encode()), (b"content-type", b"application/json")]
        r = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=headers)
        assert assert_openai_error(r, 401)["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}/v1/models", headers=headers[:1]).status_code == 401


def test_a_non_ascii_client_key_is_passed_through_byte_for_byte(gateway, upstream):
    headers = [(b"authorization", "Bearer sk-clé".encode())]
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=20)
    assert r.status_code == 200
    # Starlette (both ends) decodes header bytes as latin-1: the same bytes arrived upstream.
    assert upstream.headers[-1]["authorization"].encode("latin-1") == "Bearer sk-clé".encode()
