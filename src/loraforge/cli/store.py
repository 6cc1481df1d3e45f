"""`loraforge store prune`: the store's log retention."""

import typer

from loraforge.cli.dataset import STORE_HELP
from loraforge.cli.main import app

store_app = typer.Typer(help="Maintain the store of logged calls.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("prune")
def prune(
    task: str | None = typer.Option(None, "--task", help="Only this task's calls (default: every task)."),
    keep_days: int | None = typer.Option(None, "--keep-days", help="Keep every call of the last D days."),
    keep_rows: int | None = typer.Option(None, "--keep-rows", help="Keep each task's N newest calls."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Delete old calls and their feedback; calls a dataset version was built from are always kept."""
    from loraforge.store import Store
    from loraforge.store.retention import prune_calls

    result = prune_calls(Store(store), task=task, keep_days=keep_days, keep_rows=keep_rows, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    count = result.matched - result.referenced if dry_run else result.deleted
    typer.echo(f"{verb} {count} calls; kept {result.referenced} that datasets use")
