"""Send each call of a routed task to the general model, to its adapter (on the specialist server) or to a
model prompted with the task's most similar good examples (few-shot), mirror shadow traffic, and let the
plain general model answer when the adapter or the few-shot prompt errs, times out or answers invalidly.

Every path records exactly one call for the client's request (`served_by` says who answered); a shadow
answer is one more call, linked to the one it mirrors by `shadow_of`. Routes come from the store and are
re-read every `refresh_s`, so `loraforge route ...` reaches a running gateway without a restart.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loraforge.gateway.errors import GatewayError, upstream_error, upstream_status_error
from loraforge.gateway.fewshot import FewShotIndexes, with_examples
from loraforge.gateway.proxy import CALL_ID_HEADER, PATHS, SERVED_BY_HEADER, Proxy
from loraforge.gateway.routing import (
    FALLBACK,
    FEWSHOT,
    adapter_label,
    goes_to_adapter,
    invalid_reason,
    needs_validation,
)
from loraforge.gateway.sse import StreamAssembler
from loraforge.gateway.upstream import UpstreamClient, UpstreamError, UpstreamResponse
from loraforge.gateway.validation import ParsedRequest
from loraforge.store.routes import GENERAL_MODEL, Route, current_routes
from loraforge.store.store import Store

log = logging.getLogger("loraforge.gateway")

NO_SPECIALIST = "the gateway was started without --specialist-url"


class RouteTable:
    """The current routes, re-read from the store in the background; the last good read is kept while the
    store is down."""

    def __init__(self, store: Store, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.routes: dict[str, Route] = {}
        self._task: asyncio.Task | None = None
        self._failing = False  # warn once per outage, not at every refresh

    def get(self, task: str | None) -> Route | None:
        return self.routes.get(task) if task else None

    async def refresh(self) -> None:
        try:
            self.routes = await run_in_threadpool(current_routes, self.store)
            self._failing = False
        except Exception as exc:  # a down store must not stop routing: keep the last routes read
            if not self._failing:
                log.warning("routes not refreshed (keeping the last ones read): %s", exc)
            self._failing = True

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_s)


@dataclass
class _Answer:
    """The adapter's answer so far: a parsed body, or the event-stream lines read (plus the unread rest)."""

    body: dict[str, Any] | None = None
    content: bytes = b""
    lines: list[str] | None = None
    rest: AsyncIterator[str] | None = None
    resp: UpstreamResponse | None = None


@dataclass
class _Target:
    """Who a routed request is sent to: the specialist server, or the general upstream (few-shot)."""

    client: UpstreamClient | None
    headers: dict[str, str]
    who: str  # for error messages: "the adapter", "few-shot model base", ...
    token_priced: bool = False  # the general upstream's answers are priced by tokens, ours by hardware


@dataclass
class _Failure:
    kind: str  # "error", "timeout" or "invalid"
    error: GatewayError
    answer: _Answer | None = None  # kept for "invalid": served anyway when on-invalid fallback is off

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.error.message}"


class _Replay:
    """An upstream response whose first lines were already read: replays them, then reads on."""

    def __init__(self, answer: _Answer) -> None:
        self.answer = answer

    async def iter_lines(self) -> AsyncIterator[str]:
        for line in self.answer.lines or []:
            yield line
        if self.answer.rest is not None:
            async for line in self.answer.rest:
                yield line

    def close(self) -> None:
        if self.answer.resp is not None:
            self.answer.resp.close()


class Router:
    def __init__(
        self,
        proxy: Proxy,
        table: RouteTable,
        specialist: UpstreamClient | None,
        specialist_api_key: str | None = None,
        shadow_concurrency: int = 8,
        fewshot: FewShotIndexes | None = None,
    ) -> None:
        self.proxy = proxy
        self.table = table
        self.fewshot = fewshot
        self.specialist = specialist
        self.specialist_headers = {"content-type": "application/json"}
        if specialist_api_key:
            self.specialist_headers["authorization"] = f"Bearer {specialist_api_key}"
        self.shadow_concurrency = shadow_concurrency
        self._shadows: set[asyncio.Task] = set()
        registry = proxy.metrics.registry
        self.served = Counter(
            "loraforge_gateway_served",
            "Calls by task and who answered.",
            ["task", "served_by"],
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "loraforge_gateway_shadow_dropped",
            "Shadow requests dropped because the shadow concurrency limit was reached.",
            ["task"],
            registry=registry,
        )

    async def forward(self, req: ParsedRequest, headers: dict[str, str]) -> Response:
        route = self.table.get(req.task)
        if route is None:
            resp = await self.proxy.forward(req, headers)
        elif route.stage == "shadow":
            resp = await self.proxy.forward(req, headers, {"route_stage": "shadow"})
            if resp.status_code == 200:
                self._start_shadow(req, resp.headers[CALL_ID_HEADER], route)
        elif route.stage == FEWSHOT and self.fewshot is not None:
            resp = await self._fewshot(req, headers, route)
        elif goes_to_adapter(route, req.body):
            resp = await self._adapter(req, headers, route)
        else:
            resp = await self.proxy.forward(req, headers, {"route_stage": route.stage})
        task = self.proxy.metrics.task_label(req.task or "")  # a client-chosen name: capped series
        self.served.labels(task, resp.headers.get(SERVED_BY_HEADER, "")).inc()
        return resp

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Let running shadow requests finish (they record their calls), then cancel what is left."""
        if self._shadows:
            _, pending = await asyncio.wait(list(self._shadows), timeout=timeout_s)
            for task in pending:
                task.cancel()

    async def _adapter(self, req: ParsedRequest, headers: dict[str, str], route: Route) -> Response:
        areq = replace(req, upstream_body={**req.upstream_body, "model": route.adapter})
        return await self._specialized(req, headers, route, areq, adapter_label(route.adapter))

    async def _fewshot(self, req: ParsedRequest, headers: dict[str, str], route: Route) -> Response:
        """The route's model prompted with the task's most similar good examples; plainly the general model
        while the task has none (or its index is still being built)."""
        examples = await self.fewshot.examples(route, req)
        general = route.model == GENERAL_MODEL
        freq = with_examples(req, examples, None if general else route.model) if examples else None
        if freq is None:
            return await self.proxy.forward(req, headers, {"route_stage": FEWSHOT})
        if general:
            target = _Target(self.proxy.upstream, headers, "the general model with examples", True)
        else:
            target = _Target(self.specialist, self.specialist_headers, f"few-shot model {route.model}", False)
        return await self._specialized(req, headers, route, freq, FEWSHOT, target)

    async def _specialized(
        self,
        req: ParsedRequest,
        headers: dict[str, str],
        route: Route,
        sreq: ParsedRequest,
        served_by: str,
        target: "_Target | None" = None,
    ) -> Response:
        """Answer with `sreq` (the adapter's or few-shot request); the plain general model answers `req`
        when that fails and the route falls back."""
        call = self.proxy.call_log(sreq, {"served_by": served_by, "route_stage": route.stage})
        call.token_priced = target is not None and target.token_priced
        outcome = await self._ask(sreq, route, target)
        if isinstance(outcome, _Answer):
            return await self._serve(call, outcome)
        allowed = ("on-invalid" if outcome.kind == "invalid" else "on-error") in route.fallback
        if allowed:
            log.info("task %s: %s fell back to the general model: %s", req.task, served_by, outcome.reason)
            call.annotate(req, {"served_by": FALLBACK, "fallback_reason": outcome.reason})
            return await self.proxy.forward(req, headers, call=call)
        if outcome.answer is not None:  # invalid, but the route does not fall back on invalid answers
            return await self._serve(call, outcome.answer)
        return await call.fail(outcome.error)

    async def _serve(self, call, answer: _Answer) -> Response:
        if answer.lines is not None:
            return self.proxy.stream_response(call, _Replay(answer))
        await call.finish(answer.body or {})
        return Response(answer.content, 200, headers=call.headers, media_type="application/json")

    async def _ask(
        self, req: ParsedRequest, route: Route, target: "_Target | None" = None
    ) -> "_Answer | _Failure":
        """Ask the adapter (or `target`) within the route's timeout. A stream is read up to its first
        content (or, when the task's answers are validated, to its end) so that a fallback can still
        replace it."""
        target = target or _Target(self.specialist, self.specialist_headers, "the adapter")
        if target.client is None:
            return _Failure("error", GatewayError(502, NO_SPECIALIST, type="upstream_error"))
        resp: UpstreamResponse | None = None
        try:
            async with asyncio.timeout(route.timeout_ms / 1000):
                data = json.dumps(req.upstream_body).encode()
                resp = await target.client.request("POST", PATHS[req.endpoint], data, target.headers)
                if resp.status >= 400:
                    content = await resp.read()
                    resp.close()
                    return _Failure("error", upstream_status_error(resp.status, content))
                if req.stream:
                    return await self._read_stream(req, route, resp)
                content = await resp.read()
                resp.close()
        except TimeoutError:
            if resp is not None:
                resp.close()
            message = f"{target.who} did not answer within {route.timeout_ms} ms"
            return _Failure("timeout", GatewayError(504, message, type="upstream_error"))
        except UpstreamError as exc:
            return _Failure("error", upstream_error(exc))
        try:
            body = json.loads(content)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return _Failure(
                "error", GatewayError(502, f"{target.who} returned invalid JSON", type="upstream_error")
            )
        return _checked(route, req.endpoint, body, _Answer(body=body, content=content))

    async def _read_stream(
        self, req: ParsedRequest, route: Route, resp: UpstreamResponse
    ) -> "_Answer | _Failure":
        lines: list[str] = []
        rest = resp.iter_lines()
        validate = needs_validation(route.output)
        assembler = StreamAssembler(req.endpoint)
        try:
            async for line in rest:
                lines.append(line)
                chunk = _chunk_of(line)
                if chunk is None:
                    continue
                if chunk.get("error"):
                    resp.close()
                    return _Failure(
                        "error", GatewayError(502, str(chunk["error"])[:500], type="upstream_error")
                    )
                assembler.feed(chunk)
                if not validate and (assembler.finished or _has_content(chunk)):
                    return _Answer(lines=lines, rest=rest, resp=resp)
        except UpstreamError as exc:
            return _Failure("error", upstream_error(exc))
        answer = _Answer(lines=lines, resp=resp)
        if not assembler.finished:
            # Whatever it was, it never started a complete answer: a fallback loses the client nothing.
            resp.close()
            return _Failure(
                "error",
                GatewayError(502, "the adapter's stream ended without an answer", type="upstream_error"),
            )
        return _checked(route, req.endpoint, assembler.result(), answer)

    def _start_shadow(self, req: ParsedRequest, primary_id: str, route: Route) -> None:
        if len(self._shadows) >= self.shadow_concurrency:
            self.shadow_dropped.labels(
                self.proxy.metrics.task_label(req.task or "")
            ).inc()  # dropped, not queued: never a backlog
            return
        body = {k: v for k, v in req.upstream_body.items() if k not in ("stream", "stream_options")}
        sreq = replace(
            req, upstream_body={**body, "model": route.adapter}, stream=False, usage_injected=False
        )
        task = asyncio.ensure_future(self._shadow(sreq, primary_id, route))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, req: ParsedRequest, primary_id: str, route: Route) -> None:
        extra = {"served_by": adapter_label(route.adapter), "route_stage": "shadow", "shadow_of": primary_id}
        call = self.proxy.call_log(req, extra)
        try:
            outcome = await self._ask(req, route)
            if isinstance(outcome, _Answer):
                await call.finish(outcome.body or {})
            elif outcome.answer is not None:  # invalid: logged as an answer, with what a fallback would say
                call.annotate(req, {"fallback_reason": outcome.reason})
                await call.finish(outcome.answer.body or {})
            else:
                await call.fail(outcome.error)
        except GatewayError:
            pass  # the recorder already logged why the shadow call could not be recorded
        except Exception:
            log.exception("shadow request for call %s failed", primary_id)


def _checked(route: Route, endpoint: str, body: dict[str, Any], answer: _Answer) -> "_Answer | _Failure":
    reason = invalid_reason(route.output, endpoint, body)
    if reason is None:
        return answer
    answer.body = body
    return _Failure("invalid", GatewayError(422, reason, type="invalid_output"), answer)


def _chunk_of(line: str) -> dict[str, Any] | None:
    """The JSON object of an SSE `data:` line (None for other lines, `[DONE]` and non-objects)."""
    if not line.startswith("data:"):
        return None
    try:
        chunk = json.loads(line[5:])
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False
