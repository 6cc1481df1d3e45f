"""A live server (uvicorn in a thread) on the tiny model, with a registry of 16 adapters."""

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from loraforge.serve.api import create_app
from loraforge.serve.engine import EngineConfig
from loraforge.serve.engine.async_engine import AsyncEngine
from tests.serve.conftest import write_random_adapter

API_KEY = "test-key"
ADMIN_KEY = "admin-key"
NUM_ADAPTERS = 16


@dataclass
class LiveServer:
    url: str
    engine: AsyncEngine
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(
    model_dir: Path,
    adapter_dir: Path | None,
    api_key: str | None = API_KEY,
    admin_api_key: str | None = None,
    adapter_root: Path | None = None,
    **kw,
) -> LiveServer:
    max_waiting = kw.pop("max_waiting", 256)
    config = EngineConfig(model=str(model_dir), precision="fp32", adapter_dir=adapter_dir, **kw)
    engine = AsyncEngine(config, max_waiting=max_waiting)
    app = create_app(engine, api_key=api_key, admin_api_key=admin_api_key, adapter_root=adapter_root)
    # Port 0: the OS picks a free port at bind time, so no other process can take it in between.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveServer(f"http://127.0.0.1:{port}", engine, server, thread)


def stream_in_background(url: str, body: dict) -> tuple[threading.Thread, list[str]]:
    """POST a streamed completion on a thread; returns the thread and the list its `data:` payloads go
    to, once the first has arrived."""
    lines: list[str] = []
    first = threading.Event()

    def consume():
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
                    first.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(30), "no event arrived"
    return reader, lines


@pytest.fixture(scope="session")
def many_adapters_dir(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    for i in range(NUM_ADAPTERS):
        write_random_adapter(tiny_model_dir, root / f"ad{i:02d}", r=4 + 4 * (i % 3), seed=100 + i)
    return root


@pytest.fixture(scope="module")
def live(tiny_model_dir, many_adapters_dir):
    srv = start_server(tiny_model_dir, many_adapters_dir, admin_api_key=ADMIN_KEY, block_size=8)
    yield srv
    srv.stop()


@pytest.fixture
def client(live):
    from openai import OpenAI

    return OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0)
