"""The OpenAI-compatible surface shared by `loraforge serve` (serve/api) and the gateway: error bodies, the
bearer-key check, and Prometheus helpers. One rule for each, so both servers answer alike."""

import hmac
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created series only add noise to every counter and histogram


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bearer_matches(header: str, key: str) -> bool:
    """Whether an `Authorization` header carries `key` as its bearer token (the scheme in any case, spaces
    around the token ignored), compared in constant time. Starlette decodes headers as latin-1, so encoding
    back gives the bytes the client sent: any byte a client sends is then just a wrong key, never an error."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("latin-1"), key.encode("utf-8"))


class CappedLabels:
    """Values of a Prometheus label that clients choose (a task, a model name): each has its own series
    while fewer than `limit` distinct values were seen, later ones share `other`, so clients cannot grow
    the registry without bound. Values the operator vouches for (`always=True`) always get their own."""

    def __init__(self, limit: int, other: str) -> None:
        self.limit, self.other = limit, other
        self._seen: set[str] = set()

    def __call__(self, value: str, always: bool = False) -> str:
        if value in self._seen:
            return value
        if always or len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return self.other


METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST  # Prometheus' text format


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (METRICS_CONTENT_TYPE)."""
    return generate_latest(registry)
