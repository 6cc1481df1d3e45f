"""Few-shot examples for the gateway's `fewshot` routes: each task's index of good examples is built from the
store off the event loop and rebuilt in the background every `refresh_s`, so a request never waits for one.
Until a task's first index is ready (or while it has no good examples) its calls are answered plainly."""

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool

from loraforge.fewshot import ExampleIndex, FewShotExample, fewshot_messages, fewshot_prompt
from loraforge.gateway.validation import ParsedRequest
from loraforge.store.routes import FEWSHOT, Route
from loraforge.store.store import Store

log = logging.getLogger("loraforge.gateway")

_Key = tuple[str, float | None]  # (task, min_score): what decides which calls are examples


class FewShotIndexes:
    def __init__(self, store: Store, routes: dict[str, Route] | Any, refresh_s: float) -> None:
        """`routes`: the RouteTable whose fewshot routes are kept indexed."""
        self.store = store
        self.table = routes
        self.refresh_s = refresh_s
        self.indexes: dict[_Key, ExampleIndex] = {}
        self._building: dict[_Key, asyncio.Task] = {}
        self._loop_task: asyncio.Task | None = None
        self._failing = False  # warn once per outage

    @staticmethod
    def key(route: Route) -> _Key:
        return (route.task, route.min_score)

    def index_for(self, route: Route) -> ExampleIndex | None:
        """The route's current index (None while its first build runs, which this starts)."""
        index = self.indexes.get(self.key(route))
        if index is None:
            self._schedule(route)
        return index

    async def examples(self, route: Route, req: ParsedRequest) -> list[FewShotExample]:
        index = self.index_for(route)
        if not index:
            return []
        query = req.body.get("messages") if req.endpoint == "chat.completions" else _prompt(req.body)
        if not isinstance(query, list | str):
            return []
        # BM25 scores every example: a few hundred microseconds that stay off the event loop.
        return await run_in_threadpool(index.top_k, query, route.k)

    def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._building.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            routed = {self.key(r): r for r in self.table.routes.values() if r.stage == FEWSHOT}
            for key in [k for k in self.indexes if k not in routed]:
                del self.indexes[key]  # the route moved on: free its examples
            for route in routed.values():
                self._schedule(route)
            await asyncio.sleep(self.refresh_s)

    def _schedule(self, route: Route) -> None:
        key = self.key(route)
        if key in self._building:
            return
        task = asyncio.ensure_future(self._build(key))
        self._building[key] = task
        task.add_done_callback(lambda _: self._building.pop(key, None))

    async def _build(self, key: _Key) -> None:
        task, min_score = key
        try:
            index = await run_in_threadpool(ExampleIndex.from_store, self.store, task, min_score=min_score)
        except Exception as exc:  # a down store: keep the examples read last, answer plainly without any
            if not self._failing:
                log.warning(
                    "few-shot examples of %s not refreshed (keeping the last ones read): %s", task, exc
                )
            self._failing = True
            return
        self._failing = False
        self.indexes[key] = index


def with_examples(
    req: ParsedRequest, examples: list[FewShotExample], model: str | None
) -> ParsedRequest | None:
    """The request as sent upstream with the examples laid out in it (and `model` when given); None when
    its prompt has no place for them (token ids, a batch of prompts)."""
    body = dict(req.upstream_body)
    if req.endpoint == "chat.completions":
        body["messages"] = fewshot_messages(body["messages"], examples)
    else:
        prompt = _prompt(body)
        if not isinstance(prompt, str):
            return None
        body["prompt"] = fewshot_prompt(prompt, examples)
    if model is not None:
        body["model"] = model
    return replace(req, upstream_body=body)


def _prompt(body: dict[str, Any]) -> Any:
    prompt = body.get("prompt")
    return prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else prompt
