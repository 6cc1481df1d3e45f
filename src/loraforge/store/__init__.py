"""The store of logged calls, feedback and datasets (SQLite by default, PostgreSQL by URL)."""

from loraforge.store.database import resolve_store_url
from loraforge.store.store import CallNotFoundError, Store, StoreUnavailableError

__all__ = ["CallNotFoundError", "Store", "StoreUnavailableError", "resolve_store_url"]
