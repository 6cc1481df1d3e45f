"""The engine on a background thread, with an asyncio interface: one async stream of events per request.

The event loop never runs the model: it posts commands to the engine thread, which steps the engine and
sends each request's new text back with `call_soon_threadsafe`. Adapter loads run on their own thread, so a
cold adapter never stalls the batch.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from loraforge.errors import LoraforgeError
from loraforge.serve.engine.config import EngineConfig
from loraforge.serve.engine.engine import Engine, StepOutput
from loraforge.serve.engine.sequence import SamplingParams, Sequence

log = logging.getLogger(__name__)


class QueueFullError(LoraforgeError):
    """Too many requests are waiting; the client should retry later."""


class ShuttingDownError(LoraforgeError):
    """The server is draining and takes no new requests."""


@dataclass
class Event:
    """A snapshot of one request's progress, safe to read on the event loop."""

    text: str  # new text since the previous event
    prompt_tokens: int
    completion_tokens: int
    finished: bool = False
    finish_reason: str | None = None
    error: Exception | None = None


class AsyncEngine:
    def __init__(self, config: EngineConfig, max_waiting: int = 256):
        self.engine = Engine(config, on_ready=self._wake)
        self.max_waiting = max_waiting
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue, int]] = {}
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.on_step: Callable[[list[StepOutput]], None] | None = None  # metrics hook, engine thread
        self.steps = 0

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def start(self) -> None:
        self._thread.start()

    def _wake(self) -> None:
        self._wakeup.set()

    def _call(self, fn: Callable[[], None]) -> None:
        self._commands.put(fn)
        self._wakeup.set()

    def num_waiting(self) -> int:
        return len(self.engine.scheduler.waiting) + len(self.engine.pending)

    def num_running(self) -> int:
        return len(self.engine.scheduler.running)

    # ---- engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while not self._closed:
            while True:
                try:
                    self._commands.get_nowait()()
                except queue.Empty:
                    break
            if not engine.has_work():
                self._wakeup.wait(0.05)
                self._wakeup.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # a bug must not hang every client: fail the in-flight requests
                log.exception("engine step failed")
                outputs = self._fail_all(exc)
            self.steps += 1
            for out in outputs:
                self._emit(out.seq, out.finished)
            if self.on_step is not None:
                self.on_step(outputs)
            if not outputs and engine.pending and not engine.scheduler.has_work():
                self._wakeup.wait(0.01)  # only adapter loads in flight: wait for one instead of spinning
                self._wakeup.clear()

    def _fail_all(self, exc: Exception) -> list[StepOutput]:
        engine, outputs = self.engine, []
        for seq in [*engine.scheduler.running, *engine.scheduler.waiting, *engine.pending]:
            seq.error = exc
            engine.abort(seq)
            outputs.append(StepOutput(seq, "", True))
        return outputs

    def _emit(self, seq: Sequence, finished: bool) -> None:
        entry = self._streams.get(seq.seq_id)
        if entry is None:
            return
        loop, q, sent = entry
        text = seq.output_text
        if not finished and seq.params.stop:
            # Hold back a possible beginning of a stop string until it is known not to be one.
            text = text[: max(sent, len(text) - max(len(s) for s in seq.params.stop) + 1)]
        event = Event(text[sent:], len(seq.prompt_ids), len(seq.output_ids), finished)
        if finished:
            event.finish_reason = seq.finish_reason.value if seq.finish_reason else None
            event.error = seq.error
            del self._streams[seq.seq_id]
        else:
            self._streams[seq.seq_id] = (loop, q, len(text))
        if event.text or finished:
            loop.call_soon_threadsafe(q.put_nowait, event)

    # ---- event loop --------------------------------------------------------------------------------
    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[Event]:
        """Submit a request and yield its events (the last has `finished=True`); errors raise before any."""
        if self._stopping:
            raise ShuttingDownError("the server is shutting down")
        if self.num_waiting() >= self.max_waiting:
            raise QueueFullError(f"too many queued requests ({self.max_waiting}); retry later")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        added: asyncio.Future = loop.create_future()

        def add() -> None:
            try:
                seq = self.engine.add_request(prompt_ids, params, adapter)
            except Exception as exc:
                loop.call_soon_threadsafe(_set, added, None, exc)
                return
            self._streams[seq.seq_id] = (loop, q, 0)
            loop.call_soon_threadsafe(_set, added, seq, None)

        self._call(add)
        seq: Sequence = await added
        finished = False
        try:
            while not finished:
                event = await q.get()
                finished = event.finished
                yield event
        finally:
            if not finished:  # the client went away: stop generating for it
                self._call(lambda: (self._streams.pop(seq.seq_id, None), self.engine.abort(seq)))

    def run_in_engine(self, fn: Callable[[], object]) -> asyncio.Future:
        """Run `fn` on the engine thread (adapter registry changes) and await its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def call() -> None:
            try:
                result = fn()
            except Exception as exc:
                loop.call_soon_threadsafe(_set, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_set, fut, result, None)

        self._call(call)
        return fut

    async def drain(self, timeout: float | None = None) -> None:
        """Stop taking requests and wait for the in-flight ones to finish."""
        self._stopping = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._streams and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self._stopping = self._closed = True
        self._wakeup.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.engine.adapters.shutdown()


def _set(fut: asyncio.Future, result, exc) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
