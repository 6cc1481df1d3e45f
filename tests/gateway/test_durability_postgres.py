"""A PostgreSQL store that stops, hangs or stalls mid-burst: every call is answered within the bound and
nothing acknowledged is lost. Each test runs its own PostgreSQL server (tests/store/postgres_server.py)."""

import threading
import time

import httpx
import pytest
from openai import OpenAI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from loraforge.store import Store
from loraforge.store.database import resolve_store_url
from loraforge.store.spool import Spool
from tests.gateway.conftest import start_gateway
from tests.gateway.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]
RECORD_TIMEOUT_S = 1.0
# A call may wait RECORD_TIMEOUT_S for the store, then as long again for the spool; the rest is slack for a
# busy 2-core machine.
ANSWER_BOUND_S = 2 * RECORD_TIMEOUT_S + 3


class Burst:
    """Client threads calling the gateway until stopped; keeps what was acknowledged and what went wrong."""

    def __init__(self, url: str, workers: int = 4) -> None:
        self.url = url
        self.acked: dict[str, str] = {}
        self.failures: list[str] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(w,)) for w in range(workers)]

    def __enter__(self) -> "Burst":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def wait_for(self, n_more: int, timeout: float = 60) -> None:
        target = len(self.acked) + n_more
        deadline = time.monotonic() + timeout
        while len(self.acked) < target and time.monotonic() < deadline and not self.failures:
            time.sleep(0.02)
        assert not self.failures, self.failures[:3]
        assert len(self.acked) >= target

    def _work(self, worker: int) -> None:
        client = OpenAI(base_url=f"{self.url}/v1", api_key="k", max_retries=0, timeout=30)
        i = 0
        while not self._stop.is_set():
            i += 1
            messages = [{"role": "user", "content": f"worker {worker} call {i}"}]
            started = time.monotonic()
            try:
                if i % 2:
                    raw = client.chat.completions.with_raw_response.create(
                        model="stub-model", messages=messages, stream=True
                    )
                    chunks = list(raw.parse())
                    assert chunks[-1].choices[0].finish_reason == "stop"
                    answer = "".join(c.choices[0].delta.content or "" for c in chunks)
                else:
                    raw = client.chat.completions.with_raw_response.create(
                        model="stub-model", messages=messages
                    )
                    answer = raw.parse().choices[0].message.content
            except Exception as exc:  # every call must be answered, whatever the database does
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.acked[raw.headers["x-loraforge-call-id"]] = answer


def assert_all_stored(gateway_url: str, store_url: str, spool: Spool, acked: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        healthy = httpx.get(f"{gateway_url}/health").json()["store"] == "ok"
        if healthy and not spool.has_pending():
            break
        time.sleep(0.1)
    store = Store(store_url)
    stored = {c.id: c.response_body["choices"][0]["message"]["content"] for c in store.calls()}
    store.close()
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged calls lost"
    assert all(stored[i] == answer for i, answer in acked.items())


def gateway_on(tmp_path, store_url: str, upstream):
    upstream.chunk_delay_s = 0.001
    return start_gateway(
        tmp_path,
        store_url,
        upstream.url,
        store_busy_timeout_s=1,
        retry_interval_s=0.1,
        record_timeout_s=RECORD_TIMEOUT_S,
    )


def test_postgres_stopped_and_restarted_mid_burst(tmp_path, upstream, private_postgres):
    _, _, server = gateway_on(tmp_path, private_postgres.url, upstream)
    spool = Spool(tmp_path / "spool.jsonl")
    with server, Burst(server.url) as burst:
        burst.wait_for(20)
        private_postgres.stop()  # like a crash: connections cut, nothing answers
        burst.wait_for(20)
        assert httpx.get(f"{server.url}/health").json()["store"] == "spooling"
        private_postgres.start()
        burst.wait_for(20)
        burst.__exit__()
        assert_all_stored(server.url, private_postgres.url, spool, burst.acked)
    assert not burst.failures and burst.slowest < ANSWER_BOUND_S


def test_a_hung_postgres_answers_within_the_bound(tmp_path, upstream, private_postgres):
    """A lock held elsewhere blocks every insert: statement_timeout and the record timeout bound the wait."""
    _, _, server = gateway_on(tmp_path, private_postgres.url, upstream)
    spool = Spool(tmp_path / "spool.jsonl")
    with server:
        engine = create_engine(resolve_store_url(private_postgres.url))
        with engine.connect() as locker:
            with Burst(server.url) as burst:
                burst.wait_for(10)
                locker.execute(text("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE"))
                burst.wait_for(20)
                assert httpx.get(f"{server.url}/health").json()["store"] == "spooling"
                locker.rollback()  # the database answers again
                burst.wait_for(10)
            assert_all_stored(server.url, private_postgres.url, spool, burst.acked)
        engine.dispose()
    assert not burst.failures and burst.slowest < ANSWER_BOUND_S


def test_a_stalled_network_to_postgres_answers_within_the_bound(tmp_path, upstream, private_postgres):
    """Bytes accepted but never answered (no error, ever): only the gateway's own timeout helps."""
    parsed = make_url(private_postgres.url)
    proxy = TcpProxy("127.0.0.1", parsed.port)
    proxy.up()
    via_proxy = parsed.set(port=proxy.port).render_as_string(hide_password=False)
    _, _, server = gateway_on(tmp_path, via_proxy, upstream)
    spool = Spool(tmp_path / "spool.jsonl")
    try:
        with server:
            with Burst(server.url) as burst:
                burst.wait_for(10)
                proxy.stall()
                burst.wait_for(20)
                assert httpx.get(f"{server.url}/health").json()["store"] == "spooling"
                proxy.resume()
                burst.wait_for(10)
            assert_all_stored(server.url, private_postgres.url, spool, burst.acked)
    finally:
        proxy.resume()
        proxy.down()
    assert not burst.failures and burst.slowest < ANSWER_BOUND_S
