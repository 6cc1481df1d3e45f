"""Two gateways over one PostgreSQL, both sending a task's calls to its adapter through the Ray entry point:
routes set once are seen by both, and every call lands in the shared store."""

import time

import httpx
import pytest

from loraforge.serve.ray_serve.launch import deploy
from loraforge.serve.ray_serve.options import RayServeOptions
from loraforge.store import Store
from loraforge.store.routes import set_route
from tests.gateway.conftest import private_postgres, start_gateway  # noqa: F401 - fixture
from tests.serve.api.conftest import start_server
from tests.serve.ray_serve.conftest import API_KEY

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
CALLS_PER_GATEWAY = 6


def test_two_gateways_share_one_postgres_behind_the_ray_entry(
    spec,
    port,
    private_postgres,  # noqa: F811
    tiny_model_dir,
    tmp_path,
):
    deploy(spec, RayServeOptions(replicas=1, replica_cpus=0.5), "127.0.0.1", port)
    general = start_server(tiny_model_dir, None, api_key=None)  # stands in for the general model's API
    store = Store(private_postgres.url)
    gateways = []
    try:
        for name in ("g1", "g2"):
            (tmp_path / name).mkdir()
            _, _, server = start_gateway(
                tmp_path / name,
                private_postgres.url,
                general.url + "/v1",
                specialist_url=f"http://127.0.0.1:{port}/v1",
                specialist_api_key=API_KEY,
                route_refresh_s=0.2,
            )
            gateways.append(server.__enter__())
        set_route(store, "cards", "full", "ad1", reason="one route, both gateways")
        body = {"model": "general", "prompt": "where is my card?", "max_tokens": 4, "temperature": 0}
        headers = {"X-Loraforge-Task": "cards"}
        for gateway in gateways:
            deadline = time.monotonic() + 20
            while True:
                r = httpx.post(gateway.url + "/v1/completions", json=body, headers=headers, timeout=60)
                if r.headers.get("x-loraforge-served-by") == "adapter:ad1":
                    break
                assert time.monotonic() < deadline, "a gateway never picked up the shared route"
                time.sleep(0.2)
            for _ in range(CALLS_PER_GATEWAY):
                r = httpx.post(gateway.url + "/v1/completions", json=body, headers=headers, timeout=60)
                assert r.status_code == 200, r.text
                assert r.headers["x-loraforge-served-by"] == "adapter:ad1"
        served = [c for c in store.calls("cards") if c.served_by == "adapter:ad1"]
        # Both gateways' calls, in the one database; only the Ray entry point serves adapters here.
        assert len(served) >= 2 * (CALLS_PER_GATEWAY + 1)
    finally:
        for server in gateways:
            server.__exit__(None, None, None)
        general.stop()
        store.close()
