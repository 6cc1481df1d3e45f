"""The gateway's own upstream client against httpx, measured in the same run (the case for not using httpx).

Both send the same POST over keep-alive connections to the stub upstream of benchmarks/gateway_overhead.py
on 127.0.0.1: CPU milliseconds per request in the client process and wall time, sequential and with
--concurrency requests in flight. The ratio column is httpx / gateway client (above 1: httpx costs more).
For the whole gateway with each client, see the README (benchmarks/gateway_overhead.py).

    .venv/bin/python benchmarks/upstream_client.py [--requests 3000] [--concurrency 32]
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from gateway_overhead import BODY, _free_port, _wait_port  # noqa: E402

from loraforge.gateway.upstream import UpstreamClient  # noqa: E402
from loraforge.hardware import describe  # noqa: E402

HEADERS = {"content-type": "application/json"}


class GatewayClient:
    def __init__(self, port: int) -> None:
        self.client = UpstreamClient(f"http://127.0.0.1:{port}/v1", 30.0, 5.0)

    async def call(self) -> bytes:
        resp = await self.client.request("POST", "/chat/completions", BODY, HEADERS)
        try:
            return await resp.read()
        finally:
            resp.close()

    async def aclose(self) -> None:
        await self.client.aclose()


class HttpxClient:
    """httpx as the gateway would use it: one AsyncClient, streamed responses, no connection cap."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            trust_env=False,
        )

    async def call(self) -> bytes:
        request = self.client.build_request("POST", self.url, content=BODY, headers=HEADERS)
        resp = await self.client.send(request, stream=True)
        try:
            return await resp.aread()
        finally:
            await resp.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


async def measure(make, port: int, n: int, concurrency: int) -> dict[str, float]:
    client = make(port)
    for _ in range(200):  # warm up
        await client.call()
    times = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await client.call()
        times.append(time.perf_counter() - t0)
    cpu_seq = (time.process_time() - cpu0) / n

    async def worker(k: int) -> None:
        for _ in range(k):
            await client.call()

    per = max(1, n // concurrency)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu_conc = (time.process_time() - cpu0) / (per * concurrency)
    await client.aclose()
    return {
        "p50_ms": statistics.median(times) * 1000,
        "cpu_ms_per_req": cpu_seq * 1000,
        "concurrent_req_per_s": per * concurrency / wall,
        "concurrent_cpu_ms_per_req": cpu_conc * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"CPU: {describe()}", flush=True)
    port = _free_port()
    stub = Path(__file__).with_name("gateway_overhead.py")
    upstream = subprocess.Popen([sys.executable, str(stub), "--upstream-port", str(port)])
    try:
        _wait_port(port, upstream)
        ours = asyncio.run(measure(GatewayClient, port, args.requests, args.concurrency))
        theirs = asyncio.run(measure(HttpxClient, port, args.requests, args.concurrency))
    finally:
        upstream.terminate()
        upstream.wait(30)
    print(f"{'':28}{'gateway client':>16}{'httpx':>12}{'httpx / gateway':>18}")
    for key in ours:
        print(f"{key:28}{ours[key]:16.3f}{theirs[key]:12.3f}{theirs[key] / ours[key]:18.2f}")


if __name__ == "__main__":
    main()
