"""Local append-only spool of call records, used while the store is unavailable and replayed into it later.

A record is acknowledged only after `append` returned, i.e. after its line was written and fsync'ed. A crash
mid-append can leave a torn last line; that record was never acknowledged, so replay skips it.
"""

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from loraforge.store.store import Store

log = logging.getLogger("loraforge.store")

REPLAY_CHUNK = 500


class Spool:
    """JSON-lines file at `path`; several processes may share it (appends and replays take a file lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._replaying = self.path.with_name(self.path.name + ".replaying")
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")

    def append(self, records: list[dict[str, Any]]) -> None:
        """Durably append records (write + fsync of file and, when created, of its directory)."""
        with self._locked():
            _append_fsync(self.path, records)

    def has_pending(self) -> bool:
        return self.path.exists() or self._replaying.exists()

    def pending_count(self) -> int:
        return sum(1 for _ in self._iter_records(self._replaying)) + sum(
            1 for _ in self._iter_records(self.path)
        )

    def replay(self, store: Store) -> int:
        """Move every spooled record into the store (idempotently); returns how many were new to it."""
        added = 0
        with self._locked():
            if not self._replaying.exists():
                if not self.path.exists():
                    return 0
                # Later appends go to a fresh file; a crash mid-replay leaves `.replaying` to resume.
                os.replace(self.path, self._replaying)
                _fsync_dir(self.path.parent)
            chunk: list[dict[str, Any]] = []
            for record in self._iter_records(self._replaying):
                chunk.append(record)
                if len(chunk) >= REPLAY_CHUNK:
                    added += self._insert(store, chunk)
                    chunk = []
            added += self._insert(store, chunk)
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
    def _iter_records(path: Path) -> Iterator[dict[str, Any]]:
        if not path.exists():
            return
        with open(path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    return  # torn tail of an append that never returned: not acknowledged
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _append_fsync(path: Path, records: list[dict[str, Any]]) -> None:
    data = b"".join(json.dumps(r, default=_json_default).encode() + b"\n" for r in records)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


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
