"""`loraforge train`: fine-tune a LoRA adapter from a YAML config."""

import sys
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

    result = run_training(config, out, resume=resume, evaluate=evaluate, baseline=baseline)
    summary = result["summary"]
    if summary is None:  # a rank other than 0 under torchrun
        return
    typer.echo(
        f"trained {summary['steps']} steps on {summary['train_examples']} examples in "
        f"{summary['train_seconds']:.0f} s ({summary['tokens_per_second']:,.0f} tokens/s, "
        f"{summary['dtype']} on {summary['device']}, {summary['processes']} process(es)); "
        f"adapter: {out / 'adapter'}"
    )
    if result["eval"]:
        render_report(result["eval"])


def _train_in_processes(config, config_path, overrides, out, resume, evaluate, baseline, nproc):
    """Checks what it can before starting anything, then runs the workers."""
    from loraforge.errors import ConfigError
    from loraforge.train.checkpoint import latest_checkpoint
    from loraforge.train.distributed import check_strategy
    from loraforge.train.launch import TrainingFailed, check_nproc, launch, worker_args
    from loraforge.train.model_setup import choose_placement

    device = choose_placement(config.trainer).device
    check_nproc(nproc, device, config.trainer.batch_size)
    check_strategy(config)
    if resume and latest_checkpoint(out / "checkpoints") is None:
        raise ConfigError(f"--resume: no checkpoint found under {out / 'checkpoints'}")
    try:
        launch(nproc, worker_args(config_path, overrides, out, resume, evaluate, baseline))
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
