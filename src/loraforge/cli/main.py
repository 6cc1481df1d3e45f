"""Entry point of the `loraforge` CLI: one Typer app, one sub-module per command group."""

import sys

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
COMMAND_MODULES = ["generate", "train", "evaluate", "demo", "serve", "gateway", "dataset", "synth"]


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"loraforge.cli.{name}")


def main() -> None:
    """Run the CLI; a user's mistake becomes one line on stderr and exit status 2, never a traceback."""
    _register_commands()
    try:
        app(standalone_mode=False)
    except LoraforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
        raise
