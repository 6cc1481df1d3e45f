"""`loraforge flywheel run-once|watch|status|show|check` and `loraforge plan`: the loop that retrains and
promotes by itself, and the advice on which approach a task's data supports."""

import json
from pathlib import Path

import typer

from loraforge.cli.dataset import STORE_HELP
from loraforge.cli.main import app
from loraforge.errors import ConfigError

flywheel_app = typer.Typer(
    help="Turn the loop by itself: dataset → train → compare → shadow → canary → full.",
    no_args_is_help=True,
)
app.add_typer(flywheel_app, name="flywheel")

POLICIES_HELP = "Policy files (YAML), or folders of them (*.yaml, *.yml)."


def _policies(paths: list[Path], task: str | None):
    from loraforge.flywheel.policy import load_policy

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        else:
            files.append(path)
    policies = [load_policy(f) for f in files]
    if not policies:
        raise ConfigError("no policy files found in " + ", ".join(map(str, paths)))
    tasks = [p.task for p in policies]
    clash = {t for t in tasks if tasks.count(t) > 1}
    if clash:
        raise ConfigError(f"two policies for task {sorted(clash)[0]!r}: one policy per task")
    if task is not None:
        policies = [p for p in policies if p.task == task]
        if not policies:
            raise ConfigError(f"no policy for task {task!r} among {', '.join(tasks)}")
    return policies


def _store(store: str | None):
    from loraforge.store import Store

    return Store(store)


@flywheel_app.command("run-once")
def run_once_cmd(
    policies: list[Path] = typer.Argument(..., help=POLICIES_HELP),
    task: str | None = typer.Option(None, "--task", help="Only this task's policy."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """One turn per task, as far as it can go now (waits for live traffic are left for the next call)."""
    from loraforge.flywheel.turn import run_once

    chosen = _policies(policies, task)
    handle = _store(store)
    for policy in chosen:
        report = run_once(handle, policy, echo=typer.echo)
        typer.echo(f"{report.task}: {report.outcome}: {report.message}")


@flywheel_app.command("watch")
def watch_cmd(
    policies: list[Path] = typer.Argument(..., help=POLICIES_HELP),
    interval: str = typer.Option("1m", "--interval", help="Between rounds, e.g. 30s, 5m, 1h."),
    task: str | None = typer.Option(None, "--task", help="Only this task's policy."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Run `run-once` on an interval until SIGTERM / Ctrl-C (which stop after the current step)."""
    from loraforge.flywheel.watch import watch
    from loraforge.spans import span_seconds

    seconds = span_seconds(interval)
    if seconds is None or seconds <= 0:
        raise ConfigError(f"--interval {interval!r}: use a span such as 30s, 5m or 1h")
    chosen = _policies(policies, task)
    typer.echo(f"watching {', '.join(p.task for p in chosen)} every {interval}")
    watch(_store(store), chosen, seconds, typer.echo)


@flywheel_app.command("check")
def check_cmd(policies: list[Path] = typer.Argument(..., help=POLICIES_HELP)) -> None:
    """Validate policy files (and their training config templates) without doing anything."""
    from loraforge.config import load_config

    for policy in _policies(policies, None):
        load_config(policy.train.config, policy.train.set)
        labels = len(policy.output.spec().labels)
        typer.echo(f"{policy.task}: ok ({policy.output.kind}, {labels} labels, gate `{policy.gate}`)")


@flywheel_app.command("status")
def status_cmd(
    task: str | None = typer.Option(None, "--task"),
    limit: int = typer.Option(20, "--limit", min=1),
    json_out: bool = typer.Option(False, "--json"),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """The newest turns: where each is, and why it stopped."""
    from rich.console import Console
    from rich.table import Table

    from loraforge.flywheel.records import list_runs

    runs = list_runs(_store(store), task, limit)
    if json_out:
        typer.echo(json.dumps([_run_json(r) for r in runs], indent=2))
        return
    table = Table("#", "task", "started (UTC)", "step", "status", "dataset", "adapter", "reason")
    for r in runs:
        dataset = f"{r.dataset_name} v{r.dataset_version}" if r.dataset_name else ""
        table.add_row(
            str(r.id), r.task, r.started.isoformat(timespec="seconds"), r.step, r.status, dataset,
            r.adapter or "", r.reason or "",
        )  # fmt: skip
    Console().print(table)


@flywheel_app.command("show")
def show_cmd(
    run_id: int = typer.Argument(..., help="The turn's number (see `flywheel status`)."),
    json_out: bool = typer.Option(False, "--json"),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """A turn's links and its log of events."""
    from loraforge.errors import LoraforgeError
    from loraforge.flywheel.records import get_run

    run = get_run(_store(store), run_id)
    if run is None:
        raise LoraforgeError(f"no flywheel turn #{run_id} (see `loraforge flywheel status`)")
    data = _run_json(run)
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key != "events" and value is not None:
            typer.echo(f"{key}: {value}")
    for event in run.events or []:
        typer.echo(f"  {event['time']}  {event['step']:<9} {event['message']}")


def _run_json(run) -> dict:
    keys = ("id", "task", "step", "status", "reason", "dataset_name", "dataset_version", "examples",
            "run_dir", "adapter", "comparison_id", "route_before", "route_seq", "events")  # fmt: skip
    data = {key: getattr(run, key) for key in keys}
    data["started"] = run.started.isoformat(timespec="seconds")
    data["updated"] = run.updated.isoformat(timespec="seconds")
    return data


@app.command("plan")
def plan_cmd(
    task: str = typer.Option(..., "--task"),
    min_score: float = typer.Option(1.0, "--min-score", help="A feedback score at least this is good."),
    json_out: bool = typer.Option(False, "--json"),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Recommend the general model, few-shot or fine-tuning for a task, from its data and held-out scores."""
    from loraforge.flywheel.plan import make_plan

    plan = make_plan(_store(store), task, min_score=min_score)
    if json_out:
        typer.echo(json.dumps(plan.to_json(), indent=2))
        return
    typer.echo(f"{task}: {plan.recommendation}")
    for reason in plan.reasons:
        typer.echo(f"  - {reason}")
