"""Drive an ASGI app (serve/api's `create_app`) from inside a Ray Serve replica, without a socket.

The ingress deployment hands each HTTP request to a replica as plain data (method, path, headers, body);
the replica runs it through the unchanged app and streams the response back: first the status and headers,
then the body chunks as the app sends them (SSE streams stay streams).
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestData:
    """What a replica needs of an HTTP request: picklable, unlike starlette's Request."""

    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None = None


class Lifespan:
    """The app's lifespan protocol (startup before the first request, shutdown at the end), as a server
    would run it: create_app starts and drains the engine there."""

    def __init__(self, app) -> None:
        self.app = app
        self._events: asyncio.Queue = asyncio.Queue()
        self._done: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def startup(self) -> None:
        self._task = asyncio.create_task(self.app({"type": "lifespan"}, self._events.get, self._done.put))
        await self._events.put({"type": "lifespan.startup"})
        message = await self._done.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app failed to start: {message.get('message', message['type'])}")

    async def shutdown(self) -> None:
        if self._task is None:
            return
        await self._events.put({"type": "lifespan.shutdown"})
        await self._done.get()
        await self._task


async def call(
    app, request: RequestData, body: bytes, extra_headers: list[tuple[bytes, bytes]]
) -> AsyncIterator:
    """Run one request through `app`; yields {"status", "headers"} first, then body chunks (bytes)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query_string,
        "root_path": "",
        "headers": request.headers,
        "client": request.client,
        "server": None,
    }
    sent: asyncio.Queue = asyncio.Queue()
    body_sent = False
    disconnected = asyncio.Event()

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()  # the app waits here for a client disconnect
        return {"type": "http.disconnect"}

    task = asyncio.create_task(app(scope, receive, sent.put))
    task.add_done_callback(lambda _: sent.put_nowait(None))
    try:
        while (message := await sent.get()) is not None:
            if message["type"] == "http.response.start":
                yield {"status": message["status"], "headers": [*message.get("headers", []), *extra_headers]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
        await task  # re-raises what the app raised (it answers errors itself; this is a bug's traceback)
    finally:
        disconnected.set()  # the ingress went away (client disconnect): let the app stop its stream
        if not task.done():
            task.cancel()
