"""Forward one completion request upstream and record it durably before the client gets the end of it.

Guarantee: a non-streamed response is sent only after its call is recorded; in a stream, the chunk that
carries a finish_reason, every chunk after it and the final `[DONE]` are sent only after the call (with the
fully assembled response) is recorded. "Recorded" means committed to the store (SQLite: fsync'ed WAL), or,
while the store is down, fsync'ed to the spool that is replayed into the store later.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from loraforge.cost.prices import PriceTable
from loraforge.gateway.errors import GatewayError, upstream_error, upstream_status_error
from loraforge.gateway.metrics import GatewayMetrics
from loraforge.gateway.sse import StreamAssembler, sse_data
from loraforge.gateway.upstream import UpstreamClient, UpstreamError, UpstreamResponse
from loraforge.gateway.validation import ParsedRequest
from loraforge.store.recorder import Recorder, RecordError
from loraforge.store.tables import utcnow

log = logging.getLogger("loraforge.gateway")

CALL_ID_HEADER = "X-Loraforge-Call-Id"
SERVED_BY_HEADER = "X-Loraforge-Served-By"  # "general", "adapter:NAME" or "fallback" (see gateway.routing)
_background: set[asyncio.Future] = set()
PATHS = {"chat.completions": "/chat/completions", "completions": "/completions"}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


class Proxy:
    def __init__(
        self, upstream: UpstreamClient, recorder: Recorder, prices: PriceTable, metrics: GatewayMetrics
    ) -> None:
        self.upstream = upstream
        self.recorder = recorder
        self.prices = prices
        self.metrics = metrics

    async def forward(
        self,
        req: ParsedRequest,
        headers: dict[str, str],
        extra: dict[str, Any] | None = None,
        call: "_CallLog | None" = None,
    ) -> Response:
        """`extra`: routing fields of the call record (served_by, route_stage, fallback_reason); `call`: the
        record begun by an earlier attempt (a fallback's latency includes the adapter's try)."""
        call = call or _CallLog(req, self, extra)
        try:
            resp = await self.upstream.request(
                "POST", PATHS[req.endpoint], json.dumps(req.upstream_body).encode(), headers
            )
        except UpstreamError as exc:
            return await call.fail(upstream_error(exc))
        if req.stream and resp.status == 200:
            return self.stream_response(call, resp)
        try:
            content = await resp.read()
        except UpstreamError as exc:
            return await call.fail(upstream_error(exc))
        finally:
            resp.close()
        if resp.status >= 400:
            return await call.fail(upstream_status_error(resp.status, content))
        try:
            body = json.loads(content)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return await call.fail(GatewayError(502, "upstream returned invalid JSON", type="upstream_error"))
        await call.finish(body)  # may raise GatewayError(503): then the client is never acknowledged
        return Response(content, 200, headers=call.headers, media_type="application/json")

    def call_log(self, req: ParsedRequest, extra: dict[str, Any] | None = None) -> "_CallLog":
        """The record of a call whose upstream request the caller makes (the router's adapter calls)."""
        return _CallLog(req, self, extra)

    def stream_response(self, call: "_CallLog", resp: UpstreamResponse) -> StreamingResponse:
        """Relay an upstream event stream (anything with `iter_lines()` and `close()`), recording it."""
        return StreamingResponse(
            self._stream(call, resp), media_type="text/event-stream", headers=call.headers
        )

    async def _stream(self, call: "_CallLog", resp: UpstreamResponse) -> AsyncIterator[bytes]:
        assembler = StreamAssembler(call.req.endpoint)
        held: list[bytes] = []  # not yet sent: the latest chunk, and everything from the finishing chunk on
        finishing = False
        try:
            async for data in sse_data(resp.iter_lines()):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    chunk = {}
                if isinstance(chunk, dict) and chunk.get("error"):
                    error = GatewayError(502, _error_message(chunk), type="upstream_error")
                    await call.fail_quietly(error, assembler.result())
                    yield _event(json.dumps(error.body()))
                    return
                if not isinstance(chunk, dict):
                    chunk = {}
                assembler.feed(chunk)
                if call.req.usage_injected and not chunk.get("choices") and chunk.get("usage"):
                    continue  # the usage chunk the client did not ask for
                finishing = finishing or assembler.finished
                event = _event(data)
                if not finishing:
                    for pending in held:
                        yield pending
                    held = []
                held.append(event)
        except UpstreamError as exc:
            error = upstream_error(exc)
            await call.fail_quietly(error, assembler.result())
            yield _event(json.dumps(error.body()))
            return
        except BaseException:
            # The client went away (cancellation) or the gateway stops: record what we have, best effort;
            # the client did not receive the end of the stream, so nothing acknowledged is at stake.
            task = asyncio.ensure_future(
                call.fail_quietly(GatewayError(499, "client disconnected"), assembler.result())
            )
            _background.add(task)  # the loop holds tasks only weakly
            task.add_done_callback(_background.discard)
            raise
        finally:
            resp.close()
        if not assembler.finished:
            error = GatewayError(502, "upstream stream ended without a finish_reason", type="upstream_error")
            await call.fail_quietly(error, assembler.result())
            yield _event(json.dumps(error.body()))
            return
        try:
            await call.finish(assembler.result())
        except GatewayError as exc:
            yield _event(json.dumps(exc.body()))
            return
        for pending in held:
            yield pending
        yield b"data: [DONE]\n\n"


class _CallLog:
    """Builds the call record of one request and writes it through the recorder."""

    def __init__(self, req: ParsedRequest, proxy: Proxy, extra: dict[str, Any] | None = None) -> None:
        self.req = req
        self.proxy = proxy
        self.id = new_call_id()
        self.time = utcnow()
        self.started = time.perf_counter()
        self.extra = {"served_by": "general", **(extra or {})}
        self.headers = {CALL_ID_HEADER: self.id, SERVED_BY_HEADER: self.extra["served_by"]}
        # An answer of our own servers (an adapter, a few-shot specialist model) is priced by the hardware
        # it ran on (`loraforge report cost`), never by a token price table: its name may well prefix-match
        # a general model's entry.
        self.token_priced = not self.extra["served_by"].startswith("adapter:")

    def annotate(self, req: ParsedRequest, fields: dict[str, Any]) -> None:
        """Change who answers (a fallback): the request sent and the routing fields."""
        self.req = req
        self.extra.update(fields)
        self.headers[SERVED_BY_HEADER] = self.extra["served_by"]
        self.token_priced = not self.extra["served_by"].startswith("adapter:")

    async def finish(self, body: dict[str, Any]) -> None:
        usage = body.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        served = body.get("model")
        cost = None
        if self.token_priced:
            cost = self.proxy.prices.estimate(served or self.req.model, prompt, completion)
        m = self.proxy.metrics
        task = m.task_label(self.req.task or "")
        if isinstance(prompt, int) and isinstance(completion, int):
            m.tokens.labels(task, "prompt").inc(prompt)
            m.tokens.labels(task, "completion").inc(completion)
        if cost:
            m.cost.labels(task).inc(cost)
        await self._record("ok", 200, body, None, prompt, completion, served, cost)

    async def fail(self, error: GatewayError) -> Response:
        """Record a failed call and answer its OpenAI-shaped error."""
        await self._record("error", error.status, None, error.message, None, None, None, None)
        return error.response(self.headers)

    async def fail_quietly(self, error: GatewayError, partial: dict[str, Any] | None) -> None:
        # A failure to record is already logged; the client gets the original error.
        with contextlib.suppress(GatewayError):
            await self._record("error", error.status, partial, error.message, None, None, None, None)

    async def _record(self, status, http_status, body, error, prompt, completion, served, cost) -> None:
        latency = time.perf_counter() - self.started
        m = self.proxy.metrics
        m.upstream_seconds.labels(self.req.endpoint).observe(latency)
        if error:
            log.warning("call %s (%s) failed: %s", self.id, self.req.endpoint, error)
        record = {
            "id": self.id,
            "time": self.time,
            "endpoint": self.req.endpoint,
            "task": self.req.task,
            "tags": self.req.tags,
            "requested_model": self.req.model,
            "served_model": served,
            "stream": self.req.stream,
            "request_body": self.req.body,
            "response_body": body,
            "status": status,
            "http_status": http_status,
            "error": error,
            "latency_ms": latency * 1000,
            "prompt_tokens": prompt if isinstance(prompt, int) else None,
            "completion_tokens": completion if isinstance(completion, int) else None,
            "cost_usd": cost,
            **self.extra,
        }
        try:
            await self.proxy.recorder.record(record)
        except RecordError as exc:
            m.requests.labels(self.req.endpoint, "503").inc()
            raise GatewayError(503, f"the call could not be recorded: {exc}", type="server_error") from exc
        m.requests.labels(self.req.endpoint, str(http_status)).inc()
        m.request_seconds.labels(self.req.endpoint).observe(time.perf_counter() - self.started)


def _event(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


def _error_message(chunk: dict[str, Any]) -> str:
    err = chunk.get("error")
    return str(err.get("message") if isinstance(err, dict) else err)
