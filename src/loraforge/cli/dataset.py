"""`loraforge dataset build/list/show/export`: fine-tuning datasets curated from logged traffic."""

import json
from pathlib import Path

import typer

from loraforge.cli.main import app

dataset_app = typer.Typer(
    help="Build fine-tuning datasets from the calls logged by the gateway.", no_args_is_help=True
)
app.add_typer(dataset_app, name="dataset")

STORE_HELP = (
    "Store URL (sqlite:///path or postgresql://...); default $LORAFORGE_STORE_URL or $LORAFORGE_HOME."
)


def _open(store: str | None):
    from loraforge.store import Store

    return Store(store)


@dataset_app.command("build")
def build(
    task: str = typer.Option(..., "--task", help="Task whose successful calls become examples."),
    name: str = typer.Option(..., "--name", help="Dataset name; each distinct content gets a new version."),
    since: str | None = typer.Option(None, "--since", help="Only calls at or after this UTC ISO date/time."),
    min_score: float | None = typer.Option(
        None, "--min-score", help="Drop calls whose feedback scored below."
    ),
    use_corrections: bool = typer.Option(
        False, "--use-corrections", help="Use corrected outputs from feedback."
    ),
    dedupe: bool = typer.Option(False, "--dedupe", help="Keep one example per normalized input."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of inputs (by hash) in test."),
    reviewed_only: bool = typer.Option(
        False, "--reviewed-only", help="Only calls with a correction or a feedback score (>= --min-score)."
    ),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Build (or reuse) a dataset version from the task's logged calls."""
    from loraforge.curation.datasets import DatasetFilter, build_dataset

    filt = DatasetFilter(task, since, min_score, use_corrections, dedupe, test_fraction, reviewed_only)
    result = build_dataset(_open(store), name, filt)
    verb = "unchanged, reusing" if result.reused else "built"
    c = result.counts
    typer.echo(
        f"{verb} {result.name} v{result.version}: {c['train']} train / {c['test']} test rows "
        f"({c['selected']} calls, {c['low_score']} low-scored, {c['duplicates']} duplicates, "
        f"{c['corrected']} corrected, {c['unusable']} unusable, {c['unreviewed']} unreviewed) "
        f"-> {result.path}"
    )


@dataset_app.command("list")
def list_(store: str | None = typer.Option(None, "--store", help=STORE_HELP)) -> None:
    """List dataset versions."""
    from rich.console import Console
    from rich.table import Table

    from loraforge.curation.datasets import list_datasets

    table = Table("name", "version", "train", "test", "task", "created (UTC)", "hash")
    for d in list_datasets(_open(store)):
        created = d.created.isoformat(timespec="seconds")
        table.add_row(
            d.name,
            str(d.version),
            str(d.train_count),
            str(d.test_count),
            str(d.filter.get("task")),
            created,
            d.content_hash[:12],
        )
    Console().print(table)


@dataset_app.command("show")
def show(
    name: str = typer.Argument(..., help="Dataset name."),
    version: int | None = typer.Option(None, "--version", "-v", help="Version (default: newest)."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Print a dataset version's manifest."""
    from loraforge.curation.datasets import get_dataset
    from loraforge.errors import DataError

    dataset = get_dataset(_open(store), name, version)
    manifest = Path(dataset.path) / "manifest.json"
    if not manifest.exists():
        raise DataError(f"dataset {name} v{dataset.version}: {manifest} is missing")
    typer.echo(json.dumps({**json.loads(manifest.read_text()), "path": dataset.path}, indent=2))


@dataset_app.command("export")
def export(
    name: str = typer.Argument(..., help="Dataset name."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory to copy train.jsonl, test.jsonl, manifest.json."
    ),
    version: int | None = typer.Option(None, "--version", "-v", help="Version (default: newest)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files in --out."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Copy a dataset version's files out of $LORAFORGE_HOME."""
    from loraforge.curation.datasets import export_dataset, get_dataset

    dataset = get_dataset(_open(store), name, version)
    for path in export_dataset(dataset, out, force=force):
        typer.echo(str(path))
