"""`serve --ray` scaling: tokens/s of 1 vs 2 replicas, and adapter loads per 1,000 requests with adapter
affinity (Ray Serve multiplexing) vs without (any replica: Ray's default routing, as behind a plain load
balancer), on a local Ray cluster started here.

Throughput: the same base-model requests (greedy, `--max-tokens` each, `--concurrency` at once) against
1 replica, then 2; one torch thread per replica, one Ray CPU each. On a 2-core machine the ratio is bounded by
the cores (and by this client and Ray's proxy, which share them).

Affinity: `--adapters` adapters, each replica holding at most `--resident` (Ray's multiplexing and the
engine's LRU bounded alike), requests drawn from a Zipf distribution over the adapters (a few popular, a long
tail), the same sequence for both sides. A load is a request that found its adapter not resident on the
replica that took it (each replica counts its own; EngineReplica.stats).

    .venv/bin/python benchmarks/ray_scaling.py                  # tiny random Llama, engine's PyTorch path
    .venv/bin/python benchmarks/ray_scaling.py --requests 2000 --kernels
"""

import argparse
import os
import random
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from loraforge.hardware import describe

PROMPTS = ["How do I activate my card?", "Why did my transfer fail?", "The quick brown fox"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deploy_fresh(spec, options, port: int) -> None:
    """A new application (fresh replicas, counters at zero), answering once this returns."""
    from ray import serve

    from loraforge.serve.ray_serve.launch import deploy
    from loraforge.serve.ray_serve.options import APP_NAME

    if APP_NAME in serve.status().applications:
        serve.delete(APP_NAME)
    deploy(spec, options, "127.0.0.1", port)


def replica_stats(replicas: int) -> dict[str, int]:
    """Adapter loads per replica (asked until every replica has answered)."""
    from ray import serve

    from loraforge.serve.ray_serve.options import APP_NAME

    handle = serve.get_deployment_handle("EngineReplica", APP_NAME)
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 60  # past Ray's 10 s queue-length cache, which can hide an idle replica
    while time.monotonic() < deadline:
        for stats in [call.result() for call in [handle.stats.remote() for _ in range(4)]]:
            seen[stats["replica"]] = stats["adapter_loads"]
        if len(seen) == replicas:
            return seen
        time.sleep(0.5)
    raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered in 60 s")


def run_requests(
    url: str, jobs: list[tuple[str, str]], max_tokens: int, concurrency: int
) -> tuple[int, float]:
    """(completion tokens, wall seconds) for `jobs` (model, prompt) sent `concurrency` at a time."""

    def one(client: httpx.Client, job: tuple[str, str]) -> int:
        body = {"model": job[0], "prompt": job[1], "max_tokens": max_tokens, "temperature": 0}
        response = client.post(url + "/v1/completions", json=body, timeout=300)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    with httpx.Client() as client, ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(lambda job: one(client, job), jobs))
        return tokens, time.perf_counter() - started


def zipf_sequence(names: list[str], count: int, seed: int, s: float = 1.0) -> list[str]:
    weights = [1.0 / (rank + 1) ** s for rank in range(len(names))]
    return random.Random(seed).choices(names, weights=weights, k=count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per affinity side")
    parser.add_argument("--throughput-requests", type=int, default=192)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=24)
    parser.add_argument("--resident", type=int, default=4, help="adapters resident per replica")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny random Llama")
    parser.add_argument("--kernels", action="store_true", help="the engine's C++ kernels (else PyTorch)")
    args = parser.parse_args()
    if not args.kernels:
        os.environ["LORAFORGE_NO_KERNELS"] = "1"  # replicas inherit it (launch.FORWARDED_ENV)
    import ray
    from ray import serve

    from loraforge.models.tiny import build_tiny_llama
    from loraforge.models.tiny_adapters import write_random_adapter
    from loraforge.serve.ray_serve.launch import connect
    from loraforge.serve.ray_serve.options import RayServeOptions
    from loraforge.serve.spec import ServerSettings

    print(describe())
    cores = os.cpu_count() or 1
    path = "C++ kernels" if args.kernels else "PyTorch path"
    print(f"model: tiny random Llama (hidden {args.hidden}, 4 layers), fp32, engine {path}, 1 thread/replica")
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llama(Path(tmp) / "model", hidden_size=args.hidden, num_layers=4,
                                 intermediate_size=2 * args.hidden)  # fmt: skip
        names = [f"ad{i:02d}" for i in range(args.adapters)]
        for i, name in enumerate(names):
            write_random_adapter(model, Path(tmp) / "adapters" / name, r=8, seed=i)
        settings = ServerSettings(
            model=str(model), precision="fp32", adapter_dir=Path(tmp) / "adapters", threads=1,
            max_adapters=args.resident,
        )  # fmt: skip
        spec = settings.spec()
        connect(None, num_cpus=2)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            rates = {}
            for replicas in (1, 2):
                deploy_fresh(spec, RayServeOptions(replicas=replicas, replica_cpus=1.0), port)
                listed = [m["id"] for m in httpx.get(url + "/v1/models", timeout=60).json()["data"]]
                base = next(m for m in listed if m not in names)
                jobs = [(base, PROMPTS[i % 3]) for i in range(args.throughput_requests)]
                warm_up = jobs[: 2 * args.concurrency]  # every replica, every batch size seen once
                run_requests(url, warm_up, args.max_tokens, args.concurrency)
                tokens, seconds = run_requests(url, jobs, args.max_tokens, args.concurrency)
                rates[replicas] = tokens / seconds
                rate = f"{rates[replicas]:8.1f} tokens/s"
                print(f"{replicas} replica(s): {rate} ({tokens} tokens in {seconds:.1f} s)")
            print(
                f"ratio 2 / 1 replicas: {rates[2] / rates[1]:.2f}x  (bounded by this machine's {cores} "
                "cores, shared by both replicas, Ray's proxy and this client: replicas scale on more cores "
                "or nodes)"
            )

            sequence = zipf_sequence(names, args.requests, seed=7)
            work = [(name, PROMPTS[i % 3]) for i, name in enumerate(sequence)]
            loads = {}
            for affinity in (True, False):
                options = RayServeOptions(
                    replicas=2, replica_cpus=1.0, max_adapters_per_replica=args.resident, affinity=affinity
                )
                deploy_fresh(spec, options, port)
                run_requests(url, work, 4, 8)
                per_replica = replica_stats(2)
                loads[affinity] = 1000 * sum(per_replica.values()) / len(sequence)
                side = "with affinity (multiplexing)" if affinity else "without affinity (any replica)"
                print(f"{side:>32}: {loads[affinity]:6.1f} adapter loads per 1,000 requests "
                      f"(per replica: {sorted(per_replica.values())})")  # fmt: skip
            print(
                f"{args.adapters} adapters (Zipf), {args.resident} resident per replica, 2 replicas, "
                f"{len(sequence)} requests: loads without / with affinity "
                f"{loads[False] / max(loads[True], 1e-9):.2f}x"
            )
        finally:
            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
