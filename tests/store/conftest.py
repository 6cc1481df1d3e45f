"""Store fixtures: each test gets an empty store on every backend."""

import pytest

from loraforge.store import Store
from tests.store.backends import BACKENDS, store_url_for


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path) -> str:
    return store_url_for(request.param, tmp_path)


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()
