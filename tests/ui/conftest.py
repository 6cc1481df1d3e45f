"""Dashboard fixtures: a realistic seeded store per backend (once per module), and the app over it."""

import pytest
from fastapi.testclient import TestClient

from loraforge.ui import UISettings, create_ui_app
from loraforge.ui.queries.cache import CACHE
from tests.store.backends import BACKENDS, store_url_for
from tests.ui.seed import Seeded, seed


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(request, tmp_path_factory) -> Seeded:
    root = tmp_path_factory.mktemp("ui")
    CACHE.clear()  # it is keyed by store URL, and the PostgreSQL test database is reused
    return seed(store_url_for(request.param, root), root)


def ui_client(seeded: Seeded, **settings) -> TestClient:
    options = {"store_url": seeded.store_url, "runs_dir": seeded.runs_dir, **settings}
    return TestClient(create_ui_app(UISettings(**options)))


@pytest.fixture
def client(seeded) -> TestClient:
    return ui_client(seeded)
