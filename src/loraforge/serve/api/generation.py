"""The path both generation routes share: resolve the model once, submit the request's `n` choices to the
engine, wait for the first event of each (so an early error is a JSON response, not a broken stream), then
answer with the whole texts or relay the engine's deltas as server-sent events, choice by choice.

`n > 1` is `n` independent sequences of the batch (each with its own generator: seed, seed + 1, ...). They
are prefilled in the same step, in one forward pass, but each computes the prompt's K/V itself: the KV
blocks are not shared (that is the prefix cache's job, keyed by adapter and token prefix)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loraforge.serve.api import choice_fallback, choice_nearest
from loraforge.serve.api import protocol as p
from loraforge.serve.api.errors import APIError, from_engine_error
from loraforge.serve.api.metrics import Metrics
from loraforge.serve.api.resolve import resolve_model
from loraforge.serve.api.response_format import constraint_for
from loraforge.serve.engine.async_engine import AsyncEngine, Event
from loraforge.serve.engine.constraints import Constraint
from loraforge.serve.engine.grammar import Grammars
from loraforge.serve.engine.sequence import SamplingParams
from loraforge.serve.limits import SEED_MIN
from loraforge.serve.model.logprobs import TokenLogprob


def failure_of(event: Event) -> APIError | None:
    """The error of an event that ends a request unsuccessfully ("abort" is never an answer)."""
    if event.error is not None:
        return from_engine_error(event.error)
    if event.finished and event.finish_reason not in ("stop", "length"):
        return APIError(500, "the request was aborted by the server", "server_error")
    return None


def sampling(
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
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=req.bias(),
        # The fallback needs the label's probability (choice_fallback.py); answers list logprobs if asked.
        logprobs=req.num_logprobs() if req.guided_choice_fallback is None else req.num_logprobs() or 0,
        prompt_logprobs=bool(getattr(req, "echo", False)) and req.num_logprobs() is not None,
        answer_state=req.guided_choice_classifier == choice_nearest.NEAREST,
    )


def _choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice `index` of a request: its own seed (seed + index, wrapped into the 64-bit range)."""
    own = SamplingParams(**vars(params))
    if params.seed is not None and index:
        own.seed = (params.seed - SEED_MIN + index) % 2**64 + SEED_MIN
    return own


@dataclass
class Choice:
    """What one choice has produced so far."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    answer_state: torch.Tensor | None = None  # guided_choice_classifier "nearest" (choice_nearest.py)

    def take(self, event: Event) -> None:
        self.text += event.text
        self.logprobs += event.logprobs
        self.completion_tokens = event.completion_tokens
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = event.prompt_logprobs
        if event.finished:
            self.finish_reason = event.finish_reason
            self.answer_state = event.answer_state


@dataclass
class Generation:
    """One request: how its whole answer (`body`) and its stream chunks (`chunks`, `usage_chunk`) look.
    Each gets the model name to report (the merged adapter's own name for a `merge` request)."""

    endpoint: str  # the metrics label: "completions" or "chat"
    req: p._Request
    prompt_ids: list[int]
    max_tokens: int | None
    body: Callable[[str, list[Choice], p.Usage], object]
    chunks: Callable[[str, Choice, Event], list]
    usage_chunk: Callable[[str, p.Usage], object]
    started: float = 0.0  # when it was submitted (time.monotonic)

    async def respond(self, engine: AsyncEngine, metrics: Metrics, grammars: Grammars):
        req = self.req
        choice_fallback.check(req)  # before an adapter is loaded for it
        choice_nearest.check(req)
        adapter, model = await run_in_threadpool(resolve_model, engine, req)
        index = None  # a label index answers instead of decoding (choice_nearest.py)
        if req.guided_choice_classifier == choice_nearest.NEAREST:
            index = await run_in_threadpool(choice_nearest.index_for, engine, adapter, req)
        label = metrics.label(model, adapter is None or adapter.local)
        constraint = await constraint_for(req, grammars)  # compiled off the event loop
        params = sampling(engine, req, len(self.prompt_ids), self.max_tokens, constraint)
        self.started = time.monotonic()
        streams = [
            engine.generate(self.prompt_ids, _choice_params(params, i), adapter) for i in range(req.n or 1)
        ]
        firsts = await asyncio.gather(*(anext(s) for s in streams), return_exceptions=True)
        for first in firsts:
            err = from_engine_error(first) if isinstance(first, BaseException) else failure_of(first)
            if err is not None:
                await _close(streams)
                raise err
        choices = [Choice(i) for i in range(len(streams))]
        first_at = time.monotonic() if any(f.text or f.completion_tokens for f in firsts) else None

        def record(status: str) -> None:
            done = sum(c.completion_tokens for c in choices)
            metrics.observe(
                label,
                self.endpoint,
                status,
                len(self.prompt_ids),
                done,
                self.started,
                first_at,
                time.monotonic(),
            )

        def usage() -> p.Usage:
            return p.Usage.of(len(self.prompt_ids), sum(c.completion_tokens for c in choices))

        fallback = req.guided_choice_fallback
        held = fallback is not None or index is not None  # the label may still change: sent whole at the end

        def settle(c: Choice) -> None:
            """A finished choice's answer: the nearest label instead of the decoded one (with an index), and
            the fallback where the classifier is unsure (choice_fallback.py)."""
            probability = choice_fallback.decoded_probability(
                req.guided_choice, c.text, c.logprobs, c.finish_reason
            )
            if index is not None and c.answer_state is not None:
                c.text, c.finish_reason = choice_nearest.answer(index, c.answer_state, fallback), "stop"
            if fallback is not None:
                c.text = choice_fallback.answer(fallback, req.guided_choice_classifier, c.text, probability)

        events = _merged(firsts, streams)
        if not req.stream:
            try:
                async for i, event in events:
                    if (err := failure_of(event)) is not None:
                        record("error")
                        raise err
                    choices[i].take(event)
            finally:
                await events.aclose()
            record("ok")
            if held:
                for c in choices:
                    settle(c)
            return JSONResponse(self.body(model, choices, usage()).dump())

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def sse() -> AsyncIterator[str]:
            status = "aborted"  # stays "aborted" when the client goes away
            try:
                async for i, event in events:
                    if (err := failure_of(event)) is not None:
                        # After the first event the status line is sent: the error goes in the stream,
                        # as OpenAI sends it (the official client raises it).
                        status = "error"
                        yield f"data: {json.dumps(err.body)}\n\n"
                        return
                    choices[i].take(event)
                    if held:
                        # The label may still be replaced: held back, then sent whole in one event.
                        if not event.finished:
                            continue
                        settle(choices[i])
                        event = _whole(choices[i], event.prompt_tokens)
                    for chunk in self.chunks(model, choices[i], event):
                        yield f"data: {json.dumps(chunk.dump())}\n\n"
                if include_usage:
                    yield f"data: {json.dumps(self.usage_chunk(model, usage()).dump())}\n\n"
                yield "data: [DONE]\n\n"
                status = "ok"
            except Exception as exc:
                status = "error"
                yield f"data: {json.dumps(from_engine_error(exc).body)}\n\n"
            finally:
                await events.aclose()
                record(status)

        return StreamingResponse(sse(), media_type="text/event-stream")


def _whole(choice: Choice, prompt_tokens: int) -> Event:
    """One finished event carrying everything `choice` has produced."""
    return Event(
        choice.text,
        prompt_tokens,
        choice.completion_tokens,
        finished=True,
        finish_reason=choice.finish_reason,
        logprobs=choice.logprobs,
        prompt_logprobs=choice.prompt_logprobs,
    )


async def _close(streams: list[AsyncIterator[Event]]) -> None:
    """Stop the engine's work for these streams (their `finally` aborts the sequence)."""
    for stream in streams:
        await stream.aclose()


async def _merged(firsts: list[Event], streams: list) -> AsyncIterator[tuple[int, Event]]:
    """(choice index, event) of every choice, the first events first, then as they come; closing it stops
    every choice still running."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int) -> None:
        try:
            async for event in streams[i]:
                await queue.put((i, event))
        except Exception as exc:
            await queue.put((i, exc))
        finally:
            await streams[i].aclose()  # when cancelled outside it, its `finally` (the abort) runs now
            await queue.put((i, done))

    for i, first in enumerate(firsts):
        yield i, first
    live = [i for i, first in enumerate(firsts) if not first.finished]
    if len(streams) == 1:  # one choice: no task needed
        try:
            if live:
                async for event in streams[0]:
                    yield 0, event
        finally:
            await streams[0].aclose()
        return
    tasks = [asyncio.create_task(pump(i)) for i in live]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
