"""Builders of call records for store tests (the shape the gateway writes)."""

import uuid
from datetime import datetime, timedelta
from typing import Any

from loraforge.store.tables import utcnow

_T0 = utcnow() - timedelta(days=1)


def chat_call(
    task: str,
    user: str,
    output: str,
    *,
    system: str | None = None,
    status: str = "ok",
    at: datetime | None = None,
    seq: int = 0,
) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return {
        "id": f"call_{uuid.uuid4().hex}",
        "time": at or _T0 + timedelta(seconds=seq),
        "endpoint": "chat.completions",
        "task": task,
        "tags": {},
        "requested_model": "m",
        "served_model": "m",
        "stream": False,
        "request_body": {"model": "m", "messages": messages},
        "response_body": {
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": output}, "finish_reason": "stop"}
            ],
        }
        if status == "ok"
        else None,
        "status": status,
        "http_status": 200 if status == "ok" else 500,
        "error": None if status == "ok" else "boom",
        "latency_ms": 1.0,
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "cost_usd": None,
    }


def completion_call(task: str, prompt: str, output: str, seq: int = 0) -> dict[str, Any]:
    record = chat_call(task, prompt, output, seq=seq)
    record["endpoint"] = "completions"
    record["request_body"] = {"model": "m", "prompt": prompt}
    record["response_body"] = {"object": "text_completion", "choices": [{"index": 0, "text": output}]}
    return record
