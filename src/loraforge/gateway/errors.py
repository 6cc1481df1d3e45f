"""OpenAI-shaped errors of the gateway (the body itself: loraforge.openai_compat.error_body)."""

import json
from typing import Any

from starlette.responses import Response

from loraforge.gateway.upstream import UpstreamError, UpstreamTimeout
from loraforge.openai_compat import error_body


class GatewayError(Exception):
    """An error answered to the client as an OpenAI-shaped body with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self, headers: dict[str, str] | None = None) -> Response:
        return json_response(self.body(), self.status, headers)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body).encode(), status, headers=headers, media_type="application/json")


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_value" if param else None)


def upstream_error(exc: UpstreamError) -> GatewayError:
    if isinstance(exc, UpstreamTimeout):
        return GatewayError(504, f"upstream timed out: {exc}", type="upstream_error", code="upstream_timeout")
    return GatewayError(
        502, f"upstream unreachable: {exc}", type="upstream_error", code="upstream_unavailable"
    )


def upstream_status_error(status: int, content: bytes) -> GatewayError:
    """The upstream's own error when it is OpenAI-shaped, else a wrapped one."""
    try:
        err = json.loads(content)["error"]
        if isinstance(err, dict):
            return GatewayError(
                status,
                str(err.get("message") or f"upstream returned HTTP {status}"),
                type=str(err.get("type") or "upstream_error"),
                param=err.get("param"),
                code=err.get("code"),
            )
        return GatewayError(status, str(err), type="upstream_error")
    except (ValueError, KeyError, TypeError):
        text = content[:200].decode(errors="replace")
        return GatewayError(status, f"upstream returned HTTP {status}: {text}", type="upstream_error")
