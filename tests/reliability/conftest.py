"""Servers the reliability tests attack: `loraforge serve`'s app on the tiny model with 16 adapters, and the
gateway in front of the scripted upstream; both on 127.0.0.1, one per module."""

import threading
from dataclasses import dataclass, field

import httpx
import pytest

from tests.gateway.conftest import start_gateway
from tests.gateway.servers import ThreadServer
from tests.gateway.upstream import UpstreamControl, create_upstream
from tests.serve.api.conftest import API_KEY, many_adapters_dir, start_server  # noqa: F401 (a fixture)

GATEWAY_KEY = "gw-key"


@pytest.fixture(scope="module")
def serve(tiny_model_dir, many_adapters_dir):  # noqa: F811 (the imported fixture)
    srv = start_server(tiny_model_dir, many_adapters_dir, block_size=8)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def upstream_server():
    control = UpstreamControl()
    with ThreadServer(create_upstream(control)) as server:
        control.url = f"{server.url}/v1"
        yield control


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream_server):
    """The gateway with its own key (so auth is attacked too), SQLite store, spool in a temp folder."""
    tmp = tmp_path_factory.mktemp("gateway")
    store_url = f"sqlite:///{tmp / 'store.db'}"
    _, _, server = start_gateway(tmp, store_url, upstream_server.url, api_key=GATEWAY_KEY)
    with server:
        yield server


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Bystander:
    """A well-behaved client running normal completions in a thread while hostile ones are sent: every one
    of them must succeed (a bad request must never harm anyone else's)."""

    url: str
    headers: dict[str, str]
    body: dict
    completed: int = 0
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(self.url, json=self.body)
                    finish = r.json()["choices"][0]["finish_reason"] if r.status_code == 200 else None
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200 or finish not in ("stop", "length"):
                    self.failures.append(f"HTTP {r.status_code} finish_reason={finish}: {r.text[:200]}")
                self.completed += 1

    def __enter__(self) -> "Bystander":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(90)
