"""Injected faults: a failure mid-stream is an error event (and an error in the metrics), a fault outside
the model step fails one request only, a dead engine thread is a 503 and never a hang; and the event loop
does no tokenizing or file-system work."""

import json
import re
import threading

import httpx
import openai
import pytest

from tests.serve.api.conftest import start_server, stream_in_background
from tests.serve.api.test_errors import AUTH, assert_error

POISON = 333  # a token id (of the tiny vocabulary) that the patched faults look for


def body(live, **fields):
    return {"model": live.engine.model_name, "max_tokens": 24, "temperature": 0, "ignore_eos": True, **fields}


def sse(url, payload, headers=AUTH):
    with httpx.stream("POST", url + "/v1/completions", json=payload, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def errors_in_metrics(url, model) -> float:
    text = httpx.get(url + "/metrics").text
    labels = f'endpoint="completions",model="{re.escape(model)}",status="error"'
    pattern = rf"loraforge_requests_total{{{labels}}} (\S+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def fail_after_two_tokens(live, monkeypatch):
    """The model fails for the poisoned request once it has produced two tokens."""
    runner = live.engine.engine.runner
    real = runner.run

    def flaky(seqs, is_prefill):
        if any(POISON in s.prompt_ids and len(s.output_ids) >= 2 for s in seqs):
            raise RuntimeError("injected fault")
        return real(seqs, is_prefill)

    monkeypatch.setattr(runner, "run", flaky)


def test_an_error_after_the_first_event_is_an_error_event(live, fail_after_two_tokens, client):
    before = errors_in_metrics(live.url, live.engine.model_name)
    events = sse(live.url, body(live, prompt=[5, POISON, 7], stream=True))
    assert "[DONE]" not in events
    chunks = [json.loads(e) for e in events]
    assert chunks[0]["choices"][0]["text"] is not None  # the stream had started
    assert chunks[-1]["error"]["type"] == "server_error" and chunks[-1]["error"]["message"]
    assert all(c.get("choices", [{}])[0].get("finish_reason") != "abort" for c in chunks[:-1])
    assert errors_in_metrics(live.url, live.engine.model_name) == before + 1
    # The official client raises it instead of ending the stream as if it had succeeded.
    with pytest.raises(openai.APIError):
        fields = body(live, prompt=[5, POISON, 7], stream=True)
        fields["extra_body"] = {"ignore_eos": fields.pop("ignore_eos")}
        list(client.completions.create(**fields))


def test_an_error_of_a_non_streamed_request_is_a_500_counted_as_error(live, fail_after_two_tokens):
    before = errors_in_metrics(live.url, live.engine.model_name)
    r = httpx.post(live.url + "/v1/completions", json=body(live, prompt=[5, POISON, 7]), headers=AUTH)
    assert_error(r, 500)
    assert errors_in_metrics(live.url, live.engine.model_name) == before + 1


def test_a_fault_sending_one_output_fails_that_request_only(live, monkeypatch):
    engine = live.engine
    real = engine._emit

    def emit(out):
        if POISON in out.seq.prompt_ids:
            raise RuntimeError("injected fault in _emit")
        return real(out)

    monkeypatch.setattr(engine, "_emit", emit)
    results = {}

    def normal():
        results["normal"] = sse(live.url, body(live, prompt=[5, 6, 7], max_tokens=40, stream=True))

    thread = threading.Thread(target=normal)
    thread.start()
    poisoned = body(live, prompt=[5, POISON])
    r = httpx.post(live.url + "/v1/completions", json=poisoned, headers=AUTH, timeout=60)
    thread.join(60)
    assert_error(r, 500)
    assert results["normal"][-1] == "[DONE]"
    assert json.loads(results["normal"][-2])["choices"][0]["finish_reason"] == "length"
    assert httpx.get(live.url + "/health").json()["status"] == "ok"


def test_a_failing_command_leaves_the_engine_running(live):
    live.engine._call(lambda: 1 / 0)  # what an unexpected error in a queued command looks like
    r = httpx.post(live.url + "/v1/completions", json=body(live, prompt="x", max_tokens=3), headers=AUTH)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert live.engine.alive


def test_a_dead_engine_thread_is_a_503_and_nothing_hangs(tiny_model_dir, monkeypatch):
    srv = start_server(tiny_model_dir, None, api_key=None)
    try:
        url, engine = srv.url, srv.engine
        payload = body(srv, prompt="The quick", max_tokens=400, stream=True)
        reader, lines = stream_in_background(url, payload)

        def broken():
            raise RuntimeError("injected fault outside step()")

        monkeypatch.setattr(engine.engine, "has_work", broken)  # the engine loop itself fails
        reader.join(30)
        assert not reader.is_alive(), "the stream hung"
        assert "engine stopped" in json.loads(lines[-1])["error"]["message"]
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        r = httpx.post(url + "/v1/completions", json={**payload, "stream": False}, timeout=30)
        assert_error(r, 503, code="engine_unavailable")
    finally:
        srv.stop()
    assert not srv.thread.is_alive()


def test_tokenizing_templating_and_lookups_run_off_the_event_loop(live, client, monkeypatch):
    seen: dict[str, int] = {}
    tok, manager = live.engine.engine.tokenizer, live.engine.engine.adapters

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            seen[name] = threading.get_ident()
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(tok, "apply_chat_template", spy("template", tok.apply_chat_template))
    monkeypatch.setattr(manager, "locate", spy("locate", manager.locate))
    monkeypatch.setattr(manager, "known", spy("known", manager.known))
    client.chat.completions.create(model="ad01", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    client.models.list()
    assert set(seen) == {"template", "locate", "known"}
    assert live.thread.ident not in seen.values()  # the server thread runs the event loop
