"""A small HTTP/1.1 keep-alive client for the upstream, on asyncio streams.

Why not httpx: measured by benchmarks/upstream_client.py, httpx costs ~10x the CPU per request of this
client, and through the whole gateway (benchmarks/gateway_overhead.py, 32 concurrent clients) it cut the
logged calls/s from ~1000 to ~125 on a 2-core machine, far below the gateway's 500 calls/s target. This
client does what an OpenAI-compatible upstream needs and no more: http and https, keep-alive pooling,
Content-Length, chunked and read-to-close bodies, connect/read timeouts. No proxies, HTTP/2 or compression.

A request is sent at most once unless it is idempotent (GET, HEAD). A pooled connection is checked before it
is reused (closed by the server, idle too long: replaced, nothing was sent yet); once a POST was written,
any failure is reported (`UpstreamUnavailable`), never resent, because the upstream may have received, run
and billed it (RFC 9110, 9.2.2).
"""

import asyncio
import select
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from loraforge.errors import ConfigError
from loraforge.gateway.settings import (
    IDLE_EXPIRY_S,
    MAX_RESPONSE_BYTES,
    MAX_RESPONSE_HEAD_BYTES,
    MAX_RESPONSE_LINE_BYTES,
)

READ_SIZE = 64 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class UpstreamError(Exception):
    """The upstream could not be reached or broke off a response."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamUnavailable(UpstreamError):
    pass


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        if self.reader.at_eof() or self.writer.is_closing():
            return False
        if time.monotonic() - self.idle_since > IDLE_EXPIRY_S:
            return False
        # An idle HTTP/1.1 connection has nothing to read: readable means the server closed it (or broke the
        # protocol), even if the event loop has not noticed yet.
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            poller = select.poll()  # not select.select: that fails for descriptors above 1023
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        return True

    def close(self) -> None:
        self.writer.close()


class UpstreamClient:
    def __init__(
        self, base_url: str, timeout_s: float, connect_timeout_s: float, max_idle: int = 256
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"upstream URL must be http(s)://host[:port][/path], got {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.base_path = url.path.rstrip("/")
        self.host_header = url.netloc.rsplit("@", 1)[-1]
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._idle: list[_Conn] = []

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> "UpstreamResponse":
        """Send a request and read the response head; the body is read from the returned response."""
        head = self._head(method, path, body, headers or {})
        attempts = 2 if method in IDEMPOTENT else 1
        for attempt in range(attempts):
            conn = self._pop_idle()
            fresh = conn is None
            if conn is None:
                conn = await self._connect()
            try:
                conn.writer.write(head + body)
                async with asyncio.timeout(self.timeout_s):
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
            except TimeoutError as exc:
                conn.close()
                raise UpstreamTimeout("upstream did not answer in time") from exc
            except (OSError, EOFError, asyncio.LimitOverrunError) as exc:
                conn.close()
                # Only an idempotent request may be sent again: the upstream may have received this one.
                if fresh or attempt + 1 >= attempts:
                    raise UpstreamUnavailable(
                        f"upstream closed the connection: {type(exc).__name__}"
                    ) from exc
                continue
            return UpstreamResponse(self, conn, raw, method)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def _head(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {self.base_path}{path} HTTP/1.1", f"host: {self.host_header}"]
        if body or method == "POST":
            lines.append(f"content-length: {len(body)}")
        lines.append("accept-encoding: identity")
        for key, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in key or "\n" in key:
                raise ValueError(f"header {key!r} contains a line break")
            lines.append(f"{key}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _pop_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        if conn.usable() and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    limit=MAX_RESPONSE_HEAD_BYTES,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"connecting to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise UpstreamUnavailable(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        return _Conn(reader, writer)


class UpstreamResponse:
    """Status and headers of a response; read the body once (`read()`, `iter_lines()`), then `close()`."""

    def __init__(self, client: UpstreamClient, conn: _Conn, raw_head: bytes, method: str) -> None:
        lines = raw_head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            self.status = int(parts[1])
        except (IndexError, ValueError) as exc:
            conn.close()
            raise UpstreamUnavailable(f"upstream sent a malformed status line {lines[0][:80]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                key = key.strip().lower()
                headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        self.headers = headers
        self._client, self._conn = client, conn
        self._complete = method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200
        connection = headers.get("connection", "").lower()
        self._keep_alive = parts[0] == "HTTP/1.1" and "close" not in connection
        self._closed = False

    async def read(self) -> bytes:
        """The whole body; an upstream sending more than MAX_RESPONSE_BYTES is treated as broken."""
        chunks, size = [], 0
        async for chunk in self.iter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                self.close()
                raise UpstreamUnavailable(f"upstream sent a body longer than {MAX_RESPONSE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def iter_lines(self) -> AsyncIterator[str]:
        """Body lines without their line endings (for server-sent events).

        Linear in the body: each chunk is scanned once, and the parts of a line spanning chunks are joined
        once, when its end arrives (not re-copied per chunk).
        """
        pending: list[bytes] = []
        size = 0
        async for chunk in self.iter_bytes():
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                pending.append(chunk[start:end])
                line = b"".join(pending)
                pending, size = [], 0
                yield line.removesuffix(b"\r").decode("utf-8", errors="replace")
                start = end + 1
            if start < len(chunk):
                pending.append(chunk[start:])
                size += len(chunk) - start
                if size > MAX_RESPONSE_LINE_BYTES:
                    self.close()
                    raise UpstreamUnavailable(
                        f"upstream sent a line longer than {MAX_RESPONSE_LINE_BYTES} bytes"
                    )
        if pending:
            yield b"".join(pending).removesuffix(b"\r").decode("utf-8", errors="replace")

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        if self._complete:
            return
        reader = self._conn.reader
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                while True:
                    async with asyncio.timeout(self._client.timeout_s):
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                                pass
                            break
                        data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif "content-length" in self.headers:
                remaining = int(self.headers["content-length"])
                while remaining:
                    async with asyncio.timeout(self._client.timeout_s):
                        data = await reader.read(min(remaining, READ_SIZE))
                    if not data:
                        raise EOFError("body shorter than its content-length")
                    remaining -= len(data)
                    yield data
            else:
                self._keep_alive = False
                while True:
                    async with asyncio.timeout(self._client.timeout_s):
                        data = await reader.read(READ_SIZE)
                    if not data:
                        break
                    yield data
        except TimeoutError as exc:
            self.close()
            raise UpstreamTimeout("upstream stalled in the middle of a response") from exc
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise UpstreamUnavailable(f"upstream broke off the response: {type(exc).__name__}") from exc
        self._complete = True

    def close(self) -> None:
        """Return the connection to the pool when the body was fully read, else close it."""
        if self._closed:
            return
        self._closed = True
        if self._complete and self._keep_alive:
            self._client._release(self._conn)
        else:
            self._conn.close()
