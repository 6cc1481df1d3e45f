"""The tasks page (home) and a task's page: its loop as a timeline, and route changes with confirmation."""

from dataclasses import dataclass

from fastapi import APIRouter, Depends, Form
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from loraforge.errors import ConfigError, LoraforgeError
from loraforge.store.route_options import RouteOptions
from loraforge.store.routes import (
    STAGES,
    current_routes,
    latest_change,
    rollback_route,
    route_history,
    route_off,
)
from loraforge.ui.queries.tasks import data_available, list_tasks, overview
from loraforge.ui.queries.timeline import SOURCES, TimelineContext, describe_route, timeline
from loraforge.ui.settings import MAX_WINDOW_DAYS
from loraforge.ui.web import UIError, form_number, render, script_json, state, url

router = APIRouter()
ROUTE_ACTIONS = ("set", "rollback", "off")


def _hardware():
    from loraforge.cost.hardware import hardware_price

    try:
        return hardware_price()
    except ConfigError:
        return None


def all_overviews(store, window: int) -> list:
    """Every task's figures (the tasks page); also what warms the caches at start."""
    routes, data, hardware = current_routes(store), data_available(store), _hardware()
    return [overview(store, t, window, hardware, routes=routes, data=data) for t in list_tasks(store)]


def _window(days: int | None, request: Request) -> int:
    days = state(request).settings.window_days if days is None else days
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise UIError(400, f"days must be between 1 and {MAX_WINDOW_DAYS}")
    return days


@router.get("/")
async def tasks_page(request: Request, days: int | None = None) -> Response:
    window = _window(days, request)
    store = state(request).store

    views = await run_in_threadpool(all_overviews, store, window)
    charts = {v.task: _chart(v) for v in views}
    return render(request, "tasks.html", nav="tasks", views=views, window=window, charts=script_json(charts))


def _chart(view) -> dict:
    return {"days": view.days, "calls": view.calls, "spend": view.spend, "savings": view.savings}


@router.get("/task")
async def task_page(
    request: Request, name: str, days: int | None = None, done: str | None = None
) -> Response:
    ui = state(request)
    window = _window(days, request)
    store = ui.store

    def load():
        view = overview(store, name, window, _hardware())
        events = timeline(TimelineContext(store, name, ui.settings.runs_dir))
        return view, events, latest_change(store, name)

    view, events, latest = await run_in_threadpool(load)
    return render(
        request,
        "task.html",
        nav="tasks",
        view=view,
        events=events,
        latest=latest,
        window=window,
        stages=STAGES,
        chart=script_json(_chart(view)),
        done=done,
        sources=[s.__name__ for s in SOURCES],
    )


@dataclass(frozen=True)
class RouteRequest:
    """A route change asked for from the page, checked before it is shown for confirmation."""

    task: str
    action: str
    options: RouteOptions | None = None  # the route to set (action "set")
    reason: str = ""

    # The confirmation page posts these back as the form's fields.
    @property
    def stage(self) -> str:
        return self.options.stage if self.options else ""

    @property
    def adapter(self) -> str:
        return (self.options.adapter or "") if self.options else ""

    @property
    def percent(self) -> float | None:
        return self.options.percent if self.options else None

    def describe(self) -> str:
        if self.action == "off":
            return "turn the route off: the general model answers every call"
        if self.action == "rollback":
            return "roll back to the route before the current one"
        what = f"{self.stage} → adapter {self.adapter}"
        return what + (f" ({self.percent:g}% of calls)" if self.stage == "canary" else "")


def route_form(
    request: Request,
    name: str = Form(...),
    action: str = Form(...),
    stage: str = Form(""),
    adapter: str = Form(""),
    percent: str = Form(""),
    reason: str = Form(""),
    csrf: str = Form(""),
) -> RouteRequest:
    """The route change a form posts, checked (token, action, route) before anything is shown or done."""
    check_csrf(request, csrf)
    if action not in ROUTE_ACTIONS:
        raise UIError(400, f"action: choose one of {', '.join(ROUTE_ACTIONS)}")
    options = None
    if action == "set":
        # The form always sends the field; it only means something for a canary.
        pct = form_number(percent, "percent") if stage == "canary" else None
        options = RouteOptions(stage, adapter.strip(), pct)
    return RouteRequest(name, action, options, reason.strip())


@router.post("/task/route/confirm")
def confirm_route(request: Request, req: RouteRequest = Depends(route_form)) -> Response:
    current = latest_change(state(request).store, req.task)
    return render(
        request,
        "route_confirm.html",
        nav="tasks",
        req=req,
        current=describe_route(current) if current else "none (general model)",
    )


@router.post("/task/route")
def apply_route(
    request: Request, req: RouteRequest = Depends(route_form), confirm: str = Form("")
) -> Response:
    """Applies a confirmed change through the same functions as `loraforge route`."""
    if confirm != "yes":
        raise UIError(400, "a route change must be confirmed")
    name = req.task
    store = state(request).store
    actor = _actor(request)
    reason_text = req.reason or None
    try:
        if req.action == "off":
            change = route_off(store, name, actor=actor, reason=reason_text)
        elif req.action == "rollback":
            change = rollback_route(store, name, actor=actor, reason=reason_text)
        else:
            # What the route checks and how it falls back stay as the task's route last said.
            last = next((c for c in reversed(route_history(store, name)) if c.stage != "off"), None)
            change = req.options.keeping_checks_of(last).apply(store, name, actor=actor, reason=reason_text)
    except LoraforgeError as exc:
        raise UIError(409, str(exc)) from exc
    return RedirectResponse(url(request, "/task", name=name, done=f"route #{change.seq}"), status_code=303)


def _actor(request: Request) -> str:
    from loraforge.store.routes import default_actor

    client = request.client.host if request.client else "?"
    return f"dashboard ({client}) on {default_actor()}"[:200]


def check_csrf(request: Request, token: str) -> None:
    from loraforge.ui.auth import csrf_ok

    if not csrf_ok(token, state(request).settings):
        raise UIError(403, "this form has expired (the dashboard restarted?): reload the page and try again")
