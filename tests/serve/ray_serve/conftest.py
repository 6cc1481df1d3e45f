"""One local Ray cluster for the Ray Serve tests (2 CPUs, loopback), shut down after the last of them."""

import pytest

from loraforge.serve.engine import EngineConfig
from loraforge.serve.spec import ServerSpec
from tests.gateway.servers import free_port
from tests.serve.conftest import write_random_adapter

API_KEY = "ray-key"
NUM_ADAPTERS = 8


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
