"""Store URLs and engines: SQLite (WAL, fsync on commit) by default, PostgreSQL by URL."""

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from loraforge.errors import ConfigError
from loraforge.paths import loraforge_home

STORE_URL_ENV = "LORAFORGE_STORE_URL"


def default_store_url() -> str:
    return f"sqlite:///{loraforge_home() / 'store.db'}"


def resolve_store_url(url: str | None = None) -> str:
    """`url`, else `$LORAFORGE_STORE_URL`, else SQLite in `$LORAFORGE_HOME`; a bare path is a SQLite file."""
    url = url or os.environ.get(STORE_URL_ENV) or default_store_url()
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    scheme, rest = url.split("://", 1)
    # psycopg 3 is the driver we ship; plain postgres URLs (as libpq and most tools write them) map to it.
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return url


def redact(url: str) -> str:
    """The URL with its password hidden, for logs and error messages."""
    return make_url(url).render_as_string(hide_password=True)


SQLITE_SYNC_MODES = ("full", "normal")


def make_engine(
    url: str,
    busy_timeout_s: float = 5.0,
    sqlite_sync: str = "full",
    statement_timeout_s: float | None = None,
) -> Engine:
    """An engine for a resolved store URL; raises ConfigError for an unsupported or malformed URL.

    `busy_timeout_s` bounds waiting for a lock (SQLite), a connection (PostgreSQL: connecting, and taking
    one from the pool). `statement_timeout_s` (PostgreSQL) bounds every statement on the server, so a
    database that hangs (a held lock, an overloaded server) returns an error instead of blocking forever.

    `sqlite_sync`: "full" fsyncs the WAL at every commit (a commit survives power loss); "normal" leaves it
    to the OS (a commit survives the gateway's crash or SIGKILL, not a power cut); much faster on slow disks.
    """
    if sqlite_sync not in SQLITE_SYNC_MODES:
        raise ConfigError(
            f"SQLite sync mode must be one of {', '.join(SQLITE_SYNC_MODES)}, got {sqlite_sync!r}"
        )
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"store URL {url!r} is not a valid database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, parsed.database, busy_timeout_s, sqlite_sync)
    if backend == "postgresql":
        connect_args: dict[str, object] = {
            "connect_timeout": max(1, round(busy_timeout_s)),
            # A peer that vanished without closing (power loss, cut network) is noticed within ~30 s.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        if statement_timeout_s is not None:
            timeout = f"-c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
            given = parsed.query.get("options")  # libpq options in the URL are kept, ours appended
            given = given if isinstance(given, str) else " ".join(given or ())
            connect_args["options"] = f"{given} {timeout}".strip()
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=8,
            pool_timeout=busy_timeout_s,
            connect_args=connect_args,
        )
    raise ConfigError(f"store URL {redact(url)!r}: only sqlite:/// and postgresql:// stores are supported")


def _sqlite_engine(url: str, database: str | None, busy_timeout_s: float, sync: str) -> Engine:
    if not database or database == ":memory:":
        raise ConfigError("store URL: an in-memory SQLite store would lose every call; give a file path")
    # A directory that cannot be created now shows up as an unavailable store when connecting, which the
    # gateway survives (it spools); failing here would stop it from starting at all.
    with contextlib.suppress(OSError):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        _enable_wal(cur, busy_timeout_s)
        cur.execute(f"PRAGMA synchronous={sync.upper()}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def _enable_wal(cur: sqlite3.Cursor, timeout_s: float) -> None:
    """Switch the file to WAL (persistent, so only its first opener does it), retrying while it is busy.

    SQLite does not call the busy handler for a journal-mode change: when several connections open a new
    file at once, all but one get "database is locked" straight away, so they wait and look again.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
