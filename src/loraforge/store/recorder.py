"""Group commit of call records: one writer thread batches whatever is queued into one transaction.

`await recorder.record(r)` returns only once `r` is durable: committed to the store, or (store down)
fsync'ed to the spool. While the store is down, records go straight to the spool and the writer retries the
store every `retry_interval_s` by replaying the spool into it.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from loraforge.store.spool import Spool
from loraforge.store.store import Store, StoreUnavailableError

log = logging.getLogger("loraforge.store")

# Errors meaning "the database cannot be reached or written right now" (SQLite: locked or unwritable file).
STORE_DOWN = (OperationalError, InterfaceError)
BatchCallback = Callable[[str, int, float], None]  # (outcome "store" | "spool" | "failed", size, seconds)


class RecordError(Exception):
    """A record could be written neither to the store nor to the spool."""


class Recorder:
    def __init__(
        self,
        store: Store,
        spool: Spool,
        *,
        max_batch: int = 512,
        retry_interval_s: float = 2.0,
        on_batch: BatchCallback | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.max_batch = max_batch
        self.retry_interval_s = retry_interval_s
        self.on_batch = on_batch
        self.store_healthy = store.migrated
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="loraforge-recorder", daemon=True)
        self._stopped = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    async def record(self, record: dict[str, Any]) -> str:
        """Durably record; returns "store" or "spool". Raises RecordError if neither could be written."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._queue.put((record, loop, future))
        return await future

    def _run(self) -> None:
        self._try_recover()
        while True:
            try:
                timeout = None if self.store_healthy else self.retry_interval_s
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._try_recover()
                continue
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is None for i in batch)
            items = [i for i in batch if i is not None]
            if items:
                try:
                    self._write(items)
                except Exception as exc:  # never let the writer die: waiting requests would hang forever
                    log.exception("recording failed")
                    for _, loop, future in items:
                        loop.call_soon_threadsafe(_resolve, future, "failed", exc)
            if stop:
                self._try_recover()
                return

    def _write(self, items: list[tuple[dict[str, Any], asyncio.AbstractEventLoop, asyncio.Future]]) -> None:
        records = [i[0] for i in items]
        started = time.perf_counter()
        results: list[tuple[str, BaseException | None]] | None = None
        if self.store_healthy:
            try:
                self.store.insert_calls(records)
                results = [("store", None)] * len(records)
            except STORE_DOWN as exc:
                # Not the statement: its parameters hold whole request bodies.
                log.warning("store unavailable, spooling calls to %s: %s", self.spool.path, _reason(exc))
                self.store_healthy = False
            except SQLAlchemyError as exc:
                # The database refuses some record (not an outage): store the others one by one.
                log.error("the store refused a batch, retrying its calls one by one: %s", _reason(exc))
                results = [self._write_alone(r) for r in records]
        if results is None:
            results = [self._spool(records)] * len(records)
        if self.on_batch is not None:
            elapsed = time.perf_counter() - started
            for outcome in {o for o, _ in results}:
                self.on_batch(outcome, sum(o == outcome for o, _ in results), elapsed)
        for (_, loop, future), (outcome, error) in zip(items, results, strict=True):
            loop.call_soon_threadsafe(_resolve, future, outcome, error)

    def _write_alone(self, record: dict[str, Any]) -> tuple[str, BaseException | None]:
        try:
            self.store.insert_calls([record])
            return "store", None
        except STORE_DOWN:
            self.store_healthy = False
            return self._spool([record])
        except SQLAlchemyError as exc:
            log.error("call %s refused by the store, not acknowledged: %s", record.get("id"), _reason(exc))
            return "failed", exc

    def _spool(self, records: list[dict[str, Any]]) -> tuple[str, BaseException | None]:
        try:
            self.spool.append(records)
            return "spool", None
        except OSError as exc:
            log.error("cannot write the spool %s: %s", self.spool.path, exc)
            return "failed", exc

    def _try_recover(self) -> None:
        """Migrate (if never done) and replay the spool; the store counts as healthy once both succeed."""
        try:
            if not self.store.migrated:
                self.store.migrate()
            if self.spool.has_pending():
                n = self.spool.replay(self.store)
                log.info("replayed %d spooled calls into %r", n, self.store)
            self.store_healthy = True
        except (SQLAlchemyError, StoreUnavailableError) as exc:
            self.store_healthy = False
            log.debug("store still unavailable: %s", _reason(exc))
        except OSError as exc:  # the spool itself cannot be read; new calls still go to the store
            log.error("cannot replay the spool %s: %s", self.spool.path, exc)


def _resolve(future: asyncio.Future, outcome: str, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client went away); the record is written regardless
        return
    if error is not None:
        future.set_exception(RecordError(f"call could not be recorded: {error}"))
    else:
        future.set_result(outcome)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
