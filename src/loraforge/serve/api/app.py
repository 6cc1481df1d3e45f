"""The OpenAI-compatible HTTP API over the async engine.

The event loop only moves bytes: tokenizing, chat templating and file-system lookups run in the thread
pool, the model on the engine thread."""

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loraforge.errors import ModelNotFoundError
from loraforge.serve.api import protocol as p
from loraforge.serve.api.adapters import adapter_routes
from loraforge.serve.api.auth import key_checker
from loraforge.serve.api.body_limit import BodyLimitMiddleware
from loraforge.serve.api.errors import APIError, from_engine_error, install_error_handlers
from loraforge.serve.api.metrics import Metrics
from loraforge.serve.engine.async_engine import AsyncEngine, Event
from loraforge.serve.engine.sequence import SamplingParams


def failure_of(event: Event) -> APIError | None:
    """The error of an event that ends a request unsuccessfully ("abort" is never an answer)."""
    if event.error is not None:
        return from_engine_error(event.error)
    if event.finished and event.finish_reason not in ("stop", "length"):
        return APIError(500, "the request was aborted by the server", "server_error")
    return None


def create_app(
    engine: AsyncEngine,
    api_key: str | None = None,
    admin_api_key: str | None = None,
    adapter_root: Path | None = None,
) -> FastAPI:
    """Build the app; `engine` is started with the app and drained (in-flight requests finish) at shutdown.

    `admin_api_key` guards changes of the adapter set; `adapter_root` confines adapter paths given at run
    time (see serve/api/adapters.py). Limits come from `engine.engine.config.limits`."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        yield
        await engine.drain()
        engine.close()

    limits = engine.engine.config.limits
    app = FastAPI(title="loraforge", lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    install_error_handlers(app)
    metrics = Metrics(engine, limits.max_metric_models)
    tokenizer = engine.engine.tokenizer
    manager = engine.engine.adapters
    check_key = Depends(key_checker(api_key))
    app.include_router(adapter_routes(engine, api_key, admin_api_key, adapter_root))

    def adapter_for(model: str) -> tuple[str | None, bool]:
        """(adapter or None for the base model, whether the name is the operator's); runs in a thread."""
        if model == engine.model_name:
            return None, True
        try:
            manager.locate(model)
        except ModelNotFoundError as exc:
            raise APIError(
                404,
                f"the model '{model}' does not exist ({exc})",
                "invalid_request_error",
                "model",
                "model_not_found",
            ) from None
        return model, manager.is_local(model)

    def sampling(req: p._Request, num_prompt: int, max_tokens: int | None) -> SamplingParams:
        context = engine.engine.max_model_len
        # (A prompt that is too long by itself is the engine's error, about the prompt.)
        fits = num_prompt <= engine.engine.max_prompt_tokens
        if max_tokens is not None and fits and num_prompt + max_tokens > context:
            raise APIError(
                400,
                f"max_tokens: the model's context is {context} tokens; the prompt ({num_prompt}) plus "
                f"max_tokens ({max_tokens}) exceed it",
                "invalid_request_error",
                "max_tokens",
                "context_length_exceeded",
            )
        return SamplingParams(
            max_tokens=max_tokens or min(engine.engine.max_tokens_limit, context - num_prompt),
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
            raise from_engine_error(exc) from None
        if (err := failure_of(first)) is not None:
            raise err
        return first, stream

    async def events(first: Event, stream: AsyncIterator[Event]) -> AsyncIterator[Event]:
        yield first
        async for event in stream:
            yield event

    async def run(
        endpoint: str, req: p._Request, prompt_ids: list[int], max_tokens: int | None, make_body, make_chunks
    ):
        adapter, local = await run_in_threadpool(adapter_for, req.model)
        label = metrics.label(req.model, local)
        params = sampling(req, len(prompt_ids), max_tokens)
        started = time.monotonic()
        first, stream = await start(prompt_ids, params, adapter)
        first_at = time.monotonic() if first.text or first.completion_tokens else None

        def record(last: Event, status: str) -> None:
            metrics.observe(
                label,
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
            if (err := failure_of(last)) is not None:
                record(last, "error")
                raise err
            record(last, "ok")
            use = p.usage(last.prompt_tokens, last.completion_tokens)
            return JSONResponse(make_body(text, last.finish_reason, use))

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def sse() -> AsyncIterator[str]:
            last, status = first, "aborted"  # stays "aborted" when the client goes away
            try:
                async for event in events(first, stream):
                    last = event
                    if (err := failure_of(event)) is not None:
                        # After the first event the status line is sent: the error goes in the stream,
                        # as OpenAI sends it (the official client raises it).
                        status = "error"
                        yield f"data: {json.dumps(err.body)}\n\n"
                        return
                    for chunk in make_chunks(event, include_usage):
                        yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
                status = "ok"
            except Exception as exc:
                status = "error"
                yield f"data: {json.dumps(from_engine_error(exc).body)}\n\n"
            finally:
                record(last, status)

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.get("/health")
    async def health():
        if not engine.alive:
            body = {"status": "error", "model": engine.model_name, "error": f"engine stopped: {engine.dead}"}
            return JSONResponse(body, status_code=503)
        return {"status": "ok", "model": engine.model_name}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[check_key])
    async def models():
        now = int(time.time())
        base = {"id": engine.model_name, "object": "model", "created": now, "owned_by": "loraforge"}
        adapters = [
            {"id": n, "object": "model", "created": now, "owned_by": "loraforge", "parent": engine.model_name}
            for n in await run_in_threadpool(manager.known)
        ]
        return {"object": "list", "data": [base, *adapters]}

    @app.post("/v1/completions", dependencies=[check_key])
    async def completions(req: p.CompletionRequest):
        prompt = req.prompt
        if isinstance(prompt, str):
            ids = await run_in_threadpool(lambda: tokenizer(prompt).input_ids)
        else:
            ids = list(prompt)
        if not ids:
            raise APIError(400, "prompt: must not be empty", "invalid_request_error", "prompt")
        rid = p.new_id("cmpl")
        echo = ""
        if req.echo:
            echo = prompt if isinstance(prompt, str) else await run_in_threadpool(tokenizer.decode, ids)
        state = {"echoed": False}

        def body(text, finish, use):
            return p.completion_body(rid, req.model, echo + text, finish, use, False)

        def chunks(event: Event, include_usage: bool):
            prefix = "" if state["echoed"] else echo
            state["echoed"] = True
            out = [p.completion_body(rid, req.model, prefix + event.text, event.finish_reason, None, True)]
            if event.finished and include_usage:
                usage_chunk = p.completion_body(
                    rid, req.model, "", None, p.usage(event.prompt_tokens, event.completion_tokens), True
                )
                usage_chunk["choices"] = []
                out.append(usage_chunk)
            return out

        return await run("completions", req, ids, req.max_tokens, body, chunks)

    @app.post("/v1/chat/completions", dependencies=[check_key])
    async def chat(req: p.ChatRequest):
        messages = []
        for m in req.messages:
            message = {"role": m.role if m.role != "developer" else "system", "content": m.text()}
            if m.name is not None:
                message["name"] = m.name
            messages.append(message)

        def encode() -> list[int]:
            try:
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                return tokenizer(text, add_special_tokens=False).input_ids
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # the Rust tokenizer's panics are BaseExceptions, not Exceptions
                raise APIError(
                    400,
                    f"messages: cannot be templated or tokenized ({exc})",
                    "invalid_request_error",
                    "messages",
                ) from None

        ids = await run_in_threadpool(encode)
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

    return app
