"""Alembic environment and versions of the store schema (run programmatically by `loraforge.store.schema`)."""
