"""OpenAI request bodies (pydantic); the response shapes are in responses.py (re-exported here)."""

import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from loraforge.serve.api.choice_fallback import ChoiceFallback
from loraforge.serve.api.response_format import ResponseFormat
from loraforge.serve.api.responses import *  # noqa: F403 - the routes use `protocol.X` for both
from loraforge.serve.api.strict import NoTools, Unsupported
from loraforge.serve.api.strict import Strict as _Strict
from loraforge.serve.api.strict import only as _only
from loraforge.serve.limits import (
    MAX_CHOICES,
    MAX_LOGPROBS,
    MAX_MERGE_WEIGHT,
    MAX_MERGED_ADAPTERS,
    SEED_MAX,
    SEED_MIN,
)
from loraforge.serve.model.penalties import MAX_BIAS, MAX_PENALTY


class StreamOptions(_Strict):
    include_usage: bool = False


class MergeRequest(_Strict):
    """Extension, LoRAX's per-request merge: serve `sum(weight * adapter)` of loaded adapters, e.g.
    `{"adapters": {"a": 0.5, "b": 0.5}, "method": "ties", "density": 0.2}` (serve/lora/merge.py)."""

    # name -> weight; bounded so that a merge cannot overflow the model's activations
    adapters: dict[str, Annotated[float, Field(ge=-MAX_MERGE_WEIGHT, le=MAX_MERGE_WEIGHT)]] = Field(
        min_length=1, max_length=MAX_MERGED_ADAPTERS
    )
    method: Literal["linear", "ties"] = "linear"
    density: float = Field(1.0, gt=0.0, le=1.0)  # TIES: the fraction of each delta's entries kept
    majority_sign_method: Literal["total", "frequency"] = "total"  # TIES: how the sign is elected


class _Request(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # extension (vLLM has it too); 0 = off
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
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
    guided_choice_fallback: ChoiceFallback | None = None  # extension: choice_fallback.py
    guided_choice_classifier: Literal["decode", "nearest"] = "decode"  # extension: choice_nearest.py
    presence_penalty: float | None = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    frequency_penalty: float | None = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    # token id (a decimal string, as JSON keys are) -> bias; ids are checked against the vocabulary later
    logit_bias: dict[str, float] | None = None
    merge: MergeRequest | None = None  # extension: serve a weighted merge of loaded adapters (merge.py)
    # Harmless in OpenAI's semantics: they change nothing about the generated text.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.strip().lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids (integers), not {key!r}")
            if not -MAX_BIAS <= value[key] <= MAX_BIAS:  # (NaN fails this too)
                raise ValueError(f"the bias of token {key} must be in [-{MAX_BIAS:g}, {MAX_BIAS:g}]")
        return value

    def bias(self) -> dict[int, float] | None:
        return {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None

    def num_logprobs(self) -> int | None:
        """Alternatives per position the answer lists; None: no logprobs at all."""
        raise NotImplementedError

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(_Request):
    prompt: Any
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: Annotated[int | None, _only(None, 1)] = None
    suffix: Annotated[str | None, _only(None, "")] = None

    def num_logprobs(self) -> int | None:
        return self.logprobs

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
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
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

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("needs logprobs to be true")
        return value

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class AdapterLoadRequest(_Strict):
    name: str
    path: str | None = None  # local folder; without it, the name is looked up (registry, then hub)
    pinned: bool = False


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
