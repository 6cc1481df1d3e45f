"""Dashboard page times with 1,000,000 calls in a SQLite store, against the same pages without the
dashboard's indexes (migration 0005) and against a 1,000-call store: ratios in the same run.

Fills a store by bulk insert with synthetic calls over 90 days (5 tasks of different sizes; on two of them
the route sends calls to an adapter, few-shot, fallback and shadow; feedback on 2% of calls), then times
each page through the ASGI app (query + rendering; the median of --repeat requests, after one warm-up).
Target (issue 14): the tasks page and a filtered calls page under 300 ms at 1M calls.

    .venv/bin/python benchmarks/ui_pages.py [--calls 1000000] [--repeat 5] [--keep DIR]
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from loraforge.hardware import describe
from loraforge.store import Store
from loraforge.store.tables import Call, Feedback, utcnow
from loraforge.ui import UISettings, create_ui_app
from loraforge.ui.queries.cache import CACHE

TASKS = (("intent", 0.4), ("support", 0.25), ("extract", 0.2), ("summarize", 0.1), ("triage", 0.05))
ROUTED = {"intent", "support"}
SPAN_DAYS = 90
BATCH = 20_000
UI_INDEXES = {"ix_calls_ui_task_time", "ix_calls_time"}


def pages(first_id: str) -> list[tuple[str, str]]:
    return [
        ("tasks (home, 30 days)", "/"),
        ("task page: intent", "/task?name=intent"),
        ("calls, newest", "/calls"),
        ("calls, task + adapter + ok", "/calls?task=intent&served=adapter&status=ok"),
        ("calls, task + fallback, 7d", "/calls?task=support&served=fallback&since=7d"),
        ("calls, task + with feedback", "/calls?task=summarize&feedback=with"),
        ("calls, task + text search", "/calls?task=triage&q=refund"),
        ("call detail", f"/calls/{first_id}"),
    ]


def fill(store: Store, n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    names = [t for t, _ in TASKS]
    weights = [w for _, w in TASKS]
    now = utcnow()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "placeholder"}]}
    words = ("refund", "card", "balance", "transfer", "invoice", "password", "delivery", "contract")
    feedback, first = [], None
    with store.db.begin() as conn:
        for start in range(0, n, BATCH):
            rows = []
            for i in range(start, min(n, start + BATCH)):
                task = rng.choices(names, weights)[0]
                served = None
                if task in ROUTED and rng.random() < 0.6:
                    served = rng.choice(("general", "fewshot", "adapter:v1", "adapter:v1", "fallback"))
                shadow = f"c{i - 1:08d}" if served == "general" and rng.random() < 0.1 else None
                ok = rng.random() > 0.02
                words_of = f"{rng.choice(words)} question {i}"
                rows.append({
                    "id": f"c{i:08d}",
                    "time": now - timedelta(seconds=SPAN_DAYS * 86400 * (n - i) / n),
                    "endpoint": "chat.completions", "task": task, "tags": {},
                    "requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini", "stream": False,
                    "request_body": {**body, "messages": [{"role": "user", "content": words_of}]},
                    "response_body": {"choices": [{"message": {"role": "assistant", "content": "label"}}]},
                    "status": "ok" if ok else "error", "http_status": 200 if ok else 502, "error": None,
                    "latency_ms": 100.0 + rng.random() * 400, "prompt_tokens": 30, "completion_tokens": 5,
                    "cost_usd": None if (served or "").startswith("adapter:") else 0.000021,
                    "served_by": served, "route_stage": None, "fallback_reason": None, "shadow_of": shadow,
                })  # fmt: skip
                if rng.random() < 0.02:
                    fixed = "fixed" if rng.random() < 0.3 else None
                    score = rng.choice((1.0, 5.0))
                    feedback.append({"call_id": f"c{i:08d}", "time": now, "score": score,
                                     "corrected_output": fixed})  # fmt: skip
            conn.execute(insert(Call), rows)
            first = first or rows[0]["id"]
        for start in range(0, len(feedback), BATCH):
            conn.execute(insert(Feedback), feedback[start : start + BATCH])
    return first or ""


def time_pages(client: TestClient, first_id: str, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """(first load with nothing cached, median of `repeat` loads after it) per page, in ms."""
    out, cold = {}, {}
    for name, path in pages(first_id):
        CACHE.clear()
        t0 = time.perf_counter()
        resp = client.get(path)
        cold[name] = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200:
            raise SystemExit(f"{path}: HTTP {resp.status_code}: {resp.text[:300]}")
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            client.get(path)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1000
    return cold, out


def set_ui_indexes(store: Store, present: bool) -> None:
    from loraforge.store.tables import Call as C

    with store.db.begin() as conn:
        for index in C.__table__.indexes:
            if index.name in UI_INDEXES:
                if present:
                    index.create(conn, checkfirst=True)
                else:
                    conn.execute(text(f"DROP INDEX IF EXISTS {index.name}"))
        conn.execute(text("ANALYZE"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000, help="calls in the small store")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the stores in this folder (reused when present)")
    args = parser.parse_args()
    print(describe())
    root = args.keep or Path(tempfile.mkdtemp(prefix="ui-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    for label, n in (("small", args.small), ("large", args.calls)):
        path = root / f"store-{n}.db"
        existed = path.exists()
        store = Store(f"sqlite:///{path}")
        if not existed:
            set_ui_indexes(store, present=False)  # bulk insert first, index after: how a migration meets it
            t0 = time.perf_counter()
            fill(store, n)
            print(f"filled {n:,} calls in {time.perf_counter() - t0:.0f} s", flush=True)
        first_id = "c00000000"
        client = TestClient(create_ui_app(UISettings(store_url=store.url, runs_dir=root / "runs"), store))
        if label == "large":
            set_ui_indexes(store, present=False)
            results["large, no 0005 indexes"] = time_pages(client, first_id, max(1, args.repeat // 2))[1]
        t0 = time.perf_counter()
        set_ui_indexes(store, present=True)
        if label == "large":
            print(f"indexes of 0005 built in {time.perf_counter() - t0:.0f} s", flush=True)
        results[f"{label}, first"], results[label] = time_pages(client, first_id, args.repeat)
        store.close()
    names = [name for name, _ in pages("")]
    large, small, bare = results["large"], results["small"], results["large, no 0005 indexes"]
    first = results["large, first"]
    print(f"\nmedian page time (ms), SQLite; {args.calls:,} vs {args.small:,} calls")
    print("(1M first: the first load, nothing cached; 1M no idx: without migration 0005's indexes)")
    print(
        f"{'page':32} {'1k':>7} {'1M':>7} {'1M first':>9} {'1M no idx':>10} {'1M/1k':>6} {'no idx/idx':>10}"
    )
    for name in names:
        print(
            f"{name:32} {small[name]:7.1f} {large[name]:7.1f} {first[name]:9.1f} {bare[name]:10.1f} "
            f"{large[name] / small[name]:6.1f} {bare[name] / large[name]:10.1f}"
        )
    slow = [n for n in ("tasks (home, 30 days)", "calls, task + adapter + ok") if large[n] > 300]
    print(
        "target (tasks page and a filtered calls page < 300 ms):",
        "MISSED " + ", ".join(slow) if slow else "met",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
