"""Log retention: delete old calls (and their feedback) so the store does not grow without end, never a call
that a dataset version was built from (a dataset's provenance must stay checkable).

A call goes when it is older than `keep_days` AND is not among its task's `keep_rows` newest calls (either
bound alone applies alone): "keep at least D days and at least N calls of each task".
"""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select

from loraforge.errors import ConfigError
from loraforge.store.store import Store
from loraforge.store.tables import Call, DatasetRow, Feedback, utcnow

BATCH = 500  # ids per DELETE: bounded statements on any database size


@dataclass
class PruneResult:
    matched: int  # calls the bounds would drop
    referenced: int  # of those, kept because a dataset version uses them
    deleted: int  # 0 on a dry run


def _prunable(task: str | None, keep_days: int | None, keep_rows: int | None):
    """SELECT of the ids of calls outside the bounds (datasets not yet considered)."""
    conditions = []
    if task is not None:
        conditions.append(Call.task == task)
    if keep_days is not None:
        conditions.append(Call.time < utcnow() - timedelta(days=keep_days))
    if keep_rows is not None:
        rank = (
            func.row_number()
            .over(partition_by=Call.task, order_by=(Call.time.desc(), Call.id.desc()))
            .label("rank")
        )
        ranked = select(Call.id.label("id"), rank)
        if task is not None:
            ranked = ranked.where(Call.task == task)
        ranked = ranked.subquery()
        conditions.append(Call.id.in_(select(ranked.c.id).where(ranked.c.rank > keep_rows)))
    return select(Call.id).where(*conditions)


def prune_calls(
    store: Store,
    *,
    task: str | None = None,
    keep_days: int | None = None,
    keep_rows: int | None = None,
    dry_run: bool = False,
) -> PruneResult:
    if keep_days is None and keep_rows is None:
        raise ConfigError("prune needs --keep-days, --keep-rows or both")
    if (keep_days is not None and keep_days < 0) or (keep_rows is not None and keep_rows < 0):
        raise ConfigError("--keep-days and --keep-rows must be >= 0")
    candidates = _prunable(task, keep_days, keep_rows).subquery()
    unreferenced = candidates.c.id.not_in(select(DatasetRow.call_id))
    with store.db.connect() as conn:
        matched = conn.scalar(select(func.count()).select_from(candidates)) or 0
        free = conn.scalar(select(func.count()).select_from(candidates).where(unreferenced)) or 0
    result = PruneResult(matched=matched, referenced=matched - free, deleted=0)
    while not dry_run:
        # A batch per transaction: a long prune never holds a big lock, and memory stays flat. The DELETEs
        # re-check the datasets, so a dataset built meanwhile keeps its calls.
        with store.db.begin() as conn:
            ids = conn.scalars(select(candidates.c.id).where(unreferenced).limit(BATCH)).all()
            if not ids:
                break
            used = select(DatasetRow.call_id)
            conn.execute(delete(Feedback).where(Feedback.call_id.in_(ids), Feedback.call_id.not_in(used)))
            result.deleted += conn.execute(
                delete(Call).where(Call.id.in_(ids), Call.id.not_in(used))
            ).rowcount
    return result
