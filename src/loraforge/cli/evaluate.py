"""`loraforge evaluate`: score an adapter (and the base model zero-shot) on a config's split."""

from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError


@app.command()
def evaluate(
    config_path: Path = typer.Argument(..., metavar="CONFIG.yaml", help="The fine-tuning config."),
    adapter: Path | None = typer.Option(
        None, "--adapter", help="A PEFT adapter directory (e.g. runs/x/adapter)."
    ),
    split: str | None = typer.Option(None, "--split", help="test or validation (default: evaluation.split)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate N rows (seeded sample)."),
    baseline: bool = typer.Option(
        False, "--baseline", help="Also run the base model zero-shot, same prompt."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set key.path=value"),
    output: Path | None = typer.Option(None, "--output", help="Where to write eval.json."),
) -> None:
    """Batched greedy generation on a split; prints a metrics table and writes eval.json."""
    from loraforge.config import load_config
    from loraforge.data.examples import ExampleBuilder
    from loraforge.data.splits import load_splits
    from loraforge.evaluate.generation import GenerationModel
    from loraforge.evaluate.report import render_report
    from loraforge.evaluate.runner import evaluate_records, select_rows, write_report

    if adapter is None and not baseline:
        raise ConfigError("nothing to evaluate: pass --adapter DIR, --baseline, or both")
    if split is not None:
        overrides = [*overrides, f"evaluation.split={split}"]
    if limit is not None:
        overrides = [*overrides, f"evaluation.limit={limit}"]
    config = load_config(config_path, overrides)
    splits = load_splits(config.data)
    records = splits.test if config.evaluation.split == "test" else splits.validation
    if not records:
        raise ConfigError(f"evaluation.split '{config.evaluation.split}': the config gives no such data")
    rows = select_rows(records, config.evaluation.limit, config.data.seed)
    generator = GenerationModel.load(config.base_model, adapter=adapter, precision=config.trainer.precision)
    builder = ExampleBuilder(config.prompt, config.target, generator.tokenizer)
    report = evaluate_records(
        generator, builder, rows, config.evaluation, with_adapter=adapter is not None, baseline=baseline
    )
    if adapter is not None:
        report["adapter"] = str(adapter)
    destination = output or (
        (adapter.parent if adapter and adapter.name == "adapter" else adapter or Path(".")) / "eval.json"
    )
    write_report(report, destination)
    render_report(report)
    typer.echo(f"wrote {destination}")
