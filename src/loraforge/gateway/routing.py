"""Routing decisions: which side answers a call (sticky canary split), and whether an adapter's answer is
valid for its task (else the general model answers instead)."""

import hashlib
import json
from typing import Any

import jsonschema

from loraforge.curation.call_examples import output_text
from loraforge.evaluate.metrics import normalize
from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import FEWSHOT, Route

GENERAL = "general"
FALLBACK = "fallback"  # the general model answered because the adapter erred, timed out or was invalid
# FEWSHOT ("fewshot", the stage's name): a model prompted with the task's good examples answered.
__all__ = ["FALLBACK", "FEWSHOT", "GENERAL"]


def adapter_label(adapter: str) -> str:
    """The `X-Loraforge-Served-By` value (and `calls.served_by`) of an adapter's answer."""
    return f"adapter:{adapter}"


def stickiness_key(body: dict[str, Any]) -> str:
    """The request's `user`, else a hash of its conversation: one user (or conversation) sees one model."""
    user = body.get("user")
    if isinstance(user, str) and user:
        return "user:" + user
    conversation = body.get("messages", body.get("prompt"))
    digest = hashlib.sha256(json.dumps(conversation, sort_keys=True, ensure_ascii=False).encode())
    return "conversation:" + digest.hexdigest()


def canary_bucket(task: str, key: str) -> float:
    """A stable, uniform point in [0, 100) for (task, key); tasks split independently of each other."""
    digest = hashlib.sha256(f"{task}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def goes_to_adapter(route: Route, body: dict[str, Any]) -> bool:
    """Whether the adapter answers this call (shadow: never, the general model answers and it mirrors)."""
    if route.stage == "full":
        return True
    if route.stage == "canary":
        return canary_bucket(route.task, stickiness_key(body)) < route.percent
    return False


def invalid_reason(spec: OutputSpec, endpoint: str, body: dict[str, Any]) -> str | None:
    """Why the answer is invalid for the task, or None when it is valid (free text is always valid)."""
    if spec.kind == "text":
        return None
    text = output_text(endpoint, body)
    if text is None:
        return "the answer has no text"
    if spec.kind == "classification":
        if spec.labels and normalize(text) not in {normalize(label) for label in spec.labels}:
            return f"label {text.strip()[:80]!r} is not in the task's label set"
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return "the answer is not valid JSON"
    if spec.schema is not None:
        try:
            jsonschema.validate(value, spec.schema)
        except jsonschema.ValidationError as exc:
            return f"the answer violates the task's JSON schema: {exc.message[:200]}"
    return None


def needs_validation(spec: OutputSpec) -> bool:
    return spec.kind != "text"
