"""The engine on a background thread, with an asyncio interface: one async stream of events per request.

The event loop never runs the model: it posts commands to the engine thread, which steps the engine and
sends each request's new text back with `call_soon_threadsafe`. Adapter loads run on their own thread, so a
cold adapter never stalls the batch. This is the one object the HTTP API talks to (serve/api/).
"""

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from loraforge.serve.engine.async_adapters import AdapterCommands
from loraforge.serve.engine.config import EngineConfig
from loraforge.serve.engine.engine import Engine, StepOutput
from loraforge.serve.engine.events import (  # noqa: F401 - the errors are re-exported to the API
    AdapterInUseError,
    EngineDeadError,
    Event,
    QueueFullError,
    ShuttingDownError,
    _Stream,
)
from loraforge.serve.engine.sequence import SamplingParams, Sequence
from loraforge.serve.limits import ServeLimits
from loraforge.serve.lora.manager import AdapterRef
from loraforge.serve.lora.merge import AdapterMerger

log = logging.getLogger(__name__)


class AsyncEngine(AdapterCommands):
    """The `Engine` on a thread of its own, behind an asyncio interface: the facade the HTTP API uses.

    Threads: the event loop calls `generate`, `resolve` (in the thread pool: it reads the file system) and
    the adapter operations; everything that touches the engine's state runs on the engine thread, as a
    command (`run_in_engine`) between two steps. Adapter loads run on the manager's worker threads."""

    def __init__(self, config: EngineConfig, max_waiting: int = 256):
        self.engine = Engine(config, on_ready=self._wake)
        self.merger = AdapterMerger(self.engine.adapters, self.engine.model_name)  # `merge` requests
        self.max_waiting = max_waiting
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[int, _Stream] = {}
        self._stopping = False
        self._closed = False
        self.dead: BaseException | None = None  # why the engine thread stopped, if it did
        # Futures of callers waiting on the engine thread, failed if that thread dies.
        self._waiters: dict[asyncio.Future, asyncio.AbstractEventLoop] = {}
        self._waiters_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.on_step: Callable[[list[StepOutput]], None] | None = None  # metrics hook, engine thread
        self.steps = 0

    # ---- what the API reads (immutable after start, safe on the event loop) ------------------------
    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def dtype(self):
        return self.engine.dtype

    @property
    def limits(self) -> ServeLimits:
        return self.engine.config.limits

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def max_prompt_tokens(self) -> int:
        return self.engine.max_prompt_tokens

    @property
    def max_tokens_limit(self) -> int:
        return self.engine.max_tokens_limit

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    @property
    def hidden_size(self) -> int:
        """The size of an answer state (SamplingParams.answer_state)."""
        return self.engine.model.cfg.hidden_size

    @property
    def eos_ids(self) -> set[int]:
        return self.engine.eos_ids

    @property
    def weight_format(self) -> str:
        """The base weights as held in memory (`--weights`, resolved; model/quant.py)."""
        return self.engine.model.weight_format

    @property
    def blocks(self):
        """The KV block manager, whose prefix-cache counters /metrics reads (plain ints, read racily)."""
        return self.engine.blocks

    def num_preemptions(self) -> int:
        return self.engine.scheduler.num_preemptions

    def start(self) -> None:
        self._thread.start()

    def _wake(self) -> None:
        self._wakeup.set()

    def _call(self, fn: Callable[[], None]) -> None:
        self._check_alive()
        self._commands.put(fn)
        self._wakeup.set()

    @property
    def alive(self) -> bool:
        """False once the engine thread has died (after `start()`); the server then answers 503."""
        return self.dead is None and (self._thread.is_alive() or self._thread.ident is None)

    def _check_alive(self) -> None:
        if self.dead is not None:
            raise EngineDeadError(f"the engine stopped ({type(self.dead).__name__}: {self.dead})")

    def num_waiting(self) -> int:
        return len(self.engine.scheduler.waiting) + len(self.engine.pending)

    def num_running(self) -> int:
        return len(self.engine.scheduler.running)

    # ---- engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._closed:
                self._run_once()
        except BaseException as exc:  # a bug here: say so everywhere rather than leave requests hanging
            log.critical("the engine thread died", exc_info=True)
            self.dead = exc
            self._fail_everyone(exc)

    def _run_once(self) -> None:
        engine = self.engine
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            try:
                command()
            except Exception:  # a failed command concerns its own caller only (each reports its errors)
                log.exception("engine command failed")
        if not engine.has_work():
            self._wakeup.wait(0.05)
            self._wakeup.clear()
            return
        try:
            outputs = engine.step()
        except Exception as exc:  # step() isolates sequences itself; this is a bug outside them
            log.exception("engine step failed")
            outputs = self._fail_batch(exc)
        self.steps += 1
        for out in outputs:
            try:
                self._emit(out)
            except Exception as exc:
                log.exception("sending the output of %s failed", out.seq.request_id)
                self._fail_stream(out.seq, exc)
        if self.on_step is not None:
            try:
                self.on_step(outputs)
            except Exception:
                log.exception("the on_step hook failed")
        if not outputs and engine.pending and not engine.scheduler.has_work():
            self._wakeup.wait(0.01)  # only adapter loads in flight: wait for one instead of spinning
            self._wakeup.clear()

    def _fail_batch(self, exc: Exception) -> list[StepOutput]:
        """Fail the running batch (the step that raised ran it); only when nothing runs, the failure is
        in admitting requests, and the waiting ones fail instead. The engine goes on."""
        engine = self.engine
        victims = list(engine.scheduler.running) or [*engine.scheduler.waiting, *engine.pending]
        return [engine.fail(seq, exc) for seq in victims]

    def _emit(self, out: StepOutput) -> None:
        """Send one step's output of a request to its stream (the engine already held back what may still
        turn out to be a stop string: `StepOutput.delta`)."""
        seq = out.seq
        stream = self._streams.get(seq.seq_id)
        if stream is None:
            return
        event = Event(out.delta, len(seq.prompt_ids), len(seq.output_ids), out.finished)
        if event.text or out.finished:  # the logprobs of tokens whose text was held back come with the next
            if seq.logprobs_sent == 0:
                event.prompt_logprobs = seq.prompt_logprobs
            event.logprobs, seq.logprobs_sent = seq.logprobs[seq.logprobs_sent :], len(seq.logprobs)
        if out.finished:
            event.finish_reason = seq.finish_reason.value if seq.finish_reason else None
            event.error = seq.error
            event.answer_state = seq.answer_state
            del self._streams[seq.seq_id]
        if event.text or out.finished:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, event)

    def _fail_stream(self, seq: Sequence, exc: Exception) -> None:
        """Finish one request with an error after its output could not be sent."""
        self.engine.fail(seq, exc)
        stream = self._streams.pop(seq.seq_id, None)
        if stream is not None:
            event = Event("", len(seq.prompt_ids), len(seq.output_ids), True, "error", exc)
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, event)

    def _fail_everyone(self, exc: BaseException) -> None:
        err = EngineDeadError(f"the engine stopped ({type(exc).__name__}: {exc})")
        for stream in list(self._streams.values()):
            with contextlib.suppress(RuntimeError):  # that event loop is closed: nobody waits there
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, Event("", 0, 0, True, "error", err))
        self._streams.clear()
        with self._waiters_lock:
            waiters = list(self._waiters.items())
        for fut, loop in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._settle, fut, None, err)

    # ---- event loop --------------------------------------------------------------------------------
    def resolve(self, model: str) -> AdapterRef | None:
        """The adapter `model` names (None: the base model), checked once; raises ModelNotFoundError. Reads
        the file system: call it in the thread pool, then pass the result to `generate`."""
        return self.engine.resolve(model)

    def adapter_folder(self, name: str) -> Path | None:
        """The local folder adapter `name` is read from (None: a hub id). Reads the file system."""
        return self.engine.adapters.locate(name)

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, adapter: str | AdapterRef | None = None
    ) -> AsyncIterator[Event]:
        """Submit a request and yield its events (the last has `finished=True`); errors raise before any."""
        self._check_alive()
        if self._stopping:
            raise ShuttingDownError("the server is shutting down")
        if self.num_waiting() >= self.max_waiting:
            raise QueueFullError(f"too many queued requests ({self.max_waiting}); retry later")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        added = self._future(loop)

        def add() -> None:
            try:
                seq = self.engine.add_request(prompt_ids, params, adapter)
            except Exception as exc:
                loop.call_soon_threadsafe(self._settle, added, None, exc)
                return
            self._streams[seq.seq_id] = _Stream(loop, q)
            loop.call_soon_threadsafe(self._settle, added, seq, None)

        self._call(add)
        seq: Sequence = await added
        finished = False
        try:
            while not finished:
                event = await q.get()
                finished = event.finished
                yield event
        finally:
            if not finished and self.dead is None:  # the client went away: stop generating for it
                self._call(lambda: (self._streams.pop(seq.seq_id, None), self.engine.abort(seq)))

    def run_in_engine(self, fn: Callable[[], object]) -> asyncio.Future:
        """Run `fn` on the engine thread (adapter registry changes) and await its result."""
        loop = asyncio.get_running_loop()
        fut = self._future(loop)

        def call() -> None:
            try:
                result = fn()
            except Exception as exc:
                loop.call_soon_threadsafe(self._settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(self._settle, fut, result, None)

        self._call(call)
        return fut

    def _future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """A future the engine thread settles; tracked so that a dying engine thread fails it."""
        fut = loop.create_future()
        with self._waiters_lock:
            self._waiters[fut] = loop
        return fut

    def _settle(self, fut: asyncio.Future, result, exc) -> None:
        with self._waiters_lock:
            self._waiters.pop(fut, None)
        _set(fut, result, exc)

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
