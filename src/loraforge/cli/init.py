"""`loraforge init`: write a complete fine-tuning config for a task's data, saying what it chose and why."""

import json
from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError
from loraforge.models.aliases import DEFAULT_MODEL


@app.command()
def init(
    data: Path = typer.Option(..., "--data", help="Training data (JSONL, JSON, CSV or Parquet)."),
    input_column: str = typer.Option(..., "--input", help="The column the model reads."),
    target_column: str = typer.Option(..., "--target", help="The column the model must produce."),
    test: Path | None = typer.Option(None, "--test", help="A test split to evaluate on."),
    out: Path = typer.Option(Path("config.yaml"), "--out", help="Where to write the config."),
    base_model: str = typer.Option(DEFAULT_MODEL, "--base-model", help="The model to fine-tune."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing config."),
) -> None:
    """Infer the task (classification, JSON or generation), lengths and schedule from the data."""
    import yaml

    from loraforge.config import validate_config
    from loraforge.models import load_tokenizer, resolve_model
    from loraforge.recipe import infer_config

    if out.exists() and not force:
        raise ConfigError(f"--out {out} exists (pass --force to overwrite)")
    labels_path = out.with_name(f"{out.stem}.labels.json")
    tokenizer = load_tokenizer(resolve_model(base_model))
    inferred = infer_config(
        data,
        input_column,
        target_column,
        tokenizer,
        test=test,
        base_model=base_model,
        labels_path=labels_path,
    )
    if inferred.labels is not None:
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        labels_path.write_text(json.dumps(inferred.labels, indent=1) + "\n")
    validate_config(inferred.config)  # what init writes, train accepts
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {reason}\n" for reason in ["written by loraforge init:", *inferred.reasons])
    out.write_text(header + yaml.safe_dump(inferred.config, sort_keys=False))
    for reason in inferred.reasons:
        typer.echo(f"- {reason}")
    typer.echo(f"wrote {out}" + (f" and {labels_path}" if inferred.labels is not None else ""))
    typer.echo(f"next: loraforge train {out}")
