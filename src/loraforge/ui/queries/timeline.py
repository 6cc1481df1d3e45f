"""A task's loop as one timeline: dataset versions, training runs, comparisons, route changes.

Each source is one function `(TimelineContext) -> Iterable[Event]` in `SOURCES`; adding a source (say, the
flywheel's recorded turns) is adding one function there.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from loraforge.flywheel.records import list_runs as list_flywheel_runs
from loraforge.store.store import Store
from loraforge.store.tables import Comparison, Dataset, RouteChange
from loraforge.ui.queries.runs import list_runs


@dataclass(frozen=True)
class TimelineContext:
    store: Store
    task: str
    runs_dir: Path


@dataclass(frozen=True)
class Event:
    time: datetime
    kind: str  # "dataset", "run", "comparison", "route", ...
    title: str
    detail: str = ""
    link: str | None = None  # a path under the dashboard, e.g. /datasets/NAME/1
    status: str = ""  # "ok", "failed", "running", ... (styles the marker)


def task_datasets(store: Store, task: str) -> list[Dataset]:
    """The dataset versions built from the task's calls (the task is part of each version's filter)."""
    with Session(store.db, expire_on_commit=False) as session:
        rows = session.scalars(select(Dataset).order_by(Dataset.created))
        return [d for d in rows if (d.filter or {}).get("task") == task]


def dataset_events(ctx: TimelineContext) -> Iterable[Event]:
    for d in task_datasets(ctx.store, ctx.task):
        detail = f"{d.row_count} rows ({d.train_count} train, {d.test_count} test)"
        link = f"/datasets/{d.name}/{d.version}"
        yield Event(d.created, "dataset", f"dataset {d.name} v{d.version}", detail, link)


def run_events(ctx: TimelineContext) -> Iterable[Event]:
    """Runs trained on one of the task's dataset versions (their config's data.train lies in its folder)."""
    folders = [Path(d.path).resolve() for d in task_datasets(ctx.store, ctx.task)]
    for run in list_runs(ctx.runs_dir):
        train = run.train_data
        if not train or not any(Path(train).resolve().is_relative_to(f) for f in folders):
            continue
        loss = run.summary.get("best_eval_loss")
        detail = f"{run.base_model}" + (f", best validation loss {loss:.4f}" if loss is not None else "")
        yield Event(run.modified, "run", f"training run {run.id}", detail, f"/runs/{run.id}", run.status)


def comparison_events(ctx: TimelineContext) -> Iterable[Event]:
    query = select(Comparison).where(Comparison.task == ctx.task).order_by(Comparison.time)
    with Session(ctx.store.db) as session:
        for c in session.scalars(query):
            status = "" if c.gate_passed is None else ("ok" if c.gate_passed else "failed")
            verdict = f" — gate {'passed' if status == 'ok' else 'failed'}" if status else ""
            yield Event(
                c.time,
                "comparison",
                f"comparison #{c.id}: {c.candidate} vs {c.baseline}{verdict}",
                f"{c.items} items, {c.source}",
                f"/comparisons/{c.id}",
                status,
            )


def route_events(ctx: TimelineContext) -> Iterable[Event]:
    query = select(RouteChange).where(RouteChange.task == ctx.task).order_by(RouteChange.seq)
    with Session(ctx.store.db) as session:
        for c in session.scalars(query):
            what = describe_route(c)
            title = f"route #{c.seq}: {'rolled back to ' if c.action == 'rollback' else ''}{what}"
            detail = f"by {c.actor}" + (f": {c.reason}" if c.reason else "")
            status = "failed" if c.action == "rollback" else ""
            yield Event(c.time, "route", title, detail, None, status)


def flywheel_events(ctx: TimelineContext) -> Iterable[Event]:
    """The flywheel's turns: where each is, and why it stopped or rolled back."""
    for run in list_flywheel_runs(ctx.store, ctx.task):
        status = {"done": "ok", "running": "running"}.get(run.status, "failed")
        made = f", adapter {run.adapter}" if run.adapter else ""
        last = (run.events or [{}])[-1].get("message", "")
        yield Event(run.updated, "flywheel", f"flywheel turn #{run.id}: {run.status} at {run.step}{made}",
                    run.reason or last, None, status)  # fmt: skip


def describe_route(change: RouteChange) -> str:
    if change.stage == "off":
        return "off (general model)"
    if change.stage == "fewshot":
        return f"few-shot on {(change.options or {}).get('model', 'general')}"
    what = f"{change.stage} → {change.adapter}"
    return what + (f" ({change.percent:g}%)" if change.stage == "canary" else "")


SOURCES: list[Callable[[TimelineContext], Iterable[Event]]] = [
    dataset_events,
    run_events,
    comparison_events,
    route_events,
    flywheel_events,
]


def timeline(ctx: TimelineContext) -> list[Event]:
    """Every source's events, newest first."""
    events = [e for source in SOURCES for e in source(ctx)]
    return sorted(events, key=lambda e: e.time, reverse=True)
