"""The store: open (and migrate) a database, write calls in batches, read calls, attach feedback."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from loraforge.errors import LoraforgeError
from loraforge.store.database import make_engine, redact, resolve_store_url
from loraforge.store.migrate import upgrade
from loraforge.store.tables import Call, Feedback


class StoreUnavailableError(LoraforgeError):
    """The database cannot be reached or written."""


class CallNotFoundError(LoraforgeError):
    """No call has the given id."""


class Store:
    """A handle on one store database: calls, feedback, and (through the modules beside it) routes,
    comparisons and flywheel records; datasets are built by `loraforge.curation`. Thread-safe: each
    operation takes its own connection from `db`, the SQLAlchemy engine (not the serving `Engine`).

    Opening one migrates the database to the newest revision (`migrate.py`) unless `migrate=False`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        busy_timeout_s: float = 5.0,
        sqlite_sync: str = "full",
        statement_timeout_s: float | None = None,
        migrate: bool = True,
    ) -> None:
        self.url = resolve_store_url(url)
        self.db: Engine = make_engine(
            self.url,
            busy_timeout_s=busy_timeout_s,
            sqlite_sync=sqlite_sync,
            statement_timeout_s=statement_timeout_s,
        )
        self.migrated = False
        if migrate:
            self.migrate()

    def __repr__(self) -> str:
        return f"Store({redact(self.url)!r})"

    @property
    def dialect(self) -> str:
        return self.db.dialect.name

    def migrate(self) -> None:
        """Upgrade the schema to head; raises StoreUnavailableError when the database cannot be reached."""
        try:
            upgrade(self.db)
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(f"cannot open store {redact(self.url)}: {_short(exc)}") from exc
        self.migrated = True

    def close(self) -> None:
        self.db.dispose()

    def insert_calls(self, records: Sequence[dict[str, Any]]) -> None:
        """Insert call records (dicts of Call columns) in one transaction: all are committed or none."""
        if not records:
            return
        with self.db.begin() as conn:
            conn.execute(insert(Call), [_call_row(r, self.dialect) for r in records])

    def insert_missing_calls(self, records: Sequence[dict[str, Any]]) -> int:
        """Insert the records whose id is not stored yet (idempotent replay); returns how many were new."""
        if not records:
            return 0
        ids = [r["id"] for r in records]
        with self.db.begin() as conn:
            existing = set(conn.scalars(select(Call.id).where(Call.id.in_(ids))))
            new = {r["id"]: r for r in records if r["id"] not in existing}  # a spool may repeat an id
            if new:
                conn.execute(insert(Call), [_call_row(r, self.dialect) for r in new.values()])
        return len(new)

    def get_call(self, call_id: str) -> Call | None:
        with Session(self.db, expire_on_commit=False) as session:
            return session.get(Call, call_id)

    def calls(self, task: str | None = None) -> list[Call]:
        """All calls (of a task), oldest first."""
        query = select(Call).order_by(Call.time, Call.id)
        if task is not None:
            query = query.where(Call.task == task)
        with Session(self.db, expire_on_commit=False) as session:
            return list(session.scalars(query))

    def count_calls(self) -> int:
        with self.db.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Call)) or 0)

    def add_feedback(
        self,
        call_id: str,
        score: float | None = None,
        corrected_output: str | None = None,
        comment: str | None = None,
    ) -> Feedback:
        """Attach feedback to a stored call; raises CallNotFoundError for an unknown id."""
        if "\x00" in call_id:  # no call has one, and PostgreSQL refuses it in a query
            raise CallNotFoundError(f"no call with id {call_id!r}")
        if self.dialect == "postgresql":
            corrected_output, comment = _strip_nul(corrected_output), _strip_nul(comment)
        with Session(self.db, expire_on_commit=False) as session, session.begin():
            if session.get(Call, call_id) is None:
                raise CallNotFoundError(f"no call with id {call_id!r}")
            fb = Feedback(call_id=call_id, score=score, corrected_output=corrected_output, comment=comment)
            session.add(fb)
        return fb

    def feedback_for(self, call_id: str) -> list[Feedback]:
        with Session(self.db, expire_on_commit=False) as session:
            query = select(Feedback).where(Feedback.call_id == call_id).order_by(Feedback.time, Feedback.id)
            return list(session.scalars(query))


_CALL_COLUMNS = {c.name for c in Call.__table__.columns}
# A multi-row insert takes its columns from the first row: every row must name every optional column, or a
# value only later rows carry (a shadow call's `shadow_of` after a plain call) would be dropped.
_OPTIONAL_COLUMNS = [c.name for c in Call.__table__.columns if c.nullable and c.default is None]


def _call_row(record: dict[str, Any], dialect: str) -> dict[str, Any]:
    """A Call row from a record; times arrive as datetimes or (from the spool) ISO strings."""
    row = {k: v for k, v in record.items() if k in _CALL_COLUMNS}
    if isinstance(row.get("time"), str):
        row["time"] = datetime.fromisoformat(row["time"])
    row.setdefault("tags", {})
    for key in _OPTIONAL_COLUMNS:
        row.setdefault(key, None)
    for key in ("requested_model", "served_model", "task"):  # String(200): longer values would be refused
        if isinstance(row.get(key), str):
            row[key] = row[key][:200]
    if dialect == "postgresql":
        # PostgreSQL text and JSONB refuse NUL characters, which a client may well send; SQLite keeps them.
        row = {k: _strip_nul(v) for k, v in row.items()}
    return row


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    return value


def _short(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
