"""The OpenAI-compatible HTTP API over the async engine."""

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.serve.api import protocol as p
from loraforge.serve.api.metrics import Metrics
from loraforge.serve.engine.async_engine import AsyncEngine, Event, QueueFullError, ShuttingDownError
from loraforge.serve.engine.engine import RequestError
from loraforge.serve.engine.sequence import SamplingParams


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.body = status, p.error_body(message, type_, param, code)


def _from_engine_error(exc: Exception) -> APIError:
    if isinstance(exc, RequestError):
        return APIError(400, str(exc), "invalid_request_error", exc.param, exc.code)
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), "rate_limit_error", None, "queue_full")
    if isinstance(exc, ShuttingDownError):
        return APIError(503, str(exc), "server_error", None, "shutting_down")
    if isinstance(exc, LoraforgeError):
        return APIError(400, str(exc), "invalid_request_error")
    return APIError(500, f"internal error: {type(exc).__name__}", "server_error")


def create_app(engine: AsyncEngine, api_key: str | None = None) -> FastAPI:
    """Build the app; `engine` is started with the app and drained (in-flight requests finish) at shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        yield
        await engine.drain()
        engine.close()

    app = FastAPI(title="loraforge", lifespan=lifespan)
    metrics = Metrics(engine)
    tokenizer = engine.engine.tokenizer

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = f"{param}: {err.get('msg')}" if param else str(err.get("msg"))
        return JSONResponse(p.error_body(msg, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException):
        return JSONResponse(
            p.error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code
        )

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not secrets.compare_digest(given[7:].strip(), api_key):
            raise APIError(
                401, "missing or invalid API key", "invalid_request_error", None, "invalid_api_key"
            )

    def adapter_for(model: str) -> str | None:
        if model == engine.model_name:
            return None
        try:
            engine.engine.adapters.locate(model)
        except ModelNotFoundError as exc:
            raise APIError(
                404,
                f"the model '{model}' does not exist ({exc})",
                "invalid_request_error",
                "model",
                "model_not_found",
            ) from None
        return model

    def sampling(req: p._Request, max_tokens: int | None) -> SamplingParams:
        if req.logprobs not in (None, False, 0):
            raise APIError(400, "logprobs: not supported", "invalid_request_error", "logprobs")
        return SamplingParams(
            max_tokens=max_tokens or engine.engine.max_model_len,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=req.stop_list(),
            ignore_eos=req.ignore_eos,
        )

    async def start(prompt_ids: list[int], params: SamplingParams, adapter: str | None):
        """Submit and wait for the first event, so that errors become a JSON response, not a broken stream."""
        stream = engine.generate(prompt_ids, params, adapter)
        try:
            first = await anext(stream)
        except Exception as exc:
            raise _from_engine_error(exc) from None
        if first.error is not None:
            raise _from_engine_error(first.error)
        return first, stream

    async def events(first: Event, stream: AsyncIterator[Event]) -> AsyncIterator[Event]:
        yield first
        async for event in stream:
            yield event

    async def run(
        endpoint: str, req: p._Request, prompt_ids: list[int], max_tokens: int | None, make_body, make_chunks
    ):
        adapter = adapter_for(req.model)
        params = sampling(req, max_tokens)
        started = time.monotonic()
        first, stream = await start(prompt_ids, params, adapter)
        first_at = time.monotonic() if first.text or first.completion_tokens else None

        def record(last: Event, status: str) -> None:
            metrics.observe(
                req.model,
                endpoint,
                status,
                last.prompt_tokens,
                last.completion_tokens,
                started,
                first_at,
                time.monotonic(),
            )

        if not req.stream:
            text, last = "", first
            async for event in events(first, stream):
                text, last = text + event.text, event
            record(last, "ok")
            use = p.usage(last.prompt_tokens, last.completion_tokens)
            return JSONResponse(make_body(text, last.finish_reason, use))

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        async def sse() -> AsyncIterator[str]:
            last, status = first, "aborted"
            try:
                async for event in events(first, stream):
                    last = event
                    for chunk in make_chunks(event, include_usage):
                        yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
                status = "ok"
            finally:
                record(last, status)

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_name}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        now = int(time.time())
        base = {"id": engine.model_name, "object": "model", "created": now, "owned_by": "loraforge"}
        adapters = [
            {"id": n, "object": "model", "created": now, "owned_by": "loraforge", "parent": engine.model_name}
            for n in engine.engine.adapters.known()
        ]
        return {"object": "list", "data": [base, *adapters]}

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(req: p.CompletionRequest):
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "prompt: only one prompt per request", "invalid_request_error", "prompt")
            prompt = prompt[0]
        ids = tokenizer(prompt).input_ids if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise APIError(400, "prompt: must not be empty", "invalid_request_error", "prompt")
        rid = p.new_id("cmpl")
        prefix = prompt if req.echo and isinstance(prompt, str) else ""

        def body(text, finish, use):
            return p.completion_body(rid, req.model, prefix + text, finish, use, False)

        def chunks(event: Event, include_usage: bool):
            out = [p.completion_body(rid, req.model, event.text, event.finish_reason, None, True)]
            if event.finished and include_usage:
                usage_chunk = p.completion_body(
                    rid, req.model, "", None, p.usage(event.prompt_tokens, event.completion_tokens), True
                )
                usage_chunk["choices"] = []
                out.append(usage_chunk)
            return out

        return await run("completions", req, ids, req.max_tokens, body, chunks)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(req: p.ChatRequest):
        messages = [
            {"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in req.messages
        ]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise APIError(
                400, f"messages: the chat template failed ({exc})", "invalid_request_error", "messages"
            ) from None
        ids = tokenizer(text, add_special_tokens=False).input_ids
        rid = p.new_id("chatcmpl")
        state = {"role_sent": False}

        def body(text, finish, use):
            return p.chat_body(rid, req.model, text, finish, use)

        def chunks(event: Event, include_usage: bool):
            out = []
            if not state["role_sent"]:
                state["role_sent"] = True
                out.append(p.chat_chunk(rid, req.model, {"role": "assistant", "content": ""}, None))
            if event.text:
                out.append(p.chat_chunk(rid, req.model, {"content": event.text}, None))
            if event.finished:
                out.append(p.chat_chunk(rid, req.model, {}, event.finish_reason))
                if include_usage:
                    use = p.usage(event.prompt_tokens, event.completion_tokens)
                    out.append(p.chat_chunk(rid, req.model, {}, None, use))
            return out

        return await run("chat", req, ids, req.max_completion_tokens or req.max_tokens, body, chunks)

    @app.post("/v1/adapters", dependencies=[Depends(check_key)])
    async def load_adapter(req: p.AdapterLoadRequest):
        manager = engine.engine.adapters
        try:
            if req.path is not None:
                manager.register(req.name, req.path)
            manager.locate(req.name)
        except ModelNotFoundError as exc:
            raise APIError(404, str(exc), "invalid_request_error", "name", "model_not_found") from None
        except LoraforgeError as exc:
            raise APIError(400, str(exc), "invalid_request_error", "name") from None
        future = manager.start_load(req.name)
        if future is not None:
            try:
                await asyncio.wrap_future(future)
            except Exception as exc:
                manager.unload(req.name)
                raise _from_engine_error(exc) from None
        # Install now (on the engine thread) so the next request finds it resident.
        await engine.run_in_engine(lambda: engine.engine.adapters.poll())
        manager.pin(req.name, req.pinned)
        return {
            "id": req.name,
            "object": "adapter",
            "resident": req.name in manager.resident,
            "pinned": req.pinned,
        }

    @app.delete("/v1/adapters/{name:path}", dependencies=[Depends(check_key)])
    async def unload_adapter(name: str):
        manager = engine.engine.adapters
        if name not in manager.known() and name not in manager.resident:
            raise APIError(
                404, f"adapter '{name}' is not loaded", "invalid_request_error", "name", "model_not_found"
            )
        ok = await engine.run_in_engine(lambda: manager.unload(name))
        if not ok:
            raise APIError(
                409,
                f"adapter '{name}' is serving requests; retry when they finish",
                "invalid_request_error",
                "name",
                "adapter_in_use",
            )
        return {"id": name, "object": "adapter", "deleted": True}

    return app
