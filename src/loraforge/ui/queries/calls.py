"""The calls page: filtered, keyset-paginated in SQL (newest first), and one call with its shadow twin."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, and_, cast, exists, or_, select
from sqlalchemy.orm import Session

from loraforge.curation.call_examples import output_text
from loraforge.curation.datasets import parse_since
from loraforge.errors import LoraforgeError
from loraforge.store.store import Store
from loraforge.store.tables import Call, Feedback
from loraforge.ui.queries.sql import GROUPS, group_filter, served_group
from loraforge.ui.settings import MAX_SEARCH_CHARS, PAGE_SIZE

STATUSES = ("ok", "error")
FEEDBACK_FILTERS = ("any", "with", "without", "corrected")


@dataclass(frozen=True)
class CallFilter:
    task: str | None = None
    served: str | None = None  # one of GROUPS
    model: str | None = None  # the model the client asked for
    status: str | None = None
    feedback: str | None = None  # one of FEEDBACK_FILTERS
    since: str | None = None  # ISO time or span (7d, 12h)
    until: str | None = None
    q: str | None = None  # text in the request or response

    def validate(self) -> None:
        """Raises LoraforgeError naming the bad field."""
        if self.served and self.served not in GROUPS:
            raise LoraforgeError(f"served: choose one of {', '.join(GROUPS)}")
        if self.status and self.status not in STATUSES:
            raise LoraforgeError(f"status: choose one of {', '.join(STATUSES)}")
        if self.feedback and self.feedback not in FEEDBACK_FILTERS:
            raise LoraforgeError(f"feedback: choose one of {', '.join(FEEDBACK_FILTERS)}")
        if self.q and len(self.q) > MAX_SEARCH_CHARS:
            raise LoraforgeError(f"search text: at most {MAX_SEARCH_CHARS} characters")
        for value in (self.since, self.until):
            if value:
                parse_since(value)


@dataclass
class CallRow:
    id: str
    time: datetime
    task: str | None
    model: str | None
    served: str
    served_by: str | None
    status: str
    latency_ms: float | None
    cost_usd: float | None
    input: str
    output: str


def encode_cursor(time: datetime, call_id: str) -> str:
    return f"{time.isoformat()}|{call_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        when, call_id = cursor.split("|", 1)
        return datetime.fromisoformat(when), call_id
    except ValueError as exc:
        raise LoraforgeError(f"bad page cursor {cursor!r}") from exc


def _filtered(filt: CallFilter, dialect: str) -> Select:
    query = select(Call, served_group().label("grp"))
    if filt.task:
        query = query.where(Call.task == filt.task)
    if filt.served:
        query = query.where(group_filter(filt.served))
    if filt.model:
        query = query.where(Call.requested_model == filt.model)
    if filt.status:
        query = query.where(Call.status == filt.status)
    if filt.since:
        query = query.where(Call.time >= parse_since(filt.since))
    if filt.until:
        query = query.where(Call.time < parse_since(filt.until))
    if filt.feedback in ("with", "without", "corrected"):
        has = exists().where(Feedback.call_id == Call.id)
        if filt.feedback == "corrected":
            has = has.where(Feedback.corrected_output.is_not(None))
        query = query.where(~has if filt.feedback == "without" else has)
    if filt.q:
        # A substring of the stored JSON bodies: the filters above narrow the scan, the page bounds it.
        pattern = "%" + filt.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        like = "ilike" if dialect == "postgresql" else "like"  # SQLite's LIKE ignores ASCII case already
        query = query.where(
            or_(
                getattr(cast(Call.request_body, String), like)(pattern, escape="\\"),
                getattr(cast(Call.response_body, String), like)(pattern, escape="\\"),
            )
        )
    return query


def list_calls(
    store: Store, filt: CallFilter, before: str | None = None, limit: int = PAGE_SIZE
) -> tuple[list[CallRow], str | None]:
    """A page of calls, newest first, and the cursor of the next (older) page (None on the last)."""
    filt.validate()
    query = _filtered(filt, store.dialect)
    if before:
        t, call_id = decode_cursor(before)
        query = query.where(or_(Call.time < t, and_(Call.time == t, Call.id < call_id)))
    query = query.order_by(Call.time.desc(), Call.id.desc()).limit(limit + 1)
    with Session(store.db) as session:
        rows = [_row(call, grp) for call, grp in session.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1].time, rows[-1].id) if more and rows else None)


def _row(call: Call, group: str) -> CallRow:
    return CallRow(
        id=call.id,
        time=call.time,
        task=call.task,
        model=call.requested_model,
        served=group,
        served_by=call.served_by,
        status=call.status,
        latency_ms=call.latency_ms,
        cost_usd=call.cost_usd,
        input=_clip(input_text(call)),
        output=_clip(output_text(call.endpoint, call.response_body or {}) or (call.error or "")),
    )


def input_text(call: Call) -> str:
    """The last user message (chat) or the prompt (completions), for a one-line preview."""
    body = call.request_body or {}
    if call.endpoint == "completions":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else str(prompt or "")
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class CallDetail:
    call: Call
    feedback: list[Feedback]
    shadow: list[Call]  # shadow answers that mirror this call
    original: Call | None  # for a shadow answer: the call it mirrors
    output: str | None


def call_detail(store: Store, call_id: str) -> CallDetail | None:
    with Session(store.db, expire_on_commit=False) as session:
        call = session.get(Call, call_id)
        if call is None:
            return None
        shadows = list(session.scalars(select(Call).where(Call.shadow_of == call_id).order_by(Call.time)))
        original = session.get(Call, call.shadow_of) if call.shadow_of else None
    return CallDetail(
        call,
        store.feedback_for(call_id),
        shadows,
        original,
        output_text(call.endpoint, call.response_body or {}),
    )


def pretty(body: Any) -> str:
    import json

    return json.dumps(body, indent=2, ensure_ascii=False) if body is not None else ""


def output_of(call: Call) -> str | None:
    return output_text(call.endpoint, call.response_body or {})
