"""The gateway's HTTP/1.1 upstream client against scripted raw servers on 127.0.0.1."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from loraforge.errors import ConfigError
from loraforge.gateway.upstream import UpstreamClient, UpstreamTimeout, UpstreamUnavailable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length) if length else b""
    return head.decode().split("\r\n")[0], body


def run_with_server(
    handler: Handler, scenario: Callable[[UpstreamClient, dict], Awaitable[None]], **kw
) -> dict:
    """Run `scenario(client, state)` against a server answering each connection with `handler`."""
    state: dict = {"connections": 0, "requests": []}

    async def main() -> None:
        async def on_conn(reader, writer):
            state["connections"] += 1
            try:
                await handler(reader, writer, state)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = UpstreamClient(f"http://127.0.0.1:{port}/v1", kw.get("timeout", 5.0), 2.0)
        try:
            async with server:
                await asyncio.wait_for(scenario(client, state), 20)
        finally:
            await client.aclose()

    asyncio.run(main())
    return state


async def keep_alive_json(reader, writer, state):
    for _ in range(100):
        line, body = await read_request(reader)
        state["requests"].append((line, body))
        payload = b'{"ok": true}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
        await writer.drain()


def calls_with_pauses(expected: bytes):
    """A scenario: two POSTs, each answered `expected`, with an idle pause after each."""

    async def scenario(client, state):
        for _ in range(2):
            resp = await client.request("POST", "/x", b"{}")
            assert await resp.read() == expected
            resp.close()
            await asyncio.sleep(0.2)

    return scenario


async def answer_once_then_swallow(reader, writer, state):
    """Answers the first request, then reads the next (the upstream got it) and drops it unanswered."""
    state["requests"].append(await read_request(reader))
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    state["requests"].append(await read_request(reader))


def test_content_length_bodies_reuse_one_connection():
    async def scenario(client, state):
        for _ in range(3):
            resp = await client.request(
                "POST", "/chat/completions", b'{"a": 1}', {"content-type": "application/json"}
            )
            assert resp.status == 200 and await resp.read() == b'{"ok": true}'
            resp.close()

    state = run_with_server(keep_alive_json, scenario)
    assert state["connections"] == 1
    assert state["requests"][0] == ("POST /v1/chat/completions HTTP/1.1", b'{"a": 1}')


def test_chunked_body_with_extensions_and_trailers_and_lines_across_chunks():
    async def handler(reader, writer, state):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"data: one\r", b"\n\ndata: t", b"wo\n\n"):
            writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        await writer.drain()
        await keep_alive_json(reader, writer, state)  # the connection is reusable afterwards

    async def scenario(client, state):
        resp = await client.request("POST", "/x", b"{}")
        assert [line async for line in resp.iter_lines()] == ["data: one", "", "data: two", ""]
        resp.close()
        again = await client.request("POST", "/x", b"{}")
        assert await again.read() == b'{"ok": true}'

    assert run_with_server(handler, scenario)["connections"] == 1


def test_body_until_close_and_connection_close_are_not_pooled():
    async def handler(reader, writer, state):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async def scenario(client, state):
        for _ in range(2):
            resp = await client.request("GET", "/models")
            assert await resp.read() == b"all of it"
            resp.close()

    assert run_with_server(handler, scenario)["connections"] == 2


def test_a_pooled_connection_the_server_closed_while_idle_is_replaced_before_sending():
    async def one_response_then_close(reader, writer, state):
        state["requests"].append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)  # then closes without saying so, like an idle-timeout

    state = run_with_server(one_response_then_close, calls_with_pauses(b"ok"))
    assert state["connections"] == 2 and len(state["requests"]) == 2


def test_a_post_the_upstream_may_have_received_is_never_resent():
    """A pooled connection that dies after the request was written: one upstream request, one error."""

    # The second request is received (for all we know, billed), then its connection drops unanswered, as
    # when an upstream's idle timeout races a new request.
    async def scenario(client, state):
        resp = await client.request("POST", "/chat/completions", b'{"n": 1}')
        assert await resp.read() == b"ok"
        resp.close()
        with pytest.raises(UpstreamUnavailable):
            await client.request("POST", "/chat/completions", b'{"n": 2}')

    state = run_with_server(answer_once_then_swallow, scenario)
    assert [body for _, body in state["requests"]] == [b'{"n": 1}', b'{"n": 2}']
    assert state["connections"] == 1


def test_a_silent_upstream_times_out():
    async def silent(reader, writer, state):
        await read_request(reader)
        await asyncio.sleep(5)

    async def scenario(client, state):
        with pytest.raises(UpstreamTimeout):
            await client.request("POST", "/x", b"{}")

    run_with_server(silent, scenario, timeout=0.3)


def test_a_truncated_body_is_an_error():
    async def truncated(reader, writer, state):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    async def scenario(client, state):
        resp = await client.request("POST", "/x", b"{}")
        with pytest.raises(UpstreamUnavailable):
            await resp.read()

    run_with_server(truncated, scenario)


def test_refused_connection_and_bad_urls():
    async def scenario() -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = UpstreamClient(f"http://127.0.0.1:{port}", 1.0, 1.0)
        with pytest.raises(UpstreamUnavailable, match="cannot connect"):
            await client.request("GET", "/models")

    asyncio.run(scenario())
    with pytest.raises(ConfigError):
        UpstreamClient("ftp://example.com", 1, 1)


def test_an_idempotent_get_on_a_connection_that_died_is_retried_once():
    async def scenario(client, state):
        for _ in range(2):
            resp = await client.request("GET", "/models")
            assert await resp.read() == b"ok"
            resp.close()

    state = run_with_server(answer_once_then_swallow, scenario)
    assert state["connections"] == 2 and len(state["requests"]) == 3


def test_idle_connections_past_their_expiry_are_not_reused(monkeypatch):
    from loraforge.gateway import upstream

    monkeypatch.setattr(upstream, "IDLE_EXPIRY_S", 0.05)

    state = run_with_server(keep_alive_json, calls_with_pauses(b'{"ok": true}'))
    assert state["connections"] == 2 and len(state["requests"]) == 2


def test_lines_spanning_many_chunks_and_an_endless_line(monkeypatch):
    from loraforge.gateway import upstream

    async def dribble(reader, writer, state):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = b"data: " + b"x" * 3000 + b"\r\n\r\n" + b"y" * 5000
        for i in range(0, len(body), 7):
            writer.write(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def scenario(client, state):
        resp = await client.request("POST", "/x", b"{}")
        lines = []
        with pytest.raises(UpstreamUnavailable, match="longer than 4096 bytes"):
            async for line in resp.iter_lines():
                lines.append(line)
        assert lines == ["data: " + "x" * 3000, ""]

    monkeypatch.setattr(upstream, "MAX_RESPONSE_LINE_BYTES", 4096)
    run_with_server(dribble, scenario)


def test_an_endless_body_is_an_error_not_a_memory_leak(monkeypatch):
    from loraforge.gateway import upstream

    async def endless(reader, writer, state):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")  # read-to-close body that never closes
        for _ in range(100):
            writer.write(b"x" * 1024)
            await writer.drain()

    async def scenario(client, state):
        resp = await client.request("POST", "/x", b"{}")
        with pytest.raises(UpstreamUnavailable, match="longer than 8192 bytes"):
            await resp.read()

    monkeypatch.setattr(upstream, "MAX_RESPONSE_BYTES", 8192)
    run_with_server(endless, scenario)
