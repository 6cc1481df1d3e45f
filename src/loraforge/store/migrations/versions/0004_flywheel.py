"""The flywheel's turns and its per-task locks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "flywheel_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("started", sa.DateTime(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("dataset_name", sa.String(200), nullable=True),
        sa.Column("dataset_version", sa.Integer(), nullable=True),
        sa.Column("run_dir", sa.Text(), nullable=True),
        sa.Column("adapter", sa.String(200), nullable=True),
        sa.Column("comparison_id", sa.Integer(), nullable=True),
        sa.Column("examples", sa.Integer(), nullable=True),
        sa.Column("route_before", sa.Integer(), nullable=True),
        sa.Column("route_seq", sa.Integer(), nullable=True),
        sa.Column("stage_since", sa.DateTime(), nullable=True),
        sa.Column("events", Json, nullable=False),
    )
    op.create_index("ix_flywheel_runs_task_started", "flywheel_runs", ["task", "started"])
    op.create_table(
        "flywheel_locks",
        sa.Column("task", sa.String(200), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("flywheel_locks")
    op.drop_index("ix_flywheel_runs_task_started", "flywheel_runs")
    op.drop_table("flywheel_runs")
