"""An async client for an OpenAI-compatible teacher: chat completions with retries, backoff, Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from loraforge.errors import LoraforgeError

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class TeacherError(LoraforgeError):
    """The teacher could not be reached or kept failing after all retries."""


def chat_completions_url(url: str) -> str:
    """Accept `http://host:port`, `.../v1` or the full `.../v1/chat/completions` and return the latter."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise TeacherError(f"teacher URL '{url}' must start with http:// or https://")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class TeacherSettings:
    """Where the teacher is and how patiently to ask it."""

    url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.8
    max_tokens: int = 1024
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # Retry-After larger than this is capped: a server asking for an hour would otherwise stall the run.
    retry_after_max_s: float = 300.0
    jitter: float = 0.1


@dataclass
class TeacherReply:
    content: str
    finish_reason: str | None


@dataclass
class TeacherStats:
    """What the client did, for the summary: calls, retries by cause, and time spent waiting."""

    calls: int = 0
    retries: Counter = field(default_factory=Counter)
    waited_s: float = 0.0


class TeacherClient:
    """Send chat completions to the teacher; retry 429, 5xx, timeouts and connection errors with backoff."""

    def __init__(
        self,
        settings: TeacherSettings,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.endpoint = chat_completions_url(settings.url)
        self.stats = TeacherStats()
        self._sleep = sleep
        self._rng = rng or random.Random(0)
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(settings.timeout_s))

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def check_reachable(self) -> None:
        """Fail fast with one clear line when nothing answers at the teacher URL (any HTTP answer is fine)."""
        models_url = self.endpoint.removesuffix("/chat/completions") + "/models"
        try:
            await self._client.get(models_url, timeout=httpx.Timeout(min(10.0, self.settings.timeout_s)))
        except httpx.TransportError as exc:
            raise TeacherError(f"cannot reach the teacher at {self.settings.url}: {_describe(exc)}") from None

    def backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        """Delay before retry `attempt` (0-based): the server's Retry-After if given, else exponential."""
        s = self.settings
        if retry_after is not None:
            return min(retry_after, s.retry_after_max_s)
        delay = min(s.backoff_max_s, s.backoff_base_s * (2**attempt))
        return delay * (1 + s.jitter * self._rng.random())

    async def chat(
        self,
        messages: list[dict[str, Any]],
        request_id: str | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> TeacherReply:
        """One chat completion, retried on transient failures; raises TeacherError when retries run out.

        `response_format` is sent as OpenAI's field of that name (structured outputs), when given."""
        s = self.settings
        body: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
        }
        if response_format is not None:
            body["response_format"] = response_format
        headers = {"X-Request-ID": request_id} if request_id else {}
        for attempt in range(s.max_retries + 1):
            retry_after: float | None = None
            self.stats.calls += 1
            try:
                response = await self._client.post(self.endpoint, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                cause, detail = "timeout", _describe(exc)
            except httpx.TransportError as exc:
                cause, detail = "connection", _describe(exc)
            else:
                if response.status_code == 200:
                    return _reply_from(response)
                detail = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRY_STATUSES:
                    raise TeacherError(f"teacher rejected the request ({detail})")
                cause = str(response.status_code)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == s.max_retries:
                raise TeacherError(f"teacher failed after {s.max_retries + 1} attempts (last: {detail})")
            self.stats.retries[cause] += 1
            delay = self.backoff_delay(attempt, retry_after)
            self.stats.waited_s += delay
            await self._sleep(delay)
        raise AssertionError("unreachable")  # the loop either returns or raises


def _reply_from(response: httpx.Response) -> TeacherReply:
    try:
        choice = response.json()["choices"][0]
        content = choice["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise TeacherError(
            f"teacher answered 200 but not an OpenAI chat completion: {response.text[:200]}"
        ) from None
    return TeacherReply(content=content, finish_reason=choice.get("finish_reason"))


def _describe(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__
