"""The dashboard as an ASGI app: `loraforge ui` serves it alone; the gateway mounts it at /ui (`--ui`)."""

import logging
import threading

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from loraforge.errors import LoraforgeError
from loraforge.store.store import Store, StoreUnavailableError
from loraforge.ui.auth import authorized
from loraforge.ui.pages import calls, comparisons, datasets, login, runs, serving, tasks
from loraforge.ui.settings import UISettings
from loraforge.ui.web import STATIC_DIR, UIError, UIState, render, url

log = logging.getLogger("loraforge.ui")
OPEN_PATHS = ("/login", "/static/")  # reachable without the key


def create_ui_app(settings: UISettings, store: Store | None = None) -> FastAPI:
    """The dashboard app; `store` is shared when given (the gateway's), else opened from the settings."""
    app = FastAPI(title="loraforge dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = UIState(settings, store)
    if settings.warm:
        threading.Thread(target=_warm, args=(app.state.ui,), daemon=True, name="ui-warm").start()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (login, tasks, calls, datasets, comparisons, runs, serving):
        app.include_router(module.router)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        path = request.scope["path"][len(request.scope.get("root_path", "")) :] or "/"
        if path.startswith(OPEN_PATHS) or authorized(request, settings):
            response = await call_next(request)
            # Pages carry data from the store: no caching by shared proxies, no framing by other sites.
            response.headers.setdefault("x-frame-options", "DENY")
            response.headers.setdefault("x-content-type-options", "nosniff")
            response.headers.setdefault("cache-control", "no-store")
            return response
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(url(request, "/login", next=path), status_code=303)
        return render(request, "error.html", 401, message="This dashboard needs its API key.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = "No such page." if exc.status_code == 404 else str(exc.detail)
        return render(request, "error.html", exc.status_code, message=message)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return render(request, "error.html", 400, message=f"Bad request: {problems}")

    @app.exception_handler(UIError)
    async def ui_error(request: Request, exc: UIError) -> Response:
        return render(request, "error.html", exc.status, message=str(exc))

    @app.exception_handler(StoreUnavailableError)
    async def store_down(request: Request, exc: StoreUnavailableError) -> Response:
        return render(request, "error.html", 503, message=f"The store is unavailable: {exc}")

    @app.exception_handler(LoraforgeError)
    async def bad_input(request: Request, exc: LoraforgeError) -> Response:
        return render(request, "error.html", 400, message=str(exc))

    return app


def _warm(ui: UIState) -> None:
    """The tasks page's first load reads a month of calls: done here, so no visitor waits for it."""
    from loraforge.ui.pages.tasks import all_overviews

    try:
        all_overviews(ui.store, ui.settings.window_days)
    except Exception as exc:  # the store is down or busy: the first visitor will load it instead
        log.warning("dashboard: could not prepare the tasks page at start: %s", exc)
