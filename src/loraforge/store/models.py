"""SQLAlchemy 2 models of the store: calls, feedback, datasets and dataset rows (times are naive UTC)."""

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

    __table_args__ = (Index("ix_calls_task_time", "task", "time"),)


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
