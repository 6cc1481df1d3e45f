"""API keys: `Authorization: Bearer KEY`, compared in constant time on the raw header bytes."""

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from loraforge.serve.api.errors import APIError


def bearer_matches(header: str, key: str) -> bool:
    """Whether an Authorization header carries `key`. Starlette decodes headers as latin-1, so encoding
    back gives the bytes the client sent; any byte a client sends is then just a wrong key, never an error."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("latin-1"), key.encode("utf-8"))


def key_checker(key: str | None, what: str = "API key") -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that requires `key` (nothing when `key` is None)."""

    async def check(request: Request) -> None:
        if key is None:
            return
        if not bearer_matches(request.headers.get("authorization", ""), key):
            message = f"missing or invalid {what}"
            raise APIError(401, message, "invalid_request_error", None, "invalid_api_key")

    return check
