"""Every call through the gateway, streamed or not, is in the store with its task, tags, tokens and bodies."""

import httpx
import openai
import pytest
from openai import OpenAI

from loraforge.store import Store
from tests.gateway.conftest import start_gateway
from tests.gateway.servers import free_port
from tests.gateway.upstream import served_model

TASK = {"X-Loraforge-Task": "summarize"}


def test_chat_call_is_recorded_before_the_response(gateway, upstream):
    client = gateway.client()
    raw = client.chat.completions.with_raw_response.create(
        model="stub-model",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        extra_headers=TASK,
    )
    completion = raw.parse()
    call_id = raw.headers["x-loraforge-call-id"]
    assert completion.choices[0].message.content == "echo: hello there"
    call = gateway.store.get_call(call_id)  # committed before the client got the response
    assert call is not None and call.status == "ok" and call.task == "summarize"
    assert call.endpoint == "chat.completions" and not call.stream
    assert call.requested_model == "stub-model" and call.served_model == served_model("stub-model")
    assert call.request_body["messages"][1]["content"] == "hello there"
    assert call.response_body["choices"][0]["message"]["content"] == "echo: hello there"
    assert (call.prompt_tokens, call.completion_tokens) == (4, 3)
    assert call.cost_usd == pytest.approx((4 * 1.0 + 3 * 2.0) / 1e6)  # the gateway's price table
    assert call.latency_ms > 0


def test_streamed_chat_stores_the_assembled_response(gateway, upstream):
    client = gateway.client()
    raw = client.chat.completions.with_raw_response.create(
        model="stub-model",
        messages=[{"role": "user", "content": "stream these five words"}],
        stream=True,
        extra_body={"metadata": {"task": "streaming", "user": "u7", "tier": 2}},
    )
    call_id = raw.headers["x-loraforge-call-id"]
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream these five words"
    assert all(c.choices for c in chunks)  # the usage chunk the gateway asked for is not forwarded
    assert chunks[-1].choices[0].finish_reason == "stop"
    call = gateway.store.get_call(call_id)
    assert call.stream and call.task == "streaming" and call.tags == {"user": "u7", "tier": 2}
    assert call.response_body["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert call.response_body["choices"][0]["finish_reason"] == "stop"
    assert (call.prompt_tokens, call.completion_tokens) == (4, 5)
    forwarded = upstream.requests[-1]
    assert "metadata" not in forwarded  # stripped before forwarding (the upstream would reject it)
    assert forwarded["stream_options"] == {"include_usage": True}
    assert call.request_body["metadata"]["task"] == "streaming"  # the stored request is the client's


def test_stream_with_client_requested_usage_passes_it_through(gateway):
    stream = gateway.client().chat.completions.create(
        model="stub-model",
        messages=[{"role": "user", "content": "count me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_text_completions_are_recorded(gateway, stream):
    raw = gateway.client().completions.with_raw_response.create(
        model="stub-model", prompt="once upon a time", stream=stream, extra_headers=TASK
    )
    result = raw.parse()
    text = "".join(c.choices[0].text for c in result) if stream else result.choices[0].text
    assert text == "echo: once upon a time"
    call = gateway.store.get_call(raw.headers["x-loraforge-call-id"])
    assert call.endpoint == "completions" and call.stream is stream and call.task == "summarize"
    assert call.response_body["choices"][0]["text"] == text
    assert (call.prompt_tokens, call.completion_tokens) == (4, 5)


def test_models_are_passed_through(gateway):
    assert [m.id for m in gateway.client().models.list()] == ["stub-model"]


def test_upstream_error_is_openai_shaped_and_logged(gateway, upstream):
    upstream.fail_status = 500
    client = gateway.client()
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="stub-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 500 and info.value.code == "boom"
    call_id = info.value.response.headers["x-loraforge-call-id"]
    call = gateway.store.get_call(call_id)
    assert call.status == "error" and call.http_status == 500 and "upstream exploded" in call.error


def test_upstream_error_on_a_stream_request(gateway, upstream):
    upstream.fail_status = 503
    with pytest.raises(Exception) as info:
        gateway.client().chat.completions.create(
            model="stub-model", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert info.value.status_code == 503
    assert gateway.store.get_call(info.value.response.headers["x-loraforge-call-id"]).status == "error"


def test_upstream_timeout_becomes_504_and_is_logged(tmp_path, store_url, upstream):
    upstream.delay_s = 1.5
    settings, _, server = start_gateway(tmp_path, store_url, upstream.url, timeout_s=0.5)
    with server:
        body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=20)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    store = Store(store_url)
    call = store.get_call(r.headers["x-loraforge-call-id"])
    store.close()
    assert call.status == "error" and call.http_status == 504


def test_unreachable_upstream_becomes_502(tmp_path, store_url):
    _, _, server = start_gateway(tmp_path, store_url, f"http://127.0.0.1:{free_port()}/v1")
    with server:
        r = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "x"}, timeout=20)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"


def test_upstream_stalling_mid_stream_ends_the_stream_with_an_error(tmp_path, store_url, upstream):
    upstream.chunk_delay_s = 1.0  # longer than the gateway's read timeout
    _, _, server = start_gateway(tmp_path, store_url, upstream.url, timeout_s=0.3)
    with server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=20)
        raw = client.chat.completions.with_raw_response.create(
            model="stub-model", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
        with pytest.raises(openai.APIError, match="upstream timed out"):
            list(raw.parse())
    store = Store(store_url)
    call = store.get_call(raw.headers["x-loraforge-call-id"])
    store.close()
    assert call.status == "error" and call.http_status == 504 and call.stream
