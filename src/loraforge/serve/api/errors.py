"""OpenAI-shaped errors: every failure the API reports is `{"error": {message, type, param, code}}`."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.openai_compat import error_body
from loraforge.serve.engine.async_engine import (
    AdapterInUseError,
    EngineDeadError,
    QueueFullError,
    ShuttingDownError,
)
from loraforge.serve.engine.engine import RequestError
from loraforge.serve.lora.hub import HubBusyError

# What pydantic adds to the location of an error inside a union (`stop.list[str].0`): not a field name.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


class APIError(Exception):
    """An error answered to the client: an HTTP status and an OpenAI-shaped body."""

    def __init__(
        self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


def from_engine_error(exc: BaseException) -> APIError:
    """The HTTP error for an exception of the engine (or of an adapter load)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestError):
        return APIError(400, str(exc), "invalid_request_error", exc.param, exc.code)
    if isinstance(exc, AdapterInUseError):
        return APIError(409, str(exc), "invalid_request_error", "name", "adapter_in_use")
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, QueueFullError | HubBusyError):
        return APIError(429, str(exc), "rate_limit_error", None, "queue_full")
    if isinstance(exc, ShuttingDownError):
        return APIError(503, str(exc), "server_error", None, "shutting_down")
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), "server_error", None, "engine_unavailable")
    if isinstance(exc, LoraforgeError):
        return APIError(400, str(exc), "invalid_request_error")
    return APIError(500, f"internal error: {type(exc).__name__}", "server_error")


def _param(loc: tuple) -> str | None:
    parts = [str(x) for x in loc if x != "body"]
    parts = [x for x in parts if x not in _TYPE_TAGS and not any(c in x for c in "[]()")]
    return ".".join(parts) or None


def _message(err: dict) -> str:
    kind, msg = err.get("type"), str(err.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        return "unknown or unsupported field"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return msg


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return JSONResponse(
                error_body("the request body is not valid JSON", "invalid_request_error"), status_code=400
            )
        param = _param(tuple(err.get("loc", ())))
        msg = _message(err)
        return JSONResponse(
            error_body(f"{param}: {msg}" if param else msg, "invalid_request_error", param), status_code=400
        )

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException):
        code = "request_too_large" if exc.status_code == 413 else None
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None, code), status_code=exc.status_code
        )
