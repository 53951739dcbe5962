"""The UI's login wall: with DOPPEL_API_TOKEN set, every route needs Gradio's session cookie
except the login page itself and the code and styles it loads.

Gradio guards its data routes (config, API, queue, files) one by one, and some it serves
open (heartbeats, streams, cancel, startup events, FastAPI's own /openapi.json); a new
Gradio version may add more. `LoginRequired` turns that around: it denies by default, so a
route that is not on `PUBLIC` answers 401 until the user has logged in. The password is
checked in constant time (`doppel.auth.token_matches`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from doppel.auth import token_matches

# The login page (Gradio serves it without components until the cookie is there), the static
# code, styles and icons it loads, and startup-events, which `launch` itself calls (once, without
# a cookie) and which answers only true or false; nothing here holds a user's data.
PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/robots.txt",
                          "/manifest.json", "/pwa_icon", "/gradio_api/login_check", "/gradio_api/login_check/",
                          "/gradio_api/startup-events"})
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")
DENIED = {"detail": {"error": "Not authenticated", "auth_message": "log in first"}}


def is_public(path: str) -> bool:
    """Whether `path` (without the app's root path) is served before login."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def password_check(token: str) -> Callable[[str, str], bool]:
    """Gradio's `auth` callable: any user name, the API token as the password."""

    def check(_user: str, password: str) -> bool:
        return token_matches(password, token)

    return check


def logged_in(connection: HTTPConnection) -> bool:
    """Whether the request carries a session cookie Gradio issued at login (as Gradio's own check reads it)."""
    app: Any = connection.scope.get("app")
    cookie_id, sessions = getattr(app, "cookie_id", None), getattr(app, "tokens", None)
    if cookie_id is None or sessions is None:  # not a Gradio app: nothing to check the cookie against
        return False
    cookie = connection.cookies.get(f"access-token-{cookie_id}") or connection.cookies.get(
        f"access-token-unsecure-{cookie_id}")
    return cookie is not None and cookie in sessions


class LoginRequired:
    """ASGI middleware for the Gradio app: 401 for every non-public route without a login."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", "").rstrip("/")) or "/"
        if is_public(path) or logged_in(HTTPConnection(scope)):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await JSONResponse(DENIED, status_code=401)(scope, receive, send)
