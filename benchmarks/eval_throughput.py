"""Evaluation speed: the engine backend vs HF `generate` (issue 18, target >= 5x end to end), same run.

Both evaluate the same Banking77 test rows with an adapter, as `loraforge evaluate CONFIG --adapter DIR` does
(`--baseline`: also the base model zero-shot, as `loraforge train --baseline` does): HF runs padded batches
of `evaluation.batch_size` (the config's, what `--backend hf` uses), one model after the other; the engine
runs every row in one continuous batch, a lone adapter merged into the base, its prefix cache prefilling the
shared template start once, and (`--constrain`) ends a label once its first tokens name it. Prints
seconds, rows/s, the ratio, accuracy on both and how many predictions agree (in bf16 the two backends'
matmuls may round differently; in fp32 they agree exactly, tests/evaluate/test_engine_backend.py).

    .venv/bin/python benchmarks/eval_throughput.py                      # 512 rows, a random r=16 adapter
    .venv/bin/python benchmarks/eval_throughput.py --rows 3080 --adapter runs/demo-banking77/adapter
    # the README's figure: init's config for Banking77 at 10 per label, its trained adapter
    .venv/bin/python benchmarks/eval_throughput.py --config RUN/config.yaml --adapter RUN/adapter \
        --rows 3080 --constrain
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from loraforge.config import load_config
from loraforge.data.examples import ExampleBuilder
from loraforge.data.splits import load_splits
from loraforge.evaluate.runner import evaluate_records, open_backend, select_rows
from loraforge.hardware import describe
from loraforge.inference.hf import ADAPTER
from loraforge.models import resolve_model

sys.path.insert(0, str(Path(__file__).parent))
from serve_throughput import make_adapters  # noqa: E402  (a sibling benchmark's random adapters)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "examples/banking77.yaml")
    ap.add_argument("--rows", type=int, default=512, help="test rows (seeded sample; Banking77 has 3,080)")
    ap.add_argument("--adapter", type=Path, help="a trained adapter (default: a random r=16 all-linear one)")
    ap.add_argument(
        "--constrain", action="store_true", help="decode only labels (evaluation.constrain_to_labels)"
    )
    ap.add_argument("--baseline", action="store_true", help="also evaluate the base model zero-shot")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"CPU: {describe()}", flush=True)
    torch.set_num_threads(args.threads)
    overrides = [
        f"evaluation.limit={args.rows}",
        f"evaluation.constrain_to_labels={str(args.constrain).lower()}",
        "evaluation.classifier=decode",  # what both backends do: the hf backend has no label index
    ]
    config = load_config(args.config, overrides)
    rows = select_rows(load_splits(config.data).test, config.evaluation.limit, config.data.seed)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter
        if adapter is None:
            adapter = Path(tmp) / make_adapters(resolve_model(config.base_model).path, Path(tmp), 1, 16)[0]
        timings, predictions, accuracy = {}, {}, {}
        for backend in ("hf", "engine"):
            config.evaluation.backend = backend
            generator = open_backend(config, {ADAPTER: adapter}, baseline=args.baseline)
            builder = ExampleBuilder(config.prompt, config.target, generator.tokenizer)
            start = time.perf_counter()
            report = evaluate_records(
                generator, builder, rows, config.evaluation, baseline=args.baseline, show_progress=False
            )
            timings[backend] = time.perf_counter() - start
            predictions[backend] = [tuple(s.get(k) for k in ("base", ADAPTER)) for s in report["samples"]]
            accuracy[backend] = report["results"][ADAPTER]["accuracy"]
            print(f"{backend}: {timings[backend]:.1f} s, accuracy {accuracy[backend]:.3f}", flush=True)
            del generator
    same = sum(a == b for a, b in zip(predictions["hf"], predictions["engine"], strict=True))
    n, runs = len(rows), 2 if args.baseline else 1
    print(
        f"\n{n} rows x {runs} run(s) ({'base + ' if args.baseline else ''}adapter), max_new_tokens "
        f"{config.evaluation.max_new_tokens}, constrained to labels: {args.constrain}, "
        f"hf batch size {config.evaluation.batch_size}\n"
    )
    print("| backend | seconds | rows/s | adapter accuracy |\n|---|---|---|---|")
    for backend, seconds in timings.items():
        print(f"| {backend} | {seconds:.1f} | {runs * n / seconds:.1f} | {accuracy[backend]:.3f} |")
    print("\n| ratio | measured | target |\n|---|---|---|")
    print(f"| engine vs hf, end to end | {timings['hf'] / timings['engine']:.2f}x | >= 5x |")
    print(f"\nrows whose predictions agree between backends: {same}/{n}")


if __name__ == "__main__":
    main()
