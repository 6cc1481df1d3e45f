"""Options of a route beyond the adapter's (the few-shot stage's model, k and min_score).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("route_changes") as batch:
        batch.add_column(sa.Column("options", Json, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("route_changes") as batch:
        batch.drop_column("options")
