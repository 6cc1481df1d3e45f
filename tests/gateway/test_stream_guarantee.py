"""In a stream, the finishing chunk and [DONE] reach the client only after the call is recorded."""

import asyncio
import threading
import time

import httpx

from loraforge.store import Store

# With usage requested, a chunk follows the finishing one: holding back only the latest one is not enough.
BODY = {
    "model": "stub-model",
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "user", "content": "one two three four"}],
}


def read_stream(url: str, received: list[str], headers: dict) -> None:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, timeout=20) as r:
        headers.update(r.headers)
        for line in r.iter_lines():
            if line:
                received.append(line)


def test_finish_chunk_and_done_wait_for_the_record(gateway):
    recorder = gateway.app.state.recorder
    release = threading.Event()
    original = recorder.record

    async def slow_record(record):
        await asyncio.to_thread(release.wait, 10)
        return await original(record)

    recorder.record = slow_record
    received: list[str] = []
    headers: dict = {}
    client = threading.Thread(target=read_stream, args=(gateway.url, received, headers))
    client.start()
    try:
        deadline = time.monotonic() + 10
        while len(received) < 4 and time.monotonic() < deadline:  # role chunk + content chunks
            time.sleep(0.01)
        time.sleep(0.3)  # the upstream has sent everything by now; the gateway must hold the end back
        assert len(received) >= 4
        assert not any('"finish_reason": "stop"' in line or "[DONE]" in line for line in received)
        call_id = headers["x-loraforge-call-id"]
        assert gateway.store.get_call(call_id) is None
    finally:
        release.set()
        client.join(20)
    assert received[-1] == "data: [DONE]" and '"usage"' in received[-2]
    assert '"finish_reason": "stop"' in received[-3]
    assert gateway.store.get_call(call_id).status == "ok"


def test_a_client_leaving_mid_stream_is_logged_as_an_error(gateway, upstream):
    upstream.chunk_delay_s = 0.2
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=BODY, timeout=20) as r:
        call_id = r.headers["x-loraforge-call-id"]
        next(r.iter_lines())
    store = Store(gateway.settings.store_url)
    deadline = time.monotonic() + 10
    while store.get_call(call_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    call = store.get_call(call_id)
    store.close()
    assert call is not None and call.status == "error" and call.error == "client disconnected"
