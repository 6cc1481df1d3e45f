"""Indexes for the dashboard (`loraforge ui`): a task's calls by time with what its pages count and filter
on (who answered, shadow, status, cost, tokens) inside the index, and all calls by time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The tasks page sums a task's calls per day by who answered straight from this index (no table reads),
# and the calls page's filters within a task test its columns before reading a row.
TASK_COVER = (
    "task",
    "time",
    "served_by",
    "shadow_of",
    "status",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
)


def upgrade() -> None:
    op.create_index("ix_calls_ui_task_time", "calls", list(TASK_COVER))
    op.create_index("ix_calls_time", "calls", ["time"])


def downgrade() -> None:
    op.drop_index("ix_calls_time", "calls")
    op.drop_index("ix_calls_ui_task_time", "calls")
