"""What `AsyncEngine` hands the event loop: one request's progress as `Event`s, and the errors it raises."""

import asyncio
from dataclasses import dataclass, field

import torch

from loraforge.errors import LoraforgeError
from loraforge.serve.model.logprobs import TokenLogprob


class QueueFullError(LoraforgeError):
    """Too many requests are waiting; the client should retry later."""


class ShuttingDownError(LoraforgeError):
    """The server is draining and takes no new requests."""


class EngineDeadError(LoraforgeError):
    """The engine thread has stopped; the server cannot generate any more."""


class AdapterInUseError(LoraforgeError):
    """An adapter cannot be unloaded or replaced while requests use it; retry when they finish."""

    def __init__(self, name: str):
        super().__init__(f"adapter '{name}' is serving requests; retry when they finish")


@dataclass
class Event:
    """A snapshot of one request's progress, safe to read on the event loop."""

    text: str  # new text since the previous event
    prompt_tokens: int
    completion_tokens: int
    finished: bool = False
    finish_reason: str | None = None
    error: Exception | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens since the previous event
    prompt_logprobs: list[TokenLogprob] | None = None  # on the first event, when the request asked
    answer_state: torch.Tensor | None = None  # on the last event, when the request asked (answer_state)


@dataclass
class _Stream:
    """Where the events of one request go: a queue on the event loop that waits for them."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
