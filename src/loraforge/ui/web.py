"""What every page shares: the templates, the store, rendering, and errors shown as pages."""

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import HTMLResponse

from loraforge.errors import LoraforgeError
from loraforge.store.store import Store
from loraforge.ui.settings import UISettings

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


class UIError(LoraforgeError):
    """A request the dashboard cannot answer: shown as a page with its HTTP status, never a traceback."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UIState:
    """The dashboard's settings and store; the store is migrated on first use (a mounted app has no startup
    of its own, and the gateway must start while the store is down)."""

    def __init__(self, settings: UISettings, store: Store | None = None) -> None:
        self.settings = settings
        self._store = store or Store(settings.store_url, migrate=False)
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        if not self._store.migrated:
            with self._lock:
                if not self._store.migrated:
                    self._store.migrate()
        return self._store


def state(request: Request) -> UIState:
    return request.app.state.ui


def url(request: Request, path: str, **query: Any) -> str:
    """`path` under the dashboard's mount point (/ui in the gateway), with the non-empty query values."""
    params = {k: v for k, v in query.items() if v not in (None, "")}
    return request.scope.get("root_path", "") + path + (f"?{urlencode(params)}" if params else "")


def form_number(value: str, field: str) -> float | None:
    """A number typed into a form field (None when left empty); anything else is a 400 naming the field."""
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise UIError(400, f"{field} {value!r} is not a number") from exc


def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "-"
    sign, value = ("-" if value < 0 else ""), abs(value)
    return f"{sign}${value:,.2f}" if value >= 1 else f"{sign}${value:.4f}"


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.filters["time"] = fmt_time
templates.env.filters["usd"] = fmt_usd
templates.env.globals["fmt_pct"] = lambda v: "-" if v is None else f"{100 * v:.1f}%"


def script_json(value: Any) -> str:
    """JSON to embed in a <script> element: `<` escaped, so a client-chosen task name cannot close it."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    ui = state(request)
    context.update(
        request=request,
        url=lambda path, **q: url(request, path, **q),
        csrf=ui.settings.csrf_token,
        nav=context.get("nav", ""),
    )
    return templates.TemplateResponse(request, template, context, status_code=status)
