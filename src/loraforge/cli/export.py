"""`loraforge export merged`: a trained adapter in the formats other tools load."""

from pathlib import Path

import typer

from loraforge.cli.main import app

export_app = typer.Typer(help="Export a trained adapter for other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("merged")
def merged(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A run directory (or its adapter/ folder)."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged model."),
    base_model: str | None = typer.Option(
        None, "--base-model", help="The base model (default: the one the run was trained on)."
    ),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 weights."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out."),
) -> None:
    """Base model + adapter merged into a plain Hugging Face model directory (safetensors)."""
    from loraforge.export import export_merged

    export_merged(run_dir, out, base_model=base_model, dtype=dtype, force=force)
    typer.echo(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
