"""`loraforge evaluate`: score adapters (and the base model zero-shot) on a config's split."""

from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError


def adapter_names(adapters: list[Path]) -> dict[str, Path]:
    """Report names for adapter folders: "adapter" for one; else each folder's name (its run's name for a
    run's `adapter/` folder)."""
    from loraforge.inference.hf import ADAPTER

    if len(adapters) == 1:
        return {ADAPTER: adapters[0]}
    names = {(a.parent.name if a.name == ADAPTER else a.name): a for a in adapters}
    if len(names) < len(adapters):
        raise ConfigError("--adapter: two adapters would share a name; give folders with distinct names")
    return names


@app.command()
def evaluate(
    config_path: Path = typer.Argument(..., metavar="CONFIG.yaml", help="The fine-tuning config."),
    adapters: list[Path] = typer.Option(
        [], "--adapter", help="A PEFT adapter directory (e.g. runs/x/adapter); repeat to compare several."
    ),
    split: str | None = typer.Option(None, "--split", help="test or validation (default: evaluation.split)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate N rows (seeded sample)."),
    baseline: bool = typer.Option(
        False, "--baseline", help="Also run the base model zero-shot, same prompt."
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="engine (default: all runs in one batch stream) or hf (transformers)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set key.path=value"),
    output: Path | None = typer.Option(None, "--output", help="Where to write eval.json."),
) -> None:
    """Batched greedy generation on a split; prints a metrics table and writes eval.json."""
    from loraforge.config import load_config
    from loraforge.data.splits import load_splits
    from loraforge.evaluate.report import render_report
    from loraforge.evaluate.runner import evaluate_config, evaluation_rows, open_backend, write_report

    if not adapters and not baseline:
        raise ConfigError("nothing to evaluate: pass --adapter DIR, --baseline, or both")
    for key, value in (("split", split), ("limit", limit), ("backend", backend)):
        if value is not None:
            overrides = [*overrides, f"evaluation.{key}={value}"]
    config = load_config(config_path, overrides)
    named = adapter_names(adapters) if adapters else {}
    splits = load_splits(config.data)
    rows = evaluation_rows(config, splits)
    if not rows:
        raise ConfigError(f"evaluation.split '{config.evaluation.split}': the config gives no such data")
    generator = open_backend(config, named, baseline=baseline)
    indexes = {}
    if config.evaluation.classifier == "nearest" and named:
        from loraforge.classify.build import adapter_indexes
        from loraforge.classify.label_index import INDEX_FILE

        def say(path: Path) -> None:
            typer.echo(
                f"{path} has no {INDEX_FILE}: indexing the config's training rows (not saved)", err=True
            )

        indexes = adapter_indexes(config, generator, named, splits.train, on_build=say)
    report = evaluate_config(
        config, generator, rows, adapters=tuple(named), baseline=baseline, indexes=indexes
    )
    if named:
        report["adapters"] = {name: str(path) for name, path in named.items()}
    first = adapters[0] if len(adapters) == 1 else None  # one adapter: beside it; several: here
    destination = (
        output or ((first.parent if first.name == "adapter" else first) if first else Path(".")) / "eval.json"
    )
    write_report(report, destination)
    render_report(report)
    typer.echo(f"wrote {destination}")
