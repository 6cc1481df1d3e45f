"""What makes a request unservable as given: the checks `Engine.add_request` runs before queueing it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraforge.errors import LoraforgeError
from loraforge.serve.limits import MAX_LOGPROBS
from loraforge.serve.model import penalties

if TYPE_CHECKING:
    from loraforge.serve.engine.engine import Engine
    from loraforge.serve.engine.sequence import SamplingParams


class RequestError(LoraforgeError):
    """A request the engine cannot serve as given (too long, bad parameters); `param` names the field."""

    def __init__(self, param: str, message: str, code: str | None = None):
        super().__init__(f"{param}: {message}")
        self.param, self.code = param, code


def validate_request(engine: Engine, prompt_ids: list[int], params: SamplingParams) -> None:
    """Raise RequestError for a request that can never run (or would fail inside a step)."""
    lim = engine.config.limits
    if not prompt_ids:
        raise RequestError("prompt", "must not be empty")
    if len(prompt_ids) > engine.max_prompt_tokens:
        raise RequestError(
            "prompt",
            f"{len(prompt_ids)} tokens: this server takes prompts of at most {engine.max_prompt_tokens} "
            f"tokens (the model's context is {engine.max_model_len})",
            "context_length_exceeded",
        )
    bad = next((t for t in prompt_ids if not 0 <= t < engine.vocab_size), None)
    if bad is not None:
        # Checked here, not left to the embedding lookup: a negative id would silently wrap around,
        # and an out-of-range one would fail the whole batch's step.
        raise RequestError("prompt", f"token id {bad} is outside the vocabulary [0, {engine.vocab_size})")
    if params.max_tokens < 1:
        raise RequestError("max_tokens", "must be at least 1")
    if params.max_tokens > engine.max_tokens_limit:
        raise RequestError("max_tokens", f"must be at most {engine.max_tokens_limit}")
    if params.top_p <= 0 or params.top_p > 1:
        raise RequestError("top_p", "must be in (0, 1]")
    if params.temperature < 0:
        raise RequestError("temperature", "must be >= 0")
    if len(params.stop) > lim.max_stop_sequences:
        raise RequestError("stop", f"at most {lim.max_stop_sequences} stop sequences")
    if any(len(s) > lim.max_stop_chars for s in params.stop):
        raise RequestError("stop", f"a stop sequence may have at most {lim.max_stop_chars} characters")
    if engine.blocks.blocks_needed(len(prompt_ids) + 1) > engine.blocks.num_blocks:
        raise RequestError("prompt", "longer than the whole KV cache", "context_length_exceeded")
    if (bad_processor := penalties.check(params, engine.vocab_size)) is not None:
        raise RequestError(*bad_processor)
    if params.logprobs is not None and not 0 <= params.logprobs <= MAX_LOGPROBS:
        raise RequestError("logprobs", f"must be in [0, {MAX_LOGPROBS}]")
    if params.prompt_logprobs and params.logprobs is None:
        raise RequestError("logprobs", "prompt logprobs need logprobs")
