"""Entry point of the `loraforge` CLI: one Typer app, one sub-module per command group."""

import os
import sys
import warnings

import typer

from loraforge.errors import LoraforgeError

app = typer.Typer(
    name="loraforge",
    help="Fine-tune small LoRA models from a general-model prototype, evaluate them, and serve many at once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# Each command group lives in its own module and registers itself on `app` when imported.
COMMAND_MODULES = [
    "init",
    "generate",
    "train",
    "evaluate",
    "tune",
    "export",
    "demo",
    "serve",
    "deploy",
    "gateway",
    "dataset",
    "store",
    "synth",
    "route",
    "compare",
    "report",
    "flywheel",
    "ui",
]


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"loraforge.cli.{name}")


def main() -> None:
    """Run the CLI; a user's mistake becomes one line on stderr and exit status 2, never a traceback."""
    # Library progress bars and deprecation notices are noise next to our own progress output.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gguf.*", category=UserWarning)
    _register_commands()
    try:
        app()  # usage errors (bad options) are printed by click itself and exit 2
    except LoraforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
