"""Alembic revisions of the store schema."""
