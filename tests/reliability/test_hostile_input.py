"""Hostile and malformed requests to `loraforge serve` and the gateway: never a 5xx, always an OpenAI-shaped
4xx, and a normal client running alongside is never harmed.

The sweeps draw a bounded, derandomized set of bodies (hypothesis: huge and negative ints, token ids outside
the vocabulary, wrong types, nested structures, unknown fields, non-JSON bodies); the cases below them pin
down what issue 11 measured, each with the status and the field a correct server names.
"""

import json

import httpx
import pytest

from tests.reliability.conftest import GATEWAY_KEY, Bystander, bearer
from tests.reliability.hostile import (
    NESTING_DEPTH,
    REQUEST_TIMEOUT_S,
    error_shape_problem,
    sweep_bodies,
    sweep_size,
)
from tests.serve.api.conftest import API_KEY

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]  # the sweeps are also slow

PER_FIELD = 5  # hostile values per field and endpoint (sweep_size: the requests per server)
OVERSIZED_BODY_BYTES = 64 << 20  # far beyond any sane limit for one completion request
NESTED = b'{"model": "m", "prompt": ' + b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH + b"}"


def normal_body(model: str) -> dict:
    return {"model": model, "prompt": "the quick brown fox", "max_tokens": 24, "ignore_eos": True}


@pytest.mark.slow
def test_serve_answers_hostile_bodies_with_4xx_and_keeps_serving_others(serve):
    models = [serve.engine.model_name, "ad00", "ad07", "no-such-adapter", "../ad00"]
    with (
        Bystander(f"{serve.url}/v1/completions", bearer(API_KEY), normal_body("ad01")) as bystander,
        httpx.Client(base_url=serve.url, headers=bearer(API_KEY)) as client,
    ):
        result = sweep_bodies(client, models, PER_FIELD, "serve")
    assert result.tried == sweep_size(PER_FIELD)
    assert not result.violations, result.report()
    assert bystander.completed and not bystander.failures, bystander.failures[:5]


@pytest.mark.slow
def test_gateway_answers_hostile_bodies_with_4xx_and_keeps_serving_others(gateway):
    chat = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
    with (
        Bystander(f"{gateway.url}/v1/chat/completions", bearer(GATEWAY_KEY), chat) as bystander,
        httpx.Client(base_url=gateway.url, headers=bearer(GATEWAY_KEY)) as client,
    ):
        result = sweep_bodies(client, ["stub-model", "", "x" * 300], PER_FIELD, "gateway")
    assert result.tried == sweep_size(PER_FIELD)
    assert not result.violations, result.report()
    assert bystander.completed and not bystander.failures, bystander.failures[:5]


def post(url: str, body: dict | None = None, raw: bytes | None = None, headers: dict | None = None):
    content = raw if raw is not None else json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(url, content=content, headers=headers, timeout=REQUEST_TIMEOUT_S)


def assert_rejected(r: httpx.Response, status: int, param: str | None = None) -> None:
    assert r.status_code == status, f"HTTP {r.status_code} (expected {status}): {r.text[:300]}"
    assert error_shape_problem(r) is None, error_shape_problem(r)
    if param is not None:
        err = r.json()["error"]
        assert param in (err.get("param") or "") or param in err["message"], err


BASE = "__base__"  # replaced by the served model's name
SERVE_CASES = {
    "token id beyond the vocabulary": ("completions", {"prompt": [999_999_999]}, 400, "prompt"),
    "negative token id": ("completions", {"prompt": [-5]}, 400, "prompt"),
    "seed of 2**70": ("completions", {"prompt": "hi", "seed": 2**70}, 400, "seed"),
    "1,000 stop strings of 1,000 characters": (
        "completions",
        {"prompt": "hi", "stop": ["x" * 1000] * 1000},
        400,
        "stop",
    ),
    "tools (not implemented)": (
        "chat",
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        400,
        "tools",
    ),
    "response_format with a schema no grammar can enforce": (
        "chat",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}},
        400,
        "response_format",
    ),
    "logit_bias outside the vocabulary": (
        "completions",
        {"prompt": "hi", "logit_bias": {"999999999": 100}},
        400,
        "logit_bias",
    ),
    "merge of an unknown adapter": (
        "completions",
        {"prompt": "hi", "merge": {"adapters": {"no-such-adapter": 1.0}}},
        404,
        "merge",
    ),
    "unknown field": ("completions", {"prompt": "hi", "frobnicate": True}, 400, "frobnicate"),
    "image content part": (
        "chat",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages",
    ),
}
PATH = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@pytest.mark.parametrize("case", list(SERVE_CASES))
def test_serve_rejects_what_it_cannot_serve_correctly(serve, case):
    endpoint, fields, status, param = SERVE_CASES[case]
    body = {"model": serve.engine.model_name, "max_tokens": 4, **fields}
    if endpoint == "chat":
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    assert_rejected(post(serve.url + PATH[endpoint], body, headers=bearer(API_KEY)), status, param)


def test_serve_rejects_a_non_ascii_api_key_with_401(serve):
    body = {"model": serve.engine.model_name, "prompt": "hi", "max_tokens": 2}
    r = post(serve.url + "/v1/completions", body, headers={"Authorization": "Bearer clé".encode()})
    assert_rejected(r, 401)


def test_serve_rejects_deeply_nested_json_with_400(serve):
    assert_rejected(post(serve.url + "/v1/completions", raw=NESTED, headers=bearer(API_KEY)), 400)


def test_gateway_rejects_deeply_nested_json_with_400(gateway, upstream_server):
    sent = len(upstream_server.requests)
    r = post(gateway.url + "/v1/chat/completions", raw=NESTED, headers=bearer(GATEWAY_KEY))
    assert_rejected(r, 400)
    assert len(upstream_server.requests) == sent  # not forwarded


def test_gateway_rejects_a_non_ascii_api_key_with_401(gateway):
    chat = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
    r = post(gateway.url + "/v1/chat/completions", chat, headers={"Authorization": "Bearer clé".encode()})
    assert_rejected(r, 401)


def oversized_body(model: str, chat: bool) -> bytes:
    """A small valid request padded with whitespace to OVERSIZED_BODY_BYTES: valid JSON that costs the parser
    and the tokenizer nothing, so a server without a body limit answers 200 quickly (and is caught) instead
    of spending minutes and gigabytes on a huge prompt."""
    body = {"model": model, "max_tokens": 1}
    if chat:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    return json.dumps(body).encode() + b" " * OVERSIZED_BODY_BYTES


@pytest.mark.slow
def test_serve_rejects_an_oversized_body_with_413(serve):
    r = post(
        serve.url + "/v1/completions",
        raw=oversized_body(serve.engine.model_name, False),
        headers=bearer(API_KEY),
    )
    assert_rejected(r, 413)


@pytest.mark.slow
def test_gateway_rejects_an_oversized_body_with_413(gateway, upstream_server):
    sent = len(upstream_server.requests)
    r = post(
        gateway.url + "/v1/chat/completions",
        raw=oversized_body("stub-model", True),
        headers=bearer(GATEWAY_KEY),
    )
    assert_rejected(r, 413)
    assert len(upstream_server.requests) == sent
