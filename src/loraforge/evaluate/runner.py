"""Evaluate a model (and optionally the base model zero-shot) on a split, producing `eval.json`."""

import json
import random
from pathlib import Path

import torch
from rich.progress import Progress

from loraforge.config.schema import EvaluationConfig, FineTuneConfig
from loraforge.data.examples import ExampleBuilder
from loraforge.data.labels import load_labels
from loraforge.errors import ConfigError, DataError
from loraforge.evaluate.engine_backend import EngineBackend
from loraforge.evaluate.generation import ADAPTER, GenerationModel
from loraforge.evaluate.metrics import compute_metrics


def open_backend(
    config: FineTuneConfig, adapters: dict[str, Path], device: str | None = None
) -> EngineBackend | GenerationModel:
    """The generator `evaluation.backend` names, holding `adapters` by name (the report's keys)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = config.trainer.precision
    if config.evaluation.backend == "engine":
        return EngineBackend.load(config.base_model, adapters, precision, device)
    if set(adapters) - {ADAPTER}:
        raise ConfigError("the hf evaluation backend runs one adapter at a time; use the engine backend")
    return GenerationModel.load(config.base_model, adapter=adapters.get(ADAPTER), precision=precision)


def select_rows(records: list[dict], limit: int | None, seed: int) -> list[dict]:
    """The first `limit` rows after a seeded shuffle, so a subset covers all labels of a sorted file."""
    if limit is None or limit >= len(records):
        return records
    return random.Random(seed).sample(records, limit)


def evaluate_records(
    generator: EngineBackend | GenerationModel,
    builder: ExampleBuilder,
    records: list[dict],
    config: EvaluationConfig,
    *,
    adapters: tuple[str, ...] = (ADAPTER,),
    baseline: bool = False,
    show_progress: bool = True,
) -> dict:
    """Generate for every record with each of `adapters` (names the generator knows; the report's keys) and,
    with `baseline`, the base model ("base"), and score against the targets; returns the eval.json
    document."""
    if not records:
        raise DataError(f"evaluation: the {config.split} split has no rows")
    labels = load_labels(config.labels) if config.labels is not None else None
    examples = [builder.build(record) for record in records]
    prompts = [example.prompt for example in examples]
    references = [example.completion for example in examples]
    runs: list[str | None] = ([None] if baseline else []) + list(adapters)
    results: dict[str, dict] = {}
    samples: list[dict] = [{"prompt": p, "reference": r} for p, r in zip(prompts, references, strict=True)]
    with Progress(disable=not show_progress, transient=True) as progress:
        names = ", ".join(run or "base" for run in runs)
        task = progress.add_task(f"evaluate {names}", total=len(prompts) * len(runs))
        outputs = generator.generate_runs(
            prompts,
            runs,
            max_new_tokens=config.max_new_tokens,
            on_done=lambda n: progress.advance(task, n),
            allowed_outputs=labels if config.constrain_to_labels else None,
            batch_size=config.batch_size,
        )
    for run, predictions in outputs.items():
        name = run or "base"
        results[name] = compute_metrics(config.task, config.metrics, predictions, references, labels)
        for sample, prediction in zip(samples, predictions, strict=True):
            sample[name] = prediction
    return {
        "task": config.task,
        "split": config.split,
        "rows": len(records),
        "constrained_to_labels": config.constrain_to_labels,
        "results": results,
        "samples": samples,
    }


def write_report(report: dict, path: Path) -> None:
    """`eval.json` holds the metrics; the per-row predictions go beside it in `predictions.jsonl`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {key: value for key, value in report.items() if key != "samples"}
    path.write_text(json.dumps(summary, indent=2) + "\n")
    with path.with_name("predictions.jsonl").open("w") as handle:
        for sample in report["samples"]:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
