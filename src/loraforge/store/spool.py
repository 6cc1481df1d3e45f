"""Local append-only spool of call records, used while the store is unavailable and replayed into it later.

A record is acknowledged only after `append` returned, i.e. after its line was written in full and fsync'ed.
Every write is checked: a short write (a full disk) is continued, and an append that fails is cut back off
the file and raised, so its records are never acknowledged. A crash mid-append can leave a torn last line
(never acknowledged); it is cut off when the spool is opened and before each append, so a later record is
never glued onto it. Replay sets aside (never silently drops) complete lines it cannot parse.
"""

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from loraforge.store.file_lock import file_lock
from loraforge.store.store import Store

log = logging.getLogger("loraforge.store")

REPLAY_CHUNK = 500


class Spool:
    """JSON-lines file at `path`; several processes may share it.

    Two file locks: `.lock` for appends (and the moment replay takes the file over), `.replay.lock` for the
    whole of a replay. So appends never wait for a replay, which may run long against a slow store.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._replaying = self.path.with_name(self.path.name + ".replaying")
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._replay_lock_path = self.path.with_name(self.path.name + ".replay.lock")
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self.corrupt_path = self.path.with_name(self.path.name + ".corrupt")  # unparseable lines, verbatim
        self.skipped = 0  # unparseable lines set aside by replays of this instance
        with file_lock(self._lock_path):
            _cut_torn_tail(self.path)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Durably append records (write + fsync of file and, when created, of its directory)."""
        with file_lock(self._lock_path):
            _cut_torn_tail(self.path)  # left by another process sharing the spool that crashed mid-append
            _append_fsync(self.path, records)

    def has_pending(self) -> bool:
        return self.path.exists() or self._replaying.exists()

    def pending_count(self) -> int:
        return sum(1 for _ in self._iter_records(self._replaying, [])) + sum(
            1 for _ in self._iter_records(self.path, [])
        )

    def replay(self, store: Store) -> int:
        """Move every spooled record into the store (idempotently); returns how many were new to it."""
        added = 0
        with file_lock(self._replay_lock_path):
            if not self._replaying.exists():
                with file_lock(self._lock_path):
                    if not self.path.exists():
                        return 0
                    _cut_torn_tail(self.path)
                    # Later appends go to a fresh file; a crash mid-replay leaves `.replaying` to resume.
                    os.replace(self.path, self._replaying)
                    _fsync_dir(self.path.parent)
            chunk: list[dict[str, Any]] = []
            bad: list[bytes] = []
            for record in self._iter_records(self._replaying, bad):
                chunk.append(record)
                if len(chunk) >= REPLAY_CHUNK:
                    added += self._insert(store, chunk)
                    chunk = []
            added += self._insert(store, chunk)
            if bad:
                _append_lines(self.corrupt_path, bad)
                self.skipped += len(bad)
                log.error(
                    "replay of %s: %d unreadable lines set aside in %s",
                    self.path,
                    len(bad),
                    self.corrupt_path,
                )
            self._replaying.unlink()
        return added

    def _insert(self, store: Store, records: list[dict[str, Any]]) -> int:
        """Insert a chunk; a record the database refuses (not an outage) is set aside, never dropped."""
        try:
            return store.insert_missing_calls(records)
        except (OperationalError, InterfaceError):
            raise
        except SQLAlchemyError:
            added = 0
            for record in records:
                try:
                    added += store.insert_missing_calls([record])
                except (OperationalError, InterfaceError):
                    raise
                except SQLAlchemyError as exc:
                    log.error(
                        "spooled call %s refused by the store, kept in %s: %s",
                        record.get("id"),
                        self.rejected_path,
                        str(getattr(exc, "orig", exc)).splitlines()[0],
                    )
                    _append_fsync(self.rejected_path, [record])
            return added

    @staticmethod
    def _iter_records(path: Path, bad: list[bytes]) -> Iterator[dict[str, Any]]:
        """The records of a spool file; lines that are not a JSON object are added to `bad`."""
        if not path.exists():
            return
        with open(path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    # A torn tail of an append that never returned (not acknowledged), appeared after open.
                    log.warning("%s: ignoring a torn last line of %d bytes", path, len(line))
                    return
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict) and "id" in record:
                    yield record
                else:
                    bad.append(line)


def _append_fsync(path: Path, records: list[dict[str, Any]]) -> None:
    _append_lines(path, [json.dumps(r, default=_json_default).encode() + b"\n" for r in records])


def _append_lines(path: Path, lines: list[bytes]) -> None:
    """Append complete lines and fsync; on any failure the file is cut back to its old size, then raise."""
    data = memoryview(b"".join(lines))
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = os.fstat(fd).st_size  # appends happen under the spool's lock: nobody else moves the end
        try:
            written = 0
            while written < len(data):
                # A full disk may take part of a write (a short write) before it refuses the rest.
                n = os.write(fd, data[written:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, "write made no progress")
                written += n
            os.fsync(fd)
        except BaseException:
            # Not acknowledged: remove any part of it, so the next append starts on a clean line.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def _cut_torn_tail(path: Path) -> None:
    """Truncate `path` after its last newline (a torn record of a crashed append, never acknowledged)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        end = size
        while end > 0:  # find the last newline, reading backwards in blocks
            block = os.pread(fd, min(65536, end), end - min(65536, end))
            i = block.rfind(b"\n")
            if i >= 0:
                end = end - len(block) + i + 1
                break
            end -= len(block)
        log.warning("%s: cutting off a torn last record of %d bytes (a crash mid-append)", path, size - end)
        os.ftruncate(fd, end)
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
