"""Comparisons: the list, and one head-to-head table with its intervals and the disagreements to read."""

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from loraforge.compare.render import fmt
from loraforge.store.tables import Comparison
from loraforge.ui.settings import PAGE_SIZE
from loraforge.ui.web import UIError, render, state, url

router = APIRouter()


def _list(store, task: str | None, before: int | None) -> list[Comparison]:
    query = select(Comparison).order_by(Comparison.id.desc()).limit(PAGE_SIZE + 1)
    if task:
        query = query.where(Comparison.task == task)
    if before:
        query = query.where(Comparison.id < before)
    with Session(store.db, expire_on_commit=False) as session:
        return list(session.scalars(query))


@router.get("/comparisons")
async def comparisons_page(request: Request, task: str | None = None, before: int | None = None) -> Response:
    rows = await run_in_threadpool(_list, state(request).store, task, before)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_url = url(request, "/comparisons", task=task, before=rows[-1].id) if more else None
    return render(request, "comparisons.html", nav="comparisons", rows=rows, task=task, next_url=next_url)


@router.get("/comparisons/{comparison_id}")
async def comparison_page(request: Request, comparison_id: int, offset: int = 0) -> Response:
    if offset < 0:
        raise UIError(400, "offset must not be negative")

    def load():
        with Session(state(request).store.db, expire_on_commit=False) as session:
            return session.get(Comparison, comparison_id)

    row = await run_in_threadpool(load)
    if row is None:
        raise UIError(404, f"no comparison #{comparison_id} in the store")
    result = row.result or {}
    disagreements = result.get("disagreements")
    page = (disagreements or [])[offset : offset + PAGE_SIZE]
    base = f"/comparisons/{comparison_id}"
    return render(
        request,
        "comparison.html",
        nav="comparisons",
        c=row,
        r=result,
        fmt=fmt,
        disagreements=disagreements,
        page=page,
        offset=offset,
        next_url=url(request, base, offset=offset + PAGE_SIZE)
        if disagreements and offset + PAGE_SIZE < len(disagreements)
        else None,
        prev_url=url(request, base, offset=max(0, offset - PAGE_SIZE)) if offset else None,
    )
