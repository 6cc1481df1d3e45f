"""The seed's figure, measured: general model vs few-shot vs fine-tuned adapter on Banking77 as the number of
reviewed examples grows, and what `loraforge plan` recommends at each size.

For each size N: N Banking77 training questions are logged in a fresh store as calls of the general model,
each corrected by a reviewer with its true label; the flywheel's dataset filter builds a version (30% held
out); an adapter is trained on its train split and registered with a `loraforge serve` of the embedded
model; `compare` measures the adapter against few-shot (k most similar train examples, BM25) and few-shot
against the general model (the same base model with the intent list only) on the held-out split; then
`plan` reads those comparisons. Ratios: adapter / few-shot and few-shot / general accuracy, same run.

    python benchmarks/plan_curve.py [--sizes 20,200,2000] [--epochs 2] [--out runs/plan-curve]
"""

import argparse
import json
import random
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import yaml

from loraforge import hardware
from loraforge.compare.run import CompareRequest, run_comparison
from loraforge.config import load_config
from loraforge.cost.hardware import hardware_price
from loraforge.cost.prices import PriceTable
from loraforge.curation.datasets import DatasetFilter, build_dataset
from loraforge.demo.processes import Children, free_port
from loraforge.flywheel.plan import make_plan
from loraforge.store import Store
from loraforge.store.output_spec import OutputSpec
from loraforge.store.tables import utcnow
from loraforge.train.run import run_training

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77"
TEMPLATE = ROOT / "examples" / "flywheel" / "banking77-train.yaml"
TASK = "banking77"


def logged_call(text: str, system: str, answer: str, seq: int) -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return {
        "id": f"call_{uuid.uuid4().hex}",
        "time": utcnow() - timedelta(hours=1) + timedelta(milliseconds=seq),
        "endpoint": "chat.completions",
        "task": TASK,
        "tags": {},
        "requested_model": "general",
        "served_model": "general",
        "stream": False,
        "request_body": {"model": "general", "messages": messages},
        "response_body": {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]},
        "status": "ok",
        "http_status": 200,
        "latency_ms": 1.0,
        "served_by": "general",
    }


def sample(n: int, seed: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "train.jsonl").open()]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,200,2000")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-test", type=int, default=200, help="Held-out rows compared at most.")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "plan-curve")
    args = parser.parse_args()
    print(f"CPU: {hardware.describe()}")
    labels = json.loads((DATA / "labels.json").read_text())
    # The intents are not listed: 77 names would make every prompt ~700 tokens, past the template's
    # max_seq_length. Few-shot sees them in its examples, the adapter learns them, the general model guesses.
    system = "Classify the banking customer message. Answer with its intent name only (snake_case)."
    spec = OutputSpec("classification", tuple(labels))
    args.out.mkdir(parents=True, exist_ok=True)
    table = []
    with Children(args.out / "logs") as children:
        serve = children.start("serve", ["serve", "--model", "smollm2-135m", "--adapter-root", str(args.out)],
                               free_port())  # fmt: skip
        model = httpx.get(f"{serve}/v1/models", timeout=30).json()["data"][0]["id"]
        for n in [int(s) for s in args.sizes.split(",")]:
            started = time.monotonic()
            work = args.out / f"n{n}"
            work.mkdir(parents=True, exist_ok=True)
            store = Store(f"sqlite:///{work / 'store.db'}")
            rows = sample(n)
            records = [logged_call(r["text"], system, "unknown", i) for i, r in enumerate(rows)]
            store.insert_calls(records)
            for record, row in zip(records, rows, strict=True):
                store.add_feedback(record["id"], corrected_output=row["label"])
            # Held out: 30% of the inputs by hash as in the flywheel's policy, at most about --max-test rows.
            fraction = min(0.3, args.max_test / n)
            filt = DatasetFilter(TASK, use_corrections=True, reviewed_only=True, test_fraction=fraction)
            built = build_dataset(store, "b77", filt, root=work / "datasets")
            overrides = [f"data.train={built.path / 'train.jsonl'}", f"trainer.epochs={args.epochs}",
                         "trainer.checkpoint_every=null"]  # fmt: skip
            config = load_config(TEMPLATE, overrides)
            run_training(config, work / "run", evaluate=False, show_progress=False)
            adapter = f"b77-n{n}"
            path = str((work / "run" / "adapter").resolve())
            httpx.post(
                f"{serve}/v1/adapters", json={"name": adapter, "path": path}, timeout=300
            ).raise_for_status()
            prices = PriceTable.load(None)
            common = dict(task=TASK, dataset=f"b77:{built.version}", upstream_url=f"{serve}/v1",
                          specialist_url=f"{serve}/v1", general_model=model, spec=spec, max_tokens=24,
                          k=args.k, concurrency=8)  # fmt: skip
            hw = hardware_price()
            for candidate, baseline in ((f"adapter:{adapter}", "fewshot"), ("fewshot", "general")):
                req = CompareRequest(candidate=candidate, baseline=baseline, **common)
                run_comparison(store, req, prices, hw)
            plan = make_plan(store, TASK)
            row = {"n": n, "train": built.counts["train"], "test": built.counts["test"],
                   "plan": plan.recommendation, "minutes": (time.monotonic() - started) / 60}  # fmt: skip
            for kind in ("general", "fewshot", "adapter"):
                s = plan.scores[kind]
                row[kind] = (s.value, s.lo, s.hi) if s else None
            table.append(row)
            print(json.dumps(row), flush=True)
            store.close()
    head = f"{'general':>22} {'few-shot':>22} {'adapter':>22} {'adapter/few-shot':>17}"
    print(f"\n{'N':>6} {'train/test':>11} {head} plan")
    for r in table:
        fig = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v else "-"  # noqa: E731
        both = r["adapter"] and r["fewshot"] and r["fewshot"][0]
        ratio = r["adapter"][0] / r["fewshot"][0] if both else float("nan")
        print(f"{r['n']:>6} {r['train']:>5}/{r['test']:<5} {fig(r['general']):>22} {fig(r['fewshot']):>22} "
              f"{fig(r['adapter']):>22} {ratio:>16.2f}x {r['plan']}")  # fmt: skip
    yaml.safe_dump(table, (args.out / "table.yaml").open("w"))


if __name__ == "__main__":
    sys.exit(main())
