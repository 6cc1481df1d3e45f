"""Alembic environment and versions of the store schema (run by `loraforge.store.migrate`)."""
