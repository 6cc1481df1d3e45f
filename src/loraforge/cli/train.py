"""`loraforge train`: fine-tune a LoRA adapter from a YAML config."""

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from loraforge.cli.main import app

if TYPE_CHECKING:
    from loraforge.config.schema import FineTuneConfig


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
    nproc: int | None = typer.Option(
        None,
        "--nproc",
        help="Data-parallel training (trainer.strategy: ddp, or fsdp to shard the base) in N processes "
        "on this machine, started by torchrun's launcher: one per GPU (NCCL) or per CPU core (gloo). Same "
        "global batch as one process.",
    ),
) -> None:
    """Train a LoRA adapter; writes adapter/, metrics.jsonl, loss.png, eval.json and README.md."""
    from loraforge.config import load_config
    from loraforge.evaluate.report import render_report

    config = load_config(config_path, overrides)
    out = output_dir or default_output_dir(config_path)
    if nproc is not None:  # the workers run this command again, without --nproc; rank 0 reports
        _train_in_processes(config, config_path, overrides, out, resume, evaluate, baseline, nproc)
        return
    from loraforge.train.run import run_training

    run = run_training(config, out, resume=resume, evaluate=evaluate, baseline=baseline)
    if run.summary is None:  # a rank other than 0 under torchrun
        return
    typer.echo(f"{run.summary.headline()}; adapter: {out / 'adapter'}")
    if run.eval_report:
        render_report(run.eval_report)


def _train_in_processes(
    config: "FineTuneConfig",
    config_path: Path,
    overrides: list[str],
    out: Path,
    resume: bool,
    evaluate: bool,
    baseline: bool,
    nproc: int,
) -> None:
    """Checks what it can before starting anything, then runs the workers."""
    from loraforge.train.distributed import check_strategy
    from loraforge.train.launch import TrainingFailed, check_nproc, launch, worker_args
    from loraforge.train.model_setup import choose_placement
    from loraforge.train.run import checkpoint_to_resume

    device = choose_placement(config.trainer).device
    check_nproc(nproc, device, config.trainer.batch_size)
    check_strategy(config)
    checkpoint_to_resume(out, resume)  # --resume with no checkpoint: one line before any worker starts
    try:
        launch(nproc, worker_args(config_path, overrides, out, resume, evaluate, baseline))
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
