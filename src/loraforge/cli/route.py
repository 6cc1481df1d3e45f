"""`loraforge route set/show/rollback/off`: route a task's calls to its adapter (shadow, canary, full) or to
few-shot prompting (fewshot)."""

from pathlib import Path

import typer

from loraforge.cli.dataset import STORE_HELP, _open
from loraforge.cli.main import app
from loraforge.errors import LoraforgeError

route_app = typer.Typer(
    help="Route a task's calls through the gateway to its adapter; every change is kept in the store.",
    no_args_is_help=True,
)
app.add_typer(route_app, name="route")


@route_app.command("set")
def set_(
    task: str = typer.Option(..., "--task", help="The task (X-Loraforge-Task / metadata.task)."),
    adapter: str | None = typer.Option(
        None, "--adapter", help="Adapter name as the specialist server knows it (not for fewshot)."
    ),
    stage: str = typer.Option(..., "--stage", help="shadow | canary | full | fewshot."),
    percent: float | None = typer.Option(None, "--percent", help="Canary: share of calls to the adapter."),
    fallback: str = typer.Option(
        "on-error,on-invalid",
        "--fallback",
        help="When the general model answers instead: on-error (errors, timeouts), on-invalid, or none.",
    ),
    timeout_ms: int = typer.Option(30_000, "--timeout-ms", help="The adapter's time to answer."),
    kind: str | None = typer.Option(None, "--kind", help="text | classification | json (what is valid)."),
    labels: Path | None = typer.Option(None, "--labels", help="Label set: JSON list or one per line."),
    json_schema: Path | None = typer.Option(None, "--json-schema", help="JSON Schema the answers must meet."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="fewshot: general (the client's model, upstream; default) or a specialist-server model.",
    ),
    k: int | None = typer.Option(None, "--k", help="fewshot: examples per prompt (default 8)."),
    min_score: float | None = typer.Option(
        None,
        "--min-score",
        help="fewshot: calls scored at least this are examples too (default: corrected calls only).",
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the history)."),
    by: str | None = typer.Option(None, "--by", help="Who (default: user@host)."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Route TASK to ADAPTER at STAGE, or to few-shot prompting (--stage fewshot [--model] [--k]); a running
    gateway picks it up within its --route-refresh."""
    from loraforge.store.output_spec import parse_output_options
    from loraforge.store.route_options import RouteOptions, parse_fallback

    options = RouteOptions(
        stage,
        adapter,
        percent=percent,
        fallback=parse_fallback(fallback),
        timeout_ms=timeout_ms,
        output=parse_output_options(kind, labels, json_schema),
        model=model,
        k=k,
        min_score=min_score,
    )
    change = options.apply(_open(store), task, actor=by, reason=reason)
    typer.echo(f"task {task}: route #{change.seq} {describe(change)}")


@route_app.command("show")
def show(
    task: str | None = typer.Option(None, "--task", help="One task (with its full history)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Current routes; with --task, that task's whole history (who, when, what, why)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from loraforge.store.routes import route_history

    changes = route_history(_open(store), task)
    if task is not None and not changes:
        raise LoraforgeError(f"task {task!r} has never been routed")
    shown = changes if task is not None else _latest_per_task(changes)
    if json_out:
        typer.echo(json.dumps([_as_json(c) for c in shown], indent=2))
        return
    table = Table("task", "#", "time (UTC)", "action", "route", "fallback", "by", "reason")
    for c in shown:
        fallback = ",".join(c.fallback) if c.stage in ("canary", "full", "fewshot") else ""
        table.add_row(
            c.task,
            str(c.seq),
            c.time.isoformat(timespec="seconds"),
            c.action,
            describe(c),
            fallback or "-",
            c.actor,
            c.reason or "",
        )
    Console(width=160).print(table)


@route_app.command("rollback")
def rollback(
    task: str = typer.Option(..., "--task"),
    reason: str | None = typer.Option(None, "--reason"),
    by: str | None = typer.Option(None, "--by"),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Restore the route TASK had before its current one."""
    from loraforge.store.routes import rollback_route

    change = rollback_route(_open(store), task, actor=by, reason=reason)
    typer.echo(f"task {task}: rolled back, route #{change.seq} {describe(change)}")


@route_app.command("off")
def off(
    task: str = typer.Option(..., "--task"),
    reason: str | None = typer.Option(None, "--reason"),
    by: str | None = typer.Option(None, "--by"),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Send all of TASK's calls to the general model again."""
    from loraforge.store.routes import route_off

    change = route_off(_open(store), task, actor=by, reason=reason)
    typer.echo(f"task {task}: route #{change.seq} off (the general model answers every call)")


def describe(change) -> str:
    if change.stage == "off":
        return "off"
    if change.stage == "fewshot":
        options = change.options or {}
        what = f"fewshot -> {options.get('model')} with k={options.get('k')} examples"
        if options.get("min_score") is not None:
            what += f" (corrected or scored >= {options['min_score']:g})"
        kind = (change.output or {}).get("kind")
        return what + (f" [{kind}]" if kind and kind != "text" else "")
    what = f"{change.stage} -> adapter:{change.adapter}"
    if change.stage == "canary":
        what += f" ({change.percent:g}%)"
    kind = (change.output or {}).get("kind")
    return what + (f" [{kind}]" if kind and kind != "text" else "")


def _latest_per_task(changes):
    latest = {}
    for c in changes:  # ordered by task, seq
        latest[c.task] = c
    return list(latest.values())


def _as_json(c) -> dict:
    return {
        "task": c.task,
        "seq": c.seq,
        "time": c.time.isoformat(),
        "action": c.action,
        "stage": c.stage,
        "adapter": c.adapter,
        "percent": c.percent,
        "fallback": c.fallback,
        "timeout_ms": c.timeout_ms,
        "output": c.output,
        "options": c.options,
        "actor": c.actor,
        "reason": c.reason,
        "previous_seq": c.previous_seq,
    }
