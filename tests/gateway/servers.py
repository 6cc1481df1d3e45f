"""Run ASGI apps on 127.0.0.1 in a background thread, and the gateway CLI as a subprocess."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn


class ThreadServer:
    """uvicorn on an ephemeral 127.0.0.1 port in a daemon thread; use as a context manager."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loraforge_cli() -> list[str]:
    script = Path(sys.executable).with_name("loraforge")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from loraforge.cli.main import main; main()"]


def start_gateway_process(args: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`loraforge gateway ARGS --port PORT` as a subprocess, returned once /health answers."""
    return start_loraforge_process("gateway", args, port, env)


def start_loraforge_process(
    command: str,
    args: list[str],
    port: int,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    startup_s: float = 60,
) -> subprocess.Popen:
    """`loraforge COMMAND ARGS --host 127.0.0.1 --port PORT` as a subprocess, returned once /health
    answers. Its output goes to `log` when given (a busy server's access log would fill a pipe and block
    it), else to a pipe."""
    out = log.open("wb") if log is not None else subprocess.PIPE
    proc = subprocess.Popen(
        [*loraforge_cli(), command, *args, "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    if log is not None:
        out.close()  # the child holds its own copy
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log.read_bytes() if log is not None else proc.stdout.read()
            raise RuntimeError(f"{command} exited: {output.decode(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{command} did not answer /health within {startup_s:.0f} s")
