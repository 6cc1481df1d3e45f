"""What reduced base weights (`--weights`, serve/model/quant.py) cost in quality (speed: quant_decode.py):

  1. perplexity of SmolLM2-135M on held text (GSM8K test questions and answers, /work/shared/data/gsm8k,
     --ppl-tokens tokens in windows of 512), per weight format
  2. accuracy of a Banking77 adapter (a trained run folder: its config.yaml and adapter/) on --rows test rows,
     through the evaluation pipeline (`evaluate_records` on the engine), per weight format

Formats: fp32 (the reference), bf16, int8, int4, all with fp32 activations so that only the weights differ.

    .venv/bin/python benchmarks/quant_quality.py --run runs/demo-banking77
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from loraforge.hardware import describe

FORMATS = ("fp32", "int8", "int4", "bf16")
WINDOW = 512


def held_text(path: Path, tokenizer, tokens: int) -> list[int]:
    """The first `tokens` tokens of the file's questions and answers, one after another."""
    ids: list[int] = []
    with path.open() as handle:
        for line in handle:
            row = json.loads(line)
            text = "\n".join(str(v) for v in row.values() if isinstance(v, str)) + "\n\n"
            ids += tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) >= tokens:
                return ids[:tokens]
    return ids


def perplexity(engine, ids: list[int]) -> float:
    """exp(mean next-token loss) over windows of WINDOW tokens, each a fresh context."""
    from loraforge.serve.lora.weights import NO_LORA
    from loraforge.serve.model.attention import AttentionMetadata

    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, WINDOW):
        window = torch.tensor(ids[start : start + WINDOW + 1])
        n = len(window) - 1
        if n < 2:
            break
        every = torch.arange(n)
        meta = AttentionMetadata(is_prefill=True, slot_mapping=every, last_token_index=every)
        hidden = engine.model(window[:n], every, meta, engine.kv, NO_LORA)
        logits = engine.model.logits(hidden).float()
        total += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
        count += n
    return math.exp(total / count)


def banking77(engine, run: Path, rows: int) -> tuple[float, int]:
    """(accuracy, rows) of the run's adapter on `rows` seeded test rows, through the evaluation pipeline."""
    from loraforge.config import load_config
    from loraforge.data.examples import ExampleBuilder
    from loraforge.data.splits import load_splits
    from loraforge.evaluate.engine_backend import EngineBackend
    from loraforge.evaluate.runner import evaluate_records, select_rows

    # Decoded labels: what the weight format changes directly (a label index was built on the run's weights).
    config = load_config(run / "config.yaml", [f"evaluation.limit={rows}", "evaluation.classifier=decode"])
    records = select_rows(load_splits(config.data).test, rows, config.data.seed)
    engine.adapters.register("b77", run / "adapter")
    backend = EngineBackend(engine)
    builder = ExampleBuilder(config.prompt, config.target, engine.tokenizer)
    report = evaluate_records(
        backend, builder, records, config.evaluation, adapters=("b77",), show_progress=False
    )
    return report["results"]["b77"]["accuracy"], len(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo-banking77"), help="a trained Banking77 run")
    ap.add_argument("--rows", type=int, default=300, help="Banking77 test rows (seeded sample)")
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument(
        "--text", type=Path, default=Path("../shared/data/gsm8k/test.jsonl"), help="held JSONL text"
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if not (args.run / "config.yaml").is_file() or not (args.run / "adapter").is_dir():
        raise SystemExit(
            f"{args.run}: no config.yaml and adapter/ (train one: loraforge train examples/banking77.yaml)"
        )
    from loraforge.serve.engine import Engine, EngineConfig

    print(describe())
    results = []
    for fmt in FORMATS:
        start = time.perf_counter()
        engine = Engine(EngineConfig(precision="fp32", weights=fmt, num_threads=args.threads))
        ppl = perplexity(engine, held_text(args.text, engine.tokenizer, args.ppl_tokens))
        accuracy, rows = banking77(engine, args.run, args.rows)
        results.append((fmt, engine.model.weight_format, ppl, accuracy, time.perf_counter() - start))
        print(f"{fmt}: perplexity {ppl:.3f}, Banking77 accuracy {accuracy:.3f}", flush=True)
        del engine
    print(
        f"\nperplexity: {args.ppl_tokens} tokens of {args.text} (windows of {WINDOW}); Banking77: "
        f"{rows} test rows, adapter {args.run / 'adapter'}; fp32 activations"
    )
    print("| weights | held as | perplexity | vs fp32 | Banking77 accuracy | vs fp32 | seconds |")
    print("|---|---|---|---|---|---|---|")
    ref_ppl, ref_acc = results[0][2], results[0][3]
    for fmt, held, ppl, acc, secs in results:
        print(
            f"| {fmt} | {held} | {ppl:.3f} | {ppl / ref_ppl:.3f}x | {acc:.3f} | {acc - ref_acc:+.3f} | "
            f"{secs:.0f} |"
        )


if __name__ == "__main__":
    main()
