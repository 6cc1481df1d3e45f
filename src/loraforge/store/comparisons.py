"""Saved comparisons (`loraforge compare`, `compare list`, `compare show`)."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from loraforge.errors import LoraforgeError
from loraforge.store.store import Store
from loraforge.store.tables import Comparison


def save_comparison(store: Store, result: dict[str, Any]) -> Comparison:
    row = Comparison(
        task=result["task"],
        candidate=result["candidate"],
        baseline=result["baseline"],
        source=result["source"],
        kind=result["kind"],
        items=result["items"],
        inputs_hash=result["inputs_hash"],
        gate=result.get("gate"),
        gate_passed=result.get("gate_passed"),
        result=result,
    )
    with Session(store.db, expire_on_commit=False) as session, session.begin():
        session.add(row)
    return row


def list_comparisons(store: Store, task: str | None = None) -> list[Comparison]:
    query = select(Comparison).order_by(Comparison.id)
    if task is not None:
        query = query.where(Comparison.task == task)
    with Session(store.db, expire_on_commit=False) as session:
        return list(session.scalars(query))


def get_comparison(store: Store, comparison_id: int) -> Comparison:
    with Session(store.db, expire_on_commit=False) as session:
        row = session.get(Comparison, comparison_id)
    if row is None:
        raise LoraforgeError(f"no comparison #{comparison_id} in the store (see `loraforge compare list`)")
    return row
