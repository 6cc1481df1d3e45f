"""Validate a client's request body and derive the call's task, tags and the body sent upstream."""

import json
from dataclasses import dataclass
from typing import Any

from loraforge.gateway.errors import GatewayError, bad_request

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


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def parse_request(raw: bytes, endpoint: str, header_task: str | None) -> ParsedRequest:
    """Raises GatewayError (400, naming the field) for a body an OpenAI endpoint would reject."""
    body = _json_object(raw)
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


def parse_feedback(raw: bytes) -> dict[str, Any]:
    """Validate a POST /v1/feedback body: call_id plus at least one of score, corrected_output, comment."""
    body = _json_object(raw)
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
