"""OpenAI-shaped errors (404 unknown model, 400 naming the field, 401 key, 429 queue full); path escapes."""

import httpx
import openai
import pytest

from tests.serve.api.conftest import ADMIN_KEY, API_KEY, start_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def post(live, path, body, headers=AUTH):
    return httpx.post(live.url + path, json=body, headers=headers, timeout=30)


def assert_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param
        assert param in err["message"]
    if code is not None:
        assert err["code"] == code
    return err


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="no-such-adapter", prompt="x", max_tokens=2)
    assert exc.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 5),
        ("top_p", 0),
        ("max_tokens", 0),
        ("n", 0),
        ("n", 17),
        ("top_k", -1),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.1),
        ("logit_bias", {"5": 101}),
        ("logit_bias", {"x": 1}),
        ("logit_bias", {"99999999": 1}),
        ("logprobs", 21),
    ],
)
def test_bad_parameter_is_400_naming_the_field(live, field, value):
    r = post(live, "/v1/completions", {"model": live.engine.model_name, "prompt": "x", field: value})
    assert_error(r, 400, field)


def test_missing_field_and_bad_messages_are_400(live):
    assert_error(post(live, "/v1/completions", {"model": live.engine.model_name}), 400, "prompt")
    body = {"model": live.engine.model_name, "messages": [{"role": "wizard", "content": "x"}]}
    assert_error(post(live, "/v1/chat/completions", body), 400, "messages.0.role")
    assert_error(post(live, "/v1/chat/completions", {"model": "x", "messages": []}), 400, "messages")


def test_prompt_longer_than_the_context_is_400(live):
    long_prompt = "card " * (live.engine.engine.max_model_len + 10)
    r = post(
        live, "/v1/completions", {"model": live.engine.model_name, "prompt": long_prompt, "max_tokens": 2}
    )
    assert_error(r, 400, "prompt", "context_length_exceeded")


def test_api_key_is_required(live):
    body = {"model": live.engine.model_name, "prompt": "x", "max_tokens": 1}
    assert_error(post(live, "/v1/completions", body, headers={}), 401, code="invalid_api_key")
    assert_error(post(live, "/v1/completions", body, headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(live.url + "/v1/models").status_code == 401
    assert httpx.get(live.url + "/health").status_code == 200


@pytest.mark.parametrize("name", ["../ad00", "..", "ad00/../../etc", "/etc/passwd", "a b"])
def test_adapter_names_that_escape_the_registry_are_rejected(live, name):
    r = post(live, "/v1/completions", {"model": name, "prompt": "x", "max_tokens": 1})
    assert r.status_code in (400, 404)
    r = post(live, "/v1/adapters", {"name": name}, headers=ADMIN)
    assert r.status_code in (400, 404)
    assert not any(".." in n or "/" in n for n in live.engine.engine.adapters.resident)


def test_symlink_out_of_the_registry_is_rejected(tiny_model_dir, tmp_path):
    from loraforge.errors import ModelNotFoundError
    from loraforge.serve.engine import Engine, EngineConfig
    from tests.serve.conftest import write_random_adapter

    outside = write_random_adapter(tiny_model_dir, tmp_path / "outside", r=2)
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "sneaky").symlink_to(outside, target_is_directory=True)
    engine = Engine(EngineConfig(model=str(tiny_model_dir), precision="fp32", adapter_dir=registry))
    with pytest.raises(ModelNotFoundError, match="escapes"):
        engine.adapters.locate("sneaky")


def test_hub_adapter_offline_is_a_clear_404(live):
    r = post(live, "/v1/completions", {"model": "someorg/some-adapter", "prompt": "x", "max_tokens": 1})
    err = assert_error(r, 404, code="model_not_found")
    assert "Hugging Face Hub" in err["message"]


def test_unloading_an_unknown_adapter_is_404(live):
    assert_error(httpx.delete(live.url + "/v1/adapters/nope", headers=ADMIN), 404)


def test_full_queue_is_429(tiny_model_dir):
    srv = start_server(tiny_model_dir, None, api_key=None, max_waiting=0)
    try:
        r = httpx.post(srv.url + "/v1/completions", json={"model": srv.engine.model_name, "prompt": "x"})
        assert_error(r, 429, code="queue_full")
    finally:
        srv.stop()


def test_an_engine_failure_fails_the_request_not_the_server(tiny_model_dir, monkeypatch):
    srv = start_server(tiny_model_dir, None, api_key=None)
    try:
        body = {"model": srv.engine.model_name, "prompt": "x", "max_tokens": 2}
        real = srv.engine.engine.runner.run

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(srv.engine.engine.runner, "run", broken)
        assert_error(httpx.post(srv.url + "/v1/completions", json=body, timeout=30), 500)
        monkeypatch.setattr(srv.engine.engine.runner, "run", real)
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    finally:
        srv.stop()
