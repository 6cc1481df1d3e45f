"""A realistic store for the dashboard's tests: several tasks, thousands of calls over weeks (general,
few-shot, adapter, fallback and shadow answers), feedback and corrections, dataset versions built from them,
a training run folder, comparisons and route changes."""

import json
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from loraforge.curation.datasets import DatasetFilter, build_dataset
from loraforge.store import Store
from loraforge.store.comparisons import save_comparison
from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import set_route
from loraforge.store.tables import utcnow

TASKS = ("intent", "support", "extract")
LABELS = ("card_lost", "refund", "balance", "transfer")


@dataclass
class Seeded:
    store_url: str
    runs_dir: Path
    calls: int
    dataset: str
    comparison_id: int
    shadowed_call: str


def call_record(i: int, task: str, when, served_by: str | None, shadow_of: str | None = None) -> dict:
    label = LABELS[i % len(LABELS)]
    text = f"message {i}: my question about {label.replace('_', ' ')}"
    return {
        "id": f"call-{i:07d}" if shadow_of is None else f"shadow-{i:07d}",
        "time": when,
        "endpoint": "chat.completions",
        "task": task,
        "tags": {},
        "requested_model": "gpt-4o-mini",
        "served_model": "gpt-4o-mini" if not (served_by or "").startswith("adapter:") else served_by[8:],
        "stream": False,
        "request_body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
        "response_body": {"choices": [{"message": {"role": "assistant", "content": label}}]},
        "status": "ok" if i % 97 else "error",
        "http_status": 200 if i % 97 else 502,
        "error": None if i % 97 else "upstream failed",
        "latency_ms": 120.0 + i % 50,
        "prompt_tokens": 20,
        "completion_tokens": 3,
        "cost_usd": None if (served_by or "").startswith("adapter:") else 0.00002,
        "served_by": served_by,
        "route_stage": "canary" if served_by else None,
        "shadow_of": shadow_of,
    }


def seed(store_url: str, root: Path, n_calls: int = 3000) -> Seeded:
    store = Store(store_url)
    rng = random.Random(7)
    now = utcnow()
    records, shadow_target = [], None
    for i in range(n_calls):
        task = TASKS[i % len(TASKS)]
        when = now - timedelta(days=20 * (n_calls - i) / n_calls, seconds=rng.random())
        served = None
        if task == "intent" and i > n_calls // 2:
            served = rng.choice(("general", "fewshot", "adapter:intent-v1", "adapter:intent-v1", "fallback"))
        records.append(call_record(i, task, when, served))
        if task == "intent" and served == "general" and shadow_target is None:
            shadow_target = records[-1]["id"]
            records.append(call_record(i, task, when, "adapter:intent-v1", shadow_of=shadow_target))
    for start in range(0, len(records), 1000):
        store.insert_calls(records[start : start + 1000])
    for i in range(0, n_calls, 7):  # feedback on a seventh of the calls, corrections on some
        if records[i]["status"] == "ok" and records[i]["task"] == "intent":
            store.add_feedback(records[i]["id"], score=4.0 if i % 3 else 1.0,
                               corrected_output="refund" if i % 5 == 0 else None)  # fmt: skip
    datasets_root = root / "datasets"
    first = build_dataset(store, "intent-ds", DatasetFilter(task="intent", test_fraction=0.2), datasets_root)
    curated = DatasetFilter(task="intent", use_corrections=True, min_score=3, test_fraction=0.2)
    build_dataset(store, "intent-ds", curated, datasets_root)
    runs_dir = root / "runs"
    write_run(runs_dir / "intent-v1", first.path / "train.jsonl")
    spec = OutputSpec("classification", LABELS)
    set_route(store, "intent", "shadow", "intent-v1", output=spec, actor="seed", reason="v1 trained")
    set_route(
        store, "intent", "canary", "intent-v1", percent=10, output=spec, actor="seed", reason="shadow ok"
    )
    comparison = save_comparison(store, comparison_result())
    store.close()
    return Seeded(store_url, runs_dir, len(records), "intent-ds", comparison.id, shadow_target or "")


def write_run(path: Path, train_file: Path) -> None:
    """The files `loraforge train` writes, with made-up numbers."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"base_model": "smollm2-135m", "data": {"train": str(train_file)}, "trainer": {"epochs": 2}}
    (path / "config.yaml").write_text(json.dumps(config))
    rows = [
        {"step": s, "epoch": s / 40, "train_loss": 3.0 / s, "learning_rate": 1e-3, "tokens_per_second": 80.0}
        for s in range(5, 80, 5)
    ]
    rows += [{"step": 40, "eval_loss": 0.5}, {"step": 76, "eval_loss": 0.43}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"base_model": "smollm2-135m", "steps": 76, "best_eval_loss": 0.43, "train_seconds": 800.0}
    (path / "summary.json").write_text(json.dumps(summary))
    report = {"task": "classification", "split": "test", "rows": 200,
              "results": {"base": {"accuracy": 0.0}, "adapter": {"accuracy": 0.335}}}  # fmt: skip
    (path / "eval.json").write_text(json.dumps(report))
    (path / "README.md").write_text("# LoRA adapter for `smollm2-135m`\n\n| metric | base | adapter |\n"
                                    "|---|---|---|\n| accuracy | 0.0000 | 0.3350 |\n")  # fmt: skip


def comparison_result() -> dict:
    fig = {"value": 0.9, "lo": 0.85, "hi": 0.94}
    base = {"value": 0.8, "lo": 0.74, "hi": 0.86}
    delta = {"value": 0.1, "lo": 0.04, "hi": 0.16}
    return {
        "task": "intent",
        "candidate": "adapter:intent-v1",
        "baseline": "general",
        "source": "dataset intent-ds v1 (test split)",
        "kind": "classification",
        "items": 200,
        "inputs_hash": "0" * 64,
        "metrics": {"accuracy": {"candidate": fig, "baseline": base, "delta": delta}},
        "gate": "accuracy>=baseline-0.01",
        "gate_passed": True,
        "disagreements": [
            {
                "input": "message 5: where is my refund",
                "candidate": "refund",
                "baseline": "balance",
                "reference": "refund",
            },
        ],  # fmt: skip
    }
