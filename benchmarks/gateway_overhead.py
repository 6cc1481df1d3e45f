"""Gateway overhead: p50/p99 latency added vs calling the upstream directly, and sustained logged calls/s.

Runs a fast stub upstream (raw asyncio HTTP on 127.0.0.1) and `loraforge gateway` (SQLite store, the default)
as subprocesses, then:
  1. latency: N sequential non-streamed chat calls, alternating direct / through the gateway, over keep-alive
     connections with a minimal HTTP client (so the client's own cost is the same on both paths);
  2. throughput: C concurrent clients for D seconds through the gateway; every acknowledged call id must be in
     the store afterwards (0 lost).
Both SQLite commit modes are measured: `full` (fsync per group commit, survives power loss; its latency is
bounded below by the disk's fsync time) and `normal` (survives a gateway crash/SIGKILL, not a power cut).
Targets (issue 4): p50 added <= 2 ms; >= 500 logged calls/s with 0 lost. Exit status 1 if any call was lost.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 2000] [--concurrency 32] [--seconds 10]
        [--sqlite-sync full|normal|both]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loraforge.hardware import describe

BODY = json.dumps(
    {
        "model": "stub-model",
        "messages": [{"role": "user", "content": "Summarize: the quick brown fox jumps."}],
    }
).encode()
REPLY = json.dumps(
    {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "stub-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "A fox jumps."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }
).encode()


# ---- stub upstream: keep-alive HTTP/1.1, answers every request with REPLY ----
async def _serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(REPLY), REPLY)
            )
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _upstream_main(port: int) -> None:
    server = await asyncio.start_server(_serve_conn, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---- minimal keep-alive HTTP client ----
def _request(path: str, port: int) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
        b"x-loraforge-task: bench\r\ncontent-length: %d\r\n\r\n%s" % (path.encode(), port, len(BODY), BODY)
    )


class SyncConn:
    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.req = _request(path, port)

    def call(self) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(self.req)
        status = int(self.file.readline().split()[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        return status, headers, self.file.read(int(headers["content-length"]))


async def _async_call(reader, writer, req: bytes) -> tuple[int, str | None]:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.decode().partition(":") for line in lines[1:] if line)
    }
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("x-loraforge-call-id")


# ---- phases ----
def latency_phase(upstream_port: int, gateway_port: int, n: int) -> dict[str, float]:
    direct = SyncConn(upstream_port, "/v1/chat/completions")
    via = SyncConn(gateway_port, "/v1/chat/completions")
    for _ in range(min(200, n)):  # warm up both paths
        direct.call()
        via.call()
    d_times, g_times = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        direct.call()
        t1 = time.perf_counter()
        status, _, _ = via.call()
        t2 = time.perf_counter()
        assert status == 200, status
        d_times.append((t1 - t0) * 1000)
        g_times.append((t2 - t1) * 1000)
    return {
        "direct_p50_ms": _pct(d_times, 50),
        "direct_p99_ms": _pct(d_times, 99),
        "gateway_p50_ms": _pct(g_times, 50),
        "gateway_p99_ms": _pct(g_times, 99),
        "added_p50_ms": _pct(g_times, 50) - _pct(d_times, 50),
        "added_p99_ms": _pct(g_times, 99) - _pct(d_times, 99),
    }


async def throughput_phase(
    gateway_port: int, concurrency: int, seconds: float
) -> tuple[list[str], float, int]:
    req = _request("/v1/chat/completions", gateway_port)
    acked: list[str] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
        while time.perf_counter() < deadline:
            status, call_id = await _async_call(reader, writer, req)
            if status == 200 and call_id:
                acked.append(call_id)
            else:
                errors += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return acked, time.perf_counter() - start, errors


def _pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if p < 100 else max(values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def run_mode(sync: str, up_port: int, work: Path, args: argparse.Namespace) -> dict:
    """One gateway with `--sqlite-sync SYNC` on a fresh SQLite store: both phases, then the loss check."""
    from loraforge.store import Store

    store_url = f"sqlite:///{work / sync / 'store.db'}"
    gw_port = _free_port()
    cli = Path(sys.executable).with_name("loraforge")
    gateway = subprocess.Popen(
        [
            str(cli),
            "gateway",
            "--upstream-url",
            f"http://127.0.0.1:{up_port}/v1",
            "--store",
            store_url,
            "--port",
            str(gw_port),
            "--spool",
            str(work / sync / "spool.jsonl"),
            "--sqlite-sync",
            sync,
        ],
        env={**os.environ, "LORAFORGE_HOME": str(work)},
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(gw_port, gateway)
        lat = latency_phase(up_port, gw_port, args.requests)
        acked, elapsed, errors = asyncio.run(throughput_phase(gw_port, args.concurrency, args.seconds))
    finally:
        gateway.terminate()
        gateway.wait(30)
    store = Store(store_url)
    stored = {c.id for c in store.calls(task="bench")}
    store.close()
    rate = len(acked) / elapsed
    lost = len(set(acked) - stored)
    print(f"--sqlite-sync {sync}: latency over {args.requests} sequential calls (ms)")
    print(f"  direct   p50 {lat['direct_p50_ms']:.3f}  p99 {lat['direct_p99_ms']:.3f}")
    print(f"  gateway  p50 {lat['gateway_p50_ms']:.3f}  p99 {lat['gateway_p99_ms']:.3f}")
    print(f"  added    p50 {lat['added_p50_ms']:.3f}  p99 {lat['added_p99_ms']:.3f}   (target p50 <= 2 ms)")
    print(
        f"  throughput: {rate:.0f} logged calls/s ({len(acked)} in {elapsed:.1f} s, "
        f"concurrency {args.concurrency})"
    )
    print(f"  {errors} errors, {lost} lost (acknowledged but not in the store)   (target >= 500/s, 0 lost)")
    met = lat["added_p50_ms"] <= 2.0 and rate >= 500 and lost == 0 and errors == 0
    return {
        "sqlite_sync": sync,
        **{k: round(v, 3) for k, v in lat.items()},
        "calls_per_s": round(rate, 1),
        "lost": lost,
        "errors": errors,
        "targets_met": met,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="sequential calls per path (latency)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (throughput)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the throughput phase")
    parser.add_argument(
        "--sqlite-sync",
        choices=["full", "normal", "both"],
        default="both",
        help="gateway's SQLite commit mode: full = fsync per commit (power-loss safe), normal = crash safe",
    )
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)  # internal: run as the stub
    args = parser.parse_args()
    if args.upstream_port:
        asyncio.run(_upstream_main(args.upstream_port))
        return
    print(f"CPU: {describe()}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="loraforge-bench-"))
    up_port = _free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream-port", str(up_port)])
    results = []
    try:
        _wait_port(up_port, upstream)
        for sync in ["full", "normal"] if args.sqlite_sync == "both" else [args.sqlite_sync]:
            results.append(run_mode(sync, up_port, work, args))
    finally:
        upstream.terminate()
        upstream.wait(30)
    for result in results:
        print(json.dumps(result))
    sys.exit(0 if all(r["lost"] == 0 and r["errors"] == 0 for r in results) else 1)


if __name__ == "__main__":
    main()
