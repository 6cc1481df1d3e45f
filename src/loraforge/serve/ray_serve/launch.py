"""Start `loraforge serve --ray`: a Ray cluster (started here, or an existing one), Serve's HTTP proxy and
the application, until interrupted."""

import os
import sys
import threading

from loraforge.errors import ConfigError
from loraforge.serve.ray_serve.options import APP_NAME, RayServeOptions
from loraforge.serve.spec import ServerSpec

# The replicas' environment where this command starts the cluster: where loraforge and its caches are.
FORWARDED_ENV = {
    "PYTHONPATH",
    "LORAFORGE_HOME",
    "LORAFORGE_NO_KERNELS",
    "LORAFORGE_KERNEL_MARCH",
    "TORCH_EXTENSIONS_DIR",
    "HF_HOME",
    "HF_HUB_OFFLINE",
}


def import_ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("--ray needs Ray Serve: pip install 'loraforge[ray]'") from None
    return ray, serve


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (a `ray start --head` or KubeRay head: 'auto', 'ray://HOST:10001',
    'HOST:6379'), or start a local one in this process when None. Workers inherit this environment."""
    ray, _ = import_ray()
    if ray.is_initialized():
        return
    env = {"env_vars": {k: v for k, v in os.environ.items() if k in FORWARDED_ENV}}
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            runtime_env=env,
            logging_level="WARNING",
        )
    except ConnectionError as exc:
        raise ConfigError(f"--ray-address {address}: cannot reach a Ray cluster there ({exc})") from None


def deploy(spec: ServerSpec, options: RayServeOptions, host: str, port: int):
    """Start Serve's HTTP proxy on host:port and run the application; returns the ingress handle once
    the replicas are up."""
    _, serve = import_ray()
    from loraforge.serve.ray_serve.deployments import build_app
    from loraforge.serve.ray_serve.registry import drop_registry

    drop_registry()  # adapters registered at run time belong to the deployment that registered them
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(spec, options), name=APP_NAME, route_prefix="/")


def serve_until_interrupted(
    spec: ServerSpec, options: RayServeOptions, host: str, port: int, address: str | None
) -> None:
    ray, serve = import_ray()
    connect(address)
    try:
        deploy(spec, options, host, port)
        print(f"serving on Ray Serve at http://{host}:{port}/v1 (Ctrl-C stops)", file=sys.stderr)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        from loraforge.serve.ray_serve.registry import drop_registry

        serve.delete(APP_NAME)
        drop_registry()
        if address is None:  # a cluster started here goes with this command; a shared one stays
            serve.shutdown()
            ray.shutdown()
