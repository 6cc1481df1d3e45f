"""Server-sent events from an upstream stream, and the assembly of chunks into one complete response."""

from collections.abc import AsyncIterator
from typing import Any


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` payload of each event (multi-line data joined); comments and other fields skipped."""
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


class StreamAssembler:
    """Folds chat/text completion chunks into the body a non-streamed call would have returned."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.meta: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finished = False

    def feed(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self.meta.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            acc = self.choices.setdefault(
                index, {"content": [], "role": None, "tool_calls": {}, "finish": None}
            )
            if self.endpoint == "completions":
                acc["content"].append(choice.get("text") or "")
            else:
                delta = choice.get("delta") or {}
                acc["role"] = acc["role"] or delta.get("role")
                if delta.get("content"):
                    acc["content"].append(delta["content"])
                for call in delta.get("tool_calls") or []:
                    _merge_tool_call(acc["tool_calls"], call)
            if choice.get("finish_reason"):
                acc["finish"] = choice["finish_reason"]
                self.finished = True

    def result(self) -> dict[str, Any]:
        chat = self.endpoint == "chat.completions"
        choices = []
        for index in sorted(self.choices):
            acc = self.choices[index]
            text = "".join(acc["content"])
            if chat:
                message: dict[str, Any] = {"role": acc["role"] or "assistant", "content": text}
                if acc["tool_calls"]:
                    message["tool_calls"] = [acc["tool_calls"][i] for i in sorted(acc["tool_calls"])]
                choices.append({"index": index, "message": message, "finish_reason": acc["finish"]})
            else:
                choices.append({"index": index, "text": text, "finish_reason": acc["finish"]})
        body = {**self.meta, "object": "chat.completion" if chat else "text_completion", "choices": choices}
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    acc = calls.setdefault(
        delta.get("index", 0), {"type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        acc["id"] = delta["id"]
    function = delta.get("function") or {}
    acc["function"]["name"] += function.get("name") or ""
    acc["function"]["arguments"] += function.get("arguments") or ""
