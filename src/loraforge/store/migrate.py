"""Bring a store's schema to the newest Alembic revision, safely when several processes open it at once."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from loraforge.store.file_lock import file_lock

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary constant key for pg_advisory_lock, so concurrent gateways/CLIs migrate one at a time.
_PG_LOCK_KEY = 0x10AF0F6E


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Run `alembic upgrade head` on the engine (a no-op when already there)."""
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
    with _migration_lock(engine), engine.begin() as conn:
        if current_revision(conn) == head:  # another process migrated while we waited
            return
        if conn.dialect.name == "postgresql":
            # A gateway bounds its statements (statement_timeout); a migration (say, an index on a large
            # table) may take longer and must not fail for that, forever, at every retry.
            conn.execute(text("SET LOCAL statement_timeout = 0"))
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
        return
    with file_lock(Path(f"{engine.url.database}.migrate.lock")):
        yield
