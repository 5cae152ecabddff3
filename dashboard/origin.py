"""Which Host and Origin headers the dashboard answers, with no I/O.

Two browser attacks, two checks:

* DNS rebinding: a page on ``evil.example`` re-points its own name at 127.0.0.1, and the
  browser then treats the dashboard as same-origin with the attacker. The request still says
  ``Host: evil.example``, so the dashboard answers only the host names it was told about
  (``MESHSCOPE_DASHBOARD_HOSTS``; by default the loopback names and the bind address), 400
  otherwise.
* Cross-site requests: a ``text/plain`` POST or a WebSocket upgrade is sent without a CORS
  preflight, with whatever cookies the browser holds for the target. ``SameSite=Strict`` keeps
  the session cookie off cross-*site* requests, but another port on the same host is the same
  site. So a request that carries an ``Origin`` must come from the dashboard's own origin
  (scheme, host and port, as the browser sees them), and an unsafe request or an upgrade that a
  cookie would authenticate must carry one. Browsers always send ``Origin`` on those; curl with
  a bearer token need not.

Under ``Referrer-Policy: no-referrer``, which every page here is served with, a browser sends
``Origin: null`` on the dashboard's own form posts (sign in, sign out). ``null`` is also what a
sandboxed frame or a ``data:`` page sends, so it counts as the dashboard's own only beside
``Sec-Fetch-Site: same-origin``, a header pages cannot set. An unsafe request or an upgrade
that the browser marks ``cross-site`` or ``same-site`` is foreign whatever its ``Origin``.

Sign-in by link (``/login?token=``) signs in at once only when the browser says the user
started the navigation (``Sec-Fetch-Site: none``: typed, a bookmark, a link from a terminal)
or the dashboard's own page did (``same-origin``); a navigation from another site, or from a
client that does not say, gets a page that asks first.

Host names compare case-insensitively, without a trailing dot; IPv6 literals are written in
brackets (``[::1]``); a pattern ``*.example.com`` matches names under ``example.com``.
"""

from __future__ import annotations

import re

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host names every dashboard answers unless ``MESHSCOPE_DASHBOARD_HOSTS`` says otherwise."""
WILDCARD_BINDS = frozenset(("0.0.0.0", "::", "[::]", ""))
"""Bind addresses that name no host a browser would use."""
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
"""Methods that change nothing; every other method is checked against the origin."""
DEFAULT_PORTS = {"http": 80, "https": 443}

_HOST = r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\.?)"
_AUTHORITY = re.compile(rf"({_HOST})(?::([0-9]{{1,5}}))?")
_ORIGIN = re.compile(rf"([A-Za-z][A-Za-z0-9+.-]{{0,15}})://({_HOST})(?::([0-9]{{1,5}}))?")
_PATTERN = re.compile(rf"(?:\*\.)?{_HOST}")


def host_of(authority: str | None) -> str | None:
    """The normalized host of a ``Host`` header (``host[:port]``), or None when it is malformed."""
    match = _AUTHORITY.fullmatch(authority or "")
    return _normal(match.group(1)) if match else None


def host_pattern(text: str) -> str:
    """A configured host name (or ``*.suffix``) in normal form; ValueError when it is not one."""
    text = text.strip()
    if ":" in text and not text.startswith("["):
        text = f"[{text}]"  # a bare IPv6 literal
    if _PATTERN.fullmatch(text) is None:
        raise ValueError(f"{text[:100]!r} is not a host name, an IP address or *.domain")
    return _normal(text)


def default_hosts(bind_host: str) -> tuple[str, ...]:
    """The loopback names, and the bind address when it names one host."""
    if bind_host.strip() in WILDCARD_BINDS:
        return DEFAULT_HOSTS
    try:
        bound = host_pattern(bind_host)
    except ValueError:  # not a name a browser could send; binding will say what is wrong with it
        return DEFAULT_HOSTS
    return DEFAULT_HOSTS if bound in DEFAULT_HOSTS else (*DEFAULT_HOSTS, bound)


def host_allowed(authority: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a ``Host`` header names one of ``allowed`` (normalized patterns)."""
    host = host_of(authority)
    if host is None:
        return False
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def own_origin(scheme: str, authority: str | None) -> str | None:
    """The origin a browser gives this server when it reached it as ``scheme://authority``."""
    match = _AUTHORITY.fullmatch(authority or "")
    if match is None:
        return None
    web = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    return _origin(web, match.group(1), match.group(2))


def parse_origin(text: str) -> str | None:
    """An ``Origin`` header in normal form; None for ``null``, a path, or anything else malformed."""
    match = _ORIGIN.fullmatch(text.strip())
    if match is None:
        return None
    return _origin(match.group(1).lower(), match.group(2), match.group(3))


FOREIGN_SITES = frozenset(("cross-site", "same-site"))
"""``Sec-Fetch-Site`` values of a request another site's page made."""
USER_STARTED = frozenset(("none", "same-origin"))
"""``Sec-Fetch-Site`` values of a navigation the user (or this dashboard's own page) started."""


def foreign_origin(
    origin: str | None, scheme: str, authority: str | None, fetch_site: str | None = None, unsafe: bool = False
) -> bool:
    """True when the request comes from a page of another origin, by its ``Origin`` and ``Sec-Fetch-Site``.

    ``unsafe``: the request changes something or upgrades (see ``needs_origin``); only then does a
    foreign ``Sec-Fetch-Site`` refuse it on its own (a link from another site to a page is fine).
    """
    site = (fetch_site or "").strip().lower()
    if unsafe and site in FOREIGN_SITES:
        return True
    if origin is None:
        return False
    if origin.strip() == "null":
        return site != "same-origin"
    theirs = parse_origin(origin)
    return theirs is None or theirs != own_origin(scheme, authority)


def user_started(fetch_site: str | None) -> bool:
    """Whether a navigation was started by the user or by this dashboard's own page (``Sec-Fetch-Site``)."""
    return (fetch_site or "").strip().lower() in USER_STARTED


def needs_origin(method: str, websocket: bool) -> bool:
    """Whether a request authenticated by a cookie must say where it comes from."""
    return websocket or method.upper() not in SAFE_METHODS


def _origin(scheme: str, host: str, port: str | None) -> str:
    name = _normal(host)
    number = int(port) if port else DEFAULT_PORTS.get(scheme)
    if number is None or number == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{name}"
    return f"{scheme}://{name}:{number}"


def _normal(host: str) -> str:
    host = host.lower()
    return host[:-1] if host.endswith(".") and not host.startswith("[") else host
