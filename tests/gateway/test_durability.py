"""Nothing acknowledged is lost: under SIGKILL mid-burst, and while the store is down (spool, then replay)."""

import contextlib
import os
import signal
import sqlite3
import threading
import time

import httpx
import pytest
from openai import OpenAI

from loraforge.store import Store
from loraforge.store.spool import Spool
from tests.gateway.conftest import start_gateway
from tests.gateway.servers import free_port, start_gateway_process

WORKERS = 6


def burst_worker(url: str, worker: int, stop: threading.Event, acked: dict[str, str], lock: threading.Lock):
    """Calls until the gateway dies; records (call id -> text) only for responses received complete."""
    client = OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=10)
    for i in range(2000):  # bounded; the kill ends it much earlier
        if stop.is_set():
            return
        messages = [{"role": "user", "content": f"worker {worker} call {i}"}]
        try:
            if i % 2:
                raw = client.chat.completions.with_raw_response.create(
                    model="stub-model",
                    messages=messages,
                    stream=True,
                    extra_headers={"X-Loraforge-Task": "burst"},
                )
                chunks = list(raw.parse())
                if not chunks or chunks[-1].choices[0].finish_reason != "stop":
                    continue  # not a complete response: not acknowledged
                text = "".join(c.choices[0].delta.content or "" for c in chunks)
            else:
                raw = client.chat.completions.with_raw_response.create(
                    model="stub-model", messages=messages, extra_headers={"X-Loraforge-Task": "burst"}
                )
                text = raw.parse().choices[0].message.content
        except Exception:
            return  # the gateway is gone
        with lock:
            acked[raw.headers["x-loraforge-call-id"]] = text


def held_call(url: str, message: str) -> None:
    """A call the upstream holds until the test releases it; the gateway dies first, so it fails."""
    client = OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=10)
    with contextlib.suppress(Exception):
        client.chat.completions.create(model="stub-model", messages=[{"role": "user", "content": message}])


def received(upstream, message: str) -> bool:
    """Whether the upstream has been sent a chat call whose last message is `message`."""
    return any(r["messages"][-1]["content"] == message for r in list(upstream.requests))


def test_sigkill_mid_burst_loses_no_acknowledged_call(tmp_path, store_url, upstream):
    upstream.hold = "held until the kill"
    upstream.chunk_delay_s = 0.02  # a stream takes ~0.1 s: the kill lands inside some (0.002 missed 2 in 11)
    spool = tmp_path / "spool.jsonl"
    port = free_port()
    proc = start_gateway_process(
        ["--upstream-url", upstream.url, "--store", store_url, "--spool", str(spool)], port
    )
    acked: dict[str, str] = {}
    lock, stop = threading.Lock(), threading.Event()
    threads = [
        threading.Thread(target=burst_worker, args=(f"http://127.0.0.1:{port}", w, stop, acked, lock))
        for w in range(WORKERS)
    ]
    # One call the upstream holds: certainly in flight at the kill, however the cores schedule the others
    # (under load, the burst's in-flight calls could all finish between the check below and the kill).
    held = threading.Thread(target=held_call, args=(f"http://127.0.0.1:{port}", upstream.hold))
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        held.start()
        while not received(upstream, upstream.hold) and time.monotonic() < deadline:
            time.sleep(0.001)
        # Kill while calls are between the upstream and their client (sent, not yet acknowledged): the
        # moment that can lose an acknowledged call if recording came after the answer. The held call
        # counts as one: wait for two of the burst's, as before it.
        while len(upstream.requests) - len(acked) < 3 and time.monotonic() < deadline:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        upstream.released.set()
        if proc.poll() is None:
            proc.kill()
        for t in [*threads, held]:
            if t.ident is not None:  # started
                t.join(30)
    assert len(acked) >= 60
    sent = len(upstream.requests)
    assert sent > len(acked)  # some calls were in flight when the gateway died

    store = Store(store_url)
    Spool(spool).replay(store)  # what a restarted gateway does first (empty here: the store stayed up)
    stored = {c.id: c for c in store.calls(task="burst")}
    store.close()
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged calls lost"
    for call_id, text in acked.items():
        assert stored[call_id].response_body["choices"][0]["message"]["content"] == text


def test_calls_are_spooled_while_the_store_is_down_and_replayed(tmp_path, upstream):
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    Store(url).close()
    _, _, server = start_gateway(tmp_path, url, upstream.url, store_busy_timeout_s=0.2, retry_interval_s=0.1)
    with server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=20)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the store is now unavailable for writes
        try:
            ids = []
            for i in range(6):
                raw = client.chat.completions.with_raw_response.create(
                    model="stub-model", messages=[{"role": "user", "content": f"q{i}"}], stream=bool(i % 2)
                )
                list(raw.parse()) if i % 2 else raw.parse()
                ids.append(raw.headers["x-loraforge-call-id"])
            assert httpx.get(f"{server.url}/health").json()["store"] == "spooling"
            fb = httpx.post(f"{server.url}/v1/feedback", json={"call_id": ids[0], "score": 1}, timeout=20)
            assert fb.status_code == 503 and fb.json()["error"]["type"] == "server_error"
            assert Spool(tmp_path / "spool.jsonl").pending_count() == 6
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/health").json()["store"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.05)
        store = Store(url)
        assert {c.id for c in store.calls()} == set(ids)
        assert (
            httpx.post(f"{server.url}/v1/feedback", json={"call_id": ids[0], "score": 1}).status_code == 201
        )
        store.close()
    assert not Spool(tmp_path / "spool.jsonl").has_pending()


def test_gateway_starts_with_the_store_down_and_replays_on_restart(tmp_path, upstream):
    """Spooled calls of a gateway that never reached its store are replayed by the next one."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store's directory should be")
    url = f"sqlite:///{blocked / 'store.db'}"
    _, _, server = start_gateway(tmp_path, url, upstream.url, retry_interval_s=0.1)
    with server:
        raw = gateway_call(server.url)
        assert httpx.get(f"{server.url}/health").json()["store"] == "spooling"
    call_id = raw.headers["x-loraforge-call-id"]
    os.remove(blocked)
    blocked.mkdir()  # the store becomes reachable
    _, _, server = start_gateway(tmp_path, url, upstream.url, retry_interval_s=0.1)
    with server:
        assert httpx.get(f"{server.url}/health").json()["store"] == "ok"
    store = Store(url)
    assert store.get_call(call_id) is not None
    store.close()


def gateway_call(url: str):
    client = OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="stub-model", messages=[{"role": "user", "content": "spool me"}]
    )
    raw.parse()
    return raw


pytestmark = pytest.mark.timeout(120)


@pytest.mark.postgres
def test_postgres_outage_spools_then_replays(tmp_path, upstream):
    from sqlalchemy.engine import make_url

    from tests.gateway.tcp_proxy import TcpProxy
    from tests.store.backends import store_url_for

    real_url = store_url_for("postgres", tmp_path)
    parsed = make_url(real_url)
    proxy = TcpProxy(parsed.host, parsed.port or 5432)
    proxy.up()
    via_proxy = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    _, _, server = start_gateway(
        tmp_path, via_proxy, upstream.url, store_busy_timeout_s=1, retry_interval_s=0.1
    )
    try:
        with server:
            assert httpx.get(f"{server.url}/health").json()["store"] == "ok"
            proxy.down()  # the database disappears
            ids = [gateway_call(server.url).headers["x-loraforge-call-id"] for _ in range(4)]
            assert httpx.get(f"{server.url}/health").json()["store"] == "spooling"
            assert Spool(tmp_path / "spool.jsonl").pending_count() == 4
            proxy.up()
            deadline = time.monotonic() + 20
            while httpx.get(f"{server.url}/health").json()["store"] != "ok" and time.monotonic() < deadline:
                time.sleep(0.1)
            store = Store(real_url)
            assert {c.id for c in store.calls()} == set(ids)
            store.close()
    finally:
        proxy.down()
