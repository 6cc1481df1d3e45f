"""A bound on request body size (413 with an OpenAI-shaped body), before anything reads the body whole."""

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraforge.openai_compat import error_body

TOO_LARGE = "the request body is larger than this server accepts (--max-body-bytes)"


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without a Content-Length grows past the bound; FastAPI passes
    HTTPExceptions raised while reading the body on to the exception handlers (413 there)."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail=TOO_LARGE)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            body = error_body(TOO_LARGE, "invalid_request_error", None, "request_too_large")
            return await JSONResponse(body, status_code=413)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        await self.app(scope, limited, send)
