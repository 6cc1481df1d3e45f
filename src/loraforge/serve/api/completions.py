"""`/v1/models`, `/v1/completions` and `/v1/chat/completions`: prompt in, text out, whole or streamed.

Both generation routes share one path (generation.py); here is only what differs: the prompt (a string or
token ids, or templated messages) and the shapes of the answer and of its stream chunks."""

import time

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from loraforge.serve.api import logprobs as lp
from loraforge.serve.api import protocol as p
from loraforge.serve.api.deps import get_engine, get_grammars, get_metrics
from loraforge.serve.api.errors import APIError
from loraforge.serve.api.generation import Choice, Generation
from loraforge.serve.api.metrics import Metrics
from loraforge.serve.engine.async_engine import AsyncEngine, Event
from loraforge.serve.engine.grammar import Grammars

router = APIRouter()


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
    text = _token_text(engine)
    builders: dict[int, lp.CompletionLogprobs] = {}  # per choice: the text offsets so far

    def logprobs(choice: Choice, entries, first: bool) -> p.CompletionLogprobs | None:
        """This part's logprobs; the choice's first part starts with the echoed prompt's tokens."""
        if req.logprobs is None:
            return None
        builder = builders.setdefault(choice.index, lp.CompletionLogprobs(text))
        if first and req.echo:
            return builder.part((choice.prompt_logprobs or []) + entries, ids[0])
        return builder.part(entries)

    def body(model: str, choices: list[Choice], usage: p.Usage) -> p.Completion:
        out = [
            p.CompletionChoice(
                index=c.index,
                text=echo + c.text,
                finish_reason=c.finish_reason,
                logprobs=logprobs(c, c.logprobs, True),
            )
            for c in choices
        ]
        return p.Completion(id=rid, model=model, choices=out, usage=usage)

    def chunks(model: str, choice: Choice, event: Event) -> list[p.Completion]:
        first = choice.index not in started
        started.add(choice.index)
        out = p.CompletionChoice(
            index=choice.index,
            text=(echo if first else "") + event.text,
            finish_reason=event.finish_reason,
            logprobs=logprobs(choice, event.logprobs, first),
        )
        return [p.Completion(id=rid, model=model, choices=[out])]

    started: set[int] = set()

    def usage_chunk(model: str, usage: p.Usage) -> p.Completion:
        return p.Completion(id=rid, model=model, choices=[], usage=usage)

    gen = Generation("completions", req, ids, req.max_tokens, body, chunks, usage_chunk)
    return await gen.respond(engine, metrics, grammars)


def _token_text(engine: AsyncEngine) -> lp.TokenText:
    """The engine's `TokenText`, made once (its cache of token texts is shared by all requests)."""
    text = getattr(engine, "_token_text", None)
    if text is None:
        text = engine._token_text = lp.TokenText(engine.tokenizer)
    return text


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
    text = _token_text(engine)
    started: set[int] = set()  # choices whose role chunk went out

    def logprobs(entries) -> p.ChatLogprobs | None:
        return lp.chat(entries, text) if req.logprobs else None

    def body(model: str, choices: list[Choice], usage: p.Usage) -> p.ChatCompletion:
        out = [
            p.ChatChoice(
                index=c.index,
                message=p.AssistantMessage(content=c.text),
                finish_reason=c.finish_reason,
                logprobs=logprobs(c.logprobs),
            )
            for c in choices
        ]
        return p.ChatCompletion(id=rid, model=model, choices=out, usage=usage)

    def chunk(model: str, index: int, delta: p.ChatDelta, finish: str | None = None, entries=None):
        choice = p.ChatChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=entries)
        return p.ChatCompletionChunk(id=rid, model=model, choices=[choice])

    def chunks(model: str, choice: Choice, event: Event) -> list[p.ChatCompletionChunk]:
        out, i = [], choice.index
        if i not in started:
            started.add(i)
            out.append(chunk(model, i, p.ChatDelta(role="assistant", content="")))
        if event.text or event.logprobs:
            out.append(chunk(model, i, p.ChatDelta(content=event.text), None, logprobs(event.logprobs)))
        if event.finished:
            out.append(chunk(model, i, p.ChatDelta(), event.finish_reason))
        return out

    def usage_chunk(model: str, usage: p.Usage) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(id=rid, model=model, choices=[], usage=usage)

    max_tokens = req.max_completion_tokens or req.max_tokens
    gen = Generation("chat", req, ids, max_tokens, body, chunks, usage_chunk)
    return await gen.respond(engine, metrics, grammars)
