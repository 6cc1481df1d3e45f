"""Servers under load for benchmarks/vs_llamacpp.py: start a server process (ours or llama-server), wait
until it answers, stop it; send a burst of concurrent OpenAI completions, or requests one after another.
The same client code measures both sides."""

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on 127.0.0.1:`port`, ready once `GET /health` answers 200; stopped (its whole
    process group) when the `with` block ends, whatever happened inside."""

    def __init__(self, command: list[str], port: int, name: str, env: dict | None = None):
        self.command, self.port, self.name, self.env = command, port, name, env
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(c) for c in self.command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout=900)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s: {self.tail()}")

    def tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.unlink(missing_ok=True)


async def _post(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int]:
    start = time.perf_counter()
    response = await client.post(f"{url}/v1/completions", json=body)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text[:500]}")
    return elapsed, response.json()["usage"]["completion_tokens"]


async def _burst(url: str, bodies: list[dict]) -> tuple[float, list[tuple[float, int]]]:
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(_post(client, url, b) for b in bodies))
        return time.perf_counter() - start, results


def burst(url: str, bodies: list[dict]) -> dict:
    """All `bodies` sent at once: generated tokens, wall seconds, tokens/s."""
    seconds, results = asyncio.run(_burst(url, bodies))
    tokens = sum(n for _, n in results)
    return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def one_by_one(url: str, bodies: list[dict]) -> list[float]:
    """Latency of each request, sent one after another (the next when the previous has answered)."""

    async def run() -> list[float]:
        async with httpx.AsyncClient(timeout=None) as client:
            return [(await _post(client, url, b))[0] for b in bodies]

    return asyncio.run(run())


def median_ms(latencies: list[float]) -> float:
    return statistics.median(latencies) * 1000
