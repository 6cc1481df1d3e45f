"""Where Optuna keeps a search: in the store's database, in a namespace of its own.

Optuna runs its own Alembic migrations, and their `alembic_version` table would collide with the store's. So
on PostgreSQL the studies live in a schema `optuna` of the same database, and on SQLite in a file beside the
store's (`loraforge.db` -> `loraforge-optuna.db`): one place to back up, resumable from any machine that
reaches the store.
"""

from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from loraforge.store.database import resolve_store_url

SCHEMA = "optuna"


def optuna_storage_url(store_url: str | None = None) -> str:
    url = make_url(resolve_store_url(store_url))
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return "sqlite://"
        path = Path(url.database)
        return str(url.set(database=str(path.with_name(f"{path.stem}-{SCHEMA}{path.suffix or '.db'}"))))
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    finally:
        engine.dispose()
    return url.update_query_dict({"options": f"-csearch_path={SCHEMA}"}).render_as_string(hide_password=False)
