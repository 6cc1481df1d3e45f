"""SQLAlchemy 2 models of the store: calls, feedback, datasets, routes, comparisons (times are naive UTC)."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JsonType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Naive UTC: the one time convention of the store, identical on SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Call(Base):
    """One request through the gateway, successful or not."""

    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    endpoint: Mapped[str] = mapped_column(String(32))  # "chat.completions" or "completions"
    task: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    requested_model: Mapped[str | None] = mapped_column(String(200))
    served_model: Mapped[str | None] = mapped_column(String(200))
    stream: Mapped[bool] = mapped_column(default=False)
    request_body: Mapped[dict[str, Any]] = mapped_column(JsonType)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16))  # "ok" or "error"
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    # Routing (migration 0002): who answered ("general", "adapter:NAME" or "fallback"), under which stage,
    # why it fell back, and for a shadow answer the id of the call it mirrors.
    served_by: Mapped[str | None] = mapped_column(String(200))
    route_stage: Mapped[str | None] = mapped_column(String(16))
    fallback_reason: Mapped[str | None] = mapped_column(Text)
    shadow_of: Mapped[str | None] = mapped_column(String(64), index=True)

    __table_args__ = (
        Index("ix_calls_task_time", "task", "time"),
        # The dashboard's (migration 0005): see that migration for why each column is in it.
        Index(
            "ix_calls_ui_task_time",
            "task",
            "time",
            "served_by",
            "shadow_of",
            "status",
            "cost_usd",
            "prompt_tokens",
            "completion_tokens",
        ),  # fmt: skip
        Index("ix_calls_time", "time"),
    )


class Feedback(Base):
    """A score and/or corrected output for one call; the newest feedback of a call wins."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    time: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    score: Mapped[float | None] = mapped_column(Float)
    corrected_output: Mapped[str | None] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)


class Dataset(Base):
    """One immutable version of a dataset built from traffic."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    filter: Mapped[dict[str, Any]] = mapped_column(JsonType)
    row_count: Mapped[int] = mapped_column(Integer)
    train_count: Mapped[int] = mapped_column(Integer)
    test_count: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("name", "version", name="uq_datasets_name_version"),)


class DatasetRow(Base):
    """Provenance of one dataset line: the call it came from, whether its output was corrected, its split."""

    __tablename__ = "dataset_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    corrected: Mapped[bool] = mapped_column(default=False)
    split: Mapped[str] = mapped_column(String(8))  # "train" or "test"
    input_hash: Mapped[str] = mapped_column(String(64))


class RouteChange(Base):
    """One change of a task's route; the newest change of a task is its current route (stage "off": none)."""

    __tablename__ = "route_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(200))
    seq: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per task
    time: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    action: Mapped[str] = mapped_column(String(16))  # "set", "off", "rollback"
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(String(16))  # "shadow", "canary", "full", "fewshot", "off"
    adapter: Mapped[str | None] = mapped_column(String(200))
    percent: Mapped[float | None] = mapped_column(Float)
    fallback: Mapped[list[str]] = mapped_column(JsonType, default=list)  # "on-error", "on-invalid"
    timeout_ms: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)  # what a valid answer is
    previous_seq: Mapped[int | None] = mapped_column(Integer)  # the state a rollback returns to
    # Stage options beyond the adapter's (migration 0003): few-shot {"model", "k", "min_score"}.
    options: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)

    __table_args__ = (UniqueConstraint("task", "seq", name="uq_route_changes_task_seq"),)


class Comparison(Base):
    """One saved head-to-head comparison of a candidate against a baseline on a task."""

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    task: Mapped[str] = mapped_column(String(200))
    candidate: Mapped[str] = mapped_column(String(200))
    baseline: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)  # "dataset NAME:VERSION" or "shadow since ..."
    kind: Mapped[str] = mapped_column(String(32))
    items: Mapped[int] = mapped_column(Integer)
    inputs_hash: Mapped[str] = mapped_column(String(64))
    gate: Mapped[str | None] = mapped_column(Text)
    gate_passed: Mapped[bool | None] = mapped_column()
    result: Mapped[dict[str, Any]] = mapped_column(JsonType)

    __table_args__ = (Index("ix_comparisons_task_time", "task", "time"),)


class FlywheelRun(Base):
    """One turn of a task's flywheel: dataset → train → compare → register → shadow → canary → full.

    `step` is where the turn is (the step to do next, or the stage it waits in); `status` is "running",
    "done" or "stopped" (with `reason`). Links name what each step made; `events` is the turn's log, one
    {time, step, message} per thing that happened, so a crash resumes at `step` with the links it reached.
    """

    __tablename__ = "flywheel_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(200))
    started: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    step: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    dataset_name: Mapped[str | None] = mapped_column(String(200))
    dataset_version: Mapped[int | None] = mapped_column(Integer)
    run_dir: Mapped[str | None] = mapped_column(Text)
    adapter: Mapped[str | None] = mapped_column(String(200))
    comparison_id: Mapped[int | None] = mapped_column(Integer)
    examples: Mapped[int | None] = mapped_column(Integer)  # usable examples when its dataset was built
    route_before: Mapped[int | None] = mapped_column(Integer)  # the route a rollback returns to
    route_seq: Mapped[int | None] = mapped_column(Integer)  # the route change of the current stage
    stage_since: Mapped[datetime | None] = mapped_column(DateTime())  # when the current stage began
    events: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)

    __table_args__ = (Index("ix_flywheel_runs_task_started", "task", "started"),)


class FlywheelLock(Base):
    """Who turns a task's flywheel now: one row per task, held until `expires` (renewed while working)."""

    __tablename__ = "flywheel_locks"

    task: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires: Mapped[datetime] = mapped_column(DateTime())
