"""Reliability in one table: hostile input, load and a killed gateway, on this machine (loopback only).

  1. hostile-input sweep: tests/reliability/hostile.py's requests (issue-11 values, then hypothesis-drawn
     wrong types, huge and negative numbers, token ids outside the vocabulary, nested and non-JSON bodies)
     against a `loraforge serve` process on the tiny random model and against the gateway (in front of the
     scripted upstream of tests/gateway)
  2. load: concurrent streams over 32 adapters against that `loraforge serve` (tests/reliability/load.py),
     the server's RSS sampled every second
  3. gateway burst with a fault: tests/gateway/test_durability.py's workers against a `loraforge gateway`
     process, SIGKILLed mid-burst; then what a restarted gateway replays from the spool; every call a client
     received complete must be in the store

    python benchmarks/reliability_report.py [--streams 512] [--duration 60] [--per-field 5]

It prints the CPU it ran on, then one table: requests tried, 5xx, acknowledged vs stored, streams held,
memory growth. A sweep's violations (5xx, bodies not OpenAI-shaped, hangs) are listed under the table.
"""

import argparse
import asyncio
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' helpers: tiny model, adapters, servers, hostile inputs, workers

from tests.gateway.conftest import start_gateway  # noqa: E402
from tests.gateway.servers import ThreadServer, free_port, start_gateway_process  # noqa: E402
from tests.gateway.test_durability import WORKERS, burst_worker  # noqa: E402
from tests.gateway.upstream import UpstreamControl, create_upstream  # noqa: E402
from tests.reliability.hostile import sweep_bodies  # noqa: E402
from tests.reliability.load import API_KEY, make_adapters, run_load, start_serve  # noqa: E402

from loraforge.models.tiny import build_tiny_llama  # noqa: E402
from loraforge.store import Store  # noqa: E402
from loraforge.store.spool import Spool  # noqa: E402

WARMUP_FRACTION = 1 / 3  # memory growth is measured after the first third of the load
BURST_ACKS = 200  # the gateway is killed once this many calls were acknowledged


def cpu_description() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line), "?")
    flags = set(
        next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    )
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    avx512 = "AVX-512: yes" if "avx512f" in flags else "AVX-512: no"
    cores = info.count("processor\t:")
    return f"{name}, {cores} cores, {avx512} ({' '.join(features) or 'no AVX2'})"


def server_errors(result) -> str:
    """5xx answers, and connections the server dropped without answering (as bad as a 5xx)."""
    dropped = sum(n for status, n in result.statuses.items() if isinstance(status, str))
    return f"{result.server_errors}" + (f" (+{dropped} dropped)" if dropped else "")


def hostile_rows(serve_url: str, serve_models: list[str], per_field: int, work: Path) -> list[tuple]:
    rows, violations = [], []
    with httpx.Client(base_url=serve_url, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        result = sweep_bodies(client, serve_models, per_field, "serve")
    rows.append(("hostile input -> serve", result.tried, server_errors(result), "-", "-", "-", "-"))
    violations += result.violations

    control = UpstreamControl()
    with ThreadServer(create_upstream(control)) as upstream:
        control.url = f"{upstream.url}/v1"
        _, _, gateway = start_gateway(work, f"sqlite:///{work / 'hostile.db'}", control.url)
        with gateway, httpx.Client(base_url=gateway.url) as client:
            result = sweep_bodies(client, ["stub-model", ""], per_field, "gateway")
    rows.append(("hostile input -> gateway", result.tried, server_errors(result), "-", "-", "-", "-"))
    return rows, violations + result.violations


def load_row(serve, names: list[str], streams: int, duration: float) -> tuple:
    proc, url = serve
    result = asyncio.run(run_load(url, proc.pid, names, streams, duration, max_tokens=16))
    base, peak = result.rss_growth(duration * WARMUP_FRACTION)
    server_errors = sum(" HTTP 5" in e for e in result.errors)
    held = f"{len(result.streams_served)}/{streams} ({len(result.errors)} errors)"
    growth = f"{(peak - base) / 2**20:+.0f} MiB ({base >> 20} -> {peak >> 20})"
    label = f"load: {streams} streams x {duration:.0f} s"
    return (label, result.requests, server_errors, "-", "-", held, growth), result.errors[:10]


def burst_row(work: Path) -> tuple:
    control = UpstreamControl(chunk_delay_s=0.002)
    with ThreadServer(create_upstream(control)) as upstream:
        control.url = f"{upstream.url}/v1"
        store_url, spool = f"sqlite:///{work / 'burst.db'}", work / "burst-spool.jsonl"
        port = free_port()
        proc = start_gateway_process(
            ["--upstream-url", control.url, "--store", store_url, "--spool", str(spool)], port
        )
        acked: dict[str, str] = {}
        lock, stop = threading.Lock(), threading.Event()
        url = f"http://127.0.0.1:{port}"
        threads = [
            threading.Thread(target=burst_worker, args=(url, w, stop, acked, lock)) for w in range(WORKERS)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < BURST_ACKS and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
        store = Store(store_url)
        Spool(spool).replay(store)  # what a restarted gateway does first
        stored = {c.id for c in store.calls(task="burst")}
        store.close()
    kept = len(set(acked) & stored)
    label = f"gateway SIGKILL mid-burst ({WORKERS} clients)"
    return (label, len(control.requests), "-", len(acked), kept, "-", "-")


def print_table(rows: list[tuple]) -> None:
    header = ("scenario", "requests tried", "5xx", "acknowledged", "stored", "streams held", "memory growth")
    cells = [header, *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=512)
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--per-field", type=int, default=5, help="hypothesis-drawn values per request field")
    args = parser.parse_args()

    print(f"CPU: {cpu_description()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_llama(work / "tiny")
        names = make_adapters(model, work / "adapters", args.adapters)
        proc, url = start_serve(model, work / "adapters", work / "serve.log", args.streams)
        try:
            base = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
            models = [base["data"][0]["id"], *names[:2], "no-such-adapter"]
            rows, violations = hostile_rows(url, models, args.per_field, work)
            row, load_errors = load_row((proc, url), names, args.streams, args.duration)
            rows.append(row)
        finally:
            proc.terminate()
            proc.wait(30)
        rows.append(burst_row(work))
    print()
    print_table(rows)
    if violations:
        print(f"\n{len(violations)} hostile-input violations (first 20):")
        for v in violations[:20]:
            print("  " + v[:300])
    if load_errors:
        print("\nload errors (first 10):\n  " + "\n  ".join(load_errors))


if __name__ == "__main__":
    main()
