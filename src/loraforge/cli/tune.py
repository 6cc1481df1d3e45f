"""`loraforge tune`: hyperparameter search over fine-tuning runs."""

from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError
from loraforge.spans import span_seconds


def parse_duration(text: str) -> float:
    """A span (`90s`, `30m`, `2h`, `1d`) or plain seconds, as seconds."""
    seconds = span_seconds(text)
    if seconds is None:
        seconds = span_seconds(f"{text}s")  # plain seconds
    if seconds is None:
        raise ConfigError(f"--timeout '{text}': expected a number with s, m, h or d (e.g. 2h)")
    return seconds


@app.command()
def tune(
    config_path: Path = typer.Argument(..., metavar="CONFIG.yaml", help="The fine-tuning config to tune."),
    trials: int = typer.Option(..., "--trials", min=1, help="Finished trials to reach (a rerun resumes)."),
    timeout: str | None = typer.Option(None, "--timeout", help="Stop starting trials after this (e.g. 2h)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Default: runs/tune-CONFIG."),
    study: str | None = typer.Option(None, "--study", help="Study name (default: the output folder's name)."),
    store: str | None = typer.Option(None, "--store", help="Store URL; the study is kept in its database."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set key.path=value"),
) -> None:
    """Search learning rate, rank, epochs and dropout (the config's `tune:` space) by validation loss."""
    from rich.console import Console
    from rich.table import Table

    from loraforge.config import load_config
    from loraforge.tune import run_search
    from loraforge.tune.storage import optuna_storage_url

    seconds = parse_duration(timeout) if timeout else None
    config = load_config(config_path, overrides)
    output_dir = output_dir or Path("runs") / f"tune-{config_path.stem}"
    result = run_search(
        config,
        output_dir,
        trials=trials,
        storage_url=optuna_storage_url(store),
        study_name=study or output_dir.name,
        timeout_s=seconds,
    )
    console = Console()
    table = Table(title=f"study {result.study}: {result.finished} trials finished")
    table.add_column("")
    table.add_column("value")
    table.add_row("best trial", f"{result.best_trial} (validation loss {result.best_value:.4f})")
    for name, value in result.best_params.items():
        table.add_row(f"  {name}", f"{value:.3g}" if isinstance(value, float) else str(value))
    for name, share in result.importances.items():
        table.add_row(f"importance of {name}", f"{share:.2f}")
    console.print(table)
    console.print(
        f"best adapter: {result.best_run_dir / 'adapter'}; report: {output_dir}/trials.json, tune.png"
    )
