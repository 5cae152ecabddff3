"""Who is calling the dashboard, and the gate every request and WebSocket passes first.

The dashboard shows flow data to people and runs their SQL, so every path but ``/healthz``,
``/login``, ``/logout`` and the static files needs a principal from the principals file
(``MESHSCOPE_AUTH_FILE``, the relays' file; its ``roles`` say viewer or sql). A caller is, in
this order of precedence:

1. a client certificate, when the dashboard serves TLS with a CA (``meshscope://client/NAME``);
2. a bearer token, ``Authorization: Bearer …`` (or ``?token=`` on ``/ws/live`` and ``/login``,
   where a browser cannot set the header); a token that matches nobody is a 401, never anonymous;
3. the session cookie that ``/login`` sets (see :mod:`dashboard.session`), unless it was signed
   out here (``/logout`` ends the session itself, not only this browser's copy of the cookie);
4. ``ANONYMOUS`` when ``MESHSCOPE_ALLOW_ANONYMOUS`` is on; else 401 (JSON, with a real HTTP
   status on the WebSocket too) or, for the map page, a redirect to ``/login``.

The gate, a plain ASGI middleware so that it sees WebSocket upgrades as well, checks in order:
the Host header (400, :mod:`dashboard.origin`), a foreign Origin or ``Sec-Fetch-Site`` (403;
``Origin: null`` is the dashboard's own form post only beside ``Sec-Fetch-Site: same-origin``), the caller (401), the
role for the path (403, :mod:`dashboard.access`), and that a cookie-authenticated unsafe request
or upgrade says where it comes from (403). Every HTTP answer, refusals included, carries the
security headers of :mod:`dashboard.access`.
"""

from __future__ import annotations

import html
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources

from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from dashboard import access
from dashboard.origin import foreign_origin, host_allowed, needs_origin, user_started
from dashboard.session import SessionCodec, cookie_name, set_cookie
from meshcore.auth import ANONYMOUS, VIA_ANONYMOUS, VIA_CERT, VIA_TOKEN, Authenticator, Principal, bearer_of
from meshcore.body import BodyTimeout, BodyTooLarge, read_limited
from meshcore.tls import peer_identity

log = logging.getLogger(__name__)

VIA_SESSION = "session"
"""``Principal.via`` of a caller known by the session cookie."""
MAX_SIGNED_OUT = 100_000
"""Sessions ended by signing out that are remembered until they would have expired."""
LOGIN_BODY_MAX_BYTES = 4096
"""Largest sign-in form accepted (a token is under 100 characters)."""
CLOSE_POLICY = 1008
_LOGIN_PAGE = resources.files("static").joinpath("login.html")
_CONFIRM_PAGE = resources.files("static").joinpath("signin-link.html")
_ERROR_SLOT = "<!--error-->"
_SIGN_IN_ERRORS = {
    401: "That token is not valid here.",
    403: "That principal has neither the viewer nor the sql role.",
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from: a principal, or None with the reason (a bad token is not anonymous)."""

    principal: Principal | None
    via: str | None = None

    @property
    def by_cookie(self) -> bool:
        return self.via == VIA_SESSION


NOBODY = Caller(None)


class DashboardAuth:
    """The principals, the session signer and the host allowlist; knows HTTP but sends nothing."""

    def __init__(
        self,
        authenticator: Authenticator,
        codec: SessionCodec,
        hosts: tuple[str, ...],
        clock: Callable[[], float] = time.time,
    ):
        self.authenticator = authenticator
        self.codec = codec
        self.hosts = hosts
        self.clock = clock
        self.signed_out: dict[str, float] = {}  # cookie value -> its expiry: refused until then

    @property
    def allow_anonymous(self) -> bool:
        return self.authenticator.allow_anonymous

    def identify(self, conn: HTTPConnection, query_token: bool = False) -> Caller:
        """The caller of a request or upgrade (see the module docstring for the order)."""
        ident = peer_identity(conn.scope)
        if ident is not None:
            principal = self.authenticator.from_certificate(ident.kind, ident.name)
            return Caller(principal, VIA_CERT)
        token = bearer_of(conn.headers.get("authorization"))
        if token is None and query_token:
            token = conn.query_params.get("token") or None
        if token is not None:
            return Caller(self.authenticator.from_token(token), VIA_TOKEN)
        value = conn.cookies.get(cookie_name(_secure(conn.scope)))
        name = self.codec.verify(value, self.clock()) if value and value not in self.signed_out else None
        known = self.authenticator.by_name.get(name) if name else None
        if known is not None:
            return Caller(replace(known, via=VIA_SESSION), VIA_SESSION)
        if self.allow_anonymous:
            return Caller(ANONYMOUS, VIA_ANONYMOUS)
        return NOBODY

    def sign_in(self, token: str) -> tuple[int, Principal | None]:
        """(200, principal) for a token of a dashboard user; (401 or 403, …) otherwise."""
        principal = self.authenticator.from_token(token)
        if principal is None:
            return 401, None
        if principal.roles.isdisjoint(access.DASHBOARD_ROLES):
            return 403, principal
        return 200, principal

    def session_cookie(self, principal: Principal, secure: bool) -> str:
        """The ``Set-Cookie`` value that signs ``principal`` in."""
        return set_cookie(self.codec.issue(principal.name, self.clock()), int(self.codec.ttl_s), secure)

    def sign_out(self, value: str | None) -> None:
        """End the session of a cookie value of ours: refused from now until it would have expired."""
        now = self.clock()
        if not value or self.codec.verify(value, now) is None:
            return
        for old in [v for v, expiry in self.signed_out.items() if expiry <= now]:
            del self.signed_out[old]
        if len(self.signed_out) >= MAX_SIGNED_OUT:  # the oldest sign-outs go first; their cookies are gone anyway
            del self.signed_out[next(iter(self.signed_out))]
        self.signed_out[value] = now + self.codec.ttl_s + 60


def _secure(scope: Scope) -> bool:
    return scope.get("scheme") in ("https", "wss")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def unauthorized() -> JSONResponse:
    return _error(
        401,
        "authentication required: sign in at /login, or send Authorization: Bearer <token>"
        " (a client certificate, over TLS with a CA)",
        headers={"WWW-Authenticate": 'Bearer realm="meshscope"'},
    )


class Gate:
    """ASGI middleware: host, origin, caller and role checks before anything else runs."""

    def __init__(self, app: ASGIApp, auth: DashboardAuth):
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        websocket = scope["type"] == "websocket"
        if not websocket:
            send = _with_security_headers(send)
        conn = HTTPConnection(scope)
        refusal = self._check(conn, websocket)
        if refusal is not None:
            await _refuse(scope, receive, send, refusal, websocket)
            return
        await self.app(scope, receive, send)

    def _check(self, conn: HTTPConnection, websocket: bool) -> Response | None:
        scope = conn.scope
        authority = conn.headers.get("host")
        if not host_allowed(authority, self.auth.hosts):
            return _error(400, "unknown Host; the dashboard answers only the names in MESHSCOPE_DASHBOARD_HOSTS")
        origin = conn.headers.get("origin")
        fetch_site = conn.headers.get("sec-fetch-site")
        method = "GET" if websocket else scope["method"]
        if foreign_origin(origin, scope["scheme"], authority, fetch_site, needs_origin(method, websocket)):
            return _error(403, "cross-origin request refused")
        path: str = scope["path"]
        level = access.access_of(path)
        if level == access.PUBLIC and path != "/logout":
            return None
        caller = self.auth.identify(conn, query_token=websocket)
        principal = caller.principal
        if level != access.PUBLIC:
            if principal is None:
                if path in access.PAGES and not websocket:
                    return RedirectResponse("/login", status_code=303)
                return unauthorized()
            if not access.permitted(principal.roles, level):
                role = "sql" if level == access.SQL else "viewer"
                return _error(403, f"principal {principal.name!r} lacks the {role} role")
            scope.setdefault("state", {})["principal"] = principal
        if caller.by_cookie and origin is None and needs_origin(method, websocket):
            return _error(403, "a request signed in by cookie must carry an Origin header")
        return None


def _with_security_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(n, v) for n, v in access.SECURITY_HEADERS if n not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _refuse(scope: Scope, receive: Receive, send: Send, response: Response, websocket: bool) -> None:
    if not websocket:
        await response(scope, receive, send)
        return
    ws = WebSocket(scope, receive, send)
    try:  # a real HTTP status the client can read (the WebSocket denial response)
        await ws.send_denial_response(response)
    except RuntimeError:
        await ws.close(CLOSE_POLICY)


def login_routes(auth: DashboardAuth, body_timeout_s: float = 10.0) -> list[Route]:
    """``GET /login[?token=]``, ``POST /login`` (form field ``token``) and ``POST /logout``."""
    page = _LOGIN_PAGE.read_text(encoding="utf-8")
    confirm_page = _CONFIRM_PAGE.read_text(encoding="utf-8")

    def login_page(status: int = 200) -> HTMLResponse:
        message = _SIGN_IN_ERRORS.get(status)
        body = page.replace(_ERROR_SLOT, f'<p class="error" role="alert">{message}</p>' if message else "")
        return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})

    def signed_in(request: Request, token: str) -> Response:
        status, principal = auth.sign_in(token)
        if status != 200 or principal is None:
            log.info("dashboard sign-in refused", extra={"status": status, "client": str(request.client)})
            return login_page(status)
        # 303: the browser follows with a GET to /, and the token leaves the address bar and history
        cookie = auth.session_cookie(principal, _secure(request.scope))
        response = RedirectResponse("/", status_code=303, headers={"cache-control": "no-store", "set-cookie": cookie})
        log.info("dashboard sign-in", extra={"principal": principal.name, "client": str(request.client)})
        return response

    def confirm(request: Request, token: str) -> Response:
        """A sign-in link another site (or a client that does not say) led here to: ask before replacing a session."""
        status, principal = auth.sign_in(token)
        if status != 200 or principal is None:
            return login_page(status)
        log.info(
            "dashboard sign-in link to confirm", extra={"principal": principal.name, "client": str(request.client)}
        )
        body = confirm_page.replace("<!--principal-->", html.escape(principal.name)).replace(
            "<!--token-->", html.escape(token, quote=True)
        )
        return HTMLResponse(body, headers={"cache-control": "no-store"})

    async def login(request: Request) -> Response:
        if request.method == "GET":
            token = request.query_params.get("token")
            if not token:
                return login_page()
            if user_started(request.headers.get("sec-fetch-site")):
                return signed_in(request, token)
            return confirm(request, token)
        try:
            body = await read_limited(request, LOGIN_BODY_MAX_BYTES, body_timeout_s)
        except BodyTooLarge:
            return _error(413, f"a sign-in form is at most {LOGIN_BODY_MAX_BYTES} bytes")
        except BodyTimeout as exc:
            return _error(408, str(exc))
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
        except ValueError:
            return _error(400, "send the form field token, and nothing much else")
        token = (form.get("token") or [""])[0].strip()
        return signed_in(request, token) if token else login_page(401)

    async def logout(request: Request) -> Response:
        auth.sign_out(request.cookies.get(cookie_name(_secure(request.scope))))
        cookie = set_cookie("", 0, _secure(request.scope))
        return RedirectResponse("/login", status_code=303, headers={"cache-control": "no-store", "set-cookie": cookie})

    return [Route("/login", login, methods=["GET", "POST"]), Route("/logout", logout, methods=["POST"])]
