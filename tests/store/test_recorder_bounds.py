"""The recorder never waits on the store without bound, and never holds unboundedly many records."""

import asyncio
import threading
import time

from loraforge.store import Store
from loraforge.store.recorder import Recorder
from loraforge.store.spool import Spool
from tests.store.calls import chat_call
from tests.store.faults import stall


def hanging_store(url: str) -> tuple[Store, threading.Event, threading.Event]:
    """A store whose inserts hang (a stuck database) until `release` is set; `entered` once one hangs."""
    store = Store(url)
    return store, *stall(store, "insert_calls")


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition()


def test_a_hung_store_costs_a_request_at_most_the_timeout_then_calls_spool(tmp_path):
    store, release, _ = hanging_store(f"sqlite:///{tmp_path / 'store.db'}")
    spool = Spool(tmp_path / "spool.jsonl")
    recorder = Recorder(store, spool, timeout_s=0.5, retry_interval_s=0.1)
    recorder.start()
    records = [chat_call("t", f"q{i}", "a", seq=i) for i in range(20)]

    async def calls() -> list[tuple[str, float]]:
        async def one(r):
            started = time.perf_counter()
            return await recorder.record(r), time.perf_counter() - started

        first = await one(records[0])  # waits the timeout: the store is stuck
        rest = await asyncio.gather(*(one(r) for r in records[1:]))  # straight to the spool
        return [first, *rest]

    try:
        results = asyncio.run(calls())
        assert [outcome for outcome, _ in results] == ["spool"] * 20
        assert 0.4 < results[0][1] < 3 and max(s for _, s in results[1:]) < 2
        assert recorder.spooling and spool.pending_count() == 20
    finally:
        release.set()
    # The store answers again: the spooled calls are replayed into it.
    wait_until(lambda: not recorder.spooling and not spool.has_pending())
    recorder.stop()
    assert {c.id for c in store.calls()} == {r["id"] for r in records}
    store.close()


def test_records_beyond_the_queue_bound_are_spooled_not_held(tmp_path):
    store, release, entered = hanging_store(f"sqlite:///{tmp_path / 'store.db'}")
    spool = Spool(tmp_path / "spool.jsonl")
    recorder = Recorder(store, spool, timeout_s=30, max_queued=4, max_batch=2)
    recorder.start()
    records = [chat_call("t", f"q{i}", "a", seq=i) for i in range(30)]
    outcomes: list[str] = []

    async def burst() -> None:
        first = asyncio.ensure_future(recorder.record(records[0]))
        await asyncio.to_thread(entered.wait, 10)  # the writer is stuck on the first record
        rest = [asyncio.ensure_future(recorder.record(r)) for r in records[1:]]
        done, _ = await asyncio.wait(rest, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.5)
        outcomes.extend(t.result() for t in rest if t.done())
        assert recorder._queue.qsize() <= 4
        release.set()
        outcomes.extend(await asyncio.gather(first, *(t for t in rest if t not in done)))

    asyncio.run(burst())
    assert outcomes.count("spool") >= 25 and set(outcomes) <= {"spool", "store"}
    wait_until(lambda: not spool.has_pending())  # replayed once the store answers again
    recorder.stop()
    assert {c.id for c in store.calls()} == {r["id"] for r in records}
    store.close()
