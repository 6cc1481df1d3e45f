"""Fixtures of the synth tests: the scripted OpenAI-compatible teacher, one server per session."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from tests.synth.scripted import ScriptedTeacher, build_app


@pytest.fixture(scope="session")
def scripted_server() -> Iterator[ScriptedTeacher]:
    """One server for the session (bound to 127.0.0.1 on a free port), shut down at the end."""
    teacher = ScriptedTeacher()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(build_app(teacher), log_level="warning", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "scripted teacher did not start"
    teacher.url = f"http://127.0.0.1:{port}/v1"
    yield teacher
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def teacher_server(scripted_server: ScriptedTeacher) -> Iterator[ScriptedTeacher]:
    scripted_server.reset()
    yield scripted_server
    scripted_server.reset()
