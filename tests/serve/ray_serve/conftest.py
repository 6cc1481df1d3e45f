"""One local Ray cluster for the Ray Serve tests (2 CPUs, loopback), shut down after the last of them."""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from loraforge.serve.engine import EngineConfig
from loraforge.serve.spec import ServerSpec
from tests.gateway.servers import free_port
from tests.serve.conftest import write_random_adapter

API_KEY = "ray-key"
NUM_ADAPTERS = 8
T = TypeVar("T")


@pytest.fixture(scope="package")
def ray_cluster():
    import ray
    from ray import serve

    from loraforge.serve.ray_serve.launch import connect

    with pytest.MonkeyPatch.context() as mp:
        # The replicas run the engine's PyTorch path: its C++ kernels are tested in tests/serve/engine, and
        # a kernel build (minutes, once per machine) inside replica start-up would only slow these tests.
        mp.setenv("LORAFORGE_NO_KERNELS", "1")
        connect(None, num_cpus=2)
        try:
            yield
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-adapters")
    for i in range(NUM_ADAPTERS):
        write_random_adapter(tiny_model_dir, root / f"ad{i}", r=4, seed=200 + i)
    return root


@pytest.fixture(scope="module")
def spec(tiny_model_dir, ray_adapters) -> ServerSpec:
    config = EngineConfig(model=str(tiny_model_dir), precision="fp32", adapter_dir=ray_adapters, block_size=8)
    return ServerSpec(config, api_key=API_KEY)


@pytest.fixture(scope="package")
def port(ray_cluster) -> int:
    """The Ray entry point's port (Serve's HTTP proxy binds it once per cluster)."""
    return free_port()


def from_every_replica(
    ask: Callable[[], tuple[str, T]], replicas: int, timeout_s: float = 60
) -> dict[str, T]:
    """{replica: answer} from `ask()` (one request through the entry point: (replica that answered, answer)),
    asked until every replica has answered.

    Ray's router sends a request to the replica with the shorter queue as its cache last saw it, and a cache
    entry lives 10 s (RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S): a replica last seen busy can miss any number of
    quick sequential requests. Asking four at a time, for longer than that, reaches every replica.
    """
    seen: dict[str, T] = {}
    deadline = time.monotonic() + timeout_s
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            seen.update(pool.map(lambda _: ask(), range(4)))
            if len(seen) == replicas:
                return seen
            time.sleep(0.5)
    raise AssertionError(f"only {len(seen)} of {replicas} replicas answered in {timeout_s:.0f} s")
