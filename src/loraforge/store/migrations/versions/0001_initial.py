"""Initial schema: calls, feedback, datasets, dataset_rows.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("task", sa.String(200), nullable=True),
        sa.Column("tags", Json, nullable=False),
        sa.Column("requested_model", sa.String(200), nullable=True),
        sa.Column("served_model", sa.String(200), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("request_body", Json, nullable=False),
        sa.Column("response_body", Json, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
    )
    op.create_index("ix_calls_task_time", "calls", ["task", "time"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(64), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("corrected_output", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
    )
    op.create_index("ix_feedback_call_id", "feedback", ["call_id"])
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("filter", Json, nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("train_count", sa.Integer(), nullable=False),
        sa.Column("test_count", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_datasets_name_version"),
    )
    op.create_table(
        "dataset_rows",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("call_id", sa.String(64), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("corrected", sa.Boolean(), nullable=False),
        sa.Column("split", sa.String(8), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_dataset_rows_dataset_id", "dataset_rows", ["dataset_id"])
    op.create_index("ix_dataset_rows_call_id", "dataset_rows", ["call_id"])


def downgrade() -> None:
    op.drop_table("dataset_rows")
    op.drop_table("datasets")
    op.drop_table("feedback")
    op.drop_table("calls")
