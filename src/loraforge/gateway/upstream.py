"""The gateway's HTTP client for the upstream: httpx behind a small interface the proxy relies on.

A request is sent at most once. httpx (httpcore) only picks another connection when a pooled one turns out
to be unusable *before* anything was written to it (closed by the server while idle, or expired); once the
request was written, any failure is the caller's error (`UpstreamUnavailable`), never a silent resend,
because the upstream may have received, run and billed it. Bodies are asked for uncompressed
(`accept-encoding: identity`) so streamed events are forwarded as they arrive.
"""

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from loraforge.errors import ConfigError

_closing: set[asyncio.Future] = set()  # closes scheduled from sync code; the loop holds tasks only weakly


class UpstreamError(Exception):
    """The upstream could not be reached or broke off a response."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamUnavailable(UpstreamError):
    pass


def _translate(exc: httpx.HTTPError, when: str) -> UpstreamError:
    url = exc.request.url if isinstance(exc, httpx.RequestError) and exc._request else None
    where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}" if url else "the upstream"
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout(f"connecting to {where} timed out")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"upstream timed out {when}: {type(exc).__name__}")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable(f"cannot connect to {where}: {exc}")
    return UpstreamUnavailable(f"upstream failed {when}: {type(exc).__name__}: {exc}".rstrip(": "))


class UpstreamClient:
    def __init__(
        self, base_url: str, timeout_s: float, connect_timeout_s: float, max_idle: int = 256
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"upstream URL must be http(s)://host[:port][/path], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            # No cap on concurrent connections: the gateway must not queue calls the upstream could take.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=max_idle),
            # The upstream is named explicitly; proxies from the environment would surprise an operator
            # (and silently route loopback upstreams elsewhere).
            trust_env=False,
            follow_redirects=False,
        )

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> "UpstreamResponse":
        """Send a request (once) and read the response head; the body is read from the returned response."""
        all_headers: dict[str, str | bytes] = {"accept-encoding": "identity"}
        for key, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in key or "\n" in key:
                raise ValueError(f"header {key!r} contains a line break")
            # Header values arrive from Starlette decoded as latin-1; send back the same bytes.
            all_headers[key] = value.encode("latin-1", errors="replace")
        content = body if body or method in ("POST", "PUT", "PATCH") else None
        req = self._client.build_request(method, self.base_url + path, content=content, headers=all_headers)
        try:
            resp = await self._client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise _translate(exc, "before answering") from exc
        return UpstreamResponse(resp)

    async def aclose(self) -> None:
        await self._client.aclose()


class UpstreamResponse:
    """Status and headers of a response; read the body once (`read()`, `iter_lines()`), then `close()`."""

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers = resp.headers  # case-insensitive
        self._closed = False

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_bytes()])

    async def iter_lines(self) -> AsyncIterator[str]:
        """Body lines without their line endings (CRLF, LF or CR, as server-sent events allow)."""
        try:
            async for line in self._resp.aiter_lines():
                yield line
        except httpx.HTTPError as exc:
            await self.aclose()
            raise _translate(exc, "in the middle of a response") from exc

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            await self.aclose()
            raise _translate(exc, "in the middle of a response") from exc

    async def aclose(self) -> None:
        self._closed = True
        await self._resp.aclose()

    def close(self) -> None:
        """Release the connection: back to the pool when the body was read to its end, else closed."""
        if self._closed:
            return
        self._closed = True
        if self._resp.is_closed:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._resp.aclose())
        except RuntimeError:  # no loop (interpreter shutdown): the pool is closed with the client
            return
        _closing.add(task)
        task.add_done_callback(_closing.discard)
