"""Store backends the suites run against: a fresh SQLite file, and a real PostgreSQL when one is reachable."""

import os
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from loraforge.store.database import redact, resolve_store_url
from loraforge.store.migrate import upgrade

POSTGRES_ENV = "LORAFORGE_TEST_POSTGRES_URL"
# What scripts/ci-postgres.sh provisions; used when the variable is not set.
DEFAULT_POSTGRES_URL = "postgresql://loraforge:loraforge@127.0.0.1:5432/loraforge_test"
TABLES = (
    "flywheel_locks",
    "flywheel_runs",
    "comparisons",
    "route_changes",
    "dataset_rows",
    "datasets",
    "feedback",
    "calls",
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def postgres_url() -> str:
    return os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL


@cache
def postgres_ready() -> str | None:
    """Once per session: reset the test database to an empty schema at head; returns why not, if it failed."""
    url = resolve_store_url(postgres_url())
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            # Start from nothing, so the migrations themselves are exercised on PostgreSQL.
            for table in (*TABLES, "alembic_version"):
                conn.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
        upgrade(engine)
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return None


def store_url_for(backend: str, tmp_path: Path) -> str:
    """A clean store of `backend`; skips (saying why) when PostgreSQL cannot be reached."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    problem = postgres_ready()
    if problem:
        pytest.skip(
            f"PostgreSQL not reachable at {redact(resolve_store_url(postgres_url()))} ({problem}); "
            f"run scripts/ci-postgres.sh or set {POSTGRES_ENV}"
        )
    url = resolve_store_url(postgres_url())
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return postgres_url()
