"""The dashboard's API key: a Bearer header (scripts) or a session cookie set by the login form (browsers).

The cookie holds an HMAC of the key, not the key itself; both are compared in constant time. Form posts
also carry the app's CSRF token (`UISettings.csrf_token`).
"""

import hashlib
import hmac

from starlette.requests import Request

from loraforge.ui.settings import SESSION_COOKIE, UISettings


def session_value(api_key: str) -> str:
    return hmac.new(api_key.encode(), b"loraforge-ui-session", hashlib.sha256).hexdigest()


def key_matches(given: str, api_key: str) -> bool:
    # Headers arrive decoded as latin-1, so any byte sequence encodes back; a non-ASCII one is just wrong.
    return hmac.compare_digest(given.encode("latin-1", "replace"), api_key.encode())


def authorized(request: Request, settings: UISettings) -> bool:
    if not settings.api_key:
        return True
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and key_matches(header[7:], settings.api_key):
        return True
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return hmac.compare_digest(cookie.encode("latin-1", "replace"), session_value(settings.api_key).encode())


def csrf_ok(given: str | None, settings: UISettings) -> bool:
    return hmac.compare_digest((given or "").encode("latin-1", "replace"), settings.csrf_token.encode())
