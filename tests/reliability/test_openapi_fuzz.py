"""schemathesis against the OpenAPI schema of `loraforge serve` (its request models are pydantic, so the
schema describes every body), on loopback: bodies that fit the schema and bodies that break it, for every
operation. The oracle is tests/reliability/hostile.py's: no 5xx, every 4xx OpenAI-shaped, every 200 a
well-formed completion.

The gateway's own /openapi.json lists no operations (its routes are plain Starlette routes that pass bodies
through untouched), so it is fuzzed with the serve schema's OpenAI operations: the contract it proxies.
"""

import httpx
import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode

from tests.reliability.conftest import GATEWAY_KEY, bearer
from tests.reliability.hostile import REQUEST_TIMEOUT_S, Sweep, sweep_settings
from tests.serve.api.conftest import API_KEY

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLES_PER_MODE = 60  # per server and generation mode: a couple of minutes in all on 2 cores
COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
OPENAI_PATHS = (*COMPLETION_PATHS, "/v1/models")


def openapi_sweep(spec: dict, base_url: str, headers: dict, examples: int, label: str, model: str) -> Sweep:
    """`examples` cases that fit the schema, then `examples` that do not, across all its operations. Every
    other body gets `model` as its model, so that bodies reach the engine rather than a 404."""
    schema = schemathesis.openapi.from_dict(spec)
    result = Sweep()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        _sweep_mode(schema, mode, base_url, headers, examples, label, model, result)
    return result


def _sweep_mode(
    schema, mode, base_url: str, headers: dict, examples: int, label: str, model: str, result: Sweep
):
    @sweep_settings(examples)
    @given(case=schema.as_strategy(generation_mode=mode))
    def probe(case) -> None:
        result.tried += 1
        if isinstance(case.body, dict) and "model" in case.body and result.tried % 2:
            case.body["model"] = model
        what = f"{case.method} {case.formatted_path} ({mode.value})"
        shown = repr({"query": case.query, "body": case.body})[:240]
        try:
            response = case.call(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # requests' errors: the server hung or dropped the connection
            result.statuses[type(exc).__name__] += 1
            result.violations.append(f"{label} {what}: {type(exc).__name__} {exc} for {shown}")
            return
        # What the server answered decides how it is judged: an event stream as a stream (unless
        # schemathesis stopped reading it early), a completion endpoint's JSON as a completion.
        content_type = "".join(response.headers.get("content-type", []))
        stream = content_type.startswith("text/event-stream")
        completion = case.formatted_path in COMPLETION_PATHS and not response.stream_cut_short
        as_httpx = httpx.Response(response.status_code, content=response.content)
        result.record(label, what, as_httpx, stream, shown, completion)

    probe()


@pytest.fixture(scope="module")
def serve_spec(serve) -> dict:
    spec = httpx.get(f"{serve.url}/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/adapters"} <= set(spec["paths"])
    assert "CompletionRequest" in spec["components"]["schemas"]  # bodies are described, not hand-parsed
    return spec


def test_serve_openapi_fuzz_gets_no_5xx_and_openai_shaped_4xx(serve, serve_spec):
    result = openapi_sweep(
        serve_spec, serve.url, bearer(API_KEY), EXAMPLES_PER_MODE, "serve", serve.engine.model_name
    )
    assert result.tried == 2 * EXAMPLES_PER_MODE
    assert not result.violations, result.report()


def test_gateway_openapi_fuzz_gets_no_5xx_and_openai_shaped_4xx(gateway, serve_spec):
    spec = {**serve_spec, "paths": {p: v for p, v in serve_spec["paths"].items() if p in OPENAI_PATHS}}
    result = openapi_sweep(spec, gateway.url, bearer(GATEWAY_KEY), EXAMPLES_PER_MODE, "gateway", "stub-model")
    assert result.tried == 2 * EXAMPLES_PER_MODE
    assert not result.violations, result.report()
