"""`/v1/models`, `/v1/completions` and `/v1/chat/completions`: prompt in, text out, whole or streamed.

Both generation routes share one path (`_Generation`): resolve the model name once, check the budget, submit
to the engine, wait for the first event (so an early error is a JSON response, not a broken stream), then
answer with the whole text or relay the engine's deltas as server-sent events."""

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loraforge.errors import ModelNotFoundError
from loraforge.serve.api import protocol as p
from loraforge.serve.api.deps import get_engine, get_grammars, get_metrics
from loraforge.serve.api.errors import APIError, from_engine_error
from loraforge.serve.api.metrics import Metrics
from loraforge.serve.api.response_format import constraint_for
from loraforge.serve.engine.async_engine import AsyncEngine, Event
from loraforge.serve.engine.constraints import Constraint
from loraforge.serve.engine.grammar import Grammars
from loraforge.serve.engine.sequence import SamplingParams
from loraforge.serve.lora.manager import AdapterRef

router = APIRouter()


def failure_of(event: Event) -> APIError | None:
    """The error of an event that ends a request unsuccessfully ("abort" is never an answer)."""
    if event.error is not None:
        return from_engine_error(event.error)
    if event.finished and event.finish_reason not in ("stop", "length"):
        return APIError(500, "the request was aborted by the server", "server_error")
    return None


def _resolve(engine: AsyncEngine, model: str) -> AdapterRef | None:
    """The adapter `model` names (None: the base model); runs in a thread (it reads the file system)."""
    try:
        return engine.resolve(model)
    except ModelNotFoundError as exc:
        raise APIError(
            404,
            f"the model '{model}' does not exist ({exc})",
            "invalid_request_error",
            "model",
            "model_not_found",
        ) from None


def _sampling(
    engine: AsyncEngine,
    req: p._Request,
    num_prompt: int,
    max_tokens: int | None,
    constraint: Constraint | None = None,
) -> SamplingParams:
    context = engine.max_model_len
    # (A prompt that is too long by itself is the engine's error, about the prompt.)
    fits = num_prompt <= engine.max_prompt_tokens
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
        max_tokens=max_tokens or min(engine.max_tokens_limit, context - num_prompt),
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        seed=req.seed,
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
        constraint=constraint,
    )


@dataclass
class _Generation:
    """One request's generation: how its whole answer and its stream chunks are shaped (`body`, `chunks`)."""

    endpoint: str  # the metrics label: "completions" or "chat"
    req: p._Request
    prompt_ids: list[int]
    max_tokens: int | None
    body: Callable[[str, str | None, p.Usage], p.Completion | p.ChatCompletion]
    chunks: Callable[[Event, bool], list[p.Completion | p.ChatCompletionChunk]]
    started: float = 0.0  # when it was submitted (time.monotonic)

    async def respond(self, engine: AsyncEngine, metrics: Metrics, grammars: Grammars):
        req = self.req
        adapter = await run_in_threadpool(_resolve, engine, req.model)
        label = metrics.label(req.model, adapter is None or adapter.local)
        constraint = await constraint_for(req, grammars)
        params = _sampling(engine, req, len(self.prompt_ids), self.max_tokens, constraint)
        self.started = time.monotonic()
        stream = engine.generate(self.prompt_ids, params, adapter)
        try:
            first = await anext(stream)
        except Exception as exc:
            raise from_engine_error(exc) from None
        if (err := failure_of(first)) is not None:
            raise err
        first_at = time.monotonic() if first.text or first.completion_tokens else None

        def record(last: Event, status: str) -> None:
            metrics.observe(
                label,
                self.endpoint,
                status,
                last.prompt_tokens,
                last.completion_tokens,
                self.started,
                first_at,
                time.monotonic(),
            )

        async def events() -> AsyncIterator[Event]:
            yield first
            async for event in stream:
                yield event

        if not req.stream:
            text, last = "", first
            async for event in events():
                text, last = text + event.text, event
            if (err := failure_of(last)) is not None:
                record(last, "error")
                raise err
            record(last, "ok")
            usage = p.Usage.of(last.prompt_tokens, last.completion_tokens)
            return JSONResponse(self.body(text, last.finish_reason, usage).dump())

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def sse() -> AsyncIterator[str]:
            last, status = first, "aborted"  # stays "aborted" when the client goes away
            try:
                async for event in events():
                    last = event
                    if (err := failure_of(event)) is not None:
                        # After the first event the status line is sent: the error goes in the stream,
                        # as OpenAI sends it (the official client raises it).
                        status = "error"
                        yield f"data: {json.dumps(err.body)}\n\n"
                        return
                    for chunk in self.chunks(event, include_usage):
                        yield f"data: {json.dumps(chunk.dump())}\n\n"
                yield "data: [DONE]\n\n"
                status = "ok"
            except Exception as exc:
                status = "error"
                yield f"data: {json.dumps(from_engine_error(exc).body)}\n\n"
            finally:
                record(last, status)

        return StreamingResponse(sse(), media_type="text/event-stream")


@router.get("/v1/models", response_model=p.ModelList)
async def models(engine: AsyncEngine = Depends(get_engine)):
    now = int(time.time())
    base = p.ModelCard(id=engine.model_name, created=now)
    adapters = [
        p.ModelCard(id=n, created=now, parent=engine.model_name) for n in await engine.known_adapters()
    ]
    return p.ModelList(data=[base, *adapters]).dump()


@router.post("/v1/completions", response_model=p.Completion)
async def completions(
    req: p.CompletionRequest,
    engine: AsyncEngine = Depends(get_engine),
    metrics: Metrics = Depends(get_metrics),
    grammars: Grammars = Depends(get_grammars),
):
    tokenizer, prompt = engine.tokenizer, req.prompt
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
    echoed = False

    def body(text: str, finish: str | None, usage: p.Usage) -> p.Completion:
        return p.Completion.of(rid, req.model, echo + text, finish, usage)

    def chunks(event: Event, include_usage: bool) -> list[p.Completion]:
        nonlocal echoed
        prefix = "" if echoed else echo
        echoed = True
        out = [p.Completion.of(rid, req.model, prefix + event.text, event.finish_reason)]
        if event.finished and include_usage:
            usage_chunk = p.Completion.of(
                rid, req.model, "", None, p.Usage.of(event.prompt_tokens, event.completion_tokens)
            )
            usage_chunk.choices = []
            out.append(usage_chunk)
        return out

    generation = _Generation("completions", req, ids, req.max_tokens, body, chunks)
    return await generation.respond(engine, metrics, grammars)


@router.post("/v1/chat/completions", response_model=p.ChatCompletion)
async def chat(
    req: p.ChatRequest,
    engine: AsyncEngine = Depends(get_engine),
    metrics: Metrics = Depends(get_metrics),
    grammars: Grammars = Depends(get_grammars),
):
    tokenizer = engine.tokenizer
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
    role_sent = False

    def body(text: str, finish: str | None, usage: p.Usage) -> p.ChatCompletion:
        return p.ChatCompletion.of(rid, req.model, text, finish, usage)

    def chunks(event: Event, include_usage: bool) -> list[p.ChatCompletionChunk]:
        nonlocal role_sent
        out = []
        if not role_sent:
            role_sent = True
            out.append(
                p.ChatCompletionChunk.of(rid, req.model, p.ChatDelta(role="assistant", content=""), None)
            )
        if event.text:
            out.append(p.ChatCompletionChunk.of(rid, req.model, p.ChatDelta(content=event.text), None))
        if event.finished:
            out.append(p.ChatCompletionChunk.of(rid, req.model, p.ChatDelta(), event.finish_reason))
            if include_usage:
                usage = p.Usage.of(event.prompt_tokens, event.completion_tokens)
                out.append(p.ChatCompletionChunk.of(rid, req.model, p.ChatDelta(), None, usage))
        return out

    max_tokens = req.max_completion_tokens or req.max_tokens
    return await _Generation("chat", req, ids, max_tokens, body, chunks).respond(engine, metrics, grammars)
