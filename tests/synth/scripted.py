"""A scripted OpenAI-compatible teacher: canned answers, errors and delays; every request is logged."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from loraforge.synth.teacher import TeacherClient, TeacherSettings

MODEL = "scripted-teacher"
HOLD_LIMIT_S = 10.0


@dataclass
class Answer:
    """A 200 chat completion with this content."""

    content: str
    finish_reason: str = "stop"
    delay: float = 0.0
    hold_until_in_flight: int = 0
    """Hold the answer until this many requests have been in flight at once (or `HOLD_LIMIT_S` passed):
    a concurrency test then does not depend on a fixed delay overlapping on a busy machine."""


@dataclass
class Fail:
    """An HTTP error status, with headers such as Retry-After."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Action = Answer | Fail


@dataclass
class Logged:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    @property
    def prompt(self) -> str:
        """All message contents of the request, joined."""
        return "\n".join(m["content"] for m in self.body["messages"])

    @property
    def user(self) -> str:
        return [m for m in self.body["messages"] if m["role"] == "user"][-1]["content"]


class ScriptedTeacher:
    """Answers requests from a queue of actions, then from `responder`, else with 500 'script exhausted'."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.url = ""
        self.generation = 0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            # A request of an earlier test may still be answered after this reset (its client timed out and
            # went on); its generation tells `done` not to count it here (it once took in_flight to -1).
            self.generation += 1
            self.script: deque[Action] = deque()
            self.responder: Callable[[Logged], Action] | None = None
            self.log: list[Logged] = []
            self.in_flight = 0
            self.max_in_flight = 0

    def push(self, *actions: Action) -> None:
        with self.lock:
            self.script.extend(actions)

    def next_action(self, logged: Logged) -> tuple[Action, int]:
        """The action for this request, and the generation (`reset`) it counts in."""
        with self.lock:
            self.log.append(logged)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            generation = self.generation
            if self.script:
                return self.script.popleft(), generation
            responder = self.responder
        return (responder(logged) if responder else Fail(500)), generation

    def done(self, generation: int) -> None:
        with self.lock:
            if generation == self.generation:
                self.in_flight -= 1


def build_app(teacher: ScriptedTeacher) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        action, generation = teacher.next_action(Logged(body, dict(request.headers)))
        try:
            if action.delay:
                await asyncio.sleep(action.delay)
            hold = action.hold_until_in_flight if isinstance(action, Answer) else 0
            deadline = time.monotonic() + HOLD_LIMIT_S
            while teacher.max_in_flight < hold and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if isinstance(action, Fail):
                return JSONResponse({"error": {"message": "scripted"}}, action.status, headers=action.headers)
            message = {"role": "assistant", "content": action.content}
            choice = {"index": 0, "message": message, "finish_reason": action.finish_reason}
            return JSONResponse(
                {"id": "x", "object": "chat.completion", "model": body.get("model"), "choices": [choice]}
            )
        finally:
            teacher.done(generation)

    return app


class Sleeps:
    """Records backoff delays instead of sleeping, so retry tests are fast and their delays exact."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_client(server: ScriptedTeacher, sleeps: Sleeps | None = None, **overrides: Any) -> TeacherClient:
    settings: dict[str, Any] = {"url": server.url, "model": MODEL, "backoff_base_s": 0.01, "jitter": 0.0}
    settings |= {"timeout_s": 5.0, "max_retries": 3}
    settings.update(overrides)
    if sleeps is None:
        return TeacherClient(TeacherSettings(**settings))
    return TeacherClient(TeacherSettings(**settings), sleep=sleeps)


def free_port() -> int:
    """A port nothing listens on (bound and released), for unreachable-teacher tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
