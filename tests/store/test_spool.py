"""The spool keeps acknowledged records while the store is down; the recorder falls back and replays."""

import asyncio
import json
import sqlite3
import time

import pytest

from loraforge.store import Store
from loraforge.store.recorder import Recorder, RecordError
from loraforge.store.spool import Spool
from tests.store.calls import chat_call


def test_replay_moves_everything_and_skips_a_torn_tail(store, tmp_path):
    spool = Spool(tmp_path / "spool.jsonl")
    records = [chat_call("t", f"q{i}", "a", seq=i) for i in range(3)]
    spool.append(records[:2])
    spool.append(records[2:])
    with open(spool.path, "ab") as handle:  # a crash in the middle of an append that never returned
        handle.write(b'{"id": "call_torn", "ti')
    assert spool.pending_count() == 3
    assert spool.replay(store) == 3
    assert not spool.has_pending()
    assert {c.id for c in store.calls()} == {r["id"] for r in records}


def test_replay_resumes_after_a_crash_mid_replay(store, tmp_path):
    spool = Spool(tmp_path / "spool.jsonl")
    records = [chat_call("t", f"q{i}", "a", seq=i) for i in range(4)]
    spool.append(records)
    store.insert_calls(records[:2])  # the crashed replay had inserted some of them
    spool.path.rename(spool.path.with_name("spool.jsonl.replaying"))
    spool.append([chat_call("t", "later", "a", seq=9)])  # and appends continued meanwhile
    assert spool.replay(store) == 2  # the interrupted file first
    assert spool.replay(store) == 1  # then the new one
    assert store.count_calls() == 5 and not spool.has_pending()


def test_recorder_commits_in_batches(store, tmp_path):
    batches: list[tuple[str, int]] = []
    recorder = Recorder(
        store, Spool(tmp_path / "spool.jsonl"), on_batch=lambda o, n, s: batches.append((o, n))
    )
    recorder.start()
    records = [chat_call("t", f"q{i}", "a", seq=i) for i in range(200)]

    async def burst() -> list[str]:
        return await asyncio.gather(*(recorder.record(r) for r in records))

    assert set(asyncio.run(burst())) == {"store"}
    recorder.stop()
    assert store.count_calls() == 200
    assert sum(n for _, n in batches) == 200 and len(batches) < 200  # grouped commits


def test_recorder_spools_while_sqlite_is_locked_then_replays(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url, busy_timeout_s=0.2)
    spool = Spool(tmp_path / "spool.jsonl")
    recorder = Recorder(store, spool, retry_interval_s=0.1)
    recorder.start()
    # Another process holds the write lock: the store is unavailable for writes.
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    records = [chat_call("t", f"q{i}", "a", seq=i) for i in range(5)]

    async def write() -> list[str]:
        return [await recorder.record(r) for r in records]

    assert asyncio.run(write()) == ["spool"] * 5
    spooled = [json.loads(line)["id"] for line in spool.path.read_text().splitlines()]
    assert spooled == [r["id"] for r in records]
    blocker.execute("ROLLBACK")
    blocker.close()
    deadline = time.monotonic() + 10
    while (spool.has_pending() or not recorder.store_healthy) and time.monotonic() < deadline:
        time.sleep(0.05)
    recorder.stop()
    assert not spool.has_pending()
    assert {c.id for c in store.calls()} == {r["id"] for r in records}
    store.close()


def test_a_refused_record_fails_alone_and_the_batch_is_stored(store, tmp_path):
    recorder = Recorder(store, Spool(tmp_path / "spool.jsonl"))
    recorder.start()
    good = [chat_call("t", f"q{i}", "a", seq=i) for i in range(3)]
    bad = {**chat_call("t", "bad", "a"), "status": None}  # violates NOT NULL: refused, not an outage

    async def burst():
        return await asyncio.gather(
            *(recorder.record(r) for r in [good[0], bad, *good[1:]]), return_exceptions=True
        )

    results = asyncio.run(burst())
    recorder.stop()
    assert results[0] == results[2] == results[3] == "store"
    assert isinstance(results[1], RecordError)
    assert {c.id for c in store.calls()} == {r["id"] for r in good}
    assert recorder.store_healthy  # one bad record does not send everything to the spool
    with pytest.raises(Exception):  # noqa: B017
        store.insert_calls([bad])


def test_replay_sets_refused_records_aside(store, tmp_path):
    spool = Spool(tmp_path / "spool.jsonl")
    good = [chat_call("t", f"q{i}", "a", seq=i) for i in range(3)]
    bad = {**chat_call("t", "bad", "a"), "status": None}
    spool.append([good[0], bad, *good[1:]])
    assert spool.replay(store) == 3
    assert not spool.has_pending()
    assert [json.loads(line)["id"] for line in spool.rejected_path.read_text().splitlines()] == [bad["id"]]


def test_appends_do_not_wait_for_a_replay_into_a_slow_store(store, tmp_path):
    import threading

    from tests.store.faults import stall

    spool = Spool(tmp_path / "spool.jsonl")
    first = chat_call("t", "spooled", "a")
    spool.append([first])
    release, entered = stall(store, "insert_missing_calls")
    replay = threading.Thread(target=spool.replay, args=(store,))
    replay.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        later = chat_call("t", "during the replay", "a")
        spool.append([later])  # a new file: the replay took the old one over
        assert time.monotonic() - started < 2
    finally:
        release.set()
        replay.join(30)
    assert store.get_call(first["id"]) is not None and store.get_call(later["id"]) is None
    assert spool.replay(store) == 1 and not spool.has_pending()
