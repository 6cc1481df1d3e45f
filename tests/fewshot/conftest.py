"""Few-shot fixtures: the store tests' empty store on every backend."""

from tests.store.conftest import store, store_url  # noqa: F401  (pytest fixtures)
