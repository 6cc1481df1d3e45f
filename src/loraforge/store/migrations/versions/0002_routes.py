"""Routes to adapters, their history, saved comparisons, and who answered each call.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("served_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("route_stage", sa.String(16), nullable=True))
        batch.add_column(sa.Column("fallback_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("shadow_of", sa.String(64), nullable=True))
    op.create_index("ix_calls_shadow_of", "calls", ["shadow_of"])
    op.create_table(
        "route_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("adapter", sa.String(200), nullable=True),
        sa.Column("percent", sa.Float(), nullable=True),
        sa.Column("fallback", Json, nullable=False),
        sa.Column("timeout_ms", sa.Integer(), nullable=True),
        sa.Column("output", Json, nullable=False),
        sa.Column("previous_seq", sa.Integer(), nullable=True),
        sa.UniqueConstraint("task", "seq", name="uq_route_changes_task_seq"),
    )
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("candidate", sa.String(200), nullable=False),
        sa.Column("baseline", sa.String(200), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("inputs_hash", sa.String(64), nullable=False),
        sa.Column("gate", sa.Text(), nullable=True),
        sa.Column("gate_passed", sa.Boolean(), nullable=True),
        sa.Column("result", Json, nullable=False),
    )
    op.create_index("ix_comparisons_task_time", "comparisons", ["task", "time"])


def downgrade() -> None:
    op.drop_table("comparisons")
    op.drop_table("route_changes")
    op.drop_index("ix_calls_shadow_of", "calls")
    with op.batch_alter_table("calls") as batch:
        for column in ("shadow_of", "fallback_reason", "route_stage", "served_by"):
            batch.drop_column(column)
