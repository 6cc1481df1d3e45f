"""Lay few-shot examples out in a request: as prior user/assistant turns after the system prompt (chat), or
as worked examples before the prompt (text completions)."""

from typing import Any

from loraforge.fewshot.examples import FewShotExample

PROMPT_SEPARATOR = "\n\n"  # between worked examples of a completions prompt


def fewshot_messages(messages: list[dict[str, Any]], examples: list[FewShotExample]) -> list[dict[str, Any]]:
    """The request's messages with the examples inserted after its leading system message(s), each as its
    user (and earlier assistant) turns followed by an assistant turn with the good answer.

    `examples` come most similar first (as `ExampleIndex.top_k` returns them); they are laid out in reverse,
    so the most similar example sits right before the question, where models weigh it most. An example's
    own system prompt is dropped: the request's governs.
    """
    head = 0
    while head < len(messages) and messages[head].get("role") in ("system", "developer"):
        head += 1
    shots: list[dict[str, Any]] = []
    for example in reversed(examples):
        shots.extend(dict(m) for m in example.messages if m["role"] != "system")
        shots.append({"role": "assistant", "content": example.output})
    return [*messages[:head], *shots, *messages[head:]]


def fewshot_prompt(prompt: str, examples: list[FewShotExample], separator: str = PROMPT_SEPARATOR) -> str:
    """A text-completions prompt preceded by the examples, each its input followed directly by its answer
    (for completions calls that is the original document: prompt + completion), most similar last."""
    shots = []
    for example in reversed(examples):
        inputs = "\n".join(m["content"] for m in example.messages if m["role"] != "system")
        shots.append(inputs + example.output)
    return separator.join([*shots, prompt])
