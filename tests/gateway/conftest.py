"""Gateway fixtures: the test upstream and an in-process gateway over real HTTP, per store backend."""

from dataclasses import dataclass

import pytest
from openai import OpenAI

from loraforge.gateway import GatewaySettings, create_app
from loraforge.store import Store
from tests.gateway.servers import ThreadServer
from tests.gateway.upstream import UpstreamControl, create_upstream
from tests.store.backends import BACKENDS, store_url_for
from tests.store.postgres_server import PrivatePostgres

PRICES = "taken: '2026-01-01'\nmodels:\n  stub-model: {input: 1.0, output: 2.0}\n"


@dataclass
class Gateway:
    url: str
    store: Store
    settings: GatewaySettings
    app: object

    def client(self, api_key: str = "sk-client", **kwargs) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=20, **kwargs)


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path) -> str:
    return store_url_for(request.param, tmp_path)


@pytest.fixture
def upstream():
    control = UpstreamControl()
    with ThreadServer(create_upstream(control)) as server:
        control.url = f"{server.url}/v1"
        yield control


@pytest.fixture
def specialist():
    """A scripted specialist server (adapters, or a base model prompted few-shot): answers card_arrival."""
    control = UpstreamControl(reply="card_arrival")
    with ThreadServer(create_upstream(control)) as server:
        control.url = f"{server.url}/v1"
        yield control


def start_gateway(tmp_path, store_url: str, upstream_url: str, **overrides):
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES)
    options = {"spool_path": tmp_path / "spool.jsonl", "prices_file": prices, "timeout_s": 5.0, **overrides}
    settings = GatewaySettings(upstream_url=upstream_url, store_url=store_url, **options)
    app = create_app(settings)
    return settings, app, ThreadServer(app)


@pytest.fixture
def gateway(tmp_path, store_url, upstream):
    settings, app, server = start_gateway(tmp_path, store_url, upstream.url)
    store = Store(store_url)
    with server:
        yield Gateway(server.url, store, settings, app)
    store.close()


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of this test's own, running; the test may stop and start it."""
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()
