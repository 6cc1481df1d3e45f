"""The servers a demo starts (`loraforge serve`, `loraforge gateway`) as child processes, each in its own
process group, all stopped on the way out — on success, on an error, on Ctrl-C and on SIGTERM."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from loraforge.errors import LoraforgeError

STARTUP_S = 600.0  # a first `serve` on a new CPU compiles the kernels (minutes), then loads the model
STOP_GRACE_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Children:
    """A context manager owning child servers; SIGTERM while inside it behaves like Ctrl-C."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._previous = None

    def __enter__(self) -> "Children":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._previous = signal.signal(signal.SIGTERM, _interrupt)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)

    def start(self, name: str, args: list[str], port: int) -> str:
        """`loraforge ARGS --host 127.0.0.1 --port PORT`; its base URL once /health answers."""
        log = self.log_dir / f"{name}.log"
        command = [sys.executable, "-m", "loraforge", *args, "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise LoraforgeError(f"{name} exited while starting (log {log}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            time.sleep(0.3)
        raise LoraforgeError(f"{name} did not become healthy within {STARTUP_S:.0f} s (log {log})")

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
