"""Curation reads the store: the store's fixtures (an empty store on every backend)."""

from tests.store.conftest import store, store_url

__all__ = ["store", "store_url"]
