"""Calls per day of a task by who answered, with their cost and tokens: the tasks page's one big query.

Completed days do not change (short of a late spool replay or a prune), so their sums are kept in memory
and re-read in the background every `ROLLUP_CACHE_S`; only today's calls are read on every page: with a
million calls the tasks page reads a day of calls, not a month. The first load reads the whole window (from
the covering index of migration 0005); `loraforge ui` and the gateway's `--ui` make it at start.
"""

from datetime import datetime, timedelta

from sqlalchemy import func, select

from loraforge.store.store import Store
from loraforge.store.tables import Call
from loraforge.ui.queries.cache import CACHE
from loraforge.ui.queries.sql import day_of, served_group
from loraforge.ui.settings import ROLLUP_CACHE_S

Row = tuple[str, str, int, float, int]  # day, group, calls, USD, tokens


def _query(store: Store, task: str, start: datetime, end: datetime | None) -> list[Row]:
    day, group = day_of(store.dialect), served_group()
    query = select(
        day,
        group,
        func.count(),
        func.sum(Call.cost_usd),
        func.sum(func.coalesce(Call.prompt_tokens, 0) + func.coalesce(Call.completion_tokens, 0)),
    ).where(Call.task == task, Call.time >= start)
    if end is not None:
        query = query.where(Call.time < end)
    with store.db.connect() as conn:
        rows = conn.execute(query.group_by(day, group))
        return [(d, g, int(n), float(usd or 0.0), int(toks or 0)) for d, g, n, usd, toks in rows]


def daily(store: Store, task: str, start: datetime, today: datetime) -> list[Row]:
    """Rows of every day from `start` (a UTC midnight) to now; days before `today` from the cache."""
    past = []
    if start < today:
        key = ("daily", store.url, task, start, today)
        past = CACHE.get_or_load(key, ROLLUP_CACHE_S, lambda: _query(store, task, start, today))
    return past + _query(store, task, max(start, today), None)


def midnight(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def window_start(now: datetime, days: int) -> datetime:
    return midnight(now) - timedelta(days=days - 1)
