"""A minimal OpenAI-compatible upstream for tests: echoes the prompt, streams, fails or stalls on demand."""

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class UpstreamControl:
    """Knobs a test turns; `requests` keeps every body received (to check what the gateway forwarded)."""

    url: str = ""  # the base URL, set once the server runs
    fail_status: int | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    reply: str | Callable[[str], str] | None = None  # answer this (or reply(last message)), not an echo
    hold: str | None = None  # a chat request whose last message is this waits for `released` (30 s at most)
    released: threading.Event = field(default_factory=threading.Event)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def served_model(requested: str) -> str:
    return f"{requested}-2026-01-01"


def words(text: str) -> int:
    return len(text.split())


def create_upstream(control: UpstreamControl) -> FastAPI:
    app = FastAPI()

    async def common(request: Request) -> dict[str, Any] | JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return invalid("the body is not valid JSON")
        if not isinstance(body, dict):
            return invalid("the body must be a JSON object")
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): not text, and the reply could not echo it
            return invalid("the body holds invalid Unicode")
        control.requests.append(body)
        control.headers.append(dict(request.headers))
        if control.delay_s:
            await asyncio.sleep(control.delay_s)
        if control.fail_status:
            error = {"message": "upstream exploded", "type": "server_error", "param": None, "code": "boom"}
            return JSONResponse({"error": error}, status_code=control.fail_status)
        if "metadata" in body:  # like OpenAI without `store: true`
            error = {
                "message": "metadata is not allowed",
                "type": "invalid_request_error",
                "param": "metadata",
            }
            return JSONResponse({"error": error}, status_code=400)
        return body

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await common(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            messages = body["messages"]
            prompt = " ".join(str(m.get("content", "")) for m in messages)
            last = str(messages[-1].get("content", ""))
            if control.hold is not None and last == control.hold:
                deadline = time.monotonic() + 30
                while not control.released.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            reply = "echo: " + last if control.reply is None else control.reply
            reply = reply(last) if callable(reply) else reply
            return _respond(body, "chat.completion", reply, words(prompt), control)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            return invalid(f"malformed request: {exc!r}")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await common(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            prompt = body["prompt"] if isinstance(body["prompt"], str) else " ".join(map(str, body["prompt"]))
            return _respond(body, "text_completion", "echo: " + prompt, words(prompt), control)
        except (KeyError, TypeError, AttributeError) as exc:
            return invalid(f"malformed request: {exc!r}")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "stub-model", "object": "model", "owned_by": "tests"}]}

    return app


def invalid(message: str) -> JSONResponse:
    """What OpenAI answers to a body it cannot use: a 400, never a 500 (so that a 5xx seen through the
    gateway is the gateway's own)."""
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return JSONResponse({"error": error}, status_code=400)


def _respond(body: dict[str, Any], kind: str, reply: str, prompt_tokens: int, control: UpstreamControl):
    chat = kind == "chat.completion"
    model = served_model(body["model"])
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": words(reply),
        "total_tokens": prompt_tokens + words(reply),
    }
    created = int(time.time())
    if not body.get("stream"):
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": reply, "finish_reason": "stop"}
        )
        return {
            "id": "up-1",
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    async def events():
        base = {"id": "up-1", "object": f"{kind}.chunk" if chat else kind, "created": created, "model": model}
        pieces = reply.split(" ")
        deltas = [p + (" " if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)]
        if chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            yield _sse({**base, "choices": [first]})
        for piece in deltas:
            if control.chunk_delay_s:
                await asyncio.sleep(control.chunk_delay_s)
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            yield _sse({**base, "choices": [{**choice, "finish_reason": None}]})
        last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        yield _sse({**base, "choices": [{**last, "finish_reason": "stop"}]})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"
