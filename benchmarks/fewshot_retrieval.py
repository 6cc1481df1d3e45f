"""Few-shot retrieval on Banking77: BM25's k nearest examples against k random ones, measured in one run.

For each test query, the index of a train sample (20, 200, 2,000 and all 10,003 rows: the amounts of data a
task has on its way from the general model to an adapter) returns k examples. What a few-shot prompt needs
is the right answer among its examples, so the figures are: label hit@k (the query's true intent is among
the k examples' answers), and k-NN vote accuracy (the most common answer among the k; ties go to the more
similar example). The baseline is k examples drawn at random from the same sample. Plus the time to build
the index and to answer one query.

    .venv/bin/python benchmarks/fewshot_retrieval.py [--k 8] [--queries 1000] [--sizes 20,200,2000,0]
"""

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from loraforge.fewshot import ExampleIndex, FewShotExample

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "banking77"


def load(path: Path) -> list[FewShotExample]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    return [FewShotExample.of([{"role": "user", "content": r["text"]}], r["label"]) for r in rows]


def vote(examples: list[FewShotExample]) -> str | None:
    counts = Counter(e.output for e in examples)
    if not counts:
        return None
    best = max(counts.values())
    return next(e.output for e in examples if counts[e.output] == best)  # ties: the more similar one


def measure(train: list[FewShotExample], queries: list[FewShotExample], k: int, seed: int) -> dict:
    started = time.perf_counter()
    index = ExampleIndex.from_rows(train)
    build_s = time.perf_counter() - started
    rng = random.Random(seed)
    hits = {"bm25": 0, "random": 0}
    right = {"bm25": 0, "random": 0}
    latencies = []
    for query in queries:
        t = time.perf_counter()
        near = index.top_k(list(query.messages), k)
        latencies.append(time.perf_counter() - t)
        drawn = rng.sample(train, min(k, len(train)))
        for name, shots in (("bm25", near), ("random", drawn)):
            hits[name] += any(e.output == query.output for e in shots)
            right[name] += vote(shots) == query.output
    n = len(queries)
    return {
        "train": len(train),
        "build_ms": build_s * 1000,
        "query_ms_p50": statistics.median(latencies) * 1000,
        "query_ms_p95": sorted(latencies)[int(0.95 * (n - 1))] * 1000,
        **{f"hit_{name}": hits[name] / n for name in hits},
        **{f"vote_{name}": right[name] / n for name in right},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--queries", type=int, default=1000, help="test rows used (0: all 3,080)")
    parser.add_argument("--sizes", default="20,200,2000,0", help="train sample sizes (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.data / "train.jsonl").is_file():
        sys.exit(f"no Banking77 data at {args.data} (expected train.jsonl and test.jsonl)")
    train = load(args.data / "train.jsonl")
    test = load(args.data / "test.jsonl")
    rng = random.Random(args.seed)
    queries = rng.sample(test, args.queries) if 0 < args.queries < len(test) else test
    print(f"Banking77: {len(queries)} test queries, k={args.k}; baseline: {args.k} random train examples")
    header = (
        f"{'train rows':>10} {'hit@k bm25':>10} {'random':>7} {'ratio':>6} "
        f"{'vote bm25':>9} {'random':>7} {'ratio':>6} {'build ms':>9} {'query ms p50/p95':>17}"
    )
    print(header)
    for size in (int(s) for s in args.sizes.split(",")):
        sample = rng.sample(train, size) if 0 < size < len(train) else train
        r = measure(sample, queries, args.k, args.seed)
        print(
            f"{r['train']:>10} {r['hit_bm25']:>10.1%} {r['hit_random']:>7.1%} "
            f"{r['hit_bm25'] / max(r['hit_random'], 1e-9):>5.1f}x "
            f"{r['vote_bm25']:>9.1%} {r['vote_random']:>7.1%} "
            f"{r['vote_bm25'] / max(r['vote_random'], 1e-9):>5.1f}x "
            f"{r['build_ms']:>9.1f} {r['query_ms_p50']:>8.2f}/{r['query_ms_p95']:.2f}"
        )


if __name__ == "__main__":
    main()
