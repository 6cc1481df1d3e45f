"""The spool under faults: a disk filling mid-burst, a writer killed mid-append: no acknowledged call lost."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraforge.store import Store
from loraforge.store.spool import Spool
from tests.store.calls import chat_call

ROOT = Path(__file__).resolve().parents[2]
DISK_BYTES = 256 * 1024


def writer(spool: Path, count: int, record_bytes: int, *extra: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.spool_writer", str(spool), str(count), str(record_bytes), *extra],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,
    )


def acked(lines: list[str]) -> set[str]:
    return {line.split()[1] for line in lines if line.startswith("ACK ")}


@pytest.fixture
def small_disk(tmp_path):
    """(directory, fsize limit or None): a 256 KiB tmpfs when mounting works, else a per-file size limit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield disk, None if mounted else DISK_BYTES
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_filling_mid_burst_acknowledges_only_what_it_kept(small_disk, tmp_path):
    disk, fsize_limit = small_disk
    spool_path = disk / "spool.jsonl"
    extra = ["--fsize-limit", str(fsize_limit)] if fsize_limit else []
    # ~7 KB records, 1-3 per append: the disk fills after ~30 of 80, some appends land half on it.
    proc = writer(spool_path, 80, 7000, *extra)
    out, _ = proc.communicate(timeout=120)
    lines = out.splitlines()
    assert proc.returncode == 0
    ok, errors = acked(lines), [line for line in lines if line.startswith("ERR")]
    assert ok and errors, f"expected the disk to fill mid-burst: {len(ok)} acked, {len(errors)} errors"
    assert spool_path.read_bytes().endswith(b"\n")  # failed appends were cut back off
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spool = Spool(spool_path)
    assert spool.replay(store) == len(ok)
    assert {c.id for c in store.calls()} == ok and spool.skipped == 0
    # Replay emptied the disk: the spool takes records again.
    later = chat_call("spooled", "after", "a")
    spool.append([later])
    spool.replay(store)
    assert store.get_call(later["id"]) is not None
    store.close()


def test_a_writer_killed_mid_append_loses_no_acknowledged_call(tmp_path):
    spool_path = tmp_path / "spool.jsonl"
    proc = writer(spool_path, 100_000, 200_000)  # 200 KB records: each append takes a while
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while len(acked(lines)) < 20 and time.monotonic() < deadline:
        lines.append(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    lines += proc.stdout.read().splitlines()  # acknowledgements printed before the kill
    ok = acked(lines)
    assert len(ok) >= 20
    # Whatever the kill left (often a torn record), a later writer appends on a clean line.
    with open(spool_path, "ab") as handle:
        handle.write(b'{"id": "call_torn", "request_body": {"mod')
    spool = Spool(spool_path)
    later = chat_call("spooled", "after the crash", "a")
    spool.append([later])
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spool.replay(store)
    stored = {c.id for c in store.calls()}
    store.close()
    assert ok <= stored and later["id"] in stored and "call_torn" not in stored
    assert spool.skipped == 0


def test_a_torn_tail_from_another_process_is_cut_before_the_next_append(store, tmp_path):
    spool = Spool(tmp_path / "spool.jsonl")
    first, second = chat_call("t", "q1", "a"), chat_call("t", "q2", "a")
    spool.append([first])
    with open(spool.path, "ab") as handle:  # a process sharing the spool died mid-append
        handle.write(b'{"id": "call_torn", "ti')
    spool.append([second])  # same instance: it must not glue `second` onto the torn line
    assert spool.replay(store) == 2
    assert {c.id for c in store.calls()} == {first["id"], second["id"]}


def test_replay_sets_aside_and_counts_unreadable_lines(store, tmp_path, caplog):
    spool = Spool(tmp_path / "spool.jsonl")
    good = chat_call("t", "q", "a")
    spool.append([good])
    with open(spool.path, "ab") as handle:
        handle.write(b"not json at all\n[1, 2]\n")
    assert spool.replay(store) == 1
    assert spool.skipped == 2
    assert spool.corrupt_path.read_bytes() == b"not json at all\n[1, 2]\n"
    assert "2 unreadable lines" in caplog.text


def test_an_append_that_fails_is_cut_back_off(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([chat_call("t", "kept", "a")])
    before = spool.path.read_bytes()
    real_write = os.write

    def short_then_full(fd, data):  # a full disk: part of the write goes through, then ENOSPC
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        spool.append([chat_call("t", "refused", "a")])
    monkeypatch.undo()
    assert spool.path.read_bytes() == before
