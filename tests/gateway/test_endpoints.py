"""Auth, input validation, feedback, health and metrics of the gateway."""

import httpx
import openai
import pytest

from tests.gateway.conftest import Gateway, start_gateway

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def keyed_gateway(tmp_path, store_url, upstream):
    settings, app, server = start_gateway(
        tmp_path, store_url, upstream.url, api_key="gw-secret", upstream_api_key="up-secret"
    )
    with server:
        yield Gateway(server.url, None, settings, app)


def test_wrong_or_missing_api_key_is_401(keyed_gateway, upstream):
    with pytest.raises(openai.AuthenticationError) as info:
        keyed_gateway.client(api_key="wrong").chat.completions.create(**CHAT)
    assert info.value.code == "invalid_api_key"
    r = httpx.post(f"{keyed_gateway.url}/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []
    ok = keyed_gateway.client(api_key="gw-secret").chat.completions.create(**CHAT)
    assert ok.choices[0].message.content == "echo: hi"
    # The upstream gets its own key, never the gateway's.
    assert upstream.headers[-1]["authorization"] == "Bearer up-secret"
    assert httpx.get(f"{keyed_gateway.url}/health").status_code == 200


def test_without_keys_the_client_key_goes_upstream(gateway, upstream):
    gateway.client(api_key="sk-users-own").chat.completions.create(**CHAT)
    assert upstream.headers[-1]["authorization"] == "Bearer sk-users-own"


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("chat/completions", {"model": "m"}, "messages"),
        ("chat/completions", {"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        ("chat/completions", {**CHAT, "stream": "yes"}, "stream"),
        ("chat/completions", {**CHAT, "metadata": ["task"]}, "metadata"),
        ("chat/completions", {**CHAT, "metadata": {"task": 7}}, "metadata.task"),
        ("completions", {"model": "m"}, "prompt"),
        ("feedback", {"score": 1}, "call_id"),
        ("feedback", {"call_id": "c", "score": "high"}, "score"),
        ("feedback", {"call_id": "c", "corrected_output": 3}, "corrected_output"),
    ],
)
def test_bad_input_is_400_naming_the_field(gateway, upstream, path, body, param):
    r = httpx.post(f"{gateway.url}/v1/{path}", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert upstream.requests == []


def test_non_json_body_is_400(gateway):
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_feedback_is_linked_to_the_call(gateway):
    raw = gateway.client().chat.completions.with_raw_response.create(**CHAT)
    call_id = raw.headers["x-loraforge-call-id"]
    fb = {"call_id": call_id, "score": 0.25, "corrected_output": "hello!", "comment": "too terse"}
    r = httpx.post(f"{gateway.url}/v1/feedback", json=fb)
    assert r.status_code == 201 and r.json()["call_id"] == call_id
    [stored] = gateway.store.feedback_for(call_id)
    assert (stored.score, stored.corrected_output, stored.comment) == (0.25, "hello!", "too terse")
    missing = httpx.post(f"{gateway.url}/v1/feedback", json={**fb, "call_id": "call_nope"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "call_id"


def test_health_and_metrics(gateway):
    client = gateway.client()
    client.chat.completions.create(**CHAT, extra_headers={"X-Loraforge-Task": "m-task"})
    list(client.chat.completions.create(**CHAT, stream=True))
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "ok", "store": "ok"}
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'loraforge_gateway_requests_total{endpoint="chat.completions",status="200"} 2.0' in text
    assert 'loraforge_gateway_recorded_calls_total{outcome="store"} 2.0' in text
    assert 'loraforge_gateway_tokens_total{kind="prompt",task="m-task"} 1.0' in text
    assert "loraforge_gateway_store_healthy 1.0" in text


def test_client_chosen_task_names_cannot_grow_the_metrics_without_bound(tmp_path, upstream):
    from prometheus_client.parser import text_string_to_metric_families

    from loraforge.gateway.metrics import OTHER_TASK_LABEL

    url = f"sqlite:///{tmp_path / 'store.db'}"
    _, _, server = start_gateway(tmp_path, url, upstream.url, max_task_labels=2)
    with server:
        for i in range(6):
            headers = {"X-Loraforge-Task": f"task-{i}"}
            assert (
                httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
            )
        families = text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
        tasks = {s.labels["task"] for f in families for s in f.samples if "task" in s.labels}
    assert tasks == {"task-0", "task-1", OTHER_TASK_LABEL}
