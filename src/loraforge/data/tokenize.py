"""Tokenize examples for causal-LM training: prompt tokens are masked out of the loss, completions not."""

from dataclasses import dataclass

from loraforge.data.examples import Example

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX at prompt positions

    def __len__(self) -> int:
        return len(self.input_ids)


def end_of_completion_ids(tokenizer) -> list[int]:
    """Tokens that close a completion: the EOS token (for chat models, the end-of-turn token)."""
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def tokenize_example(example: Example, tokenizer, max_length: int) -> TokenizedExample:
    """Prompt and completion are tokenized separately, exactly as at inference time (prompt, then generate).

    Too-long examples lose prompt tokens from the left, so the completion and the end of the prompt survive.
    """
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids + end_of_completion_ids(tokenizer)
    completion_ids = completion_ids[:max_length]
    keep = max_length - len(completion_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep > 0 else []
    return TokenizedExample(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    )
