"""The two sides of a comparison and asking one of them, over its OpenAI-compatible API, for an answer."""

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from loraforge.curation.call_examples import output_text
from loraforge.errors import LoraforgeError

GENERAL = "general"
ADAPTER_PREFIX = "adapter:"
FEWSHOT = "fewshot"  # the general model prompted with the k most similar train examples
FEWSHOT_PREFIX = "fewshot:"  # "fewshot:NAME": a specialist-server model (e.g. the base) with examples
SIDES_HELP = "'general', 'adapter:NAME', 'fewshot' or 'fewshot:MODEL'"


@dataclass(frozen=True)
class Side:
    label: str  # "general", "adapter:NAME", "fewshot" or "fewshot:MODEL"
    url: str | None  # OpenAI base URL; None when the answers come from the store (shadow pairs)
    model: str
    api_key: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.label.startswith(ADAPTER_PREFIX)

    @property
    def is_fewshot(self) -> bool:
        return is_fewshot(self.label)


def is_fewshot(label: str) -> bool:
    return label == FEWSHOT or label.startswith(FEWSHOT_PREFIX)


def on_general_upstream(label: str) -> bool:
    """Whether the side is answered by the general model's API (priced by its tokens)."""
    return label in (GENERAL, FEWSHOT)


@dataclass
class Answer:
    text: str | None  # None when the call failed
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None

    @property
    def tokens(self) -> int | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


def parse_side(spec: str, option: str) -> str:
    """Check a side: 'general', 'adapter:NAME', 'fewshot' or 'fewshot:MODEL'."""
    if spec in (GENERAL, FEWSHOT):
        return spec
    for prefix in (ADAPTER_PREFIX, FEWSHOT_PREFIX):
        if spec.startswith(prefix) and len(spec) > len(prefix):
            return spec
    raise LoraforgeError(f"{option} {spec!r}: use {SIDES_HELP}")


async def ask(
    client: httpx.AsyncClient, side: Side, messages: list[dict[str, str]], max_tokens: int
) -> Answer:
    """One greedy chat completion with only standard fields; a failure is an answer with an error."""
    body: dict[str, Any] = {
        "model": side.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    headers = {"authorization": f"Bearer {side.api_key}"} if side.api_key else {}
    started = time.perf_counter()
    try:
        resp = await client.post(f"{side.url.rstrip('/')}/chat/completions", json=body, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status_code != 200:
            return Answer(None, elapsed, error=f"HTTP {resp.status_code}: {resp.text[:200]}")
        data = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Answer(None, (time.perf_counter() - started) * 1000, error=f"{type(exc).__name__}: {exc}")
    usage = data.get("usage") or {} if isinstance(data, dict) else {}
    text = output_text("chat.completions", data) if isinstance(data, dict) else None
    return Answer(
        text,
        elapsed,
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        None if text is not None else "the answer has no text",
    )


async def ask_all(
    side: Side, inputs: list[list[dict[str, str]]], max_tokens: int, concurrency: int, timeout_s: float
) -> list[Answer]:
    """Answers of `side` to every input, `concurrency` at a time, in input order."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=timeout_s) as client:

        async def one(messages: list[dict[str, str]]) -> Answer:
            async with limit:
                return await ask(client, side, messages, max_tokens)

        return list(await asyncio.gather(*(one(m) for m in inputs)))
