"""The login form: a browser trades the API key for a session cookie (an HMAC of the key)."""

from fastapi import APIRouter, Form
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from loraforge.ui.auth import key_matches, session_value
from loraforge.ui.settings import SESSION_COOKIE
from loraforge.ui.web import render, state, url

router = APIRouter()


def _safe_next(value: str | None) -> str:
    """Only a path of this dashboard: never another site (an open redirect)."""
    return value if value and value.startswith("/") and not value.startswith("//") else "/"


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login")
def login(request: Request, api_key: str = Form(""), next: str = Form("/")) -> Response:
    key = state(request).settings.api_key
    if key and not key_matches(api_key, key):
        return render(request, "login.html", 401, next=_safe_next(next), error="That is not the key.")
    response = RedirectResponse(url(request, _safe_next(next)), status_code=303)
    if key:
        response.set_cookie(
            SESSION_COOKIE,
            session_value(key),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=request.scope.get("root_path", "") or "/",
        )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse(url(request, "/login"), status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=request.scope.get("root_path", "") or "/")
    return response
