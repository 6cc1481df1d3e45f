"""SQL expressions shared by the pages: who answered a call, and its day, on SQLite and PostgreSQL."""

from sqlalchemy import String, case, cast, func
from sqlalchemy.sql.elements import ColumnElement

from loraforge.store.tables import Call

# Who answered, as the dashboard groups it; shadow answers are counted apart (the client never saw them).
GROUPS = ("general", "fewshot", "adapter", "fallback", "shadow")


def served_group() -> ColumnElement[str]:
    return case(
        (Call.shadow_of.is_not(None), "shadow"),
        (Call.served_by.like("adapter:%"), "adapter"),
        (Call.served_by.in_(("fewshot", "fallback")), Call.served_by),
        else_="general",  # calls logged before routing existed were all answered by the general model
    )


def group_filter(group: str) -> ColumnElement[bool]:
    """The WHERE clause of one served-by group (written so an index on served_by/shadow_of can serve it)."""
    if group == "shadow":
        return Call.shadow_of.is_not(None)
    # Not `shadow_of IS NULL`: SQLite would answer that from the shadow_of index (nearly every call), then
    # sort them all; tested on the rows the task's index yields instead, the newest page comes first.
    not_shadow = func.coalesce(Call.shadow_of, "") == ""
    if group == "adapter":
        return not_shadow & Call.served_by.like("adapter:%")
    if group in ("fewshot", "fallback"):
        return not_shadow & (Call.served_by == group)
    return not_shadow & (Call.served_by.is_(None) | Call.served_by.not_in(("fewshot", "fallback")))


def day_of(dialect: str) -> ColumnElement[str]:
    """The call's UTC day as YYYY-MM-DD text (SQLite stores times as ISO text: its first 10 characters)."""
    if dialect == "postgresql":
        return func.to_char(Call.time, "YYYY-MM-DD")
    return func.substr(cast(Call.time, String), 1, 10)
