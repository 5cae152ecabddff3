"""What each dashboard path requires, and what every answer tells the browser, as data with no I/O.

Two roles from the principals file matter here: ``viewer`` sees the map, the JSON API and the
live feed; ``sql`` may also run queries (``/api/sql``), and so includes viewing. Paths not
listed need a viewer: a new route is closed until it is put in this table.

The Content-Security-Policy lets the page run only scripts from this origin (``app.js`` and the
locally served plotly.js). plotly.js renders SVG with inline ``style`` attributes and injects a
stylesheet, hence ``style-src 'unsafe-inline'``; it needs no ``'unsafe-eval'`` (the geo bundle
the page loads has no ``eval`` and no ``new Function``). The browser test checks that the map
renders with no policy violation.
"""

from __future__ import annotations

PUBLIC, PRINCIPAL, VIEW, SQL = "public", "principal", "view", "sql"
"""Access levels: anyone; any principal of the principals file (a scraper); a viewer (or sql); sql only."""

ROLES_FOR: dict[str, frozenset[str]] = {
    VIEW: frozenset(("viewer", "sql")),
    SQL: frozenset(("sql",)),
}
"""Any one of these roles grants the level."""

PUBLIC_PATHS = frozenset(("/healthz", "/login", "/logout", "/favicon.ico"))
PUBLIC_PREFIXES = ("/static/",)
SQL_PATHS = frozenset(("/api/sql",))
PRINCIPAL_PATHS = frozenset(("/metrics",))
"""Paths for machines: any principal's bearer token, as a relay's and the collector's /metrics take."""
PAGES = frozenset(("/",))
"""HTML pages: a visitor without credentials is sent to /login instead of getting a 401."""
DASHBOARD_ROLES = ROLES_FOR[VIEW]
"""A principal with none of these roles cannot sign in to the dashboard."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
"""Headers added to every HTTP answer (the referrer policy keeps a sign-in token out of Referer)."""


def access_of(path: str) -> str:
    """The access level a request path needs."""
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return PUBLIC
    if path.rstrip("/") in SQL_PATHS:
        return SQL
    if path in PRINCIPAL_PATHS:
        return PRINCIPAL
    return VIEW


def permitted(roles: frozenset[str], level: str) -> bool:
    """Whether a principal with ``roles`` may use a path of ``level``."""
    return level in (PUBLIC, PRINCIPAL) or not roles.isdisjoint(ROLES_FOR[level])
