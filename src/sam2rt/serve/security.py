"""Who may talk to the server: the token, the Host header and the WebSocket Origin, checked on every request.

With a token (required for any address but loopback), each HTTP and WebSocket request must carry it:
`Authorization: Bearer TOKEN`, `?token=TOKEN`, or the cookie the app page sets once opened with
`?token=`. Without a token the server listens on loopback only, and it still refuses requests whose
Host is not a loopback name (a web page cannot reach it through DNS rebinding) and WebSockets opened
by pages of another origin.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Awaitable, Callable, Optional
from urllib.parse import parse_qs, urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "sam2rt_token"

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK_HOSTS


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


def request_token(scope: Scope) -> Optional[str]:
    """The token a request carries: header, then query, then cookie."""
    headers = _headers(scope)
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0]
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is as good as none
        return None
    return cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else None


def _host_name(host_header: str) -> str:
    return urlsplit(f"//{host_header}").hostname or ""


class Guard:
    """ASGI middleware: refuses, before the app sees them, requests without the token or from elsewhere."""

    def __init__(self, app: ASGIApp, token: Optional[str]) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": refusal})  # before accept: HTTP 403
        else:
            body = json.dumps({"error": refusal}).encode()
            status = 401 if "token" in refusal else 403
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope) -> Optional[str]:
        """Why a request is refused, or None."""
        headers = _headers(scope)
        host = _host_name(headers.get("host", ""))
        if self.token is None and not is_loopback(host):
            return f"this server answers to loopback names only, not {host!r:.60}"
        if self.token is not None:
            given = request_token(scope)
            if given is None:
                return "a token is required (?token=, or Authorization: Bearer)"
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return "wrong token"
        origin = headers.get("origin")
        if scope["type"] == "websocket" and origin is not None and urlsplit(origin).netloc != headers.get("host"):
            return "WebSocket from another origin"
        return None
