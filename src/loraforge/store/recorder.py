"""Group commit of call records: one writer thread batches whatever is queued into one transaction.

`await recorder.record(r)` returns only once `r` is durable: committed to the store, or fsync'ed to the spool.
The spool takes a record when the store is down (the writer retries the store every `retry_interval_s` by
replaying the spool into it), and also when the store is too slow: a record not committed within
`timeout_s` (a hung database, a held lock) or finding `max_queued` records already waiting is handed to a
second thread that only appends to the spool. So a request waits at most about `timeout_s` for the store and
`timeout_s` for the spool, and memory holds at most `max_queued` waiting records per queue. A record both
committed late and spooled is harmless: replay skips ids the store already has.
"""

import asyncio
import contextlib
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
RECORD_TIMEOUT_S = 10.0  # longest a request waits for the store before its call is spooled instead
MAX_QUEUED_RECORDS = 4096  # records (whole bodies) waiting for a writer; beyond: spooled, or refused (503)

_Item = tuple[dict[str, Any], asyncio.AbstractEventLoop, asyncio.Future]


class RecordError(Exception):
    """A record could be written neither to the store nor to the spool (in time)."""


class Recorder:
    """Writes call records durably for the gateway: `await record(r)` returns once `r` is committed to the
    store or fsync'ed to the spool (see the module docstring for the threads and bounds)."""

    def __init__(
        self,
        store: Store,
        spool: Spool,
        *,
        max_batch: int = 512,
        retry_interval_s: float = 2.0,
        on_batch: BatchCallback | None = None,
        timeout_s: float = RECORD_TIMEOUT_S,
        max_queued: int = MAX_QUEUED_RECORDS,
    ) -> None:
        self.store = store
        self.spool = spool
        self.max_batch = max_batch
        self.retry_interval_s = retry_interval_s
        self.on_batch = on_batch
        self.timeout_s = timeout_s
        self.store_healthy = store.migrated
        # Set when a record waited `timeout_s` for the store's writer; new records skip it until it is back.
        self.stalled = False
        self._spooled_meanwhile = False  # the spooler wrote while the store was up: replay after the stall
        self._queue: queue.Queue[_Item | None] = queue.Queue(max_queued)
        # Its own bound: it drains fast (appends only), so a small store queue must not make it refuse.
        self._spool_queue: queue.Queue[_Item | None] = queue.Queue(MAX_QUEUED_RECORDS)
        self._thread = threading.Thread(target=self._run, name="loraforge-recorder", daemon=True)
        self._spooler = threading.Thread(target=self._run_spooler, name="loraforge-spooler", daemon=True)

    @property
    def spooling(self) -> bool:
        """New calls go to the spool (the store is down or hung)."""
        return not self.store_healthy or self.stalled

    def start(self) -> None:
        self._thread.start()
        self._spooler.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer threads."""
        for thread, q in ((self._thread, self._queue), (self._spooler, self._spool_queue)):
            if thread.is_alive():
                try:
                    q.put(None, timeout=timeout)
                except queue.Full:
                    continue  # a hung writer: the threads are daemons
                thread.join(timeout)

    async def record(self, record: dict[str, Any]) -> str:
        """Durably record; returns "store" or "spool". Raises RecordError if neither could be written."""
        if self.stalled:
            return await self._spool_directly(record)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        try:
            self._queue.put_nowait((record, loop, future))
        except queue.Full:
            log.warning(
                "%d calls wait for the store's writer; spooling call %s", self._queue.maxsize, record["id"]
            )
            return await self._spool_directly(record)
        try:
            # shield: on time-out the writer may still commit it; its future must stay valid for that.
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            future.add_done_callback(_consume)  # resolved later by the writer, awaited by no one
            if not self.stalled:
                log.warning(
                    "the store did not commit within %.1f s; spooling calls until it answers again",
                    self.timeout_s,
                )
            self.stalled = True
            return await self._spool_directly(record)

    async def _spool_directly(self, record: dict[str, Any]) -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        try:
            self._spool_queue.put_nowait((record, loop, future))
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except queue.Full as exc:
            raise RecordError("call could not be recorded: too many calls wait for the spool") from exc
        except TimeoutError as exc:
            raise RecordError(
                "call could not be recorded: neither the store nor the spool answered "
                f"within {self.timeout_s} s"
            ) from exc

    # ---- the store's writer thread ----
    def _run(self) -> None:
        self._try_recover()
        while True:
            # Idle with nothing to catch up on: wait for work; else come back to retry the store / replay.
            idle = self.store_healthy and not self._spooled_meanwhile
            try:
                item = self._queue.get(timeout=None if idle else self.retry_interval_s)
            except queue.Empty:
                self._spooled_meanwhile = False
                self._try_recover()
                continue
            items, stop = _drain(self._queue, item, self.max_batch)
            if items:
                try:
                    self._write(items)
                except Exception as exc:  # never let the writer die: waiting requests would hang
                    log.exception("recording failed")
                    _resolve_all(items, "failed", exc)
            if self.stalled:
                log.warning("the store answers again")
                self.stalled = False
            if stop or (self._spooled_meanwhile and self.store_healthy):
                self._spooled_meanwhile = False
                self._try_recover()
            if stop:
                return

    def _write(self, items: list[_Item]) -> None:
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
        self._report(results, time.perf_counter() - started)
        for (_, loop, future), (outcome, error) in zip(items, results, strict=True):
            _notify(loop, future, outcome, error)

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

    def _report(self, results: list[tuple[str, BaseException | None]], seconds: float) -> None:
        if self.on_batch is not None:
            for outcome in {o for o, _ in results}:
                self.on_batch(outcome, sum(o == outcome for o, _ in results), seconds)

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

    # ---- the spooler thread: calls the store's writer could not take in time ----
    def _run_spooler(self) -> None:
        while True:
            items, stop = _drain(self._spool_queue, self._spool_queue.get(), self.max_batch)
            if items:
                started = time.perf_counter()
                try:
                    outcome, error = self._spool([i[0] for i in items])
                except Exception as exc:  # never let the spooler die: waiting requests would time out
                    log.exception("spooling failed")
                    outcome, error = "failed", exc
                if outcome == "spool":
                    self._spooled_meanwhile = True
                self._report([(outcome, error)] * len(items), time.perf_counter() - started)
                _resolve_all(items, outcome, error)
            if stop:
                return


def _drain(q: "queue.Queue[_Item | None]", first: _Item | None, max_batch: int) -> tuple[list[_Item], bool]:
    """`first` and whatever else is queued (up to max_batch), and whether a stop marker was among them."""
    batch = [first]
    while len(batch) < max_batch:
        try:
            batch.append(q.get_nowait())
        except queue.Empty:
            break
    items = [i for i in batch if i is not None]
    return items, len(items) < len(batch)


def _resolve_all(items: list[_Item], outcome: str, error: BaseException | None) -> None:
    for _, loop, future in items:
        _notify(loop, future, outcome, error)


def _notify(loop: asyncio.AbstractEventLoop, future: asyncio.Future, outcome: str, error) -> None:
    # The loop may be gone (a record that timed out, then its loop closed); the writer must live on.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, future, outcome, error)


def _resolve(future: asyncio.Future, outcome: str, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client went away); the record is written regardless
        return
    if error is not None:
        future.set_exception(RecordError(f"call could not be recorded: {error}"))
    else:
        future.set_result(outcome)


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
