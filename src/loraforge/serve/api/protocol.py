"""OpenAI request bodies (pydantic) and response shapes."""

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_serializer

from loraforge.serve.api.response_format import ResponseFormat
from loraforge.serve.api.strict import NoTools, Unsupported
from loraforge.serve.api.strict import Strict as _Strict
from loraforge.serve.api.strict import only as _only
from loraforge.serve.limits import SEED_MAX, SEED_MIN


class StreamOptions(_Strict):
    include_usage: bool = False


class _Request(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # extension (vLLM has it too); 0 = off
    n: Annotated[int | None, _only(None, 1, why="one choice per request")] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    ignore_eos: bool = False  # extension, for benchmarks
    # Structured output (response_format.py): OpenAI's field, and vLLM's names (extra_body) for the others.
    response_format: ResponseFormat | None = None
    guided_choice: list[str] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    presence_penalty: Annotated[float | None, _only(None, 0)] = None
    frequency_penalty: Annotated[float | None, _only(None, 0)] = None
    logit_bias: Annotated[dict[str, float] | None, _only(None, {})] = None
    # Harmless in OpenAI's semantics: they change nothing about the generated text.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(_Request):
    prompt: Any
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    logprobs: Annotated[int | None, _only(None, 0)] = None
    best_of: Annotated[int | None, _only(None, 1)] = None
    suffix: Annotated[str | None, _only(None, "")] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> str | list[int]:
        """One prompt: a string or token ids, alone or as the only element of a list."""
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
            value = value[0]
        elif isinstance(value, list) and value and all(isinstance(v, str | list) for v in value):
            raise ValueError("only one prompt per request")
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return value
        raise ValueError("must be a string or a list of token ids (or a list holding one of these)")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # passed to the chat template, which may use it
    tool_call_id: str | None = None
    tool_calls: NoTools = None
    function_call: Unsupported = None
    refusal: str | None = None
    audio: Unsupported = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"content parts of type {kind!r} are not supported (text only)")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Annotated[bool | None, _only(None, False)] = None
    top_logprobs: Annotated[int | None, _only(None, 0)] = None
    tools: NoTools = None
    tool_choice: NoTools = None
    parallel_tool_calls: bool | None = None  # no tools, so nothing to call in parallel
    functions: NoTools = None
    function_call: NoTools = None
    modalities: Annotated[Any, _only(None, ["text"])] = None
    audio: Unsupported = None
    prediction: Unsupported = None
    reasoning_effort: Unsupported = None
    web_search_options: Unsupported = None


class AdapterLoadRequest(_Strict):
    name: str
    path: str | None = None  # local folder; without it, the name is looked up (registry, then hub)
    pinned: bool = False


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# ---- responses ---------------------------------------------------------------------------------------


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


class CompletionChoice(_Choice):
    text: str
    logprobs: None = None


class Completion(_Streamed):
    """`/v1/completions`, whole or one chunk of a stream (the same shape)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]

    @classmethod
    def of(cls, rid: str, model: str, text: str, finish: str | None, usage: Usage | None = None):
        choice = CompletionChoice(text=text, finish_reason=finish)
        return cls(id=rid, model=model, choices=[choice], usage=usage)


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Choice):
    message: AssistantMessage


class ChatCompletion(_Generated):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage

    @classmethod
    def of(cls, rid: str, model: str, text: str, finish: str | None, usage: Usage) -> "ChatCompletion":
        choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)
        return cls(id=rid, model=model, choices=[choice], usage=usage)


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    _absent_when_none = ("role", "content")


class ChatChunkChoice(_Choice):
    delta: ChatDelta


class ChatCompletionChunk(_Streamed):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]

    @classmethod
    def of(cls, rid: str, model: str, delta: ChatDelta, finish: str | None, usage: Usage | None = None):
        """A chunk with one choice, or (with `usage`) the final usage chunk, which has none."""
        choices = [] if usage else [ChatChunkChoice(delta=delta, finish_reason=finish)]
        return cls(id=rid, model=model, choices=choices, usage=usage)


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
