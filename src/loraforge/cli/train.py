"""`loraforge train`: fine-tune a LoRA adapter from a YAML config."""

from pathlib import Path

import typer

from loraforge.cli.main import app


def default_output_dir(config_path: Path) -> Path:
    return Path("runs") / config_path.stem


@app.command()
def train(
    config_path: Path = typer.Argument(..., metavar="CONFIG.yaml", help="The fine-tuning config."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set trainer.learning_rate=1e-4"),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Default: runs/<config name>."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last checkpoint in the output dir."
    ),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Evaluate on the test split after."),
    baseline: bool = typer.Option(False, "--baseline", help="Also evaluate the base model zero-shot."),
) -> None:
    """Train a LoRA adapter; writes adapter/, metrics.jsonl, loss.png, eval.json and README.md."""
    from loraforge.config import load_config
    from loraforge.evaluate.report import render_report
    from loraforge.train.run import run_training

    config = load_config(config_path, overrides)
    out = output_dir or default_output_dir(config_path)
    result = run_training(config, out, resume=resume, evaluate=evaluate, baseline=baseline)
    s = result["summary"]
    typer.echo(
        f"trained {s['steps']} steps on {s['train_examples']} examples in {s['train_seconds']:.0f} s "
        f"({s['tokens_per_second']:,.0f} tokens/s, {s['dtype']} on {s['device']}); adapter: {out / 'adapter'}"
    )
    if result["eval"]:
        render_report(result["eval"])
