"""The calls page (filters, pages newest first) and a call's page (side by side, shadow twin, feedback)."""

import json

from fastapi import APIRouter, Form
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from loraforge.gateway.errors import GatewayError
from loraforge.gateway.validation import parse_feedback
from loraforge.store.store import CallNotFoundError
from loraforge.ui.pages.tasks import check_csrf
from loraforge.ui.queries.calls import (
    FEEDBACK_FILTERS,
    STATUSES,
    CallFilter,
    call_detail,
    list_calls,
    output_of,
    pretty,
)
from loraforge.ui.queries.sql import GROUPS
from loraforge.ui.queries.tasks import list_tasks
from loraforge.ui.settings import MAX_PAGE_SIZE, PAGE_SIZE
from loraforge.ui.web import UIError, form_number, render, state, url

router = APIRouter()


@router.get("/calls")
async def calls_page(
    request: Request,
    task: str | None = None,
    served: str | None = None,
    model: str | None = None,
    status: str | None = None,
    feedback: str | None = None,
    since: str | None = None,
    until: str | None = None,
    q: str | None = None,
    before: str | None = None,
    limit: int = PAGE_SIZE,
) -> Response:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise UIError(400, f"limit must be between 1 and {MAX_PAGE_SIZE}")
    filt = CallFilter(
        task or None, served or None, model or None, status or None, feedback or None, since or None,
        until or None, q or None,
    )  # fmt: skip
    store = state(request).store
    rows, next_cursor = await run_in_threadpool(list_calls, store, filt, before or None, limit)
    tasks = await run_in_threadpool(list_tasks, store)
    query = {k: v for k, v in vars(filt).items() if v}
    return render(
        request,
        "calls.html",
        nav="calls",
        rows=rows,
        filt=filt,
        tasks=tasks,
        groups=GROUPS,
        statuses=STATUSES,
        feedback_filters=FEEDBACK_FILTERS,
        next_url=url(request, "/calls", before=next_cursor, **query) if next_cursor else None,
        first_url=url(request, "/calls", **query) if before else None,
    )


@router.get("/calls/{call_id}")
async def call_page(
    request: Request, call_id: str, done: str | None = None, error: str | None = None
) -> Response:
    detail = await run_in_threadpool(call_detail, state(request).store, call_id)
    if detail is None:
        raise UIError(404, f"no call with id {call_id!r}")
    return render(
        request,
        "call.html",
        nav="calls",
        d=detail,
        pretty=pretty,
        output_of=output_of,
        done=done,
        error=error,
    )


@router.post("/calls/{call_id}/feedback")
def add_feedback(
    request: Request,
    call_id: str,
    score: str = Form(""),
    corrected_output: str = Form(""),
    comment: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Stored through the same validation and store call as the gateway's POST /v1/feedback."""
    check_csrf(request, csrf)
    body: dict = {"call_id": call_id}
    if (number := form_number(score, "score")) is not None:
        body["score"] = number
    if corrected_output.strip():
        body["corrected_output"] = corrected_output
    if comment.strip():
        body["comment"] = comment
    try:
        fb = parse_feedback(json.dumps(body).encode())
        state(request).store.add_feedback(**fb)
    except GatewayError as exc:
        raise UIError(exc.status, exc.message) from exc
    except CallNotFoundError as exc:
        raise UIError(404, str(exc)) from exc
    return RedirectResponse(url(request, f"/calls/{call_id}", done="feedback"), status_code=303)
