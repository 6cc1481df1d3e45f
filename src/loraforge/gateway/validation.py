"""Validate a client's request body and derive the call's task, tags and the body sent upstream."""

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from loraforge.gateway.errors import GatewayError, bad_request
from loraforge.gateway.settings import MAX_JSON_DEPTH

TASK_HEADER = "x-loraforge-task"
MAX_TASK_LEN = 200


@dataclass
class ParsedRequest:
    endpoint: str  # "chat.completions" | "completions"
    body: dict[str, Any]  # as the client sent it (stored)
    upstream_body: dict[
        str, Any
    ]  # what is forwarded: without `metadata`, with usage requested when streaming
    model: str
    stream: bool
    task: str | None
    tags: dict[str, Any]
    usage_injected: bool  # we asked for the usage chunk; the client did not, so it is not forwarded


# A \uD800-\uDFFF escape: only valid as half of a pair; a lone one cannot be stored as UTF-8 (PostgreSQL
# refuses it, and it would fail the whole group commit it is part of).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _json_object(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything JSON itself, JSON storage or the forwarded body refuse."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise _too_deep(max_depth) from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, NaN, 1e999, ints over 4300 digits
        raise bad_request(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    # Only a body with more brackets than the limit can be nested deeper; most skip the walk.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _deeper_than(body, max_depth):
        raise _too_deep(max_depth)
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise bad_request("request body contains an unpaired UTF-16 surrogate (\\uD800-\\uDFFF)") from exc
    return body


def _too_deep(max_depth: int) -> GatewayError:
    return bad_request(f"request body is nested deeper than {max_depth} levels")


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_request(
    raw: bytes, endpoint: str, header_task: str | None, max_depth: int = MAX_JSON_DEPTH
) -> ParsedRequest:
    """Raises GatewayError (400, naming the field) for a body an OpenAI endpoint would reject.

    Fields the gateway does not look at (tools, response_format, ...) are forwarded untouched: the upstream
    implements them.
    """
    body = _json_object(raw, max_depth)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` is required and must be a non-empty string", "model")
    if endpoint == "chat.completions":
        _check_messages(body.get("messages"))
    elif not isinstance(body.get("prompt"), str | list):
        raise bad_request("`prompt` is required and must be a string or a list", "prompt")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("`stream` must be a boolean", "stream")
    metadata = body.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise bad_request("`metadata` must be an object", "metadata")
    task = header_task if header_task else metadata.get("task")
    if task is not None and (not isinstance(task, str) or not task or len(task) > MAX_TASK_LEN):
        param = "metadata.task" if not header_task else None
        raise bad_request(f"the task must be a non-empty string of at most {MAX_TASK_LEN} characters", param)
    tags = {k: v for k, v in metadata.items() if k != "task"}

    # `metadata` is the gateway's channel: OpenAI rejects it without `store: true`, other servers vary.
    upstream = {k: v for k, v in body.items() if k != "metadata"}
    usage_injected = False
    if stream:
        options = upstream.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise bad_request("`stream_options` must be an object", "stream_options")
        if not (options or {}).get("include_usage"):
            upstream["stream_options"] = {**(options or {}), "include_usage": True}
            usage_injected = True
    return ParsedRequest(endpoint, body, upstream, model, stream, task, tags, usage_injected)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` is required and must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"`messages[{i}]` must be an object", f"messages[{i}]")
        if not isinstance(message.get("role"), str):
            raise bad_request(f"`messages[{i}].role` is required and must be a string", f"messages[{i}].role")


def parse_feedback(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """Validate a POST /v1/feedback body: call_id plus at least one of score, corrected_output, comment."""
    body = _json_object(raw, max_depth)
    call_id = body.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request("`call_id` is required and must be a string", "call_id")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise bad_request("`score` must be a number", "score")
    for key in ("corrected_output", "comment"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise bad_request(f"`{key}` must be a string", key)
    if score is None and body.get("corrected_output") is None and body.get("comment") is None:
        raise GatewayError(400, "give at least one of `score`, `corrected_output`, `comment`", param="score")
    return {
        "call_id": call_id,
        "score": float(score) if score is not None else None,
        "corrected_output": body.get("corrected_output"),
        "comment": body.get("comment"),
    }
