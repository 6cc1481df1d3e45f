"""API keys: `Authorization: Bearer KEY`, checked by the rule both servers share (openai_compat.py)."""

from collections.abc import Awaitable, Callable

from fastapi import Request

from loraforge.openai_compat import bearer_matches
from loraforge.serve.api.errors import APIError


def key_checker(key: str | None, what: str = "API key") -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that requires `key` (nothing when `key` is None)."""

    async def check(request: Request) -> None:
        if key is None:
            return
        if not bearer_matches(request.headers.get("authorization", ""), key):
            message = f"missing or invalid {what}"
            raise APIError(401, message, "invalid_request_error", None, "invalid_api_key")

    return check
