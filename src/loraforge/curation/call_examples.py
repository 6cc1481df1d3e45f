"""Turn a logged call into a training example: chat messages + the output, and the hash of its input."""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from loraforge.store.tables import Call

PROMPT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class CallExample:
    call_id: str
    messages: list[dict[str, str]]  # the prompt: system/user/(earlier assistant) turns
    output: str
    input_hash: str


def call_to_example(call: Call) -> CallExample | None:
    """The example of a successful call, or None when it cannot be one (tool calls, images, batches)."""
    messages = _prompt_messages(call.endpoint, call.request_body or {})
    output = output_text(call.endpoint, call.response_body or {})
    if messages is None or output is None:
        return None
    return CallExample(call.id, messages, output, input_hash(messages))


def input_hash(messages: list[dict[str, str]]) -> str:
    """sha256 of the normalized input: roles and contents with whitespace runs collapsed and ends stripped."""
    normalized = [[m["role"], " ".join(m["content"].split())] for m in messages]
    return hashlib.sha256(json.dumps(normalized, ensure_ascii=False).encode()).hexdigest()


def _prompt_messages(endpoint: str, body: dict[str, Any]) -> list[dict[str, str]] | None:
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else None
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        return None
    messages = []
    for message in raw:
        if not isinstance(message, dict) or message.get("role") not in PROMPT_ROLES:
            return None
        content = _text(message.get("content"))
        if content is None:
            return None
        messages.append({"role": message["role"], "content": content})
    return messages


def _text(content: Any) -> str | None:
    """A message's text; a list of parts counts only when every part is text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return None


def output_text(endpoint: str, body: dict[str, Any]) -> str | None:
    """The text of the first choice of a chat or text completion body."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    if endpoint == "completions":
        text = choices[0].get("text")
    else:
        text = (choices[0].get("message") or {}).get("content")
    return text if isinstance(text, str) else None
