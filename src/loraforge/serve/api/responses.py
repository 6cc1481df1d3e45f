"""OpenAI response bodies and stream chunks (pydantic); `protocol.py` re-exports them with the requests."""

import time
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, model_serializer


class _Response(BaseModel):
    """A response body. Fields named in `_absent_when_none` are left out when None (an optional part, such
    as `usage` on a stream chunk); other None fields are sent as null, as OpenAI does (`finish_reason`)."""

    _absent_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler):
        data = handler(self)
        for name in self._absent_when_none:
            if data.get(name) is None:
                data.pop(name, None)
        return data

    def dump(self) -> dict:
        return self.model_dump()


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class _Generated(_Response):
    """What every generation response and stream chunk starts with."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class _Streamed(_Generated):
    """A response that is also a stream chunk: `usage` only on the chunk (or whole answer) that has it."""

    usage: Usage | None = None
    _absent_when_none = ("usage",)


class _Choice(_Response):
    index: int = 0
    finish_reason: str | None


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Response):
    """`choices[].logprobs` of chat: one entry per generated token (serve/api/logprobs.py)."""

    content: list[ChatTokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(_Response):
    """`choices[].logprobs` of legacy completions: parallel lists, one position each."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Choice):
    text: str
    logprobs: CompletionLogprobs | None = None


class Completion(_Streamed):
    """`/v1/completions`, whole or one chunk of a stream (the same shape)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Choice):
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None


class ChatCompletion(_Generated):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    _absent_when_none = ("role", "content")


class ChatChunkChoice(_Choice):
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(_Streamed):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loraforge"
    parent: str | None = None
    _absent_when_none = ("parent",)


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AdapterStatus(_Response):
    id: str
    object: Literal["adapter"] = "adapter"
    resident: bool
    pinned: bool


class AdapterDeleted(_Response):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool = True


class Health(_Response):
    status: Literal["ok", "error"]
    model: str
    error: str | None = None
    _absent_when_none = ("error",)
